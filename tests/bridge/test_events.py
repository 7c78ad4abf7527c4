"""Event fan-out: requester, registered OSC listeners and ZeroMQ PUB, from any thread.

The daemon runs in-process here (real sockets, its own loop thread) so a test-only command can
publish a job event the way a job worker will: from another thread, addressed to its requester.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import zmq

from bridge.commands import COMMANDS, command
from bridge.config import Config
from bridge.daemon import Daemon
from bridge.errors import StartupError
from bridge.protocol import Arg, CallContext, Result
from bridge.testing import DaemonProcess, free_port
from tests.conftest import OscTcp, OscUdp, subscribed, zmq_request


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    @command("test.emit", Arg("fraction", float, "progress to publish", min=0, max=1), help="test only")
    def emit(ctx: CallContext, fraction: float) -> Result:
        # Publish from a worker thread, as jobs do, after the reply has gone out.
        def later() -> None:
            time.sleep(0.05)
            ctx.services.hub.publish("job.progress", origin=ctx.origin, id="job-1", fraction=fraction)

        threading.Thread(target=later).start()
        return {"emitted": fraction}

    database = str(tmp_path_factory.mktemp("jobs") / "jobs.sqlite3")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    for attempt in range(3):
        config = Config.model_validate(
            {
                "osc": {"udp_port": free_port(socket.SOCK_DGRAM), "tcp_port": free_port()},
                "zmq": {"request_port": free_port(), "event_port": free_port(), "audio_port": free_port()},
                "jobs": {"database": database},
                "paths": {"roots": []},
            }
        )
        daemon = Daemon(config)
        try:
            # As DaemonProcess.start: a loaded machine is slow; a picked port another process took
            # first (the start closes what it bound and names the port) is picked again.
            asyncio.run_coroutine_threadsafe(daemon.start(), loop).result(60)
            break
        except StartupError as error:
            if attempt == 2 or "already in use" not in str(error):
                raise
    try:
        yield daemon
    finally:
        asyncio.run_coroutine_threadsafe(daemon.shutdown(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        del COMMANDS["test.emit"]


def _osc_udp(daemon: Daemon) -> OscUdp:
    return OscUdp(("127.0.0.1", daemon.osc.udp_port))


def _endpoint(daemon: Daemon, port: int) -> str:
    return f"tcp://127.0.0.1:{port}"


def test_udp_requester_receives_its_event(live: Daemon) -> None:
    client = _osc_udp(live)
    try:
        assert client.request("/flow/test/emit", 0.25).params == ['{"emitted":0.25}']
        event = client.receive()
        assert event.address == "/flow/event/job/progress"
        assert event.params == ["job-1", 0.25]
    finally:
        client.close()


def test_tcp_requester_receives_its_event_on_the_connection(live: Daemon) -> None:
    client = OscTcp(("127.0.0.1", live.osc.tcp_port))
    try:
        assert client.request("/flow/test/emit", 0.5).address == "/flow/reply/test/emit"
        assert client.receive().params == ["job-1", 0.5]
    finally:
        client.close()


def test_dealer_requester_receives_its_event_req_does_not(live: Daemon) -> None:
    context = zmq.Context()
    try:
        dealer = context.socket(zmq.DEALER)
        dealer.connect(_endpoint(live, live.zmq.request_port))
        assert zmq_request(dealer, {"id": 1, "cmd": "test.emit", "args": {"fraction": 0.75}})["ok"]
        assert dealer.poll(5000)
        assert json.loads(dealer.recv()) == {"event": "job.progress", "data": {"id": "job-1", "fraction": 0.75}}

        req = context.socket(zmq.REQ)
        req.connect(_endpoint(live, live.zmq.request_port))
        assert zmq_request(req, {"id": 2, "cmd": "test.emit", "args": {"fraction": 1}})["ok"]
        time.sleep(0.2)  # the event would have arrived by now; a REQ socket must not get it
        assert zmq_request(req, {"id": 3, "cmd": "ping"})["id"] == 3
    finally:
        context.destroy(linger=0)


def test_subscribers_and_listeners_receive_every_event_once(live: Daemon) -> None:
    context = zmq.Context()
    listener = _osc_udp(live)
    other = _osc_udp(live)
    try:
        sub = subscribed(context, _endpoint(live, live.zmq.event_port), b"job.")
        listener.request("/flow/register", listener.port)
        # The listener itself makes the request: it must see the event once, not twice.
        assert listener.request("/flow/test/emit", 0.125).address == "/flow/reply/test/emit"
        assert listener.receive().params == ["job-1", 0.125]
        assert listener.client.receive(0.3) == b""
        # Someone else's request on this host: the listener hears a copy of the reply, then the event.
        other.request("/flow/test/emit", 0.375)
        assert listener.receive().address == "/flow/reply/test/emit"
        assert listener.receive().params == ["job-1", 0.375]
        assert sub.poll(5000)
        topic, body = sub.recv_multipart()
        assert topic == b"job.progress"
        assert json.loads(body)["data"]["fraction"] == 0.125
    finally:
        listener.request("/flow/unregister", listener.port)
        listener.close()
        other.close()
        context.destroy(linger=0)


def test_daemon_stopping_reaches_listeners_and_subscribers() -> None:
    process = DaemonProcess().start()
    context = zmq.Context()
    listener = OscUdp(process.osc_udp)
    try:
        sub = subscribed(context, process.zmq_events, b"daemon.")
        listener.request("/flow/register", listener.port)
        assert process.stop() == 0
        assert listener.receive().address == "/flow/event/daemon/stopping"
        assert sub.poll(5000)
        assert sub.recv_multipart()[0] == b"daemon.stopping"
    finally:
        process.stop()
        listener.close()
        context.destroy(linger=0)


# -- the listener table: owned by the registering socket, expiring, bounded ----------------------


def _listed(daemon: Daemon) -> set[str]:
    return {f"{host}:{port}" for host, port in daemon.hub.listeners()}


def test_only_the_registering_socket_or_the_listener_may_unregister(live: Daemon) -> None:
    owner = _osc_udp(live)
    intruder = _osc_udp(live)
    listener = _osc_udp(live)
    clients = [owner, intruder, listener]
    context = zmq.Context()
    try:
        assert owner.request("/flow/register", listener.port).address == "/flow/reply/register"
        key = f"127.0.0.1:{listener.port}"
        assert key in _listed(live)
        # Another local process (same host, another socket) cannot remove it: forbidden, still listed.
        error = intruder.request("/flow/unregister", listener.port)
        assert error.address == "/flow/error"
        assert error.params[:2] == ["/flow/unregister", "forbidden"]
        assert f"udp 127.0.0.1:{owner.port}" in error.params[2]
        dealer = context.socket(zmq.DEALER)
        dealer.connect(_endpoint(live, live.zmq.request_port))
        reply = zmq_request(dealer, {"id": 1, "cmd": "unregister", "args": {"port": listener.port}})
        assert reply["error"]["code"] == "forbidden"
        # Registering it again from elsewhere refreshes it but does not take it over.
        assert intruder.request("/flow/register", listener.port).address == "/flow/reply/register"
        assert intruder.request("/flow/unregister", listener.port).params[1] == "forbidden"
        assert key in _listed(live)
        # The owner may, and so may the listener itself (its own address proves it).
        assert owner.request("/flow/unregister", listener.port).params[:2] == ["127.0.0.1", listener.port]
        assert key not in _listed(live)
        fresh = _osc_udp(live)
        clients.append(fresh)
        owner.request("/flow/register", fresh.port)
        assert fresh.receive().address == "/flow/reply/register"  # its copy of the reply
        assert fresh.request("/flow/unregister", fresh.port).address == "/flow/reply/unregister"
        assert f"127.0.0.1:{fresh.port}" not in _listed(live)
    finally:
        for client in clients:
            client.close()
        context.destroy(linger=0)


def test_listeners_expire_unless_registered_again_and_a_full_table_is_busy() -> None:
    with DaemonProcess({"daemon": {"listener_ttl_seconds": 3, "max_listeners": 2}}) as process:
        client = OscUdp(process.osc_udp)
        try:
            first = client.request("/flow/register", 41001)
            assert first.params[:2] == ["127.0.0.1", 41001] and first.params[3] == 3.0  # ttl_seconds
            client.request("/flow/register", 41002)
            full = client.request("/flow/register", 41003)
            assert full.params[:2] == ["/flow/register", "busy"]
            assert "daemon.max_listeners = 2" in full.params[2] and "daemon.listener_ttl_seconds" in full.params[2]
            # Not registered again: both expire, and the table has room again.
            deadline = time.monotonic() + 30
            while call_status(client)["listeners"]:
                assert time.monotonic() < deadline, "listeners never expired"
                client.client.receive(0.2)
            assert "listener expired: 127.0.0.1:41001" in process.log()
            assert client.request("/flow/register", 41003).address == "/flow/reply/register"
        finally:
            client.close()


def call_status(client: OscUdp) -> dict:
    reply = client.request("/flow/status")
    assert reply.address == "/flow/reply/status"
    return json.loads(reply.params[0])
