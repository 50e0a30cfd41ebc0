"""Synthetic H&E-like whole-slide images and cohorts, deterministic from a seed.

Used by the napari sample data, the tests, the benchmarks and the demo. A slide
is a standard tiled pyramidal JPEG TIFF (one IFD per level, as OpenSlide reads) with its
resolution in the TIFF tags; it is rendered tile by tile, so even a
60000 x 60000 slide needs little memory. Positive slides carry lesions whose
outlines are returned and written as GeoJSON; lesions differ from normal tissue
mainly by texture (larger, pleomorphic, irregular, vesicular, crowded nuclei)
and only slightly by mean colour, and every slide has its own random stain
(``stain_variation``), so colour alone does not tell lesion from normal tissue.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_wsi_mil.jobs import Job, Progress, atomic_file, run_job
from napari_wsi_mil.slide.synthetic_render import SlideLayout, Stain, TileRenderer
from napari_wsi_mil.store.geojson import write_geojson

DESCRIPTION = "napari-wsi-mil synthetic slide"
SAMPLE_NAME = "synthetic_sample_v2"


@dataclass
class SyntheticSlide:
    """What was written: the file, its geometry and its ground truth.

    ``lesion_fraction`` is measured (lesion area over tissue area) and
    ``lesion_polygons`` are ``(K, 2)`` float arrays of level-0 (x, y); ``stain``
    is the slide's stain draw (:meth:`Stain.as_dict`).
    """

    path: Path
    width: int
    height: int
    mpp: float
    seed: int
    lesion_fraction: float
    tissue_fraction: float
    lesion_polygons: list[np.ndarray] = field(default_factory=list)
    stain: dict = field(default_factory=dict)


@dataclass
class SyntheticCohort:
    """A generated cohort: ``cohort.csv`` and one row per slide."""

    root: Path
    csv_path: Path
    slides: list[SyntheticSlide]
    slide_ids: list[str]
    labels: list[int]
    case_ids: list[str]
    splits: list[str]
    annotation_paths: list[Path]


def pyramid_shapes(width: int, height: int, min_side: int = 1024) -> list[tuple[int, int]]:
    """``(height, width)`` of each level, halving until the smaller side is <= ``min_side``."""
    shapes = [(height, width)]
    while min(shapes[-1]) > min_side:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def _tiles(renderer: TileRenderer, level: int, shape: tuple[int, int]) -> Iterator[np.ndarray]:
    t = renderer.tile
    for y in range(0, shape[0], t):
        for x in range(0, shape[1], t):
            yield renderer.render(level, x, y)


def write_synthetic_slide(
    path: str | os.PathLike,
    *,
    width: int = 4096,
    height: int = 3072,
    mpp: float = 0.5,
    seed: int = 0,
    lesion_fraction: float = 0.0,
    tile_size: int = 256,
    background: str = "white",
    stain_variation: float = 1.0,
) -> SyntheticSlide:
    """Write one synthetic slide (atomically) and return its description.

    Parameters
    ----------
    path
        Output ``.tif``/``.tiff`` file; replaced if it exists.
    width, height
        Level-0 size in pixels.
    mpp
        Microns per pixel at level 0 (stored as X/YResolution per centimetre).
    seed
        Everything (layout, nuclei, textures) follows from it.
    lesion_fraction
        Lesion area as a fraction of the tissue area; 0 gives a negative slide.
    tile_size
        TIFF tile side, a power of two in [16, 1024].
    background
        Glass colour: ``"white"``, ``"gray"`` or ``"black"``.
    stain_variation
        Spread of the slide's random stain (H&E vectors and amounts, thickness,
        scanner gains; drawn from ``seed``), relative to the default; 0 gives the
        reference stain. At 1 the mean tissue colour varies between slides by
        more than it differs between lesion and normal tissue.
    """
    if width < 1 or height < 1 or mpp <= 0:
        raise ValueError(f"invalid slide size {width}x{height} or mpp {mpp}")
    import tifffile

    fraction = float(np.clip(lesion_fraction, 0.0, 1.0))
    layout = SlideLayout.build(width, height, seed, fraction)
    stain = Stain.draw(seed, stain_variation)
    renderer = TileRenderer(layout, seed, tile_size, background, stain)
    shapes = pyramid_shapes(width, height)
    path = Path(path)
    with (
        atomic_file(path) as tmp,
        tifffile.TiffWriter(tmp, bigtiff=width * height * 3 > 2**31) as tif,
    ):
        description = _description(mpp, seed, fraction, stain_variation)
        for level, shape in enumerate(shapes):
            options = _level_options(level, shape, mpp, tile_size, description)
            tif.write(_tiles(renderer, level, shape), **options)
    return SyntheticSlide(
        path=path,
        width=width,
        height=height,
        mpp=mpp,
        seed=seed,
        lesion_fraction=layout.lesion_fraction,
        tissue_fraction=layout.tissue_fraction,
        lesion_polygons=layout.lesion_polygons(),
        stain=stain.as_dict(),
    )


def _level_options(
    level: int, shape: tuple[int, int], mpp: float, tile_size: int, description: str
) -> dict:
    """tifffile ``write`` options of one level of a standard tiled pyramidal JPEG TIFF:
    one IFD per level, the reduced levels marked as such (``subfiletype=1``), as
    OpenSlide's generic-TIFF driver, QuPath and the peers read it."""
    res = 1e4 / (mpp * 2**level)
    options = dict(
        shape=(*shape, 3),
        dtype=np.uint8,
        tile=(tile_size, tile_size),
        photometric="rgb",
        compression="jpeg",
        compressionargs={"level": 90},
        resolution=(res, res),
        resolutionunit="CENTIMETER",
        metadata=None,
    )
    if level == 0:
        options.update(description=description)
    else:
        options.update(subfiletype=1)
    return options


