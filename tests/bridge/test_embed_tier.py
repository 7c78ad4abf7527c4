"""classify's and samples.search's embeddings on Workers AI's BGE (`samples.tier`), against a real daemon
over ZeroMQ and the protocol-faithful Workers AI fake on loopback.

The local model is a tiny random BERT in sentence-transformers' format with BGE's recipe (CLS pooling,
normalised), loaded through the real path; no hub (HF_HUB_OFFLINE=1, an empty HF_HOME). The fake's
vectors are a fixed formula (`embedding_vectors`), so the ranking a cloud answer implies is computed
here from the same numbers.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bridge.client import Client, RemoteError
from bridge.config import Config
from bridge.router import workers_ai_embed_model
from bridge.testing import DaemonProcess, build_tiny_sentence_bert
from engines.cloud.workers_ai import WorkersAITier
from tests.bridge.test_samples import run_index, sample_library
from tests.engines.cloud.fake_workers_ai import (
    ACCOUNT_ID,
    TOKEN,
    WorkersAIControl,
    embedding_vectors,
    fake_workers_ai,
    quota,
)

BGE = "BAAI/bge-small-en-v1.5"
CLOUD_BGE = "@cf/baai/bge-small-en-v1.5"
PRICE_PER_M_TOKENS = 0.020  # bge-small, shared/reference/cloud-tiers.md
CREDENTIALS = {"CLOUDFLARE_API_TOKEN": TOKEN, "CLOUDFLARE_ACCOUNT_ID": ACCOUNT_ID}
TEXT = "punchy kick drum with 808 sub bass"
LABELS = ["drums", "bass", "vocals", "melody", "effects"]


def test_workers_ai_s_default_embedding_model_is_the_one_the_daemon_runs_for_the_default_samples_model() -> None:
    """The engine built bare (the README's catalogue table) and the daemon name the same BGE: bge-small."""
    tier = WorkersAITier(TOKEN, ACCOUNT_ID)
    try:
        assert tier.models["embed"] == workers_ai_embed_model(Config()) == CLOUD_BGE
    finally:
        tier.close()


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[str, WorkersAIControl]]:
    with fake_workers_ai() as running:
        yield running


@pytest.fixture
def cloud(fake: tuple[str, WorkersAIControl]) -> tuple[str, WorkersAIControl]:
    fake[1].reset()
    return fake


@pytest.fixture(scope="module")
def tiny_bge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sentence_bert(tmp_path_factory.mktemp("models") / "bge")


@pytest.fixture(scope="module")
def tiny_bge_384(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bge-small's width, so the library's vectors and Workers AI's query vector can be compared."""
    return build_tiny_sentence_bert(tmp_path_factory.mktemp("models") / "bge384", hidden_size=384)


def daemon(tmp_path: Path, samples: dict[str, Any], url: str | None, credentials: bool = True,
           router: dict[str, Any] | None = None) -> DaemonProcess:
    overrides: dict[str, Any] = {"samples": {"engine_device": "cpu", "threads": 1, "watch": False, **samples},
                                 "router": router or {}}
    if url is not None:
        overrides["cloud"] = {"workers_ai_url": url}
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), **(CREDENTIALS if credentials else {})}
    return DaemonProcess(overrides=overrides, workdir=tmp_path, env=env)


