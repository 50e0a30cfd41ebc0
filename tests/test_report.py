"""The demo's report on hand-made results: the verdict (headline and red banner) at chance,
above it and with a collapsed encoder; the findings' numbers; report.html showing exactly
what report.json holds."""

from __future__ import annotations

import html
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from napari_wsi_mil.report import (
    METRIC_COLUMNS,
    findings,
    learned,
    roc_figure,
    slide_figure,
    verdict,
    write_report,
)

HEADLINE = ("weaksupcon", "abmil")
HEALTHY = {
    "weaksupcon": {"spread": 0.4, "collapse_warning": None},
    "random": {"spread": None, "collapse_warning": None},
}


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


def _findings(metrics, encoders=HEALTHY, figures=()):
    return findings(
        title="t",
        metrics=metrics,
        encoders=encoders,
        headline=HEADLINE,
        summary=["a line"],
        settings={"slides": 40},
        figures=list(figures),
        timings={"tiling": {"wall_s": 2.0, "cpu_s": 3.5}},
    )


# -- verdict -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "above"),
    [(None, False), ([0.5, 0.9], False), ([0.49, 1.0], False), ([0.51, 1.0], True)],
)
def test_learned_means_the_interval_lies_strictly_above_chance(interval, above):
    assert learned({"auc": 0.7, "auc_interval": interval}) is above


def test_verdict_on_a_good_result_has_no_banner():
    ok, sentence, alarms = verdict(_results(0.93, (0.81, 1.0)), HEALTHY, HEADLINE)
    assert ok and alarms == []
    assert sentence.startswith("Learning happened: WeakSupCon + AB-MIL")
    assert "bag AUC 0.93 (95% interval 0.81-1.00)" in sentence and "20 held-out" in sentence
    # the same model on the other encoder is named for comparison
    assert sentence.endswith("For comparison, bag AUC of random-init + AB-MIL 0.93.")


def test_verdict_at_chance_and_below_raises_the_banner():
    ok, sentence, alarms = verdict(_results(0.62, (0.4, 0.83)), HEALTHY, HEADLINE)
    assert not ok and sentence.startswith("No learning shown")
    assert "no better than chance (0.5)" in sentence
    assert len(alarms) == 2 and all("at chance" in a for a in alarms)
    assert "WeakSupCon + AB-MIL" in alarms[0] and "random-init + AB-MIL" in alarms[1]
    # an inverted result (the AUC 0.11) is no learning either
    ok, _, alarms = verdict(_results(0.11, (0.0, 0.3)), HEALTHY, HEADLINE)
    assert not ok and len(alarms) == 2


def test_verdict_without_a_bag_auc_says_why_and_raises_the_banner():
    results = _results(None, (0.0, 1.0))
    for r in results:
        r["auc_interval"] = None  # the test slides hold one class only
    ok, sentence, alarms = verdict(results, HEALTHY, HEADLINE)
    assert not ok and "no bag AUC (the test slides hold one class only)" in sentence
    assert "For comparison" not in sentence  # no AUC to compare with
    assert len(alarms) == 2 and all("no bag AUC" in a for a in alarms)


def test_verdict_on_a_collapsed_encoder_raises_the_banner():
    collapsed = {**HEALTHY, "weaksupcon": {"spread": 0.006, "collapse_warning": "spread 0.006"}}
    ok, sentence, alarms = verdict(_results(0.9, (0.7, 1.0)), collapsed, HEADLINE)
    assert not ok and sentence.startswith("Learning is not shown") and "collapsed" in sentence
    assert alarms == ["The weaksupcon encoder collapsed: spread 0.006"]


def test_verdict_on_a_collapsed_encoder_at_chance_names_both():
    collapsed = {**HEALTHY, "weaksupcon": {"spread": 0.006, "collapse_warning": "spread 0.006"}}
    ok, sentence, alarms = verdict(_results(0.5, (0.3, 0.7)), collapsed, HEADLINE)
    assert not ok and sentence.startswith("No learning shown")
    assert alarms[0] == "The weaksupcon encoder collapsed: spread 0.006"
    assert len(alarms) == 3 and all("at chance" in a for a in alarms[1:])


def test_verdict_names_a_model_whose_training_failed():
    results = _results(0.9, (0.7, 1.0))
    results[1]["failed"] = "training failed: bag AUC 0.20 on its own training slides"
    ok, _, alarms = verdict(results, HEALTHY, HEADLINE)
    assert ok  # the headline result is fine; the failed one is named in the banner
    assert alarms == [f"random-init + AB-MIL: {results[1]['failed']}"]


# -- findings ------------------------------------------------------------------------


