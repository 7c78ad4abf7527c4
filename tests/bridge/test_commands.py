"""One declaration per job command: the README's worked example (tests/bridge/normalize_example.py,
a `normalize` job declared with `job_command` beside its engine) runs on a real daemon over ZeroMQ,
and the registry, the CLI and the docs know it with nothing else written."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from bridge import generate, samples, separate, speech, transcribe, voice
from bridge.client import Client, RemoteError
from bridge.commands import JOBS
from bridge.testing import DaemonProcess

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "tests" / "bridge" / "normalize_example.py"
# The example is imported only in the processes below: importing it here would add `normalize` to
# this test session's registry, and the README's protocol table (tests/bridge/test_docs.py) with it.
WITH_EXAMPLE = "import sys, tests.bridge.normalize_example; from bridge.cli import main; sys.exit(main())"


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    process = DaemonProcess(entry=["-c", WITH_EXAMPLE], env={"PYTHONPATH": str(ROOT)}).start()
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log()


def flowstate(*args: str) -> str:
    """`flowstate ARGS` with the example declared, its standard output."""
    done = subprocess.run([sys.executable, "-c", WITH_EXAMPLE, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    return done.stdout


def test_the_declared_job_runs_over_the_zmq_wire(daemon: DaemonProcess) -> None:
    source = daemon.workdir / "files" / "take.wav"
    t = np.arange(22050) / 22050
    soundfile.write(str(source), 0.1 * np.sin(2 * np.pi * 440 * t), 22050)
    with Client(daemon.zmq_requests, timeout_seconds=30) as client:
        reply = client.call("normalize", {"path": str(source), "peak_dbfs": -6.0})
        assert reply["state"] == "queued"
        outcome = client.wait_jobs([reply["id"]], lambda *_: None, 60)[reply["id"]]
        assert outcome["event"] == "job.done", outcome
        written = Path(outcome["result"]["path"])
        assert written == source.parent / "take (normalized).wav"
        audio, rate = soundfile.read(str(written))
        assert rate == 22050 and 20 * np.log10(np.max(np.abs(audio))) == pytest.approx(-6.0, abs=0.01)
        # The registry entry: its arguments are checked like every command's, with the same message.
        with pytest.raises(RemoteError) as refused:
            client.call("normalize", {"path": str(source), "peak_dbfs": 3.0})
        assert refused.value.code == "bad_request" and "peak_dbfs" in refused.value.message
        # The check runs at once: a file outside paths.roots is refused before any job exists.
        with pytest.raises(RemoteError) as outside:
            client.call("normalize", {"path": str(ROOT / "README.md")})
        assert outside.value.code in ("forbidden", "bad_request")
        described = client.call("commands", {"name": "normalize"})["commands"][0]
        assert [arg["name"] for arg in described["args"]] == ["path", "peak_dbfs", "request_id"]


def test_the_cli_and_the_docs_list_it() -> None:
    assert "normalize" in flowstate("commands")
    assert "| `normalize` | `/flow/normalize` |" in flowstate("commands", "--markdown")


def test_each_job_command_is_declared_under_its_job_kind() -> None:
    # The declaration's name is the kind the queue stores and the capability's messages name.
    kinds = {separate.KIND, generate.KIND, transcribe.KIND, speech.KIND, voice.KIND, samples.KIND}
    assert set(JOBS) == kinds  # and the example is not among them


def test_the_readme_shows_the_example_as_it_is() -> None:
    code = EXAMPLE.read_text()
    shown = code[code.index("class Normalizer"):]
    assert shown in (ROOT / "README.md").read_text()
