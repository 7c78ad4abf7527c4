"""MIDI triggers over real JACK MIDI: notes, CCs and program changes drive commands; clock sets the tempo.

A JACK server on the dummy backend carries the MIDI. The daemon opens its virtual input port and a
"hardware" input (a virtual output of this test, found by name) through python-rtmidi's JACK API;
the test sends with mido through the same API, so every message crosses a real MIDI port.
The mapping, debounce and clock logic is also tested directly, where numbers are clearer.
"""

from __future__ import annotations

import itertools
import json
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mido
import numpy as np
import pytest
import soundfile
import zmq

from bridge.client import Client
from bridge.config import ConfigError, MidiConfig, MidiMapping, load_config
from bridge.testing import SLOW_SECONDS, DaemonProcess, tiny_htdemucs_repo
from bridge.transports.midi import (
    ClockEstimator,
    Coalescer,
    Debouncer,
    api_candidates,
    compile_mapping,
    compile_mappings,
    match_port,
    scale,
)
from tests.conftest import JackServer, subscribed

# Two hits sent back to back arrive well within it, even while the first hit's job loads its model.
DEBOUNCE_MS = 500.0
DRUMS = 10  # MIDI channel as devices number it (mido: 9)


# -- the logic, directly ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "low", "high", "integer", "expected"),
    [
        (0, -60.0, 6.0, False, -60.0),
        (127, -60.0, 6.0, False, 6.0),
        (64, 60.0, 187.0, False, 124.0),
        (0, 6.0, -60.0, False, 6.0),  # an inverted fader
        (127, 6.0, -60.0, False, -60.0),
        (1, 1.0, 99.0, True, 2),
        (126, 1.0, 99.0, True, 98),
    ],
)
def test_scale_maps_0_127_linearly_onto_the_range(
    value: int, low: float, high: float, integer: bool, expected: float
) -> None:
    result = scale(value, low, high, integer)
    assert result == pytest.approx(expected)
    assert isinstance(result, int) == integer


def test_debouncer_fires_once_per_window_and_keys_are_independent() -> None:
    debouncer = Debouncer(0.15)
    assert debouncer.accept("a", 10.0)
    assert not debouncer.accept("a", 10.05)
    assert not debouncer.accept("a", 10.149)
    assert debouncer.accept("b", 10.1)  # another trigger is not held back
    assert debouncer.accept("a", 10.16)  # the window counts from the last trigger that fired
    assert not debouncer.accept("a", 10.2)


def test_coalescer_sends_at_most_one_value_per_window_and_always_the_last() -> None:
    coalescer = Coalescer(0.2)
    assert coalescer.offer("fader", 0, 1.0) == (0, None)  # idle: the first value goes at once
    now, delay = coalescer.offer("fader", 1, 1.01)
    assert now is None and delay == pytest.approx(0.19)  # held; flush when the window ends
    for step, value in enumerate(range(2, 128)):  # the rest of the sweep replaces the held value
        assert coalescer.offer("fader", value, 1.02 + step * 0.001) == (None, None)
    assert coalescer.flush("fader", 1.2) == 127
    assert coalescer.flush("fader", 1.21) is None
    now, delay = coalescer.offer("fader", 5, 1.3)  # within the window of the flushed value
    assert now is None and delay == pytest.approx(0.1)
    assert coalescer.flush("fader", 1.4) == 5
    assert coalescer.offer("fader", 9, 2.0) == (9, None)  # idle again
    assert coalescer.offer("other", 3, 2.01) == (3, None)


def test_coalescer_without_a_window_sends_everything() -> None:
    coalescer = Coalescer(0.0)
    assert [coalescer.offer("cc", v, 1.0)[0] for v in range(5)] == [0, 1, 2, 3, 4]


def _pulses(bpm: float, count: int, start: float = 100.0) -> list[float]:
    period = 60.0 / (24 * bpm)
    return [start + i * period for i in range(count)]


def _feed(estimator: ClockEstimator, times: list[float]) -> float | None:
    estimate = None
    for at in times:
        estimate = estimator.pulse(at) or estimate
    return estimate


@pytest.mark.parametrize("bpm", [20.0, 90.0, 120.0, 174.0, 300.0])
def test_clock_estimate_of_a_steady_clock(bpm: float) -> None:
    assert _feed(ClockEstimator(), _pulses(bpm, 96)) == pytest.approx(bpm, rel=1e-6)


