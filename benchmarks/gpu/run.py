"""The GPU path, measured: pretraining and extraction speed on one GPU, in one go.

Parts, each with its own time budget (a part that fails or runs out of time is
recorded with its error, and the rest still runs):

- ``environment``: GPU, driver, torch, CPU count.
- ``cohort`` (a child process, on the CPUs while the GPU parts run): a mosaic cohort
  (:mod:`napari_wsi_mil.slide.mosaic`) of the labelled tiles, tiled twice: patches
  one per tile for pretraining, and with a half-patch stride (4x the patches) for
  end-to-end extraction.
- ``pretrain_step``: the training step of each method (WeakSupCon, SimCLR, SupCon,
  CluSiam) on a device-resident uint8 batch, as ``pretrain_job`` does it after the
  loader: augmentation on the device (``two_views``), bf16 autocast, channels_last,
  forward, loss, backward, optimiser step. Eager, then ``torch.compile`` while the
  budget lasts. patches/s = batch / step time; each patch is two views (images/s is
  twice that). Peak memory = ``torch.cuda.max_memory_allocated`` (on CPU: peak RSS).
- ``extract_model``: the encoder alone on device-resident batches (fp32; fp16 and
  bf16 with channels_last; bf16 compiled).
- ``extract_e2e``: ``extract_features_job`` over the strided project, JPEG-compressed
  pyramidal TIFF -> loader workers -> device, in bf16 and fp16; patches/s over the
  batches after the first (worker start-up excluded) and its ratio to model-only.
- ``compare``: ``pretrain_job`` for WeakSupCon and SimCLR at the full batch for as
  many steps as fit (the same for both), then extraction and
  ``features.quality.feature_separation`` (probe and novelty AUC of tumour vs normal
  tiles of the held-out slides), with random-init features as the baseline; the
  jobs' own end-to-end patches/s (loader included) is recorded too.

Writes ``gpu.json`` and ``gpu.md`` to ``--out`` (default ``$OUT``, else
``benchmarks/results/gpu``). ``--smoke`` runs the same code on the CPU in well under
three minutes (tiny batches, few steps, 28 px patches, ``torch.compile`` with the
"eager" backend). How to run it on a GPU machine: ``benchmarks/README.md``, section GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
CARRY = HERE / "_carry"
METHODS = ("weaksupcon", "simclr", "supcon", "clusiam")
COMPARED = ("weaksupcon", "simclr")


@dataclass(frozen=True)
class Settings:
    device: str
    amp: str  # pretraining autocast (PretrainConfig.amp)
    batch: int  # pretraining batch (patches; two views each)
    image_size: int  # pretraining view side and extraction input side
    warmup_steps: int
    timed_steps: int
    compile_backend: str
    extract_batch: int
    model_batches: int  # timed batches of model-only extraction
    n_slides: int
    rows: int
    cols: int
    tiling_mpp: float  # the mosaic is written at 0.5 um/px with 224 px tiles
    patch: int
    e2e_stride: int | None  # tiling stride of the extraction project (more patches)
    workers: int
    total_s: float
    #: seconds per part; the comparison gets what is left of ``total_s``
    budgets: dict = field(default_factory=dict)
    max_compare_steps: int = 400
    compiled_methods: tuple[str, ...] = METHODS  # pretraining steps also timed compiled
    min_compare_steps: int = 2


def _workers() -> int:
    return max(1, min(14, (os.cpu_count() or 2) - 2))


GPU = Settings(
    device="cuda",
    amp="bf16",
    batch=512,
    image_size=224,
    warmup_steps=3,
    timed_steps=10,
    compile_backend="inductor",
    extract_batch=512,
    model_batches=20,
    n_slides=32,
    rows=10,
    cols=12,
    tiling_mpp=0.5,
    patch=224,
    e2e_stride=224 // 3,
    workers=_workers(),
    total_s=480,
    budgets={"cohort": 120, "pretrain_step": 200, "extract_model": 60, "extract_e2e": 90},
)

SMOKE = Settings(
    device="cpu",
    amp="off",  # CPU bf16 training without native bf16 is ~30x slower; see tests instead
    batch=4,
    image_size=16,
    warmup_steps=1,
    timed_steps=1,
    compile_backend="eager",
    extract_batch=16,
    model_batches=1,
    n_slides=6,
    rows=3,
    cols=4,
    tiling_mpp=7.0,
    patch=16,
    e2e_stride=None,
    workers=1,
    total_s=170,
    budgets={"cohort": 60, "pretrain_step": 80, "extract_model": 30, "extract_e2e": 30},
    max_compare_steps=2,
    compiled_methods=("weaksupcon",),
)


class PartTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise :class:`PartTimeout` in the main thread after ``seconds`` (SIGALRM)."""

    def _raise(signum, frame):
        raise PartTimeout(f"ran past its {seconds:.0f} s budget")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Run:
    """The results so far, the clock and the parts' budgets."""

    def __init__(self, settings: Settings, smoke: bool, out: Path):
        self.settings, self.smoke, self.out = settings, smoke, out
        self.started = time.perf_counter()
        self.sections: dict[str, dict] = {}

    def left(self) -> float:
        return self.settings.total_s - (time.perf_counter() - self.started)

    def part(self, name: str, fn, *args, budget: float | None = None):
        """Run ``fn(*args, section=, deadline=)`` within its budget.

        ``fn`` fills ``section`` as it goes (``rows`` and facts), so a part stopped by
        an error or its budget keeps what it measured: status ``partial``.
        """
        budget = min(self.settings.budgets.get(name, budget or 0) or self.left(), self.left())
        t0 = time.perf_counter()
        record: dict = {"status": "running", "budget_s": round(budget, 1), "rows": []}
        print(f"== {name} (budget {budget:.0f} s)", flush=True)
        try:
            if budget <= 1:
                raise PartTimeout("no time left")
            with time_limit(budget):
                fn(*args, section=record, deadline=t0 + budget)
            record["status"] = "ok"
        except Exception as exc:  # a failing part is recorded; the others still run
            traceback.print_exc()
            record["status"] = "partial" if record["rows"] else "failed"
            record["error"] = _short(exc)
        if not record["rows"]:
            del record["rows"]
        record["seconds"] = round(time.perf_counter() - t0, 1)
        self.sections[name] = record
        print(f"   {record['status']} in {record['seconds']} s", flush=True)
        self.write()
        return record

    def write(self) -> None:
        payload = {
            "benchmark": "gpu",
            "smoke": self.smoke,
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "wall_s": round(time.perf_counter() - self.started, 1),
            "settings": asdict(self.settings),
            "sections": self.sections,
        }
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu.json").write_text(json.dumps(payload, indent=2) + "\n")
        (self.out / "gpu.md").write_text(markdown(payload))


