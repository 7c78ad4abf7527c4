"""WorkersAITier against the fake Workers AI over real HTTP."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile

from bridge.errors import BadRequest, BridgeError, Forbidden, NotFound, Unavailable
from engines.cloud.base import TierJob, TierResult
from engines.cloud.http import QuotaExhausted
from engines.cloud.workers_ai import WorkersAITier
from tests.engines.cloud.fake_hf import Scripted
from tests.engines.cloud.fake_workers_ai import (
    ACCOUNT_ID,
    TOKEN,
    WorkersAIControl,
    capacity,
    fake_workers_ai,
    quota,
)

TURBO = "@cf/openai/whisper-large-v3-turbo"
WHISPER = "@cf/openai/whisper"
MELOTTS = "@cf/myshell-ai/melotts"
BGE_BASE = "@cf/baai/bge-base-en-v1.5"
BGE_SMALL = "@cf/baai/bge-small-en-v1.5"  # the default: what the daemon runs for its default samples.model


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, WorkersAIControl]]:
    with fake_workers_ai() as started:
        yield started


@pytest.fixture
def fake(server: tuple[str, WorkersAIControl]) -> tuple[str, WorkersAIControl]:
    """The module's fake, with a clean slate for each test."""
    server[1].reset()
    return server


@pytest.fixture
def tier(fake: tuple[str, WorkersAIControl]) -> Iterator[WorkersAITier]:
    tier = WorkersAITier(TOKEN, ACCOUNT_ID, base_url=fake[0])
    yield tier
    tier.close()


@pytest.fixture
def speech(tmp_path: Path) -> Path:
    sample_rate = 16000
    t = np.arange(sample_rate, dtype=np.float32) / sample_rate
    path = tmp_path / "take.wav"
    soundfile.write(path, 0.2 * np.sin(2 * np.pi * 200 * t), sample_rate)
    return path


def job(task: str, tmp_path: Path, input_path: Path | None = None, **params: object) -> TierJob:
    work_dir = tmp_path / "work"
    work_dir.mkdir(exist_ok=True)
    deadline = params.pop("deadline_seconds", None)
    return TierJob(task=task, params=dict(params), work_dir=work_dir, input_path=input_path, audio_seconds=1.0,
                   deadline_seconds=deadline)  # type: ignore[arg-type]


def run(tier: WorkersAITier, tier_job: TierJob) -> TierResult:
    fractions: list[float] = []
    result = tier.run(tier_job, fractions.append, lambda: None)
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    return result


def failing(tier: WorkersAITier, tier_job: TierJob, expected: type[BridgeError]) -> BridgeError:
    with pytest.raises(expected) as caught:
        tier.run(tier_job, lambda fraction: None, lambda: None)
    text = f"{caught.value} {caught.value!r} {caught.value.to_dict()}"
    assert TOKEN not in text and ACCOUNT_ID not in text, "a secret leaked into an error"
    return caught.value


def path_of(model: str) -> str:
    return f"/client/v4/accounts/{ACCOUNT_ID}/ai/run/{model}"


# -- tasks and shapes ----------------------------------------------------------------------------

def test_transcribe_with_turbo_sends_base64_json(tier: WorkersAITier, fake, speech: Path, tmp_path: Path) -> None:
    _, control = fake
    result = run(tier, job("transcribe", tmp_path, speech, language="en", vad_filter=False, ignored="x"))
    seen = control.requests[-1]
    assert seen.path == path_of(TURBO)
    assert seen.headers["authorization"] == f"Bearer {TOKEN}"
    body = seen.json()
    assert base64.b64decode(body["audio"]) == speech.read_bytes()
    assert {k: v for k, v in body.items() if k != "audio"} == {"language": "en", "vad_filter": False}
    assert result.data["text"] == "one two three four"
    assert result.data["segments"] == [{"start": 0.0, "end": 1.0, "text": "one two three four"}]
    assert [w["word"] for w in result.data["words"]] == ["one", "two", "three", "four"]
    assert result.data["language"] == "en" and result.data["vtt"].startswith("WEBVTT")
    assert result.cost_usd == pytest.approx(0.0005 / 60)
    assert result.details == {"model": TURBO, "attempts": 1}


