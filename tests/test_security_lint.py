"""Issue #16 item 6: the security pass, ``ruff check --select S`` (flake8-bandit rules) over the project.

Findings in the library are fixed or justified in place (``# noqa: S... - why``); tests and benchmarks
have their own allowances in ``pyproject.toml`` (asserts, our own subprocesses, pseudo-random test data).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_security_rules_find_nothing():
    ruff = Path(sys.executable).parent / "ruff"
    r = subprocess.run([str(ruff), "check", "--select", "S", "--output-format", "concise", "--no-cache",
                        "features", "training", "serving", "pipelines", "bench", "tests"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
