"""Effect chains: built-in pedalboard effects and the real Dragonfly Room Reverb VST3, streamed in
awkward block sizes, changed from another thread while audio runs, and every bad input refused
with the words a user needs."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bridge.errors import BadRequest, BridgeError, Forbidden, NotFound
from engines.effects import BUILTIN_EFFECTS, EffectChain
from tests.conftest import spelled_as_macos_does

ROOT = Path(__file__).resolve().parents[2]
DRAGONFLY = ROOT / ".cache/plugins/usr/lib/vst3/DragonflyRoomReverb.vst3"
SAMPLE_RATE = 48000
BLOCK_SIZES = [1, 64, 65, 8192, 8193]

# Deterministic effects with state: a delay line with feedback, an LFO, a filter, an envelope.
STATEFUL_SPEC: list[dict[str, Any]] = [
    {"name": "echo", "plugin": "Delay", "params": {"delay_seconds": 0.01, "feedback": 0.4, "mix": 0.5}},
    {"name": "wobble", "plugin": "Chorus", "params": {"rate_hz": 2.0, "depth": 0.4}},
    {"name": "tone", "plugin": "LowpassFilter", "params": {"cutoff_frequency_hz": 3000.0}},
    {"name": "glue", "plugin": "Compressor", "params": {"threshold_db": -20.0, "ratio": 4.0}},
]


def sine(freq_hz: float, seconds: float, amplitude: float = 0.5, channels: int = 2) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return np.tile(amplitude * np.sin(2 * np.pi * freq_hz * t), (channels, 1)).astype(np.float32)


def noise(seconds: float, channels: int = 2) -> np.ndarray:
    rng = np.random.default_rng(1234)
    return (0.2 * rng.standard_normal((channels, int(seconds * SAMPLE_RATE)))).astype(np.float32)


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


def in_blocks(chain: EffectChain, audio: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Stream `audio` through `chain` in blocks whose sizes cycle through `sizes`."""
    out, start, i = [], 0, 0
    while start < audio.shape[1]:
        block = audio[:, start : start + sizes[i % len(sizes)]]
        processed = chain.process(block)
        assert processed.shape == block.shape
        out.append(processed)
        start += block.shape[1]
        i += 1
    return np.concatenate(out, axis=1)


def parameter(chain: EffectChain, effect: str, name: str) -> dict[str, Any]:
    for entry in chain.describe():
        if entry["name"] == effect:
            return next(p for p in entry["parameters"] if p["name"] == name)
    raise AssertionError(f"no effect {effect!r} in {chain.names}")


# -- built-in effects ------------------------------------------------------------------------------


def test_gain_of_minus_6_db_halves_the_amplitude() -> None:
    chain = EffectChain.from_spec([{"name": "trim", "plugin": "Gain", "params": {"gain_db": -6.0}}], SAMPLE_RATE)
    audio = sine(440.0, 0.25)
    out = chain.process(audio)
    assert out.shape == audio.shape and out.dtype == np.float32
    assert rms(out) / rms(audio) == pytest.approx(10 ** (-6 / 20), rel=1e-4)  # 0.501


