"""The six dock widgets as napari docks them from the plugin manifest: they scroll
instead of stretching the window, and their status lines use the dock's width."""

from qtpy.QtWidgets import QScrollArea

DOCK_WIDGETS = (
    "Tiling",
    "Pretrain encoder",
    "Embedding (PCA)",
    "Extract features",
    "Train MIL",
    "Analyse slide",
)


def test_all_six_docks_fit_a_window_under_1000_px(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    docked = [viewer.window.add_plugin_dock_widget("napari-wsi-mil", name) for name in DOCK_WIDGETS]
    window.resize(1400, 900)
    qtbot.wait(200)
    assert window.height() < 1000, window.height()
    assert window.minimumSizeHint().height() < 1000
    for dock, widget in docked:
        scroll = dock.widget()
        assert isinstance(scroll, QScrollArea), dock.name
        assert widget.status.native in scroll.widget().findChildren(type(widget.status.native))
        # as wide as its contents: nothing clipped at the right
        assert scroll.viewport().width() >= scroll.widget().minimumSizeHint().width(), dock.name


def test_status_line_spans_the_dock(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-wsi-mil", "Train MIL")
    viewer.window._qt_window.resize(1400, 900)
    qtbot.wait(200)
    inner = widget.native.widget()
    widget.status.value = "done"  # short: still at the dock's width
    qtbot.wait(100)
    assert widget.status.native.width() >= 0.9 * inner.contentsRect().width()
    widget.status.value = "a long status line " * 20
    qtbot.wait(100)
    # the status line is as wide as the dock's controls (not the value column) and wraps
    assert widget.status.native.width() >= 0.9 * inner.contentsRect().width()
    assert widget.status.native.width() > widget.cohort.native.width()
    assert widget.status.native.wordWrap()
