"""The tiling job: slides in, tissue masks and tile grids in the project store out."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from napari_wsi_mil.errors import CohortError, WsiMilError
from napari_wsi_mil.jobs import Job, Progress
from napari_wsi_mil.slide import SLIDE_EXTENSIONS, open_slide
from napari_wsi_mil.slide.tiling import TilingParams, tile_slide
from napari_wsi_mil.store.cohort import read_cohort
from napari_wsi_mil.store.keys import SLIDES
from napari_wsi_mil.store.project import ProjectStore, check_name


@dataclass
class TilingReport:
    """What a tiling run did, slide by slide."""

    tiled: dict[str, int] = field(default_factory=dict)  # slide id -> patches
    skipped: list[str] = field(default_factory=list)  # already tiled (resume)
    failed: dict[str, str] = field(default_factory=dict)  # slide id -> error
    warnings: dict[str, list[str]] = field(default_factory=dict)


def slide_id_for(path: str | os.PathLike) -> str:
    """The slide id of a file given without a cohort: its name without extensions."""
    name = Path(path).name
    for ext in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(ext):
            return check_name(name[: -len(ext)])
    return check_name(Path(name).stem)


def cohort_slides(
    csv: str | os.PathLike, slide_dir: str | os.PathLike | None = None
) -> list[tuple[str, Path]]:
    """``(slide_id, path)`` of every slide of a cohort CSV, whose files must exist
    (rows without a path are looked for in ``slide_dir``)."""
    cohort = read_cohort(csv, require_paths=True, slide_dir=slide_dir)
    return [(entry.slide_id, entry.path) for entry in cohort]


def folder_slides(folder: str | os.PathLike) -> list[tuple[str, Path]]:
    """``(slide_id, path)`` of the slide files in ``folder`` (not its subfolders), by
    name; ids are the file names without extensions (:func:`slide_id_for`)."""
    root = Path(folder)
    try:
        files = sorted(
            p for p in root.iterdir() if p.is_file() and p.name.lower().endswith(SLIDE_EXTENSIONS)
        )
    except OSError as exc:
        raise CohortError(f"{root}: cannot read the slide folder: {exc.strerror or exc}") from None
    if not files:
        raise CohortError(f"{root}: no slide files ({', '.join(SLIDE_EXTENSIONS)})")
    slides: dict[str, Path] = {}
    for path in files:
        slide_id = slide_id_for(path)
        if slide_id in slides:
            raise CohortError(
                f"{root}: {slides[slide_id].name} and {path.name} are both slide {slide_id!r}; "
                "use a cohort CSV to name them"
            )
        slides[slide_id] = path
    return list(slides.items())


def tiled_slide_path(project: ProjectStore, slide_id: str) -> Path:
    """The slide file a stored tiling was made from."""
    _, attrs = project.read_result(SLIDES, None, slide_id)
    return Path(attrs["slide"]["path"])


def tile_slides_job(
    project: ProjectStore,
    slides: list[tuple[str, str | os.PathLike]],
    params: TilingParams,
    *,
    overwrite: bool = False,
    skip_errors: bool = False,
    masks: dict[str, np.ndarray] | None = None,
) -> Job[TilingReport]:
    """Tile ``(slide_id, path)`` pairs into ``project``; finished slides are skipped.

    With ``skip_errors`` a bad slide is reported in the result and the rest go on;
    otherwise its :class:`~napari_wsi_mil.errors.WsiMilError` stops the job (slides
    finished before it stay in the store). ``masks`` replaces tissue detection for
    the slides it names (e.g. a mask painted in napari). Re-tiling a slide
    (``overwrite``) so that its patches change removes its features, predictions and
    tile labels (:meth:`ProjectStore.write_tiles`; named in ``report.warnings``).
    """
    report = TilingReport()
    masks = masks or {}
    total = len(slides)
    with project.lock():
        for i, (slide_id, path) in enumerate(slides):
            yield Progress("tiling", i, total, message=slide_id)
            if project.has_tiles(slide_id) and not overwrite:
                report.skipped.append(slide_id)
                continue
            try:
                with open_slide(path, cache=project) as slide:
                    tiled = tile_slide(slide, params, masks.get(slide_id))
                    facts = slide.describe()
                removed = project.write_tiles(
                    slide_id, tiled, facts, asdict(params), overwrite=overwrite
                )
                slide.cache_facts(project)
            except WsiMilError as exc:
                if not skip_errors:
                    raise
                report.failed[slide_id] = str(exc)
                continue
            report.tiled[slide_id] = len(tiled.grid)
            warnings = list(tiled.warnings)
            if removed:
                warnings.append(
                    "the patches changed: removed the results of the old tiling "
                    f"({', '.join(removed)}); extract features (and predict) again"
                )
            if warnings:
                report.warnings[slide_id] = warnings
        yield Progress("tiling", total, total)
    return report