def write_pyramid(
    path: str | os.PathLike, image: np.ndarray, mpp: float, description: str, tile_size: int = 256
) -> Path:
    """Write an in-memory RGB image as a pyramidal JPEG TIFF (atomically), 2x per level."""
    import tifffile
    from skimage.transform import resize

    height, width = image.shape[:2]
    shapes = pyramid_shapes(width, height)
    path = Path(path)
    with atomic_file(path) as tmp, tifffile.TiffWriter(tmp) as tif:
        level_image = image
        for level, shape in enumerate(shapes):
            if level_image.shape[:2] != shape:
                level_image = (
                    resize(level_image, shape, order=1, anti_aliasing=True, preserve_range=True)
                    .round()
                    .astype(np.uint8)
                )
            options = _level_options(level, shape, mpp, tile_size, description)
            tif.write(level_image, **options)
    return path


def _is_synthetic(
    path: Path,
    width: int,
    height: int,
    mpp: float,
    seed: int,
    fraction: float,
    stain_variation: float = 1.0,
) -> bool:
    """Whether ``path`` is a readable synthetic slide written with these settings."""
    if not path.is_file():
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return (
                page.shape[:2] == (height, width)
                and page.description == _description(mpp, seed, fraction, stain_variation)
                and not page.subifds  # written before levels were one IFD each: rewrite
            )
    except Exception:  # unreadable: regenerate it
        return False


def _description(mpp: float, seed: int, lesion_fraction: float, stain_variation: float) -> str:
    return (
        f"{DESCRIPTION}|mpp={mpp}|seed={seed}|lesion_fraction={lesion_fraction:g}"
        f"|stain_variation={stain_variation:g}"
    )


def assign_cases(
    n_cases: int, positive_ratio: float, test_fraction: float, rng: np.random.Generator
):
    """Per case: label (0/1) and split, stratified by label."""
    n_pos = int(round(n_cases * positive_ratio))
    if 0 < positive_ratio < 1 and n_cases >= 2:
        n_pos = min(max(n_pos, 1), n_cases - 1)
    labels = np.zeros(n_cases, int)
    labels[rng.permutation(n_cases)[:n_pos]] = 1
    splits = np.full(n_cases, "train", dtype=object)
    for label in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(len(members) * test_fraction))
        if len(members) >= 2 and 0 < test_fraction < 1:
            n_test = min(max(n_test, 1), len(members) - 1)
        splits[members[:n_test]] = "test"
    return labels.tolist(), splits.tolist()


