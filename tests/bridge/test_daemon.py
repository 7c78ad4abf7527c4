"""Daemon lifecycle with a real `flowstate up` process: listening log, signals, ports in use."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from bridge.client import Client
from bridge.fileio import atomic_write
from bridge.job_store import JobStore
from bridge.testing import SLOW_SECONDS, DaemonProcess, tiny_htdemucs_repo
from tests.bridge.test_separate import write_audio
from tests.conftest import OscUdp


def test_up_logs_every_endpoint_it_listens_on() -> None:
    with DaemonProcess() as process:
        # Waits for the lines: the daemon answers before its log file has all of them.
        process.wait_for_log(f"127.0.0.1:{process.osc_udp[1]}", f"127.0.0.1:{process.osc_tcp[1]}",
                             process.zmq_requests, process.zmq_events, process.zmq_audio)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_shuts_down_gracefully_with_a_tcp_client_still_connected(sig: int) -> None:
    process = DaemonProcess().start()
    assert process.process is not None
    # An open TCP client must not keep the daemon alive. The wait is generous (a shared, busy
    # machine): what is asserted is the way out, exit 0 after a graceful stop; how fast an idle
    # daemon leaves (the README's 5 s) is bench/abuse.py's sigterm row, judged in a full run.
    tcp = socket.create_connection(process.osc_tcp)
    try:
        process.process.send_signal(sig)
        code = process.process.wait(timeout=60)
    finally:
        tcp.close()
        process.stop()
    assert code == 0
    assert "flowstate stopped" in process.log()


# `flowstate up` as on Windows, where three things differ from a Unix event loop (CPython's
# Lib/asyncio/windows_events.py, proactor_events.py and base_events.py; Modules/signalmodule.c):
# - the default loop (asyncio.new_event_loop(), anyio's, uvicorn's) is the proactor loop, which has
#   no add_reader and friends (the base class's raise NotImplementedError);
# - neither the proactor nor the selector loop has add_signal_handler (NotImplementedError);
# - Ctrl-C comes on a thread of its own, and a select() on the main thread goes on waiting.
# The Unix selector loop stands in with those methods refused; SIGINT and SIGTERM are blocked on the
# main thread (and so on every thread it starts) and taken by one thread that does nothing else.
WINDOWS_STAND_IN = """
import asyncio, signal, sys, threading

def refuse(self, *args, **kwargs):
    raise NotImplementedError

class ProactorLike(asyncio.SelectorEventLoop):
    add_reader = remove_reader = add_writer = remove_writer = refuse

class WindowsDefaultPolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self):
        return ProactorLike()

asyncio.SelectorEventLoop.add_signal_handler = refuse
asyncio.set_event_loop_policy(WindowsDefaultPolicy())
stops = {signal.SIGINT, signal.SIGTERM}
signal.pthread_sigmask(signal.SIG_BLOCK, stops)

def console():
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
    threading.Event().wait()

threading.Thread(target=console, daemon=True).start()
from bridge.cli import main
sys.exit(main())
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_on_windows_event_loops_the_daemon_serves_zeromq_and_stops_on_a_signal(sig: int) -> None:
    process = DaemonProcess({"daemon": {"log_level": "DEBUG"}}, entry=["-c", WINDOWS_STAND_IN]).start()
    assert process.process is not None
    try:
        # The start-up's last line (MIDI opens last), then a request over ZeroMQ (watched with
        # add_reader): once it is answered the loop waits on its sockets alone, with nothing due
        # (the client stays connected, as its leaving would wake the loop; no client holds an OSC
        # TCP connection, whose reads have a timer), so only a wakeup from the signal lets it run
        # the handler.
        process.wait_for_log("watching SIGINT, SIGTERM with signal.signal", "  midi  ")
        with Client(process.zmq_requests) as client:
            assert client.call("ping")["reply"] == "pong"
            process.process.send_signal(sig)
            # What is asserted is the way out (exit 0 after a graceful stop), not its speed, as in
            # the test above.
            code = process.process.wait(timeout=60)
    finally:
        process.stop()
    log = process.log()
    assert code == 0, log
    assert "signal received, shutting down" in log
    assert "flowstate stopped" in log
    assert "KeyboardInterrupt" not in log


def test_ports_are_released_after_shutdown() -> None:
    first = DaemonProcess()
    with first:
        pass
    # The same ports again, right away.
    second = DaemonProcess()
    second.config_path.write_text(first.config_path.read_text())
    second.config = first.config
    with second:
        client = OscUdp(second.osc_udp)
        try:
            assert client.request("/flow/ping").params[0] == "pong"
        finally:
            client.close()


