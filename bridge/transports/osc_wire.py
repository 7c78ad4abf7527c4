"""Strict OSC 1.0/1.1 packet parsing: every byte accounted for, every size and depth bounded.

python-osc's parser is lenient where a daemon must not be: an unknown type tag is skipped with a
root-logger warning that quotes the whole datagram (a 16 KB packet wrote 48 KB of log), a bundle
element whose size runs past the end is cut short, and bytes left after the arguments are ignored,
so a command ran with whatever arguments remained. This parser refuses all of those with a
`BadRequest` that names the tag, the size or the offset, and bounds the work one packet can ask
for (messages per packet, nesting of bundles and arrays) before anything runs.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

from bridge.errors import BadRequest

BUNDLE_PREFIX = b"#bundle\x00"
# NTP seconds (since 1900) to Unix seconds (since 1970).
_NTP_EPOCH_OFFSET = 2_208_988_800
# The OSC "immediately" timetag: 63 zero bits and a one.
_IMMEDIATELY = 1

# Type tags this daemon accepts (OSC 1.0 required and recommended ones, OSC 1.1's additions).
SUPPORTED_TAGS = "ifsbhtdScrmTFNI[]"
_FIXED_SIZES = {"i": 4, "f": 4, "c": 4, "r": 4, "m": 4, "h": 8, "d": 8, "t": 8}

# How much of a bad value an error message (and so a log line) quotes.
QUOTE_CHARS = 64


def quote(text: str | bytes, limit: int = QUOTE_CHARS) -> str:
    """A bounded, printable quotation of client input for messages and log lines."""
    shown = repr(text[:limit])
    if len(text) > limit:
        shown += f"... ({len(text)} {'bytes' if isinstance(text, bytes) else 'characters'})"
    return shown


@dataclass(frozen=True)
class Message:
    """One OSC message: its address and its decoded arguments."""

    address: str
    args: list[Any]


@dataclass(frozen=True)
class Bundle:
    """One OSC bundle: when to run it and what it holds (messages and bundles, in order)."""

    timetag: int  # raw 64-bit NTP fixed point; 1 means immediately
    contents: list[Message | Bundle]

    @property
    def immediate(self) -> bool:
        return self.timetag <= _IMMEDIATELY

    def unix_time(self) -> float:
        """When the bundle is due, in seconds since 1970 (as `time.time()` counts)."""
        return (self.timetag >> 32) - _NTP_EPOCH_OFFSET + (self.timetag & 0xFFFFFFFF) / 2**32


@dataclass(frozen=True)
class Limits:
    """What one packet may ask for (config: osc.max_bundle_messages, osc.max_nesting_depth)."""

    max_messages: int
    max_depth: int


class _Malformed(BadRequest):
    """The bytes are not OSC; `parse_packet` adds the packet's size to the message."""


def parse_packet(packet: bytes, limits: Limits) -> Message | Bundle:
    """Decode one whole packet or raise BadRequest naming what is wrong and where."""
    try:
        if packet.startswith(BUNDLE_PREFIX):
            return _parse_bundle(packet, 0, len(packet), 1, limits, [0])
        if packet.startswith(b"/"):
            return _parse_message(packet, 0, len(packet), limits)
        raise _Malformed(f"starts with {quote(packet[:8])}, not '/' (a message) or '#bundle' (a bundle)")
    except _Malformed as err:
        raise BadRequest(f"malformed OSC packet ({len(packet)} bytes): {err.message}") from None


def _parse_bundle(data: bytes, start: int, end: int, depth: int, limits: Limits, counter: list[int]) -> Bundle:
    if depth > limits.max_depth:
        raise BadRequest(f"OSC bundles nested {depth} deep; at most osc.max_nesting_depth ({limits.max_depth})")
    index = start + len(BUNDLE_PREFIX)
    if end - index < 8:
        raise _Malformed(f"the bundle at byte {start}: {end - start} bytes, too short for its timetag")
    (timetag,) = struct.unpack_from(">Q", data, index)
    index += 8
    contents: list[Message | Bundle] = []
    while index < end:
        if end - index < 4:
            raise _Malformed(f"the bundle: {end - index} stray byte(s) at byte {index}, not an element size")
        (size,) = struct.unpack_from(">i", data, index)
        index += 4
        if size <= 0 or size % 4 or size > end - index:
            raise _Malformed(
                f"the bundle: element size {size} at byte {index - 4} "
                f"(must be a positive multiple of 4 within the {end - index} bytes left)"
            )
        element_end = index + size
        if data.startswith(BUNDLE_PREFIX, index):
            contents.append(_parse_bundle(data, index, element_end, depth + 1, limits, counter))
        elif data.startswith(b"/", index):
            counter[0] += 1
            if counter[0] > limits.max_messages:
                raise BadRequest(
                    f"OSC packet holds more than osc.max_bundle_messages ({limits.max_messages}) messages; "
                    "send fewer per bundle"
                )
            contents.append(_parse_message(data, index, element_end, limits))
        else:
            raise _Malformed(
                f"the bundle: the element at byte {index} starts with {quote(data[index:index + 8])}, "
                "not '/' or '#bundle'"
            )
        index = element_end
    return Bundle(timetag, contents)


