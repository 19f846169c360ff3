"""`edge-agent demo` through the real CLI: it runs, scripts its faults, and reports no loss."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_and_reports_a_clean_summary() -> None:
    # More devices than the webhook's 8 deliveries in flight, so the drainer has to queue.
    r = subprocess.run(
        [sys.executable, "-m", "edge_agent", "demo", "--devices", "12", "--duration", "8"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "bad signatures 0" in out and "dead letters 0" in out
    assert re.search(r"booking\.request_expired\s+1\b", out), out[-2000:]
    assert "(reconciled: missed while disconnected)" in out
    assert re.search(r"latency device event -> receiver: p50 \d+ ms, p99 \d+ ms", out)
    assert out.rstrip().endswith("OK")
