"""Three classes on semi-real slides: normal vs tumour vs lymphocyte lesions.

Cohort: a mosaic cohort (``slide.mosaic``, ``lesion_kinds=("tumour", "lymphocytes")``)
of ``--slides`` slides of 8 x 10 real H&E tiles from ``../shared/data/tiles-labelled``
(CC BY 4.0), a third each normal, tumour-lesion and lymphocyte-lesion, lesions covering
``--fraction`` of a slide, train and test tile pools disjoint, 30% of each class tested.
Tiled at 1 um/px into 112 px patches; features of the random-init ResNet-18 (``random``;
no pretrained weights are reachable offline here).

Each model is trained by ``fit_job`` (its registry defaults, ``--epochs``) on the training
slides and evaluated on the test slides with ``evaluate_bags(..., classes)``: macro
one-vs-rest bag AUC, each class's AUC, balanced accuracy and the confusion matrix. Per
class instance AUC: on the test slides of class ``k >= 1``, the lesion tiles against the
rest, scored by the model's attention branch of class ``k`` where it has one per class
(CLAM-MB, DSMIL: ``class_attention``) else by its ``instance_probability``.

Run: ``OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_multiclass.py
[--models abmil,clam,clam-mb,dtfd,transmil,dsmil] [--seeds 0,1,2] [--epochs 40]
[--slides 36] [--fraction 0.2]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import numpy as np  # noqa: E402

KINDS = ("tumour", "lymphocytes")


def cohort(slides: int, fraction: float, patch: int = 112):
    """The cached three-class mosaic cohort, tiled: ``(store, cohort, root)``."""
    from napari_wsi_mil.jobs import run_job
    from napari_wsi_mil.slide.mosaic import make_mosaic_cohort
    from napari_wsi_mil.slide.tiling import TilingParams
    from napari_wsi_mil.store.cohort import read_cohort
    from napari_wsi_mil.store.project import ProjectStore
    from napari_wsi_mil.store.tiling_job import tile_slides_job

    root = _common.DATA / f"multiclass-n{slides}-f{fraction:g}-p{patch}"
    csv_path = root / "cohort" / "cohort.csv"
    if not csv_path.exists():
        make_mosaic_cohort(
            _common.SHARED / "tiles-labelled",
            root / "cohort",
            n_slides=slides,
            lesion_fractions=(fraction,),
            lesion_kinds=KINDS,
        )
    table = read_cohort(csv_path)
    store = ProjectStore(root / "project", create=not (root / "project").exists())
    params = TilingParams(target_mpp=1.0, patch_size=patch)
    run_job(tile_slides_job(store, [(e.slide_id, e.path) for e in table], params))
    return store, table, root


def class_instance_aucs(model, bags, classes) -> dict[str, float | None]:
    """Per non-negative class: lesion tiles vs the rest on that class's slides."""
    from napari_wsi_mil.mil.metrics import instance_metrics
    from napari_wsi_mil.mil.predict import predict_bags

    out = {}
    for k, name in enumerate(classes):
        if k == 0:
            continue
        own = [b for b in bags if b.label == k]
        preds = predict_bags(model, own)
        scores = [
            p.instance_probability if p.class_attention is None else p.class_attention[k]
            for p in preds
        ]
        tiles = [b.tile_labels for b in own]
        out[name] = instance_metrics(np.concatenate(tiles), np.concatenate(scores))["instance_auc"]
    return out


def run(model_name: str, seed: int, epochs: int, train, test, classes) -> dict:
    from napari_wsi_mil.jobs import run_job
    from napari_wsi_mil.mil.train import MilConfig, evaluate_bags, fit_job

    config = MilConfig(
        model=model_name, epochs=epochs, seed=seed, threads=1,
        hparams={"n_classes": len(classes)},
    )  # fmt: skip
    started = time.perf_counter()
    model, _ = run_job(fit_job(config, train, [], "train"))
    seconds = time.perf_counter() - started
    metrics = evaluate_bags(model, test, classes=classes)
    metrics["class_instance_auc"] = class_instance_aucs(model, test, classes)
    metrics["seconds"] = seconds
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="abmil,clam,clam-mb,dtfd,transmil,dsmil")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--slides", type=int, default=36)
    parser.add_argument("--fraction", type=float, default=0.2)
    args = parser.parse_args()

    import torch

    from napari_wsi_mil.mil.bags import load_bags

    torch.set_num_threads(1)
    store, table, root = cohort(args.slides, args.fraction)
    _common.extract(store, table, "random", "random")
    bags = load_bags(store, table, "random", annotations=root / "cohort" / "annotations")
    train = [b for b in bags if b.split == "train"]
    test = [b for b in bags if b.split == "test"]
    classes = table.classes
    counts = {c: sum(b.label == k for b in test) for k, c in enumerate(classes)}
    print(f"classes {classes}; {len(train)} training, {len(test)} test slides {counts}")
    header = "| model | bag AUC (macro) | " + " | ".join(f"AUC {c}" for c in classes)
    header += " | balanced acc. | " + " | ".join(f"inst. AUC {c}" for c in classes[1:])
    header += " | s / run |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    seeds = [int(s) for s in args.seeds.split(",")]
    for name in args.models.split(","):
        runs = [run(name, seed, args.epochs, train, test, classes) for seed in seeds]

        def cell(values) -> str:
            values = [v for v in values if v is not None]
            if not values:
                return "-"
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.3f} +- {spread:.3f}"

        cells = [cell([r["auc"] for r in runs])]
        cells += [cell([r["class_auc"][c] for r in runs]) for c in classes]
        cells += [cell([r["balanced_accuracy"] for r in runs])]
        cells += [cell([r["class_instance_auc"][c] for r in runs]) for c in classes[1:]]
        cells += [f"{statistics.mean(r['seconds'] for r in runs):.0f}"]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
        for seed, r in zip(seeds, runs, strict=True):
            print(f"  seed {seed}: confusion {r['confusion_matrix']}", flush=True)


if __name__ == "__main__":
    main()
