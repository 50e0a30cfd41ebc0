"""Extraction speed and peak memory per encoder name (issue "Pretrained encoders by name").

Encoders, each loaded the way users load them (``load_encoder_spec``) from generated
weights (no network here): ``random``; ``imagenet`` and ``ciga`` (a generated
torchvision state dict / Lightning checkpoint put into a private torch hub cache under
their real file names, ``HF_HUB_OFFLINE=1``); ``vit_base_patch16_224`` (a timm name,
ViT-B/16, 768-d, 224 px) with ``--weights`` pointing at a generated safetensors file.

Per encoder, in a fresh interpreter (``--child``), CPU, ``torch.set_num_threads(T)``:

(a) model only: ``preprocess`` once, then the model on a ``[B, 3, 224, 224]`` batch,
    1 warm-up + ``--batches`` timed batches;
(b) end to end: ``extract_features_job(store, ids, spec, ..., batch_size=B,
    num_workers=1, weights=...)`` over a small tiled synthetic cohort
    (``make_cohort(n_slides=2, width=1536, height=1024, mpp=0.5, seed=0)``, 224 px at
    0.5 um/px), slide file to stored float16 features;
peak RSS (``VmHWM``) of the child at the end.

Run: ``nice -n 5 python benchmarks/bench_encoder_speed.py [--threads 2] [--batch 16]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

ENCODERS = ("random", "imagenet", "ciga", "vit_base_patch16_224")
DATA = _common.DATA / "encoder-speed"


def _project():
    from napari_wsi_mil.jobs import run_job
    from napari_wsi_mil.slide.synthetic import make_cohort
    from napari_wsi_mil.slide.tiling import TilingParams
    from napari_wsi_mil.store.cohort import read_cohort
    from napari_wsi_mil.store.project import ProjectStore
    from napari_wsi_mil.store.tiling_job import tile_slides_job

    if not (DATA / "project").exists():
        cohort = make_cohort(DATA / "cohort", n_slides=2, width=1536, height=1024, mpp=0.5, seed=0)
        store = ProjectStore(DATA / "project", create=True)
        pairs = [(e.slide_id, e.path) for e in read_cohort(cohort.csv_path)]
        run_job(tile_slides_job(store, pairs, TilingParams()))
    return ProjectStore(DATA / "project")


def _weights(spec: str, root: Path) -> str | None:
    """Generated weights where the user's path expects them; returns ``--weights``."""
    import torch

    from napari_wsi_mil.pretrain.models import resnet18_trunk

    os.environ["TORCH_HOME"] = str(root / "torch")
    os.environ["HF_HUB_OFFLINE"] = "1"
    checkpoints = root / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    state = resnet18_trunk().state_dict()
    if spec == "imagenet":
        torch.save(state, checkpoints / "resnet18-f37072fd.pth")
    if spec == "ciga":
        wrapped = {f"model.resnet.{k}": v for k, v in state.items()}
        torch.save({"state_dict": wrapped, "epoch": 1}, checkpoints / "tenpercent_resnet18.ckpt")
    if spec.startswith("vit_"):
        import timm
        from safetensors.torch import save_file

        path = root / f"{spec}.safetensors"
        save_file(timm.create_model(spec, num_classes=0).state_dict(), path)
        return str(path)
    return None


def child(spec: str, threads: int, batch: int, batches: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from napari_wsi_mil.features.encoders import load_encoder_spec
    from napari_wsi_mil.features.extract import extract_features_job, preprocess
    from napari_wsi_mil.jobs import run_job

    store = _project()
    with tempfile.TemporaryDirectory() as tmp:
        weights = _weights(spec, Path(tmp))
        loaded = load_encoder_spec(spec, weights)
        images = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8)
        x = preprocess(images, loaded, torch.device("cpu"))
        with torch.inference_mode():
            loaded.model(x)
            start = time.perf_counter()
            for _ in range(batches):
                loaded.model(x)
            model_only = batch * batches / (time.perf_counter() - start)
        ids = store.slide_ids()
        start = time.perf_counter()
        job = extract_features_job(
            store, ids, spec, f"bench-{spec}", batch_size=batch, num_workers=1,
            device="cpu", overwrite=True, weights=weights,
        )  # fmt: skip
        report = run_job(job)
        elapsed = time.perf_counter() - start
    patches = sum(report.extracted.values())
    return {
        "encoder": spec,
        "dim": loaded.dim,
        "model_only_pps": model_only,
        "end_to_end_pps": patches / elapsed,
        "end_to_end_over_model": patches / elapsed / model_only,
        "patches": patches,
        "peak_rss_mib": _common.peak_rss_mib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=4)
    args = parser.parse_args()
    if args.child:
        _common.child_result(child(args.child, args.threads, args.batch, args.batches))
        return
    _project()
    rows = []
    for spec in ENCODERS:
        row = _common.run_child(
            __file__, spec, "--threads", args.threads, "--batch", args.batch,
            "--batches", args.batches,
        )  # fmt: skip
        print(row, flush=True)
        rows.append(row)
    columns = ["encoder", "dim", "model_only_pps", "end_to_end_pps", "end_to_end_over_model",
               "patches", "peak_rss_mib"]  # fmt: skip
    print(_common.markdown_table(rows, columns))
    _common.save("encoder_speed", {"threads": args.threads, "batch": args.batch, "rows": rows})


if __name__ == "__main__":
    main()