# --------------------------------------------------------------------------- parts


def environment(run: Run, section: dict, deadline: float) -> None:
    import torch

    info = section
    info |= {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpus": os.cpu_count(),
        "device": run.settings.device,
        "memory_measure": "torch.cuda.max_memory_allocated"
        if run.settings.device == "cuda"
        else "process peak RSS (VmHWM)",
    }
    if run.settings.device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device visible to torch")
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        info["bf16"] = torch.cuda.is_bf16_supported()
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
        info["driver"] = smi.stdout.strip() or None


def build_cohort(work: Path, tiles: Path, smoke: bool) -> None:
    """The child process: mosaic slides, then the two tilings (see the module doc)."""
    from napari_wsi_mil.jobs import run_job
    from napari_wsi_mil.slide.mosaic import make_mosaic_cohort
    from napari_wsi_mil.slide.tiling import TilingParams
    from napari_wsi_mil.store.cohort import read_cohort
    from napari_wsi_mil.store.project import ProjectStore
    from napari_wsi_mil.store.tiling_job import tile_slides_job

    s = SMOKE if smoke else GPU
    cohort = make_mosaic_cohort(
        tiles, work / "cohort", n_slides=s.n_slides, rows=s.rows, cols=s.cols, seed=0
    )
    entries = [(e.slide_id, e.path) for e in read_cohort(cohort.csv_path)]
    for name, stride in (("project", None), ("strided", s.e2e_stride)):
        store = ProjectStore(work / name, create=True)
        params = TilingParams(target_mpp=s.tiling_mpp, patch_size=s.patch, stride=stride)
        run_job(tile_slides_job(store, entries, params))


