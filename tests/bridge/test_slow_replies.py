"""A command that takes longer than a client's timeout: `stream.start` loading its model.

A first `stream.start` on a CPU takes 6-18 s (README, Benchmarks), minutes when the weights
download. The clients (`flowstate send`, scripts' `Client`, `flowstate mcp`'s `AsyncClient`) wait
for it as long as the daemon answers a ping, and still say "no daemon" within seconds when nothing
answers (bridge/client.py, `_ReplyWait`). Here the real daemon streams on a real JACK server and
loads the pass-through HTDemucs from a local repo whose `passthrough.yaml` is a named pipe: the
load stays in demucs's `open()` of it until the test writes the file, so the load lasts exactly as
long as the test wants, on a slow machine or a fast one.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bridge.client import AsyncClient, Client, RemoteError
from bridge.errors import Unavailable
from bridge.testing import DaemonProcess
from tests.bridge.test_stream import _stream_daemon
from tests.conftest import JackServer

# Shorter than the held load: without the patience every call below fails with "no daemon answered".
# Not shorter: the ping a patient call sends must be answered within it, and a busy machine's daemon
# (its JACK MIDI ports opening, a process starting beside it) can take half a second to.
TIMEOUT_SECONDS = 3.0
# Each test starts a daemon, loads a model and opens JACK: minutes on two busy cores.
pytestmark = pytest.mark.timeout(300)


@contextmanager
def held_load(tiny_repo: Path, folder: Path) -> Iterator[tuple[Path, Callable[[], None]]]:
    """A copy of `tiny_repo` whose model loads only once `release()` has been called."""
    repo = folder / "models"
    shutil.copytree(tiny_repo, repo)
    yaml = repo / "passthrough.yaml"
    text = yaml.read_bytes()
    yaml.unlink()
    os.mkfifo(yaml)

    def write() -> None:
        with open(yaml, "wb") as pipe:  # blocks until the daemon's load opens the file
            pipe.write(text)

    writer = threading.Thread(target=write, daemon=True)
    try:
        yield repo, writer.start
    finally:
        if writer.is_alive():  # the daemon never read it: open the reading end so the writer ends
            with open(os.open(yaml, os.O_RDONLY | os.O_NONBLOCK), "rb") as reader:
                writer.join(10)
                reader.read()


@contextmanager
def loading_daemon(jack_server: JackServer, repo: Path,
                   folder: Path) -> Iterator[tuple[DaemonProcess, Callable[[], None]]]:
    """A daemon streaming on `jack_server` whose first load of `repo`'s model is held (`held_load`)
    until `release()`: the daemon and `release`. Stopped at the end (whoever needs its exit status
    stops it first)."""
    with held_load(repo, folder) as (held, release):
        daemon = _stream_daemon(jack_server, held, folder)
        try:
            yield daemon, release
        finally:
            daemon.stop()


@contextmanager
def stream_daemon(jack_server: JackServer, repo: Path, workdir: Path) -> Iterator[DaemonProcess]:
    daemon = _stream_daemon(jack_server, repo, workdir)
    try:
        yield daemon
    finally:
        assert daemon.stop() == 0, daemon.log()


def _check_started(status: dict[str, Any]) -> None:
    assert status["running"] is True and status["round_trip_ms"] > 0, status


def _stops_started(daemon: DaemonProcess) -> None:
    """The stream the daemon started (once its log says so) runs; then stop it."""
    daemon.wait_for_log("stream started on", timeout_seconds=120)
    with Client(daemon.zmq_requests, timeout_seconds=10) as client:
        _check_started(client.call("stream.status"))
        client.call("stream.stop")


def _send_stream_start(daemon: DaemonProcess, then: Callable[[subprocess.Popen[str]], None]) -> tuple[int, str, str]:
    """`flowstate send stream.start`; once it has said on stderr that the daemon is working on it
    (a ping answered while the model is held), `then(process)`; its exit code, stdout and stderr."""
    send = subprocess.Popen(
        [sys.executable, "-m", "bridge", "send", "stream.start", "--config", str(daemon.config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert send.stderr is not None
        told = send.stderr.readline()
        assert "the daemon is working on stream.start; waiting for its reply" in told, told
        then(send)
        out, err = send.communicate(timeout=120)
    finally:
        send.kill()
        send.wait()
    return send.returncode, out, err


def test_flowstate_send_waits_for_a_stream_start_that_loads_its_model(
    jack_server: JackServer, tiny_repo: Path, tmp_path: Path
) -> None:
    with held_load(tiny_repo, tmp_path) as (repo, release), stream_daemon(jack_server, repo, tmp_path) as daemon:
        code, out, err = _send_stream_start(daemon, lambda _: release())
        assert code == 0, (err, daemon.log())
        assert '"round_trip_ms"' in out, out
        _stops_started(daemon)


def test_ctrl_c_stops_flowstate_send_waiting_and_the_daemon_goes_on(
    jack_server: JackServer, tiny_repo: Path, tmp_path: Path
) -> None:
    with held_load(tiny_repo, tmp_path) as (repo, release), stream_daemon(jack_server, repo, tmp_path) as daemon:
        code, out, err = _send_stream_start(daemon, lambda send: send.send_signal(signal.SIGINT))  # Ctrl-C
        assert code == 130 and out == "", (out, err)
        assert "stopped waiting; the daemon goes on with stream.start" in err and "Traceback" not in err, err
        release()
        _stops_started(daemon)


def _starting(client: Client, phase: str, host_timer: Callable[[], None] | None = None) -> dict[str, Any]:
    """`stream.status` once it shows the start under way in `phase`. A DAW script waiting on the start
    pings the daemon from its host's timer (Live's, REAPER's defer loop), which never stops in the
    host: `host_timer` runs it while this waits, or a slow machine's wait reads as a daemon gone."""
    deadline = time.monotonic() + 60
    while (status := client.call("stream.status")).get("starting", {}).get("phase") != phase:
        assert time.monotonic() < deadline, f"stream.status never showed the start {phase}: {status}"
        if host_timer is not None:
            host_timer()
        time.sleep(0.05)
    return status


