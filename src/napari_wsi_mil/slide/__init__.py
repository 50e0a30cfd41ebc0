"""Slide access, tissue detection and tiling.

``open_slide(path)`` returns a :class:`Slide` whatever the file format; the
backends (OpenSlide for vendor formats, tifffile/zarr for generic TIFF) live in
their own modules and are chosen by :func:`open_slide`.
"""

from napari_wsi_mil.slide.slide import SLIDE_EXTENSIONS, Slide, open_slide

__all__ = ["SLIDE_EXTENSIONS", "Slide", "open_slide"]
