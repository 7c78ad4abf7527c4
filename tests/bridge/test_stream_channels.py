"""A live stream on the device channels the producer picks (`stream.first_input`, `first_output`).

On a Mac the DAW's audio reaches the daemon through a loopback device (BlackHole), where what goes
out on output k comes back in on input k: the stream has to read and write channels apart from
each other, or its stems come back into its input. Here, on the real JACK server (2 capture and
10 playback ports), a mono stream reads input 2 only and writes its mix to output 3 only.

On a Mac, too, a process that may not use the microphone gets exact 0s from every input, a
loopback device's included, and no error: a stream whose inputs have been all 0s since it started
says so, once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bridge.client import Client, RemoteError
from bridge.config import StreamConfig
from bridge.doctor import stream_device_check
from bridge.stream import SILENT_INPUT_SECONDS
from bridge.testing import DaemonProcess
from tests.bridge.test_cli import flowstate
from tests.bridge.test_stream import SAMPLE_RATE, Rig, _best_lag, _noise, _stream_daemon, _tail_after
from tests.conftest import Events, JackServer


def test_the_stream_reads_and_writes_only_the_device_channels_it_is_given(
    jack_server: JackServer, tiny_repo: Path, tmp_path: Path
) -> None:
    daemon = _stream_daemon(jack_server, tiny_repo, tmp_path, channels=1, first_input=2, first_output=3)
    try:
        with Client(daemon.zmq_requests, timeout_seconds=60) as client:
            status = client.call("stream.start")
            assert status["input_channels"] == [2] and status["routing"] == {"mix": [3]}, status
            assert (status["inputs"], status["outputs"]) == ("2", "3"), status  # as the reply and event say it
            # Input 1 gets one noise, input 2 another; outputs 1-3 are recorded.
            signal = np.stack([_noise(3.0, seed=1)[0], _noise(3.0, seed=2)[0]])
            rig = Rig(jack_server, signal, outputs=3)
            recorded = rig.record(tail_seconds=_tail_after(status))
            client.call("stream.stop")
    finally:
        assert daemon.stop() == 0, daemon.log()
    latency = status["round_trip_frames"]
    # Input 2 comes out on output 3, exactly the reported round trip late ...
    lag, corr = _best_lag(recorded[2], signal[1], max_lag=latency + 8192)
    assert lag == latency and corr > 0.8, (lag, latency, corr)
    # ... input 1 is not in it (the two noises are independent: a mix of both would match each) ...
    _, corr_other = _best_lag(recorded[2], signal[0], max_lag=latency + 8192)
    assert corr_other < 0.2, corr_other
    # ... and outputs 1-2, which on a loopback device would come back in, stay silent.
    assert not recorded[:2].any(), np.abs(recorded[:2]).max()


def test_channels_the_device_does_not_have_are_refused_by_name_and_the_next_start_runs(
    jack_server: JackServer, tiny_repo: Path, tmp_path: Path
) -> None:
    daemon = _stream_daemon(jack_server, tiny_repo, tmp_path)
    try:
        with Client(daemon.zmq_requests, timeout_seconds=60) as client:
            # JACK's PortAudio device has this server's 2 capture and 10 playback ports.
            with pytest.raises(RemoteError) as refused:
                client.call("stream.start", {"overrides": {"first_input": 2}})
            assert refused.value.code == "unavailable"
            assert "has 2 input channels; the stream reads inputs 2-3 (stream.first_input 2, 2 channels)" \
                in refused.value.message, refused.value.message
            # The stems of four-stem HTDemucs on their own pairs from output 5 on: 5-12, two too many.
            with pytest.raises(RemoteError) as refused:
                client.call("stream.start", {"overrides": {"routing": "stems", "first_output": 5}})
            assert refused.value.code == "unavailable"
            assert "has 10 output channels; the stream writes outputs 5-12 (stream.first_output 5, 8 channels)" \
                in refused.value.message, refused.value.message
            assert not client.call("stream.status")["running"]
            # Stems from output 3 on fit (3-10): the same daemon starts them.
            status = client.call("stream.start", {"overrides": {"routing": "stems", "first_output": 3}})
            assert status["routing"] == {"drums": [3, 4], "bass": [5, 6], "other": [7, 8], "vocals": [9, 10]}, status
            assert status["input_channels"] == [1, 2], status
            client.call("stream.stop")
    finally:
        assert daemon.stop() == 0, daemon.log()
    log = daemon.log()
    assert "has 2 input channels" in log and "has 10 output channels" in log


def test_inputs_silent_since_the_start_are_reported_once_and_the_signal_when_it_comes(
    jack_server: JackServer, tiny_repo: Path, tmp_path: Path
) -> None:
    # A mono stream on input 2. Noise on input 1 is not its signal: after SILENT_INPUT_SECONDS of
    # exact 0s on input 2 it says so (on a Mac, what a daemon without microphone access hears).
    daemon = _stream_daemon(jack_server, tiny_repo, tmp_path, channels=1, first_input=2)
    events = Events(daemon.zmq_events, b"stream.")
    rigs: list[Rig] = []

    def play(on_input: int) -> None:
        signal = np.zeros((2, 30 * SAMPLE_RATE), dtype=np.float32)
        signal[on_input - 1] = _noise(30.0, seed=on_input)[0]
        rig = Rig(jack_server, signal, outputs=1)
        rigs.append(rig)
        rig.connect()
        rig.position = 0  # playing from the next cycle on

    try:
        with Client(daemon.zmq_requests, timeout_seconds=60) as client:
            client.call("stream.start")
            play(on_input=1)
            silent = events.wait_for("stream.no_signal", timeout_seconds=60)
            assert silent["inputs"] == "2" and silent["seconds"] >= SILENT_INPUT_SECONDS, silent
            status = client.call("stream.status")
            assert not status["input_signal"] and status["no_signal_seconds"] >= SILENT_INPUT_SECONDS, status
            assert silent["device"] == status["device"]
            rigs.pop().close()
            play(on_input=2)
            heard = events.wait_for("stream.signal", timeout_seconds=60)
            assert heard["inputs"] == "2" and heard["seconds"] >= silent["seconds"], (silent, heard)
            status = client.call("stream.status")
            assert status["input_signal"] and status["no_signal_seconds"] == 0.0, status
            client.call("stream.stop")
        assert [name for name, _ in events.seen].count("stream.no_signal") == 1, events.seen
        log = daemon.wait_for_log("no signal on", "a signal on")
        assert "Privacy & Security > Microphone" in log
    finally:
        for rig in rigs:
            rig.close()
        events.close()
        assert daemon.stop() == 0, daemon.log()


def test_doctor_names_the_streams_device_channels_and_those_it_lacks(jack_server: JackServer, tmp_path: Path) -> None:
    for name, first_input, expect in (
        ("fits", 1, ["ok  ", "(2 in, 10 out): live stems read inputs 1-2 and write outputs 3-4"]),
        ("lacks", 2, ["warn", "has 2 input channels; the stream reads inputs 2-3 (stream.first_input 2, 2 channels)"]),
    ):
        (tmp_path / name).mkdir()
        config = DaemonProcess(workdir=tmp_path / name,
                               overrides={"stream": {"first_input": first_input, "first_output": 3}}).config_path
        done = flowstate("doctor", "--config", str(config), env=jack_server.env)
        (row,) = [line for line in done.stdout.splitlines() if " stream device " in line]
        assert row.split()[0] == expect[0].strip() and expect[1] in row, row


@pytest.mark.parametrize(
    ("first_output", "routing", "state", "words"),
    [
        (1, "mix", "warn", ["BlackHole 16ch looks like a loopback device", "reads inputs 1-2 and writes outputs 1-2",
                            "Set stream.first_output to 3 or past it"]),
        (2, "stems", "warn", ["writes outputs 2-3", "Set stream.first_output to 3"]),
        (3, "mix", "ok", ["BlackHole 16ch (16 in, 16 out): live stems read inputs 1-2 and write outputs 3-4"]),
        (3, "stems", "ok", ["write from output 3 on (stems: 2 per stem)"]),
    ],
)
def test_doctor_warns_when_the_stems_would_come_back_in_through_a_loopback_device(
    first_output: int, routing: str, state: str, words: list[str]
) -> None:
    # As PortAudio's Core Audio describes BlackHole 16ch (the same device for input and output).
    blackhole = {"name": "BlackHole 16ch", "max_input_channels": 16, "max_output_channels": 16,
                 "default_samplerate": 48000.0}
    check = stream_device_check(StreamConfig(first_output=first_output, routing=routing), blackhole, blackhole)
    assert check.state == state, check.detail
    for word in words:
        assert word in check.detail, check.detail
