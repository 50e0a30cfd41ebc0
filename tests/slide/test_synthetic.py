"""Synthetic slides, cohorts and the GeoJSON annotations written with them."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
from skimage import measure
from skimage.draw import polygon2mask

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.jobs import Progress
from napari_wsi_mil.slide.synthetic import (
    DESCRIPTION,
    default_cache_dir,
    make_cohort,
    make_cohort_job,
    pyramid_shapes,
    sample_slide_path,
    write_synthetic_slide,
)
from napari_wsi_mil.slide.synthetic_render import SlideLayout, Stain, TileRenderer
from napari_wsi_mil.store.geojson import read_geojson_polygons, write_geojson


def _level(path, level=0):
    with tifffile.TiffFile(path) as tif:
        return tif.series[0].levels[level].asarray()


def _polygon_mask(polygons, shape):
    mask = np.zeros(shape, bool)
    for xy in polygons:
        mask |= polygon2mask(shape, xy[:, ::-1])
    return mask


def test_pyramid_levels_tags_and_description(tmp_path):
    path = tmp_path / "slide.tiff"
    slide = write_synthetic_slide(path, width=3000, height=2200, mpp=0.25, seed=3)
    assert (slide.width, slide.height, slide.mpp, slide.seed) == (3000, 2200, 0.25, 3)
    assert slide.lesion_fraction == 0 and slide.lesion_polygons == []
    assert 0.3 <= slide.tissue_fraction <= 0.6
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(2200, 3000, 3), (1100, 1500, 3), (550, 750, 3)]
        assert [s[:2] for s in [lv.shape for lv in levels]] == pyramid_shapes(3000, 2200)
        page = tif.pages[0]
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
        assert page.compression == tifffile.COMPRESSION.JPEG
        # RGB data; tifffile stores JPEG tiles as YCbCr (as scanners do)
        assert page.photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)
        assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        num, den = page.tags["XResolution"].value
        assert 1e4 / (num / den) == pytest.approx(0.25, rel=1e-4)
        num, den = page.tags["YResolution"].value
        assert 1e4 / (num / den) == pytest.approx(0.25, rel=1e-4)
        assert page.description == (
            f"{DESCRIPTION}|mpp=0.25|seed=3|lesion_fraction=0|stain_variation=1"
        )
        # nearly white glass outside tissue, pink tissue in the middle
        thumb = levels[2].asarray()
    assert np.all(np.abs(thumb[:5, :5].astype(int) - 241) < 12)
    assert (thumb.mean(axis=2) < 225).mean() > 0.25


def test_written_slides_are_standard_pyramids_openslide_reads_at_every_level(tmp_path):
    """One IFD per level (no SubIFDs), so OpenSlide, QuPath and the peers see every level;
    the same for the mosaic writer's slides."""
    import openslide

    from napari_wsi_mil.slide.synthetic import write_pyramid

    synthetic = write_synthetic_slide(tmp_path / "s.tiff", width=3000, height=2200, mpp=0.25)
    rng = np.random.default_rng(0)
    image = (rng.random((1500, 2100, 3)) * 255).astype(np.uint8)
    mosaic = write_pyramid(tmp_path / "m.tiff", image, 0.5, "mosaic|seed=0")
    for path, (width, height), mpp in (
        (synthetic.path, (3000, 2200), 0.25),
        (mosaic, (2100, 1500), 0.5),
    ):
        with tifffile.TiffFile(path) as tif:
            levels = tif.series[0].levels
            assert len(tif.pages) == len(levels) and not tif.pages[0].subifds
        slide = openslide.OpenSlide(path)
        shapes = pyramid_shapes(width, height)
        assert slide.level_count == len(shapes) == len(levels)
        assert list(slide.level_dimensions) == [(w, h) for h, w in shapes]
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(mpp)
        for level, (h, w) in enumerate(shapes):
            region = np.asarray(slide.read_region((0, 0), level, (w, h)).convert("RGB"))
            np.testing.assert_array_equal(region, _level(path, level))  # same decoded tiles


def test_same_seed_same_pixels_other_seed_differs(tmp_path):
    kwargs = dict(width=1024, height=768, lesion_fraction=0.1)
    a = write_synthetic_slide(tmp_path / "a.tiff", seed=5, **kwargs)
    b = write_synthetic_slide(tmp_path / "b.tiff", seed=5, **kwargs)
    c = write_synthetic_slide(tmp_path / "c.tiff", seed=6, **kwargs)
    assert np.array_equal(_level(a.path), _level(b.path))
    assert len(a.lesion_polygons) == len(b.lesion_polygons)
    for pa, pb in zip(a.lesion_polygons, b.lesion_polygons, strict=True):
        assert np.array_equal(pa, pb)
    assert not np.array_equal(_level(a.path), _level(c.path))


