"""`wsi-mil demo` end to end on a tiny real-tile cohort: every stage runs, the report and
report.json are written and agree; the report's verdict on chance-level and good results."""

from __future__ import annotations

import json
import re

from napari_wsi_mil.demo import HEADLINE, PRETRAINING, DemoSettings, demo_job
from napari_wsi_mil.jobs import run_job
from napari_wsi_mil.report import findings, verdict, write_report


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


def _results(auc, interval, encoder_spread=0.4):
    return [
        {
            "encoder": encoder,
            "model": "abmil",
            "auc": auc,
            "auc_interval": list(interval),
            "n_test_slides": 20,
            "encoder_spread": encoder_spread if encoder == "weaksupcon" else None,
        }
        for encoder in ("weaksupcon", "random")
    ]


HEALTHY = {
    "weaksupcon": {"spread": 0.4, "collapse_warning": None},
    "random": {"spread": None, "collapse_warning": None},
}


def test_verdict_on_a_good_result_has_no_banner():
    ok, sentence, alarms = verdict(_results(0.93, (0.81, 1.0)), HEALTHY, HEADLINE)
    assert ok and alarms == []
    assert sentence.startswith("Learning happened: WeakSupCon + AB-MIL")
    assert "bag AUC 0.93 (95% interval 0.81-1.00)" in sentence and "20 held-out" in sentence


def test_verdict_at_chance_and_below_raises_the_banner():
    ok, sentence, alarms = verdict(_results(0.62, (0.4, 0.83)), HEALTHY, HEADLINE)
    assert not ok and sentence.startswith("No learning shown")
    assert len(alarms) == 2 and all("at chance" in a for a in alarms)
    assert "WeakSupCon + AB-MIL" in alarms[0] and "random-init + AB-MIL" in alarms[1]
    # an inverted result (the AUC 0.11) is no learning either
    ok, _, alarms = verdict(_results(0.11, (0.0, 0.3)), HEALTHY, HEADLINE)
    assert not ok and len(alarms) == 2


def test_verdict_on_a_collapsed_encoder_raises_the_banner():
    collapsed = {**HEALTHY, "weaksupcon": {"spread": 0.006, "collapse_warning": "spread 0.006"}}
    ok, sentence, alarms = verdict(_results(0.9, (0.7, 1.0)), collapsed, HEADLINE)
    assert not ok and "collapsed" in sentence
    assert alarms == ["The weaksupcon encoder collapsed: spread 0.006"]


def test_verdict_names_a_model_whose_training_failed():
    results = _results(0.9, (0.7, 1.0))
    results[1]["failed"] = "training failed: bag AUC 0.20 on its own training slides"
    ok, _, alarms = verdict(results, HEALTHY, HEADLINE)
    assert ok  # the headline result is fine; the failed one is named in the banner
    assert alarms[0] == f"random-init + AB-MIL: {results[1]['failed']}"


def test_report_html_shows_the_banner_and_json_every_number(tmp_path):
    metrics = {
        ("weaksupcon", "abmil"): {"auc": 0.55, "auc_interval": (0.3, 0.8), "n": 20},
        ("random", "abmil"): {"auc": 0.95, "auc_interval": (0.85, 1.0), "n": 20, "dice": 0.4},
    }
    report = findings(
        title="t",
        metrics=metrics,
        encoders=HEALTHY,
        headline=HEADLINE,
        summary=["a line"],
        settings={"slides": 40},
        figures=[],
        timings={"tiling": {"wall_s": 2.0, "cpu_s": 3.5}},
    )
    html = write_report(tmp_path / "report.html", report).read_text()
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert [r["above_chance"] for r in report["results"]] == [False, True]
    assert report["results"][1]["dice"] == 0.4 and report["results"][0]["encoder_spread"] == 0.4
    assert "class='banner'" in html and "background:#c62828" in html
    assert "0.30&ndash;0.80" in html and "0.400" in html and "tiling: 2.0 s (CPU 3.5 s)" in html
    assert not report["learning_happened"]
