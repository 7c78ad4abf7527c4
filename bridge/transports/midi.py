"""MIDI in: a virtual input port and named hardware inputs, mapped onto commands of the registry.

Like the other transports this one only translates: a note-on, control change or program change
that matches a `midi.mappings` entry becomes a `Request` for the daemon's dispatcher, MIDI clock
becomes a tempo estimate and start/continue/stop the transport state in `DawState`.

Messages arrive on rtmidi's thread (JACK's process thread, ALSA's or CoreMIDI's input thread).
They are time-stamped there and handed to the event loop with `call_soon_threadsafe`, so the
mapping table, the debouncers and the clock estimator are only ever touched by the loop thread.
A MIDI trigger has nobody to answer to: results are logged at DEBUG, errors at WARNING naming the
mapping, and `midi.status` keeps the last error. Job events still reach every OSC listener and
the ZeroMQ PUB socket.

mido and python-rtmidi are imported when the ports are opened, not when this module is imported
(the CLI imports it to check the config's mappings against the registry).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bridge.commands import lookup
from bridge.config import MidiConfig, MidiMapping
from bridge.daw import MIDI_CLOCK, DawState
from bridge.errors import BridgeError, ConfigError, Unavailable
from bridge.protocol import Event, Reply, Request

log = logging.getLogger(__name__)

Dispatch = Callable[[Request, Callable[[Reply], None]], None]
TriggerKind = Literal["note", "cc", "program"]

# Config names of the MIDI APIs -> python-rtmidi's API names as mido's backend spells them.
RTMIDI_APIS: dict[str, str] = {
    "alsa": "LINUX_ALSA",
    "jack": "UNIX_JACK",
    "macos": "MACOSX_CORE",
    "windows": "WINDOWS_MM",
}
# JACK and ALSA show a virtual port as <client>:<port>; CoreMIDI shows the port name alone.
CLIENT_NAME = "Flowstate"

CLOCK_PULSES_PER_QUARTER = 24
# No clock pulse for this long: the clock has stopped and its tempo reading is dropped.
CLOCK_TIMEOUT_SECONDS = 2.0
CLOCK_CHECK_SECONDS = 0.5
# DawState and `daw.set` accept tempos in this range; estimates outside it are noise.
MIN_BPM, MAX_BPM = 20.0, 999.0

_TRIGGER_TYPES = frozenset({"note_on", "control_change", "program_change"})
_CLOCK_TYPES = frozenset({"clock", "start", "continue", "stop"})


# -- mappings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binding:
    """One checked `midi.mappings` entry: a trigger on the wire and the request it makes."""

    index: int
    kind: TriggerKind
    number: int  # note, controller or program number, 0..127
    channel: int | None  # 0..15 as on the wire (config says 1..16); None: any channel
    command: str
    args: Mapping[str, Any]
    value_arg: str | None = None  # cc only: the argument that receives the scaled value
    low: float = 0.0
    high: float = 0.0
    integer: bool = False  # value_arg is an int argument: round the scaled value

    def describe(self) -> str:
        """`mapping 2 (cc 7 ch any -> stream.set)`: how logs and errors name a mapping."""
        channel = "any" if self.channel is None else str(self.channel + 1)
        return f"mapping {self.index} ({self.kind} {self.number} ch {channel} -> {self.command})"

    def request_args(self, value: int | None = None) -> dict[str, Any]:
        """The request's arguments: the fixed ones, plus the scaled controller value if any."""
        args = dict(self.args)
        if self.value_arg is not None and value is not None:
            args[self.value_arg] = scale(value, self.low, self.high, self.integer)
        return args

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            self.kind: self.number,
            "channel": None if self.channel is None else self.channel + 1,
            "command": self.command,
            "args": dict(self.args),
        }
        if self.value_arg is not None:
            out["value_arg"] = self.value_arg
            out["range"] = [self.low, self.high]
        return out


