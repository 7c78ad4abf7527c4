"""Zero-shot classification (engines/zeroshot.py) and BGE as the embeddings model, with tiny random models.

No hub: a random BERT sequence classifier with an MNLI head's labels and a random BERT in
sentence-transformers' format (BGE's recipe) are saved to a tmp folder and loaded through the real
engines. Random weights rank nothing meaningfully: these tests assert the plumbing (the pipeline's
scores, their order, the template, the switches and the errors), never the quality of a ranking.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: no network here

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from bridge.config import Config
from bridge.errors import BadRequest, NotFound, Unavailable
from bridge.paths import PathPolicy
from bridge.samples import SampleLibrary
from bridge.testing import build_tiny_nli, build_tiny_sentence_bert
from engines.catalogue import licence_of
from engines.embeddings import BGE_MODEL, TextEmbedder
from engines.zeroshot import DEFAULT_HYPOTHESIS, DEFAULT_MODEL, ZeroShotClassifier

LABELS = ["drums", "bass", "vocals", "melody", "effects"]
TEXT = "punchy kick drum with 808 sub bass"


@pytest.fixture(scope="module")
def nli_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_nli(tmp_path_factory.mktemp("models") / "tiny-nli")


@pytest.fixture(scope="module")
def bge_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sentence_bert(tmp_path_factory.mktemp("models") / "tiny-bge")


@pytest.fixture(scope="module")
def zeroshot(nli_dir: Path) -> Iterator[ZeroShotClassifier]:
    engine = ZeroShotClassifier(str(nli_dir), device="cpu", threads=1)
    yield engine
    engine.close()


def entailment_softmax(folder: Path, text: str, labels: list[str], template: str) -> dict[str, float]:
    """What the zero-shot method means, computed by hand: softmax over labels of the entailment logit."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    entail = model.config.label2id["entailment"]
    with torch.no_grad():
        encoded = tokenizer([text] * len(labels), [template.format(label) for label in labels],
                            return_tensors="pt", padding=True)
        logits = model(**encoded).logits[:, entail]
    probabilities = torch.softmax(logits, dim=0).tolist()
    return dict(zip(labels, probabilities, strict=True))


@pytest.mark.parametrize("template", [DEFAULT_HYPOTHESIS, "The sound of {} in a mix"])
def test_scores_are_the_entailment_softmax_best_first(zeroshot: ZeroShotClassifier, nli_dir: Path,
                                                      template: str) -> None:
    ranked = zeroshot.classify(TEXT, LABELS, template)
    expected = entailment_softmax(nli_dir, TEXT, LABELS, template)
    assert sorted(label for label, _ in ranked) == sorted(LABELS)
    scores = [score for _, score in ranked]
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(1.0, abs=1e-3)  # single-label mode: one softmax across the labels
    for label, score in ranked:
        assert score == pytest.approx(expected[label], abs=1e-4), (label, template)


def test_the_template_is_what_the_model_reads(zeroshot: ZeroShotClassifier) -> None:
    plain = dict(zeroshot.classify(TEXT, LABELS))
    other = dict(zeroshot.classify(TEXT, LABELS, "The sound of {} in a mix"))
    assert plain != other


def test_duplicate_labels_are_ranked_once_and_one_label_is_entailment_against_contradiction(
        zeroshot: ZeroShotClassifier, nli_dir: Path) -> None:
    assert sorted(label for label, _ in zeroshot.classify(TEXT, ["bass", "drums", " bass"])) == ["bass", "drums"]
    # The pipeline's rule for one label: entailment against contradiction, softmaxed (not a trivial 1.0).
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(nli_dir)
    model = AutoModelForSequenceClassification.from_pretrained(nli_dir).eval()
    with torch.no_grad():
        logits = model(**tokenizer(TEXT, DEFAULT_HYPOTHESIS.format("bass"), return_tensors="pt")).logits[0]
    ids = model.config.label2id
    expected = torch.softmax(logits[[ids["contradiction"], ids["entailment"]]], dim=0)[1].item()
    [(label, score)] = zeroshot.classify(TEXT, ["bass"])
    assert label == "bass" and score == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("template, words", [
    ("This example is.", "argument 'hypothesis' expected a sentence with one {}"),
    ("{} or {}", "argument 'hypothesis' expected a sentence with one {}"),
    ("a {label} sound {}", "holds a brace"),
    ("x" * 300 + "{}", "expected at most 200"),
])
def test_bad_templates_and_labels_are_named(zeroshot: ZeroShotClassifier, template: str, words: str) -> None:
    with pytest.raises(BadRequest, match="hypothesis") as caught:
        zeroshot.classify(TEXT, LABELS, template)
    assert words in str(caught.value)
    with pytest.raises(BadRequest, match="argument 'labels' is empty"):
        zeroshot.classify(TEXT, [])


def test_a_model_without_an_entailment_label_is_refused(tmp_path: Path) -> None:
    folder = build_tiny_nli(tmp_path / "not-nli", labels=("negative", "positive"))
    engine = ZeroShotClassifier(str(folder), device="cpu")
    with pytest.raises(Unavailable, match="names no entailment label") as caught:
        engine.classify(TEXT, LABELS)
    assert str(folder) in str(caught.value) and "negative" in str(caught.value)


def test_a_missing_model_is_not_found_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "nli"
    with pytest.raises(NotFound, match=r"no config\.json") as caught:
        ZeroShotClassifier(str(missing), device="cpu").classify(TEXT, LABELS)
    assert str(missing) in str(caught.value)
    uncached = "flowstate-tests/no-such-nli-model"  # offline: the hub cache has no such name
    with pytest.raises(NotFound) as caught:
        ZeroShotClassifier(uncached, device="cpu").classify(TEXT, LABELS)
    assert uncached in str(caught.value) and "classify.nli_model" in str(caught.value)
    with pytest.raises(BadRequest, match="nli_model"):
        ZeroShotClassifier("  ", device="cpu")


