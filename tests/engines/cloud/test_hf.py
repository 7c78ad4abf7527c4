"""HuggingFaceTier against the fake Hugging Face service over real HTTP."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from bridge.errors import BadRequest, BridgeError, Forbidden, NotFound, Unavailable
from engines.cloud.base import TierJob, TierResult
from engines.cloud.hf import HuggingFaceTier
from engines.cloud.http import QuotaExhausted
from tests.engines.cloud.fake_hf import TOKEN, HFControl, Scripted, fake_hf

STEMS_MODEL = "fake/separator"
ASR_MODEL = "openai/whisper-large-v3-turbo"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, HFControl]]:
    with fake_hf() as started:
        yield started


@pytest.fixture
def fake(server: tuple[str, HFControl]) -> tuple[str, HFControl]:
    """The module's fake, with a clean slate for each test."""
    server[1].reset()
    return server


@pytest.fixture
def tier(fake: tuple[str, HFControl]) -> Iterator[HuggingFaceTier]:
    root, control = fake
    tier = HuggingFaceTier(TOKEN, base_url=control.router_url(root), models={"stems": STEMS_MODEL})
    yield tier
    tier.close()


@pytest.fixture
def song(tmp_path: Path) -> Path:
    sample_rate = 16000
    t = np.arange(sample_rate // 2, dtype=np.float32) / sample_rate
    audio = np.stack([0.2 * np.sin(2 * np.pi * 330 * t), 0.2 * np.sin(2 * np.pi * 440 * t)], axis=1)
    path = tmp_path / "song.wav"
    soundfile.write(path, audio, sample_rate)
    return path


def job(task: str, tmp_path: Path, input_path: Path | None = None, **params: object) -> TierJob:
    work_dir = tmp_path / "work"
    work_dir.mkdir(exist_ok=True)
    deadline = params.pop("deadline_seconds", None)
    return TierJob(task=task, params=dict(params), work_dir=work_dir, input_path=input_path, audio_seconds=0.5,
                   deadline_seconds=deadline)  # type: ignore[arg-type]


def run(tier: HuggingFaceTier, tier_job: TierJob, check_cancelled=lambda: None) -> tuple[TierResult, list[float]]:
    fractions: list[float] = []
    result = tier.run(tier_job, fractions.append, check_cancelled)
    return result, fractions


def failing(tier: HuggingFaceTier, tier_job: TierJob, expected: type[BridgeError]) -> BridgeError:
    with pytest.raises(expected) as caught:
        tier.run(tier_job, lambda fraction: None, lambda: None)
    text = f"{caught.value} {caught.value!r} {caught.value.to_dict()}"
    assert TOKEN not in text, "the token leaked into an error"
    return caught.value


class Cancelled(Exception):
    """What our check_cancelled raises, as the job code's would."""


def cancel_after(calls: int) -> Callable[[], None]:
    """A check_cancelled that lets `calls` checks pass, then cancels."""
    seen = []

    def check_cancelled() -> None:
        seen.append(1)
        if len(seen) > calls:
            raise Cancelled

    return check_cancelled


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".partial-" in p.name]


# -- the three tasks, request and response shapes ----------------------------------------------

def test_stems_send_raw_audio_and_land_one_file_per_label(tier: HuggingFaceTier, fake, song: Path,
                                                          tmp_path: Path) -> None:
    _, control = fake
    result, fractions = run(tier, job("stems", tmp_path, song))

    seen = control.requests[-1]
    assert seen.path == f"/hf-inference/models/{STEMS_MODEL}"
    assert seen.headers["authorization"] == f"Bearer {TOKEN}"
    assert seen.headers["content-type"] == "audio/wav"
    assert seen.body == song.read_bytes()
    assert "x-scale-up-timeout" not in seen.headers  # only Endpoints take it
    assert set(result.outputs) == {"vocals", "accompaniment"}
    for label, path in result.outputs.items():
        assert path == tmp_path / "work" / f"{label}.flac"
        audio, sample_rate = soundfile.read(path, always_2d=True)
        assert sample_rate == 16000 and audio.shape == (8000, 2)
    assert leftovers(tmp_path / "work") == []
    assert result.tier == "huggingface" and result.details["model"] == STEMS_MODEL
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert result.cost_usd is None  # the strategy document gives no Hugging Face price for stems


