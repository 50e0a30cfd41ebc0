"""A matplotlib canvas for dock widgets, coloured with the viewer's napari theme (no pyplot)."""

from __future__ import annotations

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.backends.qt_compat import _isdeleted
from matplotlib.figure import Figure

#: Smallest height of a plot (px): a dock scrolls rather than crush it.
MIN_HEIGHT = 220
#: Series of up to this many points are drawn with markers.
MARKED_POINTS = 60


def theme_colors(viewer) -> tuple[str, str]:
    """``(background, foreground)`` hex colours of the viewer's theme (dock background)."""
    from napari.utils.theme import get_theme

    try:
        theme = get_theme(viewer.theme)
    except Exception:  # an unknown or removed theme: napari's default
        theme = get_theme("dark")
    return theme.background.as_hex(), theme.text.as_hex()


class CurveCanvas(FigureCanvasQTAgg):
    """Live line plots: ``add_point(series, x, y)`` then ``redraw()``."""

    def __init__(self, viewer, xlabel: str = "step", ylabel: str = "loss"):
        self.figure = Figure(figsize=(4, 2.5), tight_layout=True)
        super().__init__(self.figure)
        self.setMinimumHeight(MIN_HEIGHT)  # in a scrolling dock the plot keeps its size
        self.axes = self.figure.add_subplot(111)
        self.xlabel, self.ylabel = xlabel, ylabel
        self.viewer = viewer
        self.series: dict[str, tuple[list[float], list[float]]] = {}
        self.clear()

    def update(self, *args) -> None:
        """Qt's repaint request, which ends every draw; none once the widget is deleted.

        A pending redraw can outlive its widget: Python's garbage collector, running
        during the drawing, deletes a closed widget's Qt object, and matplotlib's
        ``update()`` after the drawing then raised "wrapped C/C++ object of type
        CurveCanvas has been deleted".
        """
        if not _isdeleted(self):
            super().update(*args)

    def clear(self) -> None:
        self.series.clear()
        self.redraw()

    def add_point(self, name: str, x: float, y: float) -> None:
        xs, ys = self.series.setdefault(name, ([], []))
        xs.append(x)
        ys.append(y)

    def redraw(self) -> None:
        background, fg = theme_colors(self.viewer)
        ax = self.axes
        ax.clear()
        self.figure.set_facecolor(background)
        ax.set_facecolor(background)
        for name, (xs, ys) in self.series.items():
            # markers while the points are few: the first step shows, not an empty plot
            marker = "o" if len(xs) <= MARKED_POINTS else None
            ax.plot(xs, ys, label=name, linewidth=1.2, marker=marker, markersize=3)
        ax.set_xlabel(self.xlabel, color=fg)
        ax.set_ylabel(self.ylabel, color=fg)
        ax.tick_params(colors=fg)
        for spine in ax.spines.values():
            spine.set_color(fg)
        if len(self.series) > 1:
            ax.legend(fontsize="small", frameon=False, labelcolor=fg)
        self.draw_idle()
