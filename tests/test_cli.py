import json

import h5py
import numpy as np
import pytest

from napari_wsi_mil.cli import main
from napari_wsi_mil.store.project import ProjectStore


def test_info_json(shared_data, capsys):
    assert main(["info", str(shared_data / "slides" / "CMU-1-Small-Region.svs"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mpp"] == 0.499 and info["dimensions"] == [2220, 2967]
    assert info["vendor"] == "aperio" and info["objective_power"] == 20.0


def test_info_bad_file_exits_2_with_message(shared_data, capsys):
    assert main(["info", str(shared_data / "bad" / "png-renamed.svs")]) == 2
    err = capsys.readouterr().err
    assert "png-renamed.svs" in err and "PNG" in err and "Traceback" not in err


def test_synth_tile_cohort_and_export(tmp_path, capsys):
    out = tmp_path / "cohort"
    assert (
        main(
            [
                "synth",
                "--out",
                str(out),
                "--slides",
                "4",
                "--width",
                "1536",
                "--height",
                "1024",
                "--lesion-fraction",
                "0.2",
            ]
        )
        == 0
    )
    project = tmp_path / "proj"
    assert (
        main(
            [
                "tile",
                "--cohort",
                str(out / "cohort.csv"),
                "--project",
                str(project),
                "--patch-size",
                "128",
            ]
        )
        == 0
    )
    store = ProjectStore(project)
    assert len(store.slide_ids()) == 4
    printed = capsys.readouterr().out
    assert "patches" in printed
    # resume: a second run skips every slide
    assert main(["tile", "--cohort", str(out / "cohort.csv"), "--project", str(project)]) == 0
    assert "(skipped): 4 slides" in capsys.readouterr().out
    one = next(iter(store.slide_ids()))
    assert main(["tile", str(out / "slides" / f"{one}.tiff"), "--project", str(project)]) == 0
    assert "(skipped): 1 slide;" in capsys.readouterr().out  # not "1 slides"
    assert main(["export-tiles", "--project", str(project), "--out", str(tmp_path / "h5")]) == 0
    slide_id = store.slide_ids()[0]
    grid, _ = store.read_tiles(slide_id)
    with h5py.File(tmp_path / "h5" / f"{slide_id}.h5") as h5:
        np.testing.assert_array_equal(h5["coords"][:], grid.coords)
        attrs = dict(h5["coords"].attrs)
    assert attrs["patch_size"] == 128 and attrs["patch_level"] == 0
    assert attrs["patch_size_level0"] == 128 and attrs["target_mpp"] == 0.5


def test_tile_skip_errors_reports_and_exits_1(tmp_path, shared_data, capsys):
    from napari_wsi_mil.slide.synthetic import write_synthetic_slide

    good = write_synthetic_slide(tmp_path / "good.tiff", width=1024, height=768).path
    args = [
        "tile",
        str(good),
        str(shared_data / "bad" / "truncated-CMU-1.svs"),
        "--project",
        str(tmp_path / "p"),
        "--skip-errors",
    ]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "FAILED truncated-CMU-1" in captured.err and "good:" in captured.out


def test_tile_without_mpp_explains_fix(tmp_path, shared_data, capsys):
    args = ["tile", str(shared_data / "slides" / "boxes.tiff"), "--project", str(tmp_path / "p")]
    assert main(args) == 2
    assert "--slide-mpp" in capsys.readouterr().err
    assert main([*args, "--level", "0", "--patch-size", "32", "--min-tissue", "0"]) == 0


@pytest.mark.parametrize("model", ["abmil", "clam", "dtfd", "weno", "msclam"])
def test_train_and_infer_on_imported_h5_features_without_slides(tmp_path, model, capsys):
    """A TRIDENT/CLAM user brings features only: .h5 files, no slide files. Each model
    trains on them, infers, and the tumour rows of positive slides score highest."""
    rng = np.random.default_rng(0)
    h5_dir, rows = tmp_path / "h5", ["slide_id,label,split"]
    h5_dir.mkdir()
    for i in range(24):
        label, n = i % 2, 30
        features = rng.normal(size=(n, 8)).astype(np.float32)
        if label:
            features[:6, :8] += 1.0  # six tumour patches per positive slide
        coords = np.stack(np.meshgrid(np.arange(6), np.arange(5)), -1).reshape(-1, 2) * 256
        with h5py.File(h5_dir / f"s{i:02d}.h5", "w") as h5:
            h5["features"] = features
            h5["coords"] = coords
        rows.append(f"s{i:02d},{label},{'test' if i >= 20 else 'train'}")
    cohort = tmp_path / "cohort.csv"
    cohort.write_text("\n".join(rows) + "\n")
    project = tmp_path / "project"
    assert (
        main(
            [
                "import-features",
                str(h5_dir),
                "--project",
                str(project),
                "--name",
                "ext",
                "--patch-size-level0",
                "256",
            ]
        )
        == 0
    )
    run = tmp_path / "run"
    train = ["train", "--project", str(project), "--cohort", str(cohort), "--features", "ext"]
    assert (
        main([*train, "--model", model, "--epochs", "30", "--threads", "1", "--out", str(run)]) == 0
    )
    pred = tmp_path / "pred"
    assert (
        main(
            [
                "infer",
                "--project",
                str(project),
                "--model",
                str(run / "model.safetensors"),
                "--slides",
                "s21",
                "--out",
                str(pred),
                "--geojson",
                str(tmp_path / "geo"),
            ]
        )
        == 0
    )
    tiles = np.loadtxt(pred / "tiles" / "s21.csv", delimiter=",", skiprows=1)
    assert tiles.shape == (30, 5)
    # the stored predictions are exported after inference: one detection per tile
    detections = json.loads((tmp_path / "geo" / "s21.tiles.geojson").read_text())
    assert len(detections["features"]) == 30
    # instance scores (column 4) rank the six tumour rows above the rest
    scores = tiles[:, 4]
    assert scores[:6].mean() > scores[6:].mean()


def _subcommands():
    import argparse

    from napari_wsi_mil.cli import build_parser

    parser = build_parser()
    (choices,) = [a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return choices


def test_every_option_has_help_and_shows_its_default(capsys):
    import argparse

    for name, sub in _subcommands().items():
        for action in sub._actions:
            assert action.help, f"wsi-mil {name} {action.option_strings or action.dest}: no help"
        text = sub.format_help()
        for action in sub._actions:
            default = action.default
            if not action.option_strings or any(
                default is v for v in (None, False, argparse.SUPPRESS)
            ):
                continue
            shown = " ".join(map(str, default)) if isinstance(default, list) else str(default)
            assert shown in text, f"wsi-mil {name} --help does not show {action.dest}={shown}"


def test_version(capsys):
    from napari_wsi_mil import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"wsi-mil {__version__}"
