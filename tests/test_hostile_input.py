"""Hostile input to the command line (issue 15), each case in its own ``wsi-mil`` process.

Every case must end with exit status 2, exactly one line on stderr (the cohort cases
with many problems: a head line and at most 21 more), no traceback, and no file written
or changed (unless the case says so). Files carrying a pickle payload must never run it:
the payload creates a marker file, which must not exist afterwards. Settings or files
that would make NaN must stop the run before anything non-finite is stored.

One small project (two tiled synthetic slides, random features, a model and an encoder
file and their damaged copies) is built once for the module; each process imports
torch once, so the module takes about a minute or two.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import napari_wsi_mil
from conftest import shared_files
from napari_wsi_mil.mil.predict import MODEL_FORMAT, save_model
from napari_wsi_mil.mil.registry import build_model
from napari_wsi_mil.pretrain.encoder_file import ENCODER_FORMAT
from napari_wsi_mil.pretrain.models import resnet18_trunk
from napari_wsi_mil.store.cohort import read_cohort
from napari_wsi_mil.weights_file import save_tensors
from pretrain_fixtures import tiny_cohort

SRC = Path(napari_wsi_mil.__file__).resolve().parents[1]


class _Payload:
    """Unpickling this creates ``marker`` (``open(marker, "w")``): any code could run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@dataclass
class World:
    root: Path
    project: Path
    cohort: Path
    slide: Path
    marker: Path

    def file(self, name: str) -> Path:
        return self.root / "inputs" / name


def _encoder_metadata(**changes) -> dict:
    meta = {
        "arch": "resnet18",
        "method": "simclr",
        "input_size": 32,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "target_mpp": 1.0,
        "patch_size": 32,
    }
    meta.update(changes)
    return {k: v for k, v in meta.items() if v is not None}


