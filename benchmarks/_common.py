"""Shared helpers for the benchmarks: synthetic slide cache, fresh-subprocess runs, output.

Not a benchmark itself. Every benchmark script imports this module (it sits next to
them, so ``python benchmarks/<name>.py`` finds it).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "_data"
#: ``../shared/data`` beside the repository (real slides and tiles; never committed)
SHARED = Path(os.environ.get("WSI_MIL_SHARED", HERE.parents[1] / "shared" / "data"))
RESULTS = HERE / "results"
CMU = Path(os.environ.get("WSI_MIL_CMU", SHARED / "slides" / "CMU-1-Small-Region.svs"))

#: Synthetic slides used by the benchmarks: name -> (side, mpp, seed, lesion_fraction).
SYNTHETIC = {
    "synthetic-15k": (15000, 0.25, 0, 0.05),
    "synthetic-60k": (60000, 0.25, 0, 0.05),
}


def _cached(path: Path, side: int, mpp: float, seed: int, fraction: float) -> bool:
    """Whether ``path`` is a readable synthetic slide of this size and these settings.

    Only the prefix of the description that the writer has always written is checked
    (later versions append more settings, e.g. the stain), so a cached slide survives
    changes to the renderer: the benchmarks need its geometry and JPEG tiling, not its
    exact pixels.
    """
    if not path.is_file():
        return False
    import tifffile

    prefix = f"napari-wsi-mil synthetic slide|mpp={mpp}|seed={seed}|lesion_fraction={fraction:g}"
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return page.shape[:2] == (side, side) and (page.description or "").startswith(prefix)
    except Exception:  # unreadable: regenerate it
        return False


def synthetic_slide(name: str) -> Path:
    """Path of a cached synthetic slide in ``benchmarks/_data``, generated when missing."""
    side, mpp, seed, fraction = SYNTHETIC[name]
    path = DATA / f"{name}.tiff"
    if _cached(path, side, mpp, seed, fraction):
        return path
    from napari_wsi_mil.slide.synthetic import write_synthetic_slide

    minutes = " (this takes several minutes; it is cached for later runs)" if side > 20000 else ""
    print(f"note: generating {path.name}, {side}x{side} px{minutes} ...", flush=True)
    t0 = time.perf_counter()
    DATA.mkdir(parents=True, exist_ok=True)
    write_synthetic_slide(
        path, width=side, height=side, mpp=mpp, seed=seed, lesion_fraction=fraction
    )
    print(
        f"note: generated {path.name} in {time.perf_counter() - t0:.0f} s "
        f"({path.stat().st_size / 2**20:.0f} MiB)",
        flush=True,
    )
    return path


def describe_slides(paths: dict[str, Path]) -> dict:
    """Path, size on disk and (for TIFFs) the description of each slide, for the results."""
    out = {}
    for name, path in paths.items():
        info = {"path": str(path), "bytes": path.stat().st_size}
        if path.suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                info["description"] = tif.pages[0].description
        out[name] = info
    return out


def slides(names=("cmu", "synthetic-15k", "synthetic-60k")) -> dict[str, Path]:
    """The benchmark slides that are available (CMU is skipped when absent)."""
    out = {}
    for name in names:
        if name == "cmu":
            if CMU.is_file():
                out[name] = CMU
            else:
                print(f"note: {CMU} not found; skipping CMU-1-Small-Region", flush=True)
        else:
            out[name] = synthetic_slide(name)
    return out


def add_slide_arguments(parser, processes: int) -> None:
    """``--slide PATH`` (repeatable: these slides instead of the script's default set) and
    ``--processes N`` (fresh processes per measurement)."""
    parser.add_argument(
        "--slide",
        action="append",
        type=Path,
        help="a slide file to measure instead of the default slides (repeatable); "
        "results then go to results/<benchmark>-<file stems>.json",
    )
    parser.add_argument("--processes", type=int, default=processes)


def chosen_slides(args, default: tuple[str, ...]) -> tuple[dict[str, Path], str]:
    """The slides of ``--slide`` (named by file stem) or the default ones, and the suffix
    of the results file name (empty for the default slides)."""
    if not args.slide:
        return slides(default), ""
    chosen = {path.stem: path for path in args.slide}
    return chosen, "-" + "-".join(chosen)


def run_child(script: str | os.PathLike, *args: str) -> dict:
    """Run ``python <script> --child <args>`` in a fresh interpreter and parse its result.

    The child prints one JSON object as its last stdout line. A fresh process per
    measurement makes its peak RSS (``VmHWM``, see :func:`peak_rss_mib`) mean something.
    """
    cmd = [sys.executable, str(script), "--child", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {args} failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB: ``VmHWM`` of ``/proc/self/status``.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: on Linux that survives ``fork``/``exec``,
    so a child started by ``subprocess`` reports at least its parent's RSS at the
    fork (the kernel keeps the old address space's high-water mark in
    ``signal->maxrss``). ``VmHWM`` belongs to the child's own address space. Falls
    back to ``ru_maxrss`` where ``/proc`` is missing.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_result(payload: dict) -> None:
    """Print a child's result as the last stdout line."""
    print(json.dumps(payload), flush=True)


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    import dask
    import numpy

    return {
        "nproc": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "ram_gib": mem,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "dask": dask.__version__,
        "gpu": "none",
        "git_head": _git("rev-parse", "--short", "HEAD"),
        "git_dirty_files": len(_git("status", "--porcelain").splitlines()),
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def _git(*args: str) -> str:
    proc = subprocess.run(["git", *args], capture_output=True, text=True, cwd=HERE, check=False)
    return proc.stdout.strip()


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        if isinstance(v, bool):
            return "PASS" if v else "FAIL"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        **payload,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nresults written to {path.relative_to(HERE.parent)}")
    return path


def mosaic_cohort(fraction: float, patch: int):
    """The cached semi-real mosaic cohort of one lesion fraction (24 slides of 8 x 10 real
    H&E tiles from ``tiles-labelled``, half positive, train and test tile pools disjoint),
    tiled at 1 um/px into ``patch`` px patches: ``(store, cohort, root)``."""
    from napari_wsi_mil.jobs import run_job
    from napari_wsi_mil.slide.mosaic import make_mosaic_cohort
    from napari_wsi_mil.slide.tiling import TilingParams
    from napari_wsi_mil.store.cohort import read_cohort
    from napari_wsi_mil.store.project import ProjectStore
    from napari_wsi_mil.store.tiling_job import tile_slides_job

    tiles = SHARED / "tiles-labelled"
    if not tiles.is_dir():
        sys.exit(f"{tiles} is missing: this benchmark needs the labelled tiles")
    root = DATA / f"encoders-f{fraction:g}-p{patch}"
    csv_path = root / "cohort" / "cohort.csv"
    if not csv_path.exists():
        make_mosaic_cohort(tiles, root / "cohort", n_slides=24, lesion_fractions=(fraction,))
    cohort = read_cohort(csv_path)
    store = ProjectStore(root / "project", create=not (root / "project").exists())
    params = TilingParams(target_mpp=1.0, patch_size=patch)
    run_job(tile_slides_job(store, [(e.slide_id, e.path) for e in cohort], params))
    return store, cohort, root


def mosaic_bags(fraction: float, patch: int, features: str) -> tuple[list, list]:
    """``(train, test)`` bags of :func:`mosaic_cohort` with the cached feature set
    ``features`` (tile labels from the lesion outlines)."""
    from napari_wsi_mil.mil.bags import load_bags

    store, cohort, root = mosaic_cohort(fraction, patch)
    if features not in store.result_names("features"):
        sys.exit(f"features {features!r} missing in {root}: run bench_encoders.py first")
    bags = load_bags(store, cohort, features, annotations=root / "cohort" / "annotations")
    return [b for b in bags if b.split == "train"], [b for b in bags if b.split == "test"]


def extract(store, cohort, spec: str, name: str) -> None:
    """Features of every slide of ``cohort`` by encoder ``spec`` (cached by ``name``)."""
    import torch

    from napari_wsi_mil.features.extract import extract_features_job
    from napari_wsi_mil.jobs import run_job

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # model in the main process, reading in one worker
    try:
        run_job(extract_features_job(store, cohort.slide_ids, spec, name, num_workers=1))
    finally:
        torch.set_num_threads(threads)


def clock() -> tuple[float, float]:
    """``(wall, process CPU)`` seconds now."""
    return time.perf_counter(), time.process_time()


def train_eval(name: str, seed: int, train, test, epochs: int) -> dict:
    """Fit MIL model ``name`` on bags ``train`` (threshold from them) and evaluate it on
    ``test`` (bench_mil and bench_encoders)."""
    from napari_wsi_mil.jobs import run_job
    from napari_wsi_mil.mil.train import MilConfig, evaluate_bags, fit_job, threshold_job

    config = MilConfig(
        model=name,
        epochs=epochs,
        seed=seed,
        tile_label_fraction=0.2 if name == "msclam" else 1.0,
    )
    t0, c0 = clock()
    model, history = run_job(fit_job(config, train, [], "train"))
    t1, c1 = clock()
    threshold, _ = run_job(threshold_job(config, model, train, []))
    metrics = evaluate_bags(model, test, threshold)
    train_metrics = evaluate_bags(model, train, threshold)
    return {
        "train_auc": train_metrics.get("auc"),
        "train_instance_auc": train_metrics.get("instance_auc"),
        "model": name,
        "seed": seed,
        "threshold": threshold,
        "train_wall_s": t1 - t0,
        "train_cpu_s": c1 - c0,
        "epoch_s_median": statistics.median(h["seconds"] for h in history),
        "final_loss": history[-1]["loss"],
        **metrics,
    }
