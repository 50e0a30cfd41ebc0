import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
import tifffile

from conftest import shared_files
from napari_wsi_mil.errors import SlideError, WsiMilError
from napari_wsi_mil.slide import open_slide
from napari_wsi_mil.slide.slide import COARSEST_SIDE, SLIDE_FACTS_VERSION, downsample_2x

REAL_SLIDES = shared_files("slides")
BAD_FILES = shared_files("bad")


def _noise_rgb(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("path", REAL_SLIDES, ids=lambda p: p.name)
def test_real_slides_open_and_read(path):
    with open_slide(path) as slide:
        assert slide.level_dimensions[0] == slide.dimensions
        assert max(slide.level_dimensions[-1]) <= max(COARSEST_SIDE, max(slide.dimensions))
        pyramid = slide.pyramid()
        assert len(pyramid) == slide.level_count
        for level, arr in enumerate(pyramid):
            w, h = slide.level_dimensions[level]
            assert arr.shape == (h, w, 3) and arr.dtype == np.uint8
        coarse = pyramid[-1].compute()
        assert coarse.std() > 0


def test_cmu_facts_and_openslide_parity(shared_data):
    import openslide

    path = shared_data / "slides" / "CMU-1-Small-Region.svs"
    with open_slide(path) as slide:  # JPEG tiles: decoded by tifffile, as by OpenSlide
        assert slide.backend_name == "tifffile" and slide.vendor == "aperio"
        assert slide.properties["aperio.AppMag"] == "20"
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx(0.499)
        assert slide.objective_power == 20
        assert slide.native_level_count == 1 and slide.level_count == 3
        ours = slide.read_region(0, 500, 700, 300, 200)
        theirs = np.asarray(openslide.OpenSlide(str(path)).read_region((500, 700), 0, (300, 200)))
        np.testing.assert_array_equal(ours, theirs[..., :3])
        # a synthesized level is the 2x2 average of the level below, read lazily
        level1 = slide.pyramid()[1][:256, :256].compute()
        np.testing.assert_array_equal(level1, downsample_2x(slide.read_region(0, 0, 0, 512, 512)))
        # chunks are whole native tiles (240 px in this file)
        assert slide.pyramid()[0].chunksize[0] % 240 == 0


def test_generic_tiff_without_resolution_has_no_mpp(shared_data):
    with open_slide(shared_data / "slides" / "boxes.tiff") as slide:
        assert slide.backend_name == "tifffile"
        assert slide.mpp is None  # 72 dpi default tags are not a pixel size
        assert slide.native_level_count == 4


@pytest.mark.parametrize("path", BAD_FILES, ids=lambda p: p.name)
def test_bad_files_raise_one_clear_error(path):
    with pytest.raises(SlideError) as info:
        open_slide(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, WsiMilError)
    assert info.value.reason


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(SlideError, match="file not found"):
        open_slide(tmp_path / "nope.svs")
    with pytest.raises(SlideError, match="directory"):
        open_slide(tmp_path)


def test_plain_tiff_gets_synthesized_levels(tmp_path):
    data = _noise_rgb(2100, 3000)
    path = tmp_path / "plain.tif"
    tifffile.imwrite(
        path,
        data,
        photometric="rgb",
        resolution=(1e4 / 0.25, 1e4 / 0.25),
        resolutionunit="CENTIMETER",
    )
    with open_slide(path) as slide:
        assert slide.native_level_count == 1
        assert slide.mpp == pytest.approx(0.25)
        assert slide.level_dimensions == [(3000, 2100), (1500, 1050), (750, 525)]
        np.testing.assert_array_equal(slide.pyramid()[0].compute(), data)
        np.testing.assert_array_equal(
            slide.pyramid()[2].compute(), downsample_2x(downsample_2x(data))
        )
        # level-0 coordinates, level-2 size
        region = slide.read_region(2, 400, 800, 10, 10)
        np.testing.assert_array_equal(region, downsample_2x(downsample_2x(data))[200:210, 100:110])


def test_ome_tiff_subifd_pyramid_and_physical_size(tmp_path):
    data = _noise_rgb(1024, 1536)
    path = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(
            data,
            subifds=1,
            tile=(256, 256),
            photometric="rgb",
            metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5},
        )
        tif.write(data[::2, ::2], tile=(256, 256), photometric="rgb", subfiletype=1)
    with open_slide(path) as slide:
        assert slide.vendor == "ome-tiff" and slide.mpp == pytest.approx(0.5)
        assert slide.native_level_count == 2
        assert slide.chunk_size(0) == (512, 512)
        np.testing.assert_array_equal(
            slide.read_region(1, 200, 100, 64, 32), data[::2, ::2][50:82, 100:164]
        )


