"""PatchDataset + DataLoader throughput against a plain OpenSlide loop.

Target: PatchDataset throughput for 224 px patches at level 0 of
CMU-1-Small-Region is at least 1.5x a plain loop of
``openslide.OpenSlide(path).read_region`` over the same coordinates, measured in
the same run (the issue quotes about 540 patches/s for the plain loop).

Run: ``python benchmarks/bench_patch_dataset.py [--stride 112] [--repeats 3]``.

CMU-1-Small-Region (0.499 um/px) is tiled into a temporary project under
``benchmarks/_data`` with ``tile_slides_job(store, [("cmu", path)],
TilingParams(min_tissue=0.0, stride=STRIDE))``: every 224 px patch position at
0.5 um/px, i.e. level 0, read size 224, with a stride of 112 px by default (450
overlapping patches) so a pass is long enough to time. Then, each ``--repeats``
times, over all patches in grid order:

(a) plain loop: ``openslide.OpenSlide(path)`` (opened inside the timed region), then
    ``np.asarray(osr.read_region((x, y), 0, (224, 224)).convert("RGB"))`` per patch;
(b) ``DataLoader(PatchDataset(store, ["cmu"]), batch_size=64, num_workers=N,
    persistent_workers=False)`` iterated to the end, N = 0, 1, 2; a new dataset and
    loader each repeat (so worker start-up and slide opening are included, as in
    (a)). The loader asks for whole batches (``PatchDataset.__getitems__``), which read
    each batch's neighbouring patches as a few regions. N = 0 runs twice: with torch's
    default intra-op threads (one per core) and with ``torch.set_num_threads(1)`` (what
    loader workers use), because
    ``default_collate``'s ``torch.stack`` is multi-threaded and its threads compete
    with the reading on a busy machine.

The variants run interleaved (one pass of each, ``--repeats`` times). CPU time is
recorded too, per patch: of the main process (``time.process_time``; all of the cost
when N = 0) and of the loader workers (``RUSAGE_CHILDREN``, counted once the
non-persistent workers have exited), so a slow variant can be told apart from a
starved one on a shared machine.

Best and median patches/s are reported; the target compares the best DataLoader
configuration with the plain loop (best against best). The script then profiles one
``num_workers=0`` pass and one plain-loop pass with cProfile and times the steps of
one ``PatchDataset.__getitem__`` (written to the JSON results and
``results/bench_patch_dataset_profile.txt``), and measures the CPU cost per patch of a
few ways of reading a patch into a CHW tensor (the current one, a one-copy variant,
OpenSlide alone, the tifffile backend). A stride other than 112 writes
``results/bench_patch_dataset_stride<S>.json`` (and ``..._profile.txt``) instead.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

BATCH = 64
TARGET = 1.5
WORKERS = (0, 1, 2)


def plain_loop(path: Path, coords, size: int) -> int:
    import numpy as np
    import openslide

    osr = openslide.OpenSlide(str(path))
    n = 0
    for x, y in coords:
        patch = np.asarray(osr.read_region((int(x), int(y)), 0, (size, size)).convert("RGB"))
        n += patch.shape[0] > 0
    osr.close()
    return n


def loader_pass(store, num_workers: int, torch_threads: int | None = None) -> int:
    """One pass of a new DataLoader; ``torch_threads`` sets the main process's intra-op
    threads for the pass (None: leave torch's default, one per core)."""
    import torch
    from torch.utils.data import DataLoader

    from napari_wsi_mil.store.patches import PatchDataset, collate_patches

    before = torch.get_num_threads()
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)

    dataset = PatchDataset(store, ["cmu"])
    loader = DataLoader(
        dataset,
        batch_size=BATCH,
        collate_fn=collate_patches,
        num_workers=num_workers,
        persistent_workers=False,
        shuffle=False,
    )
    n = 0
    try:
        for batch in loader:  # (images, slide_index, patch_index[, ok])
            n += batch[0].shape[0]
    finally:
        dataset.close()
        torch.set_num_threads(before)
    return n


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(fn, *args) -> tuple[float, float, float, int]:
    """Wall time, CPU time of this process (all threads), CPU time of the loader workers
    (they have exited and been joined when a non-persistent loader is exhausted), result.
    """
    t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
    n = fn(*args)
    return time.perf_counter() - t0, time.process_time() - c0, _children_cpu() - k0, n