@pytest.mark.parametrize("bpm", [90.0, 120.0, 140.0])
def test_clock_estimate_survives_arrival_on_jack_periods(bpm: float) -> None:
    # JACK hands MIDI to a client once per period (256 frames at 48 kHz): arrival times are the
    # starts of the periods after each pulse.
    period = 256 / 48000
    arrivals = [(int(t / period) + 1) * period for t in _pulses(bpm, 96)]
    assert _feed(ClockEstimator(), arrivals) == pytest.approx(bpm, abs=1.0)


def test_clock_estimate_ignores_a_stall_and_the_burst_after_it() -> None:
    times = _pulses(120.0, 96)
    for i in range(60, 64):  # four pulses held up for 60 ms, then delivered at once
        times[i] = times[63] + 0.06
    times[64] = max(times[64], times[63])
    assert _feed(ClockEstimator(), times) == pytest.approx(120.0, abs=1.0)


def test_clock_estimate_follows_a_tempo_change_within_a_window_and_restarts_after_a_pause() -> None:
    estimator = ClockEstimator(window=48)
    first = _pulses(120.0, 96)
    assert _feed(estimator, first) == pytest.approx(120.0)
    second = _pulses(90.0, 54, start=first[-1] + 60.0 / (24 * 90.0))
    assert _feed(estimator, second) == pytest.approx(90.0)
    assert estimator.pulse(second[-1] + 1.0) is None  # a pause: the window starts again
    assert estimator.bpm is None


def test_clock_needs_a_beat_before_it_estimates() -> None:
    estimator = ClockEstimator(min_pulses=24, every=6)
    estimates = [estimator.pulse(t) for t in _pulses(120.0, 24)]
    assert estimates[:-1] == [None] * 23
    assert estimates[-1] == pytest.approx(120.0)


def test_ports_match_by_exact_name_or_by_part_of_it() -> None:
    names = ["system:midi_capture_1", "nanoPAD2:nanoPAD2 MIDI 1", "Launchkey Mini:Launchkey MIDI"]
    assert match_port("nanoPAD2:nanoPAD2 MIDI 1", names) == "nanoPAD2:nanoPAD2 MIDI 1"
    assert match_port("nanopad", names) == "nanoPAD2:nanoPAD2 MIDI 1"
    assert match_port("launchkey midi", names) == "Launchkey Mini:Launchkey MIDI"
    assert match_port("Keystation", names) is None


def test_auto_tries_the_platform_apis() -> None:
    assert api_candidates("auto", "linux") == ("alsa", "jack")
    assert api_candidates("auto", "darwin") == ("macos",)
    assert api_candidates("auto", "win32") == ("windows",)
    assert api_candidates("jack", "darwin") == ("jack",)


def test_a_cc_mapping_scales_into_the_arguments_own_range_by_default() -> None:
    binding = compile_mapping(MidiMapping(cc=7, channel=1, command="daw.set", value_arg="tempo"), index=3)
    assert (binding.low, binding.high, binding.channel) == (20.0, 999.0, 0)
    assert binding.request_args(127) == {"tempo": 999.0}
    gain = MidiMapping(cc=1, command="stream.set", args={"stem": "vocals"}, value_arg="gain_db", range=(-60, 6))
    stems = compile_mapping(gain)
    assert stems.request_args(0) == {"stem": "vocals", "gain_db": -60.0}
    assert stems.request_args(127) == {"stem": "vocals", "gain_db": 6.0}
    numerator = compile_mapping(MidiMapping(cc=2, command="daw.set", value_arg="numerator", range=(1, 13)))
    assert numerator.request_args(64) == {"numerator": 7}  # an int argument gets an int


