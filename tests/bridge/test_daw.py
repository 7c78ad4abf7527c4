"""The DAW's musical state: what the Live/REAPER scripts report, what jobs will use."""

from __future__ import annotations

import time

import pytest
import zmq

from bridge.daw import DAW, DEFAULT, MIDI_CLOCK, DawState, bars_to_seconds
from tests.conftest import OscUdp, zmq_request


def test_a_fresh_daemon_uses_the_configured_default_tempo(req: zmq.Socket) -> None:
    reply = zmq_request(req, {"id": 1, "cmd": "daw.status"})
    assert reply["ok"], reply
    # The first test of the module: nothing has reported a tempo to this daemon yet.
    assert (reply["result"]["tempo"], reply["result"]["tempo_source"]) == (120.0, "default")


def test_daw_set_over_osc_is_what_daw_status_reports(osc_udp: OscUdp, req: zmq.Socket) -> None:
    reply = osc_udp.request("/flow/daw/set", 93.5, 7, 8, True)
    assert reply.address == "/flow/reply/daw/set"
    status = zmq_request(req, {"id": 2, "cmd": "daw.status"})["result"]
    assert status["tempo"] == 93.5 and status["tempo_source"] == "daw"
    assert (status["numerator"], status["denominator"], status["playing"]) == (7, 8, True)
    # Only what is given changes.
    zmq_request(req, {"id": 3, "cmd": "daw.set", "args": {"playing": False}})
    status = zmq_request(req, {"id": 4, "cmd": "daw.status"})["result"]
    assert (status["tempo"], status["numerator"], status["playing"]) == (93.5, 7, False)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"tempo": 5.0}, ["tempo", "[20, 999]"]),
        ({"denominator": 3}, ["denominator", "power of two"]),
        ({"numerator": 0}, ["numerator", "[1, 99]"]),
        ({"tempo": "fast"}, ["tempo", "float"]),
    ],
)
def test_bad_daw_values_are_refused_with_the_range(req: zmq.Socket, args: dict, words: list[str]) -> None:
    reply = zmq_request(req, {"id": 5, "cmd": "daw.set", "args": args})
    assert reply["ok"] is False and reply["error"]["code"] == "bad_request"
    for word in words:
        assert word in reply["error"]["message"]


def test_the_freshest_tempo_source_wins_and_a_forgotten_clock_falls_back() -> None:
    daw = DawState(default_tempo=110.0)
    assert daw.tempo() == (110.0, DEFAULT)
    daw.update(tempo=128.0)
    time.sleep(0.002)
    daw.set_tempo(96.0, MIDI_CLOCK)
    assert daw.tempo() == (96.0, MIDI_CLOCK)
    daw.forget_tempo(MIDI_CLOCK)
    assert daw.tempo() == (128.0, DAW)


def test_bars_to_seconds() -> None:
    assert bars_to_seconds(4, 120) == pytest.approx(8.0)
    assert bars_to_seconds(1, 90, 3, 4) == pytest.approx(2.0)
    assert bars_to_seconds(2, 120, 6, 8) == pytest.approx(3.0)