@pytest.mark.parametrize(
    ("kind", "key"),
    [
        (socket.SOCK_DGRAM, "osc.udp_port"),
        (socket.SOCK_STREAM, "osc.tcp_port"),
        (socket.SOCK_STREAM, "zmq.request_port"),
        (socket.SOCK_STREAM, "zmq.event_port"),
        (socket.SOCK_STREAM, "zmq.audio_port"),
    ],
)
def test_port_in_use_is_a_clear_error_naming_port_and_key(kind: int, key: str) -> None:
    process = DaemonProcess()
    section, field = key.split(".")
    port = process.config[section][field]
    blocker = socket.socket(socket.AF_INET, kind)
    blocker.bind(("127.0.0.1", port))
    if kind == socket.SOCK_STREAM:
        blocker.listen()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bridge", "up", "--config", str(process.config_path)],
            capture_output=True, text=True, timeout=30,
        )
    finally:
        blocker.close()
    assert done.returncode == 1
    assert f"port {port} ({key}) is already in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_test_harness_starts_again_on_new_ports_when_one_it_picked_was_taken() -> None:
    # Another process can take a port between `free_port` picking it and the daemon binding it:
    # the daemon says so and exits, and the harness starts it again on newly picked ports (ports
    # a test set itself are kept: those it must report as they are).
    process = DaemonProcess()
    taken = process.config["zmq"]["audio_port"]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", taken))
        blocker.listen()
        process.start()
    try:
        assert process.config["zmq"]["audio_port"] != taken
        assert f"port {taken} (zmq.audio_port) is already in use" in process.log()
        with Client(process.zmq_requests, timeout_seconds=10) as client:
            assert client.call("ping")
    finally:
        assert process.stop() == 0, process.log()
    fixed = DaemonProcess(overrides={"zmq": {"audio_port": taken}})
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", taken))
        blocker.listen()
        with pytest.raises(RuntimeError, match=f"port {taken} \\(zmq.audio_port\\) is already in use"):
            fixed.start()
    assert fixed.config["zmq"]["audio_port"] == taken


def test_requests_during_drain_are_refused_not_lost() -> None:
    """While shutting down, the daemon answers instead of leaving clients hanging."""
    process = DaemonProcess().start()
    client = OscUdp(process.osc_udp)
    try:
        assert process.process is not None
        process.process.send_signal(signal.SIGTERM)
        # Either the request is answered normally, refused as unavailable, or the socket is gone:
        # what must never happen is a daemon that hangs. Keep asking until it has exited.
        deadline = time.monotonic() + 60
        while process.process.poll() is None and time.monotonic() < deadline:
            client.send("/flow/ping")
            data = client.client.receive(0.05)
            if data:
                from pythonosc.osc_message import OscMessage

                message = OscMessage(data)
                assert message.address in ("/flow/reply/ping", "/flow/error", "/flow/event/daemon/stopping")
        assert process.process.wait(timeout=60) == 0
    finally:
        client.close()
        process.stop()


def test_async_requests_beyond_max_in_flight_are_answered_busy_at_once() -> None:
    """168 async handlers piled up from one UDP burst; now the ones beyond the bound get busy."""
    from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
    from pythonosc.osc_message_builder import OscMessageBuilder

    with DaemonProcess({"daemon": {"max_in_flight": 2}}) as process:
        client = OscUdp(process.osc_udp)
        try:
            # One bundle: every message is dispatched in the same loop turn, before any finishes.
            builder = OscBundleBuilder(IMMEDIATELY)
            for _ in range(6):
                builder.add_content(OscMessageBuilder("/flow/stream/stop").build())
            client.send_raw(builder.build().dgram)
            replies = [client.receive() for _ in range(6)]
            ok = [reply for reply in replies if reply.address == "/flow/reply/stream/stop"]
            busy = [reply for reply in replies if reply.address == "/flow/error"]
            assert len(ok) == 2 and len(busy) == 4
            for error in busy:
                assert error.params[:2] == ["/flow/stream/stop", "busy"]
                assert "daemon.max_in_flight = 2" in error.params[2]
            assert client.request("/flow/stream/stop").address == "/flow/reply/stream/stop"  # the bound frees up
        finally:
            client.close()
# -- stops that are stops (issue 11: findings 6, 9, 10, 11) -----------------------------------------

