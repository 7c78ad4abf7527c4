"""The daemon asks the hub for model files and nothing else (README, "It does not call home").

huggingface_hub, which every model download goes through, fetches `/api/agent-harnesses` from the
hub once a day to name the program running it, and adds the torch version to each request, unless
`HF_HUB_DISABLE_TELEMETRY` is set; `bridge` sets it. (OpenVINO's telemetry:
tests/engines/test_inference_backend.py.) Here a loopback server stands in for the hub and records
what it is asked, in a fresh home with no such setting in the environment.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

ROOT = Path(__file__).resolve().parents[2]

DOWNLOAD = """
import sys
import bridge.cli  # what `flowstate up` imports first
from huggingface_hub import hf_hub_download
print(hf_hub_download("adefossez/HTDemucs", "htdemucs.yaml"))
"""


class _Hub(http.server.BaseHTTPRequestHandler):
    """Answers a file as the hub's resolve endpoint does; records every request."""

    asked: ClassVar[list[tuple[str, str, str]]] = []

    def _answer(self, body: bool) -> None:
        self.asked.append((self.command, self.path, self.headers.get("user-agent", "")))
        if not self.path.startswith("/adefossez/HTDemucs/resolve/"):
            self.send_error(404)
            return
        data = b"models: ['955717e8']\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", '"e1"')
        self.send_header("X-Repo-Commit", "0" * 40)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def hub() -> Iterator[str]:
    _Hub.asked = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_model_download_asks_the_hub_for_the_file_and_nothing_else(hub: str, tmp_path: Path) -> None:
    quiet = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY",
             "DO_NOT_TRACK", "HF_HOME", "HF_HUB_CACHE")
    env = {key: value for key, value in os.environ.items() if key not in quiet}
    env.update(PYTHONPATH=str(ROOT), HOME=str(tmp_path), HF_ENDPOINT=hub, XDG_CACHE_HOME=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-c", DOWNLOAD], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).read_text() == "models: ['955717e8']\n"
    paths = [path for _, path, _ in _Hub.asked]
    assert paths and all(path == "/adefossez/HTDemucs/resolve/main/htdemucs.yaml" for path in paths), paths
    assert not any("torch/" in agent for _, _, agent in _Hub.asked), json.dumps(_Hub.asked)