def compile_mappings(config: MidiConfig) -> list[Binding]:
    """Every `midi.mappings` entry checked against the command registry, as bindings.

    `ConfigError` in the config's own format (`midi.mappings.<index> = <mapping>: expected ...`,
    one line per bad mapping), so a bad mapping stops start-up with exit code 2 as any bad key does.
    The CLI runs this right after loading the config; the transport again when it is built.
    """
    bindings, lines = [], []
    for index, mapping in enumerate(config.mappings):
        try:
            bindings.append(compile_mapping(mapping, index))
        except ValueError as err:
            shown = mapping.model_dump(exclude_defaults=True)
            lines.append(f"  midi.mappings.{index} = {shown!r}: expected {err}")
    if lines:
        raise ConfigError("\n".join(["invalid configuration (midi.mappings, checked against the commands):",
                                     *lines]))
    return bindings


def compile_mapping(mapping: MidiMapping, index: int = 0) -> Binding:
    """Check one mapping against the command registry; ValueError says what is wrong.

    The messages read after "expected" (the config's error format); the config has already checked
    what needs no registry (one trigger; value_arg only on a cc; range only with value_arg).
    """
    kind = mapping.trigger
    try:
        spec = lookup(mapping.command)
    except BridgeError as err:
        raise ValueError(f"a command of the registry for 'command': {err.message}") from None
    low = high = 0.0
    integer = False
    args = dict(mapping.args)
    if mapping.value_arg is not None:
        low, high, integer = _value_range(mapping, spec.name, {a.name: a for a in spec.args})
        if mapping.value_arg in args:
            raise ValueError(f"value_arg '{mapping.value_arg}' not to be in args as well (the controller sets it)")
        args[mapping.value_arg] = low  # so that binding below checks the whole request
    try:
        spec.bind(args)
    except BridgeError as err:
        raise ValueError(f"args that {spec.name} accepts: {err.message}") from None
    return Binding(
        index=index,
        kind=kind,
        number=getattr(mapping, kind),
        channel=None if mapping.channel is None else mapping.channel - 1,
        command=spec.name,
        args=dict(mapping.args),
        value_arg=mapping.value_arg,
        low=low,
        high=high,
        integer=integer,
    )


def _value_range(mapping: MidiMapping, command: str, args: Mapping[str, Any]) -> tuple[float, float, bool]:
    """(low, high, integer) for a cc mapping's value_arg: its range, else the argument's min/max."""
    name = mapping.value_arg
    arg = args.get(name) if name is not None else None
    if arg is None:
        allowed = ", ".join(sorted(args)) or "none"
        raise ValueError(f"value_arg to name an argument of {command} ({allowed}), got '{name}'")
    if arg.type not in (int, float):
        raise ValueError(f"value_arg to name a numeric argument; '{name}' of {command} is a {arg.type_name}")
    if mapping.range is None:
        if arg.min is None or arg.max is None:
            raise ValueError(f"a range: argument '{name}' of {command} declares no min and max to scale into")
        return float(arg.min), float(arg.max), arg.type is int
    low, high = mapping.range
    outside = [v for v in (low, high) if (arg.min is not None and v < arg.min) or (arg.max is not None and v > arg.max)]
    if outside or not all(math.isfinite(v) for v in (low, high)):
        raise ValueError(f"range within {command}'s '{name}' ({arg.expected()}), got [{low:g}, {high:g}]")
    return float(low), float(high), arg.type is int


def scale(value: int, low: float, high: float, integer: bool = False) -> float | int:
    """A 7-bit controller value (0..127) onto [low, high], linearly; low > high inverts a fader."""
    scaled = low + (high - low) * value / 127.0
    return round(scaled) if integer else scaled


def match_port(pattern: str, names: Sequence[str]) -> str | None:
    """The port `pattern` names: an exact name first, else the first containing it (any case)."""
    if pattern in names:
        return pattern
    wanted = pattern.casefold()
    return next((name for name in names if wanted in name.casefold()), None)


