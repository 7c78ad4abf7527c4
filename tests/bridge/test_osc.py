"""OSC over UDP and TCP against the real daemon: replies, bundles, listeners and bad input."""

from __future__ import annotations

import time

import pytest
from pythonosc import slip
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge import __version__
from tests.conftest import OscTcp, OscUdp


def _message(address: str, *args: object) -> bytes:
    builder = OscMessageBuilder(address=address)
    for arg in args:
        builder.add_arg(arg)
    return builder.build().dgram


def _bundle(timestamp: float, *messages: bytes) -> bytes:
    from pythonosc.osc_message import OscMessage

    builder = OscBundleBuilder(timestamp)
    for raw in messages:
        builder.add_content(OscMessage(raw))
    return builder.build().dgram


def test_udp_ping_replies_pong_and_version(osc_udp: OscUdp) -> None:
    reply = osc_udp.request("/flow/ping")
    assert reply.address == "/flow/reply/ping"
    assert reply.params == ["pong", __version__]


def test_tcp_ping_replies_on_the_same_connection(osc_tcp: OscTcp) -> None:
    reply = osc_tcp.request("/flow/ping")
    assert reply.address == "/flow/reply/ping"
    assert reply.params == ["pong", __version__]


def test_tcp_frames_split_across_writes_and_joined_in_one_write(osc_tcp: OscTcp) -> None:
    frame = slip.encode(_message("/flow/ping"))
    osc_tcp.send_raw(frame[:5])
    time.sleep(0.05)  # let the daemon see a partial frame before the rest arrives
    osc_tcp.send_raw(frame[5:] + frame + frame)
    replies = [osc_tcp.receive() for _ in range(3)]
    assert [r.address for r in replies] == ["/flow/reply/ping"] * 3


def test_status_reports_endpoints_as_json(osc_udp: OscUdp, daemon) -> None:
    import json

    reply = osc_udp.request("/flow/status")
    assert reply.address == "/flow/reply/status"
    status = json.loads(reply.params[0])
    assert status["version"] == __version__
    assert status["endpoints"]["osc_udp"] == f"127.0.0.1:{daemon.osc_udp[1]}"
    assert status["endpoints"]["zmq_requests"] == daemon.zmq_requests


def test_bundle_runs_every_message(osc_udp: OscUdp) -> None:
    osc_udp.send_raw(_bundle(IMMEDIATELY, _message("/flow/ping"), _message("/flow/commands", "ping")))
    addresses = sorted(osc_udp.receive().address for _ in range(2))
    assert addresses == ["/flow/reply/commands", "/flow/reply/ping"]


def test_bundle_with_a_near_future_timetag_runs_later(osc_udp: OscUdp) -> None:
    osc_udp.send_raw(_bundle(time.time() + 0.3, _message("/flow/ping")))
    assert osc_udp.receive().address == "/flow/reply/ping"


def test_bundle_too_far_in_the_future_is_refused(osc_udp: OscUdp) -> None:
    osc_udp.send_raw(_bundle(time.time() + 3600, _message("/flow/ping")))
    error = osc_udp.receive()
    assert error.address == "/flow/error"
    assert error.params[1] == "bad_request"
    assert "future" in error.params[2]


@pytest.mark.parametrize(
    ("packet", "address", "code", "words"),
    [
        (b"\x00\x01\x02garbage", "", "bad_request", "malformed OSC packet"),
        (_message("/flow/register", 5)[:-2], "", "bad_request", "malformed OSC packet"),  # truncated int
        (_message("/flow/nope"), "/flow/nope", "unknown_command", "nope"),
        (_message("/other/ping"), "/other/ping", "unknown_command", "/flow/"),
        (_message("/flow/ping", 1), "/flow/ping", "bad_request", "takes no arguments"),
        (_message("/flow/register"), "/flow/register", "bad_request", "missing argument 'port'"),
        (_message("/flow/register", 1, 2), "/flow/register", "bad_request", "at most 1"),
        (_message("/flow/register", "x"), "/flow/register", "bad_request", "argument 'port' expected int"),
        (_message("/flow/register", 70000), "/flow/register", "bad_request", "[1, 65535]"),
        (_message("/flow/register", 1.5), "/flow/register", "bad_request", "1.5"),
        (_message("/flow/ping", *["x" * 1000] * 20), "", "bad_request", "exceeds osc.max_packet_bytes"),
    ],
)
def test_udp_bad_input_gets_a_structured_error_and_the_daemon_keeps_serving(
    osc_udp: OscUdp, daemon, packet: bytes, address: str, code: str, words: str
) -> None:
    osc_udp.send_raw(packet)
    error = osc_udp.receive()
    assert error.address == "/flow/error"
    assert error.params[:2] == [address, code]
    assert words in error.params[2]
    assert osc_udp.request("/flow/ping").params[0] == "pong"
    assert code in daemon.log()  # and a warning line names it


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (slip.encode(b"\x00\x01garbage!"), "bad_request", "malformed OSC packet"),
        (slip.END + b"/flow/ping\xdb\x01" + slip.END, "bad_request", "SLIP"),
        (slip.encode(_message("/flow/ping", "y" * 20000)), "bad_request", "exceeds osc.max_packet_bytes"),
        (slip.encode(_message("/flow/ping", "y" * 40000)), "bad_request", "exceeds osc.max_packet_bytes"),
        (slip.encode(_message("/flow/register", "x")), "bad_request", "argument 'port'"),
        (slip.encode(_message("/flow/what")), "unknown_command", "what"),
    ],
)
def test_tcp_bad_input_gets_a_structured_error_on_the_same_connection(
    osc_tcp: OscTcp, data: bytes, code: str, words: str
) -> None:
    osc_tcp.send_raw(data)
    error = osc_tcp.receive()
    assert error.address == "/flow/error"
    assert error.params[1] == code
    assert words in error.params[2]
    assert osc_tcp.request("/flow/ping").params[0] == "pong"


def test_register_copies_replies_and_errors_to_the_listener(osc_udp: OscUdp, daemon) -> None:
    listener = OscUdp(daemon.osc_udp)
    try:
        reply = osc_udp.request("/flow/register", listener.port)
        assert reply.address == "/flow/reply/register"
        assert reply.params[:2] == ["127.0.0.1", listener.port]
        # The listener itself hears the confirmation: udpsend-only senders learn it worked.
        assert listener.receive().address == "/flow/reply/register"
        # Max's pattern: requests go out of one socket, answers come in on the registered port.
        osc_udp.send("/flow/ping")
        assert osc_udp.receive().params[0] == "pong"
        assert listener.receive().address == "/flow/reply/ping"
        osc_udp.send("/flow/nope")
        assert osc_udp.receive().address == "/flow/error"
        assert listener.receive().params[:2] == ["/flow/nope", "unknown_command"]
        assert osc_udp.request("/flow/unregister", listener.port).params[:2] == ["127.0.0.1", listener.port]
        osc_udp.request("/flow/ping")
        assert listener.client.receive(0.3) == b""  # nothing once unregistered
    finally:
        listener.close()
