"""A simulated Max for Live host for `flowstate.maxpat`: its objects, patch cords and real sockets.

Max cannot run here, so the device's patcher runs on this instead. Each object does what Cycling
'74's reference says it does (the docs.cycling74.com reference pages named beside each class),
and refuses what Max refuses, so a patch that starts relying on something Max would not do fails
here instead of passing by accident. An object class not modelled raises.

- Messages are lists of atoms: int, float or str (a Max symbol). A list starting with a symbol is
  an "anything" message whose selector is that symbol; `["bang"]` is a bang.
- Outlets fire right to left where the reference says so (`trigger`, `unpack`).
- `udpsend` sends real OSC datagrams; `udpreceive` binds a real UDP socket on loopback when it gets
  `port N` and `pump()` feeds what arrives through the patch (Max's scheduler does that).
- Time is explicit: `tick()` is one period of each running `metro` going by, so tests never sleep.
- Live's part: `drop()` is a file dragged onto `live.drop`, `saved_parameters()` is what Live
  stores in the Set, `load(restored=...)` is the Set opening (Live restores stored parameter
  values, and the objects output them).
"""

from __future__ import annotations

import random
import re
import select
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

Atom = int | float | str
Message = list[Atom]

# File types live.drop passes through as they are with decodemode on: uncompressed PCM audio.
PCM_SUFFIXES = {".wav", ".aif", ".aiff"}


class MaxError(Exception):
    """What Max would print to its console and not do (e.g. `message: doesn't understand "x"`)."""


def atom(word: str) -> Atom:
    """A word typed into a box, as Max types it: int, float or symbol."""
    if re.fullmatch(r"-?\d+", word):
        return int(word)
    if re.fullmatch(r"-?(\d+\.\d*|\.\d+|\d+\.)", word):
        return float(word)
    return word


def is_number(value: Atom) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Box:
    """One object in the patcher; `receive(inlet, message)` is a message arriving at an inlet."""

    def __init__(self, device: MaxDevice, spec: dict[str, Any]) -> None:
        self.device = device
        self.spec = spec
        self.id: str = spec["id"]
        self.words = [atom(w) for w in str(spec.get("text", "")).split()]

    def out(self, outlet: int, message: Message) -> None:
        self.device.emit(self.id, outlet, message)

    def receive(self, inlet: int, message: Message) -> None:
        name = f"{self.spec['maxclass']} {self.spec.get('text', '')!r}"
        raise MaxError(f"{name} got {message} in inlet {inlet}: not modelled")


class MessageBox(Box):
    """docs.cycling74.com/reference/message and the "dollar sign" vignette: bang, int, float and list
    send the content with $1..$9 replaced by the input's atoms (the last ones received when a bang
    triggers it; 0 before any); `set ...` replaces the content without output; any other word is
    refused ("doesn't understand")."""

    def __init__(self, device: MaxDevice, spec: dict[str, Any]) -> None:
        super().__init__(device, spec)
        self.content: list[str] = str(spec.get("text", "")).split()
        self.dollars: list[Atom] = [0] * 9

    def receive(self, inlet: int, message: Message) -> None:
        if inlet != 0:
            raise MaxError(f"message box {self.id}: inlet {inlet} not modelled")
        head = message[0]
        if head == "set":
            self.content = [str(a) for a in message[1:]]
            return
        if head != "bang":
            if not is_number(head):
                raise MaxError(f'message: doesn\'t understand "{head}"')
            for i, value in enumerate(message[:9]):
                self.dollars[i] = value
        if not self.content:
            return
        out = [self.dollars[int(w[1:]) - 1] if re.fullmatch(r"\$[1-9]", w) else atom(w) for w in self.content]
        self.out(0, out)

    @property
    def text(self) -> str:
        return " ".join(self.content)


class Loadbang(Box):
    """loadbang / freebang / live.thisdevice: a bang when the patcher loads (or is freed)."""

    def receive(self, inlet: int, message: Message) -> None:
        self.out(0, ["bang"])