def cohort(run: Run, child: subprocess.Popen, work: Path, section: dict, deadline: float) -> None:
    from napari_wsi_mil.store.cohort import read_cohort
    from napari_wsi_mil.store.project import ProjectStore

    code = child.wait(timeout=max(deadline - time.perf_counter(), 0.01))
    if code != 0:
        raise RuntimeError(f"the cohort builder exited with {code} (its log is above)")
    entries = read_cohort(work / "cohort" / "cohort.csv")
    counts = {}
    for name in ("project", "strided"):
        store = ProjectStore(work / name)
        counts[name] = sum(len(store.read_tiles(e.slide_id)[0]) for e in entries)
    section |= {
        "slides": len(entries),
        "train_slides": sum(e.split == "train" for e in entries),
        "positive_slides": sum(e.label == 1 for e in entries),
        "patches": counts["project"],
        "strided_patches": counts["strided"],
        "patch_px": run.settings.patch,
        "mpp": run.settings.tiling_mpp,
    }


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _step_throughput(run: Run, method: str, compiled: bool) -> dict:
    """Time the training step of ``method`` (see the module doc)."""
    import torch

    from napari_wsi_mil.pretrain.augment import HISTOLOGY, two_views
    from napari_wsi_mil.pretrain.models import ContrastiveModel
    from napari_wsi_mil.pretrain.optim import build_optimizer
    from napari_wsi_mil.pretrain.trainer import PretrainConfig, _autocast, contrastive_loss

    s = run.settings
    device = torch.device(s.device)
    config = PretrainConfig(
        method=method, batch_size=s.batch, image_size=s.image_size, amp=s.amp, device=s.device
    )
    _reset_peak(device)
    torch.manual_seed(0)
    model = ContrastiveModel(method, "random", config.clusters).to(device).train()
    model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model, backend=s.compile_backend) if compiled else model
    optimizer = build_optimizer(
        config.optimizer, model, config.lr, config.momentum, config.weight_decay
    )
    autocast, _ = _autocast(device, config.amp)
    generator = torch.Generator(device).manual_seed(0)
    images = torch.randint(
        0, 256, (s.batch, 3, s.image_size, s.image_size), dtype=torch.uint8, device=device
    )
    labels = torch.arange(s.batch, device=device) % 2  # both bag labels in every batch

    def step() -> float:
        v1, v2 = two_views(images, s.image_size, HISTOLOGY, generator=generator)
        v1 = v1.contiguous(memory_format=torch.channels_last)
        v2 = v2.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss, _ = contrastive_loss(net, v1, v2, labels, config, generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    t0 = time.perf_counter()
    for _ in range(s.warmup_steps):
        loss = step()
    _sync(device)
    warmup = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(s.timed_steps):
        loss = step()
    _sync(device)
    seconds = (time.perf_counter() - t0) / s.timed_steps
    return {
        "method": method,
        "compile": s.compile_backend if compiled else "off",
        "patches_per_s": s.batch / seconds,
        "images_per_s": 2 * s.batch / seconds,
        "step_ms": 1000 * seconds,
        "warmup_s": warmup,
        "peak_mem_gib": _peak_gib(device),
        "loss": loss,
    }


def pretrain_step(run: Run, section: dict, deadline: float) -> None:
    """Every method eager, then compiled while time is left (WeakSupCon first)."""
    import torch

    rows, skipped = section["rows"], section.setdefault("skipped", [])
    for compiled in (False, True):
        for method in METHODS:
            # a compiled variant needs its compile time too: start it only with a
            # third of the budget left for it, else record it as skipped
            if compiled and method not in run.settings.compiled_methods:
                continue
            left = deadline - time.perf_counter()
            if compiled and left < run.settings.budgets["pretrain_step"] / 3:
                skipped.append(f"{method} compiled")
                continue
            try:
                rows.append(_step_throughput(run, method, compiled))
            except Exception as exc:  # a compiler failure costs only the compiled rows
                if not compiled or time.perf_counter() >= deadline:  # (Dynamo wraps the timeout)
                    raise
                skipped.append(f"{method} compiled ({_short(exc)})")
                continue
            print(f"   {_fmt_row(rows[-1])}", flush=True)
            torch._dynamo.reset()  # drop the compiled model before the next peak


def _model_only(run: Run, loaded, precision: str, compiled: bool) -> dict:
    import torch

    from napari_wsi_mil.features.extract import inference_autocast, preprocess

    s = run.settings
    device = torch.device(s.device)
    amp = inference_autocast(device, precision)
    model = loaded.model.to(device).eval()
    channels_last = device.type == "cuda" or amp is not None  # as extract_features_job
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model, backend=s.compile_backend) if compiled else model
    autocasting = torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()
    images = torch.randint(
        0, 256, (s.extract_batch, 3, s.image_size, s.image_size), dtype=torch.uint8, device=device
    )
    _reset_peak(device)
    with torch.inference_mode():

        def batch():
            with autocasting:
                return net(preprocess(images, loaded, device, channels_last)).float()

        t0 = time.perf_counter()
        for _ in range(3 if s.device == "cuda" else 1):
            batch()
        _sync(device)
        warmup = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(s.model_batches):
            feats = batch()
        _sync(device)
        seconds = time.perf_counter() - t0
    return {
        "autocast": precision,
        "channels_last": channels_last,
        "compile": s.compile_backend if compiled else "off",
        "patches_per_s": s.model_batches * s.extract_batch / seconds,
        "warmup_s": warmup,
        "peak_mem_gib": _peak_gib(device),
        "finite": bool(torch.isfinite(feats).all()),
    }


