"""Encoder comparison (the WeakSupCon paper's): random-init vs SimCLR vs SupCon vs WeakSupCon.

For a low and a high lesion fraction, each pretraining method and seed: pretrain on the
cohort's training slides, extract features of every slide, then score the features
(``features.quality.feature_separation``: linear-probe and label-free novelty AUC of
tumour vs normal tiles) and train the same MIL model on them (AB-MIL, as in
``bench_mil.train_eval``: test bag AUC and attention instance AUC).

Cohorts: semi-real mosaics (``slide.mosaic.make_mosaic_cohort``) of the labelled real
H&E tiles in ``../shared/data/tiles-labelled`` (the procedural synthetic slides are
too uniform for contrastive learning: two normal patches there differ about as much as
two views of one patch). 24 slides of 8 x 10 tiles, half positive, 17 train / 7 test,
tiled into 28 px patches at 1 um/px (16 per 224 px tile), cached in
``benchmarks/_data/encoders-f<f>/``; the random-init features are the ``random``
encoder's. Pretraining: ``PretrainConfig(method, epochs=E, steps_per_epoch=50,
batch_size=64, image_size=28, num_workers=1, seed=s)``, every other setting the
method's default. Encoders and features are cached under the cohort's folder, so a
rerun only redoes what is missing.

The paper's claims, checked in the output: WeakSupCon at least matches SimCLR; SupCon
(every patch of a positive bag labelled positive) hurts when lesions are small.

Run: ``nice -n 5 python benchmarks/bench_encoders.py [--fractions 0.05 0.2] [--seeds 0 1 2]
[--epochs 3] [--methods simclr supcon weaksupcon]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import bench_mil  # noqa: E402

METHODS = ("simclr", "supcon", "weaksupcon")


TILES = _common.SHARED / "tiles-labelled"
PATCH = 28


def prepare(fraction: float):
    """The cached mosaic cohort of one lesion fraction, tiled, with random-init features."""
    from napari_wsi_mil.jobs import run_job
    from napari_wsi_mil.slide.mosaic import make_mosaic_cohort
    from napari_wsi_mil.slide.tiling import TilingParams
    from napari_wsi_mil.store.cohort import read_cohort
    from napari_wsi_mil.store.project import ProjectStore
    from napari_wsi_mil.store.tiling_job import tile_slides_job

    if not TILES.is_dir():
        sys.exit(f"{TILES} is missing: this benchmark needs the labelled tiles")
    root = _common.DATA / f"encoders-f{fraction:g}"
    csv_path = root / "cohort" / "cohort.csv"
    if not csv_path.exists():
        make_mosaic_cohort(TILES, root / "cohort", n_slides=24, lesion_fractions=(fraction,))
    cohort = read_cohort(csv_path)
    store = ProjectStore(root / "project", create=not (root / "project").exists())
    params = TilingParams(target_mpp=1.0, patch_size=PATCH)
    run_job(tile_slides_job(store, [(e.slide_id, e.path) for e in cohort], params))
    _extract(store, cohort, "random", "random")
    return store, cohort, root


def _extract(store, cohort, spec: str, name: str) -> None:
    import torch

    from napari_wsi_mil.features.extract import extract_features_job
    from napari_wsi_mil.jobs import run_job

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # model in the main process, reading in one worker
    try:
        run_job(extract_features_job(store, cohort.slide_ids, spec, name, num_workers=1))
    finally:
        torch.set_num_threads(threads)


def _init_label(init: str) -> str:
    return init if init in ("random", "imagenet") else Path(init).stem


def encoder_features(
    store, cohort, root: Path, method: str, seed: int, epochs: int, init: str = "random"
) -> dict:
    """Pretrain (cached) and extract; returns the feature-set name and pretraining facts."""
    from napari_wsi_mil.jobs import run_job
    from napari_wsi_mil.pretrain.trainer import PretrainConfig, pretrain_job

    name = f"{method}-e{epochs}-s{seed}"
    if init != "random":
        name += f"-from-{_init_label(init)}"
    encoder = root / "encoders" / f"{name}.safetensors"
    facts = {"features": name}
    if not encoder.exists():
        config = PretrainConfig(
            method=method,
            epochs=epochs,
            steps_per_epoch=50,
            batch_size=64,
            image_size=PATCH,
            num_workers=1,
            seed=seed,
            init=init,
        )
        t0 = time.perf_counter()
        result = run_job(pretrain_job(store, cohort, config, encoder))
        facts |= {
            "pretrain_s": time.perf_counter() - t0,
            "epoch_losses": result.epoch_losses,
            "epoch_spreads": result.epoch_spreads,
            "warnings": result.warnings,
        }
    _extract(store, cohort, str(encoder), name)
    return facts


def evaluate(store, cohort, root: Path, features: str, seed: int, epochs: int) -> dict:
    import torch

    from napari_wsi_mil.features.quality import feature_separation
    from napari_wsi_mil.mil.bags import load_bags

    bags = load_bags(store, cohort, features, annotations=root / "cohort" / "annotations")
    train = [b for b in bags if b.split == "train"]
    test = [b for b in bags if b.split == "test"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small MIL models run fastest on one thread
    try:
        mil = bench_mil.train_eval("abmil", seed, train, test, epochs)
    finally:
        torch.set_num_threads(threads)
    return {
        **feature_separation(bags, seed=seed).as_dict(),
        "bag_auc": mil.get("auc"),
        "instance_auc": mil.get("instance_auc"),
    }


def _summary(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return ""
    spread = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {spread:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--epochs", type=int, default=3, help="pretraining epochs of 50 steps")
    parser.add_argument("--mil-epochs", type=int, default=30)
    parser.add_argument(
        "--init",
        default="random",
        help="trunk the methods start from: random, imagenet or an encoder/.pth FILE; "
        "when not random, its own features are a baseline row too",
    )
    parser.add_argument("--name", default="bench_encoders")
    args = parser.parse_args()

    baselines = ["random"] + ([] if args.init == "random" else [f"init-{_init_label(args.init)}"])
    runs = []
    for fraction in args.fractions:
        store, cohort, root = prepare(fraction)
        if args.init != "random":
            _extract(store, cohort, args.init, baselines[1])
        for seed in args.seeds:
            for method in [*baselines, *args.methods]:
                facts = (
                    {"features": method}
                    if method in baselines
                    else encoder_features(store, cohort, root, method, seed, args.epochs, args.init)
                )
                scores = evaluate(store, cohort, root, facts["features"], seed, args.mil_epochs)
                run = {"fraction": fraction, "seed": seed, "method": method, **facts, **scores}
                runs.append(run)
                print(
                    f"f={fraction:g} seed={seed} {method:10s} "
                    + " ".join(f"{k}={scores[k]:.3f}" for k in scores if scores[k] is not None),
                    flush=True,
                )

    keys = ("probe_auc", "novelty_auc", "mean_cosine", "bag_auc", "instance_auc")
    print(f"\n| lesion fraction | encoder | {' | '.join(keys)} |")
    print("|---|---|" + "---|" * len(keys))
    table = {}
    for fraction in args.fractions:
        for method in [*baselines, *args.methods]:
            rows = [r for r in runs if r["fraction"] == fraction and r["method"] == method]
            cells = {k: _summary([r[k] for r in rows]) for k in keys}
            table[f"{fraction:g}/{method}"] = cells
            print(f"| {fraction:.0%} | {method} | {' | '.join(cells[k] for k in keys)} |")
    _common.save(args.name, {"settings": vars(args), "runs": runs, "table": table})


if __name__ == "__main__":
    main()