class Metro(Box):
    """docs.cycling74.com/reference/metro: bang or a non-zero number in the left inlet starts it and
    it bangs at once, then every interval; 0 or `stop` stops it; a number in the right inlet sets the
    interval (ms). With Live's audio engine off, Max for Live's scheduler does not run it (Ableton's
    Max for Live production guidelines, "Initialization")."""

    def __init__(self, device: MaxDevice, spec: dict[str, Any]) -> None:
        super().__init__(device, spec)
        if len(self.words) != 2 or not is_number(self.words[1]) or self.words[1] <= 0:
            raise MaxError(f"metro needs an interval in ms: {spec.get('text')!r}")
        self.interval_ms = float(self.words[1])
        self.running = False

    def receive(self, inlet: int, message: Message) -> None:
        head = message[0]
        if inlet == 1:
            if not is_number(head):
                raise MaxError(f'metro: doesn\'t understand "{head}" in the right inlet')
            self.interval_ms = float(head)
            return
        if head == "stop" or (is_number(head) and head == 0):
            self.running = False
        elif head == "bang" or is_number(head):
            self.running = True
            self.out(0, ["bang"])
        else:
            raise MaxError(f'metro: doesn\'t understand "{head}"')

    def tick(self) -> None:
        if self.running:
            self.out(0, ["bang"])


class Trigger(Box):
    """docs.cycling74.com/reference/trigger: outputs right to left, each outlet converting the input
    to its type: b bang, i int, f float, l list, s symbol."""

    def receive(self, inlet: int, message: Message) -> None:
        for outlet in reversed(range(len(self.words) - 1)):
            kind = self.words[outlet + 1]
            head = message[0]
            if kind == "b":
                self.out(outlet, ["bang"])
            elif kind in ("i", "f"):
                if not is_number(head):
                    raise MaxError(f"trigger: {kind} outlet got {head!r}")
                self.out(outlet, [int(head) if kind == "i" else float(head)])
            elif kind == "l":
                self.out(outlet, list(message))
            else:
                raise MaxError(f"trigger type {kind!r} not modelled")


class Gate(Box):
    """docs.cycling74.com/reference/gate: `gate <outlets> <initially open outlet>`; an int in the
    left inlet opens that outlet (0 closes, output nothing); the right inlet passes anything through
    the open outlet."""

    def __init__(self, device: MaxDevice, spec: dict[str, Any]) -> None:
        super().__init__(device, spec)
        self.outlets = int(self.words[1]) if len(self.words) > 1 else 1
        self.open = int(self.words[2]) if len(self.words) > 2 else 0

    def receive(self, inlet: int, message: Message) -> None:
        if inlet == 0:
            if not is_number(message[0]):
                raise MaxError(f'gate: doesn\'t understand "{message[0]}" in the left inlet')
            self.open = int(message[0])
        elif self.open != 0:
            # Below 0: the leftmost outlet; above the number of outlets: the rightmost.
            self.out(max(0, min(self.open, self.outlets) - 1), message)


class Random(Box):
    """docs.cycling74.com/reference/random: a bang outputs an int from 0 to one less than the
    argument. Unseeded, it seeds itself from the time since the system started, so two devices
    created in the same instant can draw the same numbers: `device.seed` stands for that time."""

    def __init__(self, device: MaxDevice, spec: dict[str, Any]) -> None:
        super().__init__(device, spec)
        self.limit = int(self.words[1]) if len(self.words) > 1 else 1
        self.rng = random.Random(device.seed)

    def receive(self, inlet: int, message: Message) -> None:
        if inlet != 0 or message[0] != "bang":
            raise MaxError(f"random: {message} in inlet {inlet} not modelled")
        self.out(0, [self.rng.randrange(self.limit)])


class Arithmetic(Box):
    """docs.cycling74.com/reference/+ and /*: a number in the left inlet outputs it combined with
    the argument (float output if either is a float); the right inlet sets the argument."""

    def __init__(self, device: MaxDevice, spec: dict[str, Any]) -> None:
        super().__init__(device, spec)
        self.op: Callable[[Any, Any], Any] = {"+": lambda a, b: a + b, "*": lambda a, b: a * b}[str(self.words[0])]
        self.argument: Atom = self.words[1] if len(self.words) > 1 else 0

    def receive(self, inlet: int, message: Message) -> None:
        if not is_number(message[0]):
            raise MaxError(f'{self.words[0]}: doesn\'t understand "{message[0]}"')
        if inlet == 1:
            self.argument = message[0]
            return
        value = message[0]
        if isinstance(self.argument, int):
            value = int(value)  # an int argument makes an int object: the input is truncated
        self.out(0, [self.op(value, self.argument)])


