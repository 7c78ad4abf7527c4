"""ZeroMQ requests (REQ and DEALER) against the real daemon, and every kind of bad request."""

from __future__ import annotations

import json

import pytest
import zmq

from bridge import __version__
from tests.conftest import zmq_request


def test_req_ping(req: zmq.Socket) -> None:
    reply = zmq_request(req, {"id": 7, "cmd": "ping"})
    assert reply == {"id": 7, "ok": True, "result": {"reply": "pong", "version": __version__}}


@pytest.mark.parametrize("request_id", ["abc", 12, 1.5, None, {"nested": [1, 2]}])
def test_dealer_ping_echoes_any_id(dealer: zmq.Socket, request_id: object) -> None:
    reply = zmq_request(dealer, {"id": request_id, "cmd": "ping", "args": {}})
    assert reply["id"] == request_id
    assert reply["ok"] is True
    assert reply["result"]["reply"] == "pong"


def test_dealer_pipelines_requests(dealer: zmq.Socket) -> None:
    for n in range(20):
        dealer.send(json.dumps({"id": n, "cmd": "ping"}).encode())
    ids = []
    for _ in range(20):
        assert dealer.poll(5000)
        ids.append(json.loads(dealer.recv())["id"])
    assert sorted(ids) == list(range(20))


def test_named_arguments_are_typed_and_validated(req: zmq.Socket) -> None:
    reply = zmq_request(req, {"id": 1, "cmd": "commands", "args": {"name": "register"}})
    assert reply["ok"] is True
    [spec] = reply["result"]["commands"]
    assert spec["osc"] == "/flow/register"
    assert spec["args"][0] == {"name": "port", "type": "int", "help": spec["args"][0]["help"], "min": 1, "max": 65535}


@pytest.mark.parametrize(
    ("raw", "code", "words", "echoed_id"),
    [
        (b"{not json", "bad_request", "malformed JSON", None),
        (b"\xff\xfe\x00", "bad_request", "malformed JSON", None),
        (b"[1, 2, 3]", "bad_request", "expected a JSON object", None),
        (b'{"id": 3}', "bad_request", "'cmd' must be a non-empty string", 3),
        (b'{"id": 3, "cmd": 5}', "bad_request", "'cmd' must be a non-empty string", 3),
        (b'{"id": 3, "cmd": "pong"}', "unknown_command", "did you mean ping", 3),
        (b'{"id": 3, "cmd": "ping", "args": [1]}', "bad_request", "'args' must be a JSON object", 3),
        (b'{"id": 3, "cmd": "ping", "args": "x"}', "bad_request", "'args' must be a JSON object", 3),
        (b'{"id": 3, "cmd": "ping", "args": {"x": 1}}', "bad_request", "unknown argument(s) ['x']", 3),
        (b'{"id": 3, "cmd": "register", "args": {}}', "bad_request", "missing argument 'port'", 3),
        (b'{"id": 3, "cmd": "register", "args": {"port": "80"}}', "bad_request",
         "expected int in [1, 65535], got '80'", 3),
        (b'{"id": 3, "cmd": "register", "args": {"port": true}}', "bad_request", "got True (bool)", 3),
        (b'{"id": 3, "cmd": "register", "args": {"port": 0}}', "bad_request", "got 0 (int)", 3),
        (b'{"id": 3, "cmd": "ping", "pad": "' + b"z" * 1_100_000 + b'"}', "bad_request",
         "exceeds zmq.max_message_bytes", None),
        # JSON may escape a lone surrogate, which no text or file name holds: refused, not an internal error.
        (b'{"id": 3, "cmd": "job.status", "args": {"id": "\\ud800"}}', "bad_request",
         "argument 'id' holds a lone surrogate", 3),
        (b'{"id": 3, "cmd": "samples.search", "args": {"query": "kick \\udfff"}}', "bad_request",
         "argument 'query' holds a lone surrogate", 3),
        (b'{"id": 3, "cmd": "stems.separate", "args": {"path": "/x.wav", "stems": ["vocals", "\\ud83d"]}}',
         "bad_request", "argument 'stems' holds a lone surrogate", 3),
    ],
)
def test_bad_requests_get_structured_errors_and_the_daemon_keeps_serving(
    req: zmq.Socket, daemon, raw: bytes, code: str, words: str, echoed_id: int | None
) -> None:
    reply = zmq_request(req, None, raw=raw)
    assert reply["ok"] is False
    assert reply["error"]["code"] == code
    assert words in reply["error"]["message"]
    assert reply["id"] == echoed_id  # echoed whenever the request could be parsed
    assert zmq_request(req, {"id": 4, "cmd": "ping"})["ok"] is True
    assert "WARNING" in daemon.log()


def test_register_over_zmq_uses_the_peer_host(req: zmq.Socket) -> None:
    reply = zmq_request(req, {"id": 1, "cmd": "register", "args": {"port": 45678}})
    assert reply["ok"] is True
    assert reply["result"]["host"] == "127.0.0.1"
    status = zmq_request(req, {"id": 2, "cmd": "status"})["result"]
    assert "127.0.0.1:45678" in status["listeners"]
    assert zmq_request(req, {"id": 3, "cmd": "unregister", "args": {"port": 45678}})["result"]["removed"] is True


