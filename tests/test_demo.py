"""`wsi-mil demo` end to end on a tiny cohort: every stage runs and the report is written."""

from __future__ import annotations

import re

from napari_wsi_mil.demo import DemoSettings, demo_job
from napari_wsi_mil.jobs import run_job


def _tiny() -> DemoSettings:
    return DemoSettings(
        slides=8,
        width=1024,
        height=768,
        lesion_fractions=(0.3,),
        test_fraction=0.25,
        pretrain_steps=3,
        pretrain_batch=8,
        mil_epochs={"abmil": 2, "weno": 2, "msclam": 2},
        tile_label_fraction=0.5,
    )


def test_demo_writes_a_report_with_every_model_and_encoder(tmp_path):
    stages = []
    result = run_job(demo_job(tmp_path, _tiny()), lambda e: stages.append(e.stage))
    for n in range(1, 8):
        assert any(s.startswith(f"{n}/7") for s in stages), n
    html = result.report.read_text()
    assert set(result.metrics) == {
        (encoder, model)
        for encoder in ("weaksupcon", "random")
        for model in ("abmil", "weno", "msclam")
    }
    for png in ("pca-weaksupcon.png", "pca-random.png", "roc.png", "test-slide.png"):
        assert (tmp_path / png).stat().st_size > 1000
        assert png in html
    # the metrics table names every pair, with numbers
    for encoder, model in result.metrics:
        assert re.search(rf"{encoder}.*?{model}", html, re.S)
    # a rerun resumes: nothing is pretrained or extracted again
    encoder_mtime = (tmp_path / "weaksupcon.safetensors").stat().st_mtime_ns
    again = []
    run_job(demo_job(tmp_path, _tiny()), lambda e: again.append(e.stage))
    assert (tmp_path / "weaksupcon.safetensors").stat().st_mtime_ns == encoder_mtime
    assert not any("WeakSupCon pretraining" in s for s in again)
