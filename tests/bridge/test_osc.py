"""OSC over UDP and TCP against the real daemon: replies, bundles, listeners and bad input."""

from __future__ import annotations

import socket
import sys
import time

import pytest
from pythonosc import slip
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge import __version__
from tests.conftest import REPLY_TIMEOUT, OscTcp, OscUdp


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


def test_a_listener_registered_at_the_daemons_own_port_starts_no_loop(osc_udp: OscUdp, daemon) -> None:
    """A script registers the daemon's own port by mistake: copies of the answers then reach the
    daemon itself, which must not answer them (each answer would be answered again, for ever)."""
    own = daemon.osc_udp[1]
    before = len(daemon.log())
    try:
        assert osc_udp.request("/flow/register", own).address == "/flow/reply/register"
        daemon.wait_for_log("OSC '/flow/reply/register' from 127.0.0.1:%d ignored" % own, since=before)
        for _ in range(3):
            assert osc_udp.request("/flow/ping").params[0] == "pong"
        osc_udp.send("/flow/nope")  # an error's copy comes back too
        assert osc_udp.receive().address == "/flow/error"
        assert osc_udp.request("/flow/ping").params[0] == "pong"
    finally:
        assert osc_udp.request("/flow/unregister", own).params[:2] == ["127.0.0.1", own]
    log = daemon.log()[before:]
    assert log.count("ignored, and whatever else of the kind comes from there") == 1, log[-3000:]
    assert "unknown OSC address '/flow/reply" not in log and "unknown OSC address '/flow/error'" not in log


# -- cross-protocol: a web page must not drive the daemon through the OSC TCP port ----------------


def _daw_tempo(client: OscUdp) -> float:
    reply = client.request("/flow/daw/status")
    assert reply.address == "/flow/reply/daw/status"
    return reply.params[0]


