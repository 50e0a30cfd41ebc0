"""Result layers: alignment with the slide in world coordinates, and no level-0 arrays."""

import numpy as np
import pytest

from napari_wsi_mil._napari.layers import (
    Frame,
    analysis_layer_data,
    annotation_layer_data,
    attention_layer_data,
    slide_layer_data,
    tumour_mask_layer_data,
)
from napari_wsi_mil.review.analyse import SlideAnalysis
from napari_wsi_mil.slide.tiling import PatchGeometry, TileGrid


def _layer(data, kwargs, kind):
    import napari.layers

    cls = {"image": napari.layers.Image, "labels": napari.layers.Labels}[kind]
    return cls(data, **kwargs)


@pytest.fixture(scope="module")
def tiled_lesion(tmp_path_factory):
    """A slide (0.5 um/px) with a lesion at a known place, tiled at 1 um/px, 32 px."""
    from napari_wsi_mil.jobs import run_job
    from napari_wsi_mil.slide import open_slide
    from napari_wsi_mil.slide.synthetic import write_synthetic_slide
    from napari_wsi_mil.slide.tiling import TilingParams
    from napari_wsi_mil.store.project import ProjectStore
    from napari_wsi_mil.store.tiling_job import tile_slides_job

    root = tmp_path_factory.mktemp("review-layers")
    synthetic = write_synthetic_slide(
        root / "lesion.tiff", width=2048, height=1536, seed=3, lesion_fraction=0.15
    )
    store = ProjectStore(root / "p", create=True)
    params = TilingParams(target_mpp=1.0, patch_size=32, min_tissue=0.25)
    run_job(tile_slides_job(store, [("lesion", synthetic.path)], params))
    grid, _ = store.read_tiles("lesion")
    return synthetic, open_slide(synthetic.path), grid


def test_highest_scoring_patches_lie_in_the_lesion_in_world_coordinates(tiled_lesion):
    """Regression test of the one transform: scores that are high exactly where the
    lesion is must light up raster pixels whose world position is inside the lesion's
    polygon, mapped to world through the slide layer."""
    from matplotlib.path import Path

    from napari_wsi_mil.store.tile_labels import patch_coverage

    synthetic, slide, grid = tiled_lesion
    coverage = patch_coverage(grid, synthetic.lesion_polygons)
    assert (coverage == 1).sum() >= 5, "the lesion must hold whole patches"
    rng = np.random.default_rng(0)
    scores = coverage + rng.uniform(0, 1e-3, len(grid))  # ties broken at random
    attention = scores / scores.sum()
    slide_layer = _layer(*slide_layer_data(slide))
    frame = Frame.of_slide(slide)
    analysis = SlideAnalysis(
        "lesion", synthetic.path, grid, attention, scores, 1.0, 1, 0.5, "p", "abmil", "f",
        (2048, 1536),
    )  # fmt: skip
    att_layer, prob_layer, mask_layer = (
        _layer(*d) for d in analysis_layer_data(analysis, frame, threshold=0.99)
    )
    world_polygons = [
        Path(
            [np.asarray(slide_layer.data_to_world((y - 0.5, x - 0.5))) for x, y in polygon]
        )  # level-0 continuous (x, y) -> data (y - 1/2, x - 1/2) -> world
        for polygon in synthetic.lesion_polygons
    ]

    def inside(world_yx) -> bool:
        return any(p.contains_point(world_yx) for p in world_polygons)

    # the 5 highest pixels of the attention and probability layers: centres in the lesion
    for layer in (att_layer, prob_layer):
        raster = np.nan_to_num(layer.data, nan=-1)
        for flat in np.argsort(-raster, axis=None)[:5]:
            r, c = np.unravel_index(flat, raster.shape)
            assert inside(np.asarray(layer.data_to_world((r, c))))
    # every mask pixel (whole-patch lesion coverage) is inside, at the four corner
    # points of the 8 x 8 lattice that measured the coverage
    rows, cols = np.nonzero(mask_layer.data)
    assert len(rows) == (coverage + 1e-3 >= 0.99).sum()
    q = 0.4375
    for r, c in zip(rows, cols, strict=True):
        for dr, dc in ((-q, -q), (-q, q), (q, -q), (q, q)):
            assert inside(np.asarray(mask_layer.data_to_world((r + dr, c + dc))))
    # and a patch's level-0 box is exactly its raster pixel's box in world coordinates
    (x, y), (r, c) = grid.coords[0], grid.grid_index[0]
    size0 = grid.geometry.patch_size_level0
    np.testing.assert_allclose(
        att_layer.data_to_world((r - 0.5, c - 0.5)), slide_layer.data_to_world((y - 0.5, x - 0.5))
    )
    np.testing.assert_allclose(
        att_layer.data_to_world((r + 0.5, c + 0.5)),
        slide_layer.data_to_world((y + size0 - 0.5, x + size0 - 0.5)),
    )


