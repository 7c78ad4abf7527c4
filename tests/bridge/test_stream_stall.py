"""A live stream whose audio device stops delivering (an interface unplugged, a laptop asleep, the
audio server stopped) says so, and says so again when the device is back.

PortAudio reports no error for a device that has gone quiet: its callbacks just stop. Here the real
JACK server (the dummy backend) is frozen with SIGSTOP, which stops every client's callbacks at
once, as a device that went away would, and thawed with SIGCONT.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from bridge.client import Client, RemoteError
from tests.bridge.test_stream import _stream_daemon, _wait_for_hops
from tests.conftest import Events, JackServer, running_jack


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
                stalled = events.wait_for("stream.stalled", timeout_seconds=30)
                assert stalled["seconds"] >= 1.0 and stalled["device"] == before["device"], stalled
                status = client.call("stream.status")
                assert status["running"] and status["stalls"] == 1 and status["stalled_seconds"] >= 1.0, status
            finally:
                jack_server.process.send_signal(signal.SIGCONT)
            resumed = events.wait_for("stream.resumed", timeout_seconds=30)
            assert resumed["seconds"] >= stalled["seconds"], (stalled, resumed)
            after = _wait_for_hops(client, at_least=client.call("stream.status")["hops"] + 2)
            assert after["stalled_seconds"] == 0.0 and after["stalls"] == 1, after
            client.call("stream.stop")
        log = daemon.wait_for_log("has delivered no audio for", "delivers audio again after")
        assert "stream.stop" in log
    finally:
        events.close()
        assert daemon.stop() == 0, daemon.log()


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