# -- poison requests: answered, and the requests queued behind them too --------------------------


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "zmq.max_json_depth (32)"),  # RecursionError in json
        (b'{"id": 1, "cmd": "ping", "x": ' + b"[" * 40 + b"]" * 40 + b"}", "zmq.max_json_depth (32)"),
        (b'{"id": ' + b"7" * 5000 + b', "cmd": "ping"}', "zmq.max_int_digits (64)"),  # over Python's 4,300
        (b'{"id": 1, "cmd": "ping", "args": {"n": -' + b"9" * 65 + b"}}", "zmq.max_int_digits (64)"),
    ],
    ids=["deep-recursion", "deeper-than-config", "5000-digit-id", "65-digit-arg"],
)
def test_poison_requests_are_answered_and_do_not_stall_the_queue_behind_them(
    dealer: zmq.Socket, daemon, raw: bytes, words: str
) -> None:
    """Finding 7: the poison, then three pings in the same write burst, nothing from anyone else."""
    dealer.send(raw)
    for n in range(3):
        dealer.send(json.dumps({"id": n, "cmd": "ping"}).encode())
    replies = []
    for _ in range(4):
        assert dealer.poll(5000), f"only {len(replies)} of 4 replies: the queue stalled"
        replies.append(json.loads(dealer.recv()))
    [error] = [reply for reply in replies if not reply["ok"]]
    assert error["error"]["code"] == "bad_request"
    assert words in error["error"]["message"]
    assert sorted(reply["id"] for reply in replies if reply["ok"]) == [0, 1, 2]


def test_a_huge_command_name_is_quoted_short(req: zmq.Socket, daemon) -> None:
    before = len(daemon.log())
    reply = zmq_request(req, {"id": 1, "cmd": "x" * 500_000})
    assert reply["error"]["code"] == "unknown_command"
    assert len(reply["error"]["message"]) < 500
    assert len(daemon.log()) - before < 2000


def test_a_client_s_text_comes_back_and_goes_to_the_log_short_and_on_one_line(req: zmq.Socket, daemon) -> None:
    before = len(daemon.log())
    for request in ({"id": 1, "cmd": "job.status", "args": {"id": "f" * 900_000}},
                    {"id": 2, "cmd": "job.cancel", "args": {"id": "x\n2026-12-06 00:00:00,000 ERROR forged"}},
                    {"id": 3, "cmd": "ping\n2026-12-06 00:00:00,000 ERROR forged"}):
        reply = zmq_request(req, request)
        assert reply["ok"] is False and len(reply["error"]["message"]) < 500, reply["error"]["message"][:200]
    assert zmq_request(req, {"id": 4, "cmd": "ping"})["ok"] is True
    log = daemon.log()[before:]
    assert len(log) < 4000
    assert "\n2026-12-06 00:00:00,000 ERROR forged" not in log  # no line the client wrote


def test_a_request_far_over_the_size_limit_is_never_read_and_others_are_served() -> None:
    """Over zmq.max_message_bytes: bad_request. A frame over 16 times that, or a subscription over
    4 KiB: ZeroMQ drops the sender's connection before the daemon holds it in memory; everyone
    else goes on."""
    import zmq.utils.monitor

    from bridge.testing import DaemonProcess
    from bridge.transports.zmq import HARD_LIMIT_FACTOR

    def wait_for(monitor: zmq.Socket, event: int) -> None:
        while monitor.poll(30_000):
            if zmq.utils.monitor.recv_monitor_message(monitor)["event"] == event:
                return
        raise AssertionError(f"no {zmq.Event(event).name} on the sender's socket within 30 s")

    with DaemonProcess({"zmq": {"max_message_bytes": 4096}}) as process:
        context = zmq.Context.instance()
        with context.socket(zmq.DEALER) as sender, context.socket(zmq.DEALER) as other:
            sender.setsockopt(zmq.LINGER, 0)
            other.setsockopt(zmq.LINGER, 0)
            monitor = sender.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
            try:
                sender.connect(process.zmq_requests)
                other.connect(process.zmq_requests)
                wait_for(monitor, zmq.EVENT_HANDSHAKE_SUCCEEDED)
                sender.send(json.dumps({"id": 1, "cmd": "ping", "pad": "z" * 8000}).encode())
                assert sender.poll(30_000), "no answer to a request over zmq.max_message_bytes"
                assert json.loads(sender.recv())["error"]["code"] == "bad_request"
                sender.send(json.dumps({"id": 2, "cmd": "ping", "pad": "z" * (HARD_LIMIT_FACTOR * 4096)}).encode())
                wait_for(monitor, zmq.EVENT_DISCONNECTED)
                other.send(json.dumps({"id": 3, "cmd": "ping"}).encode())
                assert other.poll(30_000) and json.loads(other.recv())["result"]["reply"] == "pong"
            finally:
                sender.disable_monitor()
                monitor.close()
        with context.socket(zmq.SUB) as subscriber:  # a subscription is an event name's prefix: 8 KB is not one
            subscriber.setsockopt(zmq.LINGER, 0)
            monitor = subscriber.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
            try:
                subscriber.setsockopt(zmq.SUBSCRIBE, b"job." + b"x" * 8192)
                subscriber.connect(process.zmq_events)
                wait_for(monitor, zmq.EVENT_DISCONNECTED)
            finally:
                subscriber.disable_monitor()
                monitor.close()
        assert process.log().count("exceeds zmq.max_message_bytes") == 1  # the second was never read