def api_candidates(api: str, platform: str = sys.platform) -> tuple[str, ...]:
    """The MIDI APIs to try for `midi.api`. auto: the platform's own; on Linux ALSA, then JACK
    (a machine without the ALSA sequencer often still runs a JACK server)."""
    if api != "auto":
        return (api,)
    if platform == "darwin":
        return ("macos",)
    if platform == "win32":
        return ("windows",)
    return ("alsa", "jack")


# -- rate limiting and the clock ---------------------------------------------------------------


class Debouncer:
    """Leading-edge debounce: a key fires, then repeats within the window are ignored."""

    def __init__(self, window_seconds: float) -> None:
        self.window_seconds = window_seconds
        self._last: dict[Hashable, float] = {}

    def accept(self, key: Hashable, at: float) -> bool:
        """Whether a trigger at time `at` (seconds) fires; the window counts from the last that did."""
        last = self._last.get(key)
        if last is not None and at - last < self.window_seconds:
            return False
        self._last[key] = at
        return True


@dataclass
class _CcSlot:
    last_sent: float = -math.inf
    pending: int | None = None
    flush_scheduled: bool = False


class Coalescer:
    """Latest-wins rate limit for controllers: at most one value per window per key, and the
    last value of a sweep always gets through (sent when its window ends)."""

    def __init__(self, window_seconds: float) -> None:
        self.window_seconds = window_seconds
        self._slots: dict[Hashable, _CcSlot] = {}

    def offer(self, key: Hashable, value: int, at: float) -> tuple[int | None, float | None]:
        """(the value to send now or None, seconds after which to call `flush` or None).

        A flush delay is returned once per held value: later values replace the held one.
        """
        slot = self._slots.setdefault(key, _CcSlot())
        if slot.pending is None and at - slot.last_sent >= self.window_seconds:
            slot.last_sent = at
            return value, None
        slot.pending = value
        if slot.flush_scheduled:
            return None, None
        slot.flush_scheduled = True
        return None, max(0.0, slot.last_sent + self.window_seconds - at)

    def flush(self, key: Hashable, at: float) -> int | None:
        """The held value to send now (None if there is none)."""
        slot = self._slots.setdefault(key, _CcSlot())
        value, slot.pending, slot.flush_scheduled = slot.pending, None, False
        if value is not None:
            slot.last_sent = at
        return value


class ClockEstimator:
    """Tempo from MIDI clock (24 pulses per quarter note) over a moving window of pulses.

    The pulse period is the median of the slopes between pulses at least half a window apart (a
    Theil-Sen estimate): the long spans average out the arrival jitter (JACK delivers MIDI once
    per period, e.g. every 5.3 ms), and the median ignores a late pulse or a burst after a stall.
    A pause longer than `gap_seconds` starts a new window.
    """

    def __init__(self, window: int = 48, min_pulses: int = 24, every: int = 6, gap_seconds: float = 0.5) -> None:
        self.window = window
        self.min_pulses = min_pulses
        self.every = every
        self.gap_seconds = gap_seconds
        self._times: deque[float] = deque(maxlen=window)
        self._count = 0
        self.bpm: float | None = None

    @property
    def last_pulse(self) -> float | None:
        return self._times[-1] if self._times else None

    def reset(self) -> None:
        self._times.clear()
        self._count = 0
        self.bpm = None

    def pulse(self, at: float) -> float | None:
        """Record a pulse at `at` seconds; return a new estimate every `every` pulses, else None."""
        if self._times and at - self._times[-1] > self.gap_seconds:
            self.reset()
        self._times.append(at)
        self._count += 1
        if len(self._times) < self.min_pulses or self._count % self.every:
            return None
        period = self._period()
        if period <= 0.0:
            return None
        self.bpm = 60.0 / (CLOCK_PULSES_PER_QUARTER * period)
        return self.bpm

    def _period(self) -> float:
        times = list(self._times)
        n = len(times)
        span = n // 2
        slopes = [(times[j] - times[i]) / (j - i) for i in range(n) for j in range(i + span, n)]
        return statistics.median(slopes)


