"""Fixtures that start the real daemon on free loopback ports and talk to it over real sockets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from pythonosc.osc_message import OscMessage
from pythonosc.tcp_client import SimpleTCPClient
from pythonosc.udp_client import SimpleUDPClient

from bridge.testing import DaemonProcess

REPLY_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    """One daemon per test module (a subprocess running `flowstate up`)."""
    process = DaemonProcess().start()
    try:
        yield process
    finally:
        code = process.stop()
        assert code == 0, f"daemon exited with {code}:\n{process.log()}"


class OscUdp:
    """A python-osc UDP client that can also read the daemon's answers."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.client = SimpleUDPClient(*address)
        self.client._sock.bind(("127.0.0.1", 0))

    @property
    def port(self) -> int:
        return self.client._sock.getsockname()[1]

    def send(self, address: str, *args: Any) -> None:
        self.client.send_message(address, list(args))

    def send_raw(self, packet: bytes) -> None:
        self.client._sock.sendto(packet, (self.client._address, self.client._port))

    def receive(self, timeout: float = REPLY_TIMEOUT) -> OscMessage:
        data = self.client.receive(timeout)
        assert data, "no OSC reply within the timeout"
        return OscMessage(data)

    def request(self, address: str, *args: Any) -> OscMessage:
        self.send(address, *args)
        return self.receive()

    def close(self) -> None:
        self.client.close()


class OscTcp:
    """python-osc's TCP client in OSC 1.1 (SLIP) mode, with buffered replies."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.client = SimpleTCPClient(*address, mode="1.1")
        self._pending: list[OscMessage] = []

    def send(self, address: str, *args: Any) -> None:
        self.client.send_message(address, list(args))

    def send_raw(self, data: bytes) -> None:
        self.client.socket.sendall(data)

    def receive(self, timeout: float = REPLY_TIMEOUT) -> OscMessage:
        if not self._pending:
            self._pending = [OscMessage(raw) for raw in self.client.receive(timeout) if raw]
        assert self._pending, "no OSC TCP reply within the timeout"
        return self._pending.pop(0)

    def request(self, address: str, *args: Any) -> OscMessage:
        self.send(address, *args)
        return self.receive()

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def osc_udp(daemon: DaemonProcess) -> Iterator[OscUdp]:
    client = OscUdp(daemon.osc_udp)
    yield client
    client.close()


@pytest.fixture
def osc_tcp(daemon: DaemonProcess) -> Iterator[OscTcp]:
    client = OscTcp(daemon.osc_tcp)
    yield client
    client.close()


def zmq_request(sock: zmq.Socket, message: Any, raw: bytes | None = None) -> dict[str, Any]:
    """Send one request (JSON-encoded unless raw bytes are given) and return the decoded reply."""
    sock.send(raw if raw is not None else json.dumps(message).encode())
    assert sock.poll(int(REPLY_TIMEOUT * 1000)), "no ZeroMQ reply within the timeout"
    return json.loads(sock.recv())


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def req(daemon: DaemonProcess, zmq_context: zmq.Context) -> zmq.Socket:
    sock = zmq_context.socket(zmq.REQ)
    sock.connect(daemon.zmq_requests)
    return sock


@pytest.fixture
def dealer(daemon: DaemonProcess, zmq_context: zmq.Context) -> zmq.Socket:
    sock = zmq_context.socket(zmq.DEALER)
    sock.connect(daemon.zmq_requests)
    return sock
