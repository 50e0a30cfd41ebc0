"""CPU time of ``open_slide`` and ``tile_slide`` in this process: one JSON line.

Run once per checkout and slide in fresh processes, e.g. (README section 28)::

    for r in 1 2 3; do for tree in /tmp/before .; do for s in A.svs B.tiff; do
      PYTHONPATH=$tree/src python benchmarks/bench_open_tile_cpu.py $s; done; done; done

Process time, not wall time: on a shared machine it is the number other load disturbs
least. ``import_cpu`` is importing ``napari_wsi_mil.slide`` and its tiling module;
``open_cpu`` the first ``open_slide`` (with the lazy backend import); ``first_tile_cpu``
the first ``tile_slide`` (with the lazy imports of tissue detection); the ``*_min``
values the minimum of 5 more calls.
"""

import json
import sys
import time

path = sys.argv[1]
c0 = time.process_time()
import napari_wsi_mil.slide  # noqa: E402, F401
from napari_wsi_mil.slide import open_slide  # noqa: E402
from napari_wsi_mil.slide.tiling import TilingParams, tile_slide  # noqa: E402

import_cpu = time.process_time() - c0


def _cpu(fn, *args):
    start = time.process_time()
    out = fn(*args)
    return out, time.process_time() - start


slide, open_cpu = _cpu(open_slide, path)
tiled, first_tile_cpu = _cpu(tile_slide, slide, TilingParams())
warm_tile = [_cpu(tile_slide, slide, TilingParams())[1] for _ in range(5)]
warm_open = [_cpu(lambda: open_slide(path).close())[1] for _ in range(5)]
print(
    json.dumps(
        {
            "import_cpu": import_cpu,
            "open_cpu": open_cpu,
            "first_tile_cpu": first_tile_cpu,
            "warm_tile_cpu_min": min(warm_tile),
            "warm_open_cpu_min": min(warm_open),
            "patches": len(tiled.grid),
        }
    )
)
