"""The Remote Script's own OSC codec against python-osc, which the daemon speaks through."""

from __future__ import annotations

import ast
import random
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

import ableton_remote
from ableton_remote.osc import OscError, decode_packet, encode_message

ARGUMENT_LISTS: list[list[Any]] = [
    [],
    [0],
    [1, -1, 2**31 - 1, -(2**31) + 1],
    [2**31, -(2**31), 2**40, -(2**63)],  # python-osc switches to int64 past 31 bits
    [0.5, -1.25e10, 3.0e38, float("inf"), float("-inf")],
    ["", "a", "abc", "abcd", "abcde", "ünïcödé ✓"],
    [b"x", b"abc", b"abcd", b"abcde", bytes(range(256))],
    [True, False, None],
    ["/flow/stems/separate", 120.0, 4, 4, True, b"\x00\x01", None, 2**33],
]
ADDRESSES = ["/a", "/abc", "/flow/daw/set", "/flow/reply/stems/separate"]


def python_osc_message(address: str, args: list[Any]) -> bytes:
    builder = OscMessageBuilder(address=address)
    for value in args:
        builder.add_arg(value)
    return builder.build().dgram


def as_float32(value: Any) -> Any:
    return struct.unpack(">f", struct.pack(">f", value))[0] if isinstance(value, float) else value


@pytest.mark.parametrize("address", ADDRESSES)
@pytest.mark.parametrize("args", ARGUMENT_LISTS)
def test_encoding_writes_the_bytes_python_osc_writes(address: str, args: list[Any]) -> None:
    assert encode_message(address, args) == python_osc_message(address, args)


@pytest.mark.parametrize("args", ARGUMENT_LISTS)
def test_python_osc_messages_decode_to_their_values(args: list[Any]) -> None:
    [message] = decode_packet(python_osc_message("/flow/event/job/done", args))
    assert message.address == "/flow/event/job/done"
    assert list(message.args) == [as_float32(value) for value in args]


@pytest.mark.parametrize("args", [*ARGUMENT_LISTS, [b""], [b"", "after an empty blob", 7]])
def test_python_osc_reads_what_we_encode(args: list[Any]) -> None:
    parsed = OscMessage(encode_message("/flow/stream/set", args))
    assert parsed.address == "/flow/stream/set"
    assert parsed.params == [as_float32(value) for value in args]


def test_bundles_nested_or_not_decode_in_order() -> None:
    inner = OscBundleBuilder(IMMEDIATELY)
    inner.add_content(OscMessageBuilder("/flow/event/job/progress").build())
    outer = OscBundleBuilder(IMMEDIATELY)
    first = OscMessageBuilder("/flow/reply/ping")
    first.add_arg("pong")
    first.add_arg("0.1.0")
    outer.add_content(first.build())
    outer.add_content(inner.build())
    last = OscMessageBuilder("/flow/error")
    for value in ("/flow/x", "unknown_command", "no such command"):
        last.add_arg(value)
    outer.add_content(last.build())
    messages = decode_packet(outer.build().dgram)
    assert [(m.address, m.args) for m in messages] == [
        ("/flow/reply/ping", ("pong", "0.1.0")),
        ("/flow/event/job/progress", ()),
        ("/flow/error", ("/flow/x", "unknown_command", "no such command")),
    ]


def test_a_message_without_a_type_tag_string_has_no_arguments() -> None:
    assert decode_packet(b"/flow/ping\x00\x00") == [("/flow/ping", ())]


@pytest.mark.parametrize(
    ("value", "problem"),
    [(object(), "cannot encode"), (2**64, "does not fit in 64 bits"), (1e39, "out of float32 range"),
     ([1], "cannot encode")],
)
def test_values_osc_cannot_carry_are_refused_by_argument(value: Any, problem: str) -> None:
    with pytest.raises(OscError, match=f"argument 1: .*{problem}"):
        encode_message("/flow/x", ["ok", value])


def test_an_address_must_start_with_a_slash() -> None:
    with pytest.raises(OscError, match="must start with '/'"):
        encode_message("flow/ping")


@pytest.mark.parametrize(
    ("packet", "problem"),
    [
        (b"", "no terminating zero"),
        (b"flow\x00\x00\x00\x00", "does not start with '/'"),
        (b"/a\x00\x00i\x00\x00\x00", "do not start with ','"),
        (b"/a\x00\x00,i\x00\x00\x00\x00", "needs 4 bytes"),
        (b"/a\x00\x00,x\x00\x00", "type tag 'x' is not supported"),
        (b"/a\x00\x00,b\x00\x00\xff\xff\xff\xff", "negative size"),
        (b"/a\x00\x00,s\x00\x00\xff\xfe\x00\x00", "not UTF-8"),
        (b"#bundle\x00\x00\x00", "shorter than its 16-byte header"),
        (b"#bundle\x00" + b"\x00" * 8 + b"\x00\x00\x00\x09/a\x00\x00", "bad size 9"),
        (b"#bundle\x00" + b"\x00" * 8 + b"\x00\x00", "size truncated"),
    ],
)
def test_malformed_packets_raise_osc_error_saying_what_is_wrong(packet: bytes, problem: str) -> None:
    with pytest.raises(OscError, match=problem):
        decode_packet(packet)


def test_bundles_nested_too_deep_are_refused() -> None:
    packet = python_osc_message("/a", [])
    for _ in range(9):
        packet = b"#bundle\x00" + b"\x00" * 8 + struct.pack(">i", len(packet)) + packet
    with pytest.raises(OscError, match="nested deeper than 8"):
        decode_packet(packet)


def test_every_truncation_and_random_corruption_is_an_osc_error_or_a_message() -> None:
    """Whatever arrives on the socket, the codec never raises anything but OscError into Live."""
    packet = encode_message("/flow/event/job/done", ["abc", 1, 2.5, b"blob", True, None, 2**40])
    rng = random.Random(0)
    candidates = [packet[:cut] for cut in range(len(packet))]
    for _ in range(2000):
        corrupt = bytearray(packet)
        for _ in range(rng.randint(1, 4)):
            corrupt[rng.randrange(len(corrupt))] = rng.randrange(256)
        candidates.append(bytes(corrupt))
    for candidate in candidates:
        try:
            decode_packet(candidate)
        except OscError:
            pass


def test_the_script_imports_only_the_standard_library_and_live() -> None:
    """Live's embedded Python has no third-party packages: python-osc, numpy... would not load."""
    allowed = set(sys.stdlib_module_names) | {"Live", "__future__"}
    package = Path(ableton_remote.__file__).parent
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            assert set(roots) <= allowed, f"{source.name} imports {roots}: not available inside Live"
