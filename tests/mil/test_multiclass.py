"""More than two classes: cohorts of class names, models with C outputs, per-class
metrics, and the CLI from training to evaluation."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from mil_fixtures import feature_cohort, small_hparams
from napari_wsi_mil.cli import main
from napari_wsi_mil.errors import ParamError, WsiMilError
from napari_wsi_mil.jobs import run_job
from napari_wsi_mil.mil import MODELS
from napari_wsi_mil.mil.metrics import (
    bootstrap_macro_auc_interval,
    describe_bag_metrics,
    multiclass_bag_metrics,
)
from napari_wsi_mil.mil.registry import build_model, model_class
from napari_wsi_mil.mil.train import MilConfig, train_mil_job
from napari_wsi_mil.store.cohort import BINARY_CLASSES, read_cohort, write_cohort

THREE = ("normal", "luad", "lusc")
MULTI_CLASS_MODELS = [m for m in MODELS if not model_class(m).binary_only]


def _table(tmp_path, labels, name="cohort.csv"):
    path = tmp_path / name
    rows = [f"s{i},{label}" for i, label in enumerate(labels)]
    path.write_text("slide_id,label\n" + "\n".join(rows) + "\n")
    return path


# -- cohorts ---------------------------------------------------------------------------


def test_class_names_order_negative_first_then_sorted(tmp_path):
    cohort = read_cohort(_table(tmp_path, ["lusc", "Normal", "luad", "lusc"]))
    assert cohort.classes == ("Normal", "luad", "lusc")
    assert [e.label for e in cohort] == [2, 0, 1, 2]
    assert not cohort.is_binary
    # no recognisable negative class: the alphabetically first
    assert read_cohort(_table(tmp_path, ["b", "c", "a"])).classes == ("a", "b", "c")
    # whole numbers are class codes
    assert read_cohort(_table(tmp_path, ["2", "0", "1"])).classes == ("0", "1", "2")


def test_binary_tables_read_as_before(tmp_path):
    for labels in (["0", "1"], ["normal", "tumour"], ["Negative", "positive", "1.0"]):
        cohort = read_cohort(_table(tmp_path, labels))
        assert cohort.classes == BINARY_CLASSES and cohort.is_binary
        assert [e.label for e in cohort][:2] == [0, 1]


def test_given_class_order_and_round_trip(tmp_path):
    path = _table(tmp_path, ["lusc", "normal", "luad"])
    cohort = read_cohort(path, classes=("normal", "lusc", "luad"))
    assert [e.label for e in cohort] == [1, 0, 2]
    written = write_cohort(cohort, tmp_path / "again.csv")
    assert "lusc" in written.read_text()  # names, not indices
    assert read_cohort(written, classes=cohort.classes).entries == cohort.entries
    # two given classes index binary labels too
    binary = read_cohort(_table(tmp_path, ["0", "1"]), classes=("benign", "malignant"))
    assert [e.label for e in binary] == [0, 1]


def test_a_label_outside_the_given_classes_is_one_problem(tmp_path):
    path = _table(tmp_path, ["lusc", "normal", "luad"])
    with pytest.raises(WsiMilError, match=r"line 4: unknown label 'luad': the classes are"):
        read_cohort(path, classes=("normal", "lusc"))


# -- models ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", MULTI_CLASS_MODELS)
def test_models_output_c_classes(name):
    torch.manual_seed(0)
    model = build_model(name, 6, n_classes=3, **small_hparams(name)).eval()
    out = model(torch.randn(11, 6), generator=torch.Generator().manual_seed(0))
    assert out.logit.shape == (3,)
    probs = out.class_probability
    assert torch.isclose(probs.sum(), torch.tensor(1.0))
    assert torch.isclose(out.probability, 1 - probs[0], atol=1e-6)
    assert out.attention.shape == (11,) and torch.isclose(out.attention.sum(), torch.tensor(1.0))
    assert out.instance_probability.shape == (11,)
    if out.class_attention is not None:
        assert out.class_attention.shape == (3, 11)
        assert torch.allclose(out.class_attention.sum(1), torch.ones(3))
    loss, _ = model.train().loss(torch.randn(11, 6), 2, generator=torch.Generator())
    assert loss.ndim == 0 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="class index below 3"):
        model.loss(torch.randn(11, 6), 3, generator=torch.Generator())


def test_binary_models_keep_p_positive():
    """With two classes ``probability`` is ``softmax(logit)[1]``."""
    torch.manual_seed(0)
    for name in MULTI_CLASS_MODELS:
        out = build_model(name, 6, **small_hparams(name)).eval()(torch.randn(9, 6))
        assert torch.isclose(out.probability, torch.softmax(out.logit, 0)[1], atol=1e-6), name


def test_clam_mb_shows_the_branch_of_the_likeliest_non_negative_class():
    torch.manual_seed(0)
    model = build_model("clam-mb", 6, n_classes=3, **small_hparams("clam-mb")).eval()
    out = model(torch.randn(7, 6))
    shown = 1 + int(torch.argmax(out.logit[1:]))
    assert torch.equal(out.attention, out.class_attention[shown])


def test_subtyping_clam_trains_every_instance_classifier():
    """CLAM's out-of-class rule: with three classes a bag of class 1 also trains the
    other classes' instance classifiers (their top instances are not theirs)."""
    torch.manual_seed(0)
    for name in ("clam", "clam-mb"):
        model = build_model(name, 6, n_classes=3, **small_hparams(name))
        loss, _ = model.loss(torch.randn(12, 6), 1)
        loss.backward()
        grads = [c.weight.grad for c in model.instance_classifiers]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), name
        binary = build_model(name, 6, **small_hparams(name))
        binary.loss(torch.randn(12, 6), 1)[0].backward()
        assert binary.instance_classifiers[0].weight.grad is None  # binary rule: its own only