def test_lowpass_attenuates_a_high_sine_and_passes_a_low_one() -> None:
    spec = [{"name": "tone", "plugin": "LowpassFilter", "params": {"cutoff_frequency_hz": 500.0}}]
    high = EffectChain.from_spec(spec, SAMPLE_RATE).process(sine(10_000.0, 0.5))
    low = EffectChain.from_spec(spec, SAMPLE_RATE).process(sine(100.0, 0.5))
    settled = slice(SAMPLE_RATE // 10, None)  # skip the filter's first 100 ms
    assert 20 * np.log10(rms(high[:, settled]) / rms(sine(10_000.0, 0.5))) < -20.0
    assert 20 * np.log10(rms(low[:, settled]) / rms(sine(100.0, 0.5))) > -1.0


def test_an_empty_spec_is_a_pass_through() -> None:
    chain = EffectChain.from_spec([], SAMPLE_RATE)
    audio = noise(0.01)
    assert chain.process(audio) is audio
    assert chain.describe() == [] and chain.names == ()


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_blocks_of_any_size_sound_like_one_big_block(block_size: int) -> None:
    audio = noise(0.4)  # 19200 samples: several 8192/8193 blocks and a ragged last one
    whole = EffectChain.from_spec(STATEFUL_SPEC, SAMPLE_RATE).process(audio)
    streamed = in_blocks(EffectChain.from_spec(STATEFUL_SPEC, SAMPLE_RATE), audio, [block_size])
    np.testing.assert_allclose(streamed, whole, atol=1e-6)


def test_blocks_that_grow_and_shrink_mid_stream_stay_continuous() -> None:
    # pedalboard prepares effects again (clearing delay lines) when a block is larger than any
    # before it; the chain prepares once for the largest, so a growing block size cannot click.
    audio = noise(0.4)
    whole = EffectChain.from_spec(STATEFUL_SPEC, SAMPLE_RATE).process(audio)
    streamed = in_blocks(EffectChain.from_spec(STATEFUL_SPEC, SAMPLE_RATE), audio, [1, 2, 3, 500, 9000, 7])
    np.testing.assert_allclose(streamed, whole, atol=1e-6)


def test_mono_blocks_work_too() -> None:
    audio = noise(0.1, channels=1)
    whole = EffectChain.from_spec(STATEFUL_SPEC, SAMPLE_RATE).process(audio)
    streamed = in_blocks(EffectChain.from_spec(STATEFUL_SPEC, SAMPLE_RATE), audio, [1, 64])
    np.testing.assert_allclose(streamed, whole, atol=1e-6)


def test_a_parameter_change_applies_from_the_next_block_and_shows_in_describe() -> None:
    chain = EffectChain.from_spec([{"name": "trim", "plugin": "Gain", "params": {"gain_db": 0.0}}], SAMPLE_RATE)
    audio = np.full((2, 256), 0.5, dtype=np.float32)
    np.testing.assert_allclose(chain.process(audio), audio, rtol=1e-6)

    reply = chain.set_parameter("trim", "gain_db", -6.0)
    assert reply == {"effect": "trim", "parameter": "gain_db", "value": -6.0}
    assert parameter(chain, "trim", "gain_db")["value"] == -6.0  # at once, before any block

    out = chain.process(audio)  # the whole next block, from its first sample
    np.testing.assert_allclose(out, 0.5 * 10 ** (-6 / 20), rtol=1e-4)


def test_describe_lists_kind_values_and_ranges() -> None:
    chain = EffectChain.from_spec(
        [
            {"name": "verb", "plugin": "Reverb", "params": {"room_size": 0.8}},
            {"name": "squelch", "plugin": "LadderFilter", "params": {"mode": "bpf24"}},
        ],
        SAMPLE_RATE,
    )
    assert chain.names == ("verb", "squelch")
    verb, _squelch = chain.describe()
    assert (verb["name"], verb["kind"], verb["plugin"]) == ("verb", "builtin", "Reverb")
    room = parameter(chain, "verb", "room_size")
    assert (room["value"], room["min"], room["max"]) == (0.8, 0.0, 1.0)
    mode = parameter(chain, "squelch", "mode")
    assert mode["value"] == "BPF24" and "LPF12" in mode["choices"]
    assert parameter(chain, "squelch", "cutoff_hz")["max"] == SAMPLE_RATE / 2


def test_reset_clears_the_tail_before_the_next_block() -> None:
    spec = [{"name": "echo", "plugin": "Delay", "params": {"delay_seconds": 0.05, "feedback": 0.9, "mix": 1.0}}]
    chain = EffectChain.from_spec(spec, SAMPLE_RATE)
    chain.process(noise(0.2))
    silence = np.zeros((2, 4800), dtype=np.float32)
    assert rms(chain.process(silence)) > 1e-3  # echoes keep coming
    chain.reset()
    assert rms(chain.process(silence)) == 0.0


def test_set_parameter_from_another_thread_while_process_runs() -> None:
    chain = EffectChain.from_spec(
        [
            {"name": "trim", "plugin": "Gain"},
            {"name": "verb", "plugin": "Reverb"},
            {"name": "squelch", "plugin": "LadderFilter"},
        ],
        SAMPLE_RATE,
    )
    audio = noise(64 / SAMPLE_RATE)
    errors: list[BaseException] = []
    blocks = 0
    stop = threading.Event()

    def worker() -> None:  # the realtime worker: block after block, as the stream does
        nonlocal blocks
        try:
            while not stop.is_set() or blocks < 200:
                out = chain.process(audio)
                assert out.shape == audio.shape and np.isfinite(out).all()
                blocks += 1
        except BaseException as err:  # noqa: BLE001 - handed to the main thread, which fails the test with it
            errors.append(err)

    thread = threading.Thread(target=worker, name="fake-stream-worker")
    thread.start()
    try:
        for i in range(300):
            chain.set_parameter("trim", "gain_db", -float(i % 24))
            chain.set_parameter("verb", "room_size", (i % 10) / 10)
            chain.set_parameter("squelch", "mode", ["LPF12", "HPF24", "BPF12"][i % 3])
            chain.set_parameter("squelch", "cutoff_hz", 200.0 + 10 * i)
            if i % 50 == 0:
                chain.reset()
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert blocks >= 200
    # The last values asked for are the ones in effect.
    assert parameter(chain, "trim", "gain_db")["value"] == -float(299 % 24)
    assert parameter(chain, "squelch", "cutoff_hz")["value"] == 200.0 + 10 * 299
    chain.process(audio)
    assert chain._effects[0].plugin.gain_db == pytest.approx(-float(299 % 24))
    assert chain._effects[2].plugin.mode.name == "BPF12"


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "error", "words"),
    [
        ([{"plugin": "Reverbb"}], BadRequest, ["effects[0].plugin", "'Reverbb'", "did you mean 'Reverb'", "Gain"]),
        ([{"plugin": "os.system"}], BadRequest, ["unknown built-in effect", "'os.system'"]),
        ([{"plugin": "Convolution"}], BadRequest, ["unknown built-in effect", "'Convolution'"]),
        ([{"plugin": "PitchShift"}], BadRequest, ["unknown built-in effect", "'PitchShift'"]),
        ([{"vst3": "/no/such/Plugin.vst3"}], NotFound, ["effects[0].vst3", "/no/such/Plugin.vst3", "does not exist"]),
        ([{"vst3": "/etc/hostname"}], BadRequest, ["effects[0].vst3", "ending in .vst3", "/etc/hostname"]),
        ([{"plugin": "Gain", "vst3": "x.vst3"}], BadRequest, ["exactly one of 'plugin'", "'vst3'"]),
        ([{"name": "a b", "plugin": "Gain"}], BadRequest, ["effects[0].name", "'a b'", "letters, digits"]),
        ([{"plugin": "Gain"}, {"plugin": "gain"}], BadRequest, ["effects[1].name", "'gain'", "unique"]),
        ([{"plugin": "Gain", "parms": {}}], BadRequest, ["effects[0]", "parms", "params"]),
        ([{"plugin": "Gain", "params": [1]}], BadRequest, ["effects[0].params", "mapping"]),
        (
            [{"name": "verb", "plugin": "Reverb", "params": {"room_size": 1.5}}],
            BadRequest,
            ["effect 'verb'", "'room_size'", "from 0.0 to 1.0", "1.5"],
        ),
        (
            [{"name": "verb", "plugin": "Reverb", "params": {"roomsize": 0.5}}],
            BadRequest,
            ["effect 'verb'", "unknown parameter 'roomsize'", "did you mean 'room_size'"],
        ),
        (
            [{"name": "cut", "plugin": "HighpassFilter", "params": {"cutoff_frequency_hz": 30000}}],
            BadRequest,
            ["effect 'cut'", "'cutoff_frequency_hz'", "from 1.0 to 24000.0 Hz", "30000"],
        ),
        (
            [{"name": "f", "plugin": "LadderFilter", "params": {"mode": "notch"}}],
            BadRequest,
            ["effect 'f'", "'mode'", "one of LPF12, HPF12", "'notch'"],
        ),
        ("Reverb", BadRequest, ["effects", "list of effects", "'Reverb'"]),
        ([["Reverb"]], BadRequest, ["effects[0]", "mapping"]),
    ],
)
def test_a_bad_spec_says_what_is_wrong(spec: Any, error: type[BridgeError], words: list[str]) -> None:
    with pytest.raises(error) as caught:
        EffectChain.from_spec(spec, SAMPLE_RATE)
    for word in words:
        assert word in caught.value.message, f"{word!r} not in {caught.value.message!r}"


