"""Reviewing a model's evidence on one slide, without Qt: heatmaps, masks, exports,
painted annotations, and the job that analyses an open slide end to end.

Every per-patch array here is in the slide's :class:`~napari_wsi_mil.slide.tiling.TileGrid`
order; every raster is a patch-grid raster (one pixel per stride step), never an array
the size of level 0. ``napari_wsi_mil._napari.layers`` turns these into layers.
"""
