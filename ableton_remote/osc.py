"""A small OSC 1.0 codec for the DAWs' embedded Pythons: standard library only.

The one codec of the DAW-side scripts, kept once, here. Live runs Remote Scripts in its own Python
(3.7 in Live 11 and 12.0, 3.11 from 12.1) and REAPER runs ReaScripts in the Python the user points
it at, both with no third-party packages, so python-osc cannot be used there. `flowstate
install-ableton` copies this file into the Remote Script folder as `osc.py`; `flowstate
install-reaper` copies it into REAPER's `Scripts/Flowstate` as `flowstate_osc.py`.

It writes the same bytes python-osc (the daemon's codec) writes for the types the daemon speaks
(int32, int64, float32, string, blob, True, False, nil) and reads messages and bundles (nested too;
timetags are ignored, everything is handled at once). Malformed input raises `OscError` naming what
was wrong; nothing here touches a socket. It must run on Python 3.7 and stay ASCII: REAPER does not
read every script as UTF-8 on every platform.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple, Union

OscArg = Union[int, float, str, bytes, bool, None]

BUNDLE_TAG = b"#bundle\x00"
# A bundle nested deeper than this is almost surely garbage (or an attack on the recursion).
MAX_BUNDLE_DEPTH = 8

_INT32 = struct.Struct(">i")
_INT64 = struct.Struct(">q")
_FLOAT32 = struct.Struct(">f")
_FLOAT64 = struct.Struct(">d")


class OscError(ValueError):
    """A value that cannot be encoded, or bytes that are not a valid OSC packet."""


class OscMessage(NamedTuple):
    """One decoded message: its address and its arguments in order."""

    address: str
    args: tuple[OscArg, ...]


# -- encoding -------------------------------------------------------------------------------------


def _padded(data: bytes) -> bytes:
    """`data` followed by zero bytes up to a multiple of 4."""
    return data + b"\x00" * (-len(data) % 4)


def _string(text: str) -> bytes:
    """An OSC string: UTF-8, at least one terminating zero, padded to 4 bytes."""
    return _padded(text.encode("utf-8") + b"\x00")


def _argument(index: int, value: OscArg) -> tuple[str, bytes]:
    """(type tag, encoded bytes) for one argument, picked the way python-osc picks them."""
    if value is True:
        return "T", b""
    if value is False:
        return "F", b""
    if value is None:
        return "N", b""
    if isinstance(value, int):
        if value.bit_length() > 31:  # python-osc's rule, so both write the same bytes
            if not -(2**63) <= value < 2**63:
                raise OscError(f"argument {index}: {value} does not fit in 64 bits")
            return "h", _INT64.pack(value)
        return "i", _INT32.pack(value)
    if isinstance(value, float):
        try:
            return "f", _FLOAT32.pack(value)
        except OverflowError:
            raise OscError(f"argument {index}: {value!r} is out of float32 range") from None
    if isinstance(value, str):
        return "s", _string(value)
    if isinstance(value, (bytes, bytearray)):
        return "b", _INT32.pack(len(value)) + _padded(bytes(value))
    raise OscError(
        f"argument {index}: cannot encode {value!r} ({type(value).__name__}); "
        "expected int, float, str, bytes, bool or None"
    )


def encode_message(address: str, args: Sequence[OscArg] = ()) -> bytes:
    """One OSC message as bytes, e.g. `encode_message("/flow/daw/set", [120.0, 4, 4, True])`."""
    if not address.startswith("/"):
        raise OscError(f"address {address!r} must start with '/'")
    tags = ","
    body = bytearray()
    for index, value in enumerate(args):
        tag, data = _argument(index, value)
        tags += tag
        body += data
    return _string(address) + _string(tags) + bytes(body)


# -- decoding -------------------------------------------------------------------------------------


def decode_packet(data: bytes) -> list[OscMessage]:
    """The messages in a packet, in order; a bundle's contents (nested too) are flattened."""
    return _decode(bytes(data), 0)


def _decode(data: bytes, depth: int) -> list[OscMessage]:
    if data.startswith(BUNDLE_TAG):
        return _decode_bundle(data, depth)
    return [_decode_message(data)]


def _decode_bundle(data: bytes, depth: int) -> list[OscMessage]:
    if depth >= MAX_BUNDLE_DEPTH:
        raise OscError(f"bundles nested deeper than {MAX_BUNDLE_DEPTH} levels")
    if len(data) < 16:
        raise OscError(f"bundle of {len(data)} bytes is shorter than its 16-byte header")
    messages: list[OscMessage] = []
    offset = 16  # "#bundle\0" and the 8-byte timetag, which we do not honour
    while offset < len(data):
        if offset + 4 > len(data):
            raise OscError(f"bundle element size truncated at byte {offset}")
        (size,) = _INT32.unpack_from(data, offset)
        offset += 4
        if size <= 0 or size % 4 or offset + size > len(data):
            raise OscError(f"bundle element at byte {offset} has a bad size {size}")
        messages.extend(_decode(data[offset : offset + size], depth + 1))
        offset += size
    return messages


def _read_string(data: bytes, offset: int, what: str) -> tuple[str, int]:
    end = data.find(b"\x00", offset)
    if end < 0:
        raise OscError(f"{what} at byte {offset} has no terminating zero")
    try:
        text = data[offset:end].decode("utf-8")
    except UnicodeDecodeError as err:
        raise OscError(f"{what} at byte {offset} is not UTF-8 ({err.reason})") from None
    return text, end + 1 + (-(end + 1) % 4)


def _read(data: bytes, offset: int, size: int, what: str) -> bytes:
    if offset + size > len(data):
        raise OscError(f"{what} at byte {offset} needs {size} bytes, the packet ends at {len(data)}")
    return data[offset : offset + size]


def _decode_message(data: bytes) -> OscMessage:
    address, offset = _read_string(data, 0, "address")
    if not address.startswith("/"):
        raise OscError(f"address {address!r} does not start with '/'")
    if offset >= len(data):
        return OscMessage(address, ())  # OSC 1.0 allows a message without a type tag string
    tags, offset = _read_string(data, offset, "type tags")
    if not tags.startswith(","):
        raise OscError(f"type tags {tags!r} do not start with ','")
    args: list[OscArg] = []
    for tag in tags[1:]:
        if tag == "i":
            (value,) = _INT32.unpack(_read(data, offset, 4, "int32"))
            offset += 4
        elif tag == "h":
            (value,) = _INT64.unpack(_read(data, offset, 8, "int64"))
            offset += 8
        elif tag == "f":
            (value,) = _FLOAT32.unpack(_read(data, offset, 4, "float32"))
            offset += 4
        elif tag == "d":
            (value,) = _FLOAT64.unpack(_read(data, offset, 8, "float64"))
            offset += 8
        elif tag == "s":
            value, offset = _read_string(data, offset, "string")
        elif tag == "b":
            (size,) = _INT32.unpack(_read(data, offset, 4, "blob size"))
            if size < 0:
                raise OscError(f"blob at byte {offset} has a negative size {size}")
            value = _read(data, offset + 4, size, "blob")
            offset += 4 + size + (-size % 4)
        elif tag in "TFN":
            value = {"T": True, "F": False, "N": None}[tag]
        else:
            raise OscError(f"type tag {tag!r} is not supported (i, h, f, d, s, b, T, F, N are)")
        args.append(value)
    return OscMessage(address, tuple(args))