def test_grayscale_uint16_and_striped(tmp_path):
    data = np.arange(300 * 200, dtype=np.uint16).reshape(300, 200) * 3
    path = tmp_path / "gray.tif"
    tifffile.imwrite(path, data, rowsperstrip=16)
    with open_slide(path) as slide:
        out = slide.read_region(0, 0, 0, 200, 300)
        assert out.shape == (300, 200, 3)
        np.testing.assert_array_equal(out[..., 0], (data >> 8).astype(np.uint8))


def test_read_outside_is_white(tmp_path):
    path = tmp_path / "small.tif"
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    with open_slide(path) as slide:
        region = slide.read_region(0, 32, 32, 64, 64)
        assert (region[:32, :32] == 0).all() and (region[32:, :] == 255).all()


def test_a_tile_missing_from_the_file_reads_white(tmp_path):
    """A tile the file does not store (byte count 0) is white, as OpenSlide shows it."""

    def tiles():
        for i in range(4):
            yield None if i == 1 else np.full((256, 256, 3), 100, np.uint8)

    path = tmp_path / "sparse.tif"
    tifffile.imwrite(
        path, tiles(), shape=(512, 512, 3), dtype=np.uint8, tile=(256, 256), photometric="rgb"
    )
    with open_slide(path) as slide:
        region = slide.read_region(0, 0, 0, 512, 512)
    assert (region[:256, 256:] == 255).all()
    assert (region[:256, :256] == 100).all() and (region[256:] == 100).all()


def test_corrupt_tile_blank_with_single_warning(tmp_path):
    data = np.full((1024, 1024, 3), 100, np.uint8)
    path = tmp_path / "corrupt.tif"
    tifffile.imwrite(path, data, tile=(256, 256), photometric="rgb", compression="jpeg")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[5]
        nbytes = tif.pages[0].databytecounts[5]
    raw = bytearray(path.read_bytes())
    raw[offset : offset + nbytes] = b"\x00" * nbytes
    path.write_bytes(bytes(raw))
    with open_slide(path) as slide:  # the first tile is fine, so it opens
        with pytest.raises(SlideError):
            slide.read_region(0, 256, 256, 256, 256)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            image = slide.pyramid()[0].compute(scheduler="threads")
        assert sum(issubclass(w.category, RuntimeWarning) for w in caught) == 1
        assert (image[256:512, 256:512] == 255).all()
        assert (image[:256, :256] != 255).all()


