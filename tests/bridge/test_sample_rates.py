"""Sample rates against a real daemon: odd file rates separate, odd live rates are refused in time.

A file at 44101 Hz (coprime with the model's 44.1 kHz) used to make julius build a 7.3 GiB kernel;
a live stream at 44101 Hz a 14.5 GiB matrix. Now the file is separated at its own rate in bounded
memory (engines/resample.py; the bound itself is asserted in tests/engines/test_resample.py) and a
live rate is refused with `bad_request` before anything is built. No audio device is needed: the
rate is checked before the stream opens one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from bridge.client import Client, RemoteError
from bridge.testing import DaemonProcess, tiny_htdemucs_repo

STEMS = ["drums", "bass", "other", "vocals"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    repo = tiny_htdemucs_repo(tmp_path_factory.mktemp("models"), depth=3)
    process = DaemonProcess(overrides={
        "models": {"demucs_repo": str(repo)},
        "separate": {"model": "tiny", "engine_device": "cpu", "threads": 1},
        "stream": {"model": "tiny", "engine_device": "cpu", "threads": 1},
    }).start(timeout_seconds=60)  # a loaded machine can take longer than the default 20 s
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log()


def write_wav(path: Path, seconds: float, sample_rate: int) -> Path:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.stack([tone, 0.8 * tone], axis=1).astype(np.float32), sample_rate)
    return path


def test_a_44101_hz_file_is_separated_into_stems_at_44101_hz(daemon: DaemonProcess) -> None:
    source = write_wav(daemon.workdir / "files" / "odd" / "take.wav", 2.0, 44101)
    with Client(daemon.zmq_requests, timeout_seconds=30) as client:
        job = client.call("stems.separate", {"path": str(source)})
        outcome = client.wait_jobs([job["id"]], lambda name, data: None, 120)[job["id"]]
    assert outcome["event"] == "job.done", outcome
    assert outcome["result"]["sample_rate"] == 44101
    assert set(outcome["result"]["paths"]) == set(STEMS)
    for path in outcome["result"]["paths"].values():
        info = soundfile.info(path)
        assert (info.samplerate, info.frames, info.channels) == (44101, 88202, 2)


@pytest.mark.parametrize("rate", [500, 400000])
def test_a_file_rate_outside_the_range_is_refused_when_the_request_arrives(daemon: DaemonProcess, rate: int) -> None:
    source = write_wav(daemon.workdir / "files" / "rates" / f"at{rate}.wav", 0.5, rate)
    with Client(daemon.zmq_requests, timeout_seconds=30) as client:
        with pytest.raises(RemoteError) as caught:
            client.call("stems.separate", {"path": str(source)})
        assert str(source) not in json.dumps(client.call("job.list")["jobs"])  # no job was queued
    assert caught.value.code == "bad_request"
    assert str(rate) in caught.value.message
    assert "separate.min_sample_rate" in caught.value.message and "separate.max_sample_rate" in caught.value.message


def test_stream_start_with_an_odd_rate_override_is_bad_request(daemon: DaemonProcess) -> None:
    with Client(daemon.zmq_requests, timeout_seconds=60) as client:
        with pytest.raises(RemoteError) as caught:
            client.call("stream.start", {"overrides": {"sample_rate": 44101}})
        assert caught.value.code == "bad_request"
        assert "44101" in caught.value.message and "48000" in caught.value.message
        assert "stream.max_ratio_terms" in caught.value.message
        # The bound itself is config's, not the request's.
        with pytest.raises(RemoteError) as raised:
            client.call("stream.start", {"overrides": {"sample_rate": 44101, "max_ratio_terms": 50000}})
        assert raised.value.code == "forbidden" and "stream.max_ratio_terms" in raised.value.message
        assert client.call("ping")["reply"] == "pong"
        assert client.call("stream.status")["running"] is False
