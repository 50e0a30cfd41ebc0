"""Opening a slide and reading its first screenful: time and peak RSS.

Issue target: opening a slide and reading the first screenful of tiles costs the
same for a 2k x 3k slide and a 60k x 60k pyramidal TIFF: under 0.5 s and under
150 MB RSS.

Run: ``python benchmarks/bench_slide_open.py`` (generates and caches the 60k x 60k
synthetic slide in ``benchmarks/_data`` on first use; that takes minutes).

Definitions (viewport 1920 x 1080, the dask pyramid of :meth:`Slide.pyramid`):

``open``
    ``open_slide(path)`` then ``slide.pyramid()`` (building the lazy dask arrays), no
    pixel read beyond the check ``open_slide`` itself does.
``topleft``
    open, then read every chunk of the *screen level* that intersects the window
    ``[0, 1920) x [0, 1080)`` at the level's top-left. The screen level is the
    coarsest level whose width >= 1920 and height >= 1080 (level 0 if none is).
``fit``
    open, then read every chunk napari needs to show the whole slide fitted to the
    viewport: the level is the one napari's ``compute_multiscale_level`` picks (the
    coarsest level on which the visible extent is larger than the canvas in both
    axes), and since the whole slide is visible, all its chunks are read.
``center0``
    open, then read every level-0 chunk intersecting a 1920 x 1080 window centred on
    the slide (zoomed in to 1:1 in the middle).

Chunks are read as one ``dask`` compute of the chunk-aligned box with dask's default
threaded scheduler. Every measurement runs in a fresh interpreter ("cold": the first
open in the process, including the lazy import of the backend: openslide or
tifffile+zarr), repeated in ``PROCESSES`` processes; each process then repeats the
same work ``WARM_REPEATS`` more times ("warm": backend modules already imported, a new
slide handle every time). Peak RSS is the child's ``VmHWM`` after the cold run,
reported raw and as the increment over a child that only imports
``napari_wsi_mil.slide``, ``dask`` and ``dask.array``. Slide files are in the OS page
cache (warm disk) in all runs.

The first ``compute()`` in a process imports ``distributed`` (a dependency of the
package): ``dask.base.get_scheduler`` checks for a distributed client even when the
scheduler is named. Every measurement is therefore made twice: as is
(``pre_distributed`` false) and with ``distributed`` imported before the clock starts
(``pre_distributed`` true, RSS increment then over a baseline that imports it too).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

VIEWPORT = (1920, 1080)  # width, height
MODES = ("open", "topleft", "fit", "center0")
#: What the child imports before timing: nothing more, or also ``distributed``.
PRE = ("none", "distributed")
PROCESSES = 3  # default of --processes
WARM_REPEATS = 5
TARGET_S = 0.5
TARGET_MIB = 150.0


def _aligned(lo: int, hi: int, chunk: int, size: int) -> tuple[int, int]:
    """Expand ``[lo, hi)`` to chunk boundaries, clipped to ``size``."""
    return (lo // chunk) * chunk, min(size, -(-hi // chunk) * chunk)


def screen_level(slide) -> int:
    vw, vh = VIEWPORT
    level = 0
    for i, (w, h) in enumerate(slide.level_dimensions):
        if w >= vw and h >= vh:
            level = i
    return level


def napari_fit_level(slide) -> int:
    """napari's ``compute_multiscale_level`` for the whole slide fitted to the canvas."""
    vw, vh = VIEWPORT
    w0, h0 = slide.dimensions
    extent_w, extent_h = max(w0, h0 * vw / vh), max(h0, w0 * vh / vw)
    level = 0
    for i, ds in enumerate(slide.level_downsamples):
        if extent_w / ds > vw and extent_h / ds > vh:
            level = i
    return level


def window(slide, mode: str) -> tuple[int, tuple[int, int, int, int]]:
    """``(level, (x0, x1, y0, y1))`` chunk-aligned box in level pixels for ``mode``."""
    vw, vh = VIEWPORT
    if mode == "topleft":
        level = screen_level(slide)
        x, y = 0, 0
        w, h = slide.level_dimensions[level]
        vw, vh = min(vw, w), min(vh, h)
    elif mode == "fit":
        level = napari_fit_level(slide)
        x, y = 0, 0
        vw, vh = slide.level_dimensions[level]
    elif mode == "center0":
        level = 0
        w, h = slide.dimensions
        vw, vh = min(vw, w), min(vh, h)
        x, y = (w - vw) // 2, (h - vh) // 2
    else:
        raise ValueError(mode)
    w, h = slide.level_dimensions[level]
    ch, cw = slide.chunk_size(level)
    x0, x1 = _aligned(x, x + vw, cw, w)
    y0, y1 = _aligned(y, y + vh, ch, h)
    return level, (x0, x1, y0, y1)