# -- the transport -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MidiOrigin:
    """Where a MIDI-triggered request came from: a port, which cannot be answered."""

    port: str
    transport: str = "midi"
    host: str = ""

    @property
    def key(self) -> tuple[Any, ...]:
        return ("midi", self.port)

    def send_event(self, event: Event) -> None:
        """MIDI has no way back to the sender; listeners and the PUB socket get the event."""


@dataclass
class _Counts:
    received: int = 0  # messages that matched a mapping
    dispatched: int = 0
    debounced: int = 0  # notes and programs ignored within the debounce window
    coalesced: int = 0  # controller values replaced by a later one
    errors: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _OpenPort:
    name: str
    port: Any  # a mido input port
    virtual: bool


@dataclass
class _State:
    api: str | None = None
    reason: str | None = None
    ports: list[_OpenPort] = field(default_factory=list)
    missing_inputs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class MidiTransport:
    """Opens the MIDI inputs, turns mapped messages into requests and clock into a tempo."""

    def __init__(self, config: MidiConfig, dispatch: Dispatch, daw: DawState) -> None:
        self.config = config
        self._dispatch = dispatch
        self._daw = daw
        self.bindings = compile_mappings(config)
        self._table: dict[tuple[str, int], list[Binding]] = {}
        for binding in self.bindings:
            self._table.setdefault((binding.kind, binding.number), []).append(binding)
        window = config.debounce_ms / 1000.0
        self._debouncer = Debouncer(window)
        self._coalescer = Coalescer(window)
        self._clock = ClockEstimator()
        self._state = _State(reason="opening: the daemon is starting")
        self._counts = _Counts()
        self._last_error: dict[str, Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._clock_watch: asyncio.TimerHandle | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the ports. Never raises: without MIDI the daemon still runs, and says why."""
        self._loop = asyncio.get_running_loop()
        if not self.config.enabled:
            self._state = _State(reason="midi.enabled is false")
            return
        if self.config.virtual_port is None and not self.config.inputs:
            self._state = _State(reason="midi.virtual_port is null and midi.inputs is empty: nothing to open")
            log.info("MIDI: %s", self._state.reason)
            return
        self._accepting = True
        self._state = await asyncio.to_thread(self._open)
        if not self.available:
            self._accepting = False
            log.warning("MIDI unavailable, the daemon runs without it (midi.status tells): %s", self._state.reason)
            return
        for problem in self._state.problems:
            log.warning("MIDI: %s", problem)
        names = ", ".join(port.name for port in self._state.ports)
        log.info("MIDI (%s): %s; %d mapping(s)", self._state.api, names, len(self.bindings))

    @property
    def available(self) -> bool:
        return bool(self._state.ports)

    def stop_accepting(self) -> None:
        """Ignore MIDI from now on (the daemon is shutting down); pending CC values are dropped."""
        self._accepting = False
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._clock_watch is not None:
            self._clock_watch.cancel()
            self._clock_watch = None

    async def close(self) -> None:
        self.stop_accepting()
        ports, self._state.ports = self._state.ports, []
        if ports:
            await asyncio.to_thread(_close_ports, ports)
        self._state.reason = "closed"

    def endpoint(self) -> str:
        """One line for the daemon's endpoint list."""
        if not self.available:
            return f"unavailable: {self._state.reason}"
        return f"{self._state.api}: " + ", ".join(port.name for port in self._state.ports)

    def status(self) -> dict[str, Any]:
        """What `midi.status` reports."""
        state = self._state
        virtual = next((p.name for p in state.ports if p.virtual), None)
        last_pulse = self._clock.last_pulse
        receiving = last_pulse is not None and time.monotonic() - last_pulse < CLOCK_TIMEOUT_SECONDS
        return {
            "enabled": self.config.enabled,
            "available": self.available,
            "reason": None if self.available else state.reason,
            "api": state.api,
            "virtual_port": virtual,
            "inputs": [p.name for p in state.ports if not p.virtual],
            "missing_inputs": list(state.missing_inputs),
            "problems": list(state.problems),
            "debounce_ms": self.config.debounce_ms,
            "mappings": [binding.to_dict() for binding in self.bindings],
            **self._counts.to_dict(),
            "last_error": self._last_error,
            "clock": {
                "enabled": self.config.clock,
                "receiving": receiving,
                "bpm": round(self._clock.bpm, 3) if receiving and self._clock.bpm is not None else None,
            },
        }

    def input_names(self) -> tuple[str, list[str]]:
        """(api, the input ports it sees): what `midi.inputs` can name. Blocking: call off the loop."""
        from rtmidi import RtMidiError

        apis = (self._state.api,) if self._state.api else api_candidates(self.config.api)
        failures = []
        for api in apis:
            try:
                return api, _backend(api).get_input_names()
            except (RtMidiError, OSError, ValueError) as err:
                failures.append(f"{api}: {err}")
        raise Unavailable("no MIDI API could list ports: " + "; ".join(failures))

    # -- opening ports (worker thread) -------------------------------------------------------------

    def _open(self) -> _State:
        from rtmidi import RtMidiError

        failures = []
        for api in api_candidates(self.config.api):
            try:
                backend = _backend(api)
                names = backend.get_input_names()
            except (RtMidiError, OSError, ValueError) as err:
                failures.append(f"{api}: {err}")
                continue
            state = _State(api=api)
            self._open_ports(backend, names, state)
            if not state.ports:
                state.reason = "; ".join(state.problems) or "no port could be opened"
            return state
        return _State(reason="no MIDI API could be opened (" + "; ".join(failures) + ")")

    def _open_ports(self, backend: Any, names: list[str], state: _State) -> None:
        from rtmidi import RtMidiError

        virtual = self.config.virtual_port
        if virtual is not None:
            try:
                port = backend.open_input(virtual, virtual=True, client_name=CLIENT_NAME,
                                          callback=functools.partial(self._receive, virtual))
                state.ports.append(_OpenPort(virtual, port, virtual=True))
            except (RtMidiError, OSError, NotImplementedError) as err:
                hint = " (Windows has no virtual ports: create one with loopMIDI and name it in midi.inputs)" \
                    if state.api == "windows" else ""
                state.problems.append(f"virtual port '{virtual}' cannot be created on {state.api}: {err}{hint}")
        for pattern in self.config.inputs:
            name = match_port(pattern, names)
            if name is None:
                state.missing_inputs.append(pattern)
                state.problems.append(f"input '{pattern}' is not among the {state.api} ports: {names or 'none'}")
                continue
            if any(p.name == name for p in state.ports):
                continue  # two patterns naming one port: open it once
            try:
                port = backend.open_input(name, callback=functools.partial(self._receive, name))
                state.ports.append(_OpenPort(name, port, virtual=False))
            except (RtMidiError, OSError) as err:
                state.missing_inputs.append(pattern)
                state.problems.append(f"input '{name}' cannot be opened: {err}")

    # -- wire -> requests (rtmidi thread, then the loop) -------------------------------------------

    def _receive(self, port: str, message: Any) -> None:
        """rtmidi's thread: keep what can matter, stamp it, hop onto the loop. Never raises."""
        kind = message.type
        if kind not in _TRIGGER_TYPES and not (self.config.clock and kind in _CLOCK_TYPES):
            return
        loop = self._loop
        if loop is None or not self._accepting or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._handle, port, message, time.monotonic())
        except RuntimeError:
            # The loop closed between the check and the call: the daemon is exiting.
            log.debug("MIDI %s from %s dropped: the event loop is closed", kind, port)

    def _handle(self, port: str, message: Any, at: float) -> None:
        if not self._accepting:
            return
        kind = message.type
        if kind in _CLOCK_TYPES:
            self._on_clock(kind, at)
            return
        if kind == "note_on":
            if message.velocity == 0:
                return  # note-off in running-status form
            key, value = ("note", message.note), None
        elif kind == "control_change":
            key, value = ("cc", message.control), message.value
        else:
            key, value = ("program", message.program), None
        for binding in self._table.get(key, ()):
            if binding.channel is None or binding.channel == message.channel:
                self._counts.received += 1
                self._trigger(binding, port, value, at)

    def _trigger(self, binding: Binding, port: str, value: int | None, at: float) -> None:
        if binding.value_arg is None:
            if binding.kind == "cc" and not value:
                return  # a button sends 127 when pressed and 0 when released: the press counts
            if self._debouncer.accept(binding.index, at):
                self._send(binding, port, None)
            else:
                self._counts.debounced += 1
            return
        assert value is not None  # only cc bindings carry a value_arg (compile_mapping checks)
        now, delay = self._coalescer.offer(binding.index, value, at)
        if now is not None:
            self._send(binding, port, now)
            return
        self._counts.coalesced += 1
        if delay is not None and self._loop is not None:
            self._timers[binding.index] = self._loop.call_later(delay, self._flush, binding, port)

    def _flush(self, binding: Binding, port: str) -> None:
        self._timers.pop(binding.index, None)
        value = self._coalescer.flush(binding.index, time.monotonic())
        if value is not None and self._accepting:
            self._counts.coalesced -= 1  # the held value was sent after all
            self._send(binding, port, value)

    def _send(self, binding: Binding, port: str, value: int | None) -> None:
        self._counts.dispatched += 1
        request = Request(binding.command, binding.request_args(value), origin=MidiOrigin(port))
        self._dispatch(request, functools.partial(self._answered, binding, request))

    def _answered(self, binding: Binding, request: Request, reply: Reply) -> None:
        if reply.error is None:
            log.debug("MIDI %s %s: %s", binding.describe(), request.args, reply.result)
            return
        self._counts.errors += 1
        self._last_error = {
            "mapping": binding.index,
            "command": binding.command,
            "args": dict(request.args),
            "code": reply.error.code,
            "message": reply.error.message,
        }
        log.warning("MIDI %s: %s: %s", binding.describe(), reply.error.code, reply.error.message)

    # -- clock and transport -----------------------------------------------------------------------

    def _on_clock(self, kind: str, at: float) -> None:
        if kind in ("start", "continue"):
            self._daw.update(playing=True)
            return
        if kind == "stop":
            self._daw.update(playing=False)
            return
        bpm = self._clock.pulse(at)
        if bpm is not None and MIN_BPM <= bpm <= MAX_BPM:
            self._daw.set_tempo(bpm, MIDI_CLOCK)
        if self._clock_watch is None and self._loop is not None:
            self._clock_watch = self._loop.call_later(CLOCK_CHECK_SECONDS, self._check_clock)

    def _check_clock(self) -> None:
        """Drop the clock's tempo once pulses stop: the DAW's (or the default) applies again."""
        self._clock_watch = None
        last = self._clock.last_pulse
        if last is not None and time.monotonic() - last < CLOCK_TIMEOUT_SECONDS:
            if self._loop is not None and self._accepting:
                self._clock_watch = self._loop.call_later(CLOCK_CHECK_SECONDS, self._check_clock)
            return
        if self._clock.bpm is not None:
            log.info("MIDI clock stopped arriving; its tempo (%.1f BPM) is no longer used", self._clock.bpm)
        self._clock.reset()
        self._daw.forget_tempo(MIDI_CLOCK)


def _backend(api: str) -> Any:
    """mido's rtmidi backend bound to one API (ValueError when python-rtmidi lacks it)."""
    import mido

    backend = mido.Backend(f"mido.backends.rtmidi/{RTMIDI_APIS[api]}", load=True)
    if RTMIDI_APIS[api] not in backend.module.get_api_names():
        raise ValueError(f"python-rtmidi was built without the {api} API")
    return backend


def _close_ports(ports: list[_OpenPort]) -> None:
    for open_port in ports:
        try:
            open_port.port.close()
        except Exception as err:  # noqa: BLE001 - one port failing to close must not keep the others open
            log.warning("MIDI port %s did not close cleanly: %s", open_port.name, err)
