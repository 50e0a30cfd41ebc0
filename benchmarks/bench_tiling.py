"""Tiling (tissue mask + patch grid) of slides of growing size: time and peak RSS.

Targets: tiling a 60k x 60k slide takes under 3 s and under 300 MB RSS, and the
time does not depend on the level-0 size beyond the grid itself.

Run: ``python benchmarks/bench_tiling.py`` (generates and caches the synthetic
slides in ``benchmarks/_data`` on first use; the 60k one takes minutes).

Every slide is tiled with ``tile_slide(slide, TilingParams())`` (0.5 um/px, 224 px
patches, stride 224, min_tissue 0.5) in a fresh interpreter, ``PROCESSES`` times.
Per process: ``open_slide`` is timed, then the first ``tile_slide`` ("cold": first
call in the process, includes importing scipy.ndimage for the tissue detection);
then peak RSS is taken (``VmHWM``, not ``ru_maxrss``: see
``_common.peak_rss_mib``); then ``tile_slide`` runs ``REPEATS`` more times ("warm"),
and so do the three pieces of ``tile_slide``, called the way it calls them: reading
the tissue image (``slide.read_region`` of the whole level nearest 8 um/px, or of the
coarsest stored level when that one is synthesized), ``detect_tissue`` and
``grid_from_mask``. RSS is reported raw and as the increment
over a child that only imports ``napari_wsi_mil.slide`` and
``napari_wsi_mil.slide.tiling``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

PROCESSES = 3  # default of --processes
REPEATS = 3
TARGET_S = 3.0
TARGET_MIB = 300.0


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def child(args: list[str]) -> None:
    import napari_wsi_mil.slide  # noqa: F401
    from napari_wsi_mil.slide import open_slide
    from napari_wsi_mil.slide.tiling import (
        PatchGeometry,
        TilingParams,
        grid_from_mask,
        tile_slide,
        tissue_level,
    )

    if args[0] == "baseline":
        _common.child_result({"rss_mib": _common.peak_rss_mib()})
        return
    path = args[1]
    params = TilingParams()
    slide, open_s = _timed(open_slide, path)
    tiled, cold_s = _timed(tile_slide, slide, params)
    rss = _common.peak_rss_mib()

    from napari_wsi_mil.slide.tissue import detect_tissue

    warm = [_timed(tile_slide, slide, params)[1] for _ in range(REPEATS)]
    geometry = PatchGeometry.for_slide(slide, params)
    level = tissue_level(slide, geometry.source_mpp)
    w, h = slide.level_dimensions[level]
    read = min(level, slide.native_level_count - 1)  # as tile_slide: native, not synthesized
    rw, rh = slide.level_dimensions[read]
    pixel_size = geometry.source_mpp * slide.level_downsamples[read]
    read_t, detect_t, grid_t = [], [], []
    for _ in range(REPEATS):
        rgb, t = _timed(slide.read_region, read, 0, 0, rw, rh)
        read_t.append(t)
        detected, t = _timed(partial(detect_tissue, mask_shape=(h, w)), rgb, pixel_size)
        detect_t.append(t)
        w0, h0 = slide.dimensions
        mask = detected.mask
        ds = (w0 / mask.shape[1], h0 / mask.shape[0])
        grid, t = _timed(grid_from_mask, slide.dimensions, mask, ds, geometry, params.min_tissue)
        grid_t.append(t)
    assert len(grid) == len(tiled.grid)
    _common.child_result(
        {
            "open_s": open_s,
            "tile_cold_s": cold_s,
            "tile_warm_s": statistics.median(warm),
            "read_level_s": statistics.median(read_t),
            "detect_tissue_s": statistics.median(detect_t),
            "grid_from_mask_s": statistics.median(grid_t),
            "rss_mib": rss,
            "size": list(slide.dimensions),
            "tissue_level": level,
            "tissue_level_size": [w, h],
            "tissue_level_native": level < slide.native_level_count,
            "grid_shape": list(tiled.grid.grid_shape),
            "n_patches": len(tiled.grid),
        }
    )


def main(args: argparse.Namespace) -> None:
    print("# bench_tiling\n")
    slides, suffix = _common.chosen_slides(args, ("cmu", "synthetic-15k", "synthetic-60k"))
    script = Path(__file__).resolve()
    baseline = statistics.median(
        _common.run_child(script, "baseline")["rss_mib"] for _ in range(args.processes)
    )
    print(f"baseline RSS (python + napari_wsi_mil.slide.tiling): {baseline:.0f} MiB\n")
    rows = []
    for name, path in slides.items():
        runs = [_common.run_child(script, "run", path) for _ in range(args.processes)]
        med = {
            k: statistics.median(r[k] for r in runs)
            for k in (
                "open_s",
                "tile_cold_s",
                "tile_warm_s",
                "read_level_s",
                "detect_tissue_s",
                "grid_from_mask_s",
                "rss_mib",
            )
        }
        r0 = runs[0]
        row = {
            "slide": name,
            "size": "x".join(map(str, r0["size"])),
            "tissue_level": r0["tissue_level"],
            "tissue_level_size": "x".join(map(str, r0["tissue_level_size"])),
            "grid": "x".join(map(str, r0["grid_shape"])),
            "patches": r0["n_patches"],
            **med,
            "open_min_s": min(r["open_s"] for r in runs),
            "tile_cold_min_s": min(r["tile_cold_s"] for r in runs),
            "rss_incr_mib": med["rss_mib"] - baseline,
        }
        row["time_ok"] = row["tile_cold_s"] < TARGET_S
        row["rss_ok"] = row["rss_mib"] < TARGET_MIB
        rows.append(row)
        print(
            f"  {name}: tile_slide {row['tile_cold_s']:.3f} s cold, {row['rss_mib']:.0f} MiB",
            flush=True,
        )
    cols = [
        "slide",
        "size",
        "tissue_level",
        "tissue_level_size",
        "grid",
        "patches",
        "open_s",
        "open_min_s",
        "tile_cold_s",
        "tile_cold_min_s",
        "tile_warm_s",
        "read_level_s",
        "detect_tissue_s",
        "grid_from_mask_s",
        "rss_mib",
        "rss_incr_mib",
        "time_ok",
        "rss_ok",
    ]
    print()
    print(_common.markdown_table(rows, cols))
    print(
        f"\nmedians (and *_min: minima) of {args.processes} fresh processes; warm times "
        f"and pieces: median of {REPEATS} per process; targets: tile_slide < {TARGET_S} s, RSS < "
        f"{TARGET_MIB:.0f} MiB (raw)"
    )
    _common.save(
        "bench_tiling" + suffix,
        {
            "params": "TilingParams() (target_mpp=0.5, patch_size=224, stride=224, min_tissue=0.5)",
            "targets": {"seconds": TARGET_S, "rss_mib": TARGET_MIB},
            "baseline_rss_mib": baseline,
            "processes": args.processes,
            "repeats": REPEATS,
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
