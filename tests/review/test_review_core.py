"""The Qt-free review core: heatmap values, mask outlines, QuPath GeoJSON, OME-TIFF,
PNG snapshot and annotations -> tile labels."""

import numpy as np
import pytest

from napari_wsi_mil.review.annotations import (
    combine_tile_labels,
    ellipse_polygon,
    raster_placement,
    tile_labels_from_painted,
    tile_labels_from_shapes,
    world_to_level0,
    write_tile_labels,
)
from napari_wsi_mil.review.export import (
    export_slide_predictions,
    mask_geojson,
    mask_polygons,
    tiles_geojson,
    write_heatmap_ome_tiff,
)
from napari_wsi_mil.review.heatmap import contrast_limits, normalise, top_patches, tumour_mask
from napari_wsi_mil.review.polygons import raster_polygons, signed_area
from napari_wsi_mil.slide.tiling import PatchGeometry, TiledSlide, TileGrid
from review_fixtures import check_qupath_geojson


def make_grid(rows=6, cols=8, size=64, keep=None, mpp=0.5) -> TileGrid:
    """A TileGrid of ``rows x cols`` patches of ``size`` level-0 px (stride = size)."""
    r, c = np.mgrid[0:rows, 0:cols]
    coords = np.stack([c.ravel() * size, r.ravel() * size], 1).astype(np.int64)
    if keep is not None:
        coords = coords[np.asarray(keep).ravel()]
    geo = PatchGeometry(mpp, mpp * 2, size // 2, size, size, 1, size // 2)
    return TileGrid(coords, np.ones(len(coords), np.float32), geo, (rows, cols))


# -- heatmap -----------------------------------------------------------------------
def test_normalisations():
    v = np.array([1e-5, 3e-5, 2e-5, 2e-5, np.nan])
    np.testing.assert_allclose(normalise(v, "raw")[:4], v[:4], rtol=1e-6)
    np.testing.assert_allclose(normalise(v, "minmax")[:4], [0, 1, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(normalise(v, "rank")[:4], [0.25, 1.0, 0.625, 0.625])
    assert np.isnan(normalise(v, "rank")[4])
    assert normalise(np.ones(3), "minmax").tolist() == [0.5] * 3
    assert contrast_limits(normalise(v, "rank"), "rank") == (0.0, 1.0)
    lo, hi = contrast_limits(normalise(v, "raw"), "raw")
    assert lo == 0.0 and hi == pytest.approx(3e-5)
    with pytest.raises(ValueError, match="normalisation"):
        normalise(v, "log")
    top, bottom = top_patches(np.array([0.1, 0.9, 0.5, 0.9, np.nan]), 2)
    assert top.tolist() == [1, 3] and bottom.tolist() == [0, 2]
    assert tumour_mask([0.2, 0.5, 0.7], 0.5).tolist() == [0, 1, 1]


# -- polygons ----------------------------------------------------------------------
def test_raster_polygons_are_exact_with_holes_and_diagonals():
    from matplotlib.path import Path
    from scipy import ndimage

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:10, 0:13]
    centres = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], 1)
    for _ in range(60):
        raster = rng.random((10, 13)) < rng.uniform(0.2, 0.8)
        polygons = raster_polygons(raster)
        assert len(polygons) == ndimage.label(raster)[1]
        back = np.zeros(len(centres), bool)
        for exterior, *holes in polygons:
            assert signed_area(exterior) > 0 and all(signed_area(h) < 0 for h in holes)
            inside = Path(exterior).contains_points(centres)
            for hole in holes:
                inside &= ~Path(hole).contains_points(centres)
            back |= inside
        assert (back.reshape(raster.shape) == raster).all()
    ring = np.zeros((5, 5), bool)
    ring[1:4, 1:4] = True
    ring[2, 2] = False
    ((exterior, hole),) = raster_polygons(ring)
    assert len(exterior) == 4 and len(hole) == 4  # collinear vertices dropped
    assert signed_area(exterior) == 9 and signed_area(hole) == -1


# -- GeoJSON -------------------------------------------------------------------------