def test_concurrent_reads_match_serial(tmp_path):
    data = _noise_rgb(1024, 1024, seed=3)
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, data, tile=(128, 128), photometric="rgb", compression="zlib")
    with open_slide(path) as slide:
        spots = [(x, y) for x in range(0, 900, 97) for y in range(0, 900, 89)]
        results = {}

        def work(chunk):
            for x, y in chunk:
                results[(x, y)] = slide.read_region(0, x, y, 100, 100)

        threads = [threading.Thread(target=work, args=(spots[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for (x, y), region in results.items():
            np.testing.assert_array_equal(region, data[y : y + 100, x : x + 100])
        assert len(results) == len(spots)


def test_import_does_not_pull_heavy_modules():
    code = (
        "import sys, napari_wsi_mil, napari_wsi_mil.slide, napari_wsi_mil.jobs;"
        "print([m for m in ('torch', 'PyQt6', 'PySide6', 'napari', 'qtpy') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


TIFF_LAYOUTS = {
    "tiled-zlib": dict(tile=(128, 256), photometric="rgb", compression="zlib"),
    "tiled-jpeg": dict(tile=(256, 256), photometric="rgb", compression="jpeg"),
    "striped": dict(rowsperstrip=16, photometric="rgb"),
    "grey-tiled": dict(tile=(128, 128)),
    "rgba-tiled": dict(tile=(128, 128), photometric="rgb", extrasamples=[2]),
    "planar-tiled": dict(tile=(128, 128), photometric="rgb", planarconfig="separate"),
}


@pytest.mark.parametrize("layout", TIFF_LAYOUTS)
def test_tiff_segments_read_like_zarr(tmp_path, layout):
    """Levels are read by decoding their tiles or strips; every region equals what
    tifffile's zarr store gives (the reader of layouts not decoded directly)."""
    from napari_wsi_mil.slide.tiff_backend import TiffBackend

    data = _noise_rgb(700, 900, seed=4)
    if layout == "grey-tiled":
        data = data[..., 0]
    elif layout == "rgba-tiled":
        data = np.concatenate([data, data[..., :1]], axis=-1)
    elif layout == "planar-tiled":
        data = np.moveaxis(data, -1, 0)
    path = tmp_path / f"{layout}.tif"
    tifffile.imwrite(path, data, **TIFF_LAYOUTS[layout])
    backend = TiffBackend(str(path))
    assert (backend._pages[0] is None) == (layout == "planar-tiled")
    rng = np.random.default_rng(0)
    for _ in range(8):
        w, h = (int(v) for v in rng.integers(1, 700, 2))
        x, y = int(rng.integers(-50, 900)), int(rng.integers(-50, 700))
        direct = backend.read_level(0, x, y, w, h)
        page, backend._pages[0] = backend._pages[0], None  # force the zarr path
        through_zarr = backend.read_level(0, x, y, w, h)
        backend._pages[0] = page
        np.testing.assert_array_equal(direct, through_zarr)
    backend.close()


def test_opening_and_reading_a_tiled_tiff_does_not_import_zarr_or_openslide(tmp_path):
    """Importing zarr or OpenSlide costs more than opening a slide; a plain tiled TIFF
    needs neither."""
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, _noise_rgb(600, 600), tile=(256, 256), photometric="rgb")
    code = (
        "import sys; from napari_wsi_mil.slide import open_slide;"
        f"s = open_slide({str(path)!r}); s.read_region(0, 100, 100, 300, 300);"
        "s.pyramid()[0][:50, :50].compute(scheduler='sync');"
        "print('zarr' in sys.modules, 'openslide' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def _aperio_like(path, compression="jpeg"):
    """A three-level Aperio-style SVS (tiled JPEG levels 1x, 4x, 16x and a stripped
    thumbnail page, as Aperio writes them) of 1400 x 1100 px."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8).repeat(30, 0).repeat(30, 1)
    base = base[:1100, :1400]
    head = "Aperio Image Library vTest \r\n1400x1100 [0,0 1400x1100] (256x256) JPEG/RGB"
    fields = "|AppMag = 40|MPP = 0.25"
    options = {"compression": compression, "photometric": "rgb", "metadata": None}
    with tifffile.TiffWriter(path) as tif:
        tif.write(base, tile=(256, 256), description=head + fields, **options)
        tif.write(base[::16, ::16].copy(), description=head + " -> 88x69" + fields, **options)
        for k in (4, 16):
            level = base[::k, ::k].copy()
            tif.write(level, tile=(256, 256), description=f"{head} -> {k}x{fields}", **options)
    return path


def test_an_aperio_svs_of_jpeg_tiles_reads_as_openslide_without_it(tmp_path):
    """tifffile reads an Aperio SVS of JPEG tiles: OpenSlide's levels, downsamples, pixel
    size, magnification and pixels, level by level, without importing OpenSlide."""
    import openslide

    path = _aperio_like(tmp_path / "three.svs")
    theirs = openslide.OpenSlide(str(path))
    with open_slide(path) as slide:
        assert (slide.backend_name, slide.vendor) == ("tifffile", "aperio")
        assert slide.level_dimensions == list(theirs.level_dimensions)
        assert slide.level_downsamples == pytest.approx(theirs.level_downsamples, rel=1e-3)
        assert slide.mpp == 0.25 and slide.objective_power == 40
        for level, (w, h) in enumerate(theirs.level_dimensions):
            expected = np.asarray(theirs.read_region((0, 0), level, (w, h)))[..., :3]
            np.testing.assert_array_equal(slide.read_region(level, 0, 0, w, h), expected)
    code = (
        "import sys; from napari_wsi_mil.slide import open_slide;"
        f"s = open_slide({str(path)!r}); s.read_region(0, 100, 100, 300, 300);"
        "print('openslide' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_aperio_svs_of_other_tiles_and_a_renamed_one_go_where_they_belong(tmp_path):
    """An Aperio file tifffile does not decode as OpenSlide does (here LZW tiles; in
    practice JPEG 2000) goes to OpenSlide; an Aperio file saved as ``.tif`` is recognised
    by its description and read as under its own extension."""
    other = _aperio_like(tmp_path / "lzw.svs", compression="lzw")
    with open_slide(other) as slide:
        assert (slide.backend_name, slide.vendor) == ("openslide", "aperio")
    renamed = _aperio_like(tmp_path / "aperio.tif")
    with open_slide(renamed) as slide:
        assert (slide.backend_name, slide.vendor) == ("tifffile", "aperio")
    (tmp_path / "lzw.tif").symlink_to(other)
    with open_slide(tmp_path / "lzw.tif") as slide:
        assert (slide.backend_name, slide.vendor) == ("openslide", "aperio")


def test_cached_facts_open_without_parsing_and_read_the_same(tmp_path):
    """Facts kept in a project store: the next open of the unchanged file takes them from
    the store and opens the file only at the first read; a changed file is parsed."""
    from napari_wsi_mil.store.project import SLIDE_INFO_CACHE, ProjectStore

    store = ProjectStore(tmp_path / "project", create=True)
    data = _noise_rgb(1024, 1536, seed=5)
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, data, tile=(256, 256), photometric="rgb", compression="zlib")
    with open_slide(path, cache=store) as first:  # nothing cached yet: parsed
        facts = first.describe()
    assert not (store.root / SLIDE_INFO_CACHE).exists()  # opening writes nothing
    first.cache_facts(store)
    assert len(list((store.root / SLIDE_INFO_CACHE).glob("*.json"))) == 1
    with open_slide(path, cache=store) as cached:
        assert cached.describe() == facts
        assert cached._backend._backend is None  # not opened yet
        region = cached.read_region(0, 100, 200, 300, 50)
        np.testing.assert_array_equal(region, data[200:250, 100:400])
        level1 = downsample_2x(data)  # synthesized
        np.testing.assert_array_equal(cached.read_region(1, 0, 0, 768, 512), level1)
    tifffile.imwrite(path, data[:512], tile=(256, 256), photometric="rgb")
    with open_slide(path, cache=store) as changed:  # another version: parsed
        assert changed.dimensions == (1536, 512)
        assert not isinstance(changed._backend, type(cached._backend))


def test_facts_of_another_version_are_parsed_again(tmp_path):
    """Facts cached before a reader change (no version, or another: an SVS of JPEG tiles
    cached as OpenSlide's) are not trusted: the file is parsed and reports its reader."""
    import json

    from napari_wsi_mil.store.project import SLIDE_INFO_CACHE, ProjectStore

    store = ProjectStore(tmp_path / "project", create=True)
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, _noise_rgb(512, 512), tile=(256, 256), photometric="rgb")
    with open_slide(path) as slide:
        slide.cache_facts(store)
    (record,) = (store.root / SLIDE_INFO_CACHE).glob("*.json")
    for version in (None, 1):
        facts = json.loads(record.read_text())
        facts["backend"] = "openslide"
        facts.pop("version", None)
        if version is not None:
            facts["version"] = version
        record.write_text(json.dumps(facts))
        with open_slide(path, cache=store) as slide:
            assert slide.backend_name == "tifffile"
    facts["version"] = SLIDE_FACTS_VERSION
    record.write_text(json.dumps(facts))
    with open_slide(path, cache=store) as slide:  # the current version is trusted
        assert slide.backend_name == "openslide"


def test_a_file_damaged_after_caching_fails_cleanly_at_the_first_read(tmp_path):
    """Deferred opening must not let a broken file through: the first read raises
    SlideError (one line for the CLI), never another exception."""
    import os

    from napari_wsi_mil.store.project import ProjectStore

    store = ProjectStore(tmp_path / "project", create=True)
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, _noise_rgb(512, 512), tile=(256, 256), photometric="rgb")
    with open_slide(path) as slide:
        slide.cache_facts(store)
    stat = path.stat()
    path.write_bytes(b"\x00" * stat.st_size)  # same size, same mtime: the cache still hits
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with open_slide(path, cache=store) as slide:
        assert slide.dimensions == (512, 512)
        with pytest.raises(SlideError, match="not a supported slide format"):
            slide.read_region(0, 0, 0, 64, 64)
