"""OSC over UDP and over TCP (OSC 1.1: SLIP-framed packets), bundles included.

This module only translates: packets become `Request`s for the daemon's dispatcher, and `Reply`s
and `Event`s become packets. Replies go to `/flow/reply/<command path>` at the sender; errors go to
`/flow/error <address> <code> <message>`; events go to `/flow/event/<event path>`. A listener
(see `register`) on the requester's host gets a copy of each reply and error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pythonosc import slip
from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge.commands import lookup_address
from bridge.config import OscConfig
from bridge.errors import BadRequest, BridgeError
from bridge.events import EventHub
from bridge.protocol import ERROR_ADDRESS, Event, Reply, Request

log = logging.getLogger(__name__)

Dispatch = Callable[[Request, Callable[[Reply], None]], None]

# A bundle may ask for later execution; further out than this is almost surely a clock mix-up.
MAX_BUNDLE_DELAY_SECONDS = 60.0
# A TCP peer that stops reading must not make the daemon buffer without bound.
MAX_TCP_WRITE_BUFFER = 4 * 1024 * 1024


def build_message(address: str, args: list[Any]) -> bytes:
    """Encode one OSC message (python-osc picks the type tags: i, f, s, T/F, b, N, h)."""
    builder = OscMessageBuilder(address=address)
    for value in args:
        builder.add_arg(value)
    return builder.build().dgram


def reply_packet(reply: Reply, address: str) -> bytes:
    """The OSC packet for a reply: the result on /flow/reply/..., or /flow/error."""
    if reply.error is not None:
        return build_message(ERROR_ADDRESS, [address, reply.error.code, reply.error.message])
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
        self.send(event_packet(event))


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


class _TcpConnection(asyncio.Protocol):
    def __init__(self, server: OscServer) -> None:
        self._server = server
        self._decoder = SlipDecoder(server.config.max_packet_bytes)
        self._transport: asyncio.Transport | None = None
        self._origin: TcpOrigin | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        host, port = transport.get_extra_info("peername")[:2]
        self._origin = TcpOrigin(self, host, port)
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        assert self._origin is not None
        for frame in self._decoder.feed(data):
            if isinstance(frame, int):
                limit = self._server.config.max_packet_bytes
                self._server.reject(
                    self._origin,
                    "",
                    BadRequest(f"OSC packet of {frame} bytes exceeds osc.max_packet_bytes ({limit})"),
                )
                continue
            try:
                packet = slip.decode(slip.END + frame + slip.END)
            except slip.ProtocolError:
                self._server.reject(self._origin, "", BadRequest("malformed SLIP frame (bad escape)"))
                continue
            self._server.handle_packet(packet, self._origin)

    def send(self, packet: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > MAX_TCP_WRITE_BUFFER:
            log.warning("OSC TCP %s is not reading; dropping a %d-byte packet", self._origin, len(packet))
            return
        transport.write(slip.encode(packet))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


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
        self._tcp = await bind(
            "osc.tcp_port",
            self.config.tcp_port,
            loop.create_server(lambda: _TcpConnection(self), host, self.config.tcp_port, reuse_address=True),
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
        limit = self.config.max_packet_bytes
        if len(packet) > limit:
            self.reject(origin, "", BadRequest(f"OSC packet of {len(packet)} bytes exceeds osc.max_packet_bytes ({limit})"))
            return
        try:
            if packet.startswith(b"#bundle"):
                self._handle_bundle(OscBundle(packet), origin)
            else:
                self._handle_message(OscMessage(packet), origin)
        except BridgeError as err:
            self.reject(origin, "", err)
        except Exception as err:  # python-osc raises several types on garbage; all mean "malformed"
            detail = err.args[-1] if err.args else type(err).__name__
            self.reject(
                origin, "", BadRequest(f"malformed OSC packet ({len(packet)} bytes): not a valid OSC message or bundle ({detail})")
            )

    def _handle_bundle(self, bundle: OscBundle, origin: Origin) -> None:
        delay = 0.0 if bundle.timestamp == 0 else bundle.timestamp - time.time()
        if delay > MAX_BUNDLE_DELAY_SECONDS:
            raise BadRequest(
                f"OSC bundle timetag is {delay:.0f} s in the future; at most {MAX_BUNDLE_DELAY_SECONDS:.0f} s is accepted"
            )
        for content in bundle:
            if isinstance(content, OscBundle):
                self._handle_bundle(content, origin)
            elif delay > 0:
                self._schedule(delay, content, origin)
            else:
                self._handle_message(content, origin)

    def _schedule(self, delay: float, message: OscMessage, origin: Origin) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.discard(handle)
            self._handle_message(message, origin)

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)

    def _handle_message(self, message: OscMessage, origin: Origin) -> None:
        address = message.address
        try:
            spec = lookup_address(address)
        except BridgeError as err:
            self.reject(origin, address, err)
            return
        request = Request(name=spec.name, args=message.params, origin=origin)
        self._dispatch(request, lambda reply: self._respond(reply, origin, address))

    # -- replies and events -> wire ----------------------------------------------------------------

    def reject(self, origin: Origin, address: str, error: BridgeError) -> None:
        """Answer bad input at the boundary: a warning log and /flow/error, then keep serving."""
        log.warning("OSC %s from %s:%d: %s: %s", address or "packet", origin.host, origin.port, error.code, error.message)
        self._respond(Reply(name="", error=error), origin, address)

    def _respond(self, reply: Reply, origin: Origin, address: str) -> None:
        packet = reply_packet(reply, address)
        origin.send(packet)
        for listener in self._hub.listeners_on_host(origin.host):
            if isinstance(origin, UdpOrigin) and listener == (origin.host, origin.port):
                continue
            self.send_udp(packet, listener)

    def send_udp(self, packet: bytes, addr: tuple[str, int]) -> None:
        if self._udp is not None and not self._udp.is_closing():
            self._udp.sendto(packet, addr)

    def _to_listeners(self, event: Event, origin: object) -> None:
        listeners = self._hub.listeners()
        if not listeners:
            return
        packet = event_packet(event)
        for listener in listeners:
            self.send_udp(packet, listener)
