"""The mask threshold is a fact of the model: WENO's fitted bag threshold, else 0.5.

A hand-made WENO: identity encoder and a student whose positive-minus-negative logit is
``x0 + 2``, so a tile's p1 is ``sigmoid(x0 + 2)``. Normal tiles (x0 ~ N(0, 1)) are
nearly all above 0.5 (as WENO's were on the semi-real benchmark) and tumour tiles
(x0 ~ N(10, 1)) are all above ``t = sigmoid(7)``, the bag threshold a fit would give.
"""

import csv
import json

import numpy as np
import pytest
import torch

from mil_fixtures import feature_cohort
from napari_wsi_mil.jobs import run_job
from napari_wsi_mil.mil.bags import load_bags
from napari_wsi_mil.mil.infer import evaluate_predictions, infer_job
from napari_wsi_mil.mil.predict import load_model, recorded_mask_threshold, save_model
from napari_wsi_mil.mil.registry import build_model
from napari_wsi_mil.review.analyse import model_mask_threshold_of, read_analysis
from napari_wsi_mil.review.export import export_predictions_job

DIM = 16
T = float(torch.sigmoid(torch.tensor(7.0)))  # between every normal and every tumour tile


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return feature_cohort(
        tmp_path_factory.mktemp("mask"), n_cases=8, shift=10.0, two_slide_cases=0, test_fraction=0
    )


def _weno():
    model = build_model("weno", DIM, embed_dim=DIM)
    with torch.no_grad():
        model.encoder.linear.weight.copy_(torch.eye(DIM))  # BatchNorm in eval: identity
        model.encoder.linear.bias.zero_()
        model.student.weight.zero_()
        model.student.weight[1, 0] = 1.0
        model.student.bias.copy_(torch.tensor([0.0, 2.0]))
    return model.eval()


def _save(path, model, **extra):
    meta = {
        "model": "weno",
        "in_dim": DIM,
        "hparams": {"embed_dim": DIM},
        "threshold": T,
        "features": "f",
        "feature_attrs": {"encoder": "synthetic"},
        **extra,
    }
    save_model(path, model, meta)
    return path


def test_the_hand_made_weno_is_what_the_test_says(cohort):
    store, table, truth = cohort
    model = _weno()
    for slide_id, tiles in truth.items():
        x = torch.from_numpy(store.read_result("features", "f", slide_id)[0]["features"])
        p1 = model(x).instance_probability.detach().numpy()
        np.testing.assert_allclose(p1, torch.sigmoid(x[:, 0] + 2).numpy(), rtol=1e-4)
        assert ((p1 >= T) == (tiles == 1)).all()


def test_evaluate_bags_cuts_weno_masks_at_its_bag_threshold(cohort):
    from napari_wsi_mil.mil.train import evaluate_bags

    store, table, _ = cohort
    bags = load_bags(store, table, "f")
    model = _weno()
    assert model.fits_threshold and model.mask_threshold(T) == T
    abmil = build_model("abmil", DIM)
    assert not abmil.fits_threshold and abmil.mask_threshold(T) == 0.5
    at_t = evaluate_bags(model, bags, T)
    assert at_t["balanced_accuracy"] == 1.0
    assert at_t["dice"] == 1.0 and at_t["specificity"] == 1.0
    at_half = evaluate_bags(model, bags, T, mask_threshold=0.5)
    assert at_half["specificity"] < 0.1  # nearly every normal tile is above 0.5
    assert at_half["dice"] < 0.6


def _tiles_csv(pred_dir, slide_id):
    with open(pred_dir / "tiles" / f"{slide_id}.csv", newline="") as fh:
        return np.array([float(r["instance_probability"]) for r in csv.DictReader(fh)])


def test_infer_records_the_models_mask_threshold_and_evaluate_uses_it(cohort, tmp_path):
    store, table, truth = cohort
    model_path = _save(tmp_path / "model.safetensors", _weno(), mask_threshold=T)
    assert recorded_mask_threshold(load_model(model_path)[1]) == T
    assert model_mask_threshold_of(model_path) == T
    pred = tmp_path / "pred"
    geojson = tmp_path / "geojson"
    report = run_job(infer_job(store, model_path, out_dir=pred, name="weno"))
    run_job(export_predictions_job(store, "weno", list(report.probabilities), geojson_dir=geojson))
    assert report.threshold == report.mask_threshold == T
    with open(pred / "slides.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {float(r["mask_threshold"]) for r in rows} == {T}
    for row in rows:  # a slide called negative has no tumour tile, one called positive has
        p = store.read_result("predictions", "weno", row["slide_id"])[0]["instance_probability"]
        assert int(row["prediction"]) == int((p >= T).any())
        assert read_analysis(store, row["slide_id"], "weno").mask_threshold == T
    # the GeoJSON mask of a negative slide is empty
    negative = next(r["slide_id"] for r in rows if int(r["prediction"]) == 0)
    mask = json.loads((geojson / f"{negative}.mask.geojson").read_text())
    assert mask["features"] == []
    metrics = evaluate_predictions(pred, table, project=store)
    assert metrics["mask_threshold"] == T
    assert metrics["dice"] == 1.0 and metrics["specificity"] == 1.0
    # bag accuracy is scored at the decision threshold the predictions were made with
    assert {float(r["threshold"]) for r in rows} == {T}
    labels = table.labels()
    correct = [int(r["prediction"]) == labels[r["slide_id"]] for r in rows]
    assert metrics["accuracy"] == pytest.approx(np.mean(correct))

    # an explicit mask threshold is recorded and evaluated instead
    run_job(infer_job(store, model_path, out_dir=tmp_path / "half", mask_threshold=0.5))
    metrics = evaluate_predictions(tmp_path / "half", table, project=store)
    assert metrics["mask_threshold"] == 0.5 and metrics["specificity"] < 0.1


def test_model_files_and_prediction_folders_without_a_mask_threshold_use_half(cohort, tmp_path):
    store, table, _ = cohort
    old_model = _save(tmp_path / "old.safetensors", _weno())  # no mask_threshold key
    assert model_mask_threshold_of(old_model) == 0.5
    assert model_mask_threshold_of(None) == 0.5
    assert model_mask_threshold_of(tmp_path / "missing.safetensors") == 0.5
    report = run_job(infer_job(store, old_model, out_dir=tmp_path / "pred", name="old"))
    assert report.threshold == T and report.mask_threshold == 0.5
    metrics = evaluate_predictions(tmp_path / "pred", table, project=store)
    assert metrics["mask_threshold"] == 0.5 and metrics["specificity"] < 0.1

    # a prediction folder from before the column: 0.5
    new_model = _save(tmp_path / "new.safetensors", _weno(), mask_threshold=T)
    run_job(infer_job(store, new_model, out_dir=tmp_path / "older"))
    path = tmp_path / "older" / "slides.csv"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(path, "w", newline="") as fh:
        fields = [k for k in rows[0] if k != "mask_threshold"]
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    metrics = evaluate_predictions(tmp_path / "older", table, project=store)
    assert metrics["mask_threshold"] == 0.5 and metrics["specificity"] < 0.1