def test_stems_with_parameters_send_base64_json(tier: HuggingFaceTier, fake, song: Path, tmp_path: Path) -> None:
    _, control = fake
    result, _ = run(tier, job("stems", tmp_path, song, parameters={"chunk_seconds": 10}))
    body = control.requests[-1].json()
    assert control.requests[-1].headers["content-type"] == "application/json"
    assert base64.b64decode(body["inputs"]) == song.read_bytes()
    assert body["parameters"] == {"chunk_seconds": 10}
    assert set(result.outputs) == {"vocals", "accompaniment"}


def test_transcribe_asks_for_timestamps_and_returns_segments(tier: HuggingFaceTier, fake, song: Path,
                                                             tmp_path: Path) -> None:
    _, control = fake
    result, _ = run(tier, job("transcribe", tmp_path, song))
    body = control.requests[-1].json()
    assert control.requests[-1].path == f"/hf-inference/models/{ASR_MODEL}"
    assert body["parameters"] == {"return_timestamps": True}
    assert result.data["text"] == "one two three four"
    assert [s["text"] for s in result.data["segments"]] == ["one", "two", "three", "four"]
    assert result.data["segments"][0]["start"] == 0.0 and result.data["segments"][-1]["end"] == pytest.approx(0.5)
    assert result.outputs == {}
    assert result.cost_usd == pytest.approx(0.01 * 0.5 / 60)


def test_transcribe_without_timestamps_sends_raw_audio(tier: HuggingFaceTier, fake, song: Path,
                                                       tmp_path: Path) -> None:
    _, control = fake
    result, _ = run(tier, job("transcribe", tmp_path, song, timestamps=False))
    assert control.requests[-1].headers["content-type"] == "audio/wav"
    assert result.data == {"text": "one two three four", "segments": []}


def test_generate_sends_prompt_and_writes_the_audio(tier: HuggingFaceTier, fake, tmp_path: Path) -> None:
    _, control = fake
    result, _ = run(tier, job("generate", tmp_path, prompt="dusty boom bap drums", duration_seconds=1.0))
    body = control.requests[-1].json()
    assert body == {"inputs": "dusty boom bap drums", "parameters": {"generation_parameters": {"max_new_tokens": 50}}}
    path = result.outputs["audio"]
    assert path == tmp_path / "work" / "generated.flac"
    assert soundfile.info(path).duration == pytest.approx(1.0)
    assert result.cost_usd == pytest.approx(0.05)


def test_generate_without_prompt_is_refused_before_any_request(tier: HuggingFaceTier, fake, tmp_path: Path) -> None:
    _, control = fake
    err = failing(tier, job("generate", tmp_path, prompt=""), BadRequest)
    assert "params.prompt" in err.message
    assert control.requests == []


def test_a_task_the_tier_does_not_offer_is_a_bad_request(fake, tmp_path: Path) -> None:
    root, control = fake
    tier = HuggingFaceTier(TOKEN, base_url=control.router_url(root))  # no stems model on the router
    try:
        assert tier.tasks == {"transcribe", "generate"}
        failing(tier, job("stems", tmp_path), BadRequest)
    finally:
        tier.close()


# -- cold starts ---------------------------------------------------------------------------------

def test_a_loading_model_is_waited_out(tier: HuggingFaceTier, fake, song: Path, tmp_path: Path) -> None:
    _, control = fake
    control.loading(ASR_MODEL, 0.4)
    result, _ = run(tier, job("transcribe", tmp_path, song, deadline_seconds=10))
    assert result.data["text"] == "one two three four"
    assert result.details["cold_start_waits"] >= 1
    first, second = control.requests[0], control.requests[1]
    # The client waited about estimated_time before asking again.
    assert second.at - first.at >= 0.3


def test_a_cold_start_longer_than_the_deadline_fails_at_once(tier: HuggingFaceTier, fake, song: Path,
                                                            tmp_path: Path) -> None:
    _, control = fake
    control.loading(ASR_MODEL, 30.0)
    err = failing(tier, job("transcribe", tmp_path, song, deadline_seconds=5), Unavailable)
    assert "cold start outlasts the deadline" in err.message and "huggingface" in err.message
    assert len(control.requests) == 1


def test_cold_start_waits_are_bounded(fake, song: Path, tmp_path: Path) -> None:
    root, control = fake
    loading = {"error": f"Model {ASR_MODEL} is currently loading", "estimated_time": 0.05}
    control.script(*[Scripted(503, loading) for _ in range(5)])
    tier = HuggingFaceTier(TOKEN, base_url=control.router_url(root), max_cold_start_waits=2)
    try:
        err = failing(tier, job("transcribe", tmp_path, song), Unavailable)
    finally:
        tier.close()
    assert "still starting after 2 cold-start waits" in err.message
    assert len(control.requests) == 3


