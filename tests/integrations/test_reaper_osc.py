"""The ReaScripts' OSC (REAPER's Python has no python-osc) against python-osc itself.

The codec is ableton_remote/osc.py, installed by `flowstate install-reaper` as flowstate_osc.py;
these tests import the installed copy, as the scripts do. The UDP client is flowstate_reaper's.
"""

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
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge.testing import DaemonProcess, free_port
from integrations.reaper.install import install
from tests.integrations.reaper_sim import Reaper

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
HELPERS = ("flowstate_osc", "flowstate_reaper", "reaper_python")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The scripts' folder after `install-reaper`, importable as REAPER's Python sees it."""
    resource_path = tmp_path_factory.mktemp("REAPER")
    folder = install(resource_path).folder
    saved = dict(sys.modules)
    sys.path.insert(0, str(folder))
    sys.modules["reaper_python"] = Reaper(resource_path).module  # flowstate_reaper imports it
    try:
        yield folder
    finally:
        sys.path.remove(str(folder))
        for name in HELPERS:
            if name in saved:
                sys.modules[name] = saved[name]
            else:
                sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def osc(installed: Path) -> ModuleType:
    import flowstate_osc

    assert Path(flowstate_osc.__file__).parent == installed
    return flowstate_osc


@pytest.fixture(scope="module")
def reaper_module(installed: Path) -> ModuleType:
    import flowstate_reaper

    return flowstate_reaper


def decode_message(osc: ModuleType, packet: bytes) -> tuple[str, list[Any]]:
    [message] = osc.decode_packet(packet)
    return message.address, list(message.args)


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
    address, decoded = decode_message(osc, packet)
    assert address == "/flow/reply/stems/separate"
    assert decoded == OscMessage(packet).params


def test_doubles_are_decoded_too(osc: ModuleType) -> None:
    packet = osc.encode_message("/x", [])[:-4] + b",d\x00\x00" + struct.pack(">d", 0.1)
    assert decode_message(osc, packet) == ("/x", [0.1])


@pytest.mark.parametrize(
    ("packet", "problem"),
    [
        (b"", "address at byte 0 has no terminating zero"),
        (b"flow\x00\x00\x00\x00,\x00\x00\x00", "does not start with '/'"),
        (b"/a\x00\x00i\x00\x00\x00", "do not start with ','"),
        (b"/a\x00\x00,i\x00\x00\x00\x01", "int32 at byte 8 needs 4 bytes"),
        (b"/a\x00\x00,s\x00\x00abc", "string at byte 8 has no terminating zero"),
        (b"/a\x00\x00,b\x00\x00\x00\x00\x00\x09abc", "blob at byte 12 needs 9 bytes"),
        (b"/a\x00\x00,X\x00\x00", "type tag 'X' is not supported"),
        (b"/a\x00\x00,s\x00\x00\xff\xfe\x00\x00", "is not UTF-8"),
        (b"#bundle\x00" + b"\x00" * 4, "shorter than its 16-byte header"),
    ],
)
def test_malformed_packets_raise_an_error_that_says_what_is_wrong(osc: ModuleType, packet: bytes, problem: str) -> None:
    with pytest.raises(osc.OscError, match=re.escape(problem)):
        osc.decode_packet(packet)


def test_a_bundle_comes_out_as_its_messages_in_order(osc: ModuleType) -> None:
    messages = [("/flow/reply/ping", ["pong", "0.1.0"]), ("/flow/event/job/progress", ["j1", 0.5])]
    bundle = OscBundleBuilder(IMMEDIATELY)
    for address, args in messages:
        bundle.add_content(OscMessage(python_osc(address, args)))
    assert [(m.address, list(m.args)) for m in osc.decode_packet(bundle.build().dgram)] == messages


def test_the_installed_codec_is_the_live_scripts_codec(installed: Path) -> None:
    import ableton_remote

    shipped = Path(ableton_remote.__file__).parent / "osc.py"
    assert (installed / "flowstate_osc.py").read_bytes() == shipped.read_bytes()


def test_values_osc_cannot_carry_are_refused_by_name(osc: ModuleType) -> None:
    with pytest.raises(osc.OscError, match=r"argument 0: cannot encode \[1\] \(list\)"):
        osc.encode_message("/flow/ping", [[1]])
    with pytest.raises(osc.OscError, match="must start with '/'"):
        osc.encode_message("flow/ping", [])


def test_the_client_talks_to_a_real_daemon_without_blocking(reaper_module: ModuleType) -> None:
    with DaemonProcess() as daemon:
        client = reaper_module.OscUdpClient(*daemon.osc_udp)
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


def test_the_client_reports_a_closed_port(reaper_module: ModuleType) -> None:
    client = reaper_module.OscUdpClient("127.0.0.1", free_port(socket.SOCK_DGRAM))
    try:
        client.send("/flow/ping")
        with pytest.raises(reaper_module.DaemonUnreachable, match="the port is closed"):
            for _ in range(1000):  # the refusal arrives as soon as the kernel has handled the send
                client.receive()
                client.send("/flow/ping")
    finally:
        client.close()