def _listeners(client: OscUdp) -> list[str]:
    import json

    return json.loads(client.request("/flow/status").params[0])["listeners"]


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the daemon sends until it closes the connection (a timeout fails the test)."""
    sock.settimeout(REPLY_TIMEOUT)
    received = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return received
        received += chunk


@pytest.mark.parametrize(
    "head",
    [
        # What fetch("http://127.0.0.1:9011/", {method: "POST", mode: "no-cors", body}) sends: a CORS
        # "simple request" (text/plain), no preflight, so the browser sends it without asking.
        (b"POST / HTTP/1.1\r\nHost: 127.0.0.1:9011\r\nOrigin: https://evil.example\r\n"
         b"Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {length}\r\n\r\n"),
        b"PUT /flow HTTP/1.1\r\nHost: localhost\r\nContent-Length: {length}\r\n\r\n",
        b"\x00\x00\x00\x20",  # OSC 1.0 length-prefixed framing: not what this port speaks
    ],
    ids=["browser-post", "put", "osc-1.0-length-prefix"],
)
def test_a_connection_that_does_not_start_with_slip_is_closed_and_nothing_in_it_runs(
    osc_udp: OscUdp, daemon, head: bytes
) -> None:
    before_tempo = _daw_tempo(osc_udp)
    before_listeners = _listeners(osc_udp)
    body = (
        b"\r\n" + slip.encode(_message("/flow/daw/set", 177.0)) + slip.encode(_message("/flow/register", 40999))
        + slip.encode(_message("/flow/daw/set", 178.0))
    )
    request = head.replace(b"{length}", str(len(body)).encode()) + body
    with socket.create_connection(daemon.osc_tcp) as sock:
        sock.sendall(request)
        answer = _read_until_closed(sock)  # the daemon closes the connection
    if head.startswith((b"POST", b"PUT")):
        assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
    assert b"OSC 1.1" in answer
    assert _daw_tempo(osc_udp) == before_tempo
    assert _listeners(osc_udp) == before_listeners
    assert "nothing in it ran" in daemon.log()


def test_the_same_post_through_http_client_changes_nothing(osc_udp: OscUdp, daemon) -> None:
    import http.client

    before_tempo = _daw_tempo(osc_udp)
    connection = http.client.HTTPConnection(*daemon.osc_tcp, timeout=REPLY_TIMEOUT)
    try:
        body = slip.encode(_message("/flow/daw/set", 166.0))
        connection.request("POST", "/", body=body, headers={"Content-Type": "text/plain"})
        response = connection.getresponse()
        assert response.status == 400
        assert b"OSC 1.1" in response.read()
    finally:
        connection.close()
    assert _daw_tempo(osc_udp) == before_tempo


@pytest.mark.parametrize(
    "framing",
    [lambda packet: slip.END + packet + slip.END, lambda packet: packet + slip.END],
    ids=["double-END (python-osc, liblo double)", "single-END (liblo default SLIP)"],
)
def test_real_osc_clients_first_bytes_are_accepted(daemon, framing) -> None:
    from pythonosc.osc_message import OscMessage

    bundle = _bundle(IMMEDIATELY, _message("/flow/ping"))
    with socket.create_connection(daemon.osc_tcp) as sock:
        sock.settimeout(REPLY_TIMEOUT)
        sock.sendall(framing(_message("/flow/ping")) + framing(bundle))
        received = b""
        while received.count(slip.END) < 4:
            chunk = sock.recv(65536)
            assert chunk, "the daemon closed an OSC 1.1 connection"
            received += chunk
    frames = [frame for frame in received.split(slip.END) if frame]
    assert [OscMessage(slip.decode(slip.END + f + slip.END)).address for f in frames] == ["/flow/reply/ping"] * 2


def test_a_liblo_style_connection_starting_with_a_bundle_is_accepted(daemon) -> None:
    from pythonosc.osc_message import OscMessage

    with socket.create_connection(daemon.osc_tcp) as sock:
        sock.settimeout(REPLY_TIMEOUT)
        packet = _bundle(IMMEDIATELY, _message("/flow/ping"))
        sock.sendall(packet[:3])  # '#bu': not yet enough to decide
        sock.sendall(packet[3:] + slip.END)
        received = b""
        while received.count(slip.END) < 2:
            chunk = sock.recv(65536)
            assert chunk, "the daemon closed an OSC 1.1 connection"
            received += chunk
    [frame] = [frame for frame in received.split(slip.END) if frame]
    assert OscMessage(frame).address == "/flow/reply/ping"


# -- one TCP client cannot freeze the others ------------------------------------------------------


def test_a_flooding_client_that_does_not_read_neither_blocks_others_nor_loses_replies(osc_udp: OscUdp, daemon) -> None:
    """Finding 8: 1,000 requests in one write from a client that does not read its replies.

    Its replies (each `commands` reply is kilobytes) fill its socket; the daemon then stops
    taking its requests until it reads (back-pressure), so another client's requests are
    answered meanwhile and the flood's last request has not run yet. Once the flooder reads,
    every one of its requests is answered, in order, none dropped.
    """
    import threading

    from pythonosc.osc_message import OscMessage

    count = 500
    frames = []
    for n in range(count):
        frames.append(slip.encode(_message("/flow/commands")))
        frames.append(slip.encode(_message("/flow/daw/set", 100.0 + n % 50)))
    frames.append(slip.encode(_message("/flow/daw/set", 199.0)))  # the last request of the flood
    flood = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # reads nothing, buffers little
    flood.connect(daemon.osc_tcp)
    writer = threading.Thread(target=flood.sendall, args=(b"".join(frames),), daemon=True)
    try:
        writer.start()
        # Another client is answered while the flood waits for its reader ...
        assert osc_udp.request("/flow/ping").params[0] == "pong"
        other = OscTcp(daemon.osc_tcp)
        try:
            assert other.request("/flow/ping").params[0] == "pong"
        finally:
            other.close()
        # ... and the flood has not been run to its end: it waits for its client to read.
        assert _daw_tempo(osc_udp) != 199.0
        # Now the flooder reads: every request is answered, none dropped.
        flood.settimeout(REPLY_TIMEOUT)
        buffer = b""
        answered = 0
        last: OscMessage | None = None
        while answered < 2 * count + 1:
            chunk = flood.recv(1 << 20)
            assert chunk, f"connection closed after {answered} replies"
            buffer += chunk
            *complete, buffer = buffer.split(slip.END)
            for frame in complete:
                if frame:
                    answered += 1
                    last = OscMessage(slip.decode(slip.END + frame + slip.END))
        assert last is not None and last.address == "/flow/reply/daw/set" and last.params[0] == 199.0
        writer.join(REPLY_TIMEOUT)
        assert not writer.is_alive()
    finally:
        flood.close()
    assert _daw_tempo(osc_udp) == 199.0


# -- strict parsing: nothing runs with "the remaining arguments" ----------------------------------


def _raw_message(address: bytes, tags: bytes, payload: bytes) -> bytes:
    def pad(data: bytes) -> bytes:
        return data + b"\x00" * (4 - len(data) % 4)

    return pad(address) + pad(tags) + payload


def _raw_bundle(*elements: tuple[int, bytes], timetag: bytes = b"\x00\x00\x00\x00\x00\x00\x00\x01") -> bytes:
    import struct

    return b"#bundle\x00" + timetag + b"".join(struct.pack(">i", size) + data for size, data in elements)


@pytest.mark.parametrize(
    ("packet", "words"),
    [
        # An unknown type tag: python-osc skipped it and /flow/register ran with port 9.
        (_raw_message(b"/flow/register", b",xi", b"\x00\x00\x00\x09"), "unsupported type tag(s) 'x'"),
        # Bytes left after the declared arguments (a wrong size or a missing tag).
        (_raw_message(b"/flow/register", b",i", b"\x00\x00\x00\x09" + b"\x00\x00\x00\x07"), "left after the arguments"),
        # A bundle element claiming more bytes than the bundle holds.
        (_raw_bundle((400, _message("/flow/ping"))), "element size 400"),
        # A bundle element size that is not a multiple of 4.
        (_raw_bundle((len(_message("/flow/ping")) + 2, _message("/flow/ping") + b"\x00\x00")), "element size"),
        # Stray bytes that cannot be an element size.
        (_raw_bundle((len(_message("/flow/ping")), _message("/flow/ping"))) + b"\x00\x01", "stray byte"),
        # An element that is neither a message nor a bundle (python-osc logged it whole and went on).
        (_raw_bundle((8, b"zzzzzzzz")), "not '/' or '#bundle'"),
        # A string argument that is not UTF-8.
        (_raw_message(b"/flow/commands", b",s", b"\xff\xfe\x00\x00"), "not UTF-8"),
        # Bundles without a message: valid OSC, but nothing would have answered them.
        (_raw_bundle(), "holds no messages"),
        (_raw_bundle((16, _raw_bundle()), (16, _raw_bundle())), "holds no messages"),
    ],
    ids=["unknown-tag", "trailing-bytes", "element-too-long", "element-not-aligned", "stray-bytes",
         "element-not-osc", "not-utf8", "empty-bundle", "only-empty-bundles"],
)
def test_malformed_packets_are_refused_whole(osc_udp: OscUdp, packet: bytes, words: str) -> None:
    osc_udp.send_raw(packet)
    error = osc_udp.receive()
    assert error.address == "/flow/error"
    assert error.params[1] == "bad_request"
    assert words in error.params[2]
    assert osc_udp.request("/flow/ping").params[0] == "pong"  # and nothing else arrived before it


def test_bundles_are_bounded_in_messages_and_depth(osc_udp: OscUdp) -> None:
    from bridge.config import OscConfig

    limit = OscConfig().max_bundle_messages
    osc_udp.send_raw(_bundle(IMMEDIATELY, *[_message("/flow/ping")] * (limit + 1)))
    error = osc_udp.receive()
    assert error.params[1] == "bad_request" and f"osc.max_bundle_messages ({limit})" in error.params[2]

    depth = OscConfig().max_nesting_depth
    nested = _message("/flow/ping")
    for _ in range(depth + 1):
        nested = _raw_bundle((len(nested), nested))
    osc_udp.send_raw(nested)
    error = osc_udp.receive()
    assert error.params[1] == "bad_request" and f"osc.max_nesting_depth ({depth})" in error.params[2]
    assert osc_udp.request("/flow/ping").params[0] == "pong"  # no ping of either packet ran


def test_delayed_bundle_messages_are_capped_with_busy(osc_udp: OscUdp, daemon) -> None:
    """Finding 13: 300 packets once scheduled 245,400 timers; now at most osc.max_scheduled_messages wait."""
    from bridge.config import OscConfig

    config = OscConfig()
    per_packet = config.max_bundle_messages
    packets = config.max_scheduled_messages // per_packet + 1
    later = time.time() + 50  # inside the 60 s window, far enough not to fire during the test
    for _ in range(packets):
        osc_udp.send_raw(_bundle(later, *[_message("/flow/daw/status")] * per_packet))
    error = osc_udp.receive()  # accepted bundles say nothing until they run: this is the refusal
    assert error.address == "/flow/error"
    assert error.params[1] == "busy"
    assert f"osc.max_scheduled_messages ({config.max_scheduled_messages})" in error.params[2]
    assert osc_udp.request("/flow/ping").params[0] == "pong"


def test_a_16_kb_bad_packet_writes_a_short_log_line(osc_udp: OscUdp, daemon) -> None:
    before = len(daemon.log())
    osc_udp.send_raw(_message("/flow/" + "x" * 16000))
    error = osc_udp.receive()
    assert error.params[1] == "unknown_command"
    assert len(error.params[2]) < 1000  # the message quotes a prefix of the address, not all of it
    assert osc_udp.request("/flow/ping").params[0] == "pong"
    assert len(daemon.log()) - before < 2000


def test_the_udp_receive_buffer_size_is_logged(daemon) -> None:
    assert "OSC UDP receive buffer: asked 4194304 bytes (osc.udp_receive_buffer_bytes), the OS gave" in daemon.log()


# As macOS's launchd starts a program: 256 open files. The daemon raises its own limit.
LOW_OPEN_FILES_ENTRY = [
    "-c",
    ("import resource, runpy, sys; hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
     "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)); sys.argv[0] = 'flowstate'; "
     "runpy.run_module('bridge', run_name='__main__', alter_sys=True)"),
]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX open-file limits")
def test_tcp_clients_past_the_limit_are_told_busy_and_a_256_open_file_start_is_raised() -> None:
    import resource

    from pythonosc.osc_message import OscMessage

    from bridge.testing import DaemonProcess

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    raised = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    with DaemonProcess({"osc": {"max_tcp_connections": 3}}, entry=LOW_OPEN_FILES_ENTRY) as process:
        if raised > 256:
            process.wait_for_log(f"open files: limit raised from 256 to {raised}")
        clients = [OscTcp(process.osc_tcp) for _ in range(3)]
        try:
            for client in clients:
                assert client.request("/flow/ping").params[0] == "pong"
            for _ in range(2):  # a fourth, twice: told why, then closed
                with socket.create_connection(process.osc_tcp) as sock:
                    frames = [f for f in _read_until_closed(sock).split(slip.END) if f]
                [error] = [OscMessage(slip.decode(slip.END + f + slip.END)) for f in frames]
                assert error.address == "/flow/error" and error.params[1] == "busy", error.params
                assert "osc.max_tcp_connections = 3" in error.params[2]
            assert clients[1].request("/flow/ping").params[0] == "pong"  # the three connected are served
            assert process.log().count("refused: 3 OSC TCP clients are connected") == 1  # one line a stretch
            clients.pop(0).close()
            deadline = time.monotonic() + REPLY_TIMEOUT
            while True:  # room again once the daemon has seen the close
                newcomer = OscTcp(process.osc_tcp)
                try:
                    answer = newcomer.request("/flow/ping").params[0]
                except (AssertionError, OSError):  # refused: closed while we asked
                    answer = None
                finally:
                    newcomer.close()
                if answer == "pong":
                    break
                assert time.monotonic() < deadline, "no room for a client after one closed"
        finally:
            for client in clients:
                client.close()


def test_a_reply_too_large_for_udp_says_how_to_get_it() -> None:
    from bridge.testing import DaemonProcess

    with DaemonProcess({"osc": {"max_udp_reply_bytes": 1024}}) as process:
        udp = OscUdp(process.osc_udp)
        tcp = OscTcp(process.osc_tcp)
        try:
            error = udp.request("/flow/commands")  # the vocabulary is about 16 KB of JSON
            assert error.address == "/flow/error"
            assert error.params[:2] == ["/flow/commands", "bad_request"]
            assert "osc.max_udp_reply_bytes = 1024" in error.params[2]
            assert "OSC TCP or ZeroMQ" in error.params[2]
            assert tcp.request("/flow/commands").address == "/flow/reply/commands"  # TCP carries it
        finally:
            udp.close()
            tcp.close()


def test_a_client_that_never_reads_is_disconnected_above_the_write_bound() -> None:
    """Back-pressure off (pause above the hard bound): the hard bound alone closes the connection."""
    from bridge.testing import DaemonProcess

    overrides = {"osc": {"tcp_pause_write_bytes": 16 * 1_048_576, "tcp_max_write_bytes": 65536}}
    with DaemonProcess(overrides) as process:
        sink = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sink.connect(process.osc_tcp)
        udp = OscUdp(process.osc_udp)
        try:
            sink.sendall(slip.encode(_message("/flow/commands")) * 200)  # about 3 MB of replies
            deadline = time.monotonic() + 30
            while "closing the connection" not in process.log():
                assert time.monotonic() < deadline, "the daemon kept buffering for a client that does not read"
                assert udp.request("/flow/ping").params[0] == "pong"  # everyone else is served meanwhile
            assert "osc.tcp_max_write_bytes (65536)" in process.log()
        finally:
            sink.close()
            udp.close()