def _string(data: bytes, index: int, end: int, what: str) -> tuple[str, int]:
    """An OSC string: UTF-8, NUL-terminated, padded to 4 bytes."""
    nul = data.find(b"\x00", index, end)
    if nul < 0:
        raise _Malformed(f"{what} at byte {index} has no terminating NUL")
    raw = data[index:nul]
    following = (nul + 4) & ~3  # first byte after the padding
    if following > end:
        raise _Malformed(f"{what} at byte {index} is cut short (padding missing)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _Malformed(f"{what} at byte {index} is not UTF-8 ({quote(raw)})") from err
    return text, following


def _parse_message(data: bytes, start: int, end: int, limits: Limits) -> Message:
    address, index = _string(data, start, end, "the address")
    if index == end:
        return Message(address, [])  # OSC 1.0 allows a message without a type tag string
    if data[index : index + 1] != b",":
        raise _Malformed(
            f"OSC message {quote(address)}: expected a type tag string starting with ',' at byte {index}"
        )
    tags, index = _string(data, index, end, "the type tag string")
    tags = tags[1:]
    unknown = sorted({tag for tag in tags if tag not in SUPPORTED_TAGS})
    if unknown:
        raise _Malformed(
            f"OSC message {quote(address)}: unsupported type tag(s) {', '.join(repr(t) for t in unknown)} "
            f"in {quote(',' + tags)}; supported: {SUPPORTED_TAGS}"
        )
    args: list[Any] = []
    stack: list[list[Any]] = [args]
    for position, tag in enumerate(tags):
        if tag == "[":
            if len(stack) > limits.max_depth:
                raise BadRequest(
                    f"OSC message {quote(address)}: arrays nested deeper than osc.max_nesting_depth "
                    f"({limits.max_depth})"
                )
            inner: list[Any] = []
            stack[-1].append(inner)
            stack.append(inner)
            continue
        if tag == "]":
            if len(stack) == 1:
                raise _Malformed(f"OSC message {quote(address)}: ']' without '[' in type tags {quote(',' + tags)}")
            stack.pop()
            continue
        value, index = _argument(data, index, end, tag, address, position)
        stack[-1].append(value)
    if len(stack) != 1:
        raise _Malformed(f"OSC message {quote(address)}: '[' without ']' in type tags {quote(',' + tags)}")
    if index != end:
        raise _Malformed(
            f"OSC message {quote(address)}: {end - index} byte(s) left after the arguments "
            f"of type tags {quote(',' + tags)} (a wrong size or a missing tag)"
        )
    return Message(address, args)


def _argument(data: bytes, index: int, end: int, tag: str, address: str, position: int) -> tuple[Any, int]:
    size = _FIXED_SIZES.get(tag)
    if size is not None and end - index < size:
        raise _Malformed(
            f"OSC message {quote(address)}: argument {position + 1} ('{tag}') needs {size} bytes, "
            f"{end - index} left"
        )
    if tag == "i":
        return struct.unpack_from(">i", data, index)[0], index + 4
    if tag == "f":
        return struct.unpack_from(">f", data, index)[0], index + 4
    if tag == "h":
        return struct.unpack_from(">q", data, index)[0], index + 8
    if tag == "d":
        return struct.unpack_from(">d", data, index)[0], index + 8
    if tag in "sS":
        return _string(data, index, end, f"argument {position + 1} ('{tag}')")
    if tag == "b":
        if end - index < 4:
            raise _Malformed(f"OSC message {quote(address)}: blob argument {position + 1} has no size")
        (length,) = struct.unpack_from(">i", data, index)
        index += 4
        padded = (length + 3) & ~3
        if length < 0 or padded > end - index:
            raise _Malformed(
                f"OSC message {quote(address)}: blob argument {position + 1} claims {length} bytes, "
                f"{end - index} left"
            )
        return bytes(data[index : index + length]), index + padded
    if tag == "c":
        code = struct.unpack_from(">I", data, index)[0]
        if code > 0x10FFFF:
            raise _Malformed(f"OSC message {quote(address)}: argument {position + 1} ('c') {code} is not a character")
        return chr(code), index + 4
    if tag in "rt":
        fmt = ">I" if tag == "r" else ">Q"
        return struct.unpack_from(fmt, data, index)[0], index + _FIXED_SIZES[tag]
    if tag == "m":
        return bytes(data[index : index + 4]), index + 4
    if tag == "T":
        return True, index
    if tag == "F":
        return False, index
    if tag == "N":
        return None, index
    if tag == "I":
        return math.inf, index
    raise _Malformed(f"OSC message {quote(address)}: unsupported type tag {tag!r}")  # guarded above