def test_transcribe_with_whisper_sends_the_raw_bytes(fake, speech: Path, tmp_path: Path) -> None:
    base_url, control = fake
    tier = WorkersAITier(TOKEN, ACCOUNT_ID, base_url=base_url, models={"transcribe": WHISPER})
    try:
        result = run(tier, job("transcribe", tmp_path, speech))
    finally:
        tier.close()
    seen = control.requests[-1]
    assert seen.path == path_of(WHISPER) and seen.body == speech.read_bytes()
    assert result.data["segments"] == []
    assert result.data["words"][-1] == {"word": "four", "start": 0.75, "end": 1.0}


@pytest.mark.parametrize("binary", [False, True])
def test_tts_writes_the_speech(tier: WorkersAITier, fake, tmp_path: Path, binary: bool) -> None:
    _, control = fake
    control.tts_binary = binary
    result = run(tier, job("tts", tmp_path, text="hello from the cloud", lang="en"))
    assert control.requests[-1].json() == {"prompt": "hello from the cloud", "lang": "en"}
    path = result.outputs["audio"]
    assert path == tmp_path / "work" / "speech.mp3"
    duration = soundfile.info(path).duration
    assert duration > 1.0
    assert result.cost_usd == pytest.approx(0.0002 * duration / 60)
    assert [p.name for p in path.parent.iterdir()] == ["speech.mp3"]


def test_embed_returns_the_vectors(tier: WorkersAITier, fake, tmp_path: Path) -> None:
    _, control = fake
    result = run(tier, job("embed", tmp_path, text=["kick drum", "warm pad"], pooling="cls"))
    assert control.requests[-1].path == path_of(BGE_SMALL)
    assert control.requests[-1].json() == {"text": ["kick drum", "warm pad"], "pooling": "cls"}
    assert result.data["shape"] == [2, 384] and len(result.data["data"]) == 2
    assert result.data["pooling"] == "cls"
    assert result.cost_usd == pytest.approx(0.020 * (9 / 4 + 8 / 4) / 1_000_000)


@pytest.mark.parametrize("params", [
    {"text": []}, {"text": ["x"] * 101}, {"text": 3}, {"text": ["a"], "pooling": "max"},
])
def test_bad_embed_input_is_refused_before_any_request(tier: WorkersAITier, fake, tmp_path: Path, params) -> None:
    _, control = fake
    err = failing(tier, job("embed", tmp_path, **params), BadRequest)
    assert "params." in err.message
    assert control.requests == []


# -- 429s: quota is final, capacity is retried ---------------------------------------------------

def test_a_quota_429_is_not_retried(tier: WorkersAITier, fake, tmp_path: Path) -> None:
    _, control = fake
    control.script(quota())
    err = failing(tier, job("embed", tmp_path, text="x"), QuotaExhausted)
    assert len(control.requests) == 1
    assert err.retryable is False and err.code == "unavailable"
    assert "quota exhausted" in err.message and "3036" in err.message
    assert "AiError" not in err.message


def test_a_capacity_429_is_retried_honouring_retry_after(tier: WorkersAITier, fake, tmp_path: Path) -> None:
    _, control = fake
    control.script(capacity(retry_after="1"), capacity())
    result = run(tier, job("embed", tmp_path, text="x"))
    assert result.details["attempts"] == 3
    first, second, third = control.requests
    assert second.at - first.at >= 0.9  # Retry-After: 1
    assert third.at > second.at


def test_capacity_retries_are_bounded(fake, tmp_path: Path) -> None:
    base_url, control = fake
    control.script(*[capacity(retry_after="0") for _ in range(4)])
    tier = WorkersAITier(TOKEN, ACCOUNT_ID, base_url=base_url, max_retries=2)
    try:
        err = failing(tier, job("embed", tmp_path, text="x"), Unavailable)
    finally:
        tier.close()
    assert not isinstance(err, QuotaExhausted)
    assert "gave up after 3 attempts" in err.message and "out of capacity" in err.message
    assert len(control.requests) == 3


