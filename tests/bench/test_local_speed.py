"""bench/local_speed.py, the catalogue table's speed column: its help, and one cheap model through
the real script (no timing is asserted: only that a figure comes back, named as the table names it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.catalogue_table import SPEED_FILE, read_speeds
from engines.catalogue import CATALOGUE

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "local_speed.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
    return subprocess.run([sys.executable, str(BENCH), *args], check=False, capture_output=True, text=True,
                          timeout=600, env={**env, "HF_HUB_OFFLINE": "1"}, cwd=ROOT)


def test_the_help_names_every_model_it_can_time() -> None:
    done = _run("--help")
    assert done.returncode == 0, done.stderr
    for name in ("htdemucs", "spleeter", "umxhq", "musicgen-small", "whisper-tiny", "piper-joe", "minilm", "--write"):
        assert name in done.stdout, name


def test_an_unknown_model_is_refused_naming_the_ones_it_knows() -> None:
    done = _run("--models", "wavenet")
    assert done.returncode == 2
    assert "wavenet" in done.stderr and "piper-joe" in done.stderr


@pytest.mark.timeout(600)
def test_one_cheap_model_gives_a_figure_and_its_ratio_to_the_baseline_without_writing() -> None:
    before = SPEED_FILE.read_bytes() if SPEED_FILE.is_file() else None
    done = _run("--models", "piper-joe")
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert list(result["models"]) == ["en_US-joe-medium"]
    figure = result["models"]["en_US-joe-medium"]
    assert figure["unit"] == "× realtime" and figure["value"] > 0 and figure["per_baseline"] > 0
    assert result["baseline"]["unit"] == "GFLOP/s" and result["baseline"]["value"] > 0
    assert result["command"].startswith("nice -n 19 python bench/local_speed.py --models piper-joe")
    assert (SPEED_FILE.read_bytes() if SPEED_FILE.is_file() else None) == before  # no --write, no change


def test_the_committed_figures_name_catalogue_entries() -> None:
    speeds = read_speeds()
    assert speeds, f"{SPEED_FILE} is missing: run bench/local_speed.py --write"
    models = {entry.model for entry in CATALOGUE}
    assert set(speeds["models"]) <= models and set(speeds["not_measured"]) <= models
    for key in ("date", "machine", "note", "command", "baseline"):
        assert speeds[key], key