BAD_MAPPINGS = [
    # What the config checks when it loads ...
    ("{note: 1, command: daw.set, value_arg: tempo}", ["midi.mappings.1 =", "value_arg only on a cc mapping"]),
    ("{command: ping}", ["midi.mappings.1 =", "exactly one trigger (note, cc or program), got none"]),
    ("{note: 1, program: 2, command: ping}", ["got note and program"]),
    ("{note: 128, command: ping}", ["midi.mappings.1.note = 128", "less than or equal to 127"]),
    ("{note: 1, channel: 0, command: ping}", ["midi.mappings.1.channel = 0", "greater than or equal to 1"]),
    ("{note: 1, command: ping, velocity: 3}", ["midi.mappings.1.velocity: unknown key", "value_arg"]),
]
# ... and what needs the command registry, checked right after it loads (`compile_mappings`).
BAD_COMMANDS = [
    ("{note: 36, channel: 10, command: stems.separat, args: {path: a.wav}}",
     ["midi.mappings.1 =", "unknown command 'stems.separat'", "did you mean stems.separate"]),
    ("{program: 1, command: stems.separate, args: {pth: a.wav}}",
     ["midi.mappings.1 =", "unknown argument(s) ['pth']", "path"]),
    ("{note: 1, command: stems.separate}", ["midi.mappings.1 =", "missing argument 'path'"]),
    ("{cc: 7, command: stream.set, args: {stem: vocals}, value_arg: stem}",
     ["midi.mappings.1 =", "value_arg to name a numeric argument", "'stem' of stream.set is a string"]),
    ("{cc: 7, command: stream.set, args: {stem: vocals}, value_arg: gain}",
     ["midi.mappings.1 =", "got 'gain'", "gain_db"]),
    ("{cc: 7, command: stream.set, args: {stem: vocals}, value_arg: gain_db, range: [-200, 6]}",
     ["midi.mappings.1 =", "range within stream.set's 'gain_db'", "got [-200, 6]"]),
]