# Loading torch and a model on a shared 2-core machine can take a minute: generous deadlines for
# conditions, never a measurement.
SLOW = SLOW_SECONDS


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_htdemucs_repo(tmp_path_factory.mktemp("models"), depth=3)


def _stems_overrides(repo: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    # Short segments: many steps, so a job is surely mid-separation when the test acts.
    overrides: dict[str, Any] = {
        "models": {"demucs_repo": str(repo)},
        "separate": {"model": "tiny", "engine_device": "cpu", "threads": 1, "segment_seconds": 0.5, "overlap": 0.5},
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return overrides


def _wait_running(client: Client, job_id: str, process: DaemonProcess) -> None:
    """Until the job is mid-separation (progress past the reading stage)."""
    deadline = time.monotonic() + SLOW
    while (status := client.call("job.status", {"id": job_id}))["progress"] < 0.1:
        assert status["state"] in ("queued", "running"), status
        assert process.process is not None and process.process.poll() is None, process.log()
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


def _row(database: Path, job_id: str) -> dict[str, Any]:
    """The job's row as the next daemon will find it (read with plain sqlite3, daemon stopped)."""
    with sqlite3.connect(database) as conn:
        conn.row_factory = sqlite3.Row
        return dict(conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())


def _wait_done(process: DaemonProcess, job_id: str) -> dict[str, Any]:
    with Client(process.zmq_requests, timeout_seconds=30) as client:
        deadline = time.monotonic() + SLOW
        while (status := client.call("job.status", {"id": job_id}))["state"] not in ("done", "failed", "canceled"):
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
    return status


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a FIFO to hold a model load forever")
@pytest.mark.timeout(600)
def test_sigterm_exits_0_with_handlers_stuck_in_a_model_load(tmp_path: Path) -> None:
    """20 `classify` requests whose model load never returns (a read that blocks, like a hub retry
    offline): SIGTERM still ends the daemon, exit 0, where it used to hang behind them."""
    model = tmp_path / "model"
    model.mkdir()
    os.mkfifo(model / "modules.json")  # sentence-transformers reads this first; no writer ever writes
    process = DaemonProcess(
        overrides={"samples": {"model": str(model)}, "daemon": {"shutdown_timeout_seconds": 1.0}}, workdir=tmp_path
    ).start(timeout_seconds=SLOW)
    assert process.process is not None
    context = zmq.Context()
    writer = -1
    try:
        sock = context.socket(zmq.DEALER)
        sock.connect(process.zmq_requests)
        for index in range(20):
            sock.send(json.dumps({"id": index, "cmd": "classify", "args": {"text": f"kick {index}"}}).encode())
        # The load is stuck once a reader has the FIFO open (opening it for writing then succeeds).
        deadline = time.monotonic() + SLOW
        while writer < 0:
            try:
                writer = os.open(model / "modules.json", os.O_WRONLY | os.O_NONBLOCK)
            except OSError as err:
                assert err.errno == errno.ENXIO, err
                assert process.process.poll() is None, process.log()
                assert time.monotonic() < deadline, "classify never started loading its model"
                time.sleep(0.05)
        process.process.send_signal(signal.SIGTERM)
        try:
            code = process.process.wait(timeout=30)  # a generous bound; it used to never come
        except subprocess.TimeoutExpired:
            pytest.fail(f"the daemon did not exit after SIGTERM:\n{process.log()}")
    finally:
        if writer >= 0:
            os.close(writer)
        context.destroy(linger=0)
        process.stop(signal.SIGKILL)
    assert code == 0, process.log()
    assert "flowstate stopped" in process.log()


@pytest.mark.timeout(900)
def test_a_graceful_stop_mid_job_exits_0_starts_nothing_and_costs_no_attempt(repo: Path, tmp_path: Path) -> None:
    """jobs.max_attempts 1: a stop that counted as a crash would fail the job at the next start."""
    overrides = _stems_overrides(repo, jobs={"max_attempts": 1}, daemon={"shutdown_timeout_seconds": 0.5})
    first = DaemonProcess(overrides=overrides, workdir=tmp_path).start(timeout_seconds=SLOW)
    long = write_audio(tmp_path / "files" / "stop" / "long.wav", 30.0)
    short = write_audio(tmp_path / "files" / "stop" / "short.wav", 1.0)
    try:
        with Client(first.zmq_requests, timeout_seconds=30) as client:
            running = client.call("stems.separate", {"path": str(long)})["id"]
            queued = client.call("stems.separate", {"path": str(short)})["id"]
            _wait_running(client, running, first)
        assert first.process is not None
        first.process.send_signal(signal.SIGTERM)  # the job is in torch now: it cannot finish in 0.5 s
        code = first.process.wait(timeout=30)
    finally:
        first.stop(signal.SIGKILL)
    assert code == 0, first.log()  # not SIGABRT (-6) from a worker still in native code
    database = tmp_path / "jobs.sqlite3"
    interrupted = _row(database, running)
    assert (interrupted["state"], interrupted["attempts"]) == ("queued", 0)
    waiting = _row(database, queued)
    assert (waiting["state"], waiting["attempts"], waiting["started_at"]) == ("queued", 0, None)

    second = DaemonProcess(overrides=overrides, workdir=tmp_path).start(timeout_seconds=SLOW)
    try:
        done = _wait_done(second, running)
        later = _wait_done(second, queued)
    finally:
        assert second.stop() == 0, second.log()
    assert (done["state"], done["attempts"]) == ("done", 1), done
    assert later["state"] == "done", later


@pytest.mark.timeout(900)
def test_a_second_daemon_on_the_same_database_refuses_and_touches_nothing(repo: Path, tmp_path: Path) -> None:
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    first = DaemonProcess(overrides=_stems_overrides(repo), workdir=tmp_path / "first").start(timeout_seconds=SLOW)
    database = tmp_path / "first" / "jobs.sqlite3"
    # Its own ports and folders; only the job database is shared.
    second = DaemonProcess(overrides=_stems_overrides(repo, jobs={"database": str(database)}),
                           workdir=tmp_path / "second")
    source = write_audio(tmp_path / "first" / "files" / "shared" / "song.wav", 20.0)
    events: list[str] = []
    try:
        with Client(first.zmq_requests, timeout_seconds=30) as client:
            job_id = client.call("stems.separate", {"path": str(source)})["id"]
            _wait_running(client, job_id, first)
            refused = subprocess.run(
                [sys.executable, "-m", "bridge", "up", "--config", str(second.config_path)],
                capture_output=True, text=True, timeout=SLOW, cwd=second.workdir,
                env={k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")},
            )
            after = client.call("job.status", {"id": job_id})
            final = client.wait_jobs([job_id], lambda name, data: events.append(name), SLOW)[job_id]
            status = client.call("job.status", {"id": job_id})
    finally:
        assert first.stop() == 0, first.log()
    assert refused.returncode == 1, refused.stderr
    assert str(database) in refused.stderr and "in use by another flowstate daemon" in refused.stderr
    assert f"pid {first.process.pid}" in refused.stderr  # type: ignore[union-attr]
    assert "Traceback" not in refused.stderr and "requeued" not in refused.stderr
    assert after["attempts"] == 1 and after["state"] in ("running", "done"), after  # never taken over
    assert final["event"] == "job.done"
    assert events.count("job.done") == 1
    assert (status["state"], status["attempts"]) == ("done", 1)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("hearer", ["zmq", "osc"])
def test_jobs_given_up_at_start_up_are_announced_and_leave_no_files(tmp_path: Path, hearer: str) -> None:
    """A job whose daemon died during each of its attempts, with stems and a partial file on disk.

    Its job.failed waits for someone to hear it: a ZeroMQ subscriber or an OSC listener that
    connects only after the daemon has answered a request (a client reconnecting after a restart).
    """
    database = tmp_path / "jobs.sqlite3"
    out = tmp_path / "files" / "stems" / "song"
    out.mkdir(parents=True)
    with JobStore(database) as store:
        job, _ = store.submit("stems.separate", {"path": str(tmp_path / "files" / "song.wav")})
        for attempt in range(3):  # the default jobs.max_attempts
            store.claim_next()
            if attempt < 2:
                store.requeue_interrupted()
        store.add_output(job.id, out)
        for stem in ("drums", "bass"):
            store.add_output(job.id, out / f"{stem}.wav")
            atomic_write(out / f"{stem}.wav", lambda tmp: tmp.write_bytes(b"RIFF"))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / f".vocals.partial-{gone.stdout.strip()}-0123abcd.wav").write_bytes(b"RIFF half")

    # No MIDI: its start-up (a JACK client) comes before the announcement and may outlast the
    # client's connecting, which would hide a daemon that announces to nobody.
    process = DaemonProcess(overrides={"midi": {"enabled": False}}, workdir=tmp_path)
    context = zmq.Context()
    try:
        process.start(timeout_seconds=SLOW)
        status = _wait_done(process, job.id)  # the daemon has answered: its start-up is over
        if hearer == "zmq":
            sub = context.socket(zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, b"job.failed")
            sub.connect(process.zmq_events)
            assert sub.poll(int(SLOW * 1000)), f"no job.failed on ZeroMQ PUB:\n{process.log()}"
            topic, body = sub.recv_multipart()
            assert topic == b"job.failed"
            data = json.loads(body)["data"]
            failed = (data["id"], data["code"], data["message"])
        else:
            client = OscUdp(process.osc_udp)
            try:
                client.send("/flow/register", client.port)
                messages = [client.receive(SLOW) for _ in range(2)]  # the event and the reply, in any order
            finally:
                client.close()
            events = [m for m in messages if m.address == "/flow/event/job/failed"]
            assert events, f"no job.failed at the OSC listener: {[m.address for m in messages]}\n{process.log()}"
            failed = tuple(events[0].params[:3])
    finally:
        context.destroy(linger=0)
        assert process.stop() == 0, process.log()
    assert failed[0] == job.id
    assert failed[1] == "internal" and "3 attempt(s)" in failed[2]
    assert status["state"] == "failed"
    assert not out.exists()  # stems, the partial file and the folder made for them
    assert (tmp_path / "files" / "stems").is_dir()


def _memory_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) of a process in MB, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _settled_rss_mb(pid: int) -> float:
    """RSS once it stops moving (after `_separate_many`, which waits until the memory went back)."""
    previous = _memory_mb(pid)[0]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.2)
        current = _memory_mb(pid)[0]
        if abs(current - previous) < 1.0:
            return current
        previous = current
    return previous


