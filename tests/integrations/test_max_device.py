"""The Max for Live device source: a valid patcher whose every message is a command that works.

Max cannot run here, so the test reads the patcher the way Max wires it: it fires each control
(loadbang, freebang, the buttons, the dials at both ends of their ranges, a dropped file), follows
the patch cords through message boxes, `prepend` and `conformpath` to `udpsend`, and collects
exactly what the device would send. Those messages must name registry commands whose arguments
bind, and, sent to a real daemon (with a real live stream on JACK's dummy backend), must be
answered without an error except where the daemon rightly says no stream is running.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge.commands import EVENTS, lookup_address
from bridge.config import Config
from bridge.protocol import ERROR_ADDRESS
from bridge.testing import DaemonProcess
from tests.integrations.conftest import STEMS, write_song

PATCH = Path(__file__).resolve().parents[2] / "integrations" / "max" / "flowstate.maxpat"
SAMPLE_PATH = "/Users/me/Music/Flowstate/loop.wav"  # what live.drop + conformpath would give
NO_STREAM = "stream.set: no stream is running; stream.start one first"


@dataclass(frozen=True)
class Sent:
    """One OSC message the device sends, and the control that sends it."""

    control: str  # the firing box's maxclass and id, e.g. "live.dial obj-20 = -70.0"
    address: str
    args: tuple[Any, ...]


def load_patch() -> dict[str, Any]:
    return json.loads(PATCH.read_text())["patcher"]


def boxes_by_id(patcher: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["box"]["id"]: entry["box"] for entry in patcher["boxes"]}


def cords(patcher: dict[str, Any]) -> list[tuple[str, int, str, int]]:
    return [
        (line["patchline"]["source"][0], line["patchline"]["source"][1],
         line["patchline"]["destination"][0], line["patchline"]["destination"][1])
        for line in patcher["lines"]
    ]


def atom(word: str) -> Any:
    """A word of a Max message as Max types it: int, float or symbol."""
    if re.fullmatch(r"-?\d+", word):
        return int(word)
    if re.fullmatch(r"-?(\d+\.\d*|\.\d+|\d+\.)", word):
        return float(word)
    return word


class SendPath:
    """Follow what a control outputs through the patch until it leaves by `udpsend`."""

    def __init__(self, patcher: dict[str, Any]) -> None:
        self.boxes = boxes_by_id(patcher)
        self.cords = cords(patcher)
        self.sent: list[tuple[str, tuple[Any, ...]]] = []

    def fire(self, box_id: str, outlet: int, message: list[Any]) -> list[tuple[str, tuple[Any, ...]]]:
        self.sent = []
        self._out(box_id, outlet, message)
        return self.sent

    def _out(self, box_id: str, outlet: int, message: list[Any]) -> None:
        for source, source_outlet, destination, inlet in self.cords:
            if source == box_id and source_outlet == outlet:
                self._into(destination, inlet, message)

    def _into(self, box_id: str, inlet: int, message: list[Any]) -> None:
        box = self.boxes[box_id]
        words = box.get("text", "").split()
        if box["maxclass"] == "message":
            # A message box sends its content on any input, $1.. replaced by the input's atoms.
            out = [message[int(w[1:]) - 1] if re.fullmatch(r"\$\d", w) else atom(w) for w in words]
            self._out(box_id, 0, out)
        elif words[0] == "prepend":
            self._out(box_id, 0, [atom(w) for w in words[1:]] + message)
        elif words[0] == "metro":
            # Cycling '74's metro reference: a bang in the left inlet starts it, and it bangs at once
            # (then every interval, which `metro_period_ms` reads off the box).
            if inlet == 0:
                self._out(box_id, 0, ["bang"])
        elif words[0] == "conformpath":
            self._out(box_id, 0, message)  # the sample path is already native
        elif words[0] == "udpsend":
            self.sent.append((str(message[0]), tuple(message[1:])))
        else:
            raise AssertionError(f"{box['maxclass']} {box.get('text')!r} on a send path: teach this test what it does")


def device_messages() -> list[Sent]:
    """Every message the device can send, in the order a session uses them."""
    patcher = load_patch()
    path = SendPath(patcher)
    sent: list[Sent] = []

    def fire(box: dict[str, Any], value: Any, label: str) -> None:
        for address, args in path.fire(box["id"], 0, [value]):
            sent.append(Sent(f"{box['maxclass']} {box['id']} {label}", address, args))

    boxes = list(boxes_by_id(patcher).values())
    by_text = {box.get("text"): box for box in boxes}
    fire(by_text["loadbang"], "bang", "")
    for box in boxes:
        if box["maxclass"] == "live.drop":
            fire(box, SAMPLE_PATH, "= dropped file")
    for box in boxes:
        if box["maxclass"] == "live.text" and box.get("text") == "Start stems":
            fire(box, 1, "pressed")
    for box in boxes:
        if box["maxclass"] == "live.dial":
            values = box["saved_attribute_attributes"]["valueof"]
            for end in ("parameter_mmin", "parameter_mmax"):
                fire(box, float(values[end]), f"= {values[end]}")
    for box in boxes:
        if box["maxclass"] == "live.text" and box.get("text") != "Start stems":
            fire(box, 1, "pressed")
    fire(by_text["freebang"], "bang", "")
    return sent


# -- the patcher as a file ---------------------------------------------------------------------------


def test_the_patcher_is_valid_and_every_cord_joins_existing_outlets_and_inlets() -> None:
    patcher = load_patch()
    assert patcher["fileversion"] == 1 and patcher["classnamespace"] == "box"
    ids = [entry["box"]["id"] for entry in patcher["boxes"]]
    assert len(ids) == len(set(ids)), "box ids must be unique"
    boxes = boxes_by_id(patcher)
    for box in boxes.values():
        assert {"maxclass", "numinlets", "numoutlets", "patching_rect"} <= set(box), box
        assert len(box.get("outlettype", [])) == box["numoutlets"], box
        if box["maxclass"] == "newobj":
            assert box["text"].strip(), box
        if box.get("presentation"):
            assert len(box["presentation_rect"]) == 4, box
    for source, outlet, destination, inlet in cords(patcher):
        assert source in boxes and destination in boxes, (source, destination)
        assert 0 <= outlet < boxes[source]["numoutlets"], (source, outlet)
        assert 0 <= inlet < boxes[destination]["numinlets"], (destination, inlet)
    # Every parameter the device exposes to Live has a unique name (Live refuses duplicates).
    names = [box["varname"] for box in boxes.values() if box.get("parameter_enable")]
    assert len(names) == len(set(names))


def test_it_sends_to_the_daemons_default_port_and_registers_the_port_it_receives_on() -> None:
    boxes = list(boxes_by_id(load_patch()).values())
    texts = [box.get("text", "") for box in boxes]
    defaults = Config().osc
    assert f"udpsend {defaults.host} {defaults.udp_port}" in texts
    receive_ports = [int(text.split()[1]) for text in texts if text.startswith("udpreceive ")]
    assert len(receive_ports) == 1
    messages = device_messages()
    assert messages[0].address == "/flow/register" and messages[0].args == (receive_ports[0],)
    assert messages[-1].address == "/flow/unregister" and messages[-1].args == (receive_ports[0],)


def test_it_registers_again_well_within_the_listener_expiry() -> None:
    """Listeners expire after daemon.listener_ttl_seconds: the device must renew before that, even
    when the daemon was started (or restarted) after Live loaded it."""
    patcher = load_patch()
    boxes = boxes_by_id(patcher)
    links = cords(patcher)
    register = next(box for box in boxes.values() if box.get("text", "").startswith("/flow/register "))
    feeding = [boxes[source] for source, _, destination, _ in links if destination == register["id"]]
    metros = [box for box in feeding if box.get("text", "").split()[0] == "metro"]
    assert len(metros) == 1, "the register message is not driven by a metro"
    period_seconds = float(metros[0]["text"].split()[1]) / 1000
    loadbang = next(box for box in boxes.values() if box.get("text") == "loadbang")
    assert (loadbang["id"], 0, metros[0]["id"], 0) in links, "the metro is not started at load"
    assert period_seconds <= Config().daemon.listener_ttl_seconds / 3


def test_every_message_is_a_registry_command_whose_arguments_bind() -> None:
    messages = device_messages()
    addresses = {message.address for message in messages}
    assert addresses == {
        "/flow/register", "/flow/unregister", "/flow/stems/separate",
        "/flow/stream/start", "/flow/stream/stop", "/flow/stream/set",
    }
    for message in messages:
        spec = lookup_address(message.address)
        bound = spec.bind(list(message.args))  # raises BadRequest naming what does not fit
        if spec.name == "stream.set":
            assert bound["stem"] in STEMS and isinstance(bound["gain_db"], float)
        if spec.name == "stems.separate":
            assert bound["path"] == SAMPLE_PATH
    gains = [(m.args[0], m.args[1]) for m in messages if m.address == "/flow/stream/set"]
    assert sorted({stem for stem, _ in gains}) == sorted(STEMS)


def test_incoming_events_and_errors_are_routed_to_displays() -> None:
    patcher = load_patch()
    boxes = boxes_by_id(patcher)
    route = next(box for box in boxes.values() if box.get("text", "").startswith("route "))
    routed = route["text"].split()[1:]
    known = {event.osc_address for event in EVENTS.values()} | {ERROR_ADDRESS}
    assert set(routed) <= known, set(routed) - known
    assert {"/flow/event/job/progress", "/flow/event/job/done", "/flow/event/job/failed", ERROR_ADDRESS} <= set(routed)
    receive = next(box for box in boxes.values() if box.get("text", "").startswith("udpreceive "))
    links = cords(patcher)
    assert (receive["id"], 0, route["id"], 0) in links
    displays = {box_id for box_id, box in boxes.items() if box["maxclass"] in ("message", "flonum")}

    def reaches_display(box_id: str, outlet: int, depth: int = 0) -> bool:
        for source, source_outlet, destination, _ in links:
            if source == box_id and (outlet < 0 or source_outlet == outlet):
                if destination in displays or (depth < 4 and reaches_display(destination, -1, depth + 1)):
                    return True
        return False

    for outlet, address in enumerate(routed):
        assert reaches_display(route["id"], outlet), f"{address} is routed nowhere visible"


# -- the same messages against a real daemon ------------------------------------------------------


class MaxSide:
    """Max's two sockets: `udpsend` (never reads) and `udpreceive` (the registered listener)."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.target = daemon.osc_udp
        self.send_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.send_socket.bind(("127.0.0.1", 0))
        self.receive_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.receive_socket.bind(("127.0.0.1", 0))
        self.receive_socket.settimeout(60)
        self.received: list[OscMessage] = []

    @property
    def receive_port(self) -> int:
        return self.receive_socket.getsockname()[1]

    def send(self, address: str, args: tuple[Any, ...]) -> None:
        builder = OscMessageBuilder(address)
        for value in args:
            builder.add_arg(value)
        self.send_socket.sendto(builder.build().dgram, self.target)

    def answer(self, address: str) -> OscMessage:
        """The reply to `address` (or an error) as udpreceive gets it; events on the way are kept."""
        reply = "/flow/reply/" + address[len("/flow/"):]
        while True:
            message = OscMessage(self.receive_socket.recv(65535))
            self.received.append(message)
            if message.address in (reply, ERROR_ADDRESS):
                return message

    def close(self) -> None:
        self.send_socket.close()
        self.receive_socket.close()


