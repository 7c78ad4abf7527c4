"""Live stems started from the pad: the status bar gives the exact Track Delay to type.

A Remote Script cannot set a track's delay (Live's object model has none), so the script shows the
daemon's round trip in ms and in samples. A real stream runs here: the daemon on JACK's dummy
backend with a tiny HTDemucs whose stems add up to its input.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ableton_remote import surface as surface_module
from bridge.client import Client
from bridge.testing import DaemonProcess, passthrough_htdemucs_repo
from tests.ableton.conftest import LoadedScript
from tests.ableton.live_sim import LiveSet
from tests.conftest import FrozenDevice, jack_env

Load = Callable[[LiveSet, int], LoadedScript]


def call(daemon: DaemonProcess, command: str) -> dict[str, Any]:
    with Client(daemon.zmq_requests, timeout_seconds=10) as client:
        return client.call(command, {})


@pytest.mark.timeout(600)  # trains a tiny model, imports torch in the daemon, starts a stream: minutes on 2 busy cores
def test_the_pad_starts_live_stems_and_shows_the_track_delay_in_ms_and_samples(
    jack_server: Any, tmp_path_factory: pytest.TempPathFactory, load_script: Load
) -> None:
    repo = passthrough_htdemucs_repo(tmp_path_factory.mktemp("models"))
    # A fixed budget for the first start (its message is compared with stream.status); the second
    # start lets it grow, from one block, so that it must.
    stream = {"model": "passthrough", "engine_device": "cpu", "block_size": 256, "threads": 1, "budget_grow": False}
    daemon = DaemonProcess(overrides={"models": {"demucs_repo": str(repo)}, "stream": stream}, env=jack_server.env)
    try:  # not `with`: a start that fails half-way must still stop the process
        daemon.start(timeout_seconds=300)
        live = LiveSet()
        script = load_script(live, daemon.osc_udp[1])
        script.surface.receive_midi((0x9F, surface_module.NOTE_STREAM_START, 100))  # channel 16, as Live forwards
        script.tick_until(lambda: script.shown("live stems running"), "the stream started", timeout=300)

        status = call(daemon, "stream.status")
        frames, rate, ms = status["round_trip_frames"], status["sample_rate"], f"{status['round_trip_ms']:.1f}"
        assert script.messages[-1] == (
            f"Flowstate: live stems running on {status['device']} (in 1-2, out 1-2): latency "
            f"{status['latency_ms']:.0f} ms, round trip {ms} ms; "
            f"Track Delay of the track playing the stems: -{ms} ms (-{frames} samples at {rate} Hz)"
        )

        script.surface.receive_midi((0x9F, surface_module.NOTE_STREAM_STOP, 100))
        script.tick_until(lambda: script.messages[-1] == "Flowstate: live stems stopped", "the stream stopped")

        # Started by another client, with one block of budget and growth on: the first window is
        # late, the budget grows, and the status bar gives the new Track Delay (stream.latency).
        with Client(daemon.zmq_requests, timeout_seconds=120) as client:
            client.call("stream.start", {"overrides": {"budget_ms": 1.0, "budget_grow": True}})
            try:
                script.tick_until(lambda: script.shown("live stems latency grew"), "the budget grew", timeout=60)
                grown = client.call("stream.status")
                # Nothing plays into the stream (the dummy server's inputs are exact 0s): after a
                # few seconds the status bar says where a signal was expected.
                script.tick_until(lambda: script.shown("no signal yet"), "no signal shown", timeout=60)
                # The audio device stops delivering (here the JACK server frozen), then comes back.
                jack_server.process.send_signal(signal.SIGSTOP)
                try:
                    script.tick_until(lambda: script.shown("delivers no audio"), "the stall shown", timeout=30)
                finally:
                    jack_server.process.send_signal(signal.SIGCONT)
                script.tick_until(lambda: script.shown("live stems: the audio device delivers again"),
                                  "the device back", timeout=30)
            finally:
                client.call("stream.stop")
        silent = next(m for m in script.messages if "no signal yet" in m)
        assert silent.startswith(f"Flowstate: live stems: no signal yet on {grown['device']} input 1-2 (all 0s for ")
        assert "allow the daemon's app to use the Microphone" in silent, silent
        stalled = next(m for m in script.messages if "delivers no audio" in m)
        assert stalled == (f"Flowstate: live stems: {grown['device']} delivers no audio (unplugged? asleep?); they go "
                           "on when it is back"), stalled
        shown = next(m for m in script.messages if "latency grew" in m)
        first = grown["budget_changes"][0]
        frames = first["latency_frames"] + grown["block_size"]
        ms = f"{1000 * frames / rate:.1f}"
        assert shown == (
            f"Flowstate: live stems latency grew to {1000 * first['latency_frames'] / rate:.0f} ms, round trip "
            f"{ms} ms; Track Delay of the track playing the stems: -{ms} ms (-{frames} samples at {rate} Hz)"
        )
        script.surface.disconnect()  # before the daemon goes: its unregister is answered
    finally:
        daemon.stop()


@pytest.mark.timeout(600)
def test_the_status_bar_names_both_devices_when_the_stems_play_on_another(
    jack_server: Any, tiny_repo: Path, one_way_devices: dict[str, str], load_script: Load
) -> None:
    # On Windows the DAW's send goes out on one virtual cable and the stems come back on another:
    # the status bar says which channels of which device (tests/bridge/test_stream_devices.py).
    stream = {"model": "passthrough", "engine_device": "cpu", "block_size": 256, "threads": 1, "budget_grow": False,
              "device": "fs_record", "output_device": "fs_play", "first_output": 3}
    daemon = DaemonProcess(overrides={"models": {"demucs_repo": str(tiny_repo)}, "stream": stream},
                           env={**jack_server.env, **one_way_devices})
    try:
        daemon.start(timeout_seconds=300)
        live = LiveSet()
        script = load_script(live, daemon.osc_udp[1])
        where = "live stems running (in 1-2 on fs_record, out 3-4 on fs_play): latency "
        # Started from the pad (the reply, which has the tier) ...
        script.surface.receive_midi((0x9F, surface_module.NOTE_STREAM_START, 100))
        script.tick_until(lambda: script.shown("live stems running"), "the stream started", timeout=300)
        assert script.messages[-1].startswith(f"Flowstate: {where}"), script.messages[-1]
        script.surface.receive_midi((0x9F, surface_module.NOTE_STREAM_STOP, 100))
        script.tick_until(lambda: script.messages[-1] == "Flowstate: live stems stopped", "the stream stopped")
        # ... and by another client (the stream.started event, which has none).
        count = len(script.messages)
        with Client(daemon.zmq_requests, timeout_seconds=120) as client:
            client.call("stream.start")
            try:
                script.tick_until(lambda: any("live stems running" in m for m in script.messages[count:]),
                                  "the event shown", timeout=60)
            finally:
                client.call("stream.stop")
        shown = next(m for m in script.messages[count:] if "live stems running" in m)
        assert shown.startswith(f"Flowstate: {where}"), shown
        script.surface.disconnect()
    finally:
        daemon.stop()


@pytest.mark.timeout(600)
def test_the_status_bar_says_when_stopping_left_the_audio_device_open(
    tiny_repo: Path, frozen_device: FrozenDevice, load_script: Load
) -> None:
    # A driver that does not let go of the device: stream.stop answers after 5 s with why no stream
    # can open until the daemon restarts (tests/bridge/test_stream_stall.py), past the 5 s the
    # script waits for other replies. No JACK: the device is ALSA's null device behind a pipe.
    stream = {"model": "passthrough", "engine_device": "cpu", "block_size": 256, "threads": 1, "budget_grow": False,
              "device": "fs_stuck", "output_device": "fs_nowhere"}
    daemon = DaemonProcess(overrides={"models": {"demucs_repo": str(tiny_repo)}, "stream": stream},
                           env={**jack_env("flowstate-none"), **frozen_device.env})
    try:
        daemon.start(timeout_seconds=300)
        live = LiveSet()
        script = load_script(live, daemon.osc_udp[1])
        script.surface.receive_midi((0x9F, surface_module.NOTE_STREAM_START, 100))
        script.tick_until(lambda: script.shown("live stems running"), "the stream started", timeout=300)
        script.surface.receive_midi((0x9F, surface_module.NOTE_STREAM_STOP, 100))
        text = ("Flowstate: live stems stopped, but PortAudio did not stop the stream on fs_stuck in, fs_nowhere out "
                "within 5 s (its driver stopped answering), and it is left open: restart the daemon (flowstate up) to "
                "stream again")
        script.tick_until(lambda: script.shown("live stems stopped, but"), "the stop", timeout=60)
        assert next(m for m in script.messages if "live stems stopped" in m) == text, script.messages
        # The reply came after the script's usual 5 s: it waited, as for a start.
        script.tick_until(lambda: script.messages.count(text) == 2, "the reply and the event", timeout=60)
        assert not any("live stems did not stop" in m for m in script.messages), script.messages
        # Stopped by another client, the stream.stopped event says it as well.
        frozen_device.begin()
        daemon.wait_for_log("audio can open again")
        frozen_device.freeze()
        with Client(daemon.zmq_requests, timeout_seconds=120) as client:
            client.call("stream.start")
            count = len(script.messages)
            assert client.call("stream.stop")["audio_lost"]
        script.tick_until(lambda: text in script.messages[count:], "the event shown", timeout=60)
        script.surface.disconnect()
    finally:
        frozen_device.begin()
        daemon.stop()