def profile(fn, *args, top: int = 18) -> tuple[str, list[dict]]:
    prof = cProfile.Profile()
    prof.enable()
    fn(*args)
    prof.disable()
    stream = io.StringIO()
    stats = pstats.Stats(prof, stream=stream).sort_stats("tottime")
    stats.print_stats(top)
    entries = []
    total = sum(v[2] for v in stats.stats.values())
    for (file, line, func), (_, ncalls, tottime, cumtime, _) in sorted(
        stats.stats.items(), key=lambda kv: -kv[1][2]
    )[:top]:
        entries.append(
            {
                "function": f"{Path(file).name}:{line}({func})",
                "ncalls": ncalls,
                "tottime_s": round(tottime, 4),
                "cumtime_s": round(cumtime, 4),
                "share_of_total": round(tottime / total, 3) if total else None,
            }
        )
    return stream.getvalue(), entries


def getitem_steps(path: Path, grid, repeats: int = 3) -> dict:
    """Mean microseconds per patch of each step of reading one patch through OpenSlide
    into a tensor, as the plain loop does (and ``PatchDataset.__getitem__`` did for SVS
    until session 7; an Aperio SVS of JPEG tiles now reads through tifffile)."""
    import numpy as np
    import openslide
    import torch

    from napari_wsi_mil.slide.openslide_backend import rgba_to_rgb
    from napari_wsi_mil.store.patches import collate_patches

    coords = [(int(x), int(y)) for x, y in grid.coords]
    size = grid.geometry.read_size
    steps = {
        k: []
        for k in (
            "openslide_read_region",
            "rgba_to_rgb",
            "torch_from_numpy_permute",
            "collate_patches_torch_1_thread",
            "collate_patches_torch_default_threads",
            "plain_convert_rgb_asarray",
        )
    }
    for _ in range(repeats):
        handle = openslide.OpenSlide(str(path))
        acc = dict.fromkeys(steps, 0.0)
        tensors = []
        for x, y in coords:
            t0 = time.perf_counter()
            region = handle.read_region((x, y), 0, (size, size))
            t1 = time.perf_counter()
            rgb = rgba_to_rgb(region)
            t2 = time.perf_counter()
            tensors.append((torch.from_numpy(rgb).permute(2, 0, 1), 0, 0, True))
            t3 = time.perf_counter()
            np.asarray(region.convert("RGB"))
            t4 = time.perf_counter()
            deltas = (t1 - t0, t2 - t1, t3 - t2, 0.0, 0.0, t4 - t3)
            for key, dt in zip(steps, deltas, strict=True):
                acc[key] += dt
        default_threads = torch.get_num_threads()
        for threads, key in (
            (1, "collate_patches_torch_1_thread"),
            (default_threads, "collate_patches_torch_default_threads"),
        ):
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            for i in range(0, len(tensors), BATCH):
                collate_patches(tensors[i : i + BATCH])
            acc[key] = time.perf_counter() - t0
        torch.set_num_threads(default_threads)
        handle.close()
        for key in steps:
            steps[key].append(acc[key] / len(coords) * 1e6)
    return {k: round(statistics.median(v), 1) for k, v in steps.items()}


