"""Protocol v1 data types: typed arguments, command and event specs, requests, replies, events.

Nothing here knows about a wire. Transports turn bytes into `Request` objects and `Reply` /
`Event` objects back into bytes; `bridge/commands.py` declares the vocabulary with these types.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from bridge.errors import BadRequest, BridgeError

if TYPE_CHECKING:
    from bridge.services import Services

OSC_PREFIX = "/flow"
REPLY_PREFIX = "/flow/reply"
ERROR_ADDRESS = "/flow/error"
EVENT_PREFIX = "/flow/event"

_REQUIRED = object()

# Argument types a command may declare, with the word used in errors, help and the README.
TYPE_NAMES: dict[type, str] = {
    int: "int",
    float: "float",
    str: "string",
    bool: "bool",
    dict: "JSON object",
    list: "list of strings",
    object: "number, bool or string",  # a plugin parameter value
}

_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def name_to_path(name: str) -> str:
    """`stems.separate` -> `stems/separate` (the OSC form of a command or event name)."""
    return name.replace(".", "/")


def path_to_name(path: str) -> str:
    """`stems/separate` -> `stems.separate`."""
    return path.strip("/").replace("/", ".")


def loads_json(body: bytes | str, *, max_depth: int, max_int_digits: int, section: str) -> Any:
    """Parse a JSON request with its nesting depth and integer sizes bounded.

    Without bounds, deep nesting raises RecursionError and a long integer ValueError (Python's
    4,300-digit limit), neither of which a transport expects: the request went unanswered. The
    bounds are `<section>.max_json_depth` and `<section>.max_int_digits`, named in the error.
    """

    def parse_int(text: str) -> int:
        digits = len(text) - text.startswith("-")
        if digits > max_int_digits:
            raise BadRequest(
                f"an integer of {digits} digits ({text[:12]}...); at most {section}.max_int_digits ({max_int_digits})"
            )
        return int(text)

    try:
        value = json.loads(body, parse_int=parse_int)
    except RecursionError:
        raise BadRequest(f"JSON nested deeper than {section}.max_json_depth ({max_depth})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(f"malformed JSON: {str(err)[:200]}") from err
    raw = body.encode() if isinstance(body, str) else body
    if raw.count(b"[") + raw.count(b"{") > max_depth and _deeper_than(value, max_depth):
        raise BadRequest(f"JSON nested deeper than {section}.max_json_depth ({max_depth})")
    return value


def _deeper_than(value: Any, max_depth: int) -> bool:
    """Whether objects/arrays nest deeper than max_depth (the top level is depth 1); no recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def quote_name(text: str, limit: int = 64) -> str:
    """A bounded repr of a client-supplied name for messages and logs (a 1 MB name stays short)."""
    shown = repr(text[:limit])
    return shown + f"... ({len(text)} characters)" if len(text) > limit else shown


