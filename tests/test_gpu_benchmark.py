"""The GPU benchmark's smoke mode: the same code as on the GPU, on the CPU, tiny."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu" / "run.py"
SECTIONS = ("environment", "pretrain_step", "extract_model", "cohort", "extract_e2e", "compare")


def _numbers(value):
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)


@pytest.mark.slow
def test_smoke_mode_measures_every_part(tmp_path):
    tiles = next(
        (
            p
            for p in (ROOT / "benchmarks/gpu/_carry/tiles", SHARED_DATA / "tiles-labelled")
            if p.is_dir()
        ),
        None,
    )
    if tiles is None:
        pytest.skip("no labelled tiles (../shared/data/tiles-labelled)")
    # budgets x4: this runs on shared CPUs; they are limits, not durations
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--smoke",
        "--budget-scale",
        "4",
        "--tiles",
        str(tiles),
        "--out",
        str(tmp_path / "out"),
        "--work",
        str(tmp_path / "work"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    payload = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert payload["smoke"] is True
    sections = payload["sections"]
    assert tuple(sections) == SECTIONS
    for name, section in sections.items():
        assert section["status"] == "ok", (name, section.get("error"))
        numbers = list(_numbers({k: v for k, v in section.items() if k != "budget_s"}))
        assert numbers and all(math.isfinite(x) for x in numbers), (name, section)
    methods = {(r["method"], r["compile"]) for r in sections["pretrain_step"]["rows"]}
    assert {m for m, _ in methods} == {"weaksupcon", "simclr", "supcon", "clusiam"}
    assert ("weaksupcon", "eager") in methods
    assert {r["autocast"] for r in sections["extract_model"]["rows"]} == {"off", "bfloat16"}
    assert all(r["patches_per_s"] > 0 for r in sections["extract_e2e"]["rows"])
    encoders = [r["encoder"] for r in sections["compare"]["rows"]]
    assert encoders == ["random", "weaksupcon", "simclr"]
    assert all(0 <= r["novelty_auc"] <= 1 for r in sections["compare"]["rows"])
    assert "SMOKE" in (tmp_path / "out" / "gpu.md").read_text()