def test_tiles_geojson_is_qupath_detections_in_level0_pixels():
    grid = make_grid()
    rng = np.random.default_rng(1)
    attention = rng.dirichlet(np.ones(len(grid)))
    prob = rng.random(len(grid))
    data = tiles_geojson(grid, attention, prob, 0.5)
    check_qupath_geojson(data, "detection", 8 * 64, 6 * 64)
    assert len(data["features"]) == len(grid)
    f = data["features"][10]
    x, y = grid.coords[10]
    ring = np.asarray(f["geometry"]["coordinates"][0])
    assert ring[:, 0].min() == x and ring[:, 1].min() == y  # level-0 pixels, top-left
    assert ring[:, 0].max() - x == 64 == ring[:, 1].max() - y
    m = f["properties"]["measurements"]
    assert m["attention"] == pytest.approx(attention[10]) and m["probability"] == pytest.approx(
        prob[10]
    )
    assert 0 < m["attention_rank"] <= 1
    names = {f["properties"]["classification"]["name"] for f in data["features"]}
    assert names == {"Tumor", "Normal"}
    assert f["properties"]["classification"]["name"] == ("Tumor" if prob[10] >= 0.5 else "Normal")


def test_mask_geojson_merges_tiles_and_round_trips_through_tile_labels(tmp_path):
    from napari_wsi_mil.store.geojson import read_geojson_polygons
    from napari_wsi_mil.store.tile_labels import tile_labels_from_polygons

    grid = make_grid()
    raster = np.zeros((6, 8), bool)
    raster[1:3, 1:4] = True  # 6 tiles
    raster[4:6, 6:8] = True  # 4 tiles
    raster[3, 0] = True  # 1 tile
    mask = raster.ravel().astype(np.uint8)
    prob = np.where(mask, 0.9, 0.1)
    data = mask_geojson(grid, mask, prob)
    check_qupath_geojson(data, "annotation", 8 * 64, 6 * 64)
    assert len(data["features"]) == 3
    tiles = sorted(f["properties"]["measurements"]["tiles"] for f in data["features"])
    assert tiles == [1, 4, 6]
    for f in data["features"]:
        assert f["properties"]["classification"]["name"] == "Tumor"
        assert f["properties"]["measurements"]["mean_probability"] == pytest.approx(0.9)
        assert len(f["geometry"]["coordinates"][0]) == 5  # rectangles: 4 corners, closed
    first = mask_polygons(grid, mask)[0][0]
    assert {tuple(p) for p in first} == {(64, 64), (256, 64), (256, 192), (64, 192)}
    # the same path as GeoJSON annotation import gives the mask back
    paths = export_slide_predictions(
        grid, prob / prob.sum(), prob, 0.5, "s1", geojson_dir=tmp_path, heatmap_dir=None
    )
    assert [p.name for p in paths] == ["s1.tiles.geojson", "s1.mask.geojson"]
    polygons = read_geojson_polygons(tmp_path / "s1.mask.geojson")
    np.testing.assert_array_equal(tile_labels_from_polygons(grid, polygons, 0.5), mask)


def test_heatmap_ome_tiff_is_pyramidal_and_calibrated(tmp_path):
    import tifffile

    keep = np.ones((300, 200), bool)
    keep[:10] = False
    grid = make_grid(300, 200, size=64, keep=keep, mpp=0.25)
    att = np.linspace(0, 1, len(grid), dtype=np.float32)
    path = write_heatmap_ome_tiff(
        tmp_path / "h.ome.tif", grid, {"attention": att, "probability": 1 - att}
    )
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert series.axes == "CYX"
        shapes = [level.shape for level in series.levels]
        assert shapes[0] == (2, 300, 200) and shapes[1] == (2, 150, 100) and len(shapes) == 3
        base = series.levels[0].asarray()
        assert 'PhysicalSizeX="16.0"' in tif.ome_metadata  # 64 px * 0.25 um
        assert 'Name="attention"' in tif.ome_metadata
        page = tif.pages[0]
        x_res = page.tags["XResolution"].value
        assert x_res[0] / x_res[1] == pytest.approx(1e4 / 16.0)
    assert np.isnan(base[:, :10]).all()
    r, c = grid.grid_index[5]
    assert base[0, r, c] == pytest.approx(att[5]) and base[1, r, c] == pytest.approx(1 - att[5])
    up = write_heatmap_ome_tiff(
        tmp_path / "u.ome.tif", make_grid(), {"a": np.arange(48)}, upsample=4
    )
    with tifffile.TiffFile(up) as tif:
        assert tif.series[0].levels[0].shape[-2:] == (24, 32)
        assert 'PhysicalSizeX="8.0"' in tif.ome_metadata  # 64 px * 0.5 um / 4


