"""Build napari layer data (no viewer needed) from slides and per-patch results."""

from __future__ import annotations

from napari_wsi_mil.slide import Slide


def slide_world_scale(slide: Slide) -> tuple[tuple[float, float], str]:
    """Level-0 pixel spacing in world units: micrometres when MPP is known, else pixels."""
    if slide.mpp_xy is None:
        return (1.0, 1.0), "pixel"
    mpp_x, mpp_y = slide.mpp_xy
    return (mpp_y, mpp_x), "um"


def slide_layer_data(slide: Slide) -> tuple:
    """``(data, kwargs, "image")`` for a lazily read, multiscale RGB slide layer."""
    scale, unit = slide_world_scale(slide)
    kwargs = {
        "name": slide.path.stem,
        "rgb": True,
        "multiscale": True,
        "contrast_limits": (0, 255),
        "scale": scale,
        "units": (unit, unit),
        "axis_labels": ("y", "x"),
        "metadata": {
            "slide_path": str(slide.path),
            "mpp": slide.mpp,
            "backend": slide.backend_name,
            "vendor": slide.vendor,
            "objective_power": slide.objective_power,
            "properties": slide.properties,
        },
    }
    return slide.pyramid(), kwargs, "image"


def raster_transform(
    level0_per_pixel: tuple[float, float], slide_scale: tuple[float, float]
) -> tuple[tuple[float, float], tuple[float, float]]:
    """``(scale, translate)`` that lay a coarse raster exactly over the slide layer.

    Raster pixel ``(r, c)`` covers level-0 pixels ``[r*fy, (r+1)*fy) x [c*fx, (c+1)*fx)``
    with ``(fy, fx) = level0_per_pixel``. napari centres pixels on integer coordinates,
    so a level-0 pixel ``i`` spans world ``[(i - 1/2) s, (i + 1/2) s]``; matching the
    edges gives ``scale = f s`` and ``translate = (f - 1) s / 2``. Every patch-grid and
    mask layer goes through this one function.
    """
    (fy, fx), (sy, sx) = level0_per_pixel, slide_scale
    return (fy * sy, fx * sx), ((fy - 1) * sy / 2, (fx - 1) * sx / 2)


def tissue_mask_layer_data(slide: Slide, mask, mask_downsample: tuple[float, float]) -> tuple:
    """A Labels layer of the tissue mask (label 1), aligned with the slide layer."""
    scale, translate = raster_transform(
        (mask_downsample[1], mask_downsample[0]), slide_world_scale(slide)[0]
    )
    kwargs = {
        "name": f"{slide.path.stem} tissue",
        "scale": scale,
        "translate": translate,
        "opacity": 0.4,
        "metadata": {"slide_path": str(slide.path), "kind": "tissue_mask"},
    }
    return mask.astype("uint8"), kwargs, "labels"


def patch_grid_layer_data(slide: Slide, grid, values=None, name: str | None = None) -> tuple:
    """A patch-grid Labels layer: one pixel per patch, 1 (or ``values``) where patches are."""
    import numpy as np

    step = grid.geometry.stride_level0
    scale, translate = raster_transform((step, step), slide_world_scale(slide)[0])
    values = np.ones(len(grid), np.uint8) if values is None else values
    kwargs = {
        "name": name or f"{slide.path.stem} patches",
        "scale": scale,
        "translate": translate,
        "opacity": 0.5,
        "metadata": {"slide_path": str(slide.path), "kind": "patch_grid"},
    }
    return grid.grid_raster(values), kwargs, "labels"