def test_cancel_during_a_cold_start_wait(tier: HuggingFaceTier, fake, song: Path, tmp_path: Path) -> None:
    _, control = fake
    control.loading(ASR_MODEL, 30.0)
    with pytest.raises(Cancelled):
        tier.run(job("transcribe", tmp_path, song), lambda fraction: None, cancel_after(3))
    assert len(control.requests) == 1


def test_cancel_while_a_request_is_in_flight(tier: HuggingFaceTier, fake, song: Path, tmp_path: Path) -> None:
    _, control = fake
    control.script(Scripted(delay_seconds=1.5))
    with pytest.raises(Cancelled):
        tier.run(job("stems", tmp_path, song), lambda fraction: None, cancel_after(2))
    assert len(control.requests) == 1
    assert list((tmp_path / "work").iterdir()) == []


def test_an_endpoint_scaled_to_zero_holds_the_request(fake, song: Path, tmp_path: Path) -> None:
    root, control = fake
    control.scale_to_zero(0.5)
    tier = HuggingFaceTier(TOKEN, endpoint_url=control.endpoint_url(root, "stems"))
    try:
        assert tier.tasks == {"stems"}
        result, _ = run(tier, job("stems", tmp_path, song))
    finally:
        tier.close()
    assert set(result.outputs) == {"vocals", "accompaniment"}
    assert len(control.requests) == 1
    assert control.requests[0].headers["x-scale-up-timeout"] == "60"
    assert control.requests[0].headers["content-type"] == "audio/wav"
    assert result.details == {"model": "openunmix:umxl", "endpoint": True, "cold_start_waits": 0}


# -- Open-Unmix on an Endpoint: the job's model travels, and only there -------------------------

UMX = "openunmix:umxl"


@pytest.fixture
def umx(fake) -> Iterator[HuggingFaceTier]:
    root, control = fake
    tier = HuggingFaceTier(TOKEN, endpoint_url=control.endpoint_url(root, "umx"))  # default: umxl
    yield tier
    tier.close()


def test_an_openunmix_endpoint_takes_its_own_model_only(umx: HuggingFaceTier) -> None:
    assert umx.offers_model("stems", UMX)
    # Another model's job would get Open-Unmix umxl's stems back: it is never planned here.
    assert not umx.offers_model("stems", "openunmix:umxhq")
    assert not umx.offers_model("stems", "htdemucs")
    assert not umx.offers_model("stems", "spleeter:2stems")
    other = HuggingFaceTier(TOKEN, endpoint_url="https://example.invalid", models={"stems": "openunmix:umxhq"})
    try:
        assert other.offers_model("stems", "openunmix:umxhq") and not other.offers_model("stems", UMX)
    finally:
        other.close()


def test_an_openunmix_endpoint_answers_four_stems(umx: HuggingFaceTier, fake, song: Path, tmp_path: Path) -> None:
    _, control = fake
    result, _ = run(umx, job("stems", tmp_path, song, model=UMX))
    seen = control.requests[-1]
    assert seen.path == "/endpoints/umx" and seen.headers["content-type"] == "audio/wav"
    assert seen.body == song.read_bytes()  # raw audio: the Endpoint serves one model, no name in the body
    assert set(result.outputs) == {"vocals", "drums", "bass", "other"}
    for path in result.outputs.values():
        audio, sample_rate = soundfile.read(path, always_2d=True)
        assert sample_rate == 16000 and audio.shape == (8000, 2)
    assert result.details == {"model": UMX, "endpoint": True, "cold_start_waits": 0}


def test_an_openunmix_endpoint_starting_answers_503_then_stems(umx: HuggingFaceTier, fake, song: Path,
                                                               tmp_path: Path) -> None:
    _, control = fake
    control.script(Scripted(503, b"503 Service Unavailable", {"content-type": "text/plain"}))
    result, _ = run(umx, job("stems", tmp_path, song, model=UMX))
    assert len(control.requests) == 2 and set(result.outputs) == {"vocals", "drums", "bass", "other"}
    assert result.details["cold_start_waits"] == 1


