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
