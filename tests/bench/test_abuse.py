"""The abuse bench's short mode in the suite: a real daemon and a real `flowstate serve` driven over
every wire with containment attempts, poison, cross-protocol POSTs, floods and lifecycle abuse
(bench/abuse.py). The bench prints one table and, last, one JSON line with every row; this reads it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "abuse.py"
ZERO_COLUMNS = ("escapes", "silent", "internal", "deaths")


@pytest.mark.timeout(900)  # about 90 s idle; real jobs, restarts and floods slow down on a shared machine
def test_abuse_short_mode_has_no_escape_silence_internal_answer_or_death() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
    done = subprocess.run([sys.executable, str(BENCH), "--short"], capture_output=True, text=True,
                          timeout=840, env=env)
    lines = done.stdout.strip().splitlines()
    assert lines, f"the bench printed nothing (exit {done.returncode}):\n{done.stderr[-4000:]}"
    report = json.loads(lines[-1])
    table = "\n".join(lines[:-1])
    broken = {
        f"{row['cls']}/{row['wire']}": {column: row[column] for column in ZERO_COLUMNS if row[column]}
        for row in report["rows"]
    }
    broken = {name: counts for name, counts in broken.items() if counts}
    assert not broken, f"abuse that got through, per class/wire: {broken}\n{table}"
    failed_checks = [f"{row['cls']}/{row['wire']}: {row['notes']}" for row in report["rows"] if row["ok"] is False]
    assert not failed_checks, "lifecycle checks that failed:\n" + "\n".join(failed_checks) + f"\n{table}"
    assert done.returncode == 0, f"{table}\n{done.stderr[-4000:]}"