def test_the_catalogue_names_both_licences() -> None:
    assert licence_of(DEFAULT_MODEL, "classify").licence.id == "MIT"
    assert licence_of(BGE_MODEL, "embed").licence.id == "MIT"
    assert licence_of("@cf/baai/bge-small-en-v1.5", "embed").catalogued_as == "BAAI/bge-*-en-v1.5"


def test_a_bge_shaped_model_loads_as_the_embeddings_model(bge_dir: Path) -> None:
    engine = TextEmbedder(str(bge_dir), device="cpu", threads=1)
    try:
        vectors = engine.encode(["punchy kick", "dark pad", "a breathy female lead vocal"])
        assert vectors.shape == (3, 16) and vectors.dtype == np.float32
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # BGE's Normalize module
        ranked = engine.classify("punchy kick", LABELS)
        assert sorted(label for label, _ in ranked) == sorted(LABELS)
        assert engine.source is not None and engine.source.source == "model"
    finally:
        engine.close()


# -- the library: config default, per-request switch ---------------------------------------------------


def library(root: Path, bge_dir: Path, nli_dir: Path, **classify: object) -> SampleLibrary:
    config = Config.model_validate({
        "jobs": {"database": str(root / "jobs.sqlite3")},
        "paths": {"roots": [str(root / "files")]},
        "samples": {"model": str(bge_dir), "engine_device": "cpu", "threads": 1, "watch": False},
        "classify": {"nli_model": str(nli_dir), **classify},
    })
    (root / "files").mkdir(exist_ok=True)
    return SampleLibrary(config, PathPolicy(config.paths.roots))


@pytest.mark.parametrize("default", ["embeddings", "nli"])
def test_the_config_picks_the_method_and_a_request_overrides_it(tmp_path: Path, bge_dir: Path, nli_dir: Path,
                                                                default: str) -> None:
    lib = library(tmp_path, bge_dir, nli_dir, method=default)
    try:
        assert lib.status()["classify_method"] == default and lib.status()["nli_model"] == str(nli_dir)
        assert lib.classify(TEXT, LABELS)["method"] == default
        nli = lib.classify(TEXT, LABELS, "nli")
        assert lib.status()["nli_model_loaded"]
        assert nli["method"] == "nli" and nli["model"] == str(nli_dir)
        assert sum(nli["scores"]) == pytest.approx(1.0, abs=1e-3) and nli["label"] == nli["labels"][0]
        embeddings = lib.classify(TEXT, LABELS, "embeddings")
        assert embeddings["method"] == "embeddings" and embeddings["model"] == str(bge_dir)
        assert embeddings["scores"] == sorted(embeddings["scores"], reverse=True)
        assert "licence" in nli and "licence" in embeddings
        with pytest.raises(BadRequest, match="argument 'method' expected embeddings or nli, got 'bayes'"):
            lib.classify(TEXT, LABELS, "bayes")
        with pytest.raises(BadRequest, match="'hypothesis' only applies to method=nli"):
            lib.classify(TEXT, LABELS, "embeddings", "a {} sound")
        assert lib.classify(TEXT, LABELS, "nli", "a {} sound")["scores"] != nli["scores"]
    finally:
        lib.close()


def test_a_missing_nli_model_fails_that_request_only(tmp_path: Path, bge_dir: Path) -> None:
    missing = tmp_path / "models" / "nli"
    lib = library(tmp_path, bge_dir, missing)
    try:
        with pytest.raises(NotFound) as caught:
            lib.classify(TEXT, LABELS, "nli")
        assert str(missing) in str(caught.value)
        assert lib.classify(TEXT, LABELS)["method"] == "embeddings"
    finally:
        lib.close()


@pytest.mark.parametrize("section, words", [
    ({"classify": {"method": "bayes"}}, "classify.method"),
    ({"classify": {"nli_hypothesis": "no placeholder"}}, "classify.nli_hypothesis"),
    ({"classify": {"nli_model": ""}}, "classify.nli_model"),
    ({"samples": {"nli_model": "facebook/bart-large-mnli"}}, "samples.nli_model"),  # moved to classify.*
    ({"samples": {"classify_method": "nli"}}, "samples.classify_method"),
])
def test_bad_config_is_named(section: dict[str, dict[str, str]], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        Config.model_validate(section)


def test_doctor_says_where_the_nli_model_would_load_from(tmp_path: Path) -> None:
    from bridge.doctor import run_checks

    def row(nli_model: str, method: str = "nli") -> Any:
        classify = Config().classify.model_copy(update={"nli_model": nli_model, "method": method})
        config = Config().model_copy(update={"classify": classify})
        return next(check for check in run_checks(config, "test") if check.name == "classify nli")

    folder = tmp_path / "nli"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    found = row(str(folder))
    assert found.state == "ok" and f"folder {folder}" in found.detail and "(bert;" in found.detail
    missing = row("flowstate-test/no-such-nli")
    assert missing.state == "warn" and "flowstate-test/no-such-nli not found" in missing.detail
    assert "classify.nli_model" in missing.detail
    # Not classify's default method: only a request naming method=nli would load it, so the row informs.
    unused = row("flowstate-test/no-such-nli", method="embeddings")
    assert unused.state == "ok" and "not used by default (classify.method is embeddings)" in unused.detail
    assert "flowstate-test/no-such-nli not found" in unused.detail and "classify.nli_model" in unused.detail
    assert row(str(folder), method="embeddings").state == "ok"