def test_a_vst3_outside_the_allowed_folders_is_forbidden(tmp_path: Path) -> None:
    with pytest.raises(Forbidden, match="outside the allowed VST3 folders"):
        EffectChain.from_spec([{"vst3": "/opt/evil/Evil.vst3"}], SAMPLE_RATE, allowed_vst3_dirs=[tmp_path])


def test_on_macos_a_vst3_folder_spelled_in_another_case_is_the_allowed_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dragonfly: Path) -> None:
    # Installers spell the folder `Plug-Ins` or `Plug-ins`; on a Mac's volume both are one folder.
    allowed = tmp_path / "Plug-Ins" / "VST3"
    allowed.mkdir(parents=True)
    shutil.copytree(dragonfly, allowed / dragonfly.name, symlinks=True)
    [spelled] = spelled_as_macos_does(monkeypatch, tmp_path / "Plug-Ins", "Plug-ins")
    chain = EffectChain.from_spec([{"name": "room", "vst3": str(spelled / "VST3" / dragonfly.name)}], SAMPLE_RATE,
                                  allowed_vst3_dirs=[allowed])
    assert chain.describe()[0]["name"] == "room"
    (tmp_path / "PLUG-INS" / "VST3").mkdir(parents=True)
    with pytest.raises(Forbidden, match="outside the allowed VST3 folders"):  # another folder on this volume
        EffectChain.from_spec([{"vst3": str(tmp_path / "PLUG-INS" / "VST3" / dragonfly.name)}], SAMPLE_RATE,
                              allowed_vst3_dirs=[allowed])


