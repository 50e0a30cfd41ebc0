"""The generated CLI reference stays in step with the parser."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current():
    env = {**os.environ, "COLUMNS": "100"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "cli_reference.py"), "--check"],
        env=env,
        capture_output=True,
    )
    hint = "docs/cli.md is stale: run COLUMNS=100 python scripts/cli_reference.py"
    assert done.returncode == 0, hint
