"""napari-wsi-mil: weakly supervised learning on whole-slide images.

Importing the package is cheap: it never imports torch, Qt or napari. The heavy
pieces live in subpackages (``slide``, ``store``, ...) that import what they need.
"""

from napari_wsi_mil.errors import CohortError, JobCancelled, SlideError, StoreError, WsiMilError

__version__ = "0.1.0"

__all__ = ["CohortError", "JobCancelled", "SlideError", "StoreError", "WsiMilError", "__version__"]