def test_tiles_do_not_depend_on_tile_size():
    """Nuclei and textures are functions of position: a 512 tile equals four 256 tiles."""
    layout = SlideLayout.build(2048, 2048, 11, 0.2)
    small, big = TileRenderer(layout, 11, 256), TileRenderer(layout, 11, 512)
    for level, x, y in [(0, 512, 512), (0, 1024, 768), (1, 256, 256), (2, 0, 0)]:
        mosaic = np.concatenate(
            [
                np.concatenate([small.render(level, x + dx, y + dy) for dx in (0, 256)], 1)
                for dy in (0, 256)
            ]
        )
        assert np.array_equal(big.render(level, x, y), mosaic)


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.2])
def test_lesion_fraction_close_to_request(fraction):
    layout = SlideLayout.build(2048, 1536, 2, fraction)
    assert layout.lesion_fraction == pytest.approx(fraction, rel=0.3)
    # the polygons (what the GeoJSON carries) agree with the mask
    polygons = layout.lesion_polygons()
    assert polygons
    area = sum(
        0.5 * abs(np.dot(p[:-1, 0], p[1:, 1]) - np.dot(p[1:, 0], p[:-1, 1])) for p in polygons
    )
    tissue_area = layout.tissue_fraction * 2048 * 1536
    assert area / tissue_area == pytest.approx(fraction, rel=0.3)
    assert all(np.array_equal(p[0], p[-1]) for p in polygons)


def _nuclei(mask, nuclear):
    """Area, area coefficient of variation and solidity of the nuclei centred in ``mask``."""
    props = [
        r
        for r in measure.regionprops(measure.label(nuclear))
        if r.area >= 4 and mask[int(r.centroid[0]), int(r.centroid[1])]
    ]
    areas = np.array([r.area for r in props], float)
    return areas.mean(), areas.std() / areas.mean(), np.mean([r.solidity for r in props])


def test_lesions_differ_by_texture_more_than_by_colour(tmp_path):
    """Lesion nuclei are larger, pleomorphic and irregular; the mean colour hardly moves."""
    slide = write_synthetic_slide(
        tmp_path / "pos.tiff",
        width=1024,
        height=768,
        seed=1,
        lesion_fraction=0.15,
        stain_variation=0,
    )
    rgb = _level(slide.path).astype(float)
    lesion = _polygon_mask(slide.lesion_polygons, rgb.shape[:2])
    gray = rgb.mean(axis=2)
    tissue = gray < 225
    normal = tissue & ~lesion
    assert lesion.sum() > 1000 and normal.sum() > 10000
    assert (lesion & tissue).sum() / lesion.sum() > 0.95  # lesions lie inside tissue
    # only a little darker (the stain varies more between slides, see below)
    assert 0 < gray[normal].mean() - gray[lesion].mean() < 12
    nuclear = rgb[..., 0] < 165  # dark purple
    assert nuclear[lesion].mean() > nuclear[normal].mean()
    lesion_area, lesion_cv, lesion_solidity = _nuclei(lesion, nuclear)
    normal_area, normal_cv, normal_solidity = _nuclei(normal, nuclear)
    assert lesion_area > 1.5 * normal_area  # larger
    assert lesion_cv > 2 * normal_cv  # pleomorphic
    assert lesion_solidity < normal_solidity - 0.1  # irregular outlines, vesicular


def test_stain_draw_and_reference():
    white = np.array([[255.0, 255.0, 255.0], [232.0, 150.0, 192.0], [88.0, 48.0, 138.0]])
    # the reference stain leaves the palette unchanged
    assert np.allclose(Stain.draw(3, 0.0).apply(white), white, atol=1e-3)
    a, b = Stain.draw(3, 1.0), Stain.draw(3, 1.0)
    assert a == b and a != Stain.draw(4, 1.0)
    assert a.as_dict() == b.as_dict() and set(a.as_dict()) == {
        "hematoxylin",
        "eosin",
        "amounts",
        "thickness",
        "gain",
    }
    stained = a.apply(white)
    assert stained.dtype == np.float32 and stained.shape == white.shape
    assert np.all((stained >= 0) & (stained <= 255)) and not np.allclose(stained, white)
    # more variation, further from the reference
    shift = [np.abs(Stain.draw(3, v).apply(white) - white).mean() for v in (0.5, 1.0, 2.0)]
    assert shift[0] < shift[1] < shift[2]
    with pytest.raises(ValueError, match="stain_variation"):
        Stain.draw(3, -1.0)


