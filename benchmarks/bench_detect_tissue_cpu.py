"""CPU time of ``detect_tissue`` alone on three image sets: one JSON line.

Run per checkout (README section 32), e.g.::

    for tree in /tmp/before .; do
        PYTHONPATH=$tree/src python benchmarks/bench_detect_tissue_cpu.py; done

Images: CMU-1-Small-Region's 741 x 555 level (2 um/px, detected on 2 x 2 block means),
the 1500 x 1125 tissue level (8 um/px) of ``bench_peers``' 24k x 18k TIFF (made by
``bench_peers.py``), and every tile of ``../shared/data/tiles`` twice (at the assumed
8 um/px and at 1 um/px). Each set is detected once (imports and caches), then 5 times;
the minimum process time (OpenCV's threads included) and wall time of a pass, seconds.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from napari_wsi_mil.slide import open_slide  # noqa: E402
from napari_wsi_mil.slide.tissue import detect_tissue  # noqa: E402


def _level(path: Path, level: int) -> tuple[np.ndarray, float]:
    with open_slide(path) as slide:
        w, h = slide.level_dimensions[level]
        return slide.read_region(level, 0, 0, w, h), slide.level_mpp(level)


def main() -> None:
    tiles = [
        np.asarray(Image.open(p).convert("RGB"))
        for p in sorted((_common.SHARED / "tiles").glob("*.png"))
    ]
    sets = {
        "CMU 741 x 555": [_level(_common.CMU, 2)],
        "24k TIFF 1500 x 1125": [_level(_common.DATA / "peers-24k-pyramid.tiff", 4)],
        f"{len(tiles)} shared tiles x 2": [(t, None) for t in tiles] + [(t, 1.0) for t in tiles],
    }
    out = {}
    for name, cases in sets.items():
        for rgb, px in cases:
            detect_tissue(rgb, px)
        cpu, wall = [], []
        for _ in range(5):
            c, t = time.process_time(), time.perf_counter()
            for rgb, px in cases:
                detect_tissue(rgb, px)
            cpu.append(time.process_time() - c)
            wall.append(time.perf_counter() - t)
        out[name] = {"cpu_s": round(min(cpu), 4), "wall_s": round(min(wall), 4)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