class Int(Box):
    """docs.cycling74.com/reference/int (`i`): an int in the left inlet is stored and output, a
    bang outputs the stored value, an int in the right inlet is stored without output."""

    def __init__(self, device: MaxDevice, spec: dict[str, Any]) -> None:
        super().__init__(device, spec)
        self.value = int(self.words[1]) if len(self.words) > 1 else 0

    def receive(self, inlet: int, message: Message) -> None:
        head = message[0]
        if head == "bang" and inlet == 0:
            self.out(0, [self.value])
            return
        if not is_number(head):
            raise MaxError(f'int: doesn\'t understand "{head}"')
        self.value = int(head)
        if inlet == 0:
            self.out(0, [self.value])


class Prepend(Box):
    """docs.cycling74.com/reference/prepend: puts its arguments before any message (a bang too)."""

    def receive(self, inlet: int, message: Message) -> None:
        self.out(0, list(self.words[1:]) + list(message))


class Route(Box):
    """docs.cycling74.com/reference/route: a message whose first atom matches an argument leaves by
    that argument's outlet without it (a bang if nothing is left); others leave by the last outlet."""

    def receive(self, inlet: int, message: Message) -> None:
        names = self.words[1:]
        if message[0] in names:
            rest = message[1:]
            self.out(names.index(message[0]), rest or ["bang"])
        else:
            self.out(len(names), message)


class Unpack(Box):
    """docs.cycling74.com/reference/unpack: each atom of a list (or an anything message) leaves by its
    own outlet, right to left, converted to the argument's type (s, i, f, or a number's type)."""

    def receive(self, inlet: int, message: Message) -> None:
        kinds = self.words[1:]
        for outlet in reversed(range(min(len(kinds), len(message)))):
            kind, value = kinds[outlet], message[outlet]
            if kind == "s":
                if not isinstance(value, str):
                    raise MaxError(f"unpack: outlet {outlet} expects a symbol, got {value!r}")
                self.out(outlet, ["symbol", value])
            else:
                if not is_number(value):
                    raise MaxError(f"unpack: outlet {outlet} expects a number, got {value!r}")
                as_int = kind == "i" or isinstance(kind, int)
                self.out(outlet, [int(value) if as_int else float(value)])


class Conformpath(Box):
    """conformpath native boot: the dropped paths here are already native."""

    def receive(self, inlet: int, message: Message) -> None:
        self.out(0, list(message))


class Display(Box):
    """flonum: shows the last number it got."""

    value: Atom | None = None

    def receive(self, inlet: int, message: Message) -> None:
        if message[0] == "set":
            self.value = message[1]
            return
        if not is_number(message[0]):
            raise MaxError(f'flonum: doesn\'t understand "{message[0]}"')
        self.value = float(message[0])


class UdpSend(Box):
    """docs.cycling74.com/reference/udpsend: `udpsend <host> <port>` sends each message as an OSC
    message, its first atom the address; ints are OSC int32, floats float32, symbols strings."""

    def __init__(self, device: MaxDevice, spec: dict[str, Any]) -> None:
        super().__init__(device, spec)
        self.target = (str(self.words[1]), int(self.words[2]))
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def receive(self, inlet: int, message: Message) -> None:
        address = message[0]
        if not isinstance(address, str) or not address.startswith("/"):
            raise MaxError(f"udpsend: {message} does not start with an OSC address")
        builder = OscMessageBuilder(address)
        for value in message[1:]:
            builder.add_arg(value, "i" if isinstance(value, int) else "f" if isinstance(value, float) else "s")
        self.device.sent.append((address, tuple(message[1:])))
        target = self.device.udpsend_target or self.target
        self.socket.sendto(builder.build().dgram, target)

    def close(self) -> None:
        self.socket.close()