@pytest.mark.parametrize(
    ("effect", "name", "value", "error", "words"),
    [
        ("nope", "gain_db", 1.0, NotFound, ["unknown effect 'nope'", "trim, verb"]),
        ("trim", "gain", 1.0, BadRequest, ["effect 'trim'", "unknown parameter 'gain'", "did you mean 'gain_db'"]),
        ("trim", "gain_db", 200.0, BadRequest, ["effect 'trim'", "'gain_db'", "from -120.0 to 60.0 dB", "200.0"]),
        ("trim", "gain_db", "loud", BadRequest, ["'gain_db'", "'loud'"]),
        ("trim", "gain_db", float("nan"), BadRequest, ["'gain_db'", "nan"]),
        ("trim", "gain_db", True, BadRequest, ["'gain_db'", "True"]),
        ("verb", "damping", None, BadRequest, ["effect 'verb'", "'damping'", "from 0.0 to 1.0", "None"]),
    ],
)
def test_a_bad_parameter_change_says_what_is_wrong(
    effect: str, name: str, value: Any, error: type[BridgeError], words: list[str]
) -> None:
    chain = EffectChain.from_spec([{"name": "trim", "plugin": "Gain"}, {"name": "verb", "plugin": "Reverb"}],
                                  SAMPLE_RATE)
    before = chain.describe()
    with pytest.raises(error) as caught:
        chain.set_parameter(effect, name, value)
    for word in words:
        assert word in caught.value.message, f"{word!r} not in {caught.value.message!r}"
    assert chain.describe() == before  # nothing was queued


