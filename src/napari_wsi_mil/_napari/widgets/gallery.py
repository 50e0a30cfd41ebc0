"""A patch gallery: two rows of thumbnails (most and least attended); a click reports the
patch's index."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from qtpy.QtCore import QSize
from qtpy.QtGui import QIcon, QImage, QPixmap
from qtpy.QtWidgets import QGridLayout, QLabel, QToolButton, QVBoxLayout, QWidget


def _icon(image: np.ndarray) -> QIcon:
    rgb = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
    h, w = rgb.shape[:2]
    qimage = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
    return QIcon(QPixmap.fromImage(qimage))


class PatchGallery(QWidget):
    """Rows ``"top"`` and ``"bottom"`` of clickable thumbnails.

    ``on_click(index)`` is called with the patch's TileGrid index. ``buttons[row]``
    holds the buttons in display order (tests click them).
    """

    def __init__(self, on_click: Callable[[int], None], columns: int = 4, icon_size: int = 72):
        super().__init__()
        self.on_click = on_click
        self.columns = columns
        self.icon_size = icon_size
        self.buttons: dict[str, list[QToolButton]] = {"top": [], "bottom": []}
        self.indices: dict[str, list[int]] = {"top": [], "bottom": []}
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._grids = {}
        for row, title in (("top", "most attended"), ("bottom", "least attended")):
            layout.addWidget(QLabel(title))
            holder = QWidget()
            grid = QGridLayout(holder)
            grid.setContentsMargins(0, 0, 0, 0)
            grid.setSpacing(2)
            layout.addWidget(holder)
            self._grids[row] = grid

    def set_patches(self, row: str, indices, images, scores=None) -> None:
        """Show ``images`` (RGB uint8) of patches ``indices`` in ``row``."""
        grid = self._grids[row]
        for button in self.buttons[row]:
            grid.removeWidget(button)
            button.deleteLater()
        self.buttons[row], self.indices[row] = [], [int(i) for i in indices]
        for k, (index, image) in enumerate(zip(self.indices[row], images, strict=True)):
            button = QToolButton()
            button.setIcon(_icon(image))
            button.setIconSize(QSize(self.icon_size, self.icon_size))
            tip = f"patch {index}"
            if scores is not None:
                tip += f", score {float(scores[index]):.4g}"
            button.setToolTip(tip)
            button.clicked.connect(lambda _=False, i=index: self.on_click(i))
            grid.addWidget(button, k // self.columns, k % self.columns)
            self.buttons[row].append(button)

    def clear(self) -> None:
        for row in self.buttons:
            self.set_patches(row, [], [])
