"""Build napari layer data (no viewer needed) from slides and per-patch results, and
place layers in the :class:`Frame` (scale, translate, units) of the slide layer they
lie on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from napari_wsi_mil.review.annotations import annotation_raster_shape
from napari_wsi_mil.review.gallery import patch_centre_level0
from napari_wsi_mil.review.heatmap import (
    class_colour,
    class_map,
    contrast_limits,
    heatmap_raster,
    normalise,
    tumour_mask,
)
from napari_wsi_mil.slide import Slide

if TYPE_CHECKING:
    from napari_wsi_mil.slide.tiling import TileGrid

#: Units of a slide without a stated pixel size (napari's default units).
PIXEL_UNITS = ("pixel", "pixel")


@dataclass(frozen=True)
class Frame:
    """Where a slide layer lies in the viewer's world, (y, x) each: ``scale`` (world
    units per level-0 pixel), ``translate`` (the world position of level-0 pixel 0)
    and ``units``. Every layer over the slide is placed in its frame and shares its
    units: napari renders in physical units only when all layers have the same."""

    scale: tuple[float, float] = (1.0, 1.0)
    translate: tuple[float, float] = (0.0, 0.0)
    units: tuple[str, str] = PIXEL_UNITS

    @classmethod
    def of_slide(cls, slide: Slide) -> Frame:
        """The frame of a slide layer built from ``slide`` (:func:`slide_layer_data`):
        micrometres when its MPP is known, else level-0 pixels."""
        if slide.mpp_xy is None:
            return cls()
        mpp_x, mpp_y = slide.mpp_xy
        return cls((mpp_y, mpp_x), units=("um", "um"))

    @classmethod
    def of_layer(cls, layer) -> Frame:
        """The frame of a slide layer in the viewer."""
        return cls(tuple(layer.scale[-2:]), tuple(layer.translate[-2:]), tuple(layer.units)[-2:])

    def placement(self) -> dict:
        """``scale``, ``translate`` and ``units`` layer arguments: the slide layer's own."""
        return {"scale": self.scale, "translate": self.translate, "units": self.units}

    def raster_placement(self, level0_per_pixel: tuple[float, float]) -> dict:
        """``scale``, ``translate`` and ``units`` layer arguments that lay a coarse
        raster of ``level0_per_pixel`` level-0 pixels per pixel over the slide layer
        (:func:`raster_transform`, shifted by the slide layer's ``translate``)."""
        scale, translate = raster_transform(level0_per_pixel, self.scale)
        shifted = (translate[0] + self.translate[0], translate[1] + self.translate[1])
        return {"scale": scale, "translate": shifted, "units": self.units}


def place_layer(layer, kwargs: dict) -> None:
    """Move an existing layer to the ``scale``, ``translate`` and ``units`` of ``kwargs``
    (from one of the ``*_layer_data`` functions)."""
    layer.scale, layer.translate = kwargs["scale"], kwargs["translate"]
    if "units" in kwargs:
        layer.units = kwargs["units"]


def put_layer(viewer, data, kwargs: dict, kind: str, replace: bool = True) -> tuple[object, bool]:
    """Add a layer built by a ``*_layer_data`` function (``kind`` image, labels or
    shapes), or replace the data, placement and metadata of the one of its name (keep
    it as it is unless ``replace``: what a person painted). Returns ``(layer, added)``."""
    kwargs = dict(kwargs)
    name = kwargs.pop("name")
    if name not in viewer.layers:
        return getattr(viewer, f"add_{kind}")(data, name=name, **kwargs), True
    layer = viewer.layers[name]
    if not replace:
        return layer, False
    layer.data = [(d, kwargs["shape_type"]) for d in data] if kind == "shapes" else data
    place_layer(layer, kwargs)
    if "contrast_limits" in kwargs:
        layer.contrast_limits = kwargs["contrast_limits"]
    if "features" in kwargs and kind == "labels":  # a class map: its classes may differ
        layer.features, layer.colormap = kwargs["features"], kwargs["colormap"]
    layer.metadata = {**layer.metadata, **kwargs.get("metadata", {})}
    return layer, False


