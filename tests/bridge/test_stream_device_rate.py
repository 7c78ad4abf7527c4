"""`stream.sample_rate: auto` (the default): a live stream runs at the rate its audio device runs
at when the stream starts, on a real audio server (JACK's dummy backend), with PortAudio's devices
read afresh at the start, so a device that appeared since the daemon started is found. An explicit
rate is kept, and a device at a rate the streaming resamplers cannot take is refused by name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.client import Client, RemoteError
from tests.bridge.test_stream import _stream_daemon, _wait_for_hops
from tests.conftest import running_jack

# The name every JACK fixture of this test process uses (tests/conftest.py's jack_server), so that
# these servers take back the same entry of JACK's registry.
SERVER = f"flowstate-test-{os.getpid()}"
ROOT = Path(__file__).resolve().parents[2]
# What the daemon logs once a streaming engine has loaded its model (engines/separation/streaming.py).
LOADED = "separation.stream: passthrough on cpu"


def test_auto_runs_at_the_rate_the_device_runs_at_and_an_explicit_rate_is_kept(tiny_repo: Path,
                                                                              tmp_path: Path) -> None:
    with running_jack(SERVER, tmp_path / "jackd.log", 48000) as server:
        daemon = _stream_daemon(server, tiny_repo)
        try:
            with Client(daemon.zmq_requests, timeout_seconds=60) as client:
                status = client.call("stream.start")
                assert status["sample_rate"] == 48000, status
                assert "device's own rate" in status["sample_rate_choice"], status
                assert status["block_lead_frames"] == 0  # through the resamplers
                client.call("stream.stop")
                # An explicit rate is the one the stream runs at: the device refuses it, and the
                # error says which rate the device runs at, before a model loads for that rate.
                loads = daemon.log().count(LOADED)
                assert loads == 1, daemon.log()
                with pytest.raises(RemoteError) as refused:
                    client.call("stream.start", {"overrides": {"sample_rate": 44100}})
                message = refused.value.message
                assert refused.value.code == "unavailable" and "at 44100 Hz" in message, message
                assert "the device runs at 48000 Hz" in message, message
                assert daemon.log().count(LOADED) == loads, daemon.log()
        finally:
            assert daemon.stop() == 0, daemon.log()


def test_a_device_that_appears_after_the_daemon_started_is_found_at_its_rate(tiny_repo: Path,
                                                                            tmp_path: Path) -> None:
    # No audio server when the daemon starts (an interface not plugged in yet): PortAudio, started
    # by the first stream.start, finds no device. Then one appears, at 44.1 kHz.
    # A budget of at least two blocks, whatever the machine's speed: only then does the stream
    # place its output a block's lead earlier (a one-block budget takes none).
    daemon = _stream_daemon(SERVER, tiny_repo, budget_ms=40.0)
    try:
        with Client(daemon.zmq_requests, timeout_seconds=60) as client:
            with pytest.raises(RemoteError) as nothing:
                client.call("stream.start")
            message = nothing.value.message
            assert nothing.value.code == "unavailable" and "finds no audio device" in message, message
            with running_jack(SERVER, tmp_path / "jackd.log", 44100):
                status = client.call("stream.start")
                assert status["sample_rate"] == 44100, (status, daemon.log())
                assert status["resampler_delay_frames"] == 0
                assert status["block_lead_frames"] == status["block_size"] - 1  # the models' own rate
                running = _wait_for_hops(client)
                assert running["running"] and running["hops"] >= 1
                client.call("stream.stop")
                assert daemon.stop() == 0, daemon.log()  # while the server runs: PortAudio leaves it cleanly
    finally:
        daemon.stop()


def test_a_device_at_a_rate_the_resamplers_cannot_take_is_refused_by_name(tiny_repo: Path, tmp_path: Path) -> None:
    # 44101 Hz against the models' 44100 Hz reduces to 44101:44100, far past stream.max_ratio_terms.
    with running_jack(SERVER, tmp_path / "jackd.log", 44101) as server:
        daemon = _stream_daemon(server, tiny_repo)
        try:
            with Client(daemon.zmq_requests, timeout_seconds=60) as client:
                with pytest.raises(RemoteError) as refused:
                    client.call("stream.start")
                message = refused.value.message
                assert refused.value.code == "unavailable", refused.value
                assert "44101 Hz" in message and "stream.max_ratio_terms" in message and "48000" in message, message
                assert client.call("stream.status")["running"] is False  # and the daemon serves on
        finally:
            assert daemon.stop() == 0, daemon.log()


# A daemon's first stream.start, up to the model's load: read the device's rate, say it, wait; then
# start PortAudio as the stream would when it opens the device, say so, wait.
_FIRST_START = """
import sys
from bridge.config import StreamConfig
from bridge.stream import import_sounddevice
from bridge.stream_manager import StreamManager

settings, why = StreamManager.at_device_rate(StreamConfig())
print(settings.sample_rate, flush=True)
sys.stdin.readline()
import_sounddevice()._initialize()
print("joined", flush=True)
sys.stdin.readline()
"""


def test_reading_the_rate_leaves_the_jack_graph_for_the_models_load(tmp_path: Path) -> None:
    # PortAudio's JACK host API is an active JACK client from the moment PortAudio starts, streams
    # or none. A first start reads the device's rate before it loads the model (which takes every
    # core), and a client left in the graph then misses JACK's cycles: it leaves until the stream
    # opens the device.
    import jack

    with running_jack(SERVER, tmp_path / "jackd.log", 44100) as server:
        probe = server.client("probe")
        child = subprocess.Popen([sys.executable, "-c", _FIRST_START], cwd=ROOT, text=True,
                                 env={**os.environ, **server.env, "PYTHONPATH": str(ROOT)},
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert child.stdin is not None and child.stdout is not None
        try:
            assert child.stdout.readline().strip() == "44100"
            with pytest.raises(jack.JackError):
                probe.get_uuid_for_client_name("PortAudio")
            child.stdin.write("\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "joined"
            assert probe.get_uuid_for_client_name("PortAudio")  # what the probe sees of a PortAudio in the graph
            child.stdin.write("\n")
            child.stdin.flush()
            assert child.wait(timeout=60) == 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            probe.close()
