"""The ReaScripts' own OSC codec (REAPER's Python has no python-osc) against python-osc itself."""

from __future__ import annotations

import re
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge.testing import DaemonProcess

SCRIPTS = Path(__file__).resolve().parents[2] / "integrations" / "reaper"

ARGUMENT_LISTS: list[list[Any]] = [
    [],
    [0],
    [1, -1, 2**31 - 1, -(2**31) + 1],
    [2**31, -(2**31), 2**40, -(2**62)],  # python-osc sends these as int64
    [0.5, -1e-3, 123456.789, float("inf")],
    [""],
    ["a", "abc", "abcd", "abcde"],  # every padding length
    ["/tmp/Lead Vocal (take 3).wav", "G\u00e9n\u00e9rique \u266b", "\u6f14\u594f"],  # spaces, accents, CJK
    [True, False, None],
    [b"\x00", b"\x01\x02\x03", b"1234", b"12345"],  # python-osc refuses empty blobs
    ["vocals", -6.0, True, None, 3, b"\xff"],
]


@pytest.fixture(scope="module")
def osc() -> Iterator[ModuleType]:
    sys.path.insert(0, str(SCRIPTS))
    try:
        import flowstate_osc

        yield flowstate_osc
    finally:
        sys.path.remove(str(SCRIPTS))
        sys.modules.pop("flowstate_osc", None)


def python_osc(address: str, args: list[Any]) -> bytes:
    builder = OscMessageBuilder(address)
    for value in args:
        builder.add_arg(value)
    return builder.build().dgram


@pytest.mark.parametrize("args", ARGUMENT_LISTS)
@pytest.mark.parametrize("address", ["/flow/ping", "/flow/stems/separate", "/a"])
def test_encoding_is_byte_for_byte_what_python_osc_builds(osc: ModuleType, address: str, args: list[Any]) -> None:
    assert osc.encode_message(address, args) == python_osc(address, args)


@pytest.mark.parametrize("args", ARGUMENT_LISTS)
def test_decoding_reads_what_python_osc_reads(osc: ModuleType, args: list[Any]) -> None:
    packet = python_osc("/flow/reply/stems/separate", args)
    address, decoded = osc.decode_message(packet)
    assert address == "/flow/reply/stems/separate"
    assert decoded == OscMessage(packet).params


def test_doubles_are_decoded_too(osc: ModuleType) -> None:
    packet = osc.encode_message("/x", [])[:-4] + b",d\x00\x00" + struct.pack(">d", 0.1)
    assert osc.decode_message(packet) == ("/x", [0.1])


@pytest.mark.parametrize(
    ("packet", "problem"),
    [
        (b"", "truncated OSC string"),
        (b"flow\x00\x00\x00\x00,\x00\x00\x00", "does not start with '/'"),
        (b"/a\x00\x00i\x00\x00\x00", "do not start with ','"),
        (b"/a\x00\x00,i\x00\x00\x00\x01", "truncated OSC argument"),
        (b"/a\x00\x00,s\x00\x00abc", "truncated OSC string"),
        (b"/a\x00\x00,b\x00\x00\x00\x00\x00\x09abc", "truncated OSC blob"),
        (b"/a\x00\x00,X\x00\x00", "unsupported OSC type tag 'X'"),
        (b"/a\x00\x00,s\x00\x00\xff\xfe\x00\x00", "is not UTF-8"),
        (b"#bundle\x00" + b"\x00" * 8, "bundles are not supported"),
    ],
)
def test_malformed_packets_raise_an_error_that_says_what_is_wrong(osc: ModuleType, packet: bytes, problem: str) -> None:
    with pytest.raises(osc.OscError, match=re.escape(problem)):
        osc.decode_message(packet)


def test_values_osc_cannot_carry_are_refused_by_name(osc: ModuleType) -> None:
    with pytest.raises(osc.OscError, match=r"OSC cannot carry \[1\] \(list\)"):
        osc.encode_message("/flow/ping", [[1]])
    with pytest.raises(osc.OscError, match="must start with '/'"):
        osc.encode_message("flow/ping", [])


def test_the_client_talks_to_a_real_daemon_without_blocking(osc: ModuleType) -> None:
    with DaemonProcess() as daemon:
        client = osc.OscUdpClient(*daemon.osc_udp)
        try:
            assert client.receive() == []  # nothing yet, and no waiting for it
            client.send("/flow/ping")
            client.send("/flow/register", "not a port")
            answers: list[Any] = []
            deadline = time.monotonic() + 10
            while len(answers) < 2 and time.monotonic() < deadline:
                answers += client.receive()
                time.sleep(0.01)
        finally:
            client.close()
    assert answers[0] == ("/flow/reply/ping", ["pong", answers[0][1][1]])
    address, (failed, code, message) = answers[1]
    assert (address, failed, code) == ("/flow/error", "/flow/register", "bad_request")
    assert "argument 'port' expected int in [1, 65535], got 'not a port' (str)" in message


def test_the_client_reports_a_closed_port(osc: ModuleType) -> None:
    from bridge.testing import free_port

    client = osc.OscUdpClient("127.0.0.1", free_port(socket.SOCK_DGRAM))
    try:
        client.send("/flow/ping")
        with pytest.raises(osc.DaemonUnreachable, match="the port is closed"):
            for _ in range(1000):  # the refusal arrives as soon as the kernel has handled the send
                client.receive()
                client.send("/flow/ping")
    finally:
        client.close()
