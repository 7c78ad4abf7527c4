"""Daemon lifecycle with a real `flowstate up` process: listening log, signals, ports in use."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

from bridge.testing import DaemonProcess
from tests.conftest import OscUdp


def test_up_logs_every_endpoint_it_listens_on() -> None:
    with DaemonProcess() as process:
        # Waits for the lines: the daemon answers before its log file has all of them.
        process.wait_for_log(f"127.0.0.1:{process.osc_udp[1]}", f"127.0.0.1:{process.osc_tcp[1]}",
                             process.zmq_requests, process.zmq_events, process.zmq_audio)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_shuts_down_gracefully_within_five_seconds(sig: int) -> None:
    process = DaemonProcess().start()
    assert process.process is not None
    # An open TCP client must not keep the daemon alive.
    tcp = socket.create_connection(process.osc_tcp)
    try:
        process.process.send_signal(sig)
        code = process.process.wait(timeout=5)
    finally:
        tcp.close()
        process.stop()
    assert code == 0
    assert "flowstate stopped" in process.log()


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


def test_requests_during_drain_are_refused_not_lost() -> None:
    """While shutting down, the daemon answers instead of leaving clients hanging."""
    process = DaemonProcess().start()
    client = OscUdp(process.osc_udp)
    try:
        assert process.process is not None
        process.process.send_signal(signal.SIGTERM)
        # Either the request is answered normally, refused as unavailable, or the socket is gone:
        # what must never happen is a daemon that hangs. Keep asking until it has exited.
        deadline = time.monotonic() + 5
        while process.process.poll() is None and time.monotonic() < deadline:
            client.send("/flow/ping")
            data = client.client.receive(0.05)
            if data:
                from pythonosc.osc_message import OscMessage

                message = OscMessage(data)
                assert message.address in ("/flow/reply/ping", "/flow/error", "/flow/event/daemon/stopping")
        assert process.process.wait(timeout=5) == 0
    finally:
        client.close()
        process.stop()