class UdpReceive(Box):
    """docs.cycling74.com/reference/udpreceive: the port argument is optional; `port N` (re)binds to
    port N and listens there. A port another program holds cannot be bound: Max prints an error and
    the object receives nothing (a plain bind here, without SO_REUSEADDR/SO_REUSEPORT, does the same).
    Each OSC message comes out as a Max message: the address, then its arguments."""

    def __init__(self, device: MaxDevice, spec: dict[str, Any]) -> None:
        super().__init__(device, spec)
        self.socket: socket.socket | None = None
        self.port: int | None = None
        self.errors: list[str] = []
        if len(self.words) > 1:
            self._bind(int(self.words[1]))

    def receive(self, inlet: int, message: Message) -> None:
        if message[0] != "port" or len(message) != 2 or not isinstance(message[1], int):
            raise MaxError(f'udpreceive: doesn\'t understand "{message}"')
        if not 0 < message[1] < 65536:
            raise MaxError(f"udpreceive: port {message[1]} out of range")
        self._bind(message[1])

    def _bind(self, port: int) -> None:
        self.close()
        candidate = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            candidate.bind(("127.0.0.1", port))
        except OSError as err:
            candidate.close()
            self.errors.append(f"udpreceive: could not bind port {port}: {err}")
            return
        candidate.setblocking(False)
        self.socket, self.port = candidate, port

    def poll(self) -> bool:
        """Feed one waiting datagram through the patch; False if none is waiting."""
        if self.socket is None:
            return False
        try:
            data = self.socket.recv(65535)
        except BlockingIOError:
            return False
        message = OscMessage(data)
        self.device.received.append(message)
        self.out(0, [message.address, *message.params])
        return True

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
        self.socket, self.port = None, None


class LiveDrop(Box):
    """docs.cycling74.com/reference/live.drop: outputs the path of a file dropped on it. With
    `decodemode` on (the default), a file that is not PCM audio is decoded to a temporary folder and
    the path out is the temporary decoded copy's, not the original's."""

    def drop(self, path: str) -> None:
        if self.spec.get("decodemode", 1) and Path(path).suffix.lower() not in PCM_SUFFIXES:
            path = str(Path(tempfile.gettempdir()) / "Live decoded" / (Path(path).stem + ".wav"))
        self.device.parameter_values[self.id] = path
        self.out(0, [path])

    def restore(self, value: Atom) -> None:
        self.out(0, [value])


class LiveControl(Box):
    """live.dial, live.text: a user's action outputs the value."""

    def set_value(self, value: Atom) -> None:
        self.device.parameter_values[self.id] = value
        self.out(0, [value])

    def restore(self, value: Atom) -> None:
        self.out(0, [value])


class Inert(Box):
    """comment, plugin~, plugout~: no messages on our paths (audio passes plugin~ -> plugout~)."""


CLASSES: dict[str, type[Box]] = {
    "message": MessageBox, "flonum": Display, "live.drop": LiveDrop, "live.dial": LiveControl,
    "live.text": LiveControl, "comment": Inert,
}
OBJECTS: dict[str, type[Box]] = {
    "loadbang": Loadbang, "freebang": Loadbang, "live.thisdevice": Loadbang, "metro": Metro,
    "t": Trigger, "trigger": Trigger, "gate": Gate, "random": Random, "+": Arithmetic, "*": Arithmetic,
    "i": Int, "int": Int, "prepend": Prepend, "route": Route, "unpack": Unpack, "conformpath": Conformpath,
    "udpsend": UdpSend, "udpreceive": UdpReceive, "plugin~": Inert, "plugout~": Inert,
}


