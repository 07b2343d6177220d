"""`python -m botpulse.bench.plans` (the figures behind RAW_MAX_HOURS and the uptime form) runs,
and both plans of each pair give the same answer on its data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_plan_comparison_runs_and_its_pairs_agree():
    done = subprocess.run(
        [sys.executable, "-m", "botpulse.bench.plans", "--days", "3", "--ranges", "1,2", "--repeat", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    # It exits non-zero when a pair disagrees ("plans disagree", "uptime forms disagree").
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert "one bot, 3 days of 1-minute posts (4320 rows)" in lines[0]
    rows = [line.split() for line in lines if line.strip().split(" ")[0] in ("1", "2")]
    assert [r[0] for r in rows] == ["1", "2"] and all(float(r[2]) > 0 and float(r[4]) > 0 for r in rows)
    assert lines[-1].startswith("uptime over 2 weeks: sorted array")
