"""The "Demo cohort" sample: a held-out slide with a lesion and a MIL model trained for it.

:func:`demo_sample_job` builds a small cohort of mosaic slides from the same packaged
real H&E tiles as ``wsi-mil demo`` (:func:`napari_wsi_mil.demo.cohort_job`; test slides
use other tile images than training slides), tiles its training slides, extracts their
features with the seeded random ResNet-18 (``"random"``, so no pretraining is needed),
trains a small MIL model on them with the lesion outlines as tile labels and picks the
positive ``split=test`` slide with the largest lesion, which the build then scores with
the model (``test_probability`` and ``threshold`` in ``sample.json``). With the defaults
the test slide is ``mosaic_005`` (a lesion on 15% of its 6 x 8 tiles) and MS-CLAM calls it
tumour, P = 0.61 at threshold 0.5; AB-MIL, tried in its place, gave 0.45. MS-CLAM's
attention is undertrained at 40 epochs (training-slide instance AUC 0.37, AB-MIL's 0.65),
so the heatmap is rough. The build took 444 s at a load average of about 20 on two cores
shared by many jobs; it is not timed on a quiet machine.

Everything is built under a temporary name and renamed into ``<cache>/demo_cohort_v2``
at the end (:func:`~napari_wsi_mil.jobs.atomic_dir`), so a killed build leaves nothing
that looks finished and a second call returns at once. Settings other than the defaults
get their own folder (the version string plus a digest of the settings).

The cache folder holds::

    sample.json                 what was built (paths relative to the folder)
    cohort/cohort.csv, slides/, annotations/   the generated cohort and lesion outlines
    run/model.safetensors       the MS-CLAM model (with config.json, metrics.json, ...)

The training project is dropped after training (its tiles record the build folder's
temporary paths); :attr:`DemoSample.project` names an empty ``analysis`` project beside
the run, which "Analyse slide" creates on first use to tile and extract the test slide
with the model's settings. Qt-free: the napari sample only turns the result into layers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from napari_wsi_mil.demo import cohort_job
from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.jobs import Job, atomic_dir, relay, run_job
from napari_wsi_mil.mil.infer import infer_job
from napari_wsi_mil.slide.tiling import TilingParams
from napari_wsi_mil.store.cohort import Cohort, read_cohort
from napari_wsi_mil.store.project import ProjectStore
from napari_wsi_mil.store.tiling_job import tile_slides_job

#: Cache key of the default build; bump it whenever what is built changes.
VERSION = "demo_cohort_v2"
MANIFEST = "sample.json"


@dataclass
class DemoSampleSettings:
    """What is built (the defaults: 10 slides, 8 for training; see the module doc)."""

    slides: int = 10
    rows: int = 6  # tiles of 224 px at 0.5 um/px per slide
    cols: int = 8
    lesion_fractions: tuple[float, ...] = (0.15, 0.25)
    test_fraction: float = 0.2  # of the cases of each label: 1 positive, 1 negative test slide
    target_mpp: float = 1.0
    patch_size: int = 28
    model: str = "msclam"
    hparams: dict = field(
        default_factory=lambda: {"embed_dim": 128, "attention_dim": 64, "b_plus": 256}
    )
    epochs: int = 40
    lr: float | None = None  # the model's default
    threads: int = 1  # small patches and models: one thread is fastest, and kind to the UI
    seed: int = 0


@dataclass
class DemoSample:
    """A built demo sample (absolute paths)."""

    root: Path
    slide_id: str
    slide_path: Path
    label: int
    lesion_fraction: float
    annotation_path: Path  # QuPath GeoJSON of the true lesion outlines
    model_path: Path
    project: Path  # where "Analyse slide" tiles and extracts the slide (made on first use)


def sample_dir(
    cache_dir: str | os.PathLike | None = None, settings: DemoSampleSettings | None = None
) -> Path:
    """The cache folder of a build: ``<cache>/demo_cohort_v1`` for the default settings,
    ``<cache>/demo_cohort_v1-<digest>`` for others."""
    from napari_wsi_mil.slide.synthetic import default_cache_dir

    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    settings = settings or DemoSampleSettings()
    if settings == DemoSampleSettings():
        return folder / VERSION
    text = json.dumps(asdict(settings), sort_keys=True)
    return folder / f"{VERSION}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def load_demo_sample(root: str | os.PathLike) -> DemoSample | None:
    """The sample built in ``root``, or None when it is missing, foreign or incomplete."""
    root = Path(root)
    try:
        meta = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("version") != VERSION:
        return None
    sample = DemoSample(
        root=root,
        slide_id=meta["slide_id"],
        slide_path=root / meta["slide"],
        label=int(meta["label"]),
        lesion_fraction=float(meta["lesion_fraction"]),
        annotation_path=root / meta["annotations"],
        model_path=root / meta["model"],
        project=root / meta["project"],
    )
    files = (sample.slide_path, sample.annotation_path, sample.model_path)
    return sample if all(p.is_file() for p in files) else None


def demo_sample_job(
    cache_dir: str | os.PathLike | None = None, settings: DemoSampleSettings | None = None
) -> Job[DemoSample]:
    """Build the demo sample into the cache (or find it there); see the module doc."""
    settings = settings or DemoSampleSettings()
    final = sample_dir(cache_dir, settings)
    found = load_demo_sample(final)
    if found is not None:
        return found
    import torch

    threads = torch.get_num_threads()
    try:
        # a broken build under the same key is replaced; a new one is never overwritten
        with atomic_dir(final, overwrite=final.exists()) as tmp:
            yield from _build(tmp, settings)
    except FileExistsError:  # another process finished the same build first
        pass
    finally:
        torch.set_num_threads(threads)
    sample = load_demo_sample(final)
    if sample is None:
        raise WsiMilError(f"{final}: the demo sample was built but cannot be read back")
    return sample


def demo_sample(
    cache_dir: str | os.PathLike | None = None, settings: DemoSampleSettings | None = None
) -> DemoSample:
    """Run :func:`demo_sample_job` to the end; same arguments."""
    return run_job(demo_sample_job(cache_dir, settings))


def _build(root: Path, s: DemoSampleSettings) -> Job[None]:
    import torch

    from napari_wsi_mil.features.extract import extract_features_job
    from napari_wsi_mil.mil.train import MilConfig, train_mil_job

    started = time.perf_counter()
    torch.set_num_threads(s.threads)
    mosaic = yield from relay("demo cohort", cohort_job(s, root / "cohort"))
    cohort = read_cohort(mosaic.csv_path)
    fractions = dict(zip(mosaic.slide_ids, mosaic.lesion_fractions, strict=True))
    tests = [e for e in cohort if e.split == "test" and e.label == 1]
    if not tests:
        raise WsiMilError(
            f"the demo cohort of {s.slides} slides has no positive test slide; "
            "use more slides or a larger test fraction"
        )
    test = max(tests, key=lambda e: fractions[e.slide_id])
    train = Cohort([e for e in cohort if e.split == "train"])
    store = ProjectStore(root / "project", create=True)
    params = TilingParams(target_mpp=s.target_mpp, patch_size=s.patch_size)
    used = [*train, test]
    yield from relay("tiling", tile_slides_job(store, [(e.slide_id, e.path) for e in used], params))
    ids = [e.slide_id for e in used]
    yield from relay(
        "features", extract_features_job(store, ids, "random", "random", num_workers=0)
    )
    config = MilConfig(
        model=s.model,
        epochs=s.epochs,
        lr=s.lr,
        seed=s.seed,
        hparams=dict(s.hparams),
        threads=s.threads,
    )
    result = yield from relay(
        f"{s.model} training",
        train_mil_job(
            store,
            train,
            "random",
            root / "run",
            config,
            annotations=root / "cohort" / "annotations",
        ),
    )
    # what the sample promises: its model calls the held-out slide tumour
    scored = yield from relay(
        "scoring the test slide",
        infer_job(store, result.model_path, slide_ids=[test.slide_id], name="test"),
    )
    shutil.rmtree(store.root)  # its tiles name this temporary folder; the model is what counts
    meta = {
        "version": VERSION,
        "settings": asdict(s),
        "slide_id": test.slide_id,
        "slide": test.path.relative_to(root.resolve()).as_posix(),
        "label": test.label,
        "lesion_fraction": fractions[test.slide_id],
        "annotations": f"cohort/annotations/{test.slide_id}.geojson",
        "model": result.model_path.relative_to(root).as_posix(),
        "project": "analysis",
        "train_metrics": result.metrics.get("train"),
        "test_probability": scored.probabilities[test.slide_id],
        "threshold": scored.threshold,
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    (root / MANIFEST).write_text(json.dumps(meta, indent=2))
