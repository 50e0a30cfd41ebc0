"""A colour bar for a heatmap Image layer: its name, its colormap as a strip and the
values at both ends (napari 0.9 draws none for image layers); and a legend of the
classes of a predicted-class map (a coloured square and the name of each)."""

from __future__ import annotations

import numpy as np
from magicgui.widgets import Container, Label
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap

#: Width and height of the colour strip in screen pixels.
STRIP_SIZE = (240, 14)


class ColourBar(Container):
    """Title, colour strip and end values of one layer; hidden while it shows none.

    :meth:`show_layer` follows an Image layer (``colormap``, ``contrast_limits``);
    ``describe`` words the ends (e.g. "least attended" / "most attended").
    """

    def __init__(self) -> None:
        super().__init__(labels=False)
        self.title = Label(value="")
        self.strip = Label(value="")
        self.low = Label(value="")
        self.high = Label(value="")
        ends = Container(layout="horizontal", labels=False, widgets=[self.low, self.high])
        ends.margins = (0, 0, 0, 0)
        self.margins = (0, 0, 0, 0)
        self.high.native.setAlignment(Qt.AlignmentFlag.AlignRight)
        self.extend([self.title, self.strip, ends])
        self.native.setFixedWidth(STRIP_SIZE[0])  # the end values under the strip's ends
        self.layer = None
        self.visible = False

    def show_layer(self, layer, title: str = "", ends: tuple[str, str] = ("", "")) -> None:
        """Show ``layer``'s colormap over its contrast limits (``None``: hide the bar)."""
        self.layer = layer
        if layer is None:
            self.visible = False
            return
        lo, hi = (float(v) for v in layer.contrast_limits)
        rgba = layer.colormap.map(np.linspace(0.0, 1.0, STRIP_SIZE[0]))
        strip = np.ascontiguousarray(
            np.repeat((np.asarray(rgba)[None, :, :3] * 255).astype(np.uint8), STRIP_SIZE[1], 0)
        )
        h, w = strip.shape[:2]
        image = QImage(strip.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
        self.strip.native.setPixmap(QPixmap.fromImage(image))
        self.title.value = title or layer.name
        self.low.value = f"{lo:.3g}" + (f" {ends[0]}" if ends[0] else "")
        self.high.value = (f"{ends[1]} " if ends[1] else "") + f"{hi:.3g}"
        self.visible = True

    def show_top(self, layers, words: dict[str, tuple[str, str, str]]) -> None:
        """Show the top visible layer of ``layers`` named in ``words`` (name -> title,
        low end, high end); none: hide the bar."""
        shown = [layer for layer in layers if layer.name in words and layer.visible]
        if not shown:
            self.show_layer(None)
            return
        title, low, high = words[shown[-1].name]
        self.show_layer(shown[-1], title, (low, high))

    @property
    def strip_colours(self) -> np.ndarray:
        """The strip's RGB colours from left to right (what a user sees)."""
        image = self.strip.native.pixmap().toImage()
        return np.array([image.pixelColor(x, 0).getRgb()[:3] for x in range(image.width())])


class ClassLegend(Label):
    """The classes of a Labels layer: a square of each class's colour and its name, one
    line; hidden while it shows none."""

    def __init__(self) -> None:
        super().__init__(value="")
        self.native.setTextFormat(Qt.TextFormat.RichText)
        self.native.setWordWrap(True)
        self.classes: list[tuple[str, tuple[int, int, int]]] = []
        self.visible = False

    def show_classes(self, title: str, classes: list[tuple[str, tuple[int, int, int]]]) -> None:
        """Show ``title`` and ``(name, RGB 0-255)`` of each class (none: hide)."""
        from html import escape

        self.classes = list(classes)
        entries = [
            f'<span style="color:#{r:02x}{g:02x}{b:02x}">&#9632;</span>&nbsp;{escape(name)}'
            for name, (r, g, b) in self.classes
        ]
        self.value = f"{escape(title)}: {' &nbsp; '.join(entries)}" if entries else ""
        self.visible = bool(entries)
