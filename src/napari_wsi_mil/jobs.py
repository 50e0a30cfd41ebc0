"""The job protocol shared by the command line, the widgets and the Python API.

A *job* is a generator function. It yields :class:`Progress` events, writes its
results atomically (see :func:`atomic_dir`) and ``return``-s a small result object.
Cancellation is Python's own: the driver stops iterating and calls
``generator.close()``, which raises ``GeneratorExit`` at the current ``yield``;
``finally`` blocks and :func:`atomic_dir` clean up, so a cancelled job never leaves
a half-written result that looks finished. napari's ``thread_worker`` does exactly
this on ``worker.quit()``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from napari_wsi_mil.errors import JobCancelled

T = TypeVar("T")
Job = Generator["Progress", None, T]


@dataclass(frozen=True)
class Progress:
    """One progress event.

    Parameters
    ----------
    stage
        Short name of what is being done ("tiling", "epoch 3", ...).
    done, total
        Units finished and units in all (``total`` is None when unknown).
    message
        Free text for a status line (a slide id, a loss value, ...).
    info
        Machine-readable extras (losses, metrics) for plots.
    """

    stage: str
    done: int
    total: int | None = None
    message: str = ""
    info: dict[str, Any] | None = None

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.done / self.total)


def relay(stage: str | None, job: Job[T], span: tuple[int, int] | None = None) -> Job[T]:
    """Re-yield a sub-job's events and return its result (``yield from relay(...)``).

    ``stage`` names the events (``"<stage>: <the event's stage>"``, or just ``stage``
    when it already names the event's stage); ``span = (lo, hi)`` maps each event's
    fraction into ``lo..hi`` of one overall bar of 1000 (the event's stage kept).
    """
    try:
        while True:
            event = next(job)
            label = event.stage
            if stage is not None:
                label = stage if event.stage in stage else f"{stage}: {event.stage}"
            if span is None:
                yield Progress(label, event.done, event.total, event.message, event.info)
            else:
                lo, hi = span
                done = int(lo + (event.fraction or 0.0) * (hi - lo))
                yield Progress(label, done, 1000, event.message)
    except StopIteration as stop:
        return stop.value


def run_job(
    job: Job[T],
    on_progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> T:
    """Drive a job to the end and return its result.

    ``on_progress`` sees every event; when ``should_cancel()`` turns true the
    job is closed at its next ``yield`` and :class:`JobCancelled` is raised.
    """
    try:
        while True:
            event = next(job)
            if on_progress is not None:
                on_progress(event)
            if should_cancel is not None and should_cancel():
                job.close()
                raise JobCancelled("cancelled by the user")
    except StopIteration as stop:
        return stop.value


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary sibling name, then rename it into place.

    On any exception (including ``GeneratorExit`` from a cancelled job) the
    temporary directory is removed and ``final`` is untouched. With
    ``overwrite`` an existing ``final`` is replaced; otherwise it is an error.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(f"{final} already exists")
        trash = final.parent / f".trash-{final.name}-{uuid.uuid4().hex[:8]}"
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, final)


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike) -> Iterator[Path]:
    """Write a file under a temporary sibling name, then ``os.replace`` it into place."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{uuid.uuid4().hex[:8]}-{final.name}"
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if tmp.is_file():  # some writers (safetensors) create 0600 files whatever the umask
        os.chmod(tmp, 0o666 & ~current_umask())
    os.replace(tmp, final)


def current_umask() -> int:
    """The process's umask (read without changing it where the system allows)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
