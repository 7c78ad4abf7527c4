"""OSC over UDP and over TCP (OSC 1.1: SLIP-framed packets), bundles included.

This module only translates: packets become `Request`s for the daemon's dispatcher, and `Reply`s
and `Event`s become packets. Replies go to `/flow/reply/<command path>` at the sender; errors go to
`/flow/error <address> <code> <message>`; events go to `/flow/event/<event path>`. A listener
(see `register`) on the requester's host gets a copy of each reply and error.

What one client can ask of the daemon is bounded (config `osc.*`): messages per packet and
nesting depth (bridge/transports/osc_wire.py parses strictly), delayed bundle messages waiting,
TCP frames handled per event-loop turn, bytes queued for a TCP client that does not read, and
the size of a UDP reply. A TCP connection must start the way OSC 1.1 clients start (a SLIP END
byte, or liblo's single-ENDed '/' or '#bundle'): anything else, such as the HTTP request a web
page can make any browser send to 127.0.0.1, is closed before any of it runs.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pythonosc import slip
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge.commands import lookup_address
from bridge.config import OscConfig
from bridge.errors import BadRequest, BridgeError, Busy, Internal
from bridge.events import EventHub
from bridge.protocol import ERROR_ADDRESS, EVENT_PREFIX, REPLY_PREFIX, Event, Reply, Request
from bridge.transports.osc_wire import Bundle, Limits, Message, parse_packet, quote

log = logging.getLogger(__name__)

Dispatch = Callable[[Request, Callable[[Reply], None]], None]

# A bundle may ask for later execution; further out than this is almost surely a clock mix-up.
MAX_BUNDLE_DELAY_SECONDS = 60.0
# Longest request address echoed whole in /flow/error (every command's address is far shorter).
MAX_ECHOED_ADDRESS = 256
# Request lines of HTTP methods, to name what was refused in the log (any non-SLIP start is refused).
_HTTP_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"OPTIONS ", b"DELETE ", b"PATCH ", b"CONNECT ", b"TRACE ")


def build_message(address: str, args: list[Any]) -> bytes:
    """Encode one OSC message (python-osc picks the type tags: i, f, s, T/F, b, N, h)."""
    builder = OscMessageBuilder(address=address)
    for value in args:
        builder.add_arg(value)
    return builder.build().dgram


def reply_packet(reply: Reply, address: str) -> bytes:
    """The OSC packet for a reply: the result on /flow/reply/..., or /flow/error."""
    if reply.error is not None:
        # The request's address is echoed for matching; one longer than any command's is cut, so a
        # 16 KB bad address does not come back whole (python-osc's client reads 4 KB).
        echoed = address if len(address) <= MAX_ECHOED_ADDRESS else address[:MAX_ECHOED_ADDRESS] + "..."
        return build_message(ERROR_ADDRESS, [echoed, reply.error.code, reply.error.message[:2048]])
    assert reply.spec is not None and reply.result is not None  # ok replies always carry both
    return build_message(reply.spec.reply_address, reply.spec.osc_reply_args(reply.result))


def event_packet(event: Event) -> bytes:
    return build_message(event.spec.osc_address, event.osc_args())


class SlipDecoder:
    """Incremental SLIP (RFC 1055, OSC 1.1 double-END) frame splitter with a size limit."""

    def __init__(self, max_frame_bytes: int) -> None:
        # Escaping can at most double a frame, so that bounds the raw bytes we buffer.
        self._max_raw = 2 * max_frame_bytes
        self._buffer = bytearray()
        self._overflowed = 0

    def feed(self, data: bytes) -> list[bytes | int]:
        """Return complete frames (bytes, still escaped) and, for oversized ones, their length."""
        frames: list[bytes | int] = []
        start = 0
        end = slip.END[0]
        while True:
            index = data.find(end, start)
            chunk = data[start:] if index < 0 else data[start:index]
            if self._overflowed:
                self._overflowed += len(chunk)
            elif len(self._buffer) + len(chunk) > self._max_raw:
                self._overflowed = len(self._buffer) + len(chunk)
                self._buffer.clear()
            else:
                self._buffer += chunk
            if index < 0:
                return frames
            if self._overflowed:
                frames.append(self._overflowed)
                self._overflowed = 0
            elif self._buffer:
                frames.append(bytes(self._buffer))
                self._buffer.clear()
            start = index + 1


@dataclass(eq=False)
class UdpOrigin:
    server: OscServer
    host: str
    port: int
    transport: str = "osc.udp"

    @property
    def key(self) -> tuple[Any, ...]:
        return ("udp", self.host, self.port)

    def send(self, packet: bytes) -> None:
        self.server.send_udp(packet, (self.host, self.port))

    def send_event(self, event: Event) -> None:
        self.send(self.server.event_datagram(event))


@dataclass(eq=False)
class TcpOrigin:
    connection: _TcpConnection
    host: str
    port: int
    transport: str = "osc.tcp"

    @property
    def key(self) -> tuple[Any, ...]:
        return ("tcp", id(self.connection))

    def send(self, packet: bytes) -> None:
        self.connection.send(packet)

    def send_event(self, event: Event) -> None:
        self.send(event_packet(event))


Origin = UdpOrigin | TcpOrigin


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: OscServer) -> None:
        self._server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._server.handle_packet(data, UdpOrigin(self._server, addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable for a listener that went away: not the daemon's problem.
        log.debug("OSC UDP: %s", exc)


def stream_start_verdict(head: bytes) -> bool | None:
    """Whether a TCP stream starts like OSC 1.1 SLIP; None while too few bytes have arrived.

    python-osc's TCP client (mode 1.1) and double-ENDed liblo start with END (0xC0); liblo's
    single-ENDed SLIP starts with the first packet itself, which begins with '/' or '#bundle'.
    An HTTP request (what a web page can make a browser send) starts with a method name, and
    OSC 1.0's length-prefixed framing with a size byte: both are refused.
    """
    if not head:
        return None
    if head[0] == slip.END[0] or head[:1] == b"/":
        return True
    if head[:1] == b"#":
        prefix = b"#bundle\x00"
        if len(head) < len(prefix):
            return None if prefix.startswith(head) else False
        return head.startswith(prefix)
    return False


class _TcpConnection(asyncio.Protocol):
    """One OSC TCP client: SLIP frames in, replies and its own events out, with back-pressure.

    At most `osc.tcp_frames_per_turn` frames are handled per event-loop turn; the rest wait in
    a backlog (bounded by one read) with reading paused, so another client's ping is answered
    in between. When replies pile up because the client does not read (above
    `osc.tcp_pause_write_bytes`), its requests wait until it reads; above
    `osc.tcp_max_write_bytes` the connection is closed.
    """

    def __init__(self, server: OscServer) -> None:
        self._server = server
        self._config = server.config
        self._decoder = SlipDecoder(server.config.max_packet_bytes)
        self._transport: asyncio.Transport | None = None
        self._origin: TcpOrigin | None = None
        self._head = b""  # the first bytes, until the stream is known to be SLIP
        self._checked = False
        self._backlog: deque[bytes | int] = deque()
        self._write_paused = False
        self._pump_scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):
            raise TypeError(f"OSC TCP needs a stream transport, got {type(transport).__name__}")
        self._transport = transport
        host, port = transport.get_extra_info("peername")[:2]
        self._origin = TcpOrigin(self, host, port)
        transport.set_write_buffer_limits(high=self._config.tcp_pause_write_bytes)
        limit = self._config.max_tcp_connections
        if len(self._server.connections) >= limit:
            busy = Busy(f"{len(self._server.connections)} OSC TCP clients are connected (osc.max_tcp_connections = "
                        f"{limit}); close one, or send over UDP or ZeroMQ")
            self._server.refuse_connection(host, port, busy.message)
            self.send(reply_packet(Reply(name="", error=busy), ""))
            transport.close()
            return
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self._server.connections:
            self._server.connections.discard(self)
            self._server.refusing = False  # room again: the next refusal is logged
        self._transport = None
        self._backlog.clear()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._schedule_pump()

    def data_received(self, data: bytes) -> None:
        if self._origin is None or self._transport is None or self._transport.is_closing():
            return
        if not self._checked:
            self._head += data
            verdict = stream_start_verdict(self._head[:8])
            if verdict is None:
                return
            if not verdict:
                self._refuse_stream(self._head)
                return
            self._checked = True
            data, self._head = self._head, b""
        self._backlog.extend(self._decoder.feed(data))
        self._pump()

    def _refuse_stream(self, head: bytes) -> None:
        """Not an OSC 1.1 client (an HTTP request from a web page, OSC 1.0 framing): close, run nothing."""
        transport = self._transport
        origin = self._origin
        if transport is None or origin is None:
            return
        http = head.startswith(_HTTP_METHODS)
        what = "an HTTP request" if http else "not OSC 1.1 SLIP framing"
        log.warning(
            "OSC TCP %s:%d: closed the connection: it starts with %s (%s); nothing in it ran",
            origin.host, origin.port, quote(head[:32]), what,
        )
        message = (
            f"this is the Flowstate OSC TCP port (OSC 1.1, SLIP framing); the connection starts with "
            f"{quote(head[:16])} ({what}) and was closed"
        )
        if http:  # curl and friends show this; a page cannot read it (no CORS header)
            body = message.encode()
            transport.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
            )
        else:
            transport.write(slip.encode(reply_packet(Reply(name="", error=BadRequest(message)), "")))
        self._head = b""
        transport.close()

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled and self._transport is not None:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_pump)

    def _scheduled_pump(self) -> None:
        self._pump_scheduled = False
        self._pump()

    def _pump(self) -> None:
        """Handle up to `osc.tcp_frames_per_turn` frames; the rest wait for a later turn."""
        budget = self._config.tcp_frames_per_turn
        try:
            while self._backlog and budget > 0 and not self._write_paused and self._open():
                budget -= 1
                self._handle_frame(self._backlog.popleft())
        finally:  # even after an unexpected error, the frames behind it are not stranded
            if not self._open():
                self._backlog.clear()
            else:
                if self._backlog and not self._write_paused:
                    self._schedule_pump()  # call_soon runs after the next turn's I/O: others go first
                self._update_reading()

    def _open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        wait = bool(self._backlog) or self._write_paused
        if wait and transport.is_reading():
            transport.pause_reading()
        elif not wait and not transport.is_reading():
            transport.resume_reading()

    def _handle_frame(self, frame: bytes | int) -> None:
        origin = self._origin
        if origin is None:
            return
        if isinstance(frame, int):
            limit = self._config.max_packet_bytes
            self._server.reject(origin, "",
                                BadRequest(f"OSC packet of {frame} bytes exceeds osc.max_packet_bytes ({limit})"))
            return
        try:
            packet = slip.decode(slip.END + frame + slip.END)
        except slip.ProtocolError:
            self._server.reject(origin, "", BadRequest("malformed SLIP frame (bad escape)"))
            return
        self._server.handle_packet(packet, origin)

    def send(self, packet: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        limit = self._config.tcp_max_write_bytes
        if transport.get_write_buffer_size() + len(packet) > limit:
            log.warning(
                "OSC TCP %s:%d is not reading: %d bytes queued for it exceed osc.tcp_max_write_bytes (%d); "
                "closing the connection", self._origin.host if self._origin else "?",
                self._origin.port if self._origin else 0, transport.get_write_buffer_size(), limit,
            )
            transport.abort()
            return
        transport.write(slip.encode(packet))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


@dataclass(frozen=True)
class _Due:
    """A message of a packet, and how long until it may run (0: now)."""

    message: Message
    delay: float


# Senders whose stray answers have been logged (one line each); past this many, none more is noted.
MAX_ANSWER_SENDERS_LOGGED = 256


def is_answer(address: str) -> bool:
    """Whether `address` is one the daemon sends (a reply, an error, an event), never a request."""
    return address == ERROR_ADDRESS or address.startswith((REPLY_PREFIX + "/", EVENT_PREFIX + "/"))


class OscServer:
    """OSC UDP and TCP endpoints of one daemon."""

    def __init__(self, config: OscConfig, dispatch: Dispatch, hub: EventHub) -> None:
        self.config = config
        self._dispatch = dispatch
        self._hub = hub
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self.connections: set[_TcpConnection] = set()
        self.udp_port = config.udp_port
        self.tcp_port = config.tcp_port
        self._timers: set[asyncio.TimerHandle] = set()
        self._limits = Limits(max_messages=config.max_bundle_messages, max_depth=config.max_nesting_depth)
        self._answer_senders: set[tuple[str, int]] = set()
        self.refusing = False  # at osc.max_tcp_connections, a refusal has been logged
        self._last_datagram: tuple[Event, bytes] | None = None  # event_datagram's last (on the loop's thread)
        hub.add_sink(self._to_listeners)

    async def start(self, bind: Callable[..., Any]) -> None:
        """Open both sockets; `bind` maps OSError(EADDRINUSE) onto a StartupError naming the key."""
        loop = asyncio.get_running_loop()
        host = self.config.host
        transport, _ = await bind(
            "osc.udp_port",
            self.config.udp_port,
            loop.create_datagram_endpoint(lambda: _UdpProtocol(self), local_addr=(host, self.config.udp_port)),
        )
        self._udp = transport
        self.udp_port = transport.get_extra_info("sockname")[1]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            _size_udp_buffers(sock, self.config.udp_receive_buffer_bytes, self.config.max_udp_reply_bytes)
        self._tcp = await bind(
            "osc.tcp_port",
            self.config.tcp_port,
            # asyncio's own reuse_address: SO_REUSEADDR on macOS and Linux (a restart binds again at
            # once), never on Windows, where it would let a second daemon bind the same port and take
            # some of the connections instead of failing (CPython, base_events.create_server).
            loop.create_server(lambda: _TcpConnection(self), host, self.config.tcp_port),
        )
        self.tcp_port = self._tcp.sockets[0].getsockname()[1]

    def endpoints(self) -> dict[str, str]:
        host = self.config.host
        return {"osc_udp": f"{host}:{self.udp_port}", "osc_tcp": f"{host}:{self.tcp_port}"}

    def stop_accepting(self) -> None:
        """No new TCP connections; UDP stays open so in-flight replies and events still go out."""
        if self._tcp is not None:
            self._tcp.close()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    async def close(self) -> None:
        self.stop_accepting()
        for connection in list(self.connections):
            connection.close()
        if self._tcp is not None:
            await self._tcp.wait_closed()
        if self._udp is not None:
            self._udp.close()

    # -- wire -> requests ------------------------------------------------------------------------

    def handle_packet(self, packet: bytes, origin: Origin) -> None:
        """Parse one packet strictly and run (or schedule) its messages; bad input gets /flow/error."""
        limit = self.config.max_packet_bytes
        if len(packet) > limit:
            self.reject(origin, "",
                        BadRequest(f"OSC packet of {len(packet)} bytes exceeds osc.max_packet_bytes ({limit})"))
            return
        try:
            parsed = parse_packet(packet, self._limits)
            due = self._due(parsed, time.time())
            if not due:  # valid OSC, but it would be the one request that gets no reply
                raise BadRequest("the OSC bundle holds no messages (nested bundles included): nothing to run")
            self._check_schedule(due)
        except BridgeError as err:
            self.reject(origin, "", err)
            return
        except Exception as err:  # a bug in the parser: answer, log the traceback, keep serving
            log.exception("OSC: parsing a %d-byte packet failed", len(packet))
            self.reject(origin, "",
                        Internal(f"the daemon failed to parse this packet ({type(err).__name__}); see its log"))
            return
        for item in due:
            if item.delay > 0:
                self._schedule(item.delay, item.message, origin)
            else:
                self._handle_message(item.message, origin)

    def _due(self, parsed: Message | Bundle, now: float) -> list[_Due]:
        """Flatten a packet into its messages with their delays; refuse far-future timetags."""
        if isinstance(parsed, Message):
            return [_Due(parsed, 0.0)]
        delay = 0.0 if parsed.immediate else max(0.0, parsed.unix_time() - now)
        if delay > MAX_BUNDLE_DELAY_SECONDS:
            raise BadRequest(
                f"OSC bundle timetag is {delay:.0f} s in the future; "
                f"at most {MAX_BUNDLE_DELAY_SECONDS:.0f} s is accepted"
            )
        out: list[_Due] = []
        for content in parsed.contents:
            if isinstance(content, Bundle):
                out.extend(self._due(content, now))
            else:
                out.append(_Due(content, delay))
        return out

    def _check_schedule(self, due: list[_Due]) -> None:
        later = sum(1 for item in due if item.delay > 0)
        limit = self.config.max_scheduled_messages
        if later and len(self._timers) + later > limit:
            raise Busy(
                f"{len(self._timers)} delayed OSC bundle message(s) are waiting and this packet adds {later}; "
                f"at most osc.max_scheduled_messages ({limit}); send it when they have run"
            )

    def _schedule(self, delay: float, message: Message, origin: Origin) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.discard(handle)
            self._handle_message(message, origin)

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)

    def scheduled(self) -> int:
        """Delayed bundle messages waiting for their time."""
        return len(self._timers)

    def _handle_message(self, message: Message, origin: Origin) -> None:
        address = message.address
        if is_answer(address):
            # Answered, it would loop: a listener registered at the daemon's own port (or another
            # daemon's) would send the answer back, and that answer would be answered again.
            self._ignore_answer(address, origin)
            return
        try:
            spec = lookup_address(address)
        except BridgeError as err:
            self.reject(origin, address, err)
            return
        request = Request(name=spec.name, args=message.args, origin=origin)
        try:
            self._dispatch(request, lambda reply: self._respond(reply, origin, address))
        except Exception as err:  # a bug below the dispatcher: this request is answered, the next runs
            log.exception("OSC %s: dispatch failed", quote(address))
            self.reject(origin, address,
                        Internal(f"{spec.name} failed inside the daemon ({type(err).__name__}); see its log"))

    def refuse_connection(self, host: str, port: int, why: str) -> None:
        """Log one line per stretch at the limit (a burst of connections writes one, not thousands)."""
        if not self.refusing:
            self.refusing = True
            log.warning("OSC TCP %s:%d refused: %s; further refusals are not logged until one closes", host, port, why)

    def _ignore_answer(self, address: str, origin: Origin) -> None:
        sender = (origin.host, origin.port)
        if sender in self._answer_senders or len(self._answer_senders) >= MAX_ANSWER_SENDERS_LOGGED:
            return
        self._answer_senders.add(sender)
        log.warning("OSC %s from %s:%d ignored, and whatever else of the kind comes from there: replies, errors "
                    "and events are what the daemon sends, not requests (is a listener registered at the daemon's "
                    "own port, or at another daemon's?)", quote(address), origin.host, origin.port)

    # -- replies and events -> wire ----------------------------------------------------------------

    def reject(self, origin: Origin, address: str, error: BridgeError) -> None:
        """Answer bad input at the boundary: a warning log and /flow/error, then keep serving."""
        log.warning(
            "OSC %s from %s:%d: %s: %s", quote(address) if address else "packet", origin.host, origin.port,
            error.code, error.message[:512],
        )
        self._respond(Reply(name="", error=error), origin, address)

    def _respond(self, reply: Reply, origin: Origin, address: str) -> None:
        try:
            packet = reply_packet(reply, address)
        except Exception as err:  # e.g. a result value OSC cannot carry: a bug, but still an answer
            log.exception("OSC: the reply to %s cannot be encoded", quote(address))
            error = Internal(f"the reply to {reply.name or 'this request'} could not be encoded ({type(err).__name__})")
            packet = reply_packet(Reply(name=reply.name, error=error), address)
        if isinstance(origin, UdpOrigin):
            origin.send(self._fit_udp(packet, address, reply))
        else:
            origin.send(packet)
        listeners = self._hub.listeners_on_host(origin.host)
        if not listeners:
            return
        datagram = self._fit_udp(packet, address, reply)
        for listener in listeners:
            if isinstance(origin, UdpOrigin) and listener == (origin.host, origin.port):
                continue
            self.send_udp(datagram, listener)

    def _fit_udp(self, packet: bytes, address: str, reply: Reply | None) -> bytes:
        """The packet, or an error naming its size when it is too large for one datagram."""
        limit = self.config.max_udp_reply_bytes
        if len(packet) <= limit:
            return packet
        name = reply.name if reply is not None and reply.name else address
        hint = " (ask for fewer: job.list limit)" if name in ("job.list", "/flow/job/list") else ""
        error = BadRequest(
            f"the reply to {name} is {len(packet)} bytes, more than one OSC UDP datagram carries "
            f"(osc.max_udp_reply_bytes = {limit}); ask for less{hint} or use OSC TCP or ZeroMQ"
        )
        log.warning("OSC UDP: %s", error.message)
        return reply_packet(Reply(name=name, error=error), address)

    def send_udp(self, packet: bytes, addr: tuple[str, int]) -> None:
        if self._udp is not None and not self._udp.is_closing():
            self._udp.sendto(packet, addr)

    def event_datagram(self, event: Event) -> bytes:
        """The event as one UDP datagram (to a listener, or to the sender of the job it is about), or
        an error naming its size where it is too large for one. Built (and an error logged) once per
        event: the job's UDP sender and the listeners get the same datagram."""
        if self._last_datagram is not None and self._last_datagram[0] is event:
            return self._last_datagram[1]
        packet = event_packet(event)
        limit = self.config.max_udp_reply_bytes
        if len(packet) > limit:
            error = BadRequest(
                f"event {event.name} is {len(packet)} bytes, more than one OSC UDP datagram carries "
                f"(osc.max_udp_reply_bytes = {limit}); ask job.status over OSC TCP or ZeroMQ for it"
            )
            log.warning("OSC UDP: %s", error.message)
            packet = reply_packet(Reply(name=event.name, error=error), event.spec.osc_address)
        self._last_datagram = (event, packet)
        return packet

    def _to_listeners(self, event: Event, origin: object) -> None:
        listeners = self._hub.listeners()
        if not listeners:
            return
        packet = self.event_datagram(event)
        for listener in listeners:
            self.send_udp(packet, listener)