def random_encoder(run: Run):
    """The random-init ResNet-18 at the benchmark's input size (224 px on the GPU)."""
    from napari_wsi_mil.features.encoders import load_encoder_spec

    return replace(load_encoder_spec("random"), input_size=run.settings.image_size)


def _precisions(run: Run) -> list[str]:
    return ["float16", "bfloat16"] if run.settings.device == "cuda" else ["bfloat16"]


def extract_model(run: Run, section: dict, deadline: float) -> None:
    section["encoder"] = "random (ResNet-18)"
    loaded = random_encoder(run)
    variants = [("off", False), *((p, False) for p in _precisions(run)), ("bfloat16", True)]
    for precision, compiled in variants:
        try:
            section["rows"].append(_model_only(run, loaded, precision, compiled))
        except Exception as exc:  # a compiler failure costs only the compiled row
            if not compiled or time.perf_counter() >= deadline:  # (Dynamo wraps the timeout)
                raise
            section.setdefault("skipped", []).append(f"{precision} compiled ({_short(exc)})")
            continue
        print(f"   {_fmt_row(section['rows'][-1])}", flush=True)


def _extract(run: Run, store, slide_ids, encoder, name, precision: str) -> dict:
    """Run ``extract_features_job``; patches/s over the batches after the first."""
    from napari_wsi_mil.features.extract import extract_features_job

    s = run.settings
    job = extract_features_job(
        store,
        slide_ids,
        encoder,
        name,
        batch_size=s.extract_batch,
        num_workers=s.workers,
        device=s.device,
        overwrite=True,
        autocast=precision,
    )
    t0, first, done = time.perf_counter(), None, 0
    try:
        while True:
            progress = next(job)
            if first is None:
                first, first_done = time.perf_counter(), progress.done
            done = progress.done
    except StopIteration as stop:
        report = stop.value
    seconds = time.perf_counter() - t0
    steady = (done - first_done) / max(time.perf_counter() - first, 1e-9)
    if report.failed:
        raise RuntimeError(f"extraction failed for {report.failed}")
    return {
        "patches": done,
        "seconds": seconds,
        "patches_per_s": steady if done > first_done else done / seconds,
        "job_patches_per_s": report.patches_per_second,
    }