def test_a_retry_after_beyond_the_deadline_is_not_waited(tier: WorkersAITier, fake, tmp_path: Path) -> None:
    _, control = fake
    control.script(capacity(retry_after="30"))
    err = failing(tier, job("embed", tmp_path, text="x", deadline_seconds=5), Unavailable)
    assert "outlasts the deadline" in err.message
    assert len(control.requests) == 1


@pytest.mark.parametrize("answer", [
    Scripted(500, b"Internal Server Error", headers={"content-type": "text/plain"}),
    Scripted(502, {"result": None, "success": False, "errors": [{"code": 3043, "message": "Internal error"}],
                   "messages": []}),
    Scripted(408, {"result": None, "success": False, "errors": [{"code": 3007, "message": "Request timeout"}],
                   "messages": []}),
])
def test_5xx_and_408_are_retried(tier: WorkersAITier, fake, tmp_path: Path, answer: Scripted) -> None:
    _, control = fake
    control.script(answer)
    result = run(tier, job("embed", tmp_path, text="x"))
    assert result.details["attempts"] == 2 and len(control.requests) == 2


def test_5xx_retries_are_bounded(fake, tmp_path: Path) -> None:
    base_url, control = fake
    control.script(*[Scripted(503, b"upstream unavailable", headers={"content-type": "text/plain"})] * 3)
    tier = WorkersAITier(TOKEN, ACCOUNT_ID, base_url=base_url, max_retries=1)
    try:
        err = failing(tier, job("embed", tmp_path, text="x"), Unavailable)
    finally:
        tier.close()
    assert "HTTP 503" in err.message and len(control.requests) == 2


# -- envelope errors and other failures ----------------------------------------------------------

def envelope_error(status: int, code: int, message: str) -> Scripted:
    return Scripted(status, {"result": None, "success": False, "errors": [{"code": code, "message": message}],
                             "messages": []})


@pytest.mark.parametrize(("answer", "expected", "words"), [
    (envelope_error(400, 5004, "AiError: AiError: Invalid base64"), BadRequest, "error 5004: Invalid base64"),
    (envelope_error(413, 3006, "Request is too large"), BadRequest, "3006"),
    (envelope_error(400, 3003, "AiError: Bad input: incomplete request"), BadRequest, "Bad input"),
    (envelope_error(404, 3042, "Invalid model ID"), NotFound, "3042"),
    (envelope_error(403, 10000, f"Authentication error for {TOKEN}"), Forbidden, "Authentication error for ***"),
    (envelope_error(200, 3000, "Unknown internal error"), Unavailable, "reported a failure"),
    (envelope_error(429, 4006, "you have used up your daily free allocation"), QuotaExhausted, "quota exhausted"),
    (Scripted(200, b"<html>oops</html>", headers={"content-type": "text/html"}), Unavailable, "malformed"),
    (Scripted(200, {"result": None, "success": True, "errors": [], "messages": []}), Unavailable, "malformed"),
    (Scripted(200, b"\x00\x01", headers={"content-type": "application/octet-stream"}), Unavailable, "malformed"),
    (Scripted(200, {"result": {"shape": [1, 768], "data": []}, "success": True, "errors": [], "messages": []}),
     Unavailable, "malformed"),
])
def test_envelope_errors_map_to_project_errors(tier: WorkersAITier, fake, tmp_path: Path, answer: Scripted,
                                               expected: type[BridgeError], words: str) -> None:
    _, control = fake
    control.script(answer)
    err = failing(tier, job("embed", tmp_path, text="x"), expected)
    assert words in err.message and err.message.startswith("workers_ai")
    assert len(control.requests) == 1


def test_an_unknown_model_is_not_found(fake, tmp_path: Path) -> None:
    base_url, control = fake
    tier = WorkersAITier(TOKEN, ACCOUNT_ID, base_url=base_url, models={"embed": "@cf/baai/bge-huge-en-v9"})
    try:
        err = failing(tier, job("embed", tmp_path, text="x"), NotFound)
    finally:
        tier.close()
    assert "5007" in err.message and len(control.requests) == 1