def test_findings_hold_every_metric_under_its_report_name():
    metrics = {
        ("weaksupcon", "abmil"): {
            "auc": 0.875,
            "auc_interval": (0.6, 1.0),
            "balanced_accuracy": 0.8,
            "balanced_accuracy_interval": (0.55, 0.95),
            "instance_auc": 0.91,
            "dice": 0.42,
            "specificity": 0.9,
            "n": 20,
            "n_positive": 8,
            "n_negative": 12,
            "failed": None,
        },
        ("random", "abmil"): {"auc": 0.55, "auc_interval": (0.3, 0.8), "n": 20},
    }
    report = _findings(metrics, figures=[("ROC", Path("roc.png"))])
    good, chance = report["results"]
    assert good == {
        "encoder": "weaksupcon",
        "model": "abmil",
        "auc": 0.875,
        "auc_interval": [0.6, 1.0],
        "balanced_accuracy": 0.8,
        "balanced_accuracy_interval": [0.55, 0.95],
        "instance_auc": 0.91,
        "dice": 0.42,
        "specificity": 0.9,
        "encoder_spread": 0.4,
        "n_test_slides": 20,
        "n_tumour": 8,
        "n_normal": 12,
        "failed": None,
        "above_chance": True,
    }
    assert chance["above_chance"] is False and chance["encoder_spread"] is None
    assert chance["dice"] is None and chance["n_tumour"] is None  # absent metrics: None
    ok, sentence, alarms = verdict(report["results"], HEALTHY, HEADLINE)
    assert (report["learning_happened"], report["headline"], report["alarms"]) == (
        ok,
        sentence,
        alarms,
    )
    assert ok and len(alarms) == 1 and report["headline_pair"] == list(HEADLINE)
    assert report["figures"] == [{"caption": "ROC", "path": "roc.png"}]
    assert json.loads(json.dumps(report)) == report  # JSON-ready as it is


# -- report.html and report.json -----------------------------------------------------


class _Page(HTMLParser):
    """The text of the table cells by row, the image sources and the banner's text."""

    def __init__(self):
        super().__init__()
        self.rows, self.images, self.banner = [], [], []
        self._in = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.rows[-1].append("")
            self._in.add("cell")
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "div" and attrs.get("class") == "banner":
            self._in.add("banner")

    def handle_endtag(self, tag):
        self._in.discard({"td": "cell", "th": "cell", "div": "banner"}.get(tag))

    def handle_data(self, data):
        if "cell" in self._in:
            self.rows[-1][-1] += data
        if "banner" in self._in:
            self.banner.append(data)


def _shown(value) -> str:
    """How the report table shows a number of report.json."""
    if value is None:
        return "\N{EN DASH}"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "\N{EN DASH}".join(f"{v:.2f}" for v in value)
    return f"{value:.3f}"


def test_report_html_shows_every_number_of_report_json(tmp_path):
    metrics = {
        ("weaksupcon", "abmil"): {"auc": 0.55, "auc_interval": (0.3, 0.8), "n": 20},
        ("random", "abmil"): {
            "auc": 0.95,
            "auc_interval": (0.85, 1.0),
            "n": 20,
            "n_positive": 9,
            "n_negative": 11,
            "dice": 0.4,
            "instance_auc": 0.8765,
        },
    }
    figure = tmp_path / "figures" / "roc.png"
    report = _findings(metrics, figures=[("ROC <curves>", figure)])
    page = write_report(tmp_path / "out" / "report.html", report)
    assert page == tmp_path / "out" / "report.html"
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report
    assert sorted(p.name for p in page.parent.iterdir()) == ["report.html", "report.json"]
    parsed = _Page()
    text = page.read_text()
    parsed.feed(text)
    header, *rows = parsed.rows
    assert header == ["encoder", "model"] + [label for _, label in METRIC_COLUMNS]
    assert rows == [
        [r["encoder"], r["model"]] + [_shown(r[key]) for key, _ in METRIC_COLUMNS]
        for r in report["results"]
    ]
    assert parsed.images == ["../figures/roc.png"]  # relative to the page
    assert "<h2>ROC &lt;curves&gt;</h2>" in text  # captions are escaped
    # the headline first, then the banner with every alarm
    assert text.index(html.escape(report["headline"])) < text.index("class='banner'")
    assert parsed.banner == report["alarms"] and "background:#c62828" in text
    assert "tiling: 2.0 s (CPU 3.5 s)" in text and "<li>a line</li>" in text


def test_report_html_without_alarms_has_no_banner(tmp_path):
    metrics = {
        ("weaksupcon", "abmil"): {"auc": 0.95, "auc_interval": (0.85, 1.0), "n": 20},
        ("random", "abmil"): {"auc": 0.9, "auc_interval": (0.7, 1.0), "n": 20},
    }
    report = _findings(metrics)
    assert report["learning_happened"] and report["alarms"] == []
    text = write_report(tmp_path / "report.html", report).read_text()
    assert "banner" not in text and html.escape(report["headline"]) in text


# -- figures -------------------------------------------------------------------------


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_roc_figure_has_a_panel_per_encoder_and_skips_one_class_results(tmp_path):
    one = roc_figure(
        {"weaksupcon": {"abmil": ([0, 1, 1, 0], [0.1, 0.8, 0.7, 0.3])}}, tmp_path / "1.png"
    )
    two = roc_figure(
        {
            "weaksupcon": {"abmil": ([0, 1, 1, 0], [0.1, 0.8, 0.7, 0.3])},
            "random": {"abmil": ([1, 1, 1], [0.2, 0.4, 0.9])},  # one class: no curve
        },
        tmp_path / "2.png",
    )
    (w1, h1), (w2, h2) = _png_size(one), _png_size(two)
    assert h1 == h2 and w2 == pytest.approx(2 * w1, rel=0.02)


def test_slide_figure_writes_a_png(tmp_path):
    coords = np.array([[0, 0], [64, 0], [0, 64]])
    path = slide_figure(
        np.zeros((16, 16, 3), np.uint8),
        (128, 128),
        coords,
        64,
        np.array([0.9, 0.2, 0.6]),
        0.5,
        [np.array([[0, 0], [60, 0], [60, 60], [0, 0]], float)],
        "slide 1",
        tmp_path / "slide.png",
    )
    assert path == tmp_path / "slide.png" and _png_size(path)[0] > 0
