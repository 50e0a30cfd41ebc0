"""The tiling job: slides in, tissue masks and tile grids in the project store out."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.jobs import Job, Progress
from napari_wsi_mil.slide import open_slide
from napari_wsi_mil.slide.tiling import TilingParams, tile_slide
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
                with open_slide(path) as slide:
                    tiled = tile_slide(slide, params, masks.get(slide_id))
                    facts = slide.describe()
                removed = project.write_tiles(
                    slide_id, tiled, facts, asdict(params), overwrite=overwrite
                )
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