def _write_inputs(world: World) -> None:
    inputs = world.root / "inputs"
    inputs.mkdir()
    payload = pickle.dumps(_Payload(world.marker))
    # -- files that run code when unpickled ---------------------------------------------
    torch.save(_Payload(world.marker), world.file("evil.pt"))
    with zipfile.ZipFile(world.file("evil.pt2"), "w") as archive:
        archive.writestr("evil/archive_format", "pt2")
        archive.writestr("evil/models/model.json", "{}")
        archive.writestr("evil/data/sample_inputs/model.pt", payload)
        archive.writestr("evil/data.pkl", payload)
    with zipfile.ZipFile(world.file("script-payload.pt"), "w") as archive:
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/code/__torch__.py", "")
        archive.writestr("archive/constants.pkl", payload)
        archive.writestr("archive/data.pkl", payload)
    with warnings.catch_warnings():  # torch.jit is deprecated; a user may still have one
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), world.file("script.pt"))
    (world.root / "ckpt-evil").mkdir()
    torch.save(_Payload(world.marker), world.root / "ckpt-evil" / "last.pt")
    (world.root / "ckpt-garbage").mkdir()
    (world.root / "ckpt-garbage" / "last.pt").write_bytes(b"not a checkpoint" * 64)
    # -- a trunk state dict with NaN weights (loads, then computes NaN) ----------------
    state = resnet18_trunk("random").state_dict()
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, world.file("nan-trunk.pth"))
    # -- damaged encoder files ----------------------------------------------------------
    shapes = {k: torch.zeros(v.shape, dtype=torch.uint8) for k, v in state.items()}
    wrong_shape = dict(shapes, **{"conv1.weight": torch.zeros(64, 3, 3, 3, dtype=torch.uint8)})
    nan_weight = dict(shapes, **{"bn1.weight": torch.full((64,), float("nan"))})
    one = {"conv1.weight": torch.zeros(1)}
    for name, tensors, meta in [
        ("enc-wrong-shape", wrong_shape, _encoder_metadata()),
        ("enc-missing-keys", one, _encoder_metadata()),
        ("enc-no-input-size", one, _encoder_metadata(input_size=None)),
        ("enc-std-zero", one, _encoder_metadata(std=[0, 0, 0])),
        ("enc-arch", one, _encoder_metadata(arch="vit_giant")),
        ("enc-nan-weight", nan_weight, _encoder_metadata()),
    ]:
        save_tensors(world.file(f"{name}.safetensors"), tensors, meta, ENCODER_FORMAT)
    from safetensors.torch import save_file

    save_file(
        one,
        str(world.file("enc-bad-json.safetensors")),
        {"format": ENCODER_FORMAT, "input_size": "{bad"},
    )
    # -- damaged model files --------------------------------------------------------------
    model = build_model("abmil", 512)
    meta = {"model": "abmil", "in_dim": 512, "hparams": {}, "threshold": 0.5, "features": "f"}
    meta["feature_attrs"] = {"encoder": "synthetic"}
    state = model.state_dict()
    for name, tensors, changes in [
        ("model-wrong-shape", state, {"in_dim": 256}),
        ("model-missing-keys", dict(list(state.items())[1:]), {}),
        ("model-unknown-hparams", state, {"hparams": {"zz": 1}}),
        ("model-unknown-name", state, {"model": "nope"}),
        ("model-no-features", state, {"features": None}),
        ("model-threshold-nan", state, {"threshold": float("nan")}),
    ]:
        save_tensors(world.file(f"{name}.safetensors"), tensors, {**meta, **changes}, MODEL_FORMAT)
    save_model(world.file("model-good.safetensors"), model, meta)  # the control
    save_file(
        {"w": torch.zeros(1)},
        str(world.file("model-bad-json.safetensors")),
        {"format": MODEL_FORMAT, "model": "{bad"},
    )
    world.file("model-garbage.safetensors").write_bytes(b"\xff" * 100)
    # -- CLAM/TRIDENT .h5 files, one per folder -------------------------------------------
    grid = np.stack(np.meshgrid(np.arange(4), np.arange(3)), -1).reshape(-1, 2) * 256
    feats = np.random.default_rng(0).normal(size=(len(grid), 8)).astype(np.float32)
    for name, features, coords, attrs in [
        ("h5-string-features", np.array([b"a"] * len(grid)).reshape(-1, 1), grid, {}),
        ("h5-zero-rows", np.zeros((0, 8), np.float32), np.zeros((0, 2), np.int64), {}),
        ("h5-negative-coords", feats, grid - 512, {}),
        ("h5-huge-coords", feats, grid + 10**15, {}),
        ("h5-nan-features", np.full_like(feats, np.nan), grid, {}),
        ("h5-negative-size", feats, grid, {"patch_size_level0": -256}),
        ("h5-text-size", feats, grid, {"patch_size_level0": "big"}),
        ("h5-tiny-size", feats, grid * 10**4, {"patch_size_level0": 1}),
        ("h5-group", None, grid, {}),
    ]:
        folder = world.root / name
        folder.mkdir()
        with h5py.File(folder / "slide.h5", "w") as h5:
            if features is None:
                h5.create_group("features").create_dataset("x", data=feats)
            else:
                h5["features"] = features
            h5["coords"] = coords
            h5["coords"].attrs["patch_size_level0"] = 256
            for key, value in attrs.items():
                h5["coords"].attrs[key] = value
    # -- cohorts ------------------------------------------------------------------------
    slide = world.slide
    world.file("long-id.csv").write_text(f"slide_id,label,path\n{'a' * 250},1,{slide}\n")
    rows = "".join(f"s{i},1,{slide}\n" for i in range(10_000))
    world.file("ten-thousand.csv").write_text("slide_id,label,path\n" + rows)
    world.file("long-path.csv").write_text(f"slide_id,label,path\nx,1,/tmp/{'p' * 300}.svs\n")
    deep = world.root / "deep-geojson"
    deep.mkdir()
    for entry in read_cohort(world.cohort):
        (deep / f"{entry.slide_id}.geojson").write_text("[" * 100_000 + "]" * 100_000)
    (world.root / "extra.tiff").write_bytes(slide.read_bytes())  # a slide not yet tiled


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("hostile")
    store, cohort = tiny_cohort(root, n_slides=2)
    assert sorted({e.label for e in cohort}) == [0, 1]
    rng = np.random.default_rng(0)
    for entry in cohort:
        n = len(store.read_tiles(entry.slide_id)[0])
        features = rng.normal(size=(n, 512)).astype(np.float32)
        store.write_result("features", "f", entry.slide_id, {"features": features}, {"dim": 512})
    world = World(root, store.root, cohort.source, cohort.entries[0].path, root / "PWNED")
    _write_inputs(world)
    return world


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and p.name != ".lock"
    }


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capfd, monkeypatch):
    """``wsi-mil ARGS`` in this process (torch is imported once for the module), with
    the progress bars off so that stderr holds only messages."""
    import tqdm

    from napari_wsi_mil.cli import main

    class QuietBar(tqdm.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": True})

    monkeypatch.setattr(tqdm, "tqdm", QuietBar)

    def run(argv: list[str]) -> Result:
        capfd.readouterr()
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code
        out, err = capfd.readouterr()
        return Result(code, out, err)

    return run


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    """``python -m napari_wsi_mil ARGS`` in a new process, progress bars off."""
    env = dict(os.environ, PYTHONPATH=str(SRC), TQDM_DISABLE="1")
    return subprocess.run(
        [sys.executable, "-m", "napari_wsi_mil", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _tile(w: World, *args) -> list[str]:
    return ["tile", str(w.root / "extra.tiff"), "--project", str(w.project), *args]


def _extract(w: World, *args) -> list[str]:
    return ["extract", "--project", str(w.project), "--workers", "0", "--device", "cpu", *args]


def _encoder(w: World, name: str) -> list[str]:
    return _extract(w, "--encoder", str(w.file(name)), "--name", "bad")


def _train(w: World, *args) -> list[str]:
    return [
        "train",
        *("--project", str(w.project), "--cohort", str(w.cohort), "--features", "f"),
        *("--threads", "1", "--out", str(w.root / "run"), *args),
    ]


def _pretrain(w: World, *args) -> list[str]:
    return [
        "pretrain",
        *("--project", str(w.project), "--cohort", str(w.cohort), "--method", "simclr"),
        *("--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "4", "--image-size", "32"),
        *("--workers", "0", "--device", "cpu", "--out", str(w.root / "enc.safetensors"), *args),
    ]


def _infer(w: World, name: str) -> list[str]:
    model = str(w.file(name))
    return ["infer", "--project", str(w.project), "--model", model, "--out", str(w.root / "pred")]


def _import(w: World, folder: str, *args) -> list[str]:
    folder = str(w.root / folder)
    return ["import-features", folder, "--project", str(w.project), "--name", "imp", *args]


#: (case id, arguments, a part of the error line)
CASES = [
    # tiling settings
    ("tile-patch-size-0", lambda w: _tile(w, "--patch-size", "0"), "--patch-size"),
    ("tile-stride-0", lambda w: _tile(w, "--stride", "0"), "--stride"),
    ("tile-min-tissue-2", lambda w: _tile(w, "--min-tissue", "2"), "--min-tissue"),
    ("tile-mpp-nan", lambda w: _tile(w, "--mpp", "nan"), "--mpp"),
    ("tile-mpp-0", lambda w: _tile(w, "--mpp", "0"), "--mpp"),
    ("tile-mpp-negative", lambda w: _tile(w, "--mpp", "-1"), "--mpp"),
    ("tile-mpp-1e-6", lambda w: _tile(w, "--mpp", "1e-6"), "finer than"),
    ("tile-slide-mpp-negative", lambda w: _tile(w, "--slide-mpp", "-0.5"), "--slide-mpp"),
    ("tile-slide-mpp-0", lambda w: _tile(w, "--slide-mpp", "0"), "--slide-mpp"),
    ("tile-level-negative", lambda w: _tile(w, "--level", "-1"), "--level"),
    # cohorts
    ("cohort-250-char-id", lambda w: _tile(w, "--cohort", str(w.file("long-id.csv"))), "128"),
    ("cohort-10k-rows", lambda w: _tile(w, "--cohort", str(w.file("ten-thousand.csv"))), "more"),
    ("cohort-300-char-path", lambda w: _tile(w, "--cohort", str(w.file("long-path.csv"))), "long"),
    ("slide-id-300-chars", lambda w: ["tile", "p" * 300 + ".svs", "--project", str(w.project)], ""),
    (
        "project-under-a-file",  # an OSError like a read-only folder's, also as root
        lambda w: ["tile", str(w.slide), "--project", str(w.slide / "p")],
        "Not a directory",
    ),
    # extraction settings and encoders
    ("extract-batch-size-0", lambda w: _extract(w, "--encoder", "random", "--batch-size", "0"), ""),
    (
        "extract-workers-negative",
        lambda w: _extract(w, "--encoder", "random", "--workers", "-1"),
        "",
    ),
    (
        "extract-device-cuda-7",
        lambda w: _extract(w, "--encoder", "random", "--device", "cuda:7"),
        "cuda:7",
    ),
    ("encoder-pt2-payload", lambda w: _encoder(w, "evil.pt2"), "refused"),
    ("encoder-pt-payload", lambda w: _encoder(w, "evil.pt"), "refused"),
    ("encoder-torchscript", lambda w: _encoder(w, "script.pt"), "refused"),
    ("encoder-torchscript-payload", lambda w: _encoder(w, "script-payload.pt"), "refused"),
    ("encoder-wrong-shape", lambda w: _encoder(w, "enc-wrong-shape.safetensors"), "shape"),
    ("encoder-missing-keys", lambda w: _encoder(w, "enc-missing-keys.safetensors"), "missing"),
    ("encoder-no-input-size", lambda w: _encoder(w, "enc-no-input-size.safetensors"), "input_size"),
    ("encoder-std-zero", lambda w: _encoder(w, "enc-std-zero.safetensors"), "std"),
    ("encoder-unknown-arch", lambda w: _encoder(w, "enc-arch.safetensors"), "vit_giant"),
    ("encoder-nan-weight", lambda w: _encoder(w, "enc-nan-weight.safetensors"), "NaN"),
    ("encoder-metadata-not-json", lambda w: _encoder(w, "enc-bad-json.safetensors"), "JSON"),
    ("encoder-nan-features", lambda w: _encoder(w, "nan-trunk.pth"), "NaN"),
    # MIL training settings and model files
    ("train-lr-negative", lambda w: _train(w, "--lr", "-1"), "--lr"),
    ("train-epochs-negative", lambda w: _train(w, "--epochs", "-1"), "--epochs"),
    ("train-hparams-bad-json", lambda w: _train(w, "--hparams", "{bad"), "JSON"),
    ("train-hparams-unknown", lambda w: _train(w, "--hparams", '{"zz": 1}'), "zz"),
    ("train-hparams-wrong-type", lambda w: _train(w, "--hparams", '{"dropout": "x"}'), "dropout"),
    (
        "train-deep-geojson",
        lambda w: _train(w, "--epochs", "1", "--annotations", str(w.root / "deep-geojson")),
        "GeoJSON",
    ),
    ("model-wrong-shape", lambda w: _infer(w, "model-wrong-shape.safetensors"), "usable"),
    ("model-missing-keys", lambda w: _infer(w, "model-missing-keys.safetensors"), "usable"),
    ("model-unknown-hparams", lambda w: _infer(w, "model-unknown-hparams.safetensors"), "zz"),
    ("model-unknown-name", lambda w: _infer(w, "model-unknown-name.safetensors"), "nope"),
    ("model-no-feature-set", lambda w: _infer(w, "model-no-features.safetensors"), "features"),
    ("model-threshold-nan", lambda w: _infer(w, "model-threshold-nan.safetensors"), "threshold"),
    ("model-metadata-not-json", lambda w: _infer(w, "model-bad-json.safetensors"), "JSON"),
    ("model-not-safetensors", lambda w: _infer(w, "model-garbage.safetensors"), "safetensors"),
    # pretraining settings, --init files and checkpoints
    ("pretrain-grad-accum-0", lambda w: _pretrain(w, "--grad-accum", "0"), "--grad-accum"),
    ("pretrain-tau-0", lambda w: _pretrain(w, "--tau", "0"), "--tau"),
    ("pretrain-tau-nan", lambda w: _pretrain(w, "--tau", "nan"), "--tau"),
    ("pretrain-epochs-0", lambda w: _pretrain(w, "--epochs", "0"), "--epochs"),
    ("pretrain-init-payload", lambda w: _pretrain(w, "--init", str(w.file("evil.pt"))), "refused"),
    ("pretrain-init-nan", lambda w: _pretrain(w, "--init", str(w.file("nan-trunk.pth"))), "nan"),
    (
        "pretrain-resume-garbage",
        lambda w: _pretrain(w, "--resume", "--checkpoint-dir", str(w.root / "ckpt-garbage")),
        "--resume",
    ),
    (
        "pretrain-resume-payload",
        lambda w: _pretrain(w, "--resume", "--checkpoint-dir", str(w.root / "ckpt-evil")),
        "--resume",
    ),
    # CLAM/TRIDENT .h5 imports
    ("h5-string-features", lambda w: _import(w, "h5-string-features"), "not numbers"),
    ("h5-zero-rows", lambda w: _import(w, "h5-zero-rows"), "empty"),
    ("h5-negative-coords", lambda w: _import(w, "h5-negative-coords"), "coords"),
    ("h5-huge-coords", lambda w: _import(w, "h5-huge-coords"), "coords"),
    ("h5-nan-features", lambda w: _import(w, "h5-nan-features"), "NaN"),
    ("h5-negative-size", lambda w: _import(w, "h5-negative-size"), "patch_size_level0"),
    ("h5-text-size", lambda w: _import(w, "h5-text-size"), "patch_size_level0"),
    ("h5-grid-too-large", lambda w: _import(w, "h5-tiny-size"), "grid"),
    ("h5-group-for-dataset", lambda w: _import(w, "h5-group"), "datasets"),
    (
        "h5-option-size-negative",
        lambda w: _import(w, "h5-string-features", "--patch-size-level0", "-5"),
        "--patch-size-level0",
    ),
]
BAD_SLIDES = [
    (f"bad-{path.name}", lambda w, p=path: ["tile", str(p), "--project", str(w.project)], "")
    for path in shared_files("bad")
]
#: Cases whose error lists several problems (a cohort): a head line and at most 21 more.
MANY_PROBLEMS = {"cohort-10k-rows": 22}


def _assert_one_line_error(result, expected: str, max_lines: int = 1) -> None:
    err = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    lines = err.splitlines()
    assert 1 <= len(lines) <= max_lines, lines[:30]
    assert lines[0].startswith("wsi-mil "), lines[0]
    assert expected in err, err


@pytest.mark.parametrize(
    ("case", "argv", "expected"), [pytest.param(*c, id=c[0]) for c in CASES + BAD_SLIDES]
)
def test_bad_input_is_one_line_and_exit_2(world, run_cli, case, argv, expected):
    before = _snapshot(world.root)
    result = run_cli(argv(world))
    _assert_one_line_error(result, expected, max_lines=MANY_PROBLEMS.get(case, 1))
    assert not world.marker.exists(), "a payload ran"
    assert _snapshot(world.root) == before, "a file was written or changed"


#: Cases also run as ``python -m napari_wsi_mil`` (each new process imports torch, which
#: takes seconds): a usage error, and code in files given as encoder and checkpoint.
IN_A_NEW_PROCESS = ("tile-mpp-nan", "encoder-pt2-payload", "pretrain-resume-payload")


@pytest.mark.parametrize(
    ("case", "argv", "expected"),
    [pytest.param(*c, id=c[0]) for c in CASES if c[0] in IN_A_NEW_PROCESS],
)
def test_the_entry_point_prints_one_line(world, case, argv, expected):
    before = _snapshot(world.root)
    _assert_one_line_error(_run(argv(world)), expected)
    assert not world.marker.exists(), "a payload ran"
    assert _snapshot(world.root) == before, "a file was written or changed"


def test_the_payloads_are_live(world, tmp_path):
    """The marker tests mean something: unpickling these files does run the payload."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()
    marker.unlink()
    torch.save(_Payload(marker), tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_a_tiling_with_no_patch_exits_2_and_says_why(world, run_cli, tmp_path):
    result = run_cli(
        ["tile", str(world.slide), "--project", str(tmp_path / "p"), "--patch-size", "4096"]
    )
    _assert_one_line_error(result, "no slide gave any patch")
    assert "warning: no patches" in result.stdout


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_project_is_one_line(world, run_cli, tmp_path):
    project = tmp_path / "ro"
    project.mkdir()
    project.chmod(0o500)
    try:
        result = run_cli(["tile", str(world.slide), "--project", str(project / "p")])
    finally:
        project.chmod(0o700)
    _assert_one_line_error(result, "Permission denied")


def test_nothing_non_finite_is_stored(world):
    """After the NaN cases, every stored feature and encoder is finite."""
    from napari_wsi_mil.store.project import ProjectStore

    store = ProjectStore(world.project)
    for name in ("f", "bad", "imp"):
        for slide_id in store.result_ids("features", name):
            features = store.read_result("features", name, slide_id)[0]["features"]
            assert np.isfinite(features).all()
    assert not (world.root / "enc.safetensors").exists()
    assert json.loads((world.project / "project.json").read_text())["version"] == 1


def test_model_files_honour_the_umask(tmp_path):
    old = os.umask(0o002)  # a lab group sharing results
    try:
        save_tensors(tmp_path / "m.safetensors", {"w": torch.zeros(1)}, {}, MODEL_FORMAT)
    finally:
        os.umask(old)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o664


def test_the_lock_removes_what_killed_writers_left(tmp_path):
    from napari_wsi_mil.store.project import ProjectStore

    store = ProjectStore(tmp_path / "p", create=True)
    stale = [
        store.root / "features" / "f" / ".tmp-s1-0badcafe",
        store.root / "slides" / ".trash-s1-0badcafe",
    ]
    kept = store.root / "slides" / "s1"  # a finished result
    for folder in [*stale, kept]:
        folder.mkdir(parents=True)
        (folder / "zarr.json").write_text("{}")
        os.utime(folder, (1, 1))  # written long before this run took the lock
    with store.lock():
        assert not any(folder.exists() for folder in stale)
    assert (kept / "zarr.json").exists()


@pytest.mark.parametrize(
    ("make", "setting"),
    [
        (lambda: _tiling(patch_size=0), "patch_size"),
        (lambda: _tiling(target_mpp=float("nan")), "target_mpp"),
        (lambda: _tiling(slide_mpp=0.0), "slide_mpp"),
        (lambda: _tiling(min_tissue=-0.1), "min_tissue"),
        (lambda: _pretrain_config(tau=0.0), "tau"),
        (lambda: _pretrain_config(grad_accum=0), "grad_accum"),
        (lambda: _pretrain_config(device="gpu"), "device"),
        (lambda: _pretrain_config(lr=float("inf")), "lr"),
        (lambda: _mil_config(epochs=0), "epochs"),
        (lambda: _mil_config(folds=0), "folds"),
        (lambda: _mil_config(hparams={"embed_dim": -1}), "hparams"),
        (lambda: _mil_config(model="nope"), "nope"),
    ],
)
def test_settings_are_checked_where_they_are_made(make, setting):
    """The Python API and the widgets get the command line's checks: a ParamError."""
    from napari_wsi_mil.errors import ParamError

    with pytest.raises(ParamError, match=setting):
        make()


def _tiling(**kw):
    from napari_wsi_mil.slide.tiling import TilingParams

    return TilingParams(**kw)


def _pretrain_config(**kw):
    from napari_wsi_mil.pretrain.trainer import PretrainConfig

    return PretrainConfig(**kw)


def _mil_config(**kw):
    from napari_wsi_mil.mil.train import MilConfig

    return MilConfig(**kw)


def test_good_input_still_works(world, run_cli, tmp_path):
    """The controls: the same commands with good values and files exit 0."""
    result = run_cli(_extract(world, "--encoder", "random", "--name", "control"))
    assert result.returncode == 0, result.stderr
    out = ["--out", str(tmp_path / "pred")]
    model = str(world.file("model-good.safetensors"))
    result = run_cli(["infer", "--project", str(world.project), "--model", model, *out])
    assert result.returncode == 0, result.stderr
    assert "P(positive)" in result.stdout
