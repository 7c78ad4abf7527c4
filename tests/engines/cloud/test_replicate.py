"""ReplicateTier over real HTTP against the fake Replicate API (tests/engines/cloud/fake_replicate.py).

Timing appears in a few assertions on purpose: honouring Retry-After and backing off *are* the
protocol behaviour under test. They compare the arrival times the fake recorded, with lower
bounds only, so a slow machine cannot fail them.
"""

from __future__ import annotations

import email.utils
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from bridge.errors import BadRequest, ConfigError, Forbidden, NotFound, Unavailable
from engines.cloud import replicate_client
from engines.cloud.base import TierJob
from engines.cloud.http import wait
from engines.cloud.replicate import ReplicateTier
from engines.cloud.replicate_client import MARKER_PARAM, format_duration
from engines.cloud.replicate_models import REPLICATE_TASKS
from tests.engines.cloud.conftest import TOKEN  # the fixtures' token
from tests.engines.cloud.fake_replicate import FakeReplicate, Fault

TOLERANCE_SECONDS = 0.05


class Cancelled(Exception):
    """What the job's check_cancelled raises in these tests."""


class Calls:
    """A job's progress and check_cancelled callbacks, recording what the tier reported."""

    def __init__(self, cancel_when: Callable[[], bool] = lambda: False) -> None:
        self.fractions: list[float] = []
        self.checks = 0
        self._cancel_when = cancel_when

    def progress(self, fraction: float) -> None:
        self.fractions.append(fraction)

    def check_cancelled(self) -> None:
        self.checks += 1
        if self._cancel_when():
            raise Cancelled("the user cancelled")


def write_wav(path: Path, seconds: float = 0.5, sample_rate: int = 8000, channels: int = 2) -> Path:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = 0.5 * np.sin(2 * np.pi * 330.0 * t)
    soundfile.write(path, np.stack([tone] * channels, axis=1), sample_rate, subtype="PCM_16")
    return path


def job(tmp_path: Path, task: str = "stems", *, audio: Path | None = None, audio_seconds: float = 0.5,
        deadline_seconds: float | None = None, **params: Any) -> TierJob:
    work_dir = tmp_path / "work"
    work_dir.mkdir(parents=True, exist_ok=True)
    if audio is None and task != "generate":
        audio = write_wav(tmp_path / "mix.wav")
    return TierJob(task=task, params=params, work_dir=work_dir, input_path=audio, audio_seconds=audio_seconds,
                   deadline_seconds=deadline_seconds)


def gaps(fake: FakeReplicate, route: str) -> list[float]:
    arrivals = [r.at for r in fake.seen(route)]
    return [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]


def only_prediction(fake: FakeReplicate) -> str:
    assert len(fake.predictions) == 1, f"expected one prediction, the fake has {len(fake.predictions)}"
    return next(iter(fake.predictions))


# -- the happy paths ----------------------------------------------------------------------------