def test_stain_varies_between_slides_more_than_lesion_colour(tmp_path):
    """Per-slide stains move the mean tissue colour more than lesions do."""
    means, lesion_shifts = {0.0: [], 1.0: []}, []
    for seed in range(6):
        for variation in (0.0, 1.0):
            slide = write_synthetic_slide(
                tmp_path / f"s{seed}_{variation}.tiff",
                width=1024,
                height=768,
                seed=seed,
                lesion_fraction=0.15,
                stain_variation=variation,
            )
            assert slide.stain == Stain.draw(seed, variation).as_dict()
            rgb = _level(slide.path).astype(float)
            tissue = rgb.mean(axis=2) < 225
            means[variation].append(rgb[tissue].mean(axis=0))
            if variation:
                lesion = _polygon_mask(slide.lesion_polygons, rgb.shape[:2]) & tissue
                diff = rgb[lesion].mean(axis=0) - rgb[tissue & ~lesion].mean(axis=0)
                lesion_shifts.append(np.linalg.norm(diff))

    def spread(colours):
        colours = np.array(colours)
        return np.median(
            [np.linalg.norm(a - b) for i, a in enumerate(colours) for b in colours[i + 1 :]]
        )

    assert spread(means[1.0]) > 1.5 * np.median(lesion_shifts)
    assert spread(means[1.0]) > 3 * spread(means[0.0])


def test_stain_is_the_same_at_every_level():
    """Coarse levels (mean nucleus colour) and fine levels (every nucleus) match in colour."""
    layout = SlideLayout.build(2048, 2048, 5, 0.2)
    reference = TileRenderer(layout, 5, 256, stain=Stain.draw(5, 0.0))
    stained = TileRenderer(layout, 5, 256, stain=Stain.draw(5, 1.5))

    def region(renderer, level):  # level-0 region (512, 512)-(1536, 1536) at ``level``
        side, step = 1024 >> level, 256
        x0 = 512 >> level
        return np.concatenate(
            [
                np.concatenate(
                    [renderer.render(level, x0 + dx, x0 + dy) for dx in range(0, side, step)], 1
                )
                for dy in range(0, side, step)
            ]
        ).astype(float)

    fine = {
        r: region(r, 0).reshape(256, 4, 256, 4, 3).mean(axis=(1, 3)) for r in (reference, stained)
    }
    coarse = {r: region(r, 2) for r in (reference, stained)}
    tissue = (fine[reference].mean(axis=2) < 215) & (coarse[reference].mean(axis=2) < 215)
    assert tissue.mean() > 0.3
    for r in (reference, stained):
        assert np.abs(fine[r][tissue].mean(axis=0) - coarse[r][tissue].mean(axis=0)).max() < 6
    shift_fine = fine[stained][tissue].mean(axis=0) - fine[reference][tissue].mean(axis=0)
    shift_coarse = coarse[stained][tissue].mean(axis=0) - coarse[reference][tissue].mean(axis=0)
    assert np.abs(shift_fine).max() > 10  # the stain changes the colour...
    assert np.abs(shift_fine - shift_coarse).max() < 5  # ...in the same way at both levels