@pytest.mark.parametrize(
    "audio",
    [np.zeros((2, 64), dtype=np.float64), np.zeros(64, dtype=np.float32), [[0.0, 0.0]]],
    ids=["float64", "one-dimensional", "list"],
)
def test_process_refuses_audio_of_the_wrong_shape_or_type(audio: Any) -> None:
    chain = EffectChain.from_spec([{"plugin": "Gain"}], SAMPLE_RATE)
    with pytest.raises(BadRequest, match=r"float32 array shaped \(num_channels, num_samples\)"):
        chain.process(audio)


# -- a real third-party VST3 -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dragonfly() -> Path:
    if not DRAGONFLY.is_dir():
        pytest.fail(
            f"the Dragonfly Room Reverb VST3 is missing ({DRAGONFLY}); "
            "run `bash scripts/fetch-test-plugins.sh` (make test does this first)"
        )
    return DRAGONFLY


def click_response(chain: EffectChain, seconds: float = 2.0) -> np.ndarray:
    """A full-scale click at t=0 followed by silence, streamed in 512-sample blocks."""
    audio = np.zeros((2, int(seconds * SAMPLE_RATE)), dtype=np.float32)
    audio[:, 0] = 1.0
    return in_blocks(chain, audio, [512])


def energy(audio: np.ndarray, start_s: float, end_s: float) -> float:
    return float(np.sum(np.square(audio[:, int(start_s * SAMPLE_RATE) : int(end_s * SAMPLE_RATE)], dtype=np.float64)))


def test_dragonfly_loads_headless_and_describes_its_parameters(dragonfly: Path) -> None:
    chain = EffectChain.from_spec([{"name": "room", "vst3": str(dragonfly)}], SAMPLE_RATE)
    (room,) = chain.describe()
    assert (room["kind"], room["plugin"], room["path"]) == ("vst3", "Dragonfly Room Reverb", str(dragonfly))
    decay = parameter(chain, "room", "decay_s")
    assert (decay["min"], decay["max"], decay["units"]) == (0.1, 10.0, "s")
    names = {p["name"] for p in room["parameters"]}
    assert {"dry_level", "late_level", "size_m", "predelay_ms", "high_cut_hz"} <= names
    assert "sample_rate_frames" not in names  # host-reported, not automatable


def test_dragonfly_turns_a_click_into_a_reverb_tail(dragonfly: Path) -> None:
    chain = EffectChain.from_spec([{"name": "room", "vst3": str(dragonfly), "params": {"decay_s": 2.0}}], SAMPLE_RATE)
    out = click_response(chain)
    assert np.isfinite(out).all()
    assert energy(out, 0.05, 2.0) > 1e-3  # the click is one sample; all this is room
    assert energy(out, 0.5, 1.0) > 0.0


def test_dragonfly_decay_set_while_streaming_lengthens_the_tail(dragonfly: Path) -> None:
    chain = EffectChain.from_spec([{"name": "room", "vst3": str(dragonfly), "params": {"dry_level": 0}}], SAMPLE_RATE)
    short = energy(click_response(chain), 0.5, 2.0)  # default decay 0.4 s: all but gone by 0.5 s

    assert chain.set_parameter("room", "decay_s", 6.0)["value"] == 6.0
    assert parameter(chain, "room", "decay_s")["value"] == 6.0
    chain.reset()
    long = energy(click_response(chain), 0.5, 2.0)
    assert long > 100 * short


