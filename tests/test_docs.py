"""The generated CLI reference stays in step with the parser; the README works on the
napari hub and PyPI (absolute image URLs in the repository named in pyproject)."""

import os
import re
import subprocess
import sys
import tomllib
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


def test_readme_images_are_absolute_urls_into_the_repository():
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    repo = urls["Source Code"].removeprefix("https://github.com/")
    base = f"https://raw.githubusercontent.com/{repo}/main/"
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)", (ROOT / "README.md").read_text())
    assert images
    for url in images:
        assert url.startswith(base), f"README image {url} is not under {base}"
        assert (ROOT / url.removeprefix(base)).is_file(), url