class MaxDevice:
    """One instance of the device in a Live set: its boxes, cords and sockets."""

    def __init__(self, patcher: dict[str, Any], udpsend_target: tuple[str, int] | None = None,
                 seed: int | None = None) -> None:
        self.patcher = patcher
        self.udpsend_target = udpsend_target  # where the test's daemon listens, as if typed into udpsend
        self.seed = seed
        self.sent: list[tuple[str, tuple[Atom, ...]]] = []
        self.received: list[OscMessage] = []
        self.parameter_values: dict[str, Atom] = {}
        self.boxes: dict[str, Box] = {}
        for entry in patcher["boxes"]:
            spec = entry["box"]
            if spec["maxclass"] == "newobj":
                name = str(spec["text"]).split()[0]
                if name not in OBJECTS:
                    raise MaxError(f"object {name!r} is not modelled: teach max_sim what Max does with it")
                self.boxes[spec["id"]] = OBJECTS[name](self, spec)
            elif spec["maxclass"] in CLASSES:
                self.boxes[spec["id"]] = CLASSES[spec["maxclass"]](self, spec)
            else:
                raise MaxError(f"maxclass {spec['maxclass']!r} is not modelled")
        self.cords = [
            (line["patchline"]["source"][0], line["patchline"]["source"][1],
             line["patchline"]["destination"][0], line["patchline"]["destination"][1])
            for line in patcher["lines"]
        ]

    # -- the patch at work ---------------------------------------------------------------------------

    def emit(self, box_id: str, outlet: int, message: Message) -> None:
        # Max sends an outlet's message down its cords in right-to-left order of the destinations'
        # positions; no part of this patch depends on that order between two cords of one outlet.
        for source, source_outlet, destination, inlet in self.cords:
            if source == box_id and source_outlet == outlet:
                self.boxes[destination].receive(inlet, message)

    def of_kind(self, kind: type[Box]) -> list[Any]:
        return [box for box in self.boxes.values() if isinstance(box, kind)]

    def by_text(self, text: str) -> Box:
        return next(box for box in self.boxes.values() if box.spec.get("text") == text)

    # -- what Live and the user do -------------------------------------------------------------------

    def load(self, restored: dict[str, Atom] | None = None) -> MaxDevice:
        """The device loads (into a new track, or as the Set opens with `restored` parameter values)."""
        for box in self.boxes.values():
            if isinstance(box, Loadbang) and box.words[0] in ("loadbang", "live.thisdevice"):
                box.receive(0, ["bang"])
        for box_id, value in (restored or {}).items():
            box = self.boxes[box_id]
            assert isinstance(box, (LiveDrop, LiveControl))
            box.restore(value)
        return self

    def saved_parameters(self) -> dict[str, Atom]:
        """What Live stores with the Set: the values of parameter-enabled live.* objects whose
        visibility is not Hidden (parameter_invisible 2; Ableton's Max for Live production
        guidelines: a Hidden parameter, or an object that is not a parameter, is not saved)."""
        saved = {}
        for box_id, value in self.parameter_values.items():
            spec = self.boxes[box_id].spec
            visibility = spec.get("saved_attribute_attributes", {}).get("valueof", {}).get("parameter_invisible", 0)
            if spec.get("parameter_enable") and visibility != 2:
                if spec["maxclass"] == "live.text" and spec.get("mode", 1) == 0:
                    continue  # a button (mode 0) holds no value to restore
                saved[box_id] = value
        return saved

    def drop(self, path: str) -> None:
        for box in self.of_kind(LiveDrop):
            box.drop(path)

    def press(self, label: str) -> None:
        box = next(b for b in self.of_kind(LiveControl) if b.spec.get("text") == label)
        box.set_value(1)

    def turn(self, box_id: str, value: float) -> None:
        box = self.boxes[box_id]
        assert isinstance(box, LiveControl)
        box.set_value(float(value))

    def tick(self) -> None:
        """One interval of every running metro goes by."""
        for metro in self.of_kind(Metro):
            metro.tick()

    def pump(self, until: Callable[[], bool], timeout_seconds: float = 60.0) -> None:
        """Let udpreceive deliver what arrives until `until()` holds; TimeoutError after the timeout."""
        pump([self], until, timeout_seconds)

    def close(self) -> None:
        """The device is removed: freebang fires, then its sockets close."""
        for box in self.boxes.values():
            if isinstance(box, Loadbang) and box.words[0] == "freebang":
                box.receive(0, ["bang"])
        for box in self.boxes.values():
            if isinstance(box, (UdpSend, UdpReceive)):
                box.close()

    # -- what the user sees --------------------------------------------------------------------------

    @property
    def listen_port(self) -> int | None:
        (receive,) = self.of_kind(UdpReceive)
        return receive.port

    @property
    def status(self) -> str:
        """The status line: the empty message box that route's displays write to."""
        boxes = [b for b in self.of_kind(MessageBox) if b.spec.get("presentation") and not b.spec.get("text")]
        (box,) = boxes
        return box.text

    @property
    def progress(self) -> Atom | None:
        (box,) = self.of_kind(Display)
        return box.value


def pump(devices: list[MaxDevice], until: Callable[[], bool], timeout_seconds: float = 60.0) -> None:
    """Deliver what the devices' udpreceive objects get until `until()` holds (Max's scheduler)."""
    deadline = time.monotonic() + timeout_seconds
    while not until():
        receivers = [box for device in devices for box in device.of_kind(UdpReceive) if box.socket is not None]
        if not receivers:
            raise MaxError("no udpreceive is listening: nothing can arrive")
        left = deadline - time.monotonic()
        if left <= 0:
            got = [m.address for device in devices for m in device.received]
            raise TimeoutError(f"condition not met within {timeout_seconds} s; received {got}")
        ready, _, _ = select.select([box.socket for box in receivers], [], [], min(left, 1.0))
        for box in receivers:
            if box.socket in ready:
                while box.poll():
                    pass