def test_a_wrong_token_is_forbidden(fake, tmp_path: Path) -> None:
    base_url, control = fake
    tier = WorkersAITier("not-the-token", ACCOUNT_ID, base_url=base_url)
    try:
        err = failing(tier, job("embed", tmp_path, text="x"), Forbidden)
    finally:
        tier.close()
    assert "10000" in err.message and "not-the-token" not in err.message
    assert len(control.requests) == 1


def test_malformed_speech_is_unavailable(tier: WorkersAITier, fake, tmp_path: Path) -> None:
    _, control = fake
    control.script(Scripted(200, {"result": {"audio": "@@@"}, "success": True, "errors": [], "messages": []}))
    err = failing(tier, job("tts", tmp_path, text="hi"), Unavailable)
    assert "base64" in err.message
    assert list((tmp_path / "work").iterdir()) == []


def test_a_slow_answer_times_out_and_is_not_retried(fake, tmp_path: Path) -> None:
    base_url, control = fake
    control.script(Scripted(delay_seconds=1.5))
    tier = WorkersAITier(TOKEN, ACCOUNT_ID, base_url=base_url, timeout_seconds=0.3)
    try:
        err = failing(tier, job("embed", tmp_path, text="x"), Unavailable)
    finally:
        tier.close()
    assert "no answer within 0.3 s" in err.message
    assert len(control.requests) == 1


def test_an_unreachable_provider_is_retried_then_unavailable(tmp_path: Path) -> None:
    tier = WorkersAITier(TOKEN, ACCOUNT_ID, base_url="http://127.0.0.1:9/client/v4", max_retries=1)
    try:
        err = failing(tier, job("embed", tmp_path, text="x"), Unavailable)
    finally:
        tier.close()
    assert "cannot reach the provider" in err.message and "2 attempts" in err.message


# -- health -----------------------------------------------------------------------------------

def test_health(tier: WorkersAITier, fake) -> None:
    _, control = fake
    assert tier.health() is True
    assert control.requests[-1].json() == {"text": ["ping"]}
    control.script(quota())
    assert tier.health() is False


def test_embed_cost_is_what_the_budget_check_charges_before_a_request() -> None:
    tier = WorkersAITier(TOKEN, ACCOUNT_ID)
    try:
        # bge-small, the default: $0.020 per million tokens, about 4 characters a token.
        assert tier.embed_cost(["y" * 400]) == pytest.approx(0.020 * 100 / 1_000_000)
        assert tier.embed_cost(["a", "b"]) == pytest.approx(0.020 * 2 / 1_000_000)  # a token at least each
    finally:
        tier.close()


@pytest.mark.parametrize("kwargs", [
    {"token": ""},
    {"account_id": "../other"},
    {"models": {"stems": "@cf/x"}},
    {"models": {"tts": "melotts"}},
    {"max_retries": -1},
    {"timeout_seconds": 0},
])
def test_bad_settings_are_refused_when_built(kwargs: dict) -> None:
    arguments = {"token": TOKEN, "account_id": ACCOUNT_ID, **kwargs}
    with pytest.raises(ValueError) as caught:
        WorkersAITier(arguments.pop("token"), arguments.pop("account_id"), **arguments)
    assert TOKEN not in str(caught.value)


def test_the_fake_answers_in_the_documented_envelope(fake) -> None:
    """Guard the fake itself: success and failure both carry result, success, errors and messages."""
    base_url, _ = fake
    url = f"{base_url}/accounts/{ACCOUNT_ID}/ai/run/{BGE_BASE}"
    good = httpx.post(url, json={"text": "x"}, headers={"Authorization": f"Bearer {TOKEN}"})
    bad = httpx.post(url, json={"text": 3}, headers={"Authorization": f"Bearer {TOKEN}"})
    for answer in (good, bad):
        assert set(json.loads(answer.text)) == {"result", "success", "errors", "messages"}
    assert bad.status_code == 400 and bad.json()["errors"][0]["code"] == 3003
