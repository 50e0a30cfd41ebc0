"""Run one benchmark script on two checkouts in alternation: before / after a change.

Run: ``python benchmarks/bench_before_after.py --before DIR bench_tiling.py -- --slide A``

``DIR`` is another checkout of the repository (e.g. ``git worktree add`` or ``git archive``
of the commit before the change). Each of ``--rounds`` rounds runs the script once in
each checkout (``--processes 1``, the checkout's ``src`` first on ``PYTHONPATH``), in
alternating order, so load that drifts on a shared machine hits both alike. Prints, per
checkout and row, the minimum and median over the rounds of every timing column, and
writes them to ``results/before_after-<script stem>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

ROW_KEYS = ("slide", "mode", "pre_distributed")


def run_once(tree: Path, script: str, extra: list[str]) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    cmd = [sys.executable, str(tree / "benchmarks" / script), "--processes", "1", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    written = [line for line in proc.stdout.splitlines() if line.startswith("results written")]
    return json.loads((tree / written[-1].split(" to ", 1)[1]).read_text())["rows"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    extra = [a for a in args.args if a != "--"]
    trees = {"before": args.before.resolve(), "after": Path(__file__).resolve().parents[1]}
    runs: dict[str, list[list[dict]]] = {name: [] for name in trees}
    for i in range(args.rounds):
        order = list(trees) if i % 2 == 0 else list(trees)[::-1]
        for name in order:
            runs[name].append(run_once(trees[name], args.script, extra))
            print(f"round {i + 1}/{args.rounds}: {name} done", flush=True)
    table = []
    for name, rounds in runs.items():
        for j, first in enumerate(rounds[0]):
            rows = [r[j] for r in rounds]
            out = {"tree": name, **{k: first[k] for k in ROW_KEYS if k in first}}
            for key, value in first.items():
                if key.endswith("_s") and isinstance(value, (int, float)):
                    values = [r[key] for r in rows]
                    out[f"{key} min"] = min(values)
                    out[f"{key} med"] = statistics.median(values)
            table.append(out)
    cols = list(table[0])
    print()
    print(_common.markdown_table(table, cols))
    _common.save(
        f"before_after-{Path(args.script).stem}",
        {
            "script": args.script,
            "args": extra,
            "rounds": args.rounds,
            "trees": {k: str(v) for k, v in trees.items()},
            "rows": table,
            "raw": runs,
        },
    )


if __name__ == "__main__":
    main()
