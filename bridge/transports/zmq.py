"""ZeroMQ: a ROUTER socket for requests (REQ and DEALER clients) and an XPUB socket for events.

Request:  {"id": <any>, "cmd": <name>, "args": {...}}
Reply:    {"id": <same>, "ok": true, "result": {...}}
Error:    {"id": <same>, "ok": false, "error": {"code": ..., "message": ...}}
Events:   PUB multipart [topic = event name, {"event": name, "data": {...}}]. A DEALER client
          (one that sends no empty delimiter frame) also receives the events of its own jobs on
          its request socket; a REQ client cannot (its socket only accepts one reply per request).
          The events socket is an XPUB, which SUB clients see as a PUB: the daemon reads the
          subscriptions so that what it says once (`EventHub.when_heard`) waits for a subscriber.

This module only translates between frames and `Request` / `Reply` / `Event` objects.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import zmq

from bridge.config import ZmqConfig
from bridge.errors import BadRequest, BridgeError, Internal
from bridge.events import EventHub
from bridge.protocol import Event, Origin, Reply, Request, loads_json

log = logging.getLogger(__name__)

Dispatch = Callable[[Request, Callable[[Reply], None]], None]

# ZeroMQ never reads a request frame larger than this many times zmq.max_message_bytes (ZMQ_MAXMSGSIZE),
# nor a subscription larger than MAX_SUBSCRIPTION_BYTES (a topic is an event name's prefix).
HARD_LIMIT_FACTOR = 16
MAX_SUBSCRIPTION_BYTES = 4096


def new_event_loop() -> asyncio.AbstractEventLoop:
    """An event loop that can watch ZeroMQ's sockets, on every platform: a selector loop.

    A ZeroMQ socket is watched through its descriptor (ZMQ_FD) with `loop.add_reader`, here and in
    pyzmq's own `zmq.asyncio` (the MCP bridge's client). Windows' default loop is the proactor
    loop, which has no `add_reader` (CPython, Lib/asyncio/proactor_events.py: the base class's
    raises NotImplementedError), and pyzmq then needs tornado, which nothing here installs. The
    selector loop is what `asyncio.new_event_loop()` gives on macOS and Linux anyway; on Windows
    its select() takes ZMQ_FD, a socket. What it lacks there (signals) `watch_stop_signals` makes up.
    """
    return asyncio.SelectorEventLoop()


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode()


def reply_body(reply: Reply, request_id: Any) -> bytes:
    if reply.error is not None:
        return _dumps({"id": request_id, "ok": False, "error": reply.error.to_dict()})
    return _dumps({"id": request_id, "ok": True, "result": reply.result})


def event_body(event: Event) -> bytes:
    return _dumps(event.to_json())


@dataclass(eq=False)
class ZmqOrigin:
    server: ZmqServer
    envelope: list[bytes]
    host: str
    transport: str = "zmq"

    @property
    def key(self) -> tuple[Any, ...]:
        return ("zmq", self.envelope[0] if self.envelope else b"")

    @property
    def accepts_events(self) -> bool:
        # REQ sockets put an empty delimiter frame before the body; DEALERs usually do not.
        return b"" not in self.envelope

    def send_event(self, event: Event) -> None:
        if self.accepts_events:
            self.server.send(self.envelope, event_body(event))


class ZmqServer:
    """The ROUTER (requests) and PUB (events) sockets of one daemon."""

    def __init__(self, config: ZmqConfig, dispatch: Dispatch, hub: EventHub) -> None:
        self.config = config
        self._dispatch = dispatch
        self._context = zmq.Context()
        self._router: zmq.Socket | None = None
        self._pub: zmq.Socket | None = None  # XPUB
        self._hub = hub
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._closed = False
        self._loopback = config.host in ("127.0.0.1", "localhost")
        self.request_port = config.request_port
        self.event_port = config.event_port
        hub.add_sink(self._publish)

    async def start(self, bind: Callable[..., Any]) -> None:
        async def open_socket(kind: int, key: str, port: int) -> tuple[zmq.Socket, int]:
            sock = self._context.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            # A request over zmq.max_message_bytes is read and answered bad_request; a frame far over
            # it is not read at all (ZeroMQ drops the connection): 300 MB sent at the port would
            # otherwise be held in memory before the size check, and the allocator keeps what it once
            # held. A subscription (an event name) needs far less. Before the bind: the listener
            # hands its options to each connection. (The cap is per frame: a request split into
            # many frames is read, then refused.)
            cap = HARD_LIMIT_FACTOR * self.config.max_message_bytes if kind == zmq.ROUTER else MAX_SUBSCRIPTION_BYTES
            sock.setsockopt(zmq.MAXMSGSIZE, cap)
            try:
                actual = await bind(key, port, _bind(sock, self.config.host, port))
            except BaseException:
                sock.close()
                raise
            return sock, actual

        self._router, self.request_port = await open_socket(zmq.ROUTER, "zmq.request_port", self.config.request_port)
        self._pub, self.event_port = await open_socket(zmq.XPUB, "zmq.event_port", self.config.event_port)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._pub.fileno(), self._read_subscriptions)
        self._task = asyncio.create_task(self._serve(), name="zmq-router")

    def endpoints(self) -> dict[str, str]:
        host = self.config.host
        return {"zmq_requests": f"tcp://{host}:{self.request_port}", "zmq_events": f"tcp://{host}:{self.event_port}"}

    def stop_accepting(self) -> None:
        """Nothing to close yet: requests that arrive while the daemon drains get `unavailable`."""

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._closed = True
        if self._router is not None:
            self._router.close(linger=0)
        if self._pub is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._pub.fileno())
            self._pub.close(linger=500)  # let daemon.stopping reach the subscribers
        self._context.term()

    async def _serve(self) -> None:
        """Drain the ROUTER whenever its file descriptor signals; no future per message.

        ZeroMQ's descriptor only signals a change, so `_drain` reads until POLLIN clears, and
        every send made outside `_drain` schedules one more drain (a send can consume the signal).
        """
        assert self._router is not None and self._loop is not None
        fd = self._router.fileno()  # ZMQ_FD
        self._loop.add_reader(fd, self._drain)
        self._loop.call_soon(self._drain)
        try:
            await asyncio.Future()  # until close() cancels us
        finally:
            self._loop.remove_reader(fd)

    def _drain(self) -> None:
        """Read every waiting request; one bad message never ends the drain early.

        Each message's handling is fenced (an unexpected exception is logged and answered
        `internal`), and should the loop itself stop on an error, `finally` schedules another
        drain while requests are still waiting: the descriptor is edge-triggered and would not
        signal again for requests already queued.
        """
        router = self._router
        if router is None or self._closed:
            return
        self._draining = True
        try:
            while cast(int, router.getsockopt(zmq.EVENTS)) & zmq.POLLIN:  # pyzmq types options int | bytes
                if self._loopback:  # every peer is this machine: skip the zero-copy Frame detour
                    frames = router.recv_multipart(zmq.NOBLOCK)
                    host = "127.0.0.1"
                else:
                    raw = router.recv_multipart(zmq.NOBLOCK, copy=False)
                    host = _peer_address(raw[-1])
                    frames = [frame.bytes for frame in raw]
                if len(frames) < 2:
                    continue  # a ROUTER always prepends the identity; anything shorter is not a request
                envelope = frames[:-1]
                try:
                    self._handle(envelope, frames[-1], ZmqOrigin(self, envelope, host))
                except Exception as err:  # a bug: answer it, log it, go on with the next request
                    log.exception("ZeroMQ: handling a %d-byte request failed", len(frames[-1]))
                    error = Internal(f"the daemon failed on this request ({type(err).__name__}); "
                                     "its log has the traceback")
                    self.send(envelope, reply_body(Reply(name="", error=error), None))
        finally:
            self._draining = False
            if not self._closed and self._loop is not None and self._router is not None:
                try:
                    waiting = bool(cast(int, self._router.getsockopt(zmq.EVENTS)) & zmq.POLLIN)
                except zmq.ZMQError as err:
                    log.warning("ZeroMQ: cannot poll the request socket: %s", err)
                    waiting = False
                if waiting:
                    self._loop.call_soon(self._drain)

    def _handle(self, envelope: list[bytes], body: bytes, origin: ZmqOrigin) -> None:
        request_id: Any = None
        try:
            limit = self.config.max_message_bytes
            if len(body) > limit:
                raise BadRequest(f"message of {len(body)} bytes exceeds zmq.max_message_bytes ({limit})")
            message = loads_json(
                body, max_depth=self.config.max_json_depth, max_int_digits=self.config.max_int_digits, section="zmq"
            )
            if not isinstance(message, dict):
                raise BadRequest(f"expected a JSON object {{\"cmd\": ..., \"args\": {{...}}}}, "
                                 f"got {type(message).__name__}")
            request_id = message.get("id")
            name = message.get("cmd")
            if not isinstance(name, str) or not name:
                raise BadRequest(f"'cmd' must be a non-empty string naming a command, got {_short(name)}")
            args = message.get("args", {})
            if args is None:
                args = {}
            if not isinstance(args, dict):
                raise BadRequest(f"{_short(name)}: 'args' must be a JSON object of named arguments, "
                                 f"got {type(args).__name__}")
        except BridgeError as err:
            log.warning("ZeroMQ request rejected: %s: %s", err.code, err.message[:512])
            self.send(envelope, reply_body(Reply(name="", error=err), request_id))
            return
        request = Request(name=name, args=args, origin=origin, id=request_id)
        self._dispatch(request, lambda reply: self._reply(envelope, reply, request_id))

    def _reply(self, envelope: list[bytes], reply: Reply, request_id: Any) -> None:
        """Encode and send one reply; a result that cannot be encoded is answered `internal`."""
        try:
            body = reply_body(reply, request_id)
        except (TypeError, ValueError, RecursionError) as err:
            log.exception("ZeroMQ: the reply to %s cannot be encoded as JSON", reply.name)
            error = Internal(f"the reply to {reply.name} could not be encoded ({type(err).__name__}); "
                             "see the daemon log")
            body = reply_body(Reply(name=reply.name, error=error), request_id)
        self.send(envelope, body)

    def send(self, envelope: list[bytes], body: bytes) -> None:
        if self._router is None or self._closed:
            return
        try:
            self._router.send_multipart([*envelope, body], flags=zmq.NOBLOCK)
        except zmq.ZMQError as err:  # peer gone or not reading (high-water mark): drop, say so
            log.warning("ZeroMQ: could not send %d bytes to a client: %s", len(body), err)
        if not self._draining and self._loop is not None:
            self._loop.call_soon(self._drain)

    def _publish(self, event: Event, origin: Origin | None) -> None:
        if self._pub is None or self._closed:
            return
        try:
            self._pub.send_multipart([event.name.encode(), event_body(event)], flags=zmq.NOBLOCK)
            # A send can consume the edge-triggered descriptor's signal of a waiting subscription.
            if cast(int, self._pub.getsockopt(zmq.EVENTS)) & zmq.POLLIN and self._loop is not None:
                self._loop.call_soon(self._read_subscriptions)
        except zmq.ZMQError as err:
            log.warning("ZeroMQ PUB: could not publish %s: %s", event.name, err)

    def _read_subscriptions(self) -> None:
        """Tell the hub which topics subscribers hold: XPUB passes a topic's first subscribe
        (b"\x01" + topic) and its last unsubscribe (b"\x00" + topic)."""
        pub = self._pub
        if pub is None or self._closed:
            return
        try:
            while cast(int, pub.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                message = pub.recv(zmq.NOBLOCK)
                if not message or message[0] not in (0, 1):
                    continue
                topic = message[1:].decode("utf-8", "replace")
                if message[0] == 1:
                    self._hub.subscribed(topic)
                else:
                    self._hub.unsubscribed(topic)
        except zmq.ZMQError as err:
            log.warning("ZeroMQ PUB: cannot read subscriptions: %s", err)


def _short(value: Any) -> str:
    """A bounded repr for an error message: a 1 MB 'cmd' must not come back (or be logged) whole."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _peer_address(frame: zmq.Frame) -> str:
    try:
        address = frame.get("Peer-Address")  # a string property (pyzmq types properties int | str)
        return address if isinstance(address, str) else ""
    except zmq.ZMQError:
        return ""


async def _bind(sock: zmq.Socket, host: str, port: int) -> int:
    """Bind and return the actual port (port 0 picks a free one)."""
    if port == 0:
        return sock.bind_to_random_port(f"tcp://{host}")
    sock.bind(f"tcp://{host}:{port}")
    return port