def call(process: DaemonProcess, command: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    with Client(process.zmq_requests, timeout_seconds=60) as client:
        return client.call(command, args or {})


def refused(process: DaemonProcess, command: str, args: dict[str, Any]) -> RemoteError:
    with pytest.raises(RemoteError) as caught:
        call(process, command, args)
    return caught.value


def unit(vectors: list[list[float]]) -> np.ndarray:
    matrix = np.asarray(vectors, np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def price(texts: list[str]) -> float:
    """Workers AI's bge-small price for `texts` at about 4 characters per token (the tier's estimate)."""
    return PRICE_PER_M_TOKENS * sum(max(1.0, len(text) / 4.0) for text in texts) / 1_000_000


def ledger(process: DaemonProcess) -> list[tuple[str, float]]:
    """The spend ledger in the daemon's job database: (tier, cost) per call."""
    conn = sqlite3.connect(process.workdir / "jobs.sqlite3")
    try:
        return [(tier, cost) for tier, cost in conn.execute("SELECT tier, cost_usd FROM spend ORDER BY at")]
    finally:
        conn.close()


def test_classify_on_workers_ai_ranks_by_the_clouds_vectors_and_pays_into_the_ledger(
        tmp_path: Path, cloud: tuple[str, WorkersAIControl], tiny_bge: Path) -> None:
    url, control = cloud
    process = daemon(tmp_path, {"model": str(tiny_bge), "tier": "workers_ai"}, url).start()
    try:
        result = call(process, "classify", {"text": TEXT, "labels": LABELS})
        # One request: the text and every label, CLS pooling like the local sentence-transformers BGE.
        assert len(control.requests) == 1
        assert control.requests[0].path.endswith(f"/ai/run/{CLOUD_BGE}")
        assert control.requests[0].json() == {"text": [TEXT, *LABELS], "pooling": "cls"}
        vectors = unit(embedding_vectors(CLOUD_BGE, [TEXT, *LABELS]))
        scores = vectors[1:] @ vectors[0]
        expected = [LABELS[i] for i in np.argsort(-scores, kind="stable")]
        assert result["labels"] == expected and result["label"] == expected[0]
        assert result["scores"] == pytest.approx(sorted(scores.tolist(), reverse=True), abs=1e-4)
        assert (result["tier"], result["model"], result["licence"]["id"]) == ("workers_ai", CLOUD_BGE, "MIT")
        assert result["method"] == "embeddings"
        cost = price([TEXT, *LABELS])
        assert result["cost_usd"] == pytest.approx(cost)
        assert ledger(process) == [("workers_ai", pytest.approx(cost))]

        # The tier down (the day's free allocation used up): a structured error, nothing charged.
        control.script(quota())
        err = refused(process, "classify", {"text": TEXT, "labels": LABELS})
        assert err.code == "unavailable" and "workers_ai: quota exhausted" in err.message, err.message
        assert len(ledger(process)) == 1
        assert call(process, "ping")["reply"] == "pong"

        # The library is embedded by the local folder model: Workers AI's BGE vectors cannot be
        # compared with it, and the error names both models.
        library = process.workdir / "files" / "lib"
        sample_library(library)
        assert run_index(process, library)[0]["event"] == "job.done"
        err = refused(process, "samples.search", {"query": "punchy kick"})
        assert err.code == "unavailable", err.message
        assert str(tiny_bge) in err.message and CLOUD_BGE in err.message and "cannot be compared" in err.message
        assert len(control.requests) == 2  # the search never reached the cloud

        # A hundred labels and the text are 101 strings: two requests (Workers AI takes 100 at most),
        # ranked together, both in the ledger.
        many = [f"label number {n}" for n in range(100)]
        result = call(process, "classify", {"text": TEXT, "labels": many})
        bodies = [json.loads(seen.body) for seen in control.requests[2:]]
        assert [body["text"] for body in bodies] == [[TEXT, *many[:99]], many[99:]]
        vectors = unit(embedding_vectors(CLOUD_BGE, [TEXT, *many[:99]]) + embedding_vectors(CLOUD_BGE, many[99:]))
        scores = vectors[1:] @ vectors[0]
        assert result["labels"] == [many[i] for i in np.argsort(-scores, kind="stable")]
        assert result["cost_usd"] == pytest.approx(price([TEXT, *many]))
        assert [tier for tier, _ in ledger(process)] == ["workers_ai"] * 3
    finally:
        assert process.stop() == 0
    assert TOKEN not in process.log()


def test_a_library_indexed_with_local_bge_is_searched_with_the_cloud_query_vector(
        tmp_path: Path, cloud: tuple[str, WorkersAIControl], tiny_bge_384: Path) -> None:
    url, control = cloud
    # samples.model names bge-small; the weights come from samples.model_dir (offline), so the library
    # is recorded as embedded by BAAI/bge-small-en-v1.5, the model Workers AI runs as @cf/baai/bge-small-en-v1.5.
    # A month's budget that one search fits in, and two do not.
    budget = 1.5 * price(["punchy kick"])
    process = daemon(tmp_path, {"model": BGE, "model_dir": str(tiny_bge_384), "tier": "workers_ai"}, url,
                     router={"monthly_budget_usd": budget}).start()
    try:
        library = process.workdir / "files" / "lib"
        sample_library(library)
        assert run_index(process, library)[0]["event"] == "job.done"
        assert control.requests == []  # indexing runs here
        status = call(process, "samples.status")
        assert (status["tier"], status["remote_model"], status["model"]) == ("workers_ai", CLOUD_BGE, BGE)

        found = call(process, "samples.search", {"query": "punchy kick", "k": 3})
        assert [json.loads(seen.body) for seen in control.requests] == [{"text": ["punchy kick"], "pooling": "cls"}]
        assert (found["embeddings"]["tier"], found["embeddings"]["model"]) == ("workers_ai", CLOUD_BGE)
        # The ranking the cloud's query vector implies against the vectors the index stored.
        conn = sqlite3.connect(process.workdir / "samples.sqlite3")
        try:
            rows = conn.execute("SELECT path, embedding FROM samples WHERE model = ? AND status = 'ok'",
                                (BGE,)).fetchall()
        finally:
            conn.close()
        assert len(rows) == 3
        query = unit(embedding_vectors(CLOUD_BGE, ["punchy kick"]))[0]
        scores = {path: float(np.frombuffer(blob, np.float32) @ query) for path, blob in rows}
        expected = sorted(scores, key=lambda path: -scores[path])
        assert [match["path"] for match in found["matches"]] == expected
        assert [match["score"] for match in found["matches"]] == pytest.approx([scores[p] for p in expected],
                                                                               abs=1e-4)
        assert ledger(process) == [("workers_ai", pytest.approx(price(["punchy kick"])))]

        # The month's budget spent: the next cloud embedding is refused before any request.
        err = refused(process, "samples.search", {"query": "punchy kick", "k": 3})
        assert err.code == "forbidden" and "router.monthly_budget_usd" in err.message, err.message
        assert len(control.requests) == 1 and len(ledger(process)) == 1
    finally:
        assert process.stop() == 0


def test_auto_runs_here_when_the_model_is_here_else_on_the_cloud_each_the_others_fallback(
        tmp_path: Path, cloud: tuple[str, WorkersAIControl], tiny_bge_384: Path) -> None:
    url, control = cloud
    # BGE by hub name with an empty hub cache, and a model_dir that is not there yet: no local model.
    local_copy = tmp_path / "bge-copy"
    process = daemon(tmp_path, {"model": BGE, "model_dir": str(local_copy), "tier": "auto"}, url).start()
    try:
        result = call(process, "classify", {"text": TEXT, "labels": LABELS})
        assert (result["tier"], result["model"]) == ("workers_ai", CLOUD_BGE) and "failed" not in result
        assert len(control.requests) == 1

        # The cloud down: the local model is the fallback; it cannot load either, and the error
        # names both failures.
        control.script(quota())
        err = refused(process, "classify", {"text": TEXT, "labels": LABELS})
        assert err.code == "unavailable" and "every embeddings tier failed" in err.message, err.message
        assert "workers_ai: unavailable: workers_ai: quota exhausted" in err.message
        assert f"local: not_found: embeddings model {BGE!r} could not be loaded" in err.message

        # A local copy appears, its weights cut short (a broken download): it is tried first now,
        # fails, and the cloud answers; the reply says what failed on the way.
        shutil.copytree(tiny_bge_384, local_copy)
        weights = (local_copy / "model.safetensors").read_bytes()
        (local_copy / "model.safetensors").write_bytes(weights[:64])
        result = call(process, "classify", {"text": TEXT, "labels": LABELS})
        assert (result["tier"], result["model"]) == ("workers_ai", CLOUD_BGE), result
        assert len(result["failed"]) == 1 and result["failed"][0].startswith("local: unavailable: embeddings model")
        assert len(control.requests) == 3

        # Mended: the local model answers classify and search; the cloud hears nothing more.
        (local_copy / "model.safetensors").write_bytes(weights)
        result = call(process, "classify", {"text": TEXT, "labels": LABELS})
        assert (result["tier"], result["model"]) == ("local", BGE) and "failed" not in result
        library = process.workdir / "files" / "lib"
        sample_library(library)
        assert run_index(process, library)[0]["event"] == "job.done"
        found = call(process, "samples.search", {"query": "punchy kick", "k": 3})
        assert found["embeddings"]["tier"] == "local" and found["count"] == 3
        assert len(control.requests) == 3
        assert [tier for tier, _ in ledger(process)] == ["workers_ai", "workers_ai"]
    finally:
        assert process.stop() == 0


def test_workers_ai_without_a_token_is_unavailable_naming_what_to_set(tmp_path: Path, tiny_bge: Path) -> None:
    process = daemon(tmp_path, {"model": str(tiny_bge), "tier": "workers_ai"}, None, credentials=False).start()
    try:
        for command, args in (("classify", {"text": TEXT}), ("samples.search", {"query": "kick"})):
            if command == "samples.search":  # a search of an empty library needs no embedding at all
                library = process.workdir / "files" / "lib"
                sample_library(library)
                assert run_index(process, library)[0]["event"] == "job.done"
            err = refused(process, command, args)
            assert err.code == "unavailable", err.message
            for words in ("CLOUDFLARE_API_TOKEN", "CLOUDFLARE_ACCOUNT_ID", "samples.tier"):
                assert words in err.message, err.message
        assert call(process, "ping")["reply"] == "pong"
    finally:
        assert process.stop() == 0
