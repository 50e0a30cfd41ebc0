"""`wsi-mil demo` end to end on a tiny real-tile cohort: every stage runs, the report and
report.json are written and agree (the report on hand-made results: test_report.py)."""

from __future__ import annotations

import json
import re

from napari_wsi_mil.demo import PRETRAINING, DemoSettings, demo_job
from napari_wsi_mil.jobs import run_job


def _tiny() -> DemoSettings:
    return DemoSettings(
        slides=8,
        rows=3,
        cols=4,
        lesion_fractions=(0.3,),
        test_fraction=0.5,
        pretraining={**PRETRAINING, "steps_per_epoch": 3, "batch_size": 8},
        mil_epochs={"abmil": 2, "weno": 2, "msclam": 2},
        tile_label_fraction=0.5,
    )


def test_demo_writes_a_report_with_every_model_and_encoder(tmp_path):
    stages = []
    result = run_job(demo_job(tmp_path, _tiny()), lambda e: stages.append(e.stage))
    for n in range(1, 8):
        assert any(s.startswith(f"{n}/7") for s in stages), n
    html = result.report.read_text()
    pairs = {(e, m) for e in ("weaksupcon", "random") for m in ("abmil", "weno", "msclam")}
    assert set(result.metrics) == pairs
    for png in ("pca-weaksupcon.png", "pca-random.png", "roc.png", "test-slide.png"):
        assert (tmp_path / png).stat().st_size > 1000
        assert png in html
    # report.json holds every number of the table, the same as the metrics computed
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == json.loads(json.dumps(result.findings))
    assert {(r["encoder"], r["model"]) for r in report["results"]} == pairs
    spread = report["encoders"]["weaksupcon"]["spread"]
    assert 0 < spread and report["encoders"]["random"]["spread"] is None
    for r in report["results"]:
        metrics = result.metrics[(r["encoder"], r["model"])]
        assert r["n_test_slides"] == 4
        assert r["auc"] == metrics["auc"] and r["dice"] == metrics["dice"]
        assert r["balanced_accuracy"] == metrics["balanced_accuracy"]
        assert r["instance_auc"] == metrics["instance_auc"]
        low, high = r["auc_interval"]
        assert low <= r["auc"] <= high
        assert r["encoder_spread"] == (spread if r["encoder"] == "weaksupcon" else None)
        assert re.search(rf"{r['encoder']}</td><td>{r['model']}</td><td>{r['auc']:.3f}", html)
    # the first paragraph is the verdict, then the banner when something is at chance
    assert html.index(report["headline"]) < html.index("<ul>")
    assert ("class='banner'" in html) == bool(report["alarms"])
    assert report["headline"].startswith(("Learning happened", "No learning", "Learning is not"))
    assert report["timings"]["pretraining"]["wall_s"] > 0
    # a rerun resumes: nothing is pretrained or extracted again
    encoder_mtime = (tmp_path / "weaksupcon.safetensors").stat().st_mtime_ns
    again = []
    run_job(demo_job(tmp_path, _tiny()), lambda e: again.append(e.stage))
    assert (tmp_path / "weaksupcon.safetensors").stat().st_mtime_ns == encoder_mtime
    assert not any("WeakSupCon pretraining" in s for s in again)
