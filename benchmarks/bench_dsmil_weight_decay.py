"""DSMIL's weight decay on tissue features: does its attention survive training?

DSMIL's paper trains with Adam and a weight decay of 5e-3 (coupled L2). On features that
are all positive with a large common part (a CNN's pooled ReLU features) that term drove
the query network to zero: the attention came out exactly uniform. This measures it on two
cached mosaic cohorts of real tiles with random-init ResNet-18 features: the binary one of
``bench_encoders`` (20% lesions, 112 px patches, its ``start-v64-s0`` features) and the
three-class one of ``bench_multiclass`` (``random`` features). Each weight decay and seed
trains DSMIL with ``fit_job`` (registry defaults otherwise, ``--epochs``) on the training
slides and reports the test bag AUC (macro one-vs-rest with three classes) and on how many
test bags the attention is uniform (its largest weight times the bag size below 1.001).

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_dsmil_weight_decay.py [--epochs 100]
[--seeds 0,1,2] [--weight-decays 5e-3,1e-3,1e-4]`` (README section 33).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import bench_multiclass  # noqa: E402


def cohorts() -> dict[str, tuple]:
    """``name -> (training bags, test bags, classes)`` of the two cohorts (classes None:
    binary)."""
    from napari_wsi_mil.mil.bags import load_bags

    train, test = _common.mosaic_bags(0.2, 112, "start-v64-s0")  # bench_encoders' start
    out = {"binary mosaic, 20% lesions": (train, test, None)}
    store, table, root = bench_multiclass.cohort(36, 0.2)
    _common.extract(store, table, "random", "random")
    bags = load_bags(store, table, "random", annotations=root / "cohort" / "annotations")
    train = [b for b in bags if b.split == "train"]
    out["3-class mosaic"] = (train, [b for b in bags if b.split == "test"], table.classes)
    return out


def run(weight_decay: float, seed: int, epochs: int, train, test, classes) -> dict:
    import torch

    from napari_wsi_mil.jobs import run_job
    from napari_wsi_mil.mil.train import MilConfig, evaluate_bags, fit_job

    config = MilConfig(
        model="dsmil", epochs=epochs, seed=seed, weight_decay=weight_decay, threads=1,
        hparams={"n_classes": len(classes) if classes else 2},
    )  # fmt: skip
    model, _ = run_job(fit_job(config, train, [], "train"))
    uniform = 0
    with torch.no_grad():
        for bag in test:
            attention = model.streams(torch.as_tensor(bag.features)).attention
            uniform += bool((attention.max(dim=0).values * len(bag.features) < 1.001).all())
    auc = evaluate_bags(model, test, classes=classes)["auc"]
    return {"weight_decay": weight_decay, "seed": seed, "auc": auc, "uniform_bags": uniform}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--weight-decays", default="5e-3,1e-3,1e-4")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, runs = [], []
    for name, (train, test, classes) in cohorts().items():
        for wd in (float(w) for w in args.weight_decays.split(",")):
            these = [run(wd, seed, args.epochs, train, test, classes) for seed in seeds]
            runs += [{"cohort": name, **r} for r in these]
            aucs = [r["auc"] for r in these]
            rows.append(
                {
                    "cohort": name,
                    "weight_decay": f"{wd:g}",
                    "bag_auc_per_seed": " / ".join(f"{a:.3f}" for a in aucs),
                    "mean": f"{statistics.mean(aucs):.3f}",
                    "uniform_test_bags_per_seed": " / ".join(
                        f"{r['uniform_bags']}/{len(test)}" for r in these
                    ),
                }
            )
            print(rows[-1], flush=True)
    columns = ["cohort", "weight_decay", "bag_auc_per_seed", "mean", "uniform_test_bags_per_seed"]
    print(_common.markdown_table(rows, columns))
    _common.save("bench_dsmil_weight_decay", {"epochs": args.epochs, "rows": rows, "runs": runs})


if __name__ == "__main__":
    main()
