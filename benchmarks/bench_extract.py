"""Feature extraction throughput (slide file to stored features) and RSS over slides.

Targets (issue):

1. "Throughput end to end (slide file to stored features) at least 90% of the
   model-only throughput of the same encoder, batch and device measured in the same
   run. On this 2-core machine ResNet-18 at 224 px runs about 65 patches/s model-only
   and a naive read-then-infer loop about 38 patches/s; report both figures and yours."
2. "RSS stays flat over the number of slides (extract 50 synthetic slides; report RSS
   after 5 and after 50)."

Run: ``nice -n 5 python benchmarks/bench_extract.py [--repeats 2]``.

Data (cached in ``benchmarks/_data/extract-cohort`` and ``.../extract-project``):
``make_cohort(n_slides=50, seed=0, lesion_fractions=(0.05,), width=1536, height=1024,
mpp=0.5, test_fraction=0.0)`` (pyramidal JPEG TIFFs, tifffile backend), tiled with
``tile_slides_job(store, ..., TilingParams())`` (0.5 um/px, 224 px, min_tissue 0.5),
so patches are read at level 0 without resizing.

Encoder: ``load_encoder_spec("random")`` (seeded ResNet-18 trunk, 512-d), batch 64,
CPU, ``torch.inference_mode``. Every measurement runs in a fresh interpreter
(``--child``) with ``torch.set_num_threads(T)`` set first:

(a) ``model``: the model on one preprocessed random batch ``[64, 3, 224, 224]``
    (``preprocess`` done once, outside the clock), 1 warm-up + ``--model-batches``
    timed batches.
(b) ``naive``: a plain loop over the same slides and patches: ``open_slide``, then per
    patch ``slide.read_region`` (the grid's read level and size), 64 patches stacked,
    ``preprocess`` and the model; features kept in memory; no DataLoader, no store
    writes.
(c) ``extract_features_job(store, slide_ids, "random", name, batch_size=64,
    num_workers=W, device="cpu", overwrite=True)`` driven by ``run_job`` (reads,
    infers and writes float16 features to the store), W = 0, 1, 2.

T = 2 (torch's default here: one per core) for (a), (b) and (c); (a) and (c, W=1)
also run with T = 1, to see whether giving a core to the loader worker pays.
Variants are interleaved (one pass each per repeat, ``--repeats``), best and median
patches/s reported. CPU time = main process (``time.process_time``) + finished loader
workers (``RUSAGE_CHILDREN``).

RSS: every (c) run samples, at each progress event, the main process's current RSS
(psutil) and the sum over live loader workers, and records them when the first 5
slides are done and at the end (50 slides); ``VmHWM`` of the main process at the end
too. A fresh run over only the first 5 slides (W = 0 and 2) gives its ``VmHWM`` for
comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

BATCH = 64
N_SLIDES = 50
COHORT = _common.DATA / "extract-cohort"
PROJECT = _common.DATA / "extract-project"
TARGET = 0.9
ISSUE_MODEL, ISSUE_NAIVE = 65.0, 38.0


# -- data --------------------------------------------------------------------------
def prepare() -> tuple[list[str], dict]:
    from napari_wsi_mil.jobs import run_job
    from napari_wsi_mil.slide.synthetic import make_cohort
    from napari_wsi_mil.slide.tiling import TilingParams
    from napari_wsi_mil.store.cohort import read_cohort
    from napari_wsi_mil.store.project import ProjectStore
    from napari_wsi_mil.store.tiling_job import tile_slides_job

    t0 = time.perf_counter()
    make_cohort(
        COHORT,
        n_slides=N_SLIDES,
        seed=0,
        lesion_fractions=(0.05,),
        width=1536,
        height=1024,
        mpp=0.5,
        test_fraction=0.0,
    )
    t1 = time.perf_counter()
    cohort = read_cohort(COHORT / "cohort.csv")
    store = ProjectStore(PROJECT, create=True)
    run_job(tile_slides_job(store, [(e.slide_id, e.path) for e in cohort], TilingParams()))
    t2 = time.perf_counter()
    ids = cohort.slide_ids
    counts = [len(store.read_tiles(s)[0]) for s in ids]
    geo = store.read_tiles(ids[0])[0].geometry
    return ids, {
        "cohort_s": t1 - t0,
        "tiling_s": t2 - t1,
        "patches_per_slide": counts,
        "patches": int(sum(counts)),
        "geometry": {
            "read_level": geo.read_level,
            "read_size": geo.read_size,
            "patch_size": geo.patch_size,
        },
    }


# -- children ----------------------------------------------------------------------
def _children_cpu() -> float:
    import resource

    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def _model():
    from napari_wsi_mil.features.encoders import load_encoder_spec

    loaded = load_encoder_spec("random")
    loaded.model.eval()
    return loaded


def child_model(batches: int) -> dict:
    import torch

    from napari_wsi_mil.features.extract import preprocess

    loaded = _model()
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (BATCH, 3, 224, 224), dtype=torch.uint8, generator=gen)
    x = preprocess(images, loaded, torch.device("cpu"))
    times = []
    with torch.inference_mode():
        loaded.model(x)  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(batches):
            s = time.perf_counter()
            loaded.model(x)
            times.append(time.perf_counter() - s)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"patches": batches * BATCH, "wall_s": wall, "cpu_s": cpu, "batch_s": times}


def child_naive(ids: list[str]) -> dict:
    import numpy as np
    import torch

    from napari_wsi_mil.features.extract import preprocess
    from napari_wsi_mil.slide import open_slide
    from napari_wsi_mil.store.project import ProjectStore

    store = ProjectStore(PROJECT)
    loaded = _model()
    dev = torch.device("cpu")
    with torch.inference_mode():  # warm-up, outside the clock
        loaded.model(preprocess(torch.zeros(BATCH, 3, 224, 224, dtype=torch.uint8), loaded, dev))
    t0, c0 = time.perf_counter(), time.process_time()
    read_s = infer_s = 0.0
    feats, pending, n = [], [], 0

    def flush():
        nonlocal infer_s
        s = time.perf_counter()
        batch = torch.from_numpy(np.stack(pending)).permute(0, 3, 1, 2)
        with torch.inference_mode():
            feats.append(loaded.model(preprocess(batch, loaded, dev)).numpy())
        pending.clear()
        infer_s += time.perf_counter() - s

    for slide_id in ids:
        grid, attrs = store.read_tiles(slide_id)
        geo = grid.geometry
        s = time.perf_counter()
        slide = open_slide(attrs["slide"]["path"])
        for x, y in grid.coords:
            pending.append(
                slide.read_region(geo.read_level, int(x), int(y), geo.read_size, geo.read_size)
            )
            n += 1
            if len(pending) == BATCH:
                read_s += time.perf_counter() - s
                flush()
                s = time.perf_counter()
        slide.close()
        read_s += time.perf_counter() - s
    if pending:
        flush()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert sum(len(f) for f in feats) == n
    return {"patches": n, "wall_s": wall, "cpu_s": cpu, "read_s": read_s, "infer_s": infer_s}


def child_extract(ids: list[str], workers: int, name: str, profile: str | None) -> dict:
    import psutil
    import torch

    from napari_wsi_mil.features.extract import extract_features_job
    from napari_wsi_mil.jobs import run_job
    from napari_wsi_mil.store.project import ProjectStore

    store = ProjectStore(PROJECT)
    counts = [len(store.read_tiles(s)[0]) for s in ids]
    cum5 = sum(counts[:5])
    loaded = _model()
    with torch.inference_mode():  # warm-up the model (as (a) and (b))
        loaded.model(torch.zeros(BATCH, 3, 224, 224))
    proc = psutil.Process()
    samples = []

    def rss():
        main = proc.memory_info().rss / 2**20
        kids = sum(c.memory_info().rss for c in proc.children(recursive=True)) / 2**20
        return main, kids

    def on_progress(event):
        if event.done and event.total:
            main, kids = rss()
            samples.append((event.done, main, kids))

    rss0 = rss()[0]
    job = extract_features_job(
        store,
        ids,
        loaded,
        name,
        batch_size=BATCH,
        num_workers=workers,
        device="cpu",
        overwrite=True,
    )
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
    report = run_job(job, on_progress)
    wall, cpu, kids_cpu = (
        time.perf_counter() - t0,
        time.process_time() - c0,
        _children_cpu() - k0,
    )
    if prof is not None:
        import io
        import pstats

        prof.disable()
        stream = io.StringIO()
        pstats.Stats(prof, stream=stream).sort_stats("tottime").print_stats(25)
        Path(profile).write_text(stream.getvalue())
    n = sum(report.extracted.values())
    assert n == sum(counts) and not report.failed, (n, sum(counts), report.failed)
    after5 = next(s for s in samples if s[0] >= cum5)
    peak_main = max(s[1] for s in samples)
    peak_total = max(s[1] + s[2] for s in samples)
    return {
        "patches": n,
        "slides": len(ids),
        "wall_s": wall,
        "cpu_s": cpu,
        "workers_cpu_s": kids_cpu,
        "job_patches_per_second": report.patches_per_second,
        "rss_before_mib": rss0,
        "rss_after_5_slides_mib": {"main": after5[1], "workers": after5[2], "done": after5[0]},
        "rss_at_end_mib": {"main": samples[-1][1], "workers": samples[-1][2]},
        "rss_sampled_peak_mib": {"main": peak_main, "main_plus_workers": peak_total},
        "rss_samples": samples[:: max(1, len(samples) // 40)] + [samples[-1]],
    }


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from napari_wsi_mil.store.project import ProjectStore

    ids = ProjectStore(PROJECT).slide_ids()[: args.slides]
    if args.kind == "model":
        out = child_model(args.model_batches)
    elif args.kind == "naive":
        out = child_naive(ids)
    else:
        out = child_extract(ids, args.workers, args.name, args.profile)
    out.update(
        {
            "threads": torch.get_num_threads(),
            "vmhwm_mib": _common.peak_rss_mib(),
            "rss_end_mib": _current_rss(),
        }
    )
    _common.child_result(out)


def _current_rss() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- parent ------------------------------------------------------------------------
def run(kind: str, *, threads: int, workers: int = 0, slides: int = N_SLIDES, **kw) -> dict:
    args = ["--kind", kind, "--threads", threads, "--workers", workers, "--slides", slides]
    for k, v in kw.items():
        args += [f"--{k.replace('_', '-')}", v]
    load0 = os.getloadavg()[0]
    res = _common.run_child(__file__, *map(str, args))
    res["loadavg"] = [load0, os.getloadavg()[0]]
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--slides", type=int, default=N_SLIDES)
    parser.add_argument("--name", default="bench")
    parser.add_argument("--profile", default="")
    parser.add_argument("--model-batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    print("# bench_extract\n", flush=True)
    ids, data = prepare()
    n = data["patches"]
    print(
        f"{len(ids)} slides, {n} patches ({min(data['patches_per_slide'])}-"
        f"{max(data['patches_per_slide'])} per slide), geometry {data['geometry']}; "
        f"cohort {data['cohort_s']:.0f} s, tiling {data['tiling_s']:.0f} s; "
        f"load average {os.getloadavg()[0]:.2f}\n",
        flush=True,
    )
    variants = {
        "(a) model only, 2 threads": dict(kind="model", threads=2),
        "(a) model only, 1 thread": dict(kind="model", threads=1),
        "(b) naive read-then-infer loop, 2 threads": dict(kind="naive", threads=2),
        "(c) extract_features_job, num_workers=0, 2 threads": dict(
            kind="extract", threads=2, workers=0
        ),
        "(c) extract_features_job, num_workers=1, 2 threads": dict(
            kind="extract", threads=2, workers=1
        ),
        "(c) extract_features_job, num_workers=2, 2 threads": dict(
            kind="extract", threads=2, workers=2
        ),
        "(c) extract_features_job, num_workers=1, 1 thread": dict(
            kind="extract", threads=1, workers=1
        ),
    }
    raw: dict[str, list[dict]] = {k: [] for k in variants}
    for rep in range(args.repeats):
        for name, spec in variants.items():
            extra = {"model_batches": args.model_batches} if spec["kind"] == "model" else {}
            res = run(**spec, **extra)
            raw[name].append(res)
            print(
                f"repeat {rep + 1}: {name}: {res['patches'] / res['wall_s']:.1f} patches/s "
                f"(load {res['loadavg'][0]:.1f})",
                flush=True,
            )
    rows = []
    model_best = {
        t: max(
            r["patches"] / r["wall_s"] for r in raw[f"(a) model only, {t} thread{'s' * (t > 1)}"]
        )
        for t in (1, 2)
    }
    model_cpu = {
        t: min(r["cpu_s"] / r["patches"] for r in raw[f"(a) model only, {t} thread{'s' * (t > 1)}"])
        for t in (1, 2)
    }
    for name, spec in variants.items():
        rs = raw[name]
        rates = [r["patches"] / r["wall_s"] for r in rs]
        cpu = [(r["cpu_s"] + r.get("workers_cpu_s", 0.0)) / r["patches"] * 1e3 for r in rs]
        t = spec["threads"]
        rows.append(
            {
                "variant": name,
                "best_patches_s": max(rates),
                "median_patches_s": statistics.median(rates),
                "ratio_to_model_same_threads": max(rates) / model_best[t],
                "cpu_ms_per_patch": min(cpu),
                "cpu_ratio_model_over_this": model_cpu[t] * 1e3 / min(cpu),
                "vmhwm_mib": max(r["vmhwm_mib"] for r in rs),
                "load": "/".join(f"{r['loadavg'][0]:.1f}" for r in rs),
            }
        )
    print()
    print(
        _common.markdown_table(
            rows,
            [
                "variant",
                "best_patches_s",
                "median_patches_s",
                "ratio_to_model_same_threads",
                "cpu_ms_per_patch",
                "cpu_ratio_model_over_this",
                "vmhwm_mib",
                "load",
            ],
        )
    )

    # RSS over the number of slides
    print("\nRSS over slides", flush=True)
    rss_rows = []
    for workers in (0, 2):
        five = run("extract", threads=2, workers=workers, slides=5, name="bench5")
        full = raw[f"(c) extract_features_job, num_workers={workers}, 2 threads"][-1]
        rss_rows.append(
            {
                "num_workers": workers,
                "VmHWM 5-slide run": five["vmhwm_mib"],
                "VmHWM 50-slide run": full["vmhwm_mib"],
                "RSS main after 5 (50-slide run)": full["rss_after_5_slides_mib"]["main"],
                "RSS main at end (50)": full["rss_at_end_mib"]["main"],
                "RSS workers after 5": full["rss_after_5_slides_mib"]["workers"],
                "RSS workers at end": full["rss_at_end_mib"]["workers"],
                "RSS main at end, 5-slide run": five["rss_at_end_mib"]["main"],
            }
        )
        raw[f"rss 5 slides, num_workers={workers}"] = [five]
    print(_common.markdown_table(rss_rows, list(rss_rows[0])))

    # where the time goes in one extraction pass (num_workers=0)
    prof_path = _common.RESULTS / "bench_extract_profile.txt"
    _common.RESULTS.mkdir(parents=True, exist_ok=True)
    prof = run("extract", threads=2, workers=0, slides=10, name="benchprof", profile=prof_path)
    print(f"\ncProfile of num_workers=0 over 10 slides written to {prof_path.name}")

    _common.save(
        "bench_extract",
        {
            "data": data,
            "batch": BATCH,
            "issue_figures": {"model_only": ISSUE_MODEL, "naive": ISSUE_NAIVE},
            "rows": rows,
            "rss_rows": rss_rows,
            "profile_run": prof,
            "raw": raw,
        },
    )


if __name__ == "__main__":
    main()
