"""The daemon asks the hub for model files and nothing else (README, "It does not call home").

huggingface_hub, which every model download goes through, fetches `/api/agent-harnesses` from the
hub once a day to name the program running it, and adds the torch version to each request, unless
`HF_HUB_DISABLE_TELEMETRY` is set; `bridge` sets it. (OpenVINO's telemetry:
tests/engines/test_inference_backend.py.) Here a loopback server stands in for the hub and records
what it is asked, in a fresh home with no such setting in the environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bridge.testing import hub_stand_in

ROOT = Path(__file__).resolve().parents[2]
YAML = "/adefossez/HTDemucs/resolve/main/htdemucs.yaml"

DOWNLOAD = """
import sys
import bridge.cli  # what `flowstate up` imports first
from huggingface_hub import hf_hub_download
print(hf_hub_download("adefossez/HTDemucs", "htdemucs.yaml"))
"""


def test_a_model_download_asks_the_hub_for_the_file_and_nothing_else(tmp_path: Path) -> None:
    quiet = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY",
             "DO_NOT_TRACK", "HF_HOME", "HF_HUB_CACHE")
    env = {key: value for key, value in os.environ.items() if key not in quiet}
    with hub_stand_in({YAML: b"models: ['955717e8']\n"}) as hub:
        env.update(PYTHONPATH=str(ROOT), HOME=str(tmp_path), HF_ENDPOINT=hub.url,
                   XDG_CACHE_HOME=str(tmp_path / "cache"))
        done = subprocess.run([sys.executable, "-c", DOWNLOAD], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).read_text() == "models: ['955717e8']\n"
    paths = [path for _, path, _ in hub.asked]
    assert paths and all(path == YAML for path in paths), paths
    assert not any("torch/" in agent for _, _, agent in hub.asked), json.dumps(hub.asked)
