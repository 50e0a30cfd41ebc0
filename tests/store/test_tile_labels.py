import numpy as np

from napari_wsi_mil.slide.tiling import PatchGeometry, TileGrid
from napari_wsi_mil.store.tile_labels import patch_coverage, tile_labels_from_polygons


def _grid():
    coords = np.array([[0, 0], [100, 0], [200, 0], [0, 100]], np.int64)
    geo = PatchGeometry(0.5, 0.5, 100, 100, 100, 0, 100)
    return TileGrid(coords, np.ones(4, np.float32), geo, (2, 3))


def test_coverage_of_a_square_polygon():
    # covers patch 0 fully, patch 1 by 30% (x 100..130), nothing else
    square = np.array([[0, 0], [130, 0], [130, 100], [0, 100], [0, 0]], float)
    cov = patch_coverage(_grid(), [square], samples=10)
    np.testing.assert_allclose(cov, [1.0, 0.3, 0.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(tile_labels_from_polygons(_grid(), [square]), [1, 1, 0, 0])
    np.testing.assert_array_equal(
        tile_labels_from_polygons(_grid(), [square], min_coverage=0.5), [1, 0, 0, 0]
    )


def test_no_polygons_and_several_polygons():
    assert (patch_coverage(_grid(), []) == 0).all()
    a = np.array([[200, 0], [300, 0], [300, 100], [200, 100]], float)
    b = np.array([[0, 150], [100, 150], [100, 200], [0, 200]], float)
    np.testing.assert_allclose(patch_coverage(_grid(), [a, b]), [0, 0, 1.0, 0.5])