def test_an_openunmix_endpoint_failing_is_unavailable(umx: HuggingFaceTier, fake, song: Path,
                                                      tmp_path: Path) -> None:
    _, control = fake
    control.script(Scripted(500, {"error": "CUDA out of memory"}))
    err = failing(umx, job("stems", tmp_path, song, model=UMX), Unavailable)
    assert "CUDA out of memory" in err.message
    assert list((tmp_path / "work").iterdir()) == []


@pytest.mark.parametrize(("body", "what"), [
    ({"error": None}, "non-empty list"),
    ([{"label": "vocals", "content-type": "audio/flac", "blob": "not base64!"}], "blob"),
    ([{"content-type": "audio/flac", "blob": ""}], "no label"),
    ([{"label": "vocals", "content-type": "text/plain", "blob": base64.b64encode(b"hello").decode()}], "not audio"),
])
def test_a_malformed_openunmix_answer_is_unavailable_and_writes_nothing(umx: HuggingFaceTier, fake, song: Path,
                                                                        tmp_path: Path, body, what: str) -> None:
    _, control = fake
    control.script(Scripted(200, body))
    err = failing(umx, job("stems", tmp_path, song, model=UMX), Unavailable)
    assert "malformed" in err.message and what in err.message and UMX in err.message
    assert list((tmp_path / "work").iterdir()) == []


def test_a_job_for_another_model_is_refused_before_anything_is_sent(umx: HuggingFaceTier, fake, song: Path,
                                                                    tmp_path: Path) -> None:
    _, control = fake
    err = failing(umx, job("stems", tmp_path, song, model="openunmix:umxhq"), BadRequest)
    assert "'openunmix:umxhq'" in err.message and UMX in err.message
    assert control.requests == []


def test_an_endpoint_still_starting_is_retried_then_unavailable(fake, song: Path, tmp_path: Path) -> None:
    root, control = fake
    control.scale_to_zero(30.0)
    tier = HuggingFaceTier(TOKEN, endpoint_url=control.endpoint_url(root, "asr"), models={"transcribe": "whisper"},
                           scale_up_timeout_seconds=1, max_cold_start_waits=1)
    try:
        err = failing(tier, job("transcribe", tmp_path, song), Unavailable)
    finally:
        tier.close()
    assert "still starting" in err.message
    assert [r.headers["x-scale-up-timeout"] for r in control.requests] == ["1", "1"]


def test_the_scale_up_hold_never_passes_the_deadline(fake, song: Path, tmp_path: Path) -> None:
    root, control = fake
    tier = HuggingFaceTier(TOKEN, endpoint_url=control.endpoint_url(root, "stems"))
    try:
        run(tier, job("stems", tmp_path, song, deadline_seconds=4))
    finally:
        tier.close()
    assert int(control.requests[0].headers["x-scale-up-timeout"]) <= 4


# -- failures ------------------------------------------------------------------------------------

LOADING_NOTHING = {"error": "Service Unavailable"}


@pytest.mark.parametrize(("answer", "expected", "words"), [
    (Scripted(400, {"error": "Malformed soundfile"}), BadRequest, "Malformed soundfile"),
    (Scripted(422, {"error": ["Input validation error: `inputs` must be non-empty"]}), BadRequest,
     "Input validation error"),
    (Scripted(404, {"error": "Model fake/separator does not exist"}), NotFound, "does not exist"),
    (Scripted(403, {"error": f"token {TOKEN} lacks inference permission"}), Forbidden, "lacks inference"),
    (Scripted(402, {"error": "You have exceeded your monthly included credits for Inference Providers."}),
     QuotaExhausted, "credits"),
    (Scripted(429, {"error": "Rate limit reached"}, headers={"retry-after": "30"}), Unavailable, "HTTP 429"),
    (Scripted(429, {"error": "Rate limit reached"}), Unavailable, "HTTP 429"),
    (Scripted(500, b"<html>Internal Server Error</html>", headers={"content-type": "text/html"}), Unavailable,
     "HTTP 500"),
    (Scripted(503, LOADING_NOTHING), Unavailable, "HTTP 503"),
    (Scripted(200, b"{not json", headers={"content-type": "application/json"}), Unavailable, "malformed"),
    (Scripted(200, {"label": "vocals"}), Unavailable, "malformed"),
    (Scripted(200, [{"label": "vocals", "content-type": "audio/flac", "blob": "%%%"}]), Unavailable, "base64"),
    (Scripted(200, [{"label": "vocals", "content-type": "text/plain", "blob": "aGVsbG8="}]), Unavailable,
     "not audio"),
])
def test_provider_failures_map_to_project_errors_without_retry(tier: HuggingFaceTier, fake, song: Path,
                                                                tmp_path: Path, answer: Scripted,
                                                                expected: type[BridgeError], words: str) -> None:
    _, control = fake
    control.script(answer)
    err = failing(tier, job("stems", tmp_path, song), expected)
    assert words in err.message and err.message.startswith("huggingface")
    assert len(control.requests) == 1
    assert list((tmp_path / "work").iterdir()) == []