def test_layer_kwargs_are_explicit(tiled_lesion):
    synthetic, slide, grid = tiled_lesion
    frame = Frame.of_slide(slide)
    att = np.random.default_rng(1).dirichlet(np.ones(len(grid)))
    for mode in ("raw", "minmax", "rank"):
        data, kwargs, kind = attention_layer_data(grid, att, frame, mode=mode)
        assert kind == "image" and data.dtype == np.float32 and data.shape == grid.grid_shape
        assert kwargs["metadata"]["normalisation"] == mode
        lo, hi = kwargs["contrast_limits"]
        assert lo < hi and np.nanmax(data) <= hi + 1e-9
        assert np.isnan(data).sum() == data.size - len(grid)
        layer = _layer(data, kwargs, kind)
        assert layer.colormap.name == "turbo" and layer.opacity == pytest.approx(0.5)
    data, kwargs, kind = tumour_mask_layer_data(grid, np.linspace(0, 1, len(grid)), 0.5, frame)
    assert kind == "labels" and data.dtype == np.uint8 and set(np.unique(data)) == {0, 1}
    assert _layer(data, kwargs, kind).colormap.map(np.array([1]))[0][0] > 0.9  # red
    paint, kwargs, _ = annotation_layer_data((2048, 1536), 16, frame)
    assert paint.shape == (96, 128) and paint.dtype == np.uint8
    paint_layer = _layer(paint, kwargs, "labels")
    slide_layer = _layer(*slide_layer_data(slide))
    for paint_edge, slide_edge in (((-0.5, -0.5), (-0.5, -0.5)), ((95.5, 127.5), (1535.5, 2047.5))):
        np.testing.assert_allclose(
            paint_layer.data_to_world(paint_edge), slide_layer.data_to_world(slide_edge)
        )


def test_no_array_larger_than_the_patch_grid_is_built():
    """A 100,000-patch grid on a 128k x 128k level 0 (which as uint8 would be 16 GB):
    building every result layer allocates a few patch-grid rasters, never level 0."""
    import tracemalloc

    rows = cols = 400
    size = 320
    rng = np.random.default_rng(0)
    keep = np.sort(rng.choice(rows * cols, 100_000, replace=False))
    coords = np.stack([keep % cols * size, keep // cols * size], 1).astype(np.int64)
    geo = PatchGeometry(0.25, 0.5, 160, size, size, 1, 160)
    grid = TileGrid(coords, np.ones(len(coords), np.float32), geo, (rows, cols))
    att = rng.dirichlet(np.ones(len(grid))).astype(np.float32)
    analysis = SlideAnalysis(
        "big", None, grid, att, rng.random(len(grid)).astype(np.float32), 0.9, 1, 0.5,
        "p", "abmil", "f", (cols * size, rows * size), rng.integers(0, 8, len(grid)),
    )  # fmt: skip
    analysis_layer_data(analysis, Frame((0.25, 0.25)))  # warm imports
    tracemalloc.start()
    layers = analysis_layer_data(analysis, Frame((0.25, 0.25)))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    raster_bytes = rows * cols * 8  # one float64 patch-grid raster
    assert peak < 12 * raster_bytes  # 15 MB; level 0 would be 16 GB
    for data, _, _ in layers:
        assert data.shape == (rows, cols)