@pytest.mark.parametrize("name", ["weno", "msclam"])
def test_binary_only_models_refuse_three_classes(tmp_path, name):
    store, cohort, _ = feature_cohort(tmp_path, n_cases=12, classes=THREE)
    with pytest.raises(ParamError, match=f"{name} is for two classes .* lusc.*: choose abmil"):
        run_job(train_mil_job(store, cohort, "f", tmp_path / "run", MilConfig(model=name)))


# -- metrics ---------------------------------------------------------------------------


def test_multiclass_metrics_hand_case_and_sklearn():
    from sklearn.metrics import roc_auc_score

    y = np.array([0, 0, 1, 1, 2, 2, 2])
    probs = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.4, 0.5, 0.1],  # a normal slide called luad
            [0.1, 0.7, 0.2],
            [0.2, 0.6, 0.2],
            [0.1, 0.2, 0.7],
            [0.2, 0.1, 0.7],
            [0.3, 0.3, 0.4],
        ]
    )
    m = multiclass_bag_metrics(y, probs, THREE)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 3]]
    assert m["accuracy"] == pytest.approx(6 / 7)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m["class_auc"]["lusc"] == pytest.approx(roc_auc_score(y == 2, probs[:, 2]))
    assert m["class_counts"] == {"normal": 2, "luad": 2, "lusc": 3}
    low, high = m["auc_interval"]
    assert low <= m["auc"] <= high <= 1
    assert describe_bag_metrics(m).endswith("n = 2 normal / 2 luad / 3 lusc")
    # a class absent from the split: no AUC of its own, the macro over the others
    absent = multiclass_bag_metrics(y[:4], probs[:4], THREE)
    assert absent["class_auc"]["lusc"] is None
    assert absent["auc"] == pytest.approx(np.mean([absent["class_auc"][c] for c in THREE[:2]]))
    assert bootstrap_macro_auc_interval(y[:4], probs[:4]) is not None
    assert bootstrap_macro_auc_interval(y[:2], probs[:2]) is None  # one class


