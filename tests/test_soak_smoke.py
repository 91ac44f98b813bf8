"""benchmarks/soak.py keeps working: a few seconds of two sessions and a screening run.

The soak itself (10 minutes, `python -m benchmarks.soak --sessions 3 --minutes 10 --http`) is a
benchmark, not a test; this only checks that it runs as written and reports every measure.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_soak_runs_and_reports_every_measure(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks.soak", "--sessions", "2",
                          "--minutes", "0.15"], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = out.stdout
    for row in ("RSS MB", "open files", "threads", "Python objects (gc)", "open page",
                "upload+grade+heatmap", "sign off", "screening run (8 photos)",
                "reference (fixed CPU work)"):
        assert f"| {row} |" in report, (row, report[-2000:])
    assert "Runtime hasn't been created" not in out.stderr  # one Runtime for every session