def test_a_start_still_loading_is_shown_refused_twice_and_cancelled_by_a_stop(
    jack_server: JackServer, tiny_repo: Path, tmp_path: Path
) -> None:
    # Pressing stop while the first start loads its model (a download: minutes) waited behind the
    # load, past the DAW scripts' patience, and then the stream started anyway; a second start
    # waited out the whole load to be told `busy`. The load is held here until the test lets it go.
    def meanwhile(_: subprocess.Popen[str]) -> None:
        with Client(daemon.zmq_requests, timeout_seconds=10) as client:
            starting = _starting(client, "loading passthrough")["starting"]
            assert starting["model"] == "passthrough" and starting["devices"] == "the default audio device", starting
            assert starting["cancelled"] is False and starting["seconds"] >= 0, starting
            daemon_status = client.call("status")  # what the daemon is doing says it too
            assert daemon_status["stream"]["starting"]["phase"] == "loading passthrough", daemon_status
            assert daemon_status["jobs"] == {"queued": 0, "running": 0, "done": 0, "failed": 0, "canceled": 0}
            with pytest.raises(RemoteError) as twice:  # at once, not after the load
                client.call("stream.start")
            assert twice.value.code == "busy", twice.value
            assert twice.value.message.startswith(
                "stream.start: a stream is already starting: passthrough on the default audio device (loading "
                "passthrough, "), twice.value.message
            assert twice.value.message.endswith("stream.stop cancels it"), twice.value.message
            stopped = client.call("stream.stop")  # at once, too
            assert stopped["running"] is False and stopped["cancelled"].startswith(
                "passthrough on the default audio device (loading passthrough, "), stopped
            assert client.call("stream.status")["starting"]["cancelled"] is True
            with pytest.raises(RemoteError) as again:
                client.call("stream.start")
            assert again.value.code == "busy" and "cancelled by stream.stop, is still loading passthrough" in \
                again.value.message, again.value
        release()

    with held_load(tiny_repo, tmp_path) as (repo, release), stream_daemon(jack_server, repo, tmp_path) as daemon:
        code, out, err = _send_stream_start(daemon, meanwhile)
        assert code != 0 and out == "", (out, err)
        assert ("unavailable: stream.start: cancelled by stream.stop while loading passthrough; no stream was "
                "started") in err, err
        daemon.wait_for_log("stream.stop cancels the start of passthrough on the default audio device")
        with Client(daemon.zmq_requests, timeout_seconds=60) as client:
            status = client.call("stream.status")
            assert status["running"] is False and "starting" not in status, status
            assert "stream started on" not in daemon.log()
            # The load went on and its model stayed loaded: the next start only opens the device
            # (a second load would wait on the pipe, which nothing writes again, for ever).
            started = client.call("stream.start")
            _check_started(started)
            assert client.call("status")["stream"] == {"running": True, "model": "passthrough",
                                                       "round_trip_ms": started["round_trip_ms"]}
        _stops_started(daemon)