def test_bootstrap_macro_auc_matches_direct_resamples():
    """The weighted-pairs shortcut equals sklearn's macro AUC on each drawn resample."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 2], [5, 4, 6])
    probs = rng.dirichlet(np.ones(3), len(y))
    interval = bootstrap_macro_auc_interval(y, probs, resamples=50, seed=7)
    draws = np.random.default_rng(7)
    weights = np.zeros((50, len(y)), int)
    for c in range(3):
        members = np.flatnonzero(y == c)
        weights[:, members] = draws.multinomial(
            len(members), np.full(len(members), 1 / len(members)), 50
        )
    direct = [
        roc_auc_score(np.repeat(y, w), np.repeat(probs, w, axis=0), multi_class="ovr")
        for w in weights
    ]
    assert interval == pytest.approx(tuple(np.percentile(direct, [2.5, 97.5])))


# -- training --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["abmil", "clam", "clam-mb", "dtfd", "dsmil"])
def test_three_class_training_ranks_test_bags(tmp_path, name):
    """Bags of class k >= 1 hold instances shifted along axis k - 1: every model ranks
    the 12 test bags (macro AUC 1.0 for each when measured) and calls 9 or more right
    (9 to 12 when measured)."""
    store, cohort, _ = feature_cohort(
        tmp_path, n_cases=36, classes=THREE, test_fraction=1 / 3, tumour_fraction=0.3
    )
    config = MilConfig(model=name, epochs=20, lr=1e-3, threads=1)
    result = run_job(train_mil_job(store, cohort, "f", tmp_path / "run", config))
    test = result.metrics["test"]
    assert result.metrics["classes"] == list(THREE)
    assert test["auc"] >= 0.95, test
    assert set(test["class_auc"]) == set(THREE)
    assert np.trace(test["confusion_matrix"]) >= 0.75 * test["n"], test
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["hparams"]["n_classes"] == 3


def test_a_class_without_training_slides_is_one_error(tmp_path):
    store, cohort, _ = feature_cohort(tmp_path, n_cases=12, classes=THREE)
    cohort.classes = (*THREE, "mesothelioma")
    with pytest.raises(WsiMilError, match="no training slide of class 'mesothelioma'"):
        run_job(train_mil_job(store, cohort, "f", tmp_path / "run", MilConfig(epochs=1)))


# -- the command line ------------------------------------------------------------------


def _h5_project(tmp_path, labels_of):
    """24 feature-only slides imported from .h5 files; slide i has ``labels_of(i)``;
    slides 18.. are test slides. Tumour rows (the first six) of class k are shifted
    along axis k - 1."""
    rng = np.random.default_rng(0)
    h5_dir, rows = tmp_path / "h5", ["slide_id,label,split"]
    h5_dir.mkdir()
    for i in range(24):
        name = labels_of(i)
        k = THREE.index(name) if name in THREE else 0
        features = rng.normal(size=(30, 8)).astype(np.float32)
        if k:
            features[:6, k - 1] += 3.0
        coords = np.stack(np.meshgrid(np.arange(6), np.arange(5)), -1).reshape(-1, 2) * 256
        with h5py.File(h5_dir / f"s{i:02d}.h5", "w") as h5:
            h5["features"] = features
            h5["coords"] = coords
        rows.append(f"s{i:02d},{name},{'test' if i >= 18 else 'train'}")
    cohort = tmp_path / "cohort.csv"
    cohort.write_text("\n".join(rows) + "\n")
    project = tmp_path / "project"
    args = ["import-features", str(h5_dir), "--project", str(project), "--name", "ext"]
    assert main([*args, "--patch-size-level0", "256"]) == 0
    return project, cohort


def test_cli_trains_infers_and_evaluates_three_classes(tmp_path, capsys):
    project, cohort = _h5_project(tmp_path, lambda i: THREE[i % 3])
    run, pred = tmp_path / "run", tmp_path / "pred"
    train = ["train", "--project", str(project), "--cohort", str(cohort), "--features", "ext"]
    train += ["--model", "clam-mb", "--epochs", "30", "--threads", "1", "--out", str(run)]
    assert main([*train, "--classes", "normal,luad,lusc"]) == 0
    printed = capsys.readouterr().out
    assert "classes: normal, luad, lusc (negative class: normal)" in printed
    assert "n = 2 normal / 2 luad / 2 lusc" in printed
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["auc"] >= 0.9 and len(metrics["test"]["confusion_matrix"]) == 3
    infer = ["infer", "--project", str(project), "--model", str(run / "model.safetensors")]
    assert main([*infer, "--cohort", str(cohort), "--out", str(pred)]) == 0
    header = (pred / "slides.csv").read_text().splitlines()[0].split(",")
    assert header[-4:] == ["predicted_class", "p_normal", "p_luad", "p_lusc"]
    tiles_header = (pred / "tiles" / "s19.csv").read_text().splitlines()[0]
    assert tiles_header.endswith("attention_normal,attention_luad,attention_lusc")
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--pred", str(pred), "--cohort", str(cohort), "--out", str(out)]) == 0
    evaluated = json.loads(out.read_text())
    assert evaluated["class_counts"] == {"normal": 8, "luad": 8, "lusc": 8}
    assert evaluated["auc"] >= 0.9


@pytest.mark.parametrize(
    ("labels_of", "extra", "message"),
    [
        (lambda i: "luad", [], "the cohort has one class (luad): MIL needs two or more"),
        (
            lambda i: THREE[i % 3] if i >= 18 or i % 3 != 2 else "normal",
            [],
            "no training slide of class 'lusc'",
        ),
        (lambda i: THREE[i % 3], ["--classes", "normal,luad,lusk"], "unknown label 'lusc'"),
        (lambda i: THREE[i % 3], ["--classes", "normal"], "two or more class names"),
        (lambda i: THREE[i % 3], ["--model", "weno"], "weno is for two classes"),
    ],
)
def test_cli_bad_class_input_is_one_line_and_exit_2(tmp_path, capsys, labels_of, extra, message):
    project, cohort = _h5_project(tmp_path, labels_of)
    train = ["train", "--project", str(project), "--cohort", str(cohort), "--features", "ext"]
    capsys.readouterr()
    try:  # argparse exits on a bad option value; the others return
        code = main([*train, "--epochs", "1", "--out", str(tmp_path / "run"), *extra])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_three_class_mosaic_from_tiles_to_evaluation_on_the_cli(tmp_path, capsys):
    """Real H&E tiles (the packaged demo set): normal slides, tumour lesions and
    lymphocyte lesions, tiled, encoded (random ResNet-18) and learnt by CLAM-MB."""
    from napari_wsi_mil.demo import DEMO_TILES
    from napari_wsi_mil.slide.mosaic import make_mosaic_cohort

    made = make_mosaic_cohort(
        DEMO_TILES, tmp_path / "c", n_slides=9, rows=3, cols=4, lesion_fractions=(0.5,),
        lesion_kinds=("tumour", "lymphocytes"), tile_size=112,
    )  # fmt: skip
    project, cohort = str(tmp_path / "p"), str(made.csv_path)
    assert main(["tile", "--cohort", cohort, "--project", project, "--patch-size", "28",
                 "--mpp", "1.0"]) == 0  # fmt: skip
    extract = ["extract", "--project", project, "--encoder", "random", "--workers", "0"]
    assert main([*extract, "--device", "cpu", "--name", "r"]) == 0
    run = tmp_path / "run"
    train = ["train", "--project", project, "--cohort", cohort, "--features", "r"]
    train += ["--annotations", str(tmp_path / "c" / "annotations"), "--out", str(run)]
    assert main([*train, "--model", "clam-mb", "--epochs", "3", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "classes: normal, lymphocytes, tumour (negative class: normal)" in printed
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["classes"] == ["normal", "lymphocytes", "tumour"]
    assert sum(map(sum, metrics["test"]["confusion_matrix"])) == metrics["test"]["n"] == 3
    assert metrics["test"]["instance_n"] > 0  # the lesion outlines label the test tiles


@pytest.mark.parametrize("classes", [["normal", "luad"], "normal,luad,lusc", ["normal", 3, "lusc"]])
def test_a_model_file_whose_classes_do_not_fit_is_refused(tmp_path, classes):
    from napari_wsi_mil.mil.predict import load_model, save_model

    model = build_model("abmil", 4, n_classes=3, embed_dim=8, attention_dim=4)
    meta = {"model": "abmil", "in_dim": 4, "features": "f", "classes": classes,
            "hparams": {"n_classes": 3, "embed_dim": 8, "attention_dim": 4}}  # fmt: skip
    save_model(tmp_path / "m.safetensors", model, meta)
    with pytest.raises(WsiMilError, match="not a usable model file"):
        load_model(tmp_path / "m.safetensors")
    save_model(tmp_path / "ok.safetensors", model, {**meta, "classes": list(THREE)})
    assert load_model(tmp_path / "ok.safetensors")[0].n_classes == 3