def test_cohort_table(tmp_path):
    events = []
    job = make_cohort_job(
        tmp_path / "c",
        n_slides=8,
        seed=4,
        lesion_fractions=(0.05, 0.2),
        width=512,
        height=512,
        slides_per_case=2,
        test_fraction=0.5,
    )
    try:
        while True:
            events.append(next(job))
    except StopIteration as stop:
        cohort = stop.value
    assert events[0] == Progress("synth", 0, 8) and events[-1].done == 8
    assert all(e.stage == "synth" and e.total == 8 for e in events)

    with open(cohort.csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["slide_id", "label", "path", "case_id", "split"]
    assert [r["slide_id"] for r in rows] == [f"synth_{i:03d}" for i in range(8)]
    for row in rows:
        assert (cohort.csv_path.parent / row["path"]).is_file()
        assert row["label"] in {"0", "1"} and row["split"] in {"train", "test"}
    by_case = {}
    for row in rows:
        by_case.setdefault(row["case_id"], set()).add((row["label"], row["split"]))
    assert len(by_case) == 4 and all(len(v) == 1 for v in by_case.values())
    for split in ("train", "test"):
        assert {r["label"] for r in rows if r["split"] == split} == {"0", "1"}

    fractions = [
        s.lesion_fraction for s, lab in zip(cohort.slides, cohort.labels, strict=True) if lab
    ]
    assert fractions == pytest.approx([0.05, 0.2, 0.05, 0.2], rel=0.3)
    for label, annotation in zip(cohort.labels, cohort.annotation_paths, strict=True):
        polygons = read_geojson_polygons(annotation)
        assert (len(polygons) > 0) == bool(label)

    again = make_cohort(
        tmp_path / "d",
        n_slides=8,
        seed=4,
        lesion_fractions=(0.05, 0.2),
        width=512,
        height=512,
        slides_per_case=2,
        test_fraction=0.5,
    )
    assert again.csv_path.read_text() == cohort.csv_path.read_text()
    for a, b in zip(cohort.annotation_paths, again.annotation_paths, strict=True):
        assert a.read_text() == b.read_text()


def test_cohort_resumes_without_rewriting(tmp_path):
    first = make_cohort(tmp_path, n_slides=2, seed=1, width=512, height=512)
    stamps = [s.path.stat().st_mtime_ns for s in first.slides]
    second = make_cohort(tmp_path, n_slides=2, seed=1, width=512, height=512)
    assert [s.path.stat().st_mtime_ns for s in second.slides] == stamps
    assert second.labels == first.labels
    assert [s.lesion_fraction for s in second.slides] == [s.lesion_fraction for s in first.slides]
    assert [s.stain for s in second.slides] == [s.stain for s in first.slides]
    assert first.slides[0].stain != first.slides[1].stain  # every slide has its own stain
    # another stain spread is another appearance: those slides are rewritten
    third = make_cohort(tmp_path, n_slides=2, seed=1, width=512, height=512, stain_variation=0.5)
    assert all(s.path.stat().st_mtime_ns != t for s, t in zip(third.slides, stamps, strict=True))
    assert third.slides[0].stain == Stain.draw(third.slides[0].seed, 0.5).as_dict()
    with pytest.raises(ValueError, match="stain_variation"):
        make_cohort(tmp_path, n_slides=2, seed=1, stain_variation=-0.1)


def test_geojson_round_trip(tmp_path):
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    triangle = np.array([[20.5, 20], [30, 20], [25, 28.25], [20.5, 20]])
    path = write_geojson(tmp_path / "a.geojson", [square, triangle])
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 2
    feature = data["features"][0]
    assert feature["properties"] == {
        "objectType": "annotation",
        "classification": {"name": "Tumor", "color": [200, 0, 0]},
    }
    ring = feature["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == 5
    back = read_geojson_polygons(path)
    assert np.array_equal(back[0][:-1], square) and np.array_equal(back[1], triangle)
    assert read_geojson_polygons(path, classification="Stroma") == []
    assert len(read_geojson_polygons(path, classification="Tumor")) == 2


def test_geojson_multipolygon_and_bare_list(tmp_path):
    ring = [[0, 0], [4, 0], [4, 4], [0, 0]]
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "MultiPolygon", "coordinates": [[ring], [ring]]},
            "properties": {},
        },
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}},
    ]
    path = tmp_path / "list.geojson"
    path.write_text(json.dumps(features))
    assert len(read_geojson_polygons(path)) == 2


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        '{"type": "Polygon"}',
        '{"type": "FeatureCollection", "features": [{"type": "Feature", '
        '"geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1]]]}}]}',
    ],
)
def test_geojson_invalid_names_the_file(tmp_path, text):
    path = tmp_path / "bad.geojson"
    path.write_text(text)
    with pytest.raises(WsiMilError, match="bad.geojson"):
        read_geojson_polygons(path)
    with pytest.raises(WsiMilError, match="missing.geojson"):
        read_geojson_polygons(tmp_path / "missing.geojson")


def test_sample_slide_cached(tmp_path):
    path = sample_slide_path(tmp_path)
    assert path.parent == tmp_path and path.is_file()
    assert read_geojson_polygons(path.with_suffix(".geojson"))
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].levels[0].shape == (3072, 4096, 3)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    stamp = path.stat().st_mtime_ns
    assert sample_slide_path(tmp_path) == path
    assert path.stat().st_mtime_ns == stamp


def test_default_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_WSI_MIL_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("NAPARI_WSI_MIL_CACHE")
    assert default_cache_dir().name == "napari-wsi-mil"
