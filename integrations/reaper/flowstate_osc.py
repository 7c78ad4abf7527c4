"""A small OSC 1.0 codec and a non-blocking UDP client, standard library only.

REAPER's Python has no third-party packages, so the Flowstate ReaScripts carry their own OSC.
Messages are byte-compatible with python-osc (the daemon's codec): the same type tags for the same
Python values (int32 `i`, int64 `h`, float32 `f`, string `s`, blob `b`, `T`/`F`, nil `N`), the
same padding. Bundles are not decoded: the daemon never sends them.

This file must stay ASCII: REAPER does not read every script as UTF-8 on every platform.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, List, Tuple

MAX_DATAGRAM_BYTES = 65535

Message = Tuple[str, List[Any]]


class OscError(ValueError):
    """A packet that is not a valid OSC message (or a value OSC cannot carry)."""


def _padded(data: bytes) -> bytes:
    """`data` followed by 1 to 4 NUL bytes, so its length is a multiple of 4 (OSC strings)."""
    return data + b"\x00" * (4 - len(data) % 4)


def _blob(data: bytes) -> bytes:
    """An OSC blob: int32 size, the bytes, NUL padding to a multiple of 4 (none when aligned)."""
    return struct.pack(">i", len(data)) + data + b"\x00" * (-len(data) % 4)


def encode_message(address: str, args: List[Any]) -> bytes:
    """Encode one OSC message, e.g. `encode_message("/flow/ping", [])`."""
    if not address.startswith("/"):
        raise OscError("OSC address %r must start with '/'" % (address,))
    tags = ","
    payload = b""
    for value in args:
        tag, data = _encode_arg(value)
        tags += tag
        payload += data
    return _padded(address.encode("utf-8")) + _padded(tags.encode("ascii")) + payload


def _encode_arg(value: Any) -> Tuple[str, bytes]:
    if value is True:
        return "T", b""
    if value is False:
        return "F", b""
    if value is None:
        return "N", b""
    if isinstance(value, int):
        if value.bit_length() <= 31:  # as python-osc decides: -2**31 itself goes out as int64
            return "i", struct.pack(">i", value)
        return "h", struct.pack(">q", value)
    if isinstance(value, float):
        return "f", struct.pack(">f", value)
    if isinstance(value, str):
        return "s", _padded(value.encode("utf-8"))
    if isinstance(value, (bytes, bytearray)):
        return "b", _blob(bytes(value))
    raise OscError("OSC cannot carry %r (%s): use int, float, str, bytes, bool or None" % (value, type(value).__name__))


def decode_message(packet: bytes) -> Message:
    """Decode one OSC message into (address, args); OscError when it is not one."""
    if packet.startswith(b"#bundle"):
        raise OscError("OSC bundles are not supported here")
    address, offset = _read_string(packet, 0)
    if not address.startswith("/"):
        raise OscError("not an OSC message: address %r does not start with '/'" % (address,))
    if offset >= len(packet):
        return address, []  # very old senders omit the type tag string when there are no args
    tags, offset = _read_string(packet, offset)
    if not tags.startswith(","):
        raise OscError("not an OSC message: type tags %r do not start with ','" % (tags,))
    args = []
    for tag in tags[1:]:
        value, offset = _read_arg(tag, packet, offset)
        args.append(value)
    return address, args


def _read_string(packet: bytes, offset: int) -> Tuple[str, int]:
    end = packet.find(b"\x00", offset)
    if end < 0:
        raise OscError("truncated OSC string at byte %d" % offset)
    try:
        text = packet[offset:end].decode("utf-8")
    except UnicodeDecodeError as err:
        raise OscError("OSC string at byte %d is not UTF-8 (%s)" % (offset, err)) from None
    return text, end + 4 - (end - offset) % 4


def _read_struct(fmt: str, packet: bytes, offset: int) -> Tuple[Any, int]:
    size = struct.calcsize(fmt)
    if offset + size > len(packet):
        raise OscError("truncated OSC argument at byte %d" % offset)
    return struct.unpack_from(fmt, packet, offset)[0], offset + size


def _read_arg(tag: str, packet: bytes, offset: int) -> Tuple[Any, int]:
    if tag == "i":
        return _read_struct(">i", packet, offset)
    if tag == "h":
        return _read_struct(">q", packet, offset)
    if tag == "f":
        return _read_struct(">f", packet, offset)
    if tag == "d":
        return _read_struct(">d", packet, offset)
    if tag in "sS":
        return _read_string(packet, offset)
    if tag == "b":
        size, offset = _read_struct(">i", packet, offset)
        if size < 0 or offset + size > len(packet):
            raise OscError("truncated OSC blob at byte %d" % offset)
        return packet[offset : offset + size], offset + size + (-size % 4)
    if tag == "T":
        return True, offset
    if tag == "F":
        return False, offset
    if tag == "N":
        return None, offset
    if tag == "I":
        return float("inf"), offset
    raise OscError("unsupported OSC type tag %r" % (tag,))


class DaemonUnreachable(OSError):
    """Nothing listens at the daemon's address (the OS reported the port closed)."""


class OscUdpClient:
    """One non-blocking UDP socket connected to the daemon: send requests, drain answers.

    Connecting the socket makes the OS report a closed port (no daemon running) as an error on
    the next send or receive, instead of leaving the script waiting for a timeout. Replies and the
    events of this socket's jobs come back to it, so no listener registration is needed.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        try:
            self._sock.connect((host, port))
        except OSError as err:
            self._sock.close()
            raise DaemonUnreachable("cannot connect: %s" % (err.strerror or err)) from None

    def send(self, address: str, *args: Any) -> None:
        """Send one message; DaemonUnreachable when the OS already knows nobody listens."""
        packet = encode_message(address, list(args))
        try:
            self._sock.send(packet)
        except BlockingIOError:
            raise DaemonUnreachable("the network send buffer is full") from None
        except (ConnectionRefusedError, ConnectionResetError) as err:
            raise DaemonUnreachable("the port is closed: %s" % (err.strerror or err)) from None

    def receive(self) -> List[Message]:
        """Every message waiting now (never blocks); DaemonUnreachable when the port is closed.

        Packets that are not OSC messages are skipped: they cannot come from the daemon.
        """
        messages = []
        while True:
            try:
                packet = self._sock.recv(MAX_DATAGRAM_BYTES)
            except BlockingIOError:
                return messages
            except (ConnectionRefusedError, ConnectionResetError) as err:
                # Linux and macOS report ICMP port-unreachable as refused, Windows as reset.
                raise DaemonUnreachable("the port is closed: %s" % (err.strerror or err)) from None
            try:
                messages.append(decode_message(packet))
            except OscError:
                continue

    def close(self) -> None:
        self._sock.close()