def _separate_many(process: DaemonProcess, client: Client, paths: list[Path]) -> None:
    ids = [client.call("stems.separate", {"path": str(path)})["id"] for path in paths]
    final = client.wait_jobs(ids, lambda *_: None, SLOW)
    assert all(f["event"] == "job.done" for f in final.values()), final
    # The worker hands the job's memory back after it publishes job.done, then logs that it is free.
    process.wait_for_log(*(f"job {job_id} (stems.separate) left its worker" for job_id in ids),
                         timeout_seconds=SLOW)


@pytest.mark.skipif(not Path("/proc/self/status").exists() or not sys.platform.startswith("linux"),
                    reason="reads resident memory from /proc; malloc_trim is glibc's")
@pytest.mark.timeout(900)
def test_memory_goes_back_after_a_big_job_and_stays_flat_over_many(repo: Path, tmp_path: Path) -> None:
    """daemon.malloc_tuning on (the default): a long file's peak is handed back once the job ends
    (it used to stay resident for good), and more jobs do not grow the daemon (bench/memory.py
    jobs runs 1,000)."""
    overrides = {
        "daemon": {"log_level": "DEBUG"},  # a job's worker says when it has handed memory back
        "models": {"demucs_repo": str(repo)},
        # Short segments keep the small jobs cheap; the big one's whole-file buffers make its peak.
        "separate": {"model": "tiny", "engine_device": "cpu", "threads": 1, "segment_seconds": 0.5},
    }
    files = tmp_path / "files" / "memory"
    small = [write_audio(files / f"small{i}.wav", 0.25, seed=i) for i in range(8)]
    big = write_audio(files / "big.wav", 40.0)
    process = DaemonProcess(overrides=overrides, workdir=tmp_path).start(timeout_seconds=SLOW)
    try:
        assert process.process is not None
        pid = process.process.pid
        with Client(process.zmq_requests, timeout_seconds=30) as client:
            _separate_many(process, client, small[:1])  # the model is loaded and warm
            base = _settled_rss_mb(pid)
            _separate_many(process, client, [big])
            after_big = _settled_rss_mb(pid)
            peak = _memory_mb(pid)[1]
            _separate_many(process, client, small[1:2])
            first = _settled_rss_mb(pid)
            _separate_many(process, client, small[2:])
            last = _settled_rss_mb(pid)
    finally:
        assert process.stop() == 0, process.log()
    assert peak - base > 50, (base, peak)  # the big job really needed memory
    # Most of the peak went back to the OS (without malloc_trim it all stayed).
    assert after_big - base < 0.5 * (peak - base), (base, after_big, peak)
    assert last <= 1.15 * first, (first, last)  # generous: a few jobs, a noisy allocator
