"""Pretraining step throughput and peak RSS of each method on CPU.

Targets (issue): "CPU (this machine): record patches/s for one training step of each
method at batch 64, 224 px, and peak RSS". GPU target: 1,500 patches/s on one H100 at
batch 512 with AMP, under 16 GB; not measurable here (no GPU).

Run: ``nice -n 5 python benchmarks/bench_pretrain.py [--steps 3] [--threads N]``.

For each method (simclr, supcon, weaksupcon, clusiam) a fresh interpreter
(``--child``) does exactly what one step of ``pretrain_job`` does after the loader:

- ``ContrastiveModel(method, "random")`` in train mode, the method's default optimiser
  (``build_optimizer`` with ``PretrainConfig(method, batch_size=64)``'s optimiser, lr,
  momentum and weight decay: LARS for simclr, SGD for the others);
- a batch of 64 random uint8 images ``[64, 3, 224, 224]`` (seeded; augmentation and
  model cost do not depend on the pixel values), labels half 0 / half 1 (WeakSupCon
  needs both bag labels in every batch);
- ``two_views(images, 224, HISTOLOGY, generator)`` (augmentation),
  ``contrastive_loss(model, v1, v2, labels, config, generator)`` (forward + loss),
  ``loss.backward()``, ``optimizer.step()``.

1 warm-up step, then ``--steps`` timed steps; wall and process CPU time of each part.
patches/s = 64 / step wall time (each patch is seen as two views, i.e. 128 images
through the trunk per step). Peak RSS = ``VmHWM`` of the child at the end. The data
loader is not included (see ``bench_patch_dataset.py`` for reading patches).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

METHODS = ("simclr", "supcon", "weaksupcon", "clusiam")
BATCH = 64
SIZE = 224


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def child(method: str, steps: int, threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from napari_wsi_mil.pretrain.augment import HISTOLOGY, two_views
    from napari_wsi_mil.pretrain.models import ContrastiveModel
    from napari_wsi_mil.pretrain.optim import build_optimizer
    from napari_wsi_mil.pretrain.trainer import PretrainConfig, contrastive_loss

    rss_import = _common.peak_rss_mib()
    config = PretrainConfig(method=method, batch_size=BATCH, num_workers=0, device="cpu")
    torch.manual_seed(0)
    model = ContrastiveModel(method, "random", config.clusters).train()
    optimizer = build_optimizer(
        config.optimizer, model, config.lr, config.momentum, config.weight_decay
    )
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (BATCH, 3, SIZE, SIZE), dtype=torch.uint8, generator=gen)
    labels = torch.tensor([0] * (BATCH // 2) + [1] * (BATCH // 2))
    rss_model = _common.peak_rss_mib()

    records = []
    for step in range(1 + steps):
        generator = torch.Generator().manual_seed(1000 + step)
        t0, c0 = _clock()
        v1, v2 = two_views(images, SIZE, HISTOLOGY, generator=generator)
        t1, c1 = _clock()
        loss, _ = contrastive_loss(model, v1, v2, labels, config, generator)
        t2, c2 = _clock()
        loss.backward()
        t3, c3 = _clock()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t4, c4 = _clock()
        assert torch.isfinite(loss), loss
        records.append(
            {
                "step": step,
                "warmup": step == 0,
                "loss": float(loss.detach()),
                "wall": {
                    "augment": t1 - t0,
                    "forward_loss": t2 - t1,
                    "backward": t3 - t2,
                    "optimizer": t4 - t3,
                    "total": t4 - t0,
                },
                "cpu": {
                    "augment": c1 - c0,
                    "forward_loss": c2 - c1,
                    "backward": c3 - c2,
                    "optimizer": c4 - c3,
                    "total": c4 - c0,
                },
            }
        )
        del v1, v2, loss
    _common.child_result(
        {
            "method": method,
            "optimizer": config.optimizer,
            "lr": config.lr,
            "torch_threads": torch.get_num_threads(),
            "steps": records,
            "rss_after_import_mib": rss_import,
            "rss_after_model_mib": rss_model,
            "peak_rss_mib": _common.peak_rss_mib(),
        }
    )


def summarise(res: dict) -> dict:
    timed = [r for r in res["steps"] if not r["warmup"]]

    def med(kind, part):
        return statistics.median(r[kind][part] for r in timed)

    total = med("wall", "total")
    aug = med("wall", "augment")
    model = med("wall", "forward_loss") + med("wall", "backward") + med("wall", "optimizer")
    return {
        "method": res["method"],
        "optimizer": res["optimizer"],
        "threads": res["torch_threads"],
        "step_s": total,
        "patches_s": BATCH / total,
        "best_patches_s": BATCH / min(r["wall"]["total"] for r in timed),
        "augment_s": aug,
        "augment_share": aug / total,
        "model_s": model,
        "fwd_s": med("wall", "forward_loss"),
        "bwd_s": med("wall", "backward"),
        "opt_s": med("wall", "optimizer"),
        "model_only_patches_s": BATCH / model,
        "augment_only_patches_s": BATCH / aug,
        "cpu_step_s": med("cpu", "total"),
        "cpu_augment_s": med("cpu", "augment"),
        "cpu_util": med("cpu", "total") / total,
        "peak_rss_mib": res["peak_rss_mib"],
        "rss_model_mib": res["rss_after_model_mib"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    if args.child:
        child(args.method, args.steps, args.threads or None)
        return

    import os

    print("# bench_pretrain\n")
    print(
        f"batch {BATCH}, {SIZE} px, random uint8 images, 1 warm-up + {args.steps} timed steps, "
        f"fresh process per method; load average {os.getloadavg()[0]:.2f}\n",
        flush=True,
    )
    results, rows = [], []
    for method in args.methods.split(","):
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        res = _common.run_child(
            __file__,
            "--method",
            method,
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
        )
        res["child_wall_s"] = time.perf_counter() - t0
        res["loadavg_before"] = load0
        res["loadavg_after"] = os.getloadavg()[0]
        results.append(res)
        row = summarise(res)
        row["load"] = f"{load0:.1f}-{res['loadavg_after']:.1f}"
        rows.append(row)
        print(
            f"{method}: {row['patches_s']:.2f} patches/s, {row['peak_rss_mib']:.0f} MiB", flush=True
        )
    print()
    print(
        _common.markdown_table(
            rows,
            [
                "method",
                "optimizer",
                "threads",
                "step_s",
                "patches_s",
                "best_patches_s",
                "augment_s",
                "augment_share",
                "fwd_s",
                "bwd_s",
                "opt_s",
                "model_only_patches_s",
                "cpu_step_s",
                "cpu_util",
                "peak_rss_mib",
                "load",
            ],
        )
    )
    name = "bench_pretrain" if not args.threads else f"bench_pretrain_threads{args.threads}"
    _common.save(
        name,
        {
            "batch": BATCH,
            "image_size": SIZE,
            "timed_steps": args.steps,
            "gpu_target": "1500 patches/s on one H100, batch 512, AMP, < 16 GB: not measurable "
            "(no GPU in this session)",
            "rows": rows,
            "raw": results,
        },
    )


if __name__ == "__main__":
    main()