def _once(path: str, mode: str) -> dict:
    from napari_wsi_mil.slide import open_slide

    t0 = time.perf_counter()
    slide = open_slide(path)
    pyramid = slide.pyramid()
    t_open = time.perf_counter() - t0
    out = {"open_s": t_open, "total_s": t_open}
    if mode != "open":
        level, (x0, x1, y0, y1) = window(slide, mode)
        block = pyramid[level][y0:y1, x0:x1]
        data = block.compute()
        out.update(
            total_s=time.perf_counter() - t0,
            level=level,
            box=[x0, x1, y0, y1],
            chunks=int(block.npartitions),
            mpix=data.shape[0] * data.shape[1] / 1e6,
        )
    slide.close()
    return out


def child(args: list[str]) -> None:
    kind, pre = args[0], args[1]
    import dask  # noqa: F401
    import dask.array  # noqa: F401

    import napari_wsi_mil.slide  # noqa: F401

    if pre == "distributed":
        import distributed  # noqa: F401
    if kind == "baseline":
        _common.child_result({"rss_mib": _common.peak_rss_mib()})
        return
    path, mode = args[2], args[3]
    cold = _once(path, mode)
    rss = _common.peak_rss_mib()
    warm = [_once(path, mode) for _ in range(WARM_REPEATS)]
    _common.child_result(
        {
            "cold": cold,
            "rss_mib": rss,
            "warm_total_s": statistics.median(w["total_s"] for w in warm),
            "warm_open_s": statistics.median(w["open_s"] for w in warm),
        }
    )


def main(args: argparse.Namespace) -> None:
    print("# bench_slide_open\n")
    slides, suffix = _common.chosen_slides(args, ("cmu", "synthetic-60k"))
    script = Path(__file__).resolve()
    baselines = {
        pre: statistics.median(
            _common.run_child(script, "baseline", pre)["rss_mib"] for _ in range(args.processes)
        )
        for pre in PRE
    }
    print(
        f"baseline RSS (python + napari_wsi_mil.slide + dask.array): {baselines['none']:.0f} "
        f"MiB; with distributed imported too: {baselines['distributed']:.0f} MiB\n"
    )
    rows = []
    for name, path in slides.items():
        for mode, pre in ((m, p) for m in MODES for p in PRE):
            baseline = baselines[pre]
            runs = [
                _common.run_child(script, "run", pre, path, mode) for _ in range(args.processes)
            ]
            cold = [r["cold"] for r in runs]
            rss = statistics.median(r["rss_mib"] for r in runs)
            row = {
                "slide": name,
                "mode": mode,
                "pre_distributed": "yes" if pre == "distributed" else "no",
                "level": cold[0].get("level", ""),
                "chunks": cold[0].get("chunks", ""),
                "mpix": cold[0].get("mpix", ""),
                "open_cold_s": statistics.median(c["open_s"] for c in cold),
                "open_cold_min_s": min(c["open_s"] for c in cold),
                "total_cold_s": statistics.median(c["total_s"] for c in cold),
                "total_cold_min_s": min(c["total_s"] for c in cold),
                "open_warm_s": statistics.median(r["warm_open_s"] for r in runs),
                "total_warm_s": statistics.median(r["warm_total_s"] for r in runs),
                "rss_mib": rss,
                "rss_incr_mib": rss - baseline,
            }
            row["time_ok"] = row["total_cold_s"] < TARGET_S
            row["rss_incr_ok"] = row["rss_incr_mib"] < TARGET_MIB
            row["rss_raw_ok"] = row["rss_mib"] < TARGET_MIB
            rows.append(row)
            print(
                f"  {name} {mode} pre={pre}: {row['total_cold_s']:.3f} s cold, "
                f"{row['rss_mib']:.0f} MiB",
                flush=True,
            )
    cols = [
        "slide",
        "mode",
        "pre_distributed",
        "level",
        "chunks",
        "mpix",
        "open_cold_s",
        "open_cold_min_s",
        "total_cold_s",
        "total_cold_min_s",
        "open_warm_s",
        "total_warm_s",
        "rss_mib",
        "rss_incr_mib",
        "time_ok",
        "rss_incr_ok",
        "rss_raw_ok",
    ]
    print()
    print(_common.markdown_table(rows, cols))
    print(
        f"\ntimes: median of {args.processes} fresh processes (cold) / of {WARM_REPEATS} repeats "
        f"per process (warm); RSS: median peak over the processes; targets: "
        f"< {TARGET_S} s (cold total), < {TARGET_MIB:.0f} MiB"
    )
    _common.save(
        "bench_slide_open" + suffix,
        {
            "viewport": list(VIEWPORT),
            "targets": {"seconds": TARGET_S, "rss_mib": TARGET_MIB},
            "baseline_rss_mib": baselines,
            "processes": args.processes,
            "warm_repeats": WARM_REPEATS,
            "slides": _common.describe_slides(slides),
            "rows": rows,
        },
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        _common.add_slide_arguments(parser, PROCESSES)
        main(parser.parse_args())