def _lone_surrogate(value: Any) -> bool:
    """Whether `value` (a str, or a list or object of them) holds text that UTF-8 cannot encode."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, (list, tuple, Mapping)):
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):
            return False
    else:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


@dataclass(frozen=True)
class Arg:
    """One typed argument of a command: validated when a request is bound, never with assert."""

    name: str
    type: type
    help: str
    default: Any = _REQUIRED
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.type not in TYPE_NAMES:
            raise TypeError(f"Arg {self.name!r}: type {self.type!r} is not one of {list(TYPE_NAMES)}")
        if isinstance(self.default, (list, dict)):
            raise TypeError(f"Arg {self.name!r}: mutable default {self.default!r}; use None")

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    @property
    def type_name(self) -> str:
        return TYPE_NAMES[self.type]

    def expected(self) -> str:
        """Human description of what this argument accepts."""
        text = self.type_name
        if self.choices:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        if self.min is not None and self.max is not None:
            text += f" in [{self.min:g}, {self.max:g}]"
        elif self.min is not None:
            text += f" >= {self.min:g}"
        elif self.max is not None:
            text += f" <= {self.max:g}"
        return text

    def coerce(self, value: Any, command: str) -> Any:
        """Return `value` as this argument's type, or raise BadRequest naming arg, value, expectation."""
        if value is None and not self.required:
            return self.default  # JSON null means "use the default"
        converted = self._convert(value)
        if converted is None:
            raise BadRequest(
                f"{command}: argument '{self.name}' expected {self.expected()}, got {_describe(value)}"
            )
        if _lone_surrogate(converted):  # JSON's "\ud800", OSC's 'c' 0xD800: no file name or text holds one
            raise BadRequest(f"{command}: argument '{self.name}' holds a lone surrogate code point (U+D800-U+DFFF), "
                             "which is not a character: send the text as UTF-8")
        if isinstance(converted, (int, float)) and not isinstance(converted, bool):
            if (self.min is not None and converted < self.min) or (
                self.max is not None and converted > self.max
            ):
                raise BadRequest(
                    f"{command}: argument '{self.name}' expected {self.expected()}, got {_describe(value)}"
                )
        if self.choices is not None and converted not in self.choices:
            raise BadRequest(
                f"{command}: argument '{self.name}' expected {self.expected()}, got {_describe(value)}"
            )
        return converted

    def coerce_text(self, text: str, command: str) -> Any:
        """Convert a command-line word to this argument's type (the CLI's `flowstate send`)."""
        value: Any = text
        try:
            if self.type is int:
                value = int(text)
            elif self.type is float:
                value = float(text)
        except ValueError:
            value = text  # coerce() below reports the mismatch with the usual message
        return self.coerce(value, command)

    def _convert(self, value: Any) -> Any:
        """The lenient-but-honest conversions every wire needs, or None when there is none."""
        kind = self.type
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, (int, float)) and value in (0, 1):  # Max toggles send 0/1
                return bool(value)
            if isinstance(value, str) and value.lower() in _TRUE_WORDS | _FALSE_WORDS:
                return value.lower() in _TRUE_WORDS
            return None
        if kind is int:
            if isinstance(value, bool):
                return None
            if isinstance(value, int):
                return value
            if isinstance(value, float) and math.isfinite(value) and value.is_integer():
                return int(value)  # Max and many OSC senders only have floats
            return None
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return None
            result = float(value)
            return result if math.isfinite(result) else None
        if kind is str:
            return value if isinstance(value, str) else None
        if kind is dict:
            if isinstance(value, Mapping):
                return dict(value)
            if isinstance(value, str):  # OSC carries objects as JSON text
                try:
                    parsed = json.loads(value)
                except (ValueError, RecursionError):  # malformed, an int over 4300 digits, nested too deep
                    return None
                return parsed if isinstance(parsed, dict) else None
            return None
        if kind is object:
            if isinstance(value, float) and not math.isfinite(value):
                return None
            return value if isinstance(value, (bool, int, float, str)) else None
        if kind is list:
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return list(value)
            if isinstance(value, str):  # OSC and the CLI: "vocals,drums" or a JSON array
                text = value.strip()
                if text.startswith("["):
                    try:
                        parsed = json.loads(text)
                    except (ValueError, RecursionError):  # malformed, an int over 4300 digits, nested too deep
                        return None
                    ok = isinstance(parsed, list) and all(isinstance(v, str) for v in parsed)
                    return parsed if ok else None
                return [part.strip() for part in text.split(",") if part.strip()]
            return None
        return None

    def limits(self) -> dict[str, Any]:
        """The bounds this argument declares, by name: min, max, choices (those that are set)."""
        bounds = {"min": self.min, "max": self.max, "choices": None if self.choices is None else list(self.choices)}
        return {name: value for name, value in bounds.items() if value is not None}

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type_name, "help": self.help}
        if not self.required:
            out["default"] = self.default
        return out | self.limits()


Result = dict[str, Any]
Handler = Callable[..., "Result | Awaitable[Result]"]