def _size_udp_buffers(sock: socket.socket, receive_bytes: int, reply_bytes: int) -> None:
    """Ask for a large receive buffer (bursts) and a send buffer that fits the largest reply.

    The OS may cap either: Linux silently (net.core.rmem_max), macOS and others with an error,
    so the request halves until it is accepted. What the OS gave is logged. (macOS also limits a
    datagram to the send buffer, 9216 bytes by default, hence the send buffer.)
    """
    for option, wanted, name in (
        (socket.SO_RCVBUF, receive_bytes, "osc.udp_receive_buffer_bytes"),
        (socket.SO_SNDBUF, reply_bytes + 1024, "osc.max_udp_reply_bytes"),
    ):
        asked = wanted
        while True:
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, asked)
                break
            except OSError as err:
                if asked <= 65536:
                    log.warning("OSC UDP: the OS refused a %d-byte socket buffer (%s): %s", asked, name, err)
                    break
                asked //= 2
        got = sock.getsockopt(socket.SOL_SOCKET, option)
        if option == socket.SO_RCVBUF or got < wanted:
            log.info(
                "OSC UDP %s buffer: asked %d bytes (%s), the OS gave %d%s",
                "receive" if option == socket.SO_RCVBUF else "send", wanted, name, got,
                "" if got >= wanted else " (Linux: raise net.core.rmem_max / wmem_max for more)",
            )
