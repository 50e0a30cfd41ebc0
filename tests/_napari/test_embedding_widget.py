import numpy as np
import pytest

from napari_wsi_mil._napari.widgets.embedding_widget import EmbeddingWidget
from pretrain_fixtures import tiny_cohort

D = 8


@pytest.fixture(scope="module")
def cohort_with_features(tmp_path_factory):
    root = tmp_path_factory.mktemp("embw")
    store, cohort = tiny_cohort(root, n_slides=4, test_fraction=0.5)
    rng = np.random.default_rng(0)
    for entry in cohort:
        grid, _ = store.read_tiles(entry.slide_id)
        feats = rng.normal(size=(len(grid), D)) + 3.0 * entry.label * np.eye(D)[0]
        store.write_result(
            "features", "test", entry.slide_id, {"features": feats.astype(np.float16)}, {}
        )
    return store, cohort


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)


def _wait_highlighted(qtbot, widget, expected):
    """Layer edits are read back on the next event-loop turn."""
    expected = np.sort(expected)
    qtbot.waitUntil(lambda: np.array_equal(widget.highlighted, expected), timeout=5_000)


def _compute(viewer, qtbot, store, cohort, max_per_slide=30):
    widget = EmbeddingWidget(viewer)
    widget.project.value = store.root
    assert widget.feature_set.choices == ("test",)
    widget.cohort.value = cohort.source
    widget.max_per_slide.value = max_per_slide
    widget.run_button.clicked.emit()
    _wait(qtbot, widget)
    assert widget.table is not None, widget.status.value
    return widget


def test_embedding_widget_links_plot_and_slide(
    make_napari_viewer_proxy, qtbot, cohort_with_features
):
    store, cohort = cohort_with_features
    viewer = make_napari_viewer_proxy()
    entry = cohort.entries[1]
    (slide_layer,) = viewer.open(entry.path, plugin="napari-wsi-mil")
    widget = _compute(viewer, qtbot, store, cohort)
    table = widget.table
    assert len(table) == 4 * 30
    assert widget.plot.splits == ["train", "test"]
    assert widget.plot.modes == ["scatter", "scatter"]
    assert widget.current_slide_id() == entry.slide_id
    layer = widget.selection_layer()
    assert layer is not None and layer.name == f"{entry.slide_id} embedding selection"
    assert layer.data.sum() == 0  # nothing selected yet, but ready to paint
    assert tuple(layer.units) == tuple(slide_layer.units)  # no "Inconsistent units"

    grid, _ = store.read_tiles(entry.slide_id)
    rows = table.rows_of(entry.slide_id)
    other_rows = table.rows_of(cohort.entries[2].slide_id)
    chosen = np.concatenate([rows[::3], other_rows[:5]])  # points of two slides
    widget.select_points(chosen)
    np.testing.assert_array_equal(widget.highlighted, np.sort(chosen))
    offsets = np.concatenate([np.asarray(a.get_offsets()) for a in widget.plot.highlight_artists])
    assert len(offsets) == len(chosen)

    # the Labels layer shows exactly the chosen patches of this slide
    on_slide = table.patch_index[rows[::3]]
    expected = np.zeros(grid.grid_shape, np.uint8)
    r, c = grid.grid_index[on_slide].T
    expected[r, c] = 1
    np.testing.assert_array_equal(np.asarray(layer.data), expected)
    feats = layer.features
    assert list(feats.columns) == ["patch_index", "x", "y", "pc1", "pc2", "bag_label", "selected"]
    assert len(feats) == len(rows)
    np.testing.assert_array_equal(feats["patch_index"], table.patch_index[rows])
    np.testing.assert_array_equal(feats["x"], grid.coords[table.patch_index[rows], 0])
    np.testing.assert_allclose(feats["pc1"], table.xy[rows, 0])
    np.testing.assert_array_equal(np.flatnonzero(feats["selected"]), np.arange(len(rows))[::3])
    assert (feats["bag_label"] == entry.label).all()

    # reverse link: paint label 1 on other patches, erase one selected patch
    painted_rows = rows[1:6:3]  # not selected before
    erased_row = rows[0]
    pr, pc = grid.grid_index[table.patch_index[painted_rows]].T
    layer.data_setitem((pr, pc), 1)
    er, ec = grid.grid_index[table.patch_index[erased_row]]
    layer.data_setitem((np.array([er]), np.array([ec])), 0)
    expected_sel = np.union1d(np.setdiff1d(chosen, [erased_row]), painted_rows)
    _wait_highlighted(qtbot, widget, expected_sel)
    offsets = np.concatenate([np.asarray(a.get_offsets()) for a in widget.plot.highlight_artists])
    assert len(offsets) == len(expected_sel)
    assert layer.features["selected"].sum() == len(np.intersect1d(expected_sel, rows))

    # the brush (Labels.paint) too
    brushed_row = rows[7]
    layer.brush_size = 1
    layer.paint(tuple(grid.grid_index[table.patch_index[brushed_row]]), 1, refresh=True)
    _wait_highlighted(qtbot, widget, np.union1d(expected_sel, [brushed_row]))

    # replacing the whole data array works too
    layer.data = np.zeros_like(layer.data)
    _wait_highlighted(qtbot, widget, other_rows[:5])


def test_embedding_widget_lasso_selects_points_inside(
    make_napari_viewer_proxy, qtbot, cohort_with_features
):
    store, cohort = cohort_with_features
    viewer = make_napari_viewer_proxy()
    viewer.open(cohort.entries[0].path, plugin="napari-wsi-mil")
    widget = _compute(viewer, qtbot, store, cohort)
    table = widget.table
    xy = table.xy
    # a box around the right half of the train panel
    x_mid = float(np.median(xy[:, 0]))
    verts = [(x_mid, -1e3), (1e3, -1e3), (1e3, 1e3), (x_mid, 1e3)]
    widget.lasso_select(0, verts)
    expected = np.flatnonzero((table.split == "train") & (xy[:, 0] > x_mid))
    np.testing.assert_array_equal(widget.highlighted, expected)
    assert (
        widget.selection_layer().data.sum()
        == np.isin(expected, table.rows_of(cohort.entries[0].slide_id)).sum()
    )


def test_embedding_widget_reports_missing_inputs(make_napari_viewer_proxy, tmp_path):
    viewer = make_napari_viewer_proxy()
    widget = EmbeddingWidget(viewer)
    widget.project.value = tmp_path
    widget.run_button.clicked.emit()
    assert "cohort" in widget.status.value
    assert not widget.busy


def test_embedding_widget_follows_theme(make_napari_viewer_proxy, qtbot, cohort_with_features):
    from matplotlib.colors import to_hex
    from napari.utils.theme import get_theme

    store, cohort = cohort_with_features
    viewer = make_napari_viewer_proxy()
    widget = _compute(viewer, qtbot, store, cohort)
    viewer.theme = "light"
    assert to_hex(widget.figure.get_facecolor()) == get_theme("light").background.as_hex()
    viewer.theme = "dark"
    assert to_hex(widget.figure.get_facecolor()) == get_theme("dark").background.as_hex()