@pytest.mark.parametrize("kind", ["Client", "AsyncClient"])
def test_a_client_waits_past_its_timeout_while_the_daemon_answers(
    jack_server: JackServer, tiny_repo: Path, tmp_path: Path, kind: str
) -> None:
    with held_load(tiny_repo, tmp_path) as (repo, release), stream_daemon(jack_server, repo, tmp_path) as daemon:
        def busy(cmd: str) -> None:
            assert cmd == "stream.start"
            release()  # the daemon has answered a ping after the timeout: let the load go on

        if kind == "Client":
            with Client(daemon.zmq_requests, TIMEOUT_SECONDS) as client:
                status = client.call("stream.start", patience_seconds=120, on_busy=busy)
        else:
            async def start() -> Any:
                async with AsyncClient(daemon.zmq_requests, TIMEOUT_SECONDS) as client:
                    return await client.call("stream.start", patience_seconds=120, on_busy=busy)

            status = asyncio.run(start())
        _check_started(status)
        with Client(daemon.zmq_requests, timeout_seconds=10) as client:
            client.call("stream.stop")


def test_past_its_patience_a_client_says_the_daemon_goes_on_and_it_does(
    jack_server: JackServer, tiny_repo: Path, tmp_path: Path
) -> None:
    with held_load(tiny_repo, tmp_path) as (repo, release), stream_daemon(jack_server, repo, tmp_path) as daemon:
        with Client(daemon.zmq_requests, TIMEOUT_SECONDS) as client:
            with pytest.raises(Unavailable) as waited:
                client.call("stream.start", patience_seconds=1.5)
            message = waited.value.message
            assert "the daemon is running but has not answered stream.start within" in message, message
            assert "no daemon" not in message, message
            release()
        _stops_started(daemon)  # it went on: the stream runs once the load is through


def test_a_daemon_that_dies_during_a_slow_command_is_reported(
    jack_server: JackServer, tiny_repo: Path, tmp_path: Path
) -> None:
    with held_load(tiny_repo, tmp_path) as (repo, _release):
        daemon = _stream_daemon(jack_server, repo, tmp_path)
        try:
            with Client(daemon.zmq_requests, TIMEOUT_SECONDS) as client:
                with pytest.raises(Unavailable) as lost:
                    client.call("stream.start", patience_seconds=120,
                                on_busy=lambda cmd: daemon.stop(signal.SIGKILL))
            message = lost.value.message
            assert f"the daemon at {daemon.zmq_requests} stopped answering while it ran stream.start" in message
        finally:
            daemon.stop()
