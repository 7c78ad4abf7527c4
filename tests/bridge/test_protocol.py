"""Typed arguments: what each wire's values turn into, and the errors a user sees."""

from __future__ import annotations

import math

import pytest

from bridge.commands import COMMANDS, lookup, lookup_address
from bridge.errors import BadRequest, UnknownCommand
from bridge.protocol import Arg, CommandSpec

GAIN = Arg("gain_db", float, "stem gain", default=0.0, min=-60, max=12)
COUNT = Arg("count", int, "how many", min=1, max=8)
MUTE = Arg("mute", bool, "mute the stem", default=False)
STEMS = Arg("stems", list, "which stems", default=None)
MODE = Arg("mode", str, "mix mode", default="mix", choices=("mix", "split"))
OPTIONS = Arg("options", dict, "overrides", default=None)


@pytest.mark.parametrize(
    ("arg", "value", "expected"),
    [
        (GAIN, 3, 3.0),
        (GAIN, -6.5, -6.5),
        (COUNT, 4.0, 4),  # Max sends floats for number boxes
        (MUTE, 1, True),
        (MUTE, 0, False),
        (MUTE, "on", True),
        (MUTE, True, True),
        (STEMS, "vocals, drums", ["vocals", "drums"]),
        (STEMS, '["bass"]', ["bass"]),
        (STEMS, ["other"], ["other"]),
        (MODE, "split", "split"),
        (OPTIONS, '{"hop_seconds": 0.25}', {"hop_seconds": 0.25}),
        (OPTIONS, {"a": 1}, {"a": 1}),
        (GAIN, None, 0.0),  # JSON null: the default
    ],
)
def test_values_each_wire_sends_are_converted(arg: Arg, value: object, expected: object) -> None:
    assert arg.coerce(value, "test") == expected


@pytest.mark.parametrize(
    ("arg", "value", "words"),
    [
        (GAIN, "loud", "argument 'gain_db' expected float in [-60, 12], got 'loud' (str)"),
        (GAIN, 13, "in [-60, 12], got 13 (int)"),
        (GAIN, math.inf, "got inf"),
        (GAIN, True, "got True (bool)"),
        (COUNT, 2.5, "expected int in [1, 8], got 2.5"),
        (COUNT, 0, "got 0"),
        (COUNT, None, "got None"),
        (MUTE, 2, "expected bool"),
        (MUTE, "maybe", "expected bool"),
        (STEMS, [1, 2], "expected list of strings"),
        (MODE, "both", "expected one of 'mix', 'split'"),
        (OPTIONS, "[1]", "expected JSON object"),
        (OPTIONS, "{bad", "expected JSON object"),
    ],
)
def test_bad_values_name_argument_value_and_expectation(arg: Arg, value: object, words: str) -> None:
    with pytest.raises(BadRequest) as caught:
        arg.coerce(value, "test")
    assert words in caught.value.message


def test_text_from_the_command_line_is_converted() -> None:
    assert GAIN.coerce_text("-3", "t") == -3.0
    assert COUNT.coerce_text("5", "t") == 5
    with pytest.raises(BadRequest, match="got 'five'"):
        COUNT.coerce_text("five", "t")


def test_positional_binding_fills_defaults_and_counts() -> None:
    spec = CommandSpec("stem.set", "test", handler=lambda ctx: {}, args=(COUNT, GAIN, MUTE))
    assert spec.bind([2]) == {"count": 2, "gain_db": 0.0, "mute": False}
    assert spec.bind([2, -3, 1]) == {"count": 2, "gain_db": -3.0, "mute": True}
    with pytest.raises(BadRequest, match="missing argument 'count'"):
        spec.bind([])
    with pytest.raises(BadRequest, match="at most 3"):
        spec.bind([1, 2, 3, 4])
    assert spec.signature() == "stem.set <count:int> [gain_db] [mute]"


def test_mutable_defaults_are_refused_at_declaration() -> None:
    with pytest.raises(TypeError, match="mutable default"):
        Arg("stems", list, "x", default=["vocals"])


def test_addresses_and_names_map_both_ways() -> None:
    for spec in COMMANDS.values():
        assert lookup_address(spec.osc_address) is spec
        assert spec.reply_address == spec.osc_address.replace("/flow/", "/flow/reply/", 1)
    with pytest.raises(UnknownCommand, match="did you mean ping"):
        lookup("pign")
    with pytest.raises(UnknownCommand, match="under /flow/"):
        lookup_address("/live/ping")