def test_snapshot_png(tmp_path):
    from matplotlib.image import imread

    from napari_wsi_mil.review.snapshot import render_snapshot

    grid = make_grid()
    thumb = np.full((96, 128, 3), 230, np.uint8)
    values = np.arange(len(grid), dtype=np.float32)
    fig = render_snapshot(
        thumb, (512, 384), grid, values, mask=values > 40, title="s: P = 0.9", width_px=600
    )
    path = tmp_path / "s.png"
    fig.savefig(path)
    image = imread(path)
    assert image.shape[1] == 600 and image.shape[0] > 300
    assert fig.axes[1].get_ylabel() == "attention (percentile rank)"


# -- annotations ----------------------------------------------------------------------
def test_painted_labels_to_tile_labels_by_coverage():
    grid = make_grid()
    painted = np.zeros((6 * 4, 8 * 4), np.uint8)  # 16 level-0 px per paint pixel
    painted[0:4, 0:4] = 1  # tile (0, 0) all tumour
    painted[0:1, 4:8] = 1  # tile (0, 1): 25% tumour -> tumour (min coverage 20%)
    painted[4:8, 0:4] = 2  # tile (1, 0): normal
    painted[4:5, 4:8] = 2  # tile (1, 1): 25% normal -> unknown (needs 50%)
    painted[8:12, 8:12] = 2
    painted[8:9, 8:12] = 1  # tile (2, 2): 25% tumour + 75% normal -> tumour
    labels = tile_labels_from_painted(grid, painted, (16, 16)).reshape(6, 8)
    assert labels[0, 0] == 1 and labels[0, 1] == 1 and labels[1, 0] == 0
    assert labels[1, 1] == -1 and labels[2, 2] == 1
    assert (labels == -1).sum() == 48 - 4
    # a raster with an offset origin (e.g. a user's own layer) moves the labels
    shifted = tile_labels_from_painted(grid, painted[:, 4:], (16, 16), origin=(0, 64))
    shifted = shifted.reshape(6, 8)
    assert (shifted[:, 1:] == labels[:, 1:]).all() and (shifted[:, 0] == -1).all()


def test_raster_placement_inverts_raster_transform():
    from napari_wsi_mil._napari.layers import raster_transform

    slide_scale = (0.25, 0.25)
    scale, translate = raster_transform((16, 16), slide_scale)
    f, o = raster_placement(scale, translate, slide_scale)
    assert f == pytest.approx((16, 16)) and o == pytest.approx((0, 0), abs=1e-9)


def test_shapes_to_tile_labels_and_world_conversion():
    grid = make_grid()
    # a rectangle drawn in world units (um; slide 0.5 um/px) over tiles (1..2, 1..2)
    world = np.array([[64, 64], [64, 192], [192, 192], [192, 64]]) * 0.5 - 0.25
    polygon = world_to_level0(world, (0.5, 0.5))
    np.testing.assert_allclose(polygon[0], [64, 64])
    normal = world_to_level0(
        np.array([[0, 0], [0, 64], [64, 64], [64, 0]]) * 0.5 - 0.25, (0.5,) * 2
    )
    labels = tile_labels_from_shapes(grid, [polygon], [normal]).reshape(6, 8)
    assert (labels[1:3, 1:3] == 1).all() and labels[0, 0] == 0
    assert (labels == -1).sum() == 48 - 5
    ellipse = ellipse_polygon(np.array([[0, 0], [0, 10], [20, 10], [20, 0]]))
    np.testing.assert_allclose(ellipse.mean(axis=0), [10, 5], atol=1e-9)
    np.testing.assert_allclose(np.ptp(ellipse, axis=0), [20, 10], atol=0.1)
    both = combine_tile_labels(np.array([1, 0, -1, -1]), np.array([0, -1, 0, -1]))
    assert both.tolist() == [1, 0, 0, -1]


def test_tile_labels_are_stored_where_bags_read_them(tmp_path):
    from napari_wsi_mil.errors import StoreError
    from napari_wsi_mil.mil.bags import slide_tile_labels
    from napari_wsi_mil.store.project import ProjectStore

    store = ProjectStore(tmp_path / "p", create=True)
    grid = make_grid()
    store.write_tiles("s1", TiledSlide(grid, np.ones((2, 2), bool), (256, 192), []), {}, {})
    labels = np.full(len(grid), -1, np.int8)
    labels[:5], labels[5:9] = 1, 0
    write_tile_labels(store, "s1", labels, "napari")
    np.testing.assert_array_equal(slide_tile_labels(store, "s1", 1, None), labels)
    attrs = store.read_result("tile_labels", None, "s1")[1]
    assert attrs["source"] == "napari" and attrs["tumour"] == 5 and attrs["normal"] == 4
    with pytest.raises(StoreError, match="47 tile labels"):
        write_tile_labels(store, "s1", labels[:-1], "napari")