def extract_e2e(run: Run, work: Path, section: dict, deadline: float) -> None:
    from napari_wsi_mil.store.cohort import read_cohort
    from napari_wsi_mil.store.project import ProjectStore

    store = ProjectStore(work / "strided")
    ids = [e.slide_id for e in read_cohort(work / "cohort" / "cohort.csv")]
    model_rate = {
        r["autocast"]: r["patches_per_s"]
        for r in run.sections.get("extract_model", {}).get("rows", [])
        if r["compile"] == "off"
    }
    section["source"] = "JPEG-compressed pyramidal TIFF (mosaic slides)"
    for precision in reversed(_precisions(run)):  # bfloat16 first
        row = {"autocast": precision, "workers": run.settings.workers}
        row |= _extract(run, store, ids, random_encoder(run), f"e2e-{precision}", precision)
        if precision in model_rate:
            row["of_model_only"] = row["patches_per_s"] / model_rate[precision]
        section["rows"].append(row)
        print(f"   {_fmt_row(row)}", flush=True)


def compare(run: Run, work: Path, section: dict, deadline: float) -> None:
    """WeakSupCon vs SimCLR vs random-init features (see the module doc)."""
    from napari_wsi_mil.features.quality import feature_separation
    from napari_wsi_mil.mil.bags import load_bags
    from napari_wsi_mil.pretrain.trainer import PretrainConfig, pretrain_job
    from napari_wsi_mil.store.cohort import read_cohort
    from napari_wsi_mil.store.project import ProjectStore

    s = run.settings
    store = ProjectStore(work / "project")
    entries = read_cohort(work / "cohort" / "cohort.csv")
    ids = [e.slide_id for e in entries]

    def separation(name: str) -> dict:
        bags = load_bags(store, entries, name, annotations=work / "cohort" / "annotations")
        return feature_separation(bags, seed=0).as_dict()

    t0 = time.perf_counter()
    rows = section["rows"]
    random = random_encoder(run)
    rows.append({"encoder": "random", **separation_after(run, store, ids, random, separation)})
    evaluation_s = time.perf_counter() - t0
    # the loader-bound job runs at about half the step's rate: size the runs from the
    # measured eager WeakSupCon step, leaving each method's evaluation time
    steps_rate = next(
        (
            r["patches_per_s"]
            for r in run.sections.get("pretrain_step", {}).get("rows", [])
            if r["method"] == "weaksupcon" and r["compile"] == "off"
        ),
        None,
    )
    per_method = (deadline - time.perf_counter()) / len(COMPARED) - 2 * evaluation_s - 15
    steps = s.min_compare_steps
    if steps_rate:
        steps = int(per_method * 0.4 * steps_rate / s.batch)
    steps = section["steps"] = max(s.min_compare_steps, min(s.max_compare_steps, steps))
    for method in COMPARED:
        config = PretrainConfig(
            method=method,
            epochs=1,
            steps_per_epoch=steps,
            batch_size=s.batch,
            image_size=s.image_size,
            amp=s.amp,
            num_workers=s.workers,
            device=s.device,
            seed=0,
        )
        encoder = work / "encoders" / f"{method}.safetensors"
        t0, marks = time.perf_counter(), []
        job = pretrain_job(store, entries, config, encoder)
        try:
            while True:
                next(job)
                marks.append(time.perf_counter())
        except StopIteration as stop:
            result = stop.value
        except Exception as exc:  # e.g. a collapse the trainer stops on: a finding, recorded
            if time.perf_counter() >= deadline:
                raise
            rows.append({"encoder": method, "steps": steps, "error": _short(exc)})
            print(f"   {_fmt_row(rows[-1])}", flush=True)
            continue
        pretrain_s = time.perf_counter() - t0
        # loader start-up and the first step's warm-up excluded
        later = marks[1:] if len(marks) > 2 else marks
        job_rate = s.batch * (len(later) - 1) / max(later[-1] - later[0], 1e-9)
        row = {
            "encoder": method,
            "steps": steps,
            "batch": s.batch,
            "pretrain_s": pretrain_s,
            "job_patches_per_s": job_rate if len(later) > 1 else s.batch * steps / pretrain_s,
            "final_loss": result.epoch_losses[-1],
            "final_spread": result.final_spread,
        }
        row |= separation_after(run, store, ids, str(encoder), separation, method)
        rows.append(row)
        print(f"   {_fmt_row(row)}", flush=True)