def make_cohort_job(
    out_dir: str | os.PathLike,
    *,
    n_slides: int = 8,
    seed: int = 0,
    lesion_fractions: Sequence[float] = (0.05,),
    positive_ratio: float = 0.5,
    width: int = 4096,
    height: int = 3072,
    mpp: float = 0.5,
    slides_per_case: int = 1,
    test_fraction: float = 0.25,
    stain_variation: float = 1.0,
    overwrite: bool = False,
) -> Job[SyntheticCohort]:
    """Generate a labelled cohort; yields ``Progress("synth", i, n)`` per slide.

    Writes ``slides/<slide_id>.tiff``, ``annotations/<slide_id>.geojson`` (an
    empty FeatureCollection for negatives) and ``cohort.csv`` with columns
    ``slide_id,label,path,case_id,split`` (paths relative to ``out_dir``).
    Labels and splits are per case (stratified by label); lesion fractions
    cycle over the positive slides; every slide has its own random stain of
    spread ``stain_variation`` (see :func:`write_synthetic_slide`). Slides that
    already exist are kept (resume) unless ``overwrite``. Everything is
    determined by ``seed``.
    """
    if stain_variation < 0:
        raise ValueError(f"stain_variation must be >= 0, not {stain_variation}")
    if n_slides < 1 or slides_per_case < 1 or not lesion_fractions:
        raise ValueError(
            "need n_slides >= 1, slides_per_case >= 1 and at least one lesion fraction"
        )
    root = Path(out_dir)
    rng = np.random.default_rng([seed, 31337])
    n_cases = math.ceil(n_slides / slides_per_case)
    case_labels, case_splits = assign_cases(n_cases, positive_ratio, test_fraction, rng)
    slide_seeds = np.random.SeedSequence([seed, 4242]).generate_state(n_slides).tolist()

    slides, ids, labels, cases, splits, annotations = [], [], [], [], [], []
    n_positive = 0
    yield Progress("synth", 0, n_slides)
    for i in range(n_slides):
        case = i // slides_per_case
        slide_id, label = f"synth_{i:03d}", case_labels[case]
        fraction = 0.0
        if label:
            fraction = float(lesion_fractions[n_positive % len(lesion_fractions)])
            n_positive += 1
        slide_path = root / "slides" / f"{slide_id}.tiff"
        if not overwrite and _is_synthetic(
            slide_path, width, height, mpp, slide_seeds[i], fraction, stain_variation
        ):
            layout = SlideLayout.build(width, height, slide_seeds[i], fraction)
            slide = SyntheticSlide(
                slide_path,
                width,
                height,
                mpp,
                slide_seeds[i],
                layout.lesion_fraction,
                layout.tissue_fraction,
                layout.lesion_polygons(),
                Stain.draw(slide_seeds[i], stain_variation).as_dict(),
            )
        else:
            slide = write_synthetic_slide(
                slide_path,
                width=width,
                height=height,
                mpp=mpp,
                seed=slide_seeds[i],
                lesion_fraction=fraction,
                stain_variation=stain_variation,
            )
        geojson = root / "annotations" / f"{slide_id}.geojson"
        write_geojson(geojson, slide.lesion_polygons if label else [])
        slides.append(slide)
        ids.append(slide_id)
        labels.append(label)
        cases.append(f"case_{case:03d}")
        splits.append(case_splits[case])
        annotations.append(geojson)
        yield Progress("synth", i + 1, n_slides, message=slide_id)

    csv_path = root / "cohort.csv"
    with atomic_file(csv_path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide_id", "label", "path", "case_id", "split"])
        for row in zip(ids, labels, [f"slides/{s}.tiff" for s in ids], cases, splits, strict=True):
            writer.writerow(row)
    return SyntheticCohort(root, csv_path, slides, ids, labels, cases, splits, annotations)


def make_cohort(out_dir: str | os.PathLike, **kwargs) -> SyntheticCohort:
    """Run :func:`make_cohort_job` to the end; same arguments."""
    return run_job(make_cohort_job(out_dir, **kwargs))


def default_cache_dir() -> Path:
    """``$NAPARI_WSI_MIL_CACHE`` or ``~/.cache/napari-wsi-mil``."""
    env = os.environ.get("NAPARI_WSI_MIL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "napari-wsi-mil"


def sample_slide_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the cached sample slide (4096 x 3072, about 10 % lesion), generated once.

    Its lesion outlines are in the ``.geojson`` file next to it. Both files are
    written atomically and the cache counts only when both exist, so a killed
    run never leaves a broken cached slide.
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    slide_path = folder / f"{SAMPLE_NAME}.tiff"
    geojson = slide_path.with_suffix(".geojson")
    if slide_path.is_file() and geojson.is_file():
        return slide_path
    slide = write_synthetic_slide(slide_path, width=4096, height=3072, seed=0, lesion_fraction=0.10)
    write_geojson(geojson, slide.lesion_polygons)
    return slide_path