@pytest.fixture
def max_side(stems_daemon: DaemonProcess) -> Iterator[MaxSide]:
    side = MaxSide(stems_daemon)
    yield side
    side.close()


def test_the_devices_messages_work_against_a_real_daemon(stems_daemon: DaemonProcess, max_side: MaxSide) -> None:
    song = write_song(stems_daemon.workdir / "files" / "max" / "loop.wav", 1.0)
    answers: list[tuple[Sent, OscMessage]] = []
    for message in device_messages():
        args = message.args
        if message.address in ("/flow/register", "/flow/unregister"):
            args = (max_side.receive_port,)  # this test's udpreceive, not the device's fixed port
        elif message.address == "/flow/stems/separate":
            args = (str(song),)
        max_side.send(message.address, args)
        if message.address == "/flow/unregister":
            break  # after it, udpreceive no longer gets copies: nothing more to read there
        answers.append((message, max_side.answer(message.address)))

    errors = [(sent, reply.params) for sent, reply in answers if reply.address == ERROR_ADDRESS]
    assert errors == [], errors
    by_address = {sent.address: reply for sent, reply in answers}
    assert by_address["/flow/register"].params[:2] == ["127.0.0.1", max_side.receive_port]
    assert by_address["/flow/stream/start"].address == "/flow/reply/stream/start"
    assert json.loads(by_address["/flow/stream/start"].params[2]) == STEMS
    gains = [reply.params for sent, reply in answers if sent.address == "/flow/stream/set"]
    assert len(gains) == 2 * len(STEMS) and {(g[0], g[1]) for g in gains} >= {("drums", -70.0), ("vocals", 12.0)}

    # With the stream stopped (the device's Stop button was the last control), a dial's message
    # gets the daemon's clear error.
    max_side.send("/flow/register", (max_side.receive_port,))
    max_side.answer("/flow/register")
    dial = next(m for m in device_messages() if m.address == "/flow/stream/set")
    max_side.send(dial.address, dial.args)
    error = max_side.answer(dial.address)
    assert error.params == ["/flow/stream/set", "unavailable", NO_STREAM]

    # What the device's route displays arrived: the separation's progress and result, the stream.
    seen = [message.address for message in max_side.received]
    for address in ("/flow/event/job/progress", "/flow/event/stream/started", "/flow/event/stream/stopped"):
        assert address in seen, seen
    job_id = by_address["/flow/stems/separate"].params[0]
    done = _wait_for_done(max_side, job_id)
    assert sorted(json.loads(done.params[1])["paths"]) == sorted(STEMS)


def _wait_for_done(side: MaxSide, job_id: str) -> OscMessage:
    for message in side.received:
        if message.address == "/flow/event/job/done" and message.params[0] == job_id:
            return message
    while True:
        message = OscMessage(side.receive_socket.recv(65535))
        side.received.append(message)
        if message.address == "/flow/event/job/done" and message.params[0] == job_id:
            return message
