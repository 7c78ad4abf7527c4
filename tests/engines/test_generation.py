"""MusicGen engine: a tiny random MusicGen saved with `save_pretrained` and loaded through the real
path (`AutoConfig` -> `MusicgenForConditionalGeneration` + `AutoProcessor`), plus the audio helpers
that turn its output into a DAW-ready file (resampling, exact length, BS.1770 loudness).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from bridge.errors import BadRequest, NotFound
from bridge.testing import build_tiny_musicgen
from engines.generation import (
    GenerationRequest,
    MusicGenEngine,
    fit_length,
    integrated_loudness,
    local_model_type,
    melody_chroma,
    model_sources,
    normalise_loudness,
)
from engines.resample import resample

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_musicgen(tmp_path_factory.mktemp("musicgen") / "tiny")


@pytest.fixture(scope="module")
def engine(tiny: Path) -> MusicGenEngine:
    engine = MusicGenEngine(str(tiny), device="cpu")
    engine.load()
    return engine


def sine(frequency: float, seconds: float, sample_rate: int, amplitude: float = 1.0, channels: int = 1) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return np.repeat((amplitude * np.sin(2 * np.pi * frequency * t))[None], channels, axis=0).astype(np.float32)


# -- the model ------------------------------------------------------------------------------------


def test_a_saved_checkpoint_loads_and_generates_at_least_the_length_asked(engine: MusicGenEngine) -> None:
    fractions: list[float] = []
    out = engine.process(GenerationRequest(prompt="warm lofi keys", seconds=0.5, seed=1), fractions.append)
    assert (engine.sample_rate, engine.frame_rate, engine.supports_melody) == (32000, 50.0, False)
    assert out.sample_rate == 32000 and out.audio.dtype == np.float32
    assert out.audio.shape[0] == 1 and out.audio.shape[1] >= 0.5 * 32000
    assert np.abs(out.audio).max() > 0  # not silence
    # One progress report per decoder step, ending at 1.0.
    assert out.steps == engine.steps_for(0.5) == len(fractions)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_the_same_seed_and_prompt_make_the_same_audio(engine: MusicGenEngine) -> None:
    first = engine.process(GenerationRequest(prompt="dusty drums", seconds=0.3, seed=42))
    again = engine.process(GenerationRequest(prompt="dusty drums", seconds=0.3, seed=42))
    other = engine.process(GenerationRequest(prompt="dusty drums", seconds=0.3, seed=43))
    assert np.array_equal(first.audio, again.audio)
    assert not np.array_equal(first.audio, other.audio)


def test_cancel_from_the_step_hook_stops_within_a_step_and_the_engine_stays_usable(engine: MusicGenEngine) -> None:
    class Cancelled(Exception):
        pass

    seen: list[float] = []

    def on_step(fraction: float) -> None:
        seen.append(fraction)
        if len(seen) == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        engine.process(GenerationRequest(prompt="long pad", seconds=20.0, seed=0), on_step)
    assert len(seen) == 3  # not one step more of the 1004
    assert engine.process(GenerationRequest(prompt="short", seconds=0.1, seed=0)).audio.shape[1] > 0


def test_a_melody_clip_on_a_model_without_melody_conditioning_is_a_bad_request(engine: MusicGenEngine) -> None:
    clip = sine(440.0, 1.0, 32000)
    with pytest.raises(BadRequest, match=r"melody_path needs a melody model.*'musicgen'"):
        engine.process(GenerationRequest(prompt="x", seconds=0.2, seed=0, melody=clip, melody_sample_rate=32000))


def test_longer_than_the_decoder_allows_is_a_bad_request(engine: MusicGenEngine) -> None:
    with pytest.raises(BadRequest, match=r"longer than .* can make \(40\.9 s\)"):
        engine.process(GenerationRequest(prompt="x", seconds=60.0, seed=0))


def test_a_missing_model_names_every_place_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no hub here: fail fast
    absent = tmp_path / "nowhere"
    engine = MusicGenEngine("facebook/musicgen-small", local_dir=absent, device="cpu")
    with pytest.raises(NotFound) as caught:
        engine.load()
    message = caught.value.message
    assert "hub name 'facebook/musicgen-small'" in message
    assert f"generate.local_dir '{absent}': no such folder" in message
    assert "weight package: none ships MusicGen" in message
    assert not engine.loaded

    folder_engine = MusicGenEngine(str(absent), device="cpu")
    with pytest.raises(NotFound, match=f"configured folder '{absent}': no such folder"):
        folder_engine.load()


@pytest.mark.parametrize("folder", ["C:\\Models\\musicgen-small", ".\\models\\musicgen", "D:/musicgen"])
def test_a_windows_folder_is_a_configured_folder_not_a_hub_name(folder: str) -> None:
    # A configured Windows folder that is missing was reported as a failed hub download.
    assert model_sources(folder, None)[0] == ("configured folder", folder)


def test_a_checkpoint_that_is_not_musicgen_is_refused(tmp_path: Path) -> None:
    from transformers import T5Config

    T5Config(d_model=8, num_layers=1).save_pretrained(tmp_path / "t5")
    assert local_model_type(str(tmp_path / "t5"), None) == "t5"
    with pytest.raises(BadRequest, match="is a 't5' model; expected MusicGen"):
        MusicGenEngine(str(tmp_path / "t5"), device="cpu").load()


def test_melody_model_follows_the_clip(tmp_path: Path) -> None:
    folder = build_tiny_musicgen(tmp_path / "melody", melody=True)
    assert local_model_type(str(folder), None) == "musicgen_melody"
    engine = MusicGenEngine(str(folder), device="cpu")
    engine.load()
    assert engine.supports_melody

    def make(frequency: float) -> np.ndarray:
        clip = sine(frequency, 2.0, 44100, 0.5, channels=2)
        request = GenerationRequest(prompt="same prompt", seconds=0.3, seed=5, melody=clip, melody_sample_rate=44100)
        return engine.process(request).audio

    a440 = make(440.0)
    assert np.array_equal(a440, make(440.0))
    assert not np.array_equal(a440, make(261.63))  # the same seed and prompt, another melody


@pytest.mark.parametrize(("frequency", "pitch"), [(440.0, "A"), (261.63, "C"), (392.0, "G")])
def test_melody_chroma_finds_the_pitch_class(frequency: float, pitch: str) -> None:
    chroma = melody_chroma(sine(frequency, 3.0, 48000, 0.5), 48000, n_fft=16384, hop_length=4096, num_chroma=12,
                           sampling_rate=32000, chunk_length=30)
    assert chroma.shape[0] == 1 and chroma.shape[2] == 12
    assert chroma.shape[1] == 3 * 32000 // 4096 + 1
    assert {PITCH_CLASSES[i] for i in chroma[0].argmax(-1).tolist()} == {pitch}


# -- from the model's audio to the DAW's ----------------------------------------------------------


@pytest.mark.parametrize("sample_rate", [48000, 44100, 32000])
def test_integrated_loudness_matches_the_bs1770_reference_tone(sample_rate: int) -> None:
    # A 997 Hz sine at full scale in one channel reads -3.01 LUFS; on two channels 0.0 LUFS.
    tone = sine(997.0, 5.0, sample_rate)
    assert integrated_loudness(tone, sample_rate) == pytest.approx(-3.01, abs=0.02)
    assert integrated_loudness(np.vstack([tone, tone]), sample_rate) == pytest.approx(0.0, abs=0.02)
    assert integrated_loudness(0.1 * tone, sample_rate) == pytest.approx(-23.01, abs=0.02)


def test_loudness_gating_ignores_silence_around_the_music() -> None:
    rate = 48000
    tone = sine(997.0, 10.0, rate, 0.1)  # ungated, the 8 s of silence would read 2.6 dB quieter
    padded = np.concatenate([np.zeros((1, 4 * rate), np.float32), tone, np.zeros((1, 4 * rate), np.float32)], axis=1)
    assert integrated_loudness(padded, rate) == pytest.approx(integrated_loudness(tone, rate), abs=0.2)
    assert integrated_loudness(np.zeros((2, rate), np.float32), rate) == -math.inf


def test_normalising_reaches_the_target_or_stops_at_the_peak_ceiling() -> None:
    rate = 48000
    quiet = sine(220.0, 3.0, rate, 0.01, channels=2)
    level = normalise_loudness(quiet, rate, -14.0, -1.0)
    assert integrated_loudness(level.audio, rate) == pytest.approx(-14.0, abs=0.05)
    assert level.loudness_lufs == pytest.approx(-14.0, abs=0.05) and not level.limited_by_peak

    clicks = np.zeros((1, 3 * rate), np.float32)
    clicks[0, ::rate // 2] = 0.05  # very peaky: reaching -14 LUFS would clip
    level = normalise_loudness(clicks, rate, -14.0, -1.0)
    assert level.limited_by_peak
    assert 20 * math.log10(np.abs(level.audio).max()) == pytest.approx(-1.0, abs=0.01)
    assert level.loudness_lufs < -14.0

    silence = np.zeros((1, rate), np.float32)
    assert np.array_equal(normalise_loudness(silence, rate, -14.0, -1.0).audio, silence)


@pytest.mark.parametrize("frames", [1, 479, 480, 96000, 96001])
def test_fit_length_gives_exact_frames_with_fades(frames: int) -> None:
    audio = np.ones((2, 48000), np.float32)
    out = fit_length(audio, frames, 48000, fade_in_ms=2.0, fade_out_ms=10.0)
    assert out.shape == (2, frames) and out.dtype == np.float32
    assert out[0, 0] == 0.0 and out[0, -1] == 0.0  # no click at either end
    if frames > 48000:
        assert np.all(out[:, 48000:] == 0)  # padded with silence
    if frames >= 2000:
        assert np.all(out[:, 96:min(48000, frames - 480)] == 1.0)  # untouched between the fades


def test_resampling_keeps_pitch_and_length() -> None:
    tone = sine(1000.0, 1.0, 32000, 0.5)
    out = resample(tone, 32000, 48000)
    assert out.shape == (1, 48000) and out.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(out[0, 4800:-4800] * np.hanning(38400)))
    assert np.fft.rfftfreq(38400, 1 / 48000)[spectrum.argmax()] == pytest.approx(1000.0, abs=2.0)
    assert np.abs(out[0, 4800:-4800]).max() == pytest.approx(0.5, abs=0.01)