def test_short_stems_job_is_answered_inside_the_held_create(fake, make_tier, tmp_path):
    tier = make_tier()
    calls = Calls()
    the_job = job(tmp_path, model="htdemucs")
    result = tier.run(the_job, calls.progress, calls.check_cancelled)

    create = fake.seen("create")
    assert len(create) == 1 and fake.seen("get") == []  # no polling: the held answer was final
    assert create[0].headers["prefer"] == "wait=15"
    assert create[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert create[0].path == "/v1/predictions"
    assert create[0].body["version"] == fake.version_of("cjwbw/demucs")  # "latest", resolved once
    assert len(fake.seen("model")) == 1
    assert result.details["preference_applied"] == "wait=15"

    mix, rate = soundfile.read(the_job.input_path, dtype="float32", always_2d=True)
    assert sorted(result.outputs) == ["bass", "drums", "other", "vocals"]
    total = np.zeros_like(mix)
    for path in result.outputs.values():
        assert path.parent == the_job.work_dir and path.suffix == ".wav"
        data, stem_rate = soundfile.read(path, dtype="float32", always_2d=True)
        assert stem_rate == rate and data.shape == mix.shape
        total += data
    np.testing.assert_allclose(total, mix, atol=1e-3)  # the fake's stems sum to the mix
    assert sorted(p.name for p in the_job.work_dir.iterdir()) == sorted(p.name for p in result.outputs.values())
    assert calls.fractions[0] == 0.0 and calls.fractions[-1] == 1.0
    assert calls.fractions == sorted(calls.fractions)


def test_long_job_polls_with_growing_intervals(fake, make_tier, tmp_path, monkeypatch):
    # The waits the client asks for between polls, not the gaps between arrivals (a busy machine
    # stretches those). The prediction ends after the sixth poll: the fake's clock is moved past its run.
    fake.reset(run_seconds=60.0)
    asked: list[float] = []

    def recorded(seconds: float, check_cancelled: Callable[[], None]) -> None:
        asked.append(seconds)
        wait(seconds, check_cancelled)
        if len(asked) == 6:
            fake.advance(60.0)

    monkeypatch.setattr(replicate_client, "wait", recorded)
    tier = make_tier(poll_initial_seconds=0.05, poll_max_seconds=0.4)
    calls = Calls()
    result = tier.run(job(tmp_path, audio_seconds=600.0), calls.progress, calls.check_cancelled)

    assert "prefer" not in fake.seen("create")[0].headers  # 600 s of audio: too long to hold
    assert asked == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]  # starts short, doubles, holds at the cap
    assert len(fake.seen("get")) == 6
    intervals = gaps(fake, "get")
    assert min(intervals) >= 0.1 - TOLERANCE_SECONDS and intervals[-1] >= 0.4 - TOLERANCE_SECONDS  # waited
    assert len(result.outputs) == 4
    assert any(0.0 < f < 1.0 for f in calls.fractions)  # a time-based estimate while it ran
    assert max(f for f in calls.fractions if f < 1.0) < 1.0
    assert calls.checks >= 4


@pytest.mark.parametrize("limit_delta, uploaded", [(-1, True), (0, False), (1, False)])
def test_input_goes_inline_up_to_the_limit_and_is_uploaded_past_it(fake, make_tier, tmp_path, limit_delta, uploaded):
    the_job = job(tmp_path)
    size = the_job.input_path.stat().st_size
    uri_length = len("data:audio/wav;base64,") + 4 * math.ceil(size / 3)  # the limit is on the whole URI
    tier = make_tier(inline_limit_bytes=uri_length + limit_delta)
    result = tier.run(the_job, lambda f: None, lambda: None)

    audio = fake.seen("create")[0].body["input"]["audio"]
    uploads = fake.seen("upload")
    if uploaded:
        assert len(uploads) == 1 and uploads[0].body["filename"] == "mix.wav"
        assert uploads[0].body["type"] == "audio/wav"
        file_id = next(iter(fake.files))
        assert audio == f"{fake.base_url}/v1/files/{file_id}" and fake.files[file_id]["size"] == size
        assert result.details["input_sent_as"] == "upload"
    else:
        assert uploads == [] and audio.startswith("data:audio/wav;base64,") and len(audio) == uri_length
        assert result.details["input_sent_as"] == "data_uri"
    assert len(result.outputs) == 4


def test_musicgen_runs_on_the_model_endpoint_with_its_documented_inputs(fake, make_tier, tmp_path):
    fake.reset(output_mode="data")  # outputs as data: URIs, as recorded in the reference's cassettes
    tier = make_tier()
    params = {"prompt": "warm analog pad", "duration_seconds": 2, "seed": 7, "model_version": "large",
              "local_only_option": True}
    result = tier.run(job(tmp_path, "generate", **params), lambda f: None, lambda: None)

    create = fake.seen("create")[0]
    assert create.path == "/v1/models/meta/musicgen/predictions" and "version" not in create.body
    assert create.body["input"] == {"prompt": "warm analog pad", "duration": 2, "output_format": "wav", "seed": 7,
                                    "model_version": "large"}
    audio, rate = soundfile.read(result.outputs["audio"], dtype="float32")
    assert rate == 32000 and len(audio) == 2 * 32000


def test_whisper_gets_the_uploaded_audio_and_returns_text_and_segments(fake, make_tier, tmp_path):
    tier = make_tier(inline_limit_bytes=0)
    audio = write_wav(tmp_path / "take1.wav", seconds=1.0)
    result = tier.run(job(tmp_path, "transcribe", audio=audio, language="en"), lambda f: None, lambda: None)

    sent = fake.seen("create")[0].body
    file_id = next(iter(fake.files))
    assert sent["version"] == fake.version_of("openai/whisper")
    assert sent["input"] == {"audio": f"{fake.base_url}/v1/files/{file_id}", "language": "en",
                             "transcription": "plain text"}
    assert result.data["text"] == "This is the fake transcript of take1.wav."
    assert result.data["language"] == "en"
    assert result.data["segments"] == [{"start": 0.0, "end": 1.0, "text": "This is the fake transcript of take1.wav."}]
    assert result.outputs["transcript"].read_text() == result.data["text"]


