"""`crmml serve` reports a service that refuses to start, with its reason, and exits non-zero.

The service (``serving.service.refuse``) writes a one-line reason to ``CRMML_REFUSAL_FILE``; these
tests stand in for ``bentoml serve`` with a small Python child, so they run in a second.
"""

from __future__ import annotations

import io
import sys
import time

from rich.console import Console

from pipelines.commands.serve import run_service
from serving.champions import describe


def _run(child: str) -> tuple[int, str, float]:
    out = io.StringIO()
    started = time.monotonic()
    code = run_service([sys.executable, "-c", child], {"PATH": ""}, Console(file=out, width=200), poll_seconds=0.1,
                       grace_seconds=2.0)
    return code, out.getvalue(), time.monotonic() - started


def test_refusal_before_workers_exits_with_the_service_code_and_the_reason():
    code, out, _ = _run(
        "import os, sys; open(os.environ['CRMML_REFUSAL_FILE'], 'w').write('ModelLoadError: crmml-churn v1: cannot be loaded'); "
        "sys.exit(3)"
    )
    assert code == 3
    assert "the service refused to start: ModelLoadError: crmml-churn v1: cannot be loaded" in out


def test_a_worker_refusing_stops_the_restart_loop():
    code, out, seconds = _run(
        "import os, time; open(os.environ['CRMML_REFUSAL_FILE'], 'w').write('EOFError'); time.sleep(60)"
    )
    assert code != 0 and "refused to start: EOFError" in out and seconds < 30


def test_a_clean_stop_keeps_its_exit_code():
    code, out, _ = _run("pass")
    assert code == 0 and "refused" not in out


def test_reasons_are_never_empty():
    assert describe(EOFError()) == "EOFError"  # the truncated-pickle error has no message
    assert describe(ValueError("bad\n  value")) == "ValueError: bad value"