def separation_after(run: Run, store, ids, encoder, separation, name: str = "random"):
    precision = "bfloat16"
    _extract(run, store, ids, encoder, name, precision)
    return separation(name)


# --------------------------------------------------------------------------- output


def _fmt(v) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return "" if v is None else str(v)


def _short(exc: Exception) -> str:
    """The exception's type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"


def _fmt_row(row: dict) -> str:
    return ", ".join(f"{k} {_fmt(v)}" for k, v in row.items())


def _table(rows: list[dict]) -> list[str]:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows),
    ]


def markdown(payload: dict) -> str:
    label = "SMOKE (CPU, tiny sizes: not a measurement)" if payload["smoke"] else "GPU"
    lines = [f"# GPU benchmark: {label}", "", f"{payload['date']}, {payload['wall_s']} s", ""]
    for name, section in payload["sections"].items():
        head = f"## {name}: {section.get('status')} in {section.get('seconds')} s"
        lines += [head, ""]
        if section.get("error"):
            lines += [f"error: `{section['error']}`", ""]
        if section.get("rows"):
            lines += [*_table(section["rows"]), ""]
        facts = {
            k: v
            for k, v in section.items()
            if k not in ("rows", "status", "seconds", "error") and not isinstance(v, list | dict)
        }
        if section.get("skipped"):
            facts["skipped"] = ", ".join(section["skipped"])
        if facts:
            lines += [_fmt_row(facts), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the same code on CPU, tiny sizes")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default $OUT)")
    parser.add_argument("--tiles", type=Path, default=None, help="labelled tiles folder")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (cohort, stores)")
    parser.add_argument(
        "--budget-scale",
        type=float,
        default=1.0,
        help="multiply every time budget (for a slow or busy machine)",
    )
    parser.add_argument("--build-cohort", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    settings = SMOKE if args.smoke else GPU
    if args.smoke:  # the CPU machines this runs on are shared
        import torch

        torch.set_num_threads(1)
    if args.budget_scale != 1.0:
        settings = replace(
            settings,
            total_s=settings.total_s * args.budget_scale,
            budgets={k: v * args.budget_scale for k, v in settings.budgets.items()},
        )
    shared = Path(os.environ.get("WSI_MIL_SHARED", HERE.parents[2] / "shared" / "data"))
    tiles = args.tiles or next(
        (p for p in (CARRY / "tiles", shared / "tiles-labelled") if p.is_dir()), CARRY / "tiles"
    )
    work = args.work or Path(os.environ.get("TMPDIR", "/tmp")) / f"wsi-mil-gpu-{os.getpid()}"
    if args.build_cohort:
        build_cohort(work, tiles, args.smoke)
        return 0
    out = args.out or Path(os.environ.get("OUT") or HERE.parent / "results" / "gpu")
    run = Run(settings, args.smoke, out)
    child = subprocess.Popen(
        [sys.executable, __file__, "--build-cohort", "--work", str(work), "--tiles", str(tiles)]
        + (["--smoke"] if args.smoke else []),
    )
    try:
        run.part("environment", environment, run, budget=30)
        run.part("pretrain_step", pretrain_step, run)
        run.part("extract_model", extract_model, run)
        run.part("cohort", cohort, run, child, work)
        if run.sections["cohort"]["status"] == "ok":
            run.part("extract_e2e", extract_e2e, run, work)
            run.part("compare", compare, run, work, budget=run.left())
        else:
            for name in ("extract_e2e", "compare"):
                run.sections[name] = {"status": "failed", "error": "no cohort"}
    finally:
        if child.poll() is None:
            child.kill()
    run.write()
    print((out / "gpu.md").read_text())
    failed = [k for k, v in run.sections.items() if v.get("status") != "ok"]
    print(f"results in {out}; failed parts: {failed or 'none'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
