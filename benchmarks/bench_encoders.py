"""Encoder comparison (the WeakSupCon paper's): random-init vs SimCLR vs SupCon vs WeakSupCon.

For a low and a high lesion fraction, each pretraining method and seed: pretrain on the
cohort's training slides, extract features of every slide, then score the features
(``features.quality.feature_separation``: linear-probe and label-free novelty AUC of
tumour vs normal tiles) and train the same MIL model on them (AB-MIL, as in
``_common.train_eval``: test bag AUC and attention instance AUC).

Cohorts: semi-real mosaics (``slide.mosaic.make_mosaic_cohort``) of the labelled real
H&E tiles in ``../shared/data/tiles-labelled`` (the procedural synthetic slides are
too uniform for contrastive learning: two normal patches there differ about as much as
two views of one patch). 24 slides of 8 x 10 tiles, half positive, 17 train / 7 test,
train and test tile pools disjoint, tiled at 1 um/px into ``--patch`` px patches (112:
one patch per 224 px tile at 0.5 um/px; 28: the 16 per tile of README section 16),
cached in ``benchmarks/_data/encoders-f<f>-p<patch>/`` (``_common.mosaic_cohort``). Pretraining:
``PretrainConfig.from_preset(--preset, method=m, seed=s, ...)`` with the knobs given on
the command line (``--view`` is the view size; the others keep the method's defaults).
Each method is compared with its *start*: the random-init trunk the run begins from
(same seed), extracted at the same view size (``start`` rows). Encoders and features
are cached under the cohort's folder by their settings, so a rerun only redoes what is
missing.

The paper's claims, checked in the output: WeakSupCon at least matches SimCLR; SupCon
(every patch of a positive bag labelled positive) hurts when lesions are small.

Run: ``nice -n 5 python benchmarks/bench_encoders.py [--fractions 0.05 0.2] [--seeds 0 1 2]
[--epochs 3] [--methods simclr supcon weaksupcon] [--preset cpu-quick] [--view 64]
[--train-from layer4] [--augment he] [--negative-weight 0.25] [--no-mil]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

METHODS = ("simclr", "supcon", "weaksupcon")


#: Command-line knobs passed to ``PretrainConfig`` when given (None: preset / default).
KNOBS = (
    "epochs",
    "steps_per_epoch",
    "batch_size",
    "lr",
    "warmup_epochs",
    "train_from",
    "augment",
    "negative_weight",
)


def start_features(store, cohort, root: Path, seed: int, view: int) -> dict:
    """Features of the random-init trunk a run of ``seed`` starts from, at ``view`` px."""
    import torch

    from napari_wsi_mil.pretrain.augment import IMAGENET_MEAN, IMAGENET_STD
    from napari_wsi_mil.pretrain.encoder_file import EncoderFile, save_encoder
    from napari_wsi_mil.pretrain.models import resnet18_trunk

    name = f"start-v{view}-s{seed}"
    path = root / "encoders" / f"{name}.safetensors"
    if not path.exists():
        torch.manual_seed(seed)  # as pretrain_job does before building its model
        meta = {
            "arch": "resnet18",
            "method": "none",
            "input_size": view,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "init": "random",
        }
        save_encoder(path, EncoderFile(resnet18_trunk("random").state_dict(), meta))
    _common.extract(store, cohort, str(path), name)
    return {"features": name}


def _init_label(init: str) -> str:
    return init if init in ("random", "imagenet") else Path(init).stem


def encoder_features(store, cohort, root: Path, method: str, seed: int, args) -> dict:
    """Pretrain (cached) and extract; returns the feature-set name and pretraining facts."""
    import json

    from napari_wsi_mil.jobs import run_job
    from napari_wsi_mil.pretrain.trainer import PretrainConfig, pretrain_job

    knobs = {k: getattr(args, k) for k in KNOBS if getattr(args, k) is not None}
    config = PretrainConfig.from_preset(
        args.preset,
        method=method,
        image_size=args.view,
        num_workers=1,
        seed=seed,
        init=args.init,
        allow_collapse=True,
        **knobs,
    )
    tag = "-".join(f"{k}{v}" for k, v in sorted(knobs.items()))
    name = f"{method}-{args.preset or 'default'}-v{args.view}{'-' + tag if tag else ''}-s{seed}"
    if args.init != "random":
        name += f"-from-{_init_label(args.init)}"
    encoder = root / "encoders" / f"{name}.safetensors"
    facts_path = encoder.with_suffix(".json")
    if not encoder.exists():
        t0 = time.perf_counter()
        result = run_job(pretrain_job(store, cohort, config, encoder))
        facts = {
            "pretrain_s": time.perf_counter() - t0,
            "epoch_losses": result.epoch_losses,
            "epoch_spreads": result.epoch_spreads,
            "group_spreads": result.group_spreads,
            "collapsed_at": result.collapsed_at,
            "warnings": result.warnings,
            "config": {k: v for k, v in vars(config).items()},
        }
        facts_path.write_text(json.dumps(facts))
    facts = {"features": name, **json.loads(facts_path.read_text())}
    _common.extract(store, cohort, str(encoder), name)
    return facts


def evaluate(store, cohort, root: Path, features: str, seed: int, epochs: int) -> dict:
    """Probe and novelty AUC; AB-MIL bag and attention AUC unless ``epochs`` is 0."""
    import torch

    from napari_wsi_mil.features.quality import feature_separation
    from napari_wsi_mil.mil.bags import load_bags

    bags = load_bags(store, cohort, features, annotations=root / "cohort" / "annotations")
    train = [b for b in bags if b.split == "train"]
    test = [b for b in bags if b.split == "test"]
    mil = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small MIL models run fastest on one thread
    try:
        if epochs:
            mil = _common.train_eval("abmil", seed, train, test, epochs)
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
    parser.add_argument("--epochs", type=int, help="pretraining epochs (preset's or 10)")
    parser.add_argument("--mil-epochs", type=int, default=30, help="0: no AB-MIL")
    parser.add_argument("--patch", type=int, default=112, help="patch px at 1 um/px (112)")
    parser.add_argument("--view", type=int, default=64, help="view size px (64)")
    parser.add_argument("--preset", help="a pretraining preset, e.g. cpu-quick")
    parser.add_argument("--steps-per-epoch", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--warmup-epochs", type=float)
    parser.add_argument("--train-from")
    parser.add_argument("--augment")
    parser.add_argument("--negative-weight", type=float)
    parser.add_argument(
        "--init",
        default="random",
        help="trunk the methods start from: random, imagenet or an encoder/.pth FILE; "
        "when not random, its own features are a baseline row too",
    )
    parser.add_argument("--name", default="bench_encoders")
    args = parser.parse_args()

    baselines = ["start"] if args.init == "random" else [f"init-{_init_label(args.init)}"]
    runs = []
    for fraction in args.fractions:
        store, cohort, root = _common.mosaic_cohort(fraction, args.patch)
        if args.init != "random":
            _common.extract(store, cohort, args.init, baselines[0])
        for seed in args.seeds:
            for method in [*baselines, *args.methods]:
                if method == "start":
                    facts = start_features(store, cohort, root, seed, args.view)
                elif method in baselines:
                    facts = {"features": method}
                else:
                    facts = encoder_features(store, cohort, root, method, seed, args)
                scores = evaluate(store, cohort, root, facts["features"], seed, args.mil_epochs)
                run = {"fraction": fraction, "seed": seed, "method": method, **facts, **scores}
                runs.append(run)
                print(
                    f"f={fraction:g} seed={seed} {method:10s} "
                    + " ".join(f"{k}={scores[k]:.3f}" for k in scores if scores[k] is not None),
                    flush=True,
                )

    keys = ("probe_auc", "novelty_auc", "mean_cosine", "bag_auc", "instance_auc")
    if not args.mil_epochs:
        keys = keys[:3]
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