def slide_layer_data(slide: Slide) -> tuple:
    """``(data, kwargs, "image")`` for a lazily read, multiscale RGB slide layer."""
    frame = Frame.of_slide(slide)
    kwargs = {
        "name": slide.path.stem,
        "rgb": True,
        "multiscale": True,
        "contrast_limits": (0, 255),
        "scale": frame.scale,
        "units": frame.units,
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


#: Tiling layers: the tissue mask is a green fill, the patch grid yellow cell borders,
#: so the two read apart on H&E (and apart from the result layers' colours below).
TISSUE_COLOR = (0.1, 0.75, 0.25, 1.0)
PATCH_EDGE_COLOR = (1.0, 0.85, 0.0, 1.0)


def tissue_mask_layer_data(slide: Slide, mask, mask_downsample: tuple[float, float]) -> tuple:
    """A Labels layer of the tissue mask (label 1, a green fill), aligned with the slide."""
    placement = Frame.of_slide(slide).raster_placement((mask_downsample[1], mask_downsample[0]))
    kwargs = {
        "name": f"{slide.path.stem} tissue",
        **placement,
        "opacity": 0.35,
        "colormap": {None: "transparent", 0: "transparent", 1: TISSUE_COLOR},
        "metadata": {"slide_path": str(slide.path), "kind": "tissue_mask"},
    }
    return mask.astype("uint8"), kwargs, "labels"


def patch_outline_raster(grid: TileGrid, pixels_per_cell: int):
    """uint8 raster of the patch grid's cell borders (1), ``pixels_per_cell`` raster
    pixels per grid cell: each cell draws its top and left edge, and its bottom (right)
    edge where no cell lies below (right of) it, so every border is one pixel wide."""
    import numpy as np

    k = int(pixels_per_cell)
    cells = grid.grid_raster(np.ones(len(grid), bool), fill=False)
    open_below = cells & ~np.pad(cells[1:], ((0, 1), (0, 0)))
    open_right = cells & ~np.pad(cells[:, 1:], ((0, 0), (0, 1)))
    top_left, bottom, right = (np.zeros((k, k), np.uint8) for _ in range(3))
    top_left[0, :] = top_left[:, 0] = 1
    bottom[-1, :] = 1
    right[:, -1] = 1
    return (
        np.kron(cells, top_left) | np.kron(open_below, bottom) | np.kron(open_right, right)
    ).astype(np.uint8)


#: Longest side of the patch outline raster (its cells shrink to 4 pixels beyond).
PATCH_OUTLINE_MAX_SIDE = 4096


def patch_outline_layer_data(slide: Slide, grid: TileGrid) -> tuple:
    """A Labels layer of the patch grid drawn as cell borders (yellow; a cell is a patch
    when the stride is the patch size), aligned with the slide layer. The cell's raster
    pixels per side are in ``metadata["pixels_per_cell"]``."""
    k = max(4, min(8, PATCH_OUTLINE_MAX_SIDE // max(1, *grid.grid_shape)))
    step = grid.geometry.stride_level0 / k
    kwargs = {
        "name": f"{slide.path.stem} patches",
        **Frame.of_slide(slide).raster_placement((step, step)),
        "opacity": 0.9,
        "colormap": {None: "transparent", 0: "transparent", 1: PATCH_EDGE_COLOR},
        "metadata": {"slide_path": str(slide.path), "kind": "patch_grid", "pixels_per_cell": k},
    }
    return patch_outline_raster(grid, k), kwargs, "labels"


def patch_grid_layer_data(
    slide: Slide, grid: TileGrid, values=None, name: str | None = None
) -> tuple:
    """A patch-grid Labels layer: one pixel per patch, 1 (or ``values``) where patches are."""
    import numpy as np

    step = grid.geometry.stride_level0
    values = np.ones(len(grid), np.uint8) if values is None else values
    kwargs = {
        "name": name or f"{slide.path.stem} patches",
        **Frame.of_slide(slide).raster_placement((step, step)),
        "opacity": 0.5,
        "metadata": {"slide_path": str(slide.path), "kind": "patch_grid"},
    }
    return grid.grid_raster(values), kwargs, "labels"


# -- result layers: every one a patch-grid raster placed by raster_transform ---------
# They take the slide layer's frame (Frame.of_layer of the slide layer in the viewer).

#: Colours of the result Labels layers (RGBA in 0-1). The predicted mask is magenta, apart
#: from every colour of the attention heatmap's turbo colormap; painted tumour is red.
MASK_COLOR = (1.0, 0.0, 1.0, 1.0)
TUMOUR_COLOR = (0.95, 0.1, 0.1, 1.0)
#: The outline of the gallery patch last clicked (apart from the lesion's cyan).
GALLERY_OUTLINE_COLOR = "white"
PAINT_COLORS = {None: "transparent", 0: "transparent", 1: TUMOUR_COLOR, 2: (0.0, 0.8, 0.4, 1.0)}


def _grid_kwargs(grid: TileGrid, frame: Frame, name: str, kind: str, **extra) -> dict:
    """Layer arguments of a patch-grid raster (one pixel per patch) in ``frame``."""
    step = grid.geometry.stride_level0
    metadata = {"kind": kind, **extra.pop("metadata", {})}
    return {
        "name": name,
        **frame.raster_placement((step, step)),
        "metadata": metadata,
        **extra,
    }


def attention_layer_data(
    grid: TileGrid,
    attention,
    frame: Frame,
    *,
    mode: str = "rank",
    name: str = "attention",
    colormap: str = "turbo",
    opacity: float = 0.5,
    metadata: dict | None = None,
) -> tuple:
    """Attention heatmap Image layer: normalised with ``mode`` (raw, minmax, rank), NaN
    (transparent) off tissue, explicit contrast limits."""

    shown = normalise(attention, mode)
    kwargs = _grid_kwargs(
        grid,
        frame,
        name,
        "attention",
        colormap=colormap,
        opacity=opacity,
        blending="translucent",
        interpolation2d="nearest",
        contrast_limits=contrast_limits(shown, mode),
        metadata={"normalisation": mode, **(metadata or {})},
    )
    return heatmap_raster(grid, shown), kwargs, "image"


def probability_layer_data(
    grid: TileGrid,
    probability,
    frame: Frame,
    *,
    name: str = "instance probability",
    colormap: str = "viridis",
    opacity: float = 0.5,
    metadata: dict | None = None,
) -> tuple:
    """Instance-probability heatmap Image layer on [0, 1], NaN off tissue."""

    kwargs = _grid_kwargs(
        grid,
        frame,
        name,
        "instance_probability",
        colormap=colormap,
        opacity=opacity,
        blending="translucent",
        interpolation2d="nearest",
        contrast_limits=(0.0, 1.0),
        metadata=metadata or {},
    )
    return heatmap_raster(grid, probability), kwargs, "image"


def tumour_mask_raster(grid: TileGrid, probability, threshold: float):
    """uint8 patch-grid raster: 1 where a patch's probability reaches ``threshold``."""
    import numpy as np

    return grid.grid_raster(tumour_mask(probability, threshold), fill=np.uint8(0))


def tumour_mask_layer_data(
    grid: TileGrid,
    probability,
    threshold: float,
    frame: Frame,
    *,
    name: str = "predicted tumour",
    opacity: float = 0.7,
    metadata: dict | None = None,
) -> tuple:
    """Predicted tumour mask Labels layer (label 1 = tumour, magenta) at ``threshold``."""
    kwargs = _grid_kwargs(
        grid,
        frame,
        name,
        "tumour_mask",
        opacity=opacity,
        colormap={None: "transparent", 0: "transparent", 1: MASK_COLOR},
        metadata={"threshold": float(threshold), **(metadata or {})},
    )
    return tumour_mask_raster(grid, probability, threshold), kwargs, "labels"


def class_map_layer_data(
    grid: TileGrid,
    probability,
    threshold: float,
    evidence: int,
    classes: tuple[str, ...],
    frame: Frame,
    *,
    name: str = "predicted class",
    opacity: float = 0.7,
    metadata: dict | None = None,
) -> tuple:
    """Predicted-class map Labels layer of a multi-class model: label ``evidence + 1``
    (the class's colour) on the tiles whose ``probability`` reaches ``threshold``, 0
    elsewhere (:func:`~napari_wsi_mil.review.heatmap.class_map`). Label ``k + 1`` is
    class ``k`` for every class: its colour in ``colormap``, its name in the ``class``
    feature (napari shows it under the pointer) and in ``metadata["classes"]``."""
    import numpy as np

    colours = {k + 1: (*(c / 255 for c in class_colour(k)), 1.0) for k in range(len(classes))}
    kwargs = _grid_kwargs(
        grid,
        frame,
        name,
        "class_map",
        opacity=opacity,
        colormap={None: "transparent", 0: "transparent", **colours},
        features={"index": np.arange(len(classes) + 1), "class": ["", *classes]},
        metadata={
            "threshold": float(threshold),
            "classes": list(classes),
            "class": classes[evidence],
            **(metadata or {}),
        },
    )
    values = class_map(probability, threshold, evidence)
    return grid.grid_raster(values, fill=np.int32(0)), kwargs, "labels"


def clusters_layer_data(
    grid: TileGrid,
    clusters,
    frame: Frame,
    *,
    name: str = "clusters",
    opacity: float = 0.5,
    metadata: dict | None = None,
) -> tuple:
    """CluSiam clusters Labels layer: label ``k + 1`` for cluster ``k``, 0 off tissue."""
    import numpy as np

    values = np.asarray(clusters).astype(np.int32) + 1
    kwargs = _grid_kwargs(
        grid,
        frame,
        name,
        "clusters",
        opacity=opacity,
        metadata=metadata or {},
    )
    return grid.grid_raster(values, fill=np.int32(0)), kwargs, "labels"


def annotation_layer_data(
    slide_size: tuple[int, int],
    level0_per_pixel: int,
    frame: Frame,
    *,
    name: str = "annotations",
    metadata: dict | None = None,
) -> tuple:
    """An empty paint Labels layer covering the slide (1 tumour, 2 normal), with square
    pixels of ``level0_per_pixel`` level-0 pixels (a fraction of a patch)."""
    import numpy as np

    f = int(level0_per_pixel)
    kwargs = {
        "name": name,
        **frame.raster_placement((f, f)),
        "opacity": 0.5,
        "colormap": dict(PAINT_COLORS),
        "metadata": {"kind": "annotations", "level0_per_pixel": f, **(metadata or {})},
    }
    return np.zeros(annotation_raster_shape(slide_size, f), np.uint8), kwargs, "labels"


def annotation_shapes_layer_data(
    slide_id: str, classes: tuple[str, ...], frame: Frame = Frame()
) -> tuple:
    """An empty Shapes layer for drawing annotations of ``classes`` (the first red, the
    second green); a new shape gets the layer's ``feature_defaults`` class."""
    import pandas as pd

    kwargs = {
        "name": f"{slide_id} annotation shapes",
        "ndim": 2,
        "features": {"label": pd.Categorical([], categories=list(classes))},
        "face_color": "label",
        "face_color_cycle": ["red", "green"],
        "edge_color": "white",
        "opacity": 0.4,
        "units": frame.units,
        "metadata": {"kind": "annotation_shapes", "slide_id": slide_id},
    }
    return None, kwargs, "shapes"


def annotation_shapes_world(layer) -> list[tuple]:
    """The shapes of an annotation Shapes layer as ``(world (y, x) vertices, shape type,
    class)`` (class ``"tumour"`` without a ``label`` feature)."""
    import numpy as np

    n = len(layer.data)
    classes = layer.features["label"].astype(str).tolist() if "label" in layer.features else None
    return [
        (np.array([layer.data_to_world(p)[-2:] for p in data]), shape_type, label)
        for data, shape_type, label in zip(
            layer.data, layer.shape_type, classes or ["tumour"] * n, strict=True
        )
    ]


def patch_view(slide_layer, grid: TileGrid, index: int, canvas_size) -> tuple[tuple, float]:
    """Camera ``(centre, zoom)`` that centres patch ``index`` of ``grid`` on the slide
    layer, six patches across the canvas's shorter side."""
    import numpy as np

    x, y = patch_centre_level0(grid, index)
    # level-0 continuous coordinate u is napari data coordinate u - 1/2
    centre = tuple(np.asarray(slide_layer.data_to_world((y - 0.5, x - 0.5)))[-2:])
    size = grid.geometry.patch_size_level0 * float(slide_layer.scale[-1])
    return centre, min(canvas_size) / (6 * size)


def analysis_layer_data(
    analysis,
    frame: Frame,
    *,
    mode: str = "rank",
    threshold=None,
) -> list[tuple]:
    """Every result layer of a :class:`~napari_wsi_mil.review.analyse.SlideAnalysis`:
    attention, instance probability, predicted tumour mask (at ``threshold``, default the
    analysis's ``mask_threshold``, the model's) and (when present)
    clusters, named ``"<slide_id> <what>"``, in the slide layer's frame. A multi-class
    analysis adds its predicted-class map (``"<slide_id> predicted class"``, the mask's
    tiles in the evidence class) and, for a model with one attention map per class, a
    heatmap of each (``"<slide_id> attention: <class>"``). Only the attention heatmap
    starts visible."""
    grid, sid = analysis.grid, analysis.slide_id
    meta = {"slide_id": sid, "prediction": analysis.prediction_name}
    threshold = analysis.mask_threshold if threshold is None else threshold
    layers = [
        attention_layer_data(
            grid,
            analysis.attention,
            frame,
            mode=mode,
            name=f"{sid} attention",
            metadata=meta,
        ),
        probability_layer_data(
            grid,
            analysis.instance_probability,
            frame,
            name=f"{sid} probability",
            metadata=meta,
        ),
        tumour_mask_layer_data(
            grid,
            analysis.instance_probability,
            threshold,
            frame,
            name=f"{sid} predicted tumour",
            metadata=meta,
        ),
    ]
    if analysis.clusters is not None:
        layers.append(
            clusters_layer_data(
                grid,
                analysis.clusters,
                frame,
                name=f"{sid} clusters",
                metadata=meta,
            )
        )
    if analysis.is_multiclass:
        layers.append(
            class_map_layer_data(
                grid,
                analysis.instance_probability,
                threshold,
                analysis.evidence_class,
                analysis.classes,
                frame,
                name=f"{sid} predicted class",
                metadata=meta,
            )
        )
    if analysis.is_multiclass and analysis.class_attention is not None:
        layers += [
            attention_layer_data(
                grid,
                analysis.class_attention[:, k],
                frame,
                mode=mode,
                name=f"{sid} attention: {name}",
                metadata={**meta, "class": name},
            )
            for k, name in enumerate(analysis.classes)
        ]
    for _, kwargs, _ in layers[1:]:
        kwargs["visible"] = False  # one heatmap at a time reads; the others a click away
    return layers


def patch_outline_shapes_data(grid: TileGrid, index: int, slide_layer, *, name: str) -> tuple:
    """A Shapes layer outlining patch ``index`` (its level-0 box) on ``slide_layer``."""
    import numpy as np

    x, y = (float(v) for v in grid.coords[index])
    size = float(grid.geometry.patch_size_level0)
    # level-0 continuous (x, y) is slide data coordinate (y - 1/2, x - 1/2)
    y0, x0, y1, x1 = y - 0.5, x - 0.5, y + size - 0.5, x + size - 0.5
    box = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]])
    kwargs = {
        "name": name,
        "shape_type": "rectangle",
        "edge_color": GALLERY_OUTLINE_COLOR,
        "edge_width": max(2.0, size / 8),
        "face_color": "transparent",
        **Frame.of_layer(slide_layer).placement(),
        "metadata": {"kind": "gallery_patch", "patch_index": int(index)},
    }
    return [box], kwargs, "shapes"