def conversion_alternatives(path: Path, coords, size: int, repeats: int = 5) -> dict:
    """CPU microseconds per patch (best of ``repeats`` passes, one thread) of ways to get a
    ``(3, size, size)`` uint8 tensor, to size what the conversions in ``PatchDataset``
    cost next to OpenSlide itself. Not a change to the package: a measurement."""
    import numpy as np
    import openslide
    import torch

    from napari_wsi_mil.slide import open_slide
    from napari_wsi_mil.slide.openslide_backend import rgba_to_rgb
    from napari_wsi_mil.slide.tiff_backend import TiffBackend

    def plain():
        osr = openslide.OpenSlide(str(path))
        return lambda x, y: np.asarray(osr.read_region((x, y), 0, (size, size)).convert("RGB"))

    def openslide_only():
        osr = openslide.OpenSlide(str(path))
        return lambda x, y: osr.read_region((x, y), 0, (size, size))

    def current():  # what PatchDataset.__getitem__ does (minus the DataLoader)
        slide = open_slide(path)
        return lambda x, y: torch.from_numpy(
            np.ascontiguousarray(slide.read_region(0, x, y, size, size).transpose(2, 0, 1))
        )

    def one_copy():  # alpha checked in C by PIL, RGBA -> CHW RGB in a single copy
        osr = openslide.OpenSlide(str(path))

        def read(x, y):
            image = osr.read_region((x, y), 0, (size, size))
            rgba = np.asarray(image)
            if image.getextrema()[3][0] == 255:
                return torch.from_numpy(np.ascontiguousarray(rgba.transpose(2, 0, 1)[:3]))
            return torch.from_numpy(np.ascontiguousarray(rgba_to_rgb(rgba).transpose(2, 0, 1)))

        return read

    def tiff_backend():  # the same SVS read through tifffile/zarr instead of OpenSlide
        backend = TiffBackend(str(path))
        return lambda x, y: torch.from_numpy(
            np.ascontiguousarray(backend.read_level(0, x, y, size, size).transpose(2, 0, 1))
        )

    variants = {
        "plain loop: openslide + convert('RGB') + asarray": plain,
        "openslide read_region only (PIL RGBA image)": openslide_only,
        "current: Slide.read_region (rgba_to_rgb) + CHW copy": current,
        "proposed: openslide + getextrema alpha check + one RGBA->CHW copy": one_copy,
        "TiffBackend (tifffile/zarr, no tile cache) + CHW copy": tiff_backend,
    }
    points = [(int(x), int(y)) for x, y in coords]
    out = {}
    for name, make in variants.items():
        best = float("inf")
        for _ in range(repeats):
            read = make()
            c0 = time.process_time()
            for x, y in points:
                read(x, y)
            best = min(best, time.process_time() - c0)
        out[name] = round(best / len(points) * 1e6, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stride", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("# bench_patch_dataset\n")
    if not _common.CMU.is_file():
        print(f"{_common.CMU} not found; nothing to benchmark")
        return
    import torch

    from napari_wsi_mil.jobs import run_job
    from napari_wsi_mil.slide.tiling import TilingParams
    from napari_wsi_mil.store.project import ProjectStore
    from napari_wsi_mil.store.tiling_job import tile_slides_job

    path = _common.CMU
    _common.DATA.mkdir(parents=True, exist_ok=True)
    params = TilingParams(min_tissue=0.0, stride=args.stride)
    rows = []
    with tempfile.TemporaryDirectory(dir=_common.DATA, prefix="patch-project-") as tmp:
        store = ProjectStore(Path(tmp) / "project", create=True)
        run_job(tile_slides_job(store, [("cmu", path)], params))
        grid, _ = store.read_tiles("cmu")
        geo = grid.geometry
        assert geo.read_level == 0 and geo.read_size == geo.patch_size == 224, geo
        coords = grid.coords
        n = len(coords)
        print(
            f"{n} patches of {geo.patch_size} px at level {geo.read_level}, stride "
            f"{geo.stride_level0} px (TilingParams(min_tissue=0.0, stride={args.stride}))\n",
            flush=True,
        )

        # warm up page cache, imports and the fork of loader workers once
        plain_loop(path, coords[:64], 224)
        loader_pass(store, 1)

        default_threads = torch.get_num_threads()
        variants = [("plain openslide loop", None, lambda: plain_loop(path, coords, 224))]
        for w in WORKERS:
            name = f"DataLoader(PatchDataset), num_workers={w}"
            if w == 0:
                variants.append(
                    (
                        f"{name}, torch threads {default_threads} (default)",
                        w,
                        lambda: loader_pass(store, 0),
                    )
                )
                variants.append(
                    (f"{name}, torch.set_num_threads(1)", w, lambda: loader_pass(store, 0, 1))
                )
            else:
                variants.append((name, w, (lambda w=w: loader_pass(store, w))))
        times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
        cpu: dict[str, list[float]] = {name: [] for name, _, _ in variants}
        wcpu: dict[str, list[float]] = {name: [] for name, _, _ in variants}
        for _ in range(args.repeats):  # interleaved so drifting load hits all variants
            for name, _, fn in variants:
                dt, dc, dw, count = timed(fn)
                assert count == n, (name, count, n)
                times[name].append(dt)
                cpu[name].append(dc)
                wcpu[name].append(dw)
        for name, workers, _ in variants:
            ts = times[name]
            rows.append(
                {
                    "variant": name,
                    "num_workers": workers,
                    "best_patches_s": n / min(ts),
                    "median_patches_s": n / statistics.median(ts),
                    # CPU of the main process only: the whole cost when num_workers == 0
                    "main_cpu_us_per_patch": min(cpu[name]) / n * 1e6,
                    "worker_cpu_us_per_patch": min(wcpu[name]) / n * 1e6,
                    "total_cpu_us_per_patch": min(
                        c + w for c, w in zip(cpu[name], wcpu[name], strict=True)
                    )
                    / n
                    * 1e6,
                    "times_s": ts,
                    "cpu_s": cpu[name],
                    "worker_cpu_s": wcpu[name],
                }
            )
        plain = rows[0]
        for row in rows:
            row["speedup_best"] = row["best_patches_s"] / plain["best_patches_s"]
            row["speedup_median"] = row["median_patches_s"] / plain["median_patches_s"]
        best_loader = max(rows[1:], key=lambda r: r["best_patches_s"])
        ok = best_loader["speedup_best"] >= TARGET

        print(
            _common.markdown_table(
                rows,
                [
                    "variant",
                    "best_patches_s",
                    "median_patches_s",
                    "speedup_best",
                    "speedup_median",
                    "main_cpu_us_per_patch",
                    "worker_cpu_us_per_patch",
                    "total_cpu_us_per_patch",
                ],
            )
        )
        print(
            f"\nbest of {args.repeats} / median; target: best DataLoader >= {TARGET}x plain "
            f"loop -> {best_loader['variant']}: {best_loader['speedup_best']:.2f}x "
            f"({'PASS' if ok else 'FAIL'})\n"
        )

        steps = getitem_steps(path, grid)
        print("per-patch cost of the steps (microseconds, median of 3 passes):")
        print(
            _common.markdown_table(
                [{"step": k, "us_per_patch": v} for k, v in steps.items()], ["step", "us_per_patch"]
            )
        )
        alternatives = conversion_alternatives(path, coords, 224)
        print("\nCPU per patch of ways to read a patch as a CHW tensor (us, best of 5, 1 thread):")
        print(
            _common.markdown_table(
                [{"variant": k, "cpu_us_per_patch": v} for k, v in alternatives.items()],
                ["variant", "cpu_us_per_patch"],
            )
        )
        text_ds, prof_ds = profile(loader_pass, store, 0, 1)
        text_dflt, prof_dflt = profile(loader_pass, store, 0)
        text_plain, prof_plain = profile(plain_loop, path, coords, 224)
    # the default stride writes bench_patch_dataset.json, others get their own file
    result_name = "bench_patch_dataset" + ("" if args.stride == 112 else f"_stride{args.stride}")
    _common.RESULTS.mkdir(parents=True, exist_ok=True)
    (_common.RESULTS / f"{result_name}_profile.txt").write_text(
        "## DataLoader(PatchDataset, num_workers=0), torch threads 1, one pass, "
        "cProfile by tottime\n"
        + text_ds
        + "\n## DataLoader(PatchDataset, num_workers=0), torch default threads, one pass, "
        "cProfile by tottime\n"
        + text_dflt
        + "\n## plain openslide loop, one pass, cProfile by tottime\n"
        + text_plain
    )
    print("\ncProfile top (tottime), DataLoader num_workers=0, torch.set_num_threads(1):")
    print(
        _common.markdown_table(
            prof_ds[:10], ["function", "ncalls", "tottime_s", "cumtime_s", "share_of_total"]
        )
    )
    _common.save(
        result_name,
        {
            "slide": str(path),
            "tiling": f"TilingParams(min_tissue=0.0, stride={args.stride})",
            "n_patches": n,
            "batch_size": BATCH,
            "repeats": args.repeats,
            "target_speedup": TARGET,
            "best_loader": best_loader["variant"],
            "target_ok": ok,
            "rows": rows,
            "getitem_steps_us": steps,
            "conversion_alternatives_cpu_us": alternatives,
            "profile_dataloader_nw0": prof_ds,
            "profile_dataloader_nw0_default_threads": prof_dflt,
            "profile_plain_loop": prof_plain,
        },
    )


if __name__ == "__main__":
    main()
