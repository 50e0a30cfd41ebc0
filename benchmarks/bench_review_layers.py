"""Building the result layers of a 100,000-patch slide: time and memory.

Targets: building all result layers (attention heatmap with percentile-rank
normalisation, instance-probability heatmap, predicted tumour mask, CluSiam clusters)
for a slide with 100,000 patches takes under 1 s and under 50 MB beyond the slide
itself, and nothing the size of level 0 is ever created (every layer is a patch-grid
raster placed by ``raster_transform``).

Run: ``python benchmarks/bench_review_layers.py``. No slide file is needed: the grid
is synthetic, 100,000 patches of 224 px at 0.5 um/px (448 level-0 px at 0.25 um/px)
on a 400 x 400 grid, i.e. a 179,200 x 179,200 px level 0 (96 GB as RGB).

Measured, ``REPEATS`` times after one warm-up call (imports, numpy caches), median:

- ``layer_data``: :func:`~napari_wsi_mil._napari.layers.analysis_layer_data` (the
  arrays and kwargs the widget hands to napari);
- ``napari_layers``: the same plus constructing the napari ``Image``/``Labels`` layer
  objects (no viewer, no GPU);
- ``threshold_update`` / ``normalisation_update``: what the widget recomputes when the
  mask threshold slider or the attention scale changes;
- exports: tiles and mask GeoJSON, heatmap OME-TIFF.

Memory is ``tracemalloc``'s peak of Python-visible allocations (numpy arrays included)
during one call, and the largest single array any layer holds.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

N_PATCHES = 100_000
ROWS = COLS = 400
PATCH0 = 448  # level-0 px per patch (224 px at 0.5 um/px on a 0.25 um/px slide)
SLIDE_SCALE = (0.25, 0.25)
REPEATS = 5
TARGET_S = 1.0
TARGET_MB = 50.0


def make_analysis():
    from napari_wsi_mil.review.analyse import SlideAnalysis
    from napari_wsi_mil.slide.tiling import PatchGeometry, TileGrid

    rng = np.random.default_rng(0)
    keep = np.sort(rng.choice(ROWS * COLS, N_PATCHES, replace=False))
    coords = np.stack([keep % COLS * PATCH0, keep // COLS * PATCH0], 1).astype(np.int64)
    geo = PatchGeometry(0.25, 0.5, 224, PATCH0, PATCH0, 1, 224)
    grid = TileGrid(coords, np.ones(N_PATCHES, np.float32), geo, (ROWS, COLS))
    attention = rng.dirichlet(np.ones(N_PATCHES)).astype(np.float32)
    return SlideAnalysis(
        slide_id="bench",
        slide_path=Path("bench.tiff"),
        grid=grid,
        attention=attention,
        instance_probability=rng.random(N_PATCHES).astype(np.float32),
        probability=0.9,
        prediction=1,
        threshold=0.5,
        prediction_name="bench",
        model_name="abmil",
        feature_name="f",
        slide_size=(COLS * PATCH0, ROWS * PATCH0),
        clusters=rng.integers(0, 8, N_PATCHES).astype(np.int32),
    )


def measure(fn, repeats: int = REPEATS) -> dict:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    out = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "peak_traced_mb": peak / 1e6,
        "_out": out,
    }


def main() -> int:
    import napari.layers

    from napari_wsi_mil._napari.layers import (
        Frame,
        analysis_layer_data,
        attention_layer_data,
        tumour_mask_raster,
    )
    from napari_wsi_mil.review.export import (
        mask_geojson,
        write_heatmap_ome_tiff,
        write_json,
        write_tiles_geojson,
    )
    from napari_wsi_mil.review.heatmap import normalise, tumour_mask

    analysis = make_analysis()
    grid = analysis.grid
    level0_bytes = analysis.slide_size[0] * analysis.slide_size[1] * 3

    def layer_data():
        return analysis_layer_data(analysis, Frame(SLIDE_SCALE))

    classes = {"image": napari.layers.Image, "labels": napari.layers.Labels}

    def napari_layers():
        return [classes[kind](data, **kwargs) for data, kwargs, kind in layer_data()]

    rows = {}
    for name, fn in (
        ("layer_data", layer_data),
        ("napari_layers", napari_layers),
        ("threshold_update", lambda: tumour_mask_raster(grid, analysis.instance_probability, 0.7)),
        (
            "normalisation_update",
            lambda: attention_layer_data(
                grid, analysis.attention, Frame(SLIDE_SCALE), mode="minmax"
            ),
        ),
    ):
        rows[name] = measure(fn)
        print(
            f"{name:22s} {rows[name]['median_s'] * 1e3:8.1f} ms  "
            f"peak {rows[name]['peak_traced_mb']:6.1f} MB",
            flush=True,
        )

    layers = rows["layer_data"].pop("_out")
    largest = max(data.nbytes for data, _, _ in layers)
    shapes = sorted({tuple(data.shape) for data, _, _ in layers})
    for row in rows.values():
        row.pop("_out", None)

    exports = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mask = tumour_mask(analysis.instance_probability, 0.9)
        for name, fn, path in (
            (
                "tiles_geojson",
                lambda: write_tiles_geojson(
                    tmp / "t.geojson",
                    grid,
                    analysis.attention,
                    analysis.instance_probability,
                    0.9,
                ),
                tmp / "t.geojson",
            ),
            (
                "mask_geojson",
                lambda: write_json(
                    tmp / "m.geojson", mask_geojson(grid, mask, analysis.instance_probability)
                ),
                tmp / "m.geojson",
            ),
            (
                "heatmap_ome_tiff",
                lambda: write_heatmap_ome_tiff(
                    tmp / "h.ome.tif",
                    grid,
                    {
                        "attention": normalise(analysis.attention, "rank"),
                        "probability": analysis.instance_probability,
                    },
                ),
                tmp / "h.ome.tif",
            ),
        ):
            result = measure(fn, repeats=1)
            result.pop("_out")
            result["file_mb"] = path.stat().st_size / 1e6
            exports[name] = result
            print(
                f"{name:22s} {result['median_s'] * 1e3:8.1f} ms  "
                f"peak {result['peak_traced_mb']:6.1f} MB  file {result['file_mb']:.1f} MB",
                flush=True,
            )

    checks = {
        "layers_under_1s": rows["layer_data"]["median_s"] < TARGET_S
        and rows["napari_layers"]["median_s"] < TARGET_S,
        "layers_under_50MB": rows["layer_data"]["peak_traced_mb"] < TARGET_MB
        and rows["napari_layers"]["peak_traced_mb"] < TARGET_MB,
        "only_patch_grid_arrays": shapes == [(ROWS, COLS)] and largest <= ROWS * COLS * 8,
    }
    print(
        f"\nlargest layer array: {largest / 1e6:.2f} MB, shapes {shapes}; "
        f"level 0 as RGB would be {level0_bytes / 1e9:.0f} GB"
    )
    print(
        _common.markdown_table(
            [{"step": k, **v} for k, v in {**rows, **exports}.items()],
            ["step", "median_s", "peak_traced_mb", "file_mb"],
        )
    )
    for name, ok in checks.items():
        print(f"{name}: {'PASS' if ok else 'FAIL'}")
    _common.save(
        "review_layers",
        {
            "n_patches": N_PATCHES,
            "grid_shape": [ROWS, COLS],
            "patch_size_level0": PATCH0,
            "level0_rgb_bytes": level0_bytes,
            "largest_layer_array_bytes": largest,
            "layer_array_shapes": [list(s) for s in shapes],
            "repeats": REPEATS,
            "timings": rows,
            "exports": exports,
            "targets": {"seconds": TARGET_S, "traced_mb": TARGET_MB},
            "checks": checks,
        },
    )
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