@dataclass(frozen=True)
class CommandSpec:
    """A command, declared once: every wire, the CLI and the docs are derived from this."""

    name: str
    help: str
    handler: Handler
    args: tuple[Arg, ...] = ()
    # Result fields, in order, that an OSC reply carries as positional arguments. Empty means the
    # whole result travels as one JSON string argument.
    returns: tuple[str, ...] = ()
    is_async: bool = False
    # How a producer might say it in words ("mute the vocals"): `ask` ranks commands by these and the help.
    examples: tuple[str, ...] = ()
    # A query: nothing in the daemon or on disk changes (MCP's read-only hint; `ask` runs only these for
    # a question).
    read_only: bool = False

    @property
    def osc_address(self) -> str:
        return f"{OSC_PREFIX}/{name_to_path(self.name)}"

    @property
    def reply_address(self) -> str:
        return f"{REPLY_PREFIX}/{name_to_path(self.name)}"

    def bind(self, values: Sequence[Any] | Mapping[str, Any]) -> dict[str, Any]:
        """Validate positional (OSC, CLI) or named (ZeroMQ) values into handler keyword args."""
        if isinstance(values, Mapping):
            return self._bind_named(values)
        return self._bind_positional(values)

    def _bind_positional(self, values: Sequence[Any]) -> dict[str, Any]:
        if len(values) > len(self.args):
            if not self.args:
                raise BadRequest(f"{self.name} takes no arguments, got {len(values)}")
            raise BadRequest(
                f"{self.name}: expected at most {len(self.args)} argument(s) "
                f"({self.signature()}), got {len(values)}"
            )
        return self._bind_named({arg.name: value for arg, value in zip(self.args, values, strict=False)})

    def _bind_named(self, values: Mapping[str, Any]) -> dict[str, Any]:
        known = {arg.name for arg in self.args}
        unknown = sorted(str(key) for key in values if key not in known)
        if unknown:
            allowed = ", ".join(sorted(known)) or "none"
            shown = [key if len(key) <= 64 else key[:64] + "..." for key in unknown[:8]]
            more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
            raise BadRequest(f"{self.name}: unknown argument(s) {shown}{more}; allowed: {allowed}")
        bound: dict[str, Any] = {}
        for arg in self.args:
            if arg.name in values:
                bound[arg.name] = arg.coerce(values[arg.name], self.name)
            elif arg.required:
                raise BadRequest(
                    f"{self.name}: missing argument '{arg.name}' ({arg.expected()}); "
                    f"usage: {self.signature()}"
                )
            else:
                bound[arg.name] = arg.default
        return bound

    def signature(self) -> str:
        parts = [self.name]
        for arg in self.args:
            parts.append(f"<{arg.name}:{arg.type_name}>" if arg.required else f"[{arg.name}]")
        return " ".join(parts)

    def osc_reply_args(self, result: Result) -> list[Any]:
        """Positional OSC arguments for a result: declared fields, else one JSON string."""
        if not self.returns:
            return [json.dumps(result, separators=(",", ":"), default=str)]
        return [osc_value(result.get(name)) for name in self.returns]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "osc": self.osc_address,
            "help": self.help,
            "args": [arg.describe() for arg in self.args],
            "returns": list(self.returns) or ["result (JSON)"],
            "examples": list(self.examples),
        }


@dataclass(frozen=True)
class EventSpec:
    """An event the daemon publishes: name, positional fields (for OSC) and help."""

    name: str
    fields: tuple[str, ...]
    help: str

    @property
    def osc_address(self) -> str:
        return f"{EVENT_PREFIX}/{name_to_path(self.name)}"


def osc_value(value: Any) -> Any:
    """A value OSC can carry: numbers, strings, bools, blobs, nil; anything else as JSON text."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Event:
    """One published event, e.g. `job.progress {id, fraction}`."""

    name: str
    data: dict[str, Any]
    spec: EventSpec

    def osc_args(self) -> list[Any]:
        return [osc_value(self.data.get(name)) for name in self.spec.fields]

    def to_json(self) -> dict[str, Any]:
        return {"event": self.name, "data": self.data}


class Origin(Protocol):
    """Where a request came from; able to receive that requester's events."""

    # Read-only: a frozen dataclass (MidiOrigin) is an origin too.
    @property
    def transport(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def key(self) -> tuple[Any, ...]:
        """Identity used to avoid sending one event twice to the same place."""
        ...

    def send_event(self, event: Event) -> None:
        """Deliver an event to the requester, best effort (never raises)."""
        ...


@dataclass
class Request:
    """A command request as a transport decoded it, before validation."""

    name: str
    args: Sequence[Any] | Mapping[str, Any]
    origin: Origin
    id: Any = None


@dataclass
class Reply:
    """The outcome of one request: a result or a structured error."""

    name: str
    result: Result | None = None
    error: BridgeError | None = None
    spec: CommandSpec | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class CallContext:
    """What a handler may use: the daemon's services (bridge/services.py) and the origin of the request."""

    services: Services
    origin: Origin