def test_only_the_asked_for_stems_are_downloaded(fake, make_tier, tmp_path):
    result = make_tier().run(job(tmp_path, model="htdemucs_6s", stems=["vocals", "piano"]), lambda f: None,
                             lambda: None)
    assert sorted(result.outputs) == ["piano", "vocals"]
    assert sorted(r.path.rsplit("/", 1)[-1] for r in fake.seen("delivery")) == ["piano.wav", "vocals.wav"]


def test_cost_is_predict_time_times_the_configured_price(fake, make_tier, tmp_path):
    tier = make_tier(price_per_second={"cjwbw/demucs": 0.001})
    result = tier.run(job(tmp_path), lambda f: None, lambda: None)
    predict_time = result.details["predict_time_seconds"]
    assert predict_time == pytest.approx(0.2, abs=0.01)
    assert result.cost_usd == pytest.approx(predict_time * 0.001)
    unpriced = make_tier().run(job(tmp_path / "again"), lambda f: None, lambda: None)
    assert unpriced.cost_usd is None  # the strategy document gives no per-second prices


# -- rate limits, server errors, malformed bodies -------------------------------------------------


@pytest.mark.parametrize("retry_after", ["1", "http-date"])
def test_429_waits_as_long_as_retry_after_says(fake, make_tier, tmp_path, retry_after):
    not_before = None
    if retry_after == "http-date":
        # Whole seconds, 2-3 s from now: the second create may not come before that date.
        retry_after = email.utils.formatdate(time.time() + 3, usegmt=True)
        not_before = email.utils.parsedate_to_datetime(retry_after).timestamp()
    fake.fail("create", Fault(status=429, retry_after=retry_after))
    tier = make_tier(poll_initial_seconds=0.05)
    tier.run(job(tmp_path), lambda f: None, lambda: None)

    assert len(fake.seen("create")) == 2
    if not_before is None:
        assert gaps(fake, "create")[0] >= 1.0 - TOLERANCE_SECONDS
    else:  # the arrival (the fake's monotonic clock) on the wall clock
        arrived = fake.seen("create")[1].at + (time.time() - time.monotonic())
        assert arrived >= not_before - TOLERANCE_SECONDS
    assert fake.seen("list") == []  # a 429 creates nothing: no reconciling needed
    only_prediction(fake)


def test_429_without_retry_after_backs_off_exponentially(fake, make_tier, tmp_path):
    fake.reset(run_seconds=0.5)
    fake.fail("get", Fault(status=429), times=2)
    tier = make_tier(poll_initial_seconds=0.2, poll_max_seconds=1.0, wait_seconds=0)
    tier.run(job(tmp_path), lambda f: None, lambda: None)

    first, second = gaps(fake, "get")[:2]
    assert first >= 0.2 - TOLERANCE_SECONDS and second >= 0.4 - TOLERANCE_SECONDS


def test_500_on_create_is_reconciled_before_creating_again(fake, make_tier, tmp_path):
    fake.fail("create", Fault(status=500))
    tier = make_tier()
    result = tier.run(job(tmp_path), lambda f: None, lambda: None)
    assert len(fake.seen("create")) == 2 and len(fake.seen("list")) == 1
    assert result.details["prediction_id"] == only_prediction(fake)


def test_500s_while_polling_are_retried(fake, make_tier, tmp_path):
    fake.fail("get", Fault(status=500), times=2)
    result = make_tier(wait_seconds=0).run(job(tmp_path), lambda f: None, lambda: None)
    assert len(result.outputs) == 4


def test_500s_past_the_retry_budget_are_unavailable_and_cancel_the_run(fake, make_tier, tmp_path):
    fake.reset(run_seconds=30)
    fake.fail("get", Fault(status=500, detail="upstream exploded"), times=10)
    tier = make_tier(wait_seconds=0, max_retries=2)
    with pytest.raises(Unavailable) as caught:
        tier.run(job(tmp_path), lambda f: None, lambda: None)
    assert caught.value.message.startswith("replicate: ")
    assert "HTTP 500" in caught.value.message and "upstream exploded" in caught.value.message
    assert fake.status_of(only_prediction(fake)) == "canceled"  # no orphan run left billing


