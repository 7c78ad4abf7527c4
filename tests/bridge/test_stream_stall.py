"""A live stream whose audio device stops delivering (an interface unplugged, a laptop asleep, the
audio server stopped) says so, and says so again when the device is back.

PortAudio reports no error for a device that has gone quiet: its callbacks just stop. Here the real
JACK server (the dummy backend) is frozen with SIGSTOP, which stops every client's callbacks at
once, as a device that went away would, and thawed with SIGCONT. A device that PortAudio opens and
starts but that never begins (an aggregate device whose clock source is gone, one another app holds)
is a real ALSA device whose reads wait on a pipe (FrozenDevice). A JACK server frozen before a
start is one that stops answering PortAudio's start or open, as a hung driver would.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from bridge.client import Client, RemoteError
from bridge.stream import OPEN_SECONDS
from bridge.testing import DaemonProcess
from tests.bridge.test_cli import flowstate
from tests.bridge.test_slow_replies import _starting
from tests.bridge.test_stream import _stream_daemon, _wait_for_hops
from tests.conftest import Events, FrozenDevice, JackServer, running_jack


def _stalls(events: Events, client: Client, seconds: float, device: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """`stream.stalled` comes, after at least `seconds`, naming `device`, and `stream.status` counts
    the one stall while the stream runs on: the event and the status."""
    stalled = events.wait_for("stream.stalled", timeout_seconds=30)
    assert stalled["seconds"] >= seconds and stalled["device"] == device, stalled
    status = client.call("stream.status")
    assert status["running"] and status["stalls"] == 1 and status["stalled_seconds"] >= seconds, status
    return stalled, status


def _resumes(events: Events, client: Client, stalled: dict[str, Any]) -> None:
    """The device delivers again: `stream.resumed` says after how long, the stream's hops go on
    with the one stall counted, and it stops."""
    resumed = events.wait_for("stream.resumed", timeout_seconds=30)
    assert resumed["seconds"] >= stalled["seconds"], (stalled, resumed)
    after = _wait_for_hops(client, at_least=client.call("stream.status")["hops"] + 2)
    assert after["stalled_seconds"] == 0.0 and after["stalls"] == 1, after
    client.call("stream.stop")


def test_a_device_that_stops_delivering_is_reported_and_so_is_its_return(
    jack_server: JackServer, tiny_repo: Path, tmp_path: Path
) -> None:
    daemon = _stream_daemon(jack_server, tiny_repo, tmp_path)
    events = Events(daemon.zmq_events, b"stream.")
    try:
        with Client(daemon.zmq_requests, timeout_seconds=60) as client:
            client.call("stream.start")
            before = _wait_for_hops(client)
            assert before["stalled_seconds"] == 0.0 and before["stalls"] == 0, before
            jack_server.process.send_signal(signal.SIGSTOP)
            try:
                stalled, _ = _stalls(events, client, 1.0, before["device"])
            finally:
                jack_server.process.send_signal(signal.SIGCONT)
            _resumes(events, client, stalled)
        log = daemon.wait_for_log("has delivered no audio for", "delivers audio again after")
        assert "stream.stop" in log
    finally:
        events.close()
        assert daemon.stop() == 0, daemon.log()


def test_a_device_that_never_begins_is_reported_and_so_is_its_first_audio(
    jack_server: JackServer, tiny_repo: Path, tmp_path: Path, frozen_device: FrozenDevice
) -> None:
    # PortAudio opened and started the device without an error, and no block ever came: the stream
    # said "running" and played nothing, and nothing said so (a stall was only counted once a block
    # had come).
    daemon = _stream_daemon(jack_server, tiny_repo, tmp_path, extra_env=frozen_device.env,
                            device="fs_frozen", output_device="fs_play")
    events = Events(daemon.zmq_events, b"stream.")
    try:
        with Client(daemon.zmq_requests, timeout_seconds=60) as client:
            started = client.call("stream.start")
            assert started["running"] and started["device"] == "fs_frozen", started
            stalled, status = _stalls(events, client, 3.0, "fs_frozen in, fs_play out")
            assert status["hops"] == 0, status
            frozen_device.begin()
            _resumes(events, client, stalled)
        log = daemon.wait_for_log("has delivered no audio since the stream started", "delivers audio again after")
        assert "PortAudio opened it, but it has not begun" in log
    finally:
        events.close()
        frozen_device.begin()  # a stream still waiting on the pipe would wait there through the daemon's exit
        assert daemon.stop() == 0, daemon.log()


def test_a_stop_that_portaudio_does_not_finish_answers_and_audio_opens_again_once_it_does(
    jack_server: JackServer, tiny_repo: Path, tmp_path: Path, frozen_device: FrozenDevice
) -> None:
    # PortAudio's stop waits for its ALSA thread, which waits in the device's read: stream.stop never
    # answered, and the daemon's exit waited until it was killed (a driver that stops answering, as
    # Core Audio's did for Pure Data when an interface was unplugged).
    daemon = _stream_daemon(jack_server, tiny_repo, tmp_path, extra_env=frozen_device.env,
                            device="fs_frozen", output_device="fs_play")
    try:
        with Client(daemon.zmq_requests, timeout_seconds=60) as client:
            client.call("stream.start")
            stopped = client.call("stream.stop")
            assert stopped["running"] is False, stopped
            assert stopped["audio_lost"].startswith(
                "PortAudio did not stop the stream on fs_frozen in, fs_play out within 5 s"), stopped
            # Until PortAudio has stopped it, a start says why it cannot open audio; the rest goes on.
            with pytest.raises(RemoteError) as refused:
                client.call("stream.start")
            assert (refused.value.code, refused.value.message) == ("unavailable", stopped["audio_lost"])
            assert client.call("ping")["reply"] == "pong"
            frozen_device.begin()
            daemon.wait_for_log("PortAudio stopped the stream on fs_frozen in, fs_play out after all")
            again = client.call("stream.start", {"overrides": {"device": "fs_record"}})
            assert again["running"] and again["audio_lost"] is None, again
            _wait_for_hops(client)
            assert client.call("stream.stop")["audio_lost"] is None
    finally:
        frozen_device.begin()
        assert daemon.stop() == 0, daemon.log()


def test_a_daemon_exits_by_itself_past_a_stream_portaudio_does_not_stop(
    tiny_repo: Path, tmp_path: Path, frozen_device: FrozenDevice
) -> None:
    # No JACK here: a JACK server would keep the ended daemon's clients in its graph for seconds.
    daemon = _stream_daemon("flowstate-none", tiny_repo, tmp_path, extra_env=frozen_device.env,
                            device="fs_stuck", output_device="fs_nowhere")
    try:
        with Client(daemon.zmq_requests, timeout_seconds=60) as client:
            client.call("stream.start")
            assert client.call("stream.stop")["audio_lost"], "PortAudio stopped a stream waiting on its device"
    finally:
        code = daemon.stop()  # the stream still waits on the pipe
        frozen_device.begin()
    assert code == 0, daemon.log()


def test_a_jack_server_that_goes_away_leaves_a_daemon_that_stops_the_stream_and_exits(
    tiny_repo: Path, tmp_path: Path
) -> None:
    # The JACK server stopped under a running stream (qjackctl's Stop, a crash). PortAudio's JACK
    # host API can then neither stop nor close the stream: stream.stop waited for ever, and the
    # daemon's exit too (it was SIGKILLed). Its own JACK server: this one goes away for good.
    name = f"flowstate-gone-{os.getpid()}"
    with running_jack(name, tmp_path / "jackd.log") as server:
        daemon = _stream_daemon(server, tiny_repo, tmp_path)
        events = Events(daemon.zmq_events, b"stream.")
        try:
            with Client(daemon.zmq_requests, timeout_seconds=60) as client:
                client.call("stream.start")
                _wait_for_hops(client)
                server.process.terminate()
                server.process.wait(10)
                events.wait_for("stream.stalled", timeout_seconds=30)
                assert client.call("stream.status")["host_ended"], client.call("stream.status")
                # stream.stop answers at once, and a start says what to do rather than waiting for ever.
                assert client.call("stream.stop")["running"] is False
                with pytest.raises(RemoteError) as refused:
                    client.call("stream.start")
                assert refused.value.code == "unavailable"
                assert "restart the daemon (flowstate up) once JACK runs again" in refused.value.message
                assert client.call("stream.status")["running"] is False  # and it goes on answering
        finally:
            events.close()
            code = daemon.stop()
        assert code == 0, daemon.log()  # it exited by itself, not killed
        log = daemon.wait_for_log("PortAudio ended the stream", "once JACK runs again")
        assert "restart the daemon" in log


def _start_while_frozen(daemon: DaemonProcess, jack_server: JackServer, action: str, done: str) -> None:
    """Freeze the JACK server: `stream.start` is refused `unavailable`, saying PortAudio did not
    `action` in time, and the log says so while PortAudio still waits; the rest answers, and a start
    says why at once instead of waiting behind it. Thawed, PortAudio answers: the log says it `done`
    "after all", and a stream starts and runs."""
    # Not while the daemon registers its JACK MIDI port: python-rtmidi waits for the server keeping the
    # GIL, and the whole daemon with it (MIDI opens last, after the daemon answers).
    daemon.wait_for_log("MIDI (jack): Flowstate")
    with Client(daemon.zmq_requests, timeout_seconds=60) as client:
        jack_server.process.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(RemoteError) as hung:
                client.call("stream.start")
            assert hung.value.code == "unavailable", hung.value
            assert hung.value.message.startswith(
                f"PortAudio did not {action} within {OPEN_SECONDS:.0f} s: an audio driver (on Linux, the JACK server) "
                "stopped answering"), hung.value.message
            assert client.call("ping")["reply"] == "pong"
            assert client.call("stream.stop") == {"running": False}
            with pytest.raises(RemoteError) as refused:
                client.call("stream.start")
            assert (refused.value.code, refused.value.message) == ("unavailable", hung.value.message)
            daemon.wait_for_log(f"WARNING bridge.stream: stream: {hung.value.message}",
                                f"WARNING bridge.daemon: stream.start: unavailable: {hung.value.message}")
        finally:
            jack_server.process.send_signal(signal.SIGCONT)
        daemon.wait_for_log(f"PortAudio {done} after all: audio can open again")
        assert client.call("stream.start")["audio_lost"] is None
        _wait_for_hops(client)
        client.call("stream.stop")


def test_an_open_that_portaudio_does_not_finish_answers_and_audio_opens_once_it_does(
    jack_server: JackServer, tiny_repo: Path, tmp_path: Path
) -> None:
    # A JACK server that stopped answering as the stream opened: PortAudio's open waits on it without
    # a timeout. stream.start never answered, stream.stop waited behind it, and so did the daemon's
    # exit until it was killed. When the open returns after all, the stream it opened is closed.
    daemon = _stream_daemon(jack_server, tiny_repo, tmp_path)
    try:
        with Client(daemon.zmq_requests, timeout_seconds=60) as client:
            client.call("stream.start")  # PortAudio joins the server and stays: the next start only opens
            _wait_for_hops(client)
            client.call("stream.stop")
        _start_while_frozen(daemon, jack_server, "open the default audio device", "opened the default audio device")
    finally:
        jack_server.process.send_signal(signal.SIGCONT)
        assert daemon.stop() == 0, daemon.log()


def test_a_start_cancelled_while_portaudio_opens_stops_the_stream_it_opened(
    jack_server: JackServer, tiny_repo: Path, tmp_path: Path
) -> None:
    # stream.stop while PortAudio opens the device (here a JACK server that stopped answering for a
    # while): the stop answers at once, and when the open returns the stream it opened is stopped
    # instead of playing stems the producer asked to stop.
    daemon = _stream_daemon(jack_server, tiny_repo, tmp_path)
    replies: list[Any] = []

    def start() -> None:
        with Client(daemon.zmq_requests, timeout_seconds=60) as other:
            try:
                replies.append(other.call("stream.start"))
            except RemoteError as err:
                replies.append(err)

    try:
        with Client(daemon.zmq_requests, timeout_seconds=60) as client:
            client.call("stream.start")  # PortAudio joins the server and stays: the next start only opens
            _wait_for_hops(client)
            client.call("stream.stop")
            daemon.wait_for_log("MIDI (jack): Flowstate")  # not while python-rtmidi registers its port
            starting = threading.Thread(target=start)
            jack_server.process.send_signal(signal.SIGSTOP)
            try:
                starting.start()
                _starting(client, "opening the audio device")
                stopped = client.call("stream.stop")
                assert stopped["running"] is False, stopped
                assert stopped["cancelled"].startswith("passthrough on the default audio device (opening the audio "
                                                       "device, "), stopped
            finally:
                jack_server.process.send_signal(signal.SIGCONT)
            starting.join(60)
            assert len(replies) == 1 and isinstance(replies[0], RemoteError), replies
            assert (replies[0].code, replies[0].message) == (
                "unavailable", ("stream.start: cancelled by stream.stop while opening the audio device; no stream "
                                "was started (a model that was loading stays loaded for the next start)")), replies
            daemon.wait_for_log("stream.stop came while opening the audio device; stopping the stream it opened")
            assert client.call("stream.status")["running"] is False
            client.call("stream.start")
            _wait_for_hops(client)
            client.call("stream.stop")
    finally:
        jack_server.process.send_signal(signal.SIGCONT)
        assert daemon.stop() == 0, daemon.log()


def test_a_portaudio_that_does_not_start_answers_and_the_log_goes_on_meanwhile(
    jack_server: JackServer, tiny_repo: Path, tmp_path: Path
) -> None:
    # The first stream.start starts PortAudio, which lists every device of every host API, here
    # asking a JACK server that stopped answering. sounddevice points standard error at the null
    # device while PortAudio starts, and the daemon's log went there with it: nothing was said.
    daemon = _stream_daemon(jack_server, tiny_repo, tmp_path)
    try:
        _start_while_frozen(daemon, jack_server, "list the audio devices", "listed the audio devices")
    finally:
        jack_server.process.send_signal(signal.SIGCONT)
        assert daemon.stop() == 0, daemon.log()


def test_doctor_and_devices_say_portaudio_did_not_start(jack_server: JackServer, tmp_path: Path) -> None:
    # PortAudio's start waits on a JACK server that stopped answering: doctor and devices printed nothing, ever.
    config = DaemonProcess(workdir=tmp_path).config_path
    jack_server.process.send_signal(signal.SIGSTOP)
    try:
        done = flowstate("doctor", "--config", str(config), env=jack_server.env)
        listed = flowstate("devices", env=jack_server.env)
    finally:
        jack_server.process.send_signal(signal.SIGCONT)
    assert listed.returncode == 1 and listed.stdout == "", listed
    assert f"flowstate: PortAudio did not list the audio devices within {OPEN_SECONDS:.0f} s" in listed.stderr, listed
    rows = {line.split()[1]: line for line in done.stdout.splitlines() if line.strip()[:4] in ("ok", "warn", "fail")}
    assert done.returncode == 1, done.stdout + done.stderr
    assert rows["portaudio"].split()[0] == "fail", rows
    assert f"PortAudio did not list the audio devices within {OPEN_SECONDS:.0f} s" in rows["portaudio"], rows
    assert "stream" not in rows and {"jack", "midi", "weights"} <= set(rows), rows  # the rest is checked


def test_a_daemon_whose_jack_server_stopped_answering_exits_in_time_saying_where_it_waited(
    jack_server: JackServer, tiny_repo: Path, tmp_path: Path
) -> None:
    # At exit rtmidi closes the daemon's JACK MIDI port and waits for the server's answer keeping the
    # GIL: every thread stopped, the shutdown's own bounds too, and the daemon waited until it was
    # killed (10 s here; a service manager waits 90 s).
    daemon = _stream_daemon(jack_server, tiny_repo, tmp_path)
    try:
        daemon.wait_for_log("MIDI (jack): Flowstate")  # its port is open (MIDI opens last)
        jack_server.process.send_signal(signal.SIGSTOP)
        code = daemon.stop(timeout_seconds=30)
    finally:
        jack_server.process.send_signal(signal.SIGCONT)
        daemon.stop()
    log = daemon.log()
    assert code == 1, log  # ended by the watchdog, past the shutdown's bounds: not killed, not 0
    assert "signal received, shutting down" in log and "Timeout (" in log, log
    assert "bridge/transports/midi.py" in log.split("Timeout (")[1], log  # where it waited
