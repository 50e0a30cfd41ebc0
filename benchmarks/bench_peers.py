"""Opening, tiling and feature extraction against the peers hs2p 6.1 and LazySlide 0.13.

Run: ``python benchmarks/bench_peers.py [--rounds 5] [--peers-python PATH]`` or, to
write the section of ``REPORT.md``, ``python benchmarks/run_all.py --only bench_peers``.
The peers are the optional ``bench`` extra (``pip install -e .[bench]``); they pull in
many packages (spatialdata, dask, numba, ...), so they may live in another environment:
``--peers-python`` (or ``WSI_MIL_PEERS_PYTHON``) names its interpreter; its children
get this checkout's ``src`` on ``PYTHONPATH`` (the LazySlide features task builds our
trunk). A peer that is not installed or
fails is reported as such in the table; the benchmark does not fail for it.

Slides: CMU-1-Small-Region (an Aperio SVS of JPEG tiles, which we read through tifffile
since session 8 and through OpenSlide before) and a 24,000 x
18,000 px pyramidal TIFF (JPEG tiles of 512 px, one IFD per level down to 1,500 x 1,125,
0.5 um/px) made once from copies of CMU-1-Small-Region on white and cached in
``benchmarks/_data``.

Every measurement runs in a fresh interpreter, so every call is a first call; the tiling
child also times a second call in the same process. The first call is timed without the
tool's imports (hs2p and LazySlide import their readers at the top, we import ours when
first used, so this row charges us for imports the peers are not charged for) and, in
the "imports included" rows, with them (from importing the tool's functions). Per
round, the tools run in a rotated order (round r starts with tool r mod 3), so drift
of the machine's load does not favour one tool; a round is ``--rounds`` such rotations
for each slide and task. The table shows the minimum over rounds and the ratio
ours / theirs (below 1: we are faster).

- open: ``open_slide(path)`` (ours), ``hs2p.wsi.reader.open_slide(path)``,
  ``wsidata.open_wsi(path, store=None)``.
- tiling: from the path to patch coordinates, opening included: ours
  ``tile_slide(open_slide(path), TilingParams())`` (224 px at 0.5 um/px, 50 % tissue);
  hs2p ``tile_slide(SlideSpec(...), tiling=TilingConfig(0.5 um, 224 px, tolerance
  0.05, overlap 0), segmentation=SegmentationConfig(method="hsv"))``; LazySlide
  ``open_wsi`` + ``pp.find_tissues`` + ``pp.tile_tissues(wsi, 224, mpp=0.5)``. Each tool
  keeps its own tissue rules, so the patch counts differ; they are shown.
- features (CMU-1 only; hs2p has no extraction): seconds per patch of a seeded random
  ResNet-18 trunk (``load_encoder_spec("random")``, batch 64, CPU, no loader workers) over
  the tool's own tiling, the tiling not timed: ours ``extract_features_job`` (features
  written to a project store), LazySlide ``tl.feature_extraction(wsi, model=the same
  module, transform=the same normalisation)``. Children run with ``OMP_NUM_THREADS=1``
  unless it is set.

Our modules are byte-compiled before the rounds, as pip compiles the peers' installed
modules: an editable checkout on a machine with PYTHONDONTWRITEBYTECODE set would
otherwise compile every module it imports in every child (15-20 ms of a first tiling call).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

TOOLS = ("ours", "hs2p", "lazyslide")
TASKS = ("open", "tiling", "features")
#: tasks a tool cannot do (hs2p tiles; it does not extract features)
MISSING = {("hs2p", "features")}
#: slides the features task runs on (the TIFF would take minutes per run on a CPU)
FEATURE_SLIDES = ("CMU-1-Small-Region (Aperio SVS)",)
PEER_VERSIONS = {"hs2p": "6.1", "lazyslide": "0.13"}
#: the cached pyramidal TIFF: level-0 size, tile side, pixel size, period of the copies
TIFF_SIZE, TIFF_TILE, TIFF_MPP, CELL = (24000, 18000), 512, 0.5, 3072


# -- the 24k x 18k pyramidal TIFF -------------------------------------------------------
def pyramid_tiff() -> Path:
    """A standard tiled pyramidal TIFF (one IFD per level, JPEG), cached."""
    path = _common.DATA / "peers-24k-pyramid.tiff"
    if path.is_file():
        return path
    import numpy as np
    import tifffile
    from PIL import Image

    print(f"note: writing {path.name} (once; about a minute) ...", flush=True)
    with tifffile.TiffFile(_common.CMU) as tif:
        cmu = Image.fromarray(tif.pages[0].asarray())
    _common.DATA.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    width, height = TIFF_SIZE
    with tifffile.TiffWriter(tmp, bigtiff=True) as writer:
        level = 0
        while level == 0 or max(width, height) > 1024:
            scale = 2**level
            cell = np.full((CELL // scale, CELL // scale, 3), 255, np.uint8)
            copy = cmu.reduce(scale) if scale > 1 else cmu
            cell[: copy.height, : copy.width] = np.asarray(copy)[: CELL // scale, : CELL // scale]

            def tiles(cell=cell, width=width, height=height):
                n = len(cell)
                for y in range(0, height, TIFF_TILE):
                    rows = np.arange(y, y + TIFF_TILE) % n
                    for x in range(0, width, TIFF_TILE):
                        yield cell[np.ix_(rows, np.arange(x, x + TIFF_TILE) % n)]

            writer.write(
                tiles(),
                shape=(height, width, 3),
                dtype=np.uint8,
                tile=(TIFF_TILE, TIFF_TILE),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": 90},
                subfiletype=1 if level else 0,
                resolution=(1e4 / (TIFF_MPP * scale), 1e4 / (TIFF_MPP * scale)),
                resolutionunit="CENTIMETER",
                description=f"bench_peers pyramid|mpp={TIFF_MPP}" if level == 0 else None,
                metadata=None,
            )
            level += 1
            width, height = width // 2, height // 2
    tmp.replace(path)
    return path


# -- children: one tool, one task, one slide, in a fresh interpreter -------------------
def _ours():
    from napari_wsi_mil.slide import open_slide
    from napari_wsi_mil.slide.tiling import TilingParams, tile_slide

    def tiling(path):
        with open_slide(path) as slide:
            return len(tile_slide(slide, TilingParams()).grid)

    def features(path):
        import tempfile

        from napari_wsi_mil.features.extract import extract_features_job
        from napari_wsi_mil.jobs import run_job
        from napari_wsi_mil.store.project import ProjectStore
        from napari_wsi_mil.store.tiling_job import tile_slides_job

        with tempfile.TemporaryDirectory() as tmp:
            store = ProjectStore(Path(tmp) / "project", create=True)
            run_job(tile_slides_job(store, [("s", path)], TilingParams()))
            n = len(store.read_tiles("s")[0])
            t0 = time.perf_counter()
            run_job(
                extract_features_job(store, ["s"], "random", "random", num_workers=0, device="cpu")
            )
            return time.perf_counter() - t0, n

    return open_slide, tiling, features


def _hs2p():
    from hs2p import SegmentationConfig, SlideSpec, TilingConfig, tile_slide
    from hs2p.wsi.reader import open_slide

    def tiling(path):
        result = tile_slide(
            SlideSpec(sample_id="s", image_path=Path(path)),
            tiling=TilingConfig(
                requested_spacing_um=0.5, requested_tile_size_px=224, tolerance=0.05, overlap=0.0
            ),
            segmentation=SegmentationConfig(method="hsv"),
            num_workers=1,
        )
        return len(result.tiles.x)

    return open_slide, tiling, None


def _lazyslide():
    import lazyslide as zs
    from wsidata import open_wsi

    def tiling(path):
        wsi = open_wsi(path, store=None)
        zs.pp.find_tissues(wsi)
        zs.pp.tile_tissues(wsi, 224, mpp=0.5)
        return len(wsi["tiles"])

    def features(path):
        import numpy as np
        import torch

        from napari_wsi_mil.features.encoders import load_encoder_spec

        encoder = load_encoder_spec("random")
        mean = torch.tensor(encoder.mean)[:, None, None]
        std = torch.tensor(encoder.std)[:, None, None]

        def transform(image):
            chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
            return (chw.float().div(255) - mean) / std

        wsi = open_wsi(path, store=None)
        zs.pp.find_tissues(wsi)
        zs.pp.tile_tissues(wsi, 224, mpp=0.5)
        t0 = time.perf_counter()
        zs.tl.feature_extraction(
            wsi,
            model=encoder.model.eval(),
            model_name="random",
            transform=transform,
            batch_size=64,
            num_workers=0,
            device="cpu",
            pbar=False,
        )
        return time.perf_counter() - t0, len(wsi["tiles"])

    return (lambda path: open_wsi(path, store=None)), tiling, features


def child(tool: str, task: str, path: str) -> None:
    import warnings

    warnings.simplefilter("ignore")
    t0 = time.perf_counter()  # the tool's imports: its modules and what they import at the top
    opener, tiling, features = {"ours": _ours, "hs2p": _hs2p, "lazyslide": _lazyslide}[tool]()
    imports = time.perf_counter() - t0
    if task == "features":
        seconds, n = features(path)
        _common.child_result({"first_s": seconds / n, "tiles": n})
        return
    if task == "open":
        t0 = time.perf_counter()
        opener(path)
        first = time.perf_counter() - t0
        _common.child_result({"first_s": first, "with_imports_s": imports + first})
        return
    t0 = time.perf_counter()
    n = tiling(path)
    t1 = time.perf_counter()
    tiling(path)
    first, second = t1 - t0, time.perf_counter() - t1
    _common.child_result(
        {"first_s": first, "with_imports_s": imports + first, "second_s": second, "tiles": n}
    )


def run_child(python: str, tool: str, task: str, path: Path) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--child", tool, task, str(path)]
    src = str(Path(__file__).resolve().parents[1] / "src")
    path_list = [src, *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "PYTHONPATH": os.pathsep.join(path_list),
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": last[:160]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--peers-python", default=os.environ.get("WSI_MIL_PEERS_PYTHON", sys.executable)
    )
    parser.add_argument("--child", nargs=3, metavar=("TOOL", "TASK", "PATH"))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    print("# bench_peers\n")
    if not _common.CMU.is_file():
        print(f"{_common.CMU} not found; nothing to benchmark")
        return
    slides = {"CMU-1-Small-Region (Aperio SVS)": _common.CMU, "24k x 18k pyramidal TIFF": None}
    slides["24k x 18k pyramidal TIFF"] = pyramid_tiff()
    python = {"ours": sys.executable, "hs2p": args.peers_python, "lazyslide": args.peers_python}
    # pip compiles an installed package's modules; an editable checkout has bytecode only
    # once Python writes it, which PYTHONDONTWRITEBYTECODE (set on this machine) prevents
    compileall.compile_dir(str(Path(__file__).resolve().parents[1] / "src"), quiet=1)
    load = [round(x, 2) for x in os.getloadavg()]
    runs: dict[tuple[str, str, str], list[dict]] = {}
    for r in range(args.rounds):
        order = TOOLS[r % 3 :] + TOOLS[: r % 3]
        for slide, path in slides.items():
            for task in TASKS:
                if task == "features" and slide not in FEATURE_SLIDES:
                    continue
                for tool in order:
                    if (tool, task) in MISSING:
                        continue
                    key = (slide, task, tool)
                    if any("error" in run for run in runs.get(key, [])):
                        continue  # a tool that failed once is not retried
                    runs.setdefault(key, []).append(run_child(python[tool], tool, task, path))
        print(f"round {r + 1}/{args.rounds} done (load {os.getloadavg()[0]:.1f})", flush=True)

    rows = []
    for slide in slides:
        for task in TASKS:
            if task == "features" and slide not in FEATURE_SLIDES:
                continue
            best = {}
            for tool in TOOLS:
                results = runs.get((slide, task, tool))
                if results is None:  # a task the tool does not have
                    best[tool] = {"error": "-"}
                    continue
                errors = [run["error"] for run in results if "error" in run]
                best[tool] = (
                    {"error": errors[0]}
                    if errors
                    else {
                        k: min(run[k] for run in results)
                        for k in ("first_s", "with_imports_s", "second_s", "tiles")
                        if k in results[0]
                    }
                )
            calls = {"first_s": "", "with_imports_s": ", imports included"}
            if task == "tiling":
                calls["second_s"] = ", second call"
            for call, note in calls.items() if task != "features" else [("first_s", "")]:
                label = "features, s per patch" if task == "features" else task
                row = {
                    "test": f"{label}, {slide}{note}",
                    "call": call,
                    "ours_s": best["ours"].get(call),
                }
                for peer in PEER_VERSIONS:
                    theirs = best[peer].get(call)
                    row[f"{peer}_s"] = theirs if theirs is not None else best[peer].get("error")
                    row[f"ours/{peer}"] = (
                        row["ours_s"] / theirs if theirs and row["ours_s"] is not None else None
                    )
                if task != "open":
                    row["tiles ours/hs2p/lazyslide"] = "/".join(
                        str(best[t].get("tiles", "-")) for t in TOOLS
                    )
                rows.append(row)
    columns = ["test", "ours_s", "hs2p_s", "ours/hs2p", "lazyslide_s", "ours/lazyslide"]
    print(
        f"min of {args.rounds} rounds, fresh process per measurement, tool order rotated; "
        f"hs2p {PEER_VERSIONS['hs2p']}, LazySlide {PEER_VERSIONS['lazyslide']}; load average "
        f"{load} at the start (a shared 2-core machine: compare the ratios, which come from "
        "the same run)\n"
    )
    print(_common.markdown_table(rows, [*columns, "tiles ours/hs2p/lazyslide"]))
    targets = [
        (r["test"], r["ours/hs2p"], 1.5 if r["test"].startswith("open") else 1.0)
        for r in rows
        if r["test"].startswith(("open", "tiling")) and r["call"] == "first_s"
    ]
    print("\ntargets against hs2p (first call): opening <= 1.5, tiling <= 1.0")
    for test, ratio, limit in targets:
        verdict = "n/a" if ratio is None else ("PASS" if ratio <= limit else "FAIL")
        shown = "-" if ratio is None else f"{ratio:.2f}"
        print(f"- {test}: {shown} (<= {limit}) {verdict}")
    _common.save(
        "bench_peers",
        {
            "slides": {k: str(v) for k, v in slides.items()},
            "rounds": args.rounds,
            "peers_python": args.peers_python,
            "load_at_start": load,
            "rows": rows,
            "runs": {"|".join(k): v for k, v in runs.items()},
        },
    )


if __name__ == "__main__":
    main()