def test_malformed_bodies_are_unavailable(fake, make_tier, tmp_path):
    fake.reset(run_seconds=30)
    fake.fail("get", Fault(malformed=True), times=10)
    with pytest.raises(Unavailable, match="malformed"):
        make_tier(wait_seconds=0, max_retries=1).run(job(tmp_path), lambda f: None, lambda: None)


@pytest.mark.parametrize("lost, echo_webhook", [
    (Fault(apply=True, delay_seconds=1.0), False),  # the answer outlives the client's timeout
    (Fault(apply=True, delay_seconds=1.0), True),  # ... and the listing carries the webhook marker
    (Fault(apply=True, malformed=True), False),  # 201 with a body that is not JSON
    (Fault(apply=True, status=502), False),  # created, then a proxy error
], ids=["timeout", "timeout-webhook-echoed", "malformed-201", "502-after-create"])
def test_a_create_whose_answer_is_lost_never_creates_a_duplicate(fake, make_tier, tmp_path, lost, echo_webhook):
    fake.reset(echo_webhook=echo_webhook)
    fake.fail("create", lost)
    tier = make_tier(timeout_seconds=0.4, wait_seconds=0)
    result = tier.run(job(tmp_path), lambda f: None, lambda: None)

    assert len(fake.seen("create")) == 1 and len(fake.seen("list")) >= 1
    assert result.details["prediction_id"] == only_prediction(fake)
    assert f"?{MARKER_PARAM}=" in fake.seen("create")[0].body["webhook"]
    assert fake.seen("list")[0].query["created_after"].endswith("Z")
    assert len(result.outputs) == 4


# -- cancel and deadlines -------------------------------------------------------------------------


def test_cancel_while_polling_cancels_the_prediction(fake, make_tier, tmp_path):
    fake.reset(run_seconds=30)
    calls = Calls(cancel_when=lambda: len(fake.seen("get")) >= 1)
    with pytest.raises(Cancelled):
        make_tier(wait_seconds=0).run(job(tmp_path), calls.progress, calls.check_cancelled)
    assert len(fake.seen("cancel")) == 1
    assert fake.status_of(only_prediction(fake)) == "canceled"


def test_cancel_while_the_create_is_held_cancels_the_prediction_it_made(fake, make_tier, tmp_path):
    fake.reset(run_seconds=30)
    calls = Calls(cancel_when=lambda: bool(fake.predictions))
    started = time.monotonic()
    with pytest.raises(Cancelled):
        make_tier(wait_seconds=15).run(job(tmp_path, audio_seconds=1.0), calls.progress, calls.check_cancelled)
    assert time.monotonic() - started < 10  # not held for the whole wait=15
    assert len(fake.seen("list")) == 1 and len(fake.seen("cancel")) == 1  # found by listing, then cancelled
    assert fake.status_of(only_prediction(fake)) == "canceled"


@pytest.mark.parametrize("deadline_seconds, header", [(2, "5s"), (90, "1m30s"), (5400, "1h30m")])
def test_cancel_after_comes_from_the_deadline(fake, make_tier, tmp_path, deadline_seconds, header):
    result = make_tier().run(job(tmp_path, deadline_seconds=deadline_seconds), lambda f: None, lambda: None)
    assert fake.seen("create")[0].headers["cancel-after"] == header
    assert result.details["cancel_after_seconds"] == max(5, deadline_seconds)


def test_no_deadline_sends_no_cancel_after(fake, make_tier, tmp_path):
    make_tier().run(job(tmp_path), lambda f: None, lambda: None)
    assert "cancel-after" not in fake.seen("create")[0].headers


@pytest.mark.parametrize("lifecycle, status", [({"start_seconds": 60}, "aborted"), ({"run_seconds": 60}, "canceled")])
def test_a_passed_cancel_after_is_unavailable(fake, make_tier, tmp_path, lifecycle, status):
    fake.reset(**lifecycle)

    def advance_past_deadline() -> bool:
        if fake.predictions and fake.status_of(only_prediction(fake)) not in ("aborted", "canceled"):
            fake.advance(6)  # the fake's clock, not ours: past Cancel-After: 5s
        return False

    calls = Calls(cancel_when=advance_past_deadline)
    with pytest.raises(Unavailable, match=status):
        make_tier(wait_seconds=0).run(job(tmp_path, deadline_seconds=5), calls.progress, calls.check_cancelled)
    assert fake.status_of(only_prediction(fake)) == status