def test_dragonfly_refuses_out_of_range_values_with_the_plugin_range(dragonfly: Path) -> None:
    chain = EffectChain.from_spec([{"name": "room", "vst3": str(dragonfly)}], SAMPLE_RATE)
    with pytest.raises(BadRequest) as caught:
        chain.set_parameter("room", "decay_s", 20.0)
    message = caught.value.message
    for word in ["effect 'room'", "Dragonfly Room Reverb", "'decay_s'", "from 0.1 to 10.0 s", "20.0"]:
        assert word in message, message
    with pytest.raises(BadRequest, match="read-only"):
        chain.set_parameter("room", "sample_rate_frames", 44100)
    with pytest.raises(BadRequest, match=r"did you mean 'decay_s'"):
        chain.set_parameter("room", "decay", 2.0)


def test_dragonfly_refuses_mono_audio_with_a_clear_error(dragonfly: Path) -> None:
    with pytest.raises(BadRequest, match=r"cannot process 1-channel audio.*Dragonfly Room Reverb"):
        EffectChain.from_spec([{"name": "room", "vst3": str(dragonfly)}], SAMPLE_RATE, num_channels=1)
    chain = EffectChain.from_spec([{"name": "room", "vst3": str(dragonfly)}], SAMPLE_RATE)
    with pytest.raises(BadRequest, match=r"room.*cannot process 1-channel audio"):
        chain.process(np.zeros((1, 64), dtype=np.float32))
    assert chain.process(np.zeros((2, 64), dtype=np.float32)).shape == (2, 64)  # still works in stereo


def test_dragonfly_parameters_change_safely_while_another_thread_streams(dragonfly: Path) -> None:
    chain = EffectChain.from_spec([{"name": "room", "vst3": str(dragonfly)}], SAMPLE_RATE)
    audio = noise(256 / SAMPLE_RATE)
    errors: list[BaseException] = []
    stop = threading.Event()

    def worker() -> None:
        try:
            while not stop.is_set():
                assert np.isfinite(chain.process(audio)).all()
        except BaseException as err:  # noqa: BLE001 - handed to the test's thread, which fails the test with it
            errors.append(err)

    thread = threading.Thread(target=worker, name="fake-stream-worker")
    thread.start()
    try:
        for i in range(100):
            chain.set_parameter("room", "decay_s", 0.5 + (i % 20) / 4)
            chain.set_parameter("room", "dry_level", float(i % 100))
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    chain.process(audio)
    assert chain._effects[0].plugin.decay_s == pytest.approx(0.5 + 99 % 20 / 4, abs=0.01)


@pytest.mark.parametrize("plugin", sorted(BUILTIN_EFFECTS))
def test_every_built_in_accepts_the_ends_of_its_ranges(plugin: str) -> None:
    # A value that passes validation is applied on the audio thread, where pedalboard must not
    # refuse it: every range in the table lies inside what pedalboard accepts.
    chain = EffectChain.from_spec([{"name": "fx", "plugin": plugin}], SAMPLE_RATE)
    audio = noise(0.01)
    for entry in chain.describe()[0]["parameters"]:
        if entry["type"] == "float":
            ends = [entry["min"], entry["max"] if entry["max"] is not None else 10 * max(entry["min"], 1.0)]
        else:
            ends = entry.get("choices") or [True, False]
        for value in ends:
            chain.set_parameter("fx", entry["name"], value)
            out = chain.process(audio)
            assert out.shape == audio.shape
            assert parameter(chain, "fx", entry["name"])["value"] == value


@pytest.mark.parametrize("plugin", sorted(BUILTIN_EFFECTS))
def test_every_built_in_streams_sound_in_small_blocks(plugin: str) -> None:
    chain = EffectChain.from_spec([{"name": "fx", "plugin": plugin}], SAMPLE_RATE)
    out = in_blocks(chain, sine(440.0, 0.5), [256])
    assert rms(out[:, SAMPLE_RATE // 4 :]) > 0.01  # not silence once any latency has passed
