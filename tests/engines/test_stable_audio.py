"""Stable Audio Open engine: a tiny random StableAudioPipeline saved with `save_pretrained` and
loaded through the real path (`StableAudioPipeline.from_pretrained` on a folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bridge.errors import BadRequest, NotFound
from bridge.testing import build_tiny_stable_audio
from engines.generation import GenerationRequest
from engines.stable_audio import STABLE_AUDIO_OPEN, StableAudioEngine, is_stable_audio, max_seconds


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_stable_audio(tmp_path_factory.mktemp("sao") / "tiny")


@pytest.fixture(scope="module")
def engine(tiny: Path) -> StableAudioEngine:
    engine = StableAudioEngine(str(tiny), device="cpu", steps=4)
    engine.load()
    return engine


def test_a_saved_pipeline_loads_and_makes_stereo_of_the_length_asked(engine: StableAudioEngine) -> None:
    fractions: list[float] = []
    out = engine.process(GenerationRequest(prompt="metal door slam", seconds=1.5, seed=1), fractions.append)
    assert out.sample_rate == engine.sample_rate == 8000
    assert out.audio.dtype == np.float32 and out.audio.shape == (2, 12000)
    assert np.abs(out.audio).max() > 0
    assert out.steps == 4 and fractions == [0.25, 0.5, 0.75, 1.0]  # one report per denoising step


def test_the_same_seed_and_prompt_make_the_same_audio_and_steps_apply(engine: StableAudioEngine) -> None:
    first = engine.process(GenerationRequest(prompt="rain on a tin roof", seconds=0.5, seed=7))
    again = engine.process(GenerationRequest(prompt="rain on a tin roof", seconds=0.5, seed=7))
    other = engine.process(GenerationRequest(prompt="rain on a tin roof", seconds=0.5, seed=8))
    fewer = engine.process(GenerationRequest(prompt="rain on a tin roof", seconds=0.5, seed=7, steps=2))
    assert np.array_equal(first.audio, again.audio)
    assert not np.array_equal(first.audio, other.audio)
    assert fewer.steps == 2 and not np.array_equal(first.audio, fewer.audio)


def test_a_negative_prompt_and_guidance_change_the_audio(engine: StableAudioEngine) -> None:
    plain = engine.process(GenerationRequest(prompt="warm pad", seconds=0.5, seed=3))
    steered = engine.process(GenerationRequest(prompt="warm pad", seconds=0.5, seed=3, negative_prompt="noise"))
    assert not np.array_equal(plain.audio, steered.audio)


def test_longer_than_the_model_can_make_is_a_bad_request_naming_the_limit(engine: StableAudioEngine,
                                                                          tiny: Path) -> None:
    assert max_seconds(str(tiny)) == pytest.approx(engine.max_seconds) == pytest.approx(1024 * 32 / 8000)
    with pytest.raises(BadRequest, match=r"4\.10 s"):
        engine.process(GenerationRequest(prompt="long drone", seconds=5.0, seed=1))


def test_cancel_from_the_step_callback_stops_and_the_engine_stays_usable(engine: StableAudioEngine) -> None:
    class Cancelled(Exception):
        pass

    seen: list[float] = []

    def on_step(fraction: float) -> None:
        seen.append(fraction)
        if len(seen) == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        engine.process(GenerationRequest(prompt="snare roll", seconds=0.5, seed=1), on_step)
    assert len(seen) == 2
    assert engine.process(GenerationRequest(prompt="snare roll", seconds=0.5, seed=1)).steps == 4


def test_which_models_are_stable_audio(tiny: Path, tmp_path: Path) -> None:
    assert is_stable_audio(STABLE_AUDIO_OPEN) and is_stable_audio("stabilityai/stable-audio-open-1.0")
    assert is_stable_audio(str(tiny))
    assert not is_stable_audio("facebook/musicgen-small") and not is_stable_audio(str(tmp_path))
    assert max_seconds("stabilityai/stable-audio-open-1.0") == 47.0


def test_a_missing_folder_is_not_found_and_says_how_to_fix_it(tmp_path: Path) -> None:
    engine = StableAudioEngine(str(tmp_path / "nowhere"), device="cpu")
    with pytest.raises(NotFound, match="save_pretrained"):
        engine.load()
    with pytest.raises(BadRequest, match="model"):
        StableAudioEngine("", device="cpu")