@pytest.mark.parametrize("seconds, text", [(0, "5s"), (4.2, "5s"), (5, "5s"), (59.5, "1m"), (61, "1m1s"),
                                           (3600, "1h"), (3661, "1h1m1s")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


# -- errors ---------------------------------------------------------------------------------------


def test_a_refused_token_is_forbidden_and_never_shown(fake, make_tier, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "r8_wrong_secret_token_987654321"
    tier = make_tier(token=wrong)
    with pytest.raises(Forbidden) as caught:
        tier.run(job(tmp_path), lambda f: None, lambda: None)
    assert "401" in caught.value.message and "valid authentication token" in caught.value.message
    assert not tier.health()
    for text in (str(caught.value), repr(caught.value), repr(tier), caplog.text):
        assert wrong not in text and TOKEN not in text
    assert make_tier().health()


def test_an_unknown_version_is_a_bad_request(fake, make_tier, tmp_path):
    tier = make_tier(models={"stems": "cjwbw/demucs:" + "0" * 64})
    with pytest.raises(BadRequest, match="Invalid version or not permitted"):
        tier.run(job(tmp_path), lambda f: None, lambda: None)
    assert len(fake.seen("create")) == 1  # a 422 is never retried


def test_invalid_input_is_a_bad_request_with_the_providers_detail(fake, make_tier, tmp_path):
    with pytest.raises(BadRequest) as caught:
        make_tier().run(job(tmp_path, "generate", prompt="x", model_version="bogus"), lambda f: None, lambda: None)
    assert "HTTP 422" in caught.value.message
    assert "input.model_version: model_version must be one of the following" in caught.value.message


def test_invalid_fields_are_named_when_the_detail_does_not(fake, make_tier, tmp_path):
    fake.fail("create", Fault(status=422, detail="Input validation failed",
                              invalid_fields=[{"type": "required", "field": "input",
                                               "description": "prompt is required"}]))
    with pytest.raises(BadRequest) as caught:
        make_tier().run(job(tmp_path, "generate", prompt="x"), lambda f: None, lambda: None)
    assert caught.value.message.endswith("Input validation failed (invalid: input: prompt is required)")
    assert len(fake.seen("create")) == 1 and fake.seen("list") == []  # a 422 made nothing: no retry, no listing


def test_a_failed_prediction_is_unavailable_with_its_error(fake, make_tier, tmp_path):
    fake.reset(fail_with="CUDA out of memory")
    with pytest.raises(Unavailable, match=r"failed: CUDA out of memory"):
        make_tier().run(job(tmp_path), lambda f: None, lambda: None)


def test_expired_outputs_are_not_found(fake, make_tier, tmp_path):
    fake.reset(retention_seconds=0)
    with pytest.raises(NotFound, match="expired"):
        make_tier().run(job(tmp_path), lambda f: None, lambda: None)


def test_local_input_checks_fail_before_any_request(fake, make_tier, tmp_path):
    tier = make_tier()
    with pytest.raises(BadRequest, match="prompt"):
        tier.run(job(tmp_path, "generate"), lambda f: None, lambda: None)
    with pytest.raises(BadRequest, match="duration_seconds"):
        tier.run(job(tmp_path, "generate", prompt="x", duration_seconds=31), lambda f: None, lambda: None)
    with pytest.raises(BadRequest, match="model"):
        make_tier(inline_limit_bytes=0).run(job(tmp_path, model="nope"), lambda f: None, lambda: None)  # no upload
    with pytest.raises(BadRequest, match=r"\['guitar'\] are not stems of htdemucs"):
        tier.run(job(tmp_path, model="htdemucs", stems=["vocals", "guitar"]), lambda f: None, lambda: None)
    with pytest.raises(BadRequest, match="embed"):
        tier.run(job(tmp_path, "embed"), lambda f: None, lambda: None)
    assert fake.requests == []


@pytest.mark.parametrize("models", [{"stems": "demucs"}, {"stems": "cjwbw/demucs:v1"}, {"tts": "meta/musicgen"}])
def test_bad_model_refs_are_config_errors(models):
    with pytest.raises(ConfigError, match="models"):
        ReplicateTier(TOKEN, models=models)


# -- tasks -----------------------------------------------------------------------------------------


def test_the_tasks_replicate_offers() -> None:
    tier = ReplicateTier(TOKEN)
    try:
        assert tier.tasks == frozenset({*REPLICATE_TASKS, "tts", "voice"})  # Chatterbox speaks, RVC converts
    finally:
        tier.close()


# -- Stable Audio Open ----------------------------------------------------------------------------

SAO_VERSION = "49b1d4f06f69989dd2c8252d455d2deebaa3c3e3e894694b8aed301c69e75913"


def sao_job(tmp_path: Path, **params: Any) -> TierJob:
    return job(tmp_path, "generate", model_family="stable-audio-open", **{"prompt": "glass shatter", **params})


def test_stable_audio_open_runs_the_pinned_version_with_its_documented_inputs(fake, make_tier, tmp_path):
    tier = make_tier()
    result = tier.run(sao_job(tmp_path, duration_seconds=3.2, seed=5, steps=50, guidance_scale=7.0,
                              negative_prompt="hiss", temperature=1.0), lambda f: None, lambda: None)
    create = fake.seen("create")[0]
    assert create.path == "/v1/predictions"
    assert create.body["version"].endswith(SAO_VERSION)
    # Whole seconds (the schema's integer), our names mapped to its own; MusicGen's options stay out.
    assert create.body["input"] == {"prompt": "glass shatter", "seconds_total": 4, "steps": 50, "cfg_scale": 7.0,
                                    "negative_prompt": "hiss", "seed": 5}
    audio, rate = soundfile.read(result.outputs["audio"], dtype="float32")
    assert rate == 44100 and audio.shape == (4 * 44100, 2)


def test_stable_audio_open_waits_through_a_cold_start(fake, make_tier, tmp_path):
    fake.reset(start_seconds=120)  # the model boots for two minutes of the fake's clock
    booting: list[float] = []

    def boot() -> bool:
        if fake.predictions and fake.status_of(only_prediction(fake)) == "starting":
            booting.append(30.0)
            fake.advance(30)
        return False

    calls = Calls(cancel_when=boot)
    result = make_tier(wait_seconds=0).run(sao_job(tmp_path, duration_seconds=1), calls.progress,
                                           calls.check_cancelled)
    assert fake.status_of(only_prediction(fake)) == "succeeded" and sum(booting) >= 120  # it waited it out
    assert soundfile.info(str(result.outputs["audio"])).channels == 2
    assert calls.fractions == sorted(calls.fractions)


def test_a_failed_stable_audio_prediction_is_unavailable_with_its_error(fake, make_tier, tmp_path):
    fake.reset(fail_with="CUDA out of memory")
    with pytest.raises(Unavailable, match="CUDA out of memory"):
        make_tier().run(sao_job(tmp_path, duration_seconds=2), lambda f: None, lambda: None)


def test_a_stable_audio_output_that_is_not_a_uri_is_malformed(fake, make_tier, tmp_path):
    fake.reset(malformed_output=True)
    with pytest.raises(Unavailable, match="Stable Audio output is dict"):
        make_tier().run(sao_job(tmp_path, duration_seconds=2), lambda f: None, lambda: None)


@pytest.mark.parametrize("duration", [48, 0, "8"])
def test_a_stable_audio_length_past_its_limit_is_refused_before_any_request(fake, make_tier, tmp_path, duration):
    with pytest.raises(BadRequest, match="duration_seconds"):
        make_tier().run(sao_job(tmp_path, duration_seconds=duration), lambda f: None, lambda: None)
    assert fake.requests == []


def test_stable_audio_open_is_offered_only_where_a_model_is_configured_for_it(fake, make_tier, tmp_path):
    default = make_tier()
    assert default.offers_model("generate", "stable-audio-open") and default.offers_model("generate", "")
    musicgen_only = make_tier(models={"generate": "meta/musicgen"})
    assert not musicgen_only.offers_model("generate", "stable-audio-open")
    assert not musicgen_only.offers_model("generate", "stabilityai/stable-audio-open-1.0")
    with pytest.raises(BadRequest, match="stable_audio"):
        musicgen_only.run(sao_job(tmp_path, duration_seconds=2), lambda f: None, lambda: None)
    sao_only = make_tier(models={"stable_audio": f"stackadoc/stable-audio-open-1.0:{SAO_VERSION}"})
    assert sao_only.offers_model("generate", "stable-audio-open")
    assert not sao_only.offers_model("generate", "facebook/musicgen-small")
    assert fake.requests == []
