"""Package-wide exceptions.

Every error a user can cause with bad input is a :class:`WsiMilError`; its
message names the file (or table row) and the reason, so a widget can show it as
one notification and the command line can print it without a traceback.
"""

from __future__ import annotations

import os


class WsiMilError(Exception):
    """Base class of every error napari-wsi-mil raises for bad input."""


class SlideError(WsiMilError):
    """A slide file cannot be opened or read."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class CohortError(WsiMilError):
    """A cohort table is invalid; the message lists every problem found."""


class StoreError(WsiMilError):
    """A project store is missing, locked, of an unknown version or inconsistent."""


class ParamError(WsiMilError):
    """A setting is out of its range (a size below 1, a probability above 1, NaN, ...)."""


class JobCancelled(WsiMilError):
    """A job was cancelled by its caller; finished results are kept."""
