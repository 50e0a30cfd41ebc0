"""The reader and sample contributions, through the npe2 manifest and a real viewer."""

import importlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import shared_files
from napari_wsi_mil._napari.reader import napari_get_reader
from napari_wsi_mil.errors import SlideError

MANIFEST = Path(__file__).resolve().parents[2] / "src" / "napari_wsi_mil" / "napari.yaml"


def test_manifest_validates_and_every_python_name_imports():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    for command in manifest.contributions.commands:
        module, attr = command.python_name.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), command.python_name


def test_installed_plugin_is_discovered():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    assert "napari-wsi-mil" in pm._manifests


@pytest.mark.parametrize("path", ["a.png", "b.txt", ["x.svs", "y.svs"], 42, None, ""])
def test_get_reader_declines_without_raising(path):
    assert napari_get_reader(path) is None


@pytest.mark.parametrize("path", shared_files("slides"), ids=lambda p: p.name)
def test_viewer_opens_real_slides(make_napari_viewer, path):
    viewer = make_napari_viewer()
    layers = viewer.open(path, plugin="napari-wsi-mil")
    (layer,) = layers
    assert layer.multiscale and layer.rgb
    assert tuple(layer.contrast_limits) == (0, 255)
    assert layer.metadata["slide_path"] == str(path)
    if layer.metadata["mpp"]:
        assert layer.scale[-1] == pytest.approx(layer.metadata["mpp"])
        assert str(layer.units[-1]) in ("micrometer", "um")


def test_viewer_shows_bad_file_error_and_survives(make_napari_viewer, shared_data):
    viewer = make_napari_viewer()
    bad = shared_data / "bad" / "png-renamed.svs"
    with pytest.raises(Exception) as info:
        viewer.open(bad, plugin="napari-wsi-mil")
    chain, exc = [], info.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    assert any(isinstance(e, SlideError) for e in chain)
    assert len(viewer.layers) == 0
    # napari keeps working: a good file still opens
    good = shared_data / "slides" / "small.svs"
    viewer.open(good, plugin="napari-wsi-mil")
    assert len(viewer.layers) == 1


def test_layer_scale_lines_up_levels(make_napari_viewer, tmp_path):
    path = tmp_path / "s.tif"
    data = np.random.default_rng(0).integers(0, 255, (2200, 2300, 3), dtype=np.uint8)
    tifffile.imwrite(
        path,
        data,
        tile=(256, 256),
        photometric="rgb",
        resolution=(1e4 / 0.5, 1e4 / 0.5),
        resolutionunit="CENTIMETER",
    )
    viewer = make_napari_viewer()
    (layer,) = viewer.open(path, plugin="napari-wsi-mil")
    assert layer.scale[-1] == pytest.approx(0.5)
    assert len(layer.data) == 3
    # world extent is the level-0 extent in micrometres
    extent = layer.extent.world
    assert extent[1][-1] - extent[0][-1] == pytest.approx(2300 * 0.5, rel=1e-3)
