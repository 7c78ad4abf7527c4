"""The audio tagger: a tiny random AST saved with save_pretrained and loaded through the real engine.

The scores of a random model mean nothing; what is asserted is the plumbing a user relies on: the
labels come from the model's id2label, best first, at most `top`, the same clip gives the same answer
whatever its channel count or sample rate, only the first `seconds` are heard, and bad input is refused
with a message naming the problem.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: no network here

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from bridge.errors import BadRequest, Unavailable
from bridge.testing import TINY_AST_LABELS, build_tiny_ast
from engines.audio_tags import AudioTagger, read_clip


@pytest.fixture(scope="module")
def tiny_ast(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_ast(tmp_path_factory.mktemp("ast") / "tiny-ast")


@pytest.fixture(scope="module")
def tagger(tiny_ast: Path) -> Iterator[AudioTagger]:
    engine = AudioTagger(str(tiny_ast), device="cpu", seconds=2.0)
    yield engine
    engine.close()


def tones(rate: int, seconds: float) -> np.ndarray:
    """Two tones and a decaying burst, all below 4 kHz, so every rate here carries the same sound."""
    t = np.arange(int(round(rate * seconds))) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)
            + 0.2 * np.sin(2 * np.pi * 1500 * t) * np.exp(-t / 0.3)).astype(np.float32)


def write(path: Path, audio: np.ndarray, rate: int) -> Path:
    soundfile.write(str(path), audio, rate, subtype="FLOAT")
    return path


def test_the_top_labels_come_best_first_from_the_models_label_names(tagger: AudioTagger, tmp_path: Path) -> None:
    clip = write(tmp_path / "clip.wav", tones(16000, 1.5), 16000)
    result = tagger.tag(clip, top=3)
    assert tagger.sample_rate == 16000 and tagger.labels == list(TINY_AST_LABELS)
    assert len(result["labels"]) == len(result["scores"]) == 3
    assert set(result["labels"]) <= set(TINY_AST_LABELS) and len(set(result["labels"])) == 3
    assert result["scores"] == sorted(result["scores"], reverse=True)
    assert all(0.0 < score < 1.0 for score in result["scores"])
    assert (result["label"], result["score"]) == (result["labels"][0], result["scores"][0])
    assert (result["seconds"], result["duration_seconds"], result["model"]) == (1.5, 1.5, str(tagger.model_name))
    assert tagger.tag(clip, top=3) == result  # warm, and the same clip gives the same answer


def test_top_is_bounded_by_the_labels_the_model_has(tagger: AudioTagger, tmp_path: Path) -> None:
    clip = write(tmp_path / "clip.wav", tones(16000, 0.5), 16000)
    everything = tagger.tag(clip, top=50)
    assert sorted(everything["labels"]) == sorted(TINY_AST_LABELS)
    assert tagger.tag(clip, top=1)["labels"] == everything["labels"][:1]
    for top in (0, 51, -1, True, 2.5):
        with pytest.raises(BadRequest, match=r"top expected an integer in \[1, 50\]"):
            tagger.tag(clip, top=top)  # type: ignore[arg-type]


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_stereo_at_any_rate_is_mixed_and_resampled_to_what_the_model_hears(
    tagger: AudioTagger, tmp_path: Path, rate: int
) -> None:
    reference = tagger.tag(write(tmp_path / "ref.wav", tones(16000, 1.5), 16000), top=6)
    mono = tones(rate, 1.5)
    # Left and right differ; their mean is the mono clip.
    stereo = np.stack([mono * 1.5, mono * 0.5], axis=1)
    result = tagger.tag(write(tmp_path / f"stereo-{rate}.wav", stereo, rate), top=6)
    assert result["seconds"] == 1.5
    ours = dict(zip(result["labels"], result["scores"], strict=True))
    theirs = dict(zip(reference["labels"], reference["scores"], strict=True))
    assert max(abs(ours[label] - theirs[label]) for label in TINY_AST_LABELS) < 0.01, (ours, theirs)
    mixed = read_clip(tmp_path / f"stereo-{rate}.wav", 10.0)[0]
    np.testing.assert_allclose(mixed, mono, atol=1e-6)


def test_only_the_first_seconds_of_a_long_clip_are_heard(tiny_ast: Path, tmp_path: Path) -> None:
    engine = AudioTagger(str(tiny_ast), device="cpu", seconds=1.0)
    try:
        rng = np.random.default_rng(0)
        start = tones(16000, 1.0)
        rest = (0.5 * rng.standard_normal(16000 * 4)).astype(np.float32)  # noise the first second never has
        long = engine.tag(write(tmp_path / "long.wav", np.concatenate([start, rest]), 16000), top=6)
        first = engine.tag(write(tmp_path / "first.wav", start, 16000), top=6)
        assert (long["seconds"], long["duration_seconds"]) == (1.0, 5.0)
        assert (long["labels"], long["scores"]) == (first["labels"], first["scores"])
        short = engine.tag(write(tmp_path / "short.wav", tones(16000, 0.05), 16000), top=2)  # padded by the extractor
        assert short["seconds"] == 0.05 and len(short["labels"]) == 2
    finally:
        engine.close()


def test_bad_input_is_refused_naming_the_problem(tiny_ast: Path, tagger: AudioTagger, tmp_path: Path) -> None:
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all")
    with pytest.raises(BadRequest, match="not an audio file libsndfile can read"):
        tagger.tag(text)
    for seconds in (0, -1.0, 61.0, True):
        with pytest.raises(BadRequest, match=r"seconds expected a number in \(0, 60\]"):
            AudioTagger(str(tiny_ast), device="cpu", seconds=seconds)  # type: ignore[arg-type]
    with pytest.raises(BadRequest, match="model expected a hub name"):
        AudioTagger(" ", device="cpu")
    missing = tmp_path / "no-such-model"
    engine = AudioTagger(str(missing), device="cpu")
    with pytest.raises(Unavailable) as caught:
        engine.tag(write(tmp_path / "clip.wav", tones(16000, 0.2), 16000))
    assert str(missing) in caught.value.message and "classify.audio_model" in caught.value.message
