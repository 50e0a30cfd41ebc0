"""The live plot of the Pretrain and Train widgets outlives its widget quietly."""

import pytest

from napari_wsi_mil._napari.widgets.train_widget import TrainMilWidget


def test_a_redraw_that_outlives_its_widget_prints_nothing(make_napari_viewer_proxy, qtbot, capsys):
    """The widget can be deleted during a pending redraw (Python's garbage collector
    runs during the drawing); matplotlib then printed "wrapped C/C++ object of type
    CurveCanvas has been deleted" among the test results."""
    sip = pytest.importorskip("qtpy.sip")
    widget = TrainMilWidget(make_napari_viewer_proxy())
    canvas = widget.canvas
    qtbot.wait(50)  # the first draw
    canvas.add_point("loss", 1, 0.5)
    # delete the widget in the middle of the next draw, as a garbage collection did
    canvas.mpl_connect("draw_event", lambda _: sip.delete(widget.root_native_widget))
    canvas.redraw()
    qtbot.wait(50)
    assert sip.isdeleted(canvas)
    assert "has been deleted" not in capsys.readouterr().err