@pytest.mark.parametrize(("mapping", "words"), BAD_MAPPINGS + BAD_COMMANDS)
def test_a_bad_mapping_is_a_config_error_naming_its_index_and_the_problem(
    tmp_path: Path, mapping: str, words: list[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"midi:\n  mappings:\n    - {{note: 60, command: ping}}\n    - {mapping}\n")
    with pytest.raises(ConfigError) as caught:
        compile_mappings(load_config(path, env={}).midi)
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize(("mapping", "words"), BAD_MAPPINGS)
def test_a_malformed_trigger_is_a_config_error_when_the_config_loads(
    tmp_path: Path, mapping: str, words: list[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"midi:\n  mappings:\n    - {{note: 60, command: ping}}\n    - {mapping}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    for word in words:
        assert word in str(caught.value)


def test_mappings_can_come_from_the_environment() -> None:
    env = {"FLOWSTATE_MIDI_MAPPINGS": '[{"program": 3, "command": "stream.stop"}]', "FLOWSTATE_MIDI_DEBOUNCE_MS": "50"}
    config = load_config(None, env=env)
    assert config.midi.mappings == [MidiMapping(program=3, command="stream.stop")]
    assert config.midi.debounce_ms == 50.0
    assert MidiConfig().virtual_port == "Flowstate"


# -- over real JACK MIDI -------------------------------------------------------------------------


@dataclass
class Rig:
    """A daemon with MIDI on JACK, a sender wired to its virtual port, and a fake pad it listens to."""

    daemon: DaemonProcess
    backend: Any
    out: Any  # connected to the daemon's virtual port
    pad: Any  # a virtual output the daemon opened as a "hardware" input
    loop_wav: Path
    markers: Iterator[int]

    def client(self) -> Client:
        return Client(self.daemon.zmq_requests, timeout_seconds=10)

    def call(self, cmd: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        with self.client() as client:
            return client.call(cmd, args)

    def send(self, kind: str, **fields: Any) -> None:
        self.out.send(mido.Message(kind, **fields))

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = SLOW_SECONDS) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout:g} s\n{self.daemon.log()[-3000:]}")
            time.sleep(0.02)

    def sync(self) -> None:
        """Send a marker CC after what the test sent; once its effect shows, all before it was handled.

        Messages from one port arrive in order and the daemon handles them in order.
        """
        value = next(self.markers)
        self.send("control_change", control=20, value=value)
        self.wait_for(f"marker {value}", lambda: self.call("daw.status")["tempo_readings"].get("daw") == 20.0 + value)

    def jobs(self) -> list[dict[str, Any]]:
        return self.call("job.list")["jobs"]


MAPPINGS = [
    # 0: a drum pad starts a separation job
    {"note": 36, "channel": DRUMS, "command": "stems.separate", "args": {"path": "<loop>"}},
    # 1: a fader on any channel sets the tempo: 60 + value
    {"cc": 7, "channel": None, "command": "daw.set", "value_arg": "tempo", "range": [60, 187]},
    # 2: the tests' marker: tempo 20 + value
    {"cc": 20, "command": "daw.set", "value_arg": "tempo", "range": [20, 147]},
    # 3: a program change on channel 2 only
    {"program": 4, "channel": 2, "command": "daw.set", "args": {"denominator": 16}},
    # 4: the fake pad's note, any channel
    {"note": 40, "command": "daw.set", "args": {"denominator": 2}},
    # 5: a mapping whose command fails: the file is not there
    {"note": 50, "command": "stems.separate", "args": {"path": "<missing>"}},
]


def _write_loop(path: Path, seconds: float = 1.0, sample_rate: int = 44100) -> Path:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.stack([tone, tone], axis=1), sample_rate)
    return path


def _midi_status_settled(process: DaemonProcess) -> dict[str, Any]:
    """midi.status once the daemon has tried to open MIDI (it serves requests before that)."""
    deadline = time.monotonic() + SLOW_SECONDS
    with Client(process.zmq_requests, timeout_seconds=10) as client:
        while True:
            status = client.call("midi.status")
            if not str(status["reason"]).startswith("opening") or time.monotonic() > deadline:
                return status
            time.sleep(0.05)


@pytest.fixture(scope="module")
def rig(jack_server: JackServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    repo = tiny_htdemucs_repo(tmp_path_factory.mktemp("models"), depth=3)
    workdir = tmp_path_factory.mktemp("midi-daemon")
    loop_wav = _write_loop(workdir / "files" / "loop.wav")
    mappings = json.loads(
        json.dumps(MAPPINGS)
        .replace("<loop>", str(loop_wav))
        .replace("<missing>", str(workdir / "files" / "missing.wav"))
    )
    with pytest.MonkeyPatch.context() as env:
        for name, value in jack_server.env.items():  # rtmidi finds the server through these
            env.setenv(name, value)
        backend = mido.Backend("mido.backends.rtmidi/UNIX_JACK", load=True)
        pad = backend.open_output("FakePad", virtual=True, client_name="FakePad")
        process = DaemonProcess(
            overrides={
                "models": {"demucs_repo": str(repo)},
                "separate": {"model": "tiny", "engine_device": "cpu", "threads": 1},
                "midi": {"api": "jack", "inputs": ["fakepad", "NoSuchKeyboard"], "debounce_ms": DEBOUNCE_MS,
                         "mappings": mappings},
            },
            workdir=workdir,
            env=jack_server.env,
        ).start()
        out = None
        try:
            status = _midi_status_settled(process)
            assert status["available"], process.log()
            out = backend.open_output("Flowstate:Flowstate")
            markers = itertools.cycle(random.Random(0).sample(range(1, 128), 127))
            yield Rig(process, backend, out, pad, loop_wav, markers)
        finally:
            if out is not None:
                out.close()
            pad.close()
            code = process.stop()
            assert code == 0, f"daemon exited with {code}:\n{process.log()}"


def test_midi_status_shows_the_jack_ports_the_missing_input_and_the_mappings(rig: Rig) -> None:
    status = rig.call("midi.status")
    assert status["available"] is True and status["api"] == "jack"
    assert status["virtual_port"] == "Flowstate"
    assert status["inputs"] == ["FakePad:FakePad"]
    assert status["missing_inputs"] == ["NoSuchKeyboard"]
    assert any("NoSuchKeyboard" in problem for problem in status["problems"])
    assert [m["index"] for m in status["mappings"]] == list(range(len(MAPPINGS)))
    assert status["mappings"][0]["channel"] == DRUMS and status["mappings"][0]["note"] == 36
    assert status["mappings"][1]["range"] == [60.0, 187.0]
    ports = rig.call("midi.ports")
    assert ports["api"] == "jack" and "FakePad:FakePad" in ports["ports"]
    assert "midi" in rig.call("status")["endpoints"]


def test_a_cc_is_scaled_into_the_tempo_range(rig: Rig) -> None:
    rig.call("daw.set", {"tempo": 100.0})
    rig.send("control_change", channel=4, control=7, value=64)
    rig.wait_for("tempo 124", lambda: rig.call("daw.status")["tempo_readings"]["daw"] == 124.0)
    rig.send("control_change", channel=0, control=7, value=127)
    status = rig.wait_for("tempo 187", lambda: _daw_status_if(rig, lambda s: s["tempo_readings"]["daw"] == 187.0))
    assert status["tempo"] == 187.0 and status["tempo_source"] == "daw"


def test_a_fader_sweep_sends_a_few_requests_and_ends_on_its_last_value(rig: Rig) -> None:
    rig.call("daw.set", {"tempo": 100.0})
    before = rig.call("midi.status")
    for value in range(127, -1, -1):  # 128 values in a few milliseconds, down to 0 -> 60 BPM
        rig.send("control_change", control=7, value=value)
    rig.wait_for("tempo 60", lambda: rig.call("daw.status")["tempo_readings"]["daw"] == 60.0)
    after = rig.call("midi.status")
    assert after["received"] - before["received"] == 128
    assert after["dispatched"] - before["dispatched"] <= 10  # not 128 requests queued
    assert after["coalesced"] - before["coalesced"] >= 118
    assert after["errors"] == before["errors"]


def test_a_program_change_fires_only_on_its_channel(rig: Rig) -> None:
    rig.call("daw.set", {"denominator": 4})
    rig.send("program_change", channel=2, program=4)  # channel 3: not this mapping's
    rig.send("program_change", channel=1, program=5)  # channel 2, another program
    rig.sync()
    assert rig.call("daw.status")["denominator"] == 4
    rig.send("program_change", channel=1, program=4)  # channel 2
    rig.wait_for("denominator 16", lambda: rig.call("daw.status")["denominator"] == 16)


def test_a_hardware_input_found_by_name_triggers_too(rig: Rig) -> None:
    rig.call("daw.set", {"denominator": 4})
    rig.pad.send(mido.Message("note_on", channel=7, note=40, velocity=90))
    rig.wait_for("denominator 2", lambda: rig.call("daw.status")["denominator"] == 2)


def _daw_status_if(rig: Rig, condition: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    status = rig.call("daw.status")
    return status if condition(status) else None


def _send_clock(rig: Rig, bpm: float, seconds: float) -> None:
    """Clock pulses on an absolute schedule (a late pulse is sent at once, not shifting the rest)."""
    period = 60.0 / (24 * bpm)
    start = time.monotonic()
    for i in range(int(seconds / period)):
        delay = start + i * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        rig.send("clock")


def test_midi_clock_sets_the_tempo_and_transport_until_it_stops(rig: Rig) -> None:
    rig.call("daw.set", {"tempo": 100.0, "playing": False})
    rig.send("start")
    rig.wait_for("playing", lambda: rig.call("daw.status")["playing"] is True)
    for bpm in (120.0, 90.0):
        _send_clock(rig, bpm, 3.0)
        status = rig.call("daw.status")
        assert status["tempo_source"] == "midi_clock", status
        assert abs(status["tempo"] - bpm) <= 2.0, status
        clock = rig.call("midi.status")["clock"]
        assert clock["receiving"] is True and abs(clock["bpm"] - bpm) <= 2.0
    rig.send("stop")
    rig.wait_for("stopped", lambda: rig.call("daw.status")["playing"] is False)
    # No more pulses: after about 2 s the DAW's own tempo applies again.
    status = rig.wait_for("clock forgotten", lambda: _daw_status_if(rig, lambda s: s["tempo_source"] != "midi_clock"))
    assert status["tempo"] == 100.0 and "midi_clock" not in status["tempo_readings"]
    assert rig.call("midi.status")["clock"] == {"enabled": True, "receiving": False, "bpm": None}


def _new_jobs(rig: Rig, known: set[str], count: int) -> list[dict[str, Any]]:
    def enough() -> list[dict[str, Any]] | None:
        jobs = [job for job in rig.jobs() if job["id"] not in known]
        return jobs if len(jobs) >= count else None

    return rig.wait_for(f"{count} new job(s)", enough)


def test_a_pad_starts_a_separation_job_whose_events_reach_subscribers(rig: Rig) -> None:
    known = {job["id"] for job in rig.jobs()}
    context = zmq.Context()
    try:
        sub = subscribed(context, rig.daemon.zmq_events, b"job.done")
        rig.send("note_on", channel=DRUMS - 1, note=36, velocity=100)
        [job] = _new_jobs(rig, known, 1)
        assert job["kind"] == "stems.separate" and job["args"]["path"] == str(rig.loop_wav)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert sub.poll(int((deadline - time.monotonic()) * 1000) + 1), rig.daemon.log()[-3000:]
            _topic, body = sub.recv_multipart()
            data = json.loads(body)["data"]
            if data["id"] == job["id"]:
                break
        assert sorted(data["result"]["paths"]) == ["bass", "drums", "other", "vocals"]
        assert all(Path(path).is_file() for path in data["result"]["paths"].values())
    finally:
        context.destroy(linger=0)


def test_two_quick_hits_make_one_job_and_a_hit_after_the_window_another(rig: Rig) -> None:
    known = {job["id"] for job in rig.jobs()}
    before = rig.call("midi.status")["debounced"]
    rig.send("note_on", channel=DRUMS - 1, note=36, velocity=100)
    rig.send("note_off", channel=DRUMS - 1, note=36)
    rig.send("note_on", channel=DRUMS - 1, note=36, velocity=80)
    rig.sync()
    assert len([j for j in rig.jobs() if j["id"] not in known]) == 1
    assert rig.call("midi.status")["debounced"] == before + 1
    time.sleep(3 * DEBOUNCE_MS / 1000)  # the window passes
    rig.send("note_on", channel=DRUMS - 1, note=36, velocity=100)
    assert len(_new_jobs(rig, known, 2)) == 2


def test_other_channels_note_offs_and_zero_velocity_start_nothing(rig: Rig) -> None:
    time.sleep(3 * DEBOUNCE_MS / 1000)  # a hit now would not be debounced: it must be filtered
    known = {job["id"] for job in rig.jobs()}
    received = rig.call("midi.status")["received"]
    rig.send("note_on", channel=0, note=36, velocity=100)  # channel 1
    rig.send("note_on", channel=DRUMS - 1, note=36, velocity=0)  # a note-off by another name
    rig.send("note_off", channel=DRUMS - 1, note=36, velocity=64)
    rig.send("note_on", channel=DRUMS - 1, note=37, velocity=100)  # unmapped note
    rig.sync()
    assert [j for j in rig.jobs() if j["id"] not in known] == []
    assert rig.call("midi.status")["received"] == received + 1  # only the marker matched


def test_a_failing_mapping_is_logged_and_shown_by_midi_status(rig: Rig) -> None:
    errors = rig.call("midi.status")["errors"]
    rig.send("note_on", channel=0, note=50, velocity=100)
    def failed() -> dict[str, Any] | None:
        status = rig.call("midi.status")
        return status if status["errors"] > errors else None

    status = rig.wait_for("an error", failed)
    assert status["last_error"]["mapping"] == 5
    assert status["last_error"]["code"] == "not_found"
    assert "missing.wav" in status["last_error"]["message"]
    assert "MIDI mapping 5 (note 50 ch any -> stems.separate): not_found" in rig.daemon.log()


# -- without JACK, and with a broken mapping ---------------------------------------------------


def test_a_daemon_without_a_jack_server_runs_and_says_why_midi_is_unavailable() -> None:
    absent = {"JACK_DEFAULT_SERVER": f"flowstate-absent-{uuid.uuid4().hex[:8]}", "JACK_NO_START_SERVER": "1"}
    midi = {"api": "jack", "mappings": [{"note": 36, "command": "ping"}]}
    process = DaemonProcess(overrides={"midi": midi}, env=absent)
    with process:
        status = _midi_status_settled(process)
        assert status["available"] is False
        assert "JACK server not running" in status["reason"]
        assert status["mappings"][0]["command"] == "ping"
        with Client(process.zmq_requests) as client:
            assert client.call("ping")["reply"] == "pong"
            assert client.call("status")["endpoints"]["midi"].startswith("unavailable")
    assert process.process is not None and process.process.returncode == 0
    warnings = [line for line in process.log().splitlines() if "WARNING" in line and "MIDI" in line]
    assert len(warnings) == 1 and "JACK server not running" in warnings[0]


def test_a_malformed_mapping_stops_the_daemon_with_exit_code_2() -> None:
    process = DaemonProcess(overrides={"midi": {"mappings": [
        {"note": 36, "command": "ping"},
        {"cc": 7, "command": "stream.set", "args": {"stem": "vocals"}, "value_arg": "gain_dB"},
    ]}})
    with pytest.raises(RuntimeError, match="exited with 2"):
        process.start()
    log = process.log()
    assert "midi.mappings.1" in log and "got 'gain_dB'" in log and "gain_db" in log
    assert "Traceback" not in log