def test_quota_errors_say_they_are_not_retryable(tier: HuggingFaceTier, fake, song: Path, tmp_path: Path) -> None:
    _, control = fake
    control.script(Scripted(402, {"error": "You have exceeded your monthly included credits"}))
    err = failing(tier, job("stems", tmp_path, song), QuotaExhausted)
    assert err.retryable is False and err.code == "unavailable"


def test_a_wrong_token_is_forbidden(fake, song: Path, tmp_path: Path) -> None:
    root, control = fake
    wrong = "hf_wrong_token_zzzzzzzzzzzz"
    tier = HuggingFaceTier(wrong, base_url=control.router_url(root), models={"stems": STEMS_MODEL})
    try:
        with pytest.raises(Forbidden) as caught:
            tier.run(job("stems", tmp_path, song), lambda fraction: None, lambda: None)
    finally:
        tier.close()
    assert "HTTP 401" in str(caught.value) and wrong not in str(caught.value)


def test_a_token_echoed_by_the_provider_is_scrubbed(tier: HuggingFaceTier, fake, song: Path, tmp_path: Path) -> None:
    _, control = fake
    control.script(Scripted(401, {"error": f"Invalid credentials in Authorization header: Bearer {TOKEN}"}))
    err = failing(tier, job("stems", tmp_path, song), Forbidden)
    assert "Bearer ***" in err.message


@pytest.mark.parametrize("task", ["transcribe", "generate"])
def test_malformed_answers_per_task(tier: HuggingFaceTier, fake, song: Path, tmp_path: Path, task: str) -> None:
    _, control = fake
    # transcribe: no "text"; generate: JSON where audio bytes belong.
    control.script(Scripted(200, {"texts": "nope"}) if task == "transcribe" else Scripted(200, {"audio": "nope"}))
    err = failing(tier, job(task, tmp_path, song, prompt="pad"), Unavailable)
    assert "malformed response" in err.message


def test_a_slow_answer_times_out_as_unavailable(fake, song: Path, tmp_path: Path) -> None:
    root, control = fake
    control.script(Scripted(delay_seconds=1.5))
    tier = HuggingFaceTier(TOKEN, base_url=control.router_url(root), models={"stems": STEMS_MODEL},
                           timeout_seconds=0.3)
    try:
        err = failing(tier, job("stems", tmp_path, song), Unavailable)
    finally:
        tier.close()
    assert "huggingface: no answer within 0.3 s" in err.message
    assert len(control.requests) == 1


def test_unreadable_input_is_a_bad_request(tier: HuggingFaceTier, fake, tmp_path: Path) -> None:
    failing(tier, job("stems", tmp_path, tmp_path / "missing.wav"), BadRequest)
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio")
    err = failing(tier, job("stems", tmp_path, notes), BadRequest)
    assert "notes.txt" in err.message


# -- health and estimates ------------------------------------------------------------------------

def test_health_probe(tier: HuggingFaceTier, fake) -> None:
    root, control = fake
    assert tier.health() is True
    control.script(Scripted(503, {"error": "Service Unavailable"}))
    assert tier.health() is False
    stranger = HuggingFaceTier("hf_not_the_token", base_url=control.router_url(root))
    try:
        assert stranger.health() is False
    finally:
        stranger.close()


def test_health_is_false_when_nothing_listens() -> None:
    tier = HuggingFaceTier(TOKEN, base_url="http://127.0.0.1:9/hf-inference")
    try:
        assert tier.health() is False
    finally:
        tier.close()


@pytest.mark.parametrize("kwargs", [
    {"token": ""},
    {"models": {"tts": "x"}},
    {"models": {"stems": ""}},
    {"timeout_seconds": 0},
    {"scale_up_timeout_seconds": 0},
    {"max_cold_start_waits": -1},
])
def test_bad_settings_are_refused_when_built(kwargs: dict) -> None:
    arguments = {"token": TOKEN, **kwargs}
    with pytest.raises(ValueError):
        HuggingFaceTier(arguments.pop("token"), **arguments)
