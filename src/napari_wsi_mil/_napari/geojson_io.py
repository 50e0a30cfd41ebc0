"""npe2 reader and writer of QuPath GeoJSON (``*.geojson``).

Reading: annotations become a Shapes layer of polygons with their class (the
``class`` feature) drawn in the class's QuPath colour; detections (cells, tiles)
become a Points layer at their centres. Both are placed on the slide layer of the
viewer whose slide id matches the file's stem (``slide.geojson``,
``slide.annotations.geojson``, ``slide_tumour.geojson`` go on ``slide``), in its
physical units; without one they are in level-0 pixels.

Writing: a Shapes layer becomes QuPath annotations in level-0 pixel coordinates,
with the class of each shape (its ``class`` feature, or ``label`` of the Analyse
widget's annotation shapes) and the class's colour. Lines and paths have no area
and are left out; ellipses become 64-gons.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from napari_wsi_mil._napari.layers import Frame
from napari_wsi_mil._napari.reader import single_path_name
from napari_wsi_mil.review.annotations import ellipse_polygon, world_to_level0
from napari_wsi_mil.store.geojson import GeoJsonObject, read_geojson_objects, write_geojson_objects
from napari_wsi_mil.store.tiling_job import slide_id_for

#: Feature column holding each shape's class name ("" = unclassified).
CLASS_FEATURE = "class"
#: Colour of unclassified objects and of classes QuPath gave no colour.
DEFAULT_RGB = (255, 255, 0)


def napari_get_geojson_reader(path: str | os.PathLike | list) -> Callable | None:
    """Return :func:`read_qupath_geojson` for one ``.geojson`` path, else None."""
    name = single_path_name(path)
    return read_qupath_geojson if name and name.endswith(".geojson") else None


def read_qupath_geojson(path: str | os.PathLike | list) -> list[tuple]:
    """Layer data of a QuPath GeoJSON file, placed on the matching open slide layer."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    path = Path(path)
    return geojson_layer_data(read_geojson_objects(path), path.stem, _matching_slide_layer(path))


def geojson_layer_data(objects: list[GeoJsonObject], stem: str, slide_layer=None) -> list[tuple]:
    """Shapes (annotations) and Points (detections) layer data of QuPath objects,
    in the frame of ``slide_layer`` (None: level-0 pixels)."""
    if slide_layer is not None:
        frame = Frame.of_layer(slide_layer).placement()
        slide_id = slide_id_for(slide_layer.metadata["slide_path"])
    else:
        frame, slide_id = Frame().placement(), stem
    colors = {o.classification: o.color or DEFAULT_RGB for o in objects if o.classification}
    metadata = {"slide_id": slide_id, "class_colors": colors}

    def about(items):
        classes = [o.classification or "" for o in items]
        rgba = [(*np.asarray(colors.get(c, DEFAULT_RGB)) / 255, 1.0) for c in classes]
        return {CLASS_FEATURE: classes}, np.asarray(rgba, float).reshape(-1, 4)

    # level-0 continuous (x, y) -> slide data coordinates (y - 1/2, x - 1/2); napari
    # closes polygons itself
    def data_yx(ring):
        ring = np.asarray(ring, float)
        if len(ring) > 3 and np.array_equal(ring[0], ring[-1]):
            ring = ring[:-1]
        return ring[:, ::-1] - 0.5

    annotations = [o for o in objects if o.object_type == "annotation"]
    detections = [o for o in objects if o.object_type != "annotation"]
    layers = []
    if annotations or not detections:
        features, rgba = about(annotations)
        kwargs = {
            "name": f"{stem} annotations",
            "shape_type": "polygon",
            "features": features,
            "edge_color": rgba if len(rgba) else "yellow",
            "edge_width": 8,
            "face_color": "transparent",
            "metadata": {"kind": "qupath_annotations", **metadata},
            **frame,
        }
        layers.append(([data_yx(o.ring) for o in annotations], kwargs, "shapes"))
    if detections:
        features, rgba = about(detections)
        centres = np.array([data_yx(o.ring).mean(axis=0) for o in detections])
        sizes = [np.ptp(data_yx(o.ring), axis=0).mean() for o in detections]
        kwargs = {
            "name": f"{stem} detections",
            "features": features,
            "face_color": rgba,
            "border_width": 0,
            "size": float(np.median(sizes)) or 1.0,
            "metadata": {"kind": "qupath_detections", **metadata},
            **frame,
        }
        layers.append((centres, kwargs, "points"))
    return layers


def write_shapes_geojson(path: str, data: list, meta: dict) -> list[str]:
    """npe2 writer: one Shapes layer -> QuPath annotations (level-0 pixels)."""

    scale = np.asarray(meta.get("scale", (1.0, 1.0)), float)[-2:]
    translate = np.asarray(meta.get("translate", (0.0, 0.0)), float)[-2:]
    metadata = meta.get("metadata") or {}
    frame = _slide_frame(metadata.get("slide_id"))
    features = meta.get("features")
    column = next(
        (c for c in (CLASS_FEATURE, "label") if features is not None and c in features), None
    )
    classes = [str(c) for c in features[column]] if column else [""] * len(data)
    colors = metadata.get("class_colors") or {}
    edge = np.asarray(meta.get("edge_color", np.zeros((len(data), 4))), float).reshape(-1, 4)
    shape_types = meta.get("shape_type") or ["polygon"] * len(data)
    objects = []
    for i, (shape, kind, name) in enumerate(zip(data, shape_types, classes, strict=True)):
        if kind in ("line", "path"):
            continue
        points = np.asarray(shape, float)[:, -2:]
        if kind == "ellipse":
            points = ellipse_polygon(points)
        ring = world_to_level0(points * scale + translate, frame.scale, frame.translate)
        rgb = colors.get(name) or tuple(int(round(v * 255)) for v in edge[i, :3])
        objects.append(GeoJsonObject(ring, name or None, tuple(int(v) for v in rgb)))
    write_geojson_objects(path, objects)
    return [str(path)]


def _slide_layers_of_current_viewer() -> list:
    import napari

    from napari_wsi_mil._napari.widgets.job_widget import slide_layers

    viewer = napari.current_viewer()
    return slide_layers(viewer) if viewer is not None else []


def _matching_slide_layer(path: Path):
    """The open slide layer whose slide id is the file's stem or starts it (the longest)."""

    stem = path.name[: -len(".geojson")] if path.name.lower().endswith(".geojson") else path.stem
    matches = [
        (len(sid), layer)
        for layer in _slide_layers_of_current_viewer()
        if stem == (sid := slide_id_for(layer.metadata["slide_path"]))
        or stem.startswith((f"{sid}.", f"{sid}_", f"{sid}-", f"{sid} "))
    ]
    return max(matches, key=lambda m: m[0])[1] if matches else None


def _slide_frame(slide_id: str | None) -> Frame:
    """The frame of the slide layer the shapes lie on: the one of ``slide_id``, else the
    only slide layer open; else level-0 pixels."""

    layers = _slide_layers_of_current_viewer()
    named = [la for la in layers if slide_id_for(la.metadata["slide_path"]) == slide_id]
    layer = named[0] if named else layers[0] if len(layers) == 1 else None
    return Frame() if layer is None else Frame.of_layer(layer)
