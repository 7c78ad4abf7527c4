"""Replicate as a tier: Demucs stems; MusicGen, Stable Audio Open, AudioGen and Riffusion
generation; Whisper transcription; Chatterbox speech; RVC voice conversion, on hosted GPUs.
(The schemas each model's input is built against, with where they were read: docs/cloud-models.md.)

Wire protocol (`shared/reference/cloud-tiers.md`, section 1, from replicate-python, the Stainless
beta client and Replicate's HTTP reference):

- `Authorization: Bearer <token>`, sent only to the API's own origin (never to output hosts).
- Create: `POST /v1/models/{owner}/{name}/predictions` `{"input"}` for official models, or
  `POST /v1/predictions` `{"version": "<64-hex>", "input"}`; both answer 201 with the prediction.
  `Prefer: wait=N` (1-60) holds the request up to N s and echoes `Preference-Applied`; we send it
  when the job should finish within `wait_seconds`. `Cancel-After: 1m30s` (minimum 5 s) is the
  server-side deadline: past it a prediction that has not started is `aborted` (not billed), a
  running one `canceled`.
- Status: `starting` -> `processing` -> `succeeded` | `failed` | `canceled` | `aborted`. We poll
  `urls.get` with exponential backoff (`poll_initial_seconds` -> `poll_max_seconds`).
- Inputs over `inline_limit_bytes` go up first through `POST /v1/files` (multipart `content`);
  smaller ones travel inline as `data:` URIs. Outputs come back as https URLs or `data:` URIs.
- Errors are RFC 7807 problems (`detail`, 422 adds `invalid_fields`). 429 honours `Retry-After`
  (seconds or HTTP date, up to 60 s); 429, 5xx, timeouts and malformed bodies are retried at most
  `max_retries` times.
- Create has no idempotency key, so a create whose answer is lost (timeout, 5xx, a malformed
  201) is never simply sent again: we list `GET /v1/predictions?created_after=<just before the
  POST>` and adopt our own prediction if it is there. Ours carries a marker the reference
  recommends, a unique query parameter on its `webhook` URL; the documented prediction object does
  not echo `webhook` (⚠), so when the listing lacks it we match on model/version plus the exact
  input we sent (an uploaded file's URL is unique per job).
- API data is deleted an hour after a run (`data_removed: true`, `output: null`): NotFound.
"""

from __future__ import annotations

import base64
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes, urlencode, urlsplit

import httpx

from bridge.errors import BadRequest, BridgeError, ConfigError, Forbidden, NotFound, Unavailable
from engines.cloud.base import (
    AUDIOGEN,
    CHATTERBOX,
    RIFFUSION,
    CheckCancelled,
    Progress,
    Tier,
    TierJob,
    TierResult,
)
from engines.cloud.http import (
    EXTENSION_TYPES,
    Deadline,
    TierClient,
    TransportFailed,
    audio_extension,
    check_offered,
    error_for_status,
    malformed,
    never_cancelled,
    read_input,
    retry_after_seconds,
    safe_name,
    scrub,
    sniff_audio,
    wait,
    write_output,
)
from engines.stable_audio import STABLE_AUDIO_OPEN, is_stable_audio

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.replicate.com"
REPLICATE_TASKS = ("stems", "generate", "transcribe")
# More generate models: jobs that ask for one (params.model_family) run it.
STABLE_AUDIO = "stable_audio"
# Models whose key is not a task: the key -> the task it serves. AudioGen and Riffusion are generate
# models, Chatterbox is this tier's only tts model, RVC its only voice model.
RVC = "rvc"
MODEL_TASKS: dict[str, str] = {
    **{task: task for task in REPLICATE_TASKS},
    STABLE_AUDIO: "generate", AUDIOGEN: "generate", RIFFUSION: "generate", CHATTERBOX: "tts", RVC: "voice",
}
MODEL_KEYS = tuple(MODEL_TASKS)

# Model refs: "owner/name" runs an official model through its model-scoped endpoint;
# "owner/name:<64-hex>" or "<64-hex>" pins a version; "owner/name:latest" (our own spelling)
# resolves the model's latest version once per tier and pins it for the tier's lifetime.
DEFAULT_MODELS: dict[str, str] = {
    # ⚠ A community model: it needs a version. The reference shows cjwbw/demucs at 25a17310…, cut
    # short, so we resolve the latest; pin the full id in config for a schema that cannot move.
    # (The strategy document says "cjwbw/htdemucs"; the reference documents cjwbw/demucs.)
    "stems": "cjwbw/demucs:latest",
    # Official (the model-scoped endpoint answers for it; it is the strategy document's choice).
    "generate": "meta/musicgen",
    # ⚠ The reference shows version c7a9a6d5… (cut short) and does not say whether it is official.
    "transcribe": "openai/whisper:latest",
    # Stable Audio Open 1.0 itself (the weights generate runs locally), a community model: pinned to
    # the version whose API page docs/cloud-models.md records. Stability's official
    # stability-ai/stable-audio-2.5 is another, closed model with another schema.
    STABLE_AUDIO: "stackadoc/stable-audio-open-1.0:49b1d4f06f69989dd2c8252d455d2deebaa3c3e3e894694b8aed301c69e75913",
    # The models below are community models pinned to the versions whose schemas docs/cloud-models.md
    # records: AudioGen medium (sound effects), Riffusion v1, Chatterbox (English), RVC v2 (AICoverGen).
    AUDIOGEN: "sepal/audiogen:154b3e5141493cb1b8cec976d9aa90f2b691137e39ad906d2421b74c2a8c52b8",
    RIFFUSION: "riffusion/riffusion:8cf61ea6c56afd61d8f5b9ffd14d7c216c0a93844ce2d82ac1c9ecc9c7f24e05",
    CHATTERBOX: "resemble-ai/chatterbox:1b8422bc49635c20d0a84e387ed20879c0dd09254ecdb4e75dc4bec10ff94e97",
    RVC: "zsxkib/realistic-voice-cloning:0a9c7c558af4c0f20667c1bd1260ce32a2879944a0b9e44e1398660c077b1550",
}

# Documented inputs (reference, "Model slugs"). Options in job.params under these names pass
# through; everything else in job.params is ours and is mapped or ignored, so the same job can
# run locally or here.
DEMUCS_MODELS = ("htdemucs", "htdemucs_ft", "htdemucs_6s", "hdemucs_mmi", "mdx", "mdx_q", "mdx_extra", "mdx_extra_q")
DEMUCS_STEMS = ("vocals", "bass", "drums", "guitar", "piano", "other")  # htdemucs_6s
DEMUCS_4_STEMS = ("vocals", "bass", "drums", "other")  # every other model
DEMUCS_OPTIONS = ("shifts", "overlap", "clip_mode", "float32")
MUSICGEN_OPTIONS = (
    "model_version", "continuation", "continuation_start", "continuation_end", "multi_band_diffusion",
    "normalization_strategy", "top_k", "top_p", "temperature", "classifier_free_guidance", "seed",
)
MUSICGEN_MAX_SECONDS = 30
# stackadoc/stable-audio-open-1.0: seconds_total is an integer, at most 47; our names map to its own.
STABLE_AUDIO_MAX_SECONDS = 47
STABLE_AUDIO_OPTIONS = {"steps": "steps", "guidance_scale": "cfg_scale", "negative_prompt": "negative_prompt",
                        "seed": "seed"}
WHISPER_OPTIONS = ("model", "translate", "temperature", "initial_prompt", "condition_on_previous_text")
# sepal/audiogen: duration is a number of seconds in 1..10; classifier_free_guidance an integer.
AUDIOGEN_MIN_SECONDS, AUDIOGEN_MAX_SECONDS = 1, 10
AUDIOGEN_OPTIONS = {"top_k": "top_k", "temperature": "temperature"}
# riffusion/riffusion makes one spectrogram image: 512 columns, about 5.1 s of audio. A job asks for at
# most RIFFUSION_SECONDS (the job trims the clip to its exact length; nothing is looped).
RIFFUSION_SECONDS = 5.0
RIFFUSION_OPTIONS = {"steps": "num_inference_steps", "prompt_b": "prompt_b", "alpha": "alpha",
                     "denoising": "denoising", "seed_image": "seed_image_id"}
# resemble-ai/chatterbox: exaggeration 0.25..2, cfg_weight 0.2..1, temperature 0.05..5, seed (0: random).
CHATTERBOX_OPTIONS = ("exaggeration", "cfg_weight", "temperature", "seed")
# zsxkib/realistic-voice-cloning: the voices it ships (rvc_model's enum); CUSTOM with a download URL
# runs any RVC v2 voice (a .zip holding the .pth and .index).
RVC_VOICES = ("Squidward", "MrKrabs", "Plankton", "Drake", "Vader", "Trump", "Biden", "Obama", "Guitar", "Voilin")
RVC_CUSTOM = "CUSTOM"
RVC_MAX_SEMITONES = 24

# The Prefer: wait decision. ⚠ Run times are guesses anchored on the strategy
# document ("Demucs (HTDemucs) 10-60s"; "Replicate 500ms-2s" latency) and say nothing about cold
# starts of community models: (fixed seconds, seconds per second of audio in or out).
RUN_SECONDS: dict[str, tuple[float, float]] = {"stems": (10.0, 0.15), "generate": (10.0, 2.0), "transcribe": (5.0, 0.1),
                                               "tts": (5.0, 0.5), "voice": (20.0, 0.5)}
DEFAULT_GENERATE_SECONDS = 8  # MusicGen's documented default duration

TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
STATUSES = TERMINAL | {"starting", "processing"}
MIN_CANCEL_AFTER_SECONDS = 5
MAX_WAIT_SECONDS = 60
RUN_LIMIT_SECONDS = 35 * 60  # Replicate stops runs at 30 min; past that, stop polling
DEADLINE_GRACE_SECONDS = 30.0  # how long past Cancel-After we still wait for its verdict
PROGRESS_CAP = 0.95
# Listing from a little before the POST: the server's clock may run behind ours.
CLOCK_SKEW = timedelta(seconds=60)
RECONCILE_PAGES = 5
UPLOAD_BYTES_PER_SECOND = 256 * 1024  # the slowest uplink we plan for when sizing upload timeouts
# Where a webhook would go. `.invalid` never resolves (RFC 6761), so Replicate's deliveries fail
# at once; the URL exists only to carry our marker. ⚠ Whether the API refuses such a host is
# unconfirmed: point `webhook_url` at a real receiver, or pass None to match on input alone.
DEFAULT_WEBHOOK_URL = "https://flowstate.invalid/replicate/webhook"
MARKER_PARAM = "flowstate_marker"
AUDIO_PLACEHOLDER = "<the input audio>"  # where the audio's URI goes once it is known
_TQDM = re.compile(r"^\s*(\d+)%\s*\|.+?\|\s*(\d+)/(\d+)", re.MULTILINE)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SLUG = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


@dataclass(frozen=True)
class ModelRef:
    """A parsed model ref (see DEFAULT_MODELS for the forms)."""

    slug: str | None  # "owner/name"; None for a bare version id
    version: str | None  # 64-hex, "latest", or None: an official model

    @classmethod
    def parse(cls, ref: str, where: str) -> ModelRef:
        slug, _, version = ref.partition(":") if isinstance(ref, str) else ("", "", "")
        if _HEX64.match(slug) and not version:
            return cls(None, slug)
        if _SLUG.match(slug) and (not version or version == "latest" or _HEX64.match(version)):
            return cls(slug, version or None)
        raise ConfigError(
            f"{where} is {ref!r}; expected 'owner/name' (an official model), 'owner/name:<64-hex version>', "
            "'owner/name:latest' or a 64-hex version id"
        )


@dataclass
class _Plan:
    """One create request, kept whole so that a lost answer can be matched against the listing."""

    ref: ModelRef
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    timeout_seconds: float
    cancel_after_seconds: int | None


class _Transient(Exception):
    """A failure another try may fix (429, 5xx, timeout, malformed body). `applied`: the server
    may have acted on the request, so a create must be reconciled before it is sent again."""

    def __init__(self, error: Unavailable, *, retry_after: float | None = None, applied: bool = True) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after
        self.applied = applied


class _Clock:
    """One run's deadline, cancel checks and progress. Replicate reports no fractions, so progress
    is time against the expected run time, or tqdm's percentage in the logs when that is further,
    capped below 1 until the outputs are in."""

    def __init__(self, progress: Progress, check_cancelled: CheckCancelled, expected_seconds: float,
                 deadline_seconds: float | None) -> None:
        self._progress = progress
        self._check = check_cancelled
        self._expected = max(expected_seconds, 1.0)
        self.started = time.monotonic()
        self.deadline = Deadline(deadline_seconds)
        limit = RUN_LIMIT_SECONDS if deadline_seconds is None else deadline_seconds + DEADLINE_GRACE_SECONDS
        self.give_up = Deadline(limit)
        self._created: float | None = None
        self._reported = 0.0
        self._from_logs = 0.0

    def creating(self) -> None:
        """The create is going out: progress starts at 0 and counts from now (a held create
        keeps reporting while the server holds it)."""
        self._created = time.monotonic()
        self._progress(0.0)

    def logs(self, text: Any) -> None:
        matches = _TQDM.findall(text) if isinstance(text, str) else []
        if matches:
            self._from_logs = int(matches[-1][0]) / 100.0

    def tick(self) -> None:
        """The check_cancelled every wait and request calls: raises on cancel, else reports."""
        self._check()
        if self._created is None:
            return
        fraction = min(PROGRESS_CAP, max((time.monotonic() - self._created) / self._expected, self._from_logs))
        if fraction >= self._reported + 0.01:
            self._reported = fraction
            self._progress(fraction)


class ReplicateTier(Tier):
    """Runs stems (Demucs), generate (MusicGen) and transcribe (Whisper) jobs on Replicate.

    `models` maps task -> model ref and names exactly the tasks offered (default DEFAULT_MODELS).
    `price_per_second` maps a model's "owner/name" to USD per second of `metrics.predict_time`;
    without an entry `TierResult.cost_usd` is None (the router then charges what it expected).
    The token goes only into the Authorization header to the API's own origin; it is in no
    message, log line or repr.
    """

    def __init__(
        self,
        token: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        models: dict[str, str] | None = None,
        timeout_seconds: float = 30.0,
        wait_seconds: int = 60,
        poll_initial_seconds: float = 0.5,
        poll_max_seconds: float = 5.0,
        inline_limit_bytes: int = 256 * 1024,
        price_per_second: dict[str, float] | None = None,
        name: str = "replicate",
        max_retries: int = 3,
        webhook_url: str | None = DEFAULT_WEBHOOK_URL,
    ) -> None:
        if not isinstance(token, str) or not token:
            raise ConfigError(f"{name}: token must be a non-empty string")
        chosen = dict(DEFAULT_MODELS if models is None else models)
        refs: dict[str, ModelRef] = {}
        for task, ref in chosen.items():
            if task not in MODEL_KEYS:
                raise ConfigError(f"{name}: models key {task!r} is not a task this tier runs; "
                                  f"expected one of {MODEL_KEYS}")
            refs[task] = ModelRef.parse(ref, f"{name}: models[{task!r}]")
        checks = (
            ("timeout_seconds", timeout_seconds, timeout_seconds > 0, "> 0"),
            ("wait_seconds", wait_seconds, 0 <= wait_seconds <= MAX_WAIT_SECONDS,
             f"0..{MAX_WAIT_SECONDS} (0: never hold)"),
            ("poll_initial_seconds", poll_initial_seconds, poll_initial_seconds > 0, "> 0"),
            ("poll_max_seconds", poll_max_seconds, poll_max_seconds >= poll_initial_seconds, ">= poll_initial_seconds"),
            ("inline_limit_bytes", inline_limit_bytes, inline_limit_bytes >= 0, ">= 0"),
            ("max_retries", max_retries, max_retries >= 0, ">= 0"),
        )
        for key, value, ok, expected in checks:
            if not ok:
                raise ConfigError(f"{name}: {key} is {value!r}, expected {expected}")
        prices = dict(price_per_second or {})
        for slug, price in prices.items():
            if not isinstance(price, (int, float)) or price < 0:
                raise ConfigError(f"{name}: price_per_second[{slug!r}] is {price!r}, expected a number >= 0")
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.models = chosen
        # A model whose key is not a task still offers its task (to jobs that ask for it).
        self.tasks = frozenset(MODEL_TASKS[key] for key in chosen)
        self.offers_stable_audio = STABLE_AUDIO in chosen
        self.named_models = frozenset((MODEL_TASKS[key], key) for key in (AUDIOGEN, RIFFUSION, CHATTERBOX)
                                      if key in chosen)
        self.timeout_seconds = float(timeout_seconds)
        self.wait_seconds = int(wait_seconds)
        self.poll_initial_seconds = float(poll_initial_seconds)
        self.poll_max_seconds = float(poll_max_seconds)
        self.inline_limit_bytes = int(inline_limit_bytes)
        self.price_per_second = prices
        self.max_retries = int(max_retries)
        self.webhook_url = webhook_url
        self._refs = refs
        self._origin = _origin(self.base_url)
        self._auth = {"Authorization": f"Bearer {token}"}
        # No client-wide headers: output URLs live on other hosts, which must never see the token.
        self._http = TierClient(name, {}, secrets=(token,))
        self._lock = threading.Lock()
        self._latest: dict[str, str] = {}  # "owner/name" -> the version "latest" resolved to
        self._claimed: set[str] = set()  # predictions runs of this tier own right now

    def __repr__(self) -> str:
        return f"ReplicateTier(name={self.name!r}, base_url={self.base_url!r}, models={self.models!r})"

    # -- the Tier interface -------------------------------------------------------------------

    def offers_model(self, task: str, model: str) -> bool:
        """Stems go to Demucs with the model name as `model_name`: only the names Demucs knows."""
        if task == "stems":
            return self.supports(task) and (not model or model in DEMUCS_MODELS)
        if task == "generate":  # Stable Audio Open, AudioGen, Riffusion to their own models, else MusicGen
            if is_stable_audio(model):
                return STABLE_AUDIO in self._refs
            return model in self._refs if model in (AUDIOGEN, RIFFUSION) else "generate" in self._refs
        if task == "tts":  # Chatterbox is the only voice this tier speaks with
            return model == CHATTERBOX and CHATTERBOX in self._refs
        return self.supports(task)

    def model_for(self, task: str, model: str) -> str:
        """Stems: the Demucs model asked for, run by the stems model (cjwbw/demucs); Stable Audio Open: its
        own model; else the task's model."""
        if task == "stems":
            return model or "htdemucs"
        if task == "generate" and is_stable_audio(model):
            return self.models.get(STABLE_AUDIO, model)
        if task == "voice":
            return model  # the voice the job names is what its output sounds like (and whose terms apply)
        return self.models.get(_key_for(task, model), model)

    def run(self, job: TierJob, progress: Progress, check_cancelled: CheckCancelled) -> TierResult:
        """Create a prediction for `job`, follow it to the end, write its outputs into `job.work_dir`."""
        check_offered(self.name, self.tasks, job.task)
        key = _model_key(job)
        if key not in self._refs:
            raise BadRequest(f"{self.name}: {job.task} with params.model_family {job.params.get('model_family')!r} "
                             f"needs models[{key!r}], which this tier does not configure")
        clock = _Clock(progress, check_cancelled, self._run_seconds(job), job.deadline_seconds)
        ref = self._refs[key]
        clock.tick()
        # Build (and so check) the input before anything goes out; the audio's URI comes after.
        model_input = INPUT_BUILDERS[key](job, AUDIO_PLACEHOLDER if job.input_path else None, self.name)
        sent_as = None
        if job.input_path is not None:
            uri, sent_as = self._audio_uri(job, clock)
            model_input = {key: uri if value == AUDIO_PLACEHOLDER else value for key, value in model_input.items()}
        plan = self._plan(job, ref, model_input, clock)
        clock.creating()
        prediction, applied = self._create(plan, clock)
        with self._lock:
            self._claimed.add(prediction["id"])
        try:
            prediction = self._follow(prediction, clock)
        except BaseException:
            self._cancel_quietly(prediction)
            raise
        finally:
            with self._lock:
                self._claimed.discard(prediction["id"])
        result = TierResult(tier=self.name)
        result.outputs, result.data = self._finish(job, plan, prediction, clock)
        result.seconds = time.monotonic() - clock.started
        given = prediction.get("metrics")
        metrics = given if isinstance(given, dict) else {}
        predict_time = metrics.get("predict_time")
        price = self.price_per_second.get(ref.slug or "")
        if isinstance(predict_time, (int, float)) and price is not None:
            result.cost_usd = float(predict_time) * price
        result.details = {
            "prediction_id": prediction["id"],
            "model": prediction.get("model") or ref.slug,
            "version": prediction.get("version") or ref.version,
            "predict_time_seconds": predict_time,
            "preference_applied": applied,
            "cancel_after_seconds": plan.cancel_after_seconds,
            "input_sent_as": sent_as,
        }
        progress(1.0)
        return result

    def health(self) -> bool:
        """GET /v1/account: answers 200 when the API is up and accepts the token."""
        try:
            response = self._send("GET", "/v1/account", never_cancelled, timeout=min(self.timeout_seconds, 5.0))
        except _Transient as transient:
            log.info("%s: health probe failed: %s", self.name, transient.error.message)
            return False
        if response.status_code != 200:
            log.info("%s: health probe answered HTTP %d", self.name, response.status_code)
        return response.status_code == 200

    def close(self) -> None:
        self._http.close()

    # -- creating -----------------------------------------------------------------------------

    def _plan(self, job: TierJob, ref: ModelRef, model_input: dict[str, Any], clock: _Clock) -> _Plan:
        body: dict[str, Any] = {"input": model_input}
        if ref.version is None:
            path = f"/v1/models/{ref.slug}/predictions"
        else:
            path = "/v1/predictions"
            body["version"] = self._version(ref, clock)
        if self.webhook_url:
            separator = "&" if "?" in self.webhook_url else "?"
            body["webhook"] = f"{self.webhook_url}{separator}{urlencode({MARKER_PARAM: uuid.uuid4().hex})}"
            body["webhook_events_filter"] = ["completed"]  # one delivery (plus retries), not one per log line
        headers: dict[str, str] = {}
        timeout = self.timeout_seconds
        if self.wait_seconds and self._run_seconds(job) <= self.wait_seconds:
            headers["Prefer"] = f"wait={self.wait_seconds}"
            timeout += self.wait_seconds  # the server holds the answer that long
        cancel_after = None
        remaining = clock.deadline.remaining()
        if remaining is not None:
            if remaining <= 0:
                raise Unavailable(f"{self.name}: the deadline passed before the prediction was created")
            cancel_after = max(MIN_CANCEL_AFTER_SECONDS, math.ceil(remaining))
            headers["Cancel-After"] = format_duration(cancel_after)
        return _Plan(ref, path, body, headers, timeout, cancel_after)

    def _create(self, plan: _Plan, clock: _Clock) -> tuple[dict[str, Any], str | None]:
        """The new prediction and its Preference-Applied header. A lost answer is reconciled
        against the listing before another POST, so one job never makes two predictions."""
        since = datetime.now(UTC)
        in_doubt = False  # a POST may have made a prediction we have not seen
        attempt = 0
        try:
            while True:
                try:
                    in_doubt = True
                    response = self._send("POST", plan.path, clock.tick, timeout=plan.timeout_seconds,
                                          json=plan.body, headers=plan.headers)
                    prediction = self._read_prediction(response, f"POST {plan.path}")
                    return prediction, response.headers.get("preference-applied")
                except _Transient as transient:
                    in_doubt = transient.applied
                    last_try = attempt >= self.max_retries
                    if not last_try:
                        self._pause(transient, attempt, clock)
                    if transient.applied:
                        found = self._reconcile(plan, since, clock)
                        if found is not None:
                            return found, None
                    if last_try:
                        raise transient.error from None
                    attempt += 1
        except (BadRequest, Forbidden, NotFound):
            raise  # refused outright: that POST made nothing
        except BaseException:
            # Cancelled, out of tries or out of time while a create may have gone through: the
            # prediction would run (and bill) unwatched, so look for it and cancel it.
            if in_doubt:
                self._cancel_strays(plan, since)
            raise

    def _reconcile(self, plan: _Plan, since: datetime, clock: _Clock) -> dict[str, Any] | None:
        """Our prediction created since `since`, if the listing has it; extras carrying our
        marker (a second POST that also lost its answer) are cancelled."""
        url = f"{self.base_url}/v1/predictions"
        params: dict[str, str] | None = {"created_after": _iso(since - CLOCK_SKEW)}
        ours: list[dict[str, Any]] = []
        for _ in range(RECONCILE_PAGES):
            page = self._call("GET", url, clock, self._read_page, params=params)
            ours += [p for p in page["results"] if self._is_ours(p, plan)]
            next_url, params = page.get("next"), None
            if not isinstance(next_url, str) or _origin(next_url) != self._origin:
                break
            url = next_url
        if not ours:
            log.info("%s: no prediction from the lost create is listed", self.name)
            return None
        ours.sort(key=lambda p: str(p.get("created_at", "")))
        for extra in ours[1:]:
            if extra.get("webhook") == plan.body.get("webhook"):
                self._cancel_quietly(extra)
        log.warning("%s: the create's answer was lost; adopting prediction %s instead of creating another",
                    self.name, ours[0]["id"])
        return ours[0]

    def _is_ours(self, prediction: dict[str, Any], plan: _Plan) -> bool:
        with self._lock:
            if prediction.get("id") in self._claimed:
                return False
        if "webhook" in prediction and "webhook" in plan.body:
            return prediction["webhook"] == plan.body["webhook"]
        if "version" in plan.body:
            if prediction.get("version") != plan.body["version"]:
                return False
        elif prediction.get("model") != plan.ref.slug:
            return False
        sent, seen = plan.body["input"], prediction.get("input")
        return isinstance(seen, dict) and all(seen.get(key) == value for key, value in sent.items())

    def _cancel_strays(self, plan: _Plan, since: datetime) -> None:
        """Best effort, after a cancel during a create: find the prediction it made and cancel it."""
        quiet = _Clock(lambda _: None, never_cancelled, 1.0, min(self.timeout_seconds, 10.0))
        try:
            found = self._reconcile(plan, since, quiet)
        except BridgeError as err:
            log.warning("%s: could not look for the prediction a cancelled create made: %s", self.name, err.message)
            return
        if found is not None:
            self._cancel_quietly(found)

    def _version(self, ref: ModelRef, clock: _Clock) -> str:
        """The version id to send: pinned, or "latest" resolved once through GET /v1/models/{o}/{n}."""
        if ref.version != "latest":
            return str(ref.version)
        with self._lock:
            known = self._latest.get(str(ref.slug))
        if known:
            return known
        model = self._call("GET", f"{self.base_url}/v1/models/{ref.slug}", clock, self._read_object)
        latest = model.get("latest_version")
        version = latest.get("id") if isinstance(latest, dict) else None
        if not isinstance(version, str) or not _HEX64.match(version):
            raise Unavailable(f"{self.name}: GET /v1/models/{ref.slug} named no latest version (got {version!r})")
        log.info("%s: %s:latest is version %s; pin it in config to keep its input schema", self.name, ref.slug, version)
        with self._lock:
            self._latest[str(ref.slug)] = version
        return version

    # -- following ----------------------------------------------------------------------------

    def _follow(self, prediction: dict[str, Any], clock: _Clock) -> dict[str, Any]:
        """Poll until the prediction is terminal, backing off from poll_initial to poll_max."""
        delay = self.poll_initial_seconds
        while prediction["status"] not in TERMINAL:
            if clock.give_up.remaining() == 0:
                raise Unavailable(f"{self.name}: prediction {prediction['id']} is still {prediction['status']} "
                                  f"after {time.monotonic() - clock.started:.0f} s; giving up")
            clock.logs(prediction.get("logs"))
            wait(delay, clock.tick)
            url = self._get_url(prediction)
            # B023: _call runs the lambda before this iteration ends.
            prediction = self._call("GET", url, clock, lambda r: self._read_prediction(r, f"GET {_path(url)}"))  # noqa: B023
            delay = min(delay * 2, self.poll_max_seconds)
        return prediction

    def _get_url(self, prediction: dict[str, Any]) -> str:
        urls = prediction.get("urls")
        url = urls.get("get") if isinstance(urls, dict) else None
        # Only our own origin gets the token: a urls.get elsewhere is not followed.
        if isinstance(url, str) and _origin(url) == self._origin:
            return url
        return f"{self.base_url}/v1/predictions/{prediction['id']}"

    def _cancel_quietly(self, prediction: dict[str, Any]) -> None:
        """POST urls.cancel, best effort: a failure is logged, never raised."""
        if prediction.get("status") in TERMINAL:
            return
        url = f"{self.base_url}/v1/predictions/{prediction['id']}/cancel"
        try:
            response = self._send("POST", url, never_cancelled, timeout=min(self.timeout_seconds, 5.0))
        except _Transient as transient:
            log.warning("%s: could not cancel prediction %s: %s", self.name, prediction["id"], transient.error.message)
            return
        if response.status_code >= 300:
            log.warning("%s: cancelling prediction %s answered HTTP %d", self.name, prediction["id"],
                        response.status_code)
        else:
            log.info("%s: cancelled prediction %s", self.name, prediction["id"])

    # -- finishing ----------------------------------------------------------------------------

    def _finish(self, job: TierJob, plan: _Plan, prediction: dict[str, Any],
                clock: _Clock) -> tuple[dict[str, Path], dict[str, Any]]:
        status, pid = prediction["status"], prediction["id"]
        if status == "failed":
            error = scrub(str(prediction.get("error")), self._http.secrets)
            raise Unavailable(f"{self.name}: prediction {pid} failed: {error}")
        if status == "aborted":
            raise Unavailable(f"{self.name}: prediction {pid} was aborted: its Cancel-After deadline "
                              f"({plan.cancel_after_seconds} s) passed before it started (not billed)")
        if status == "canceled":
            why = (f"its Cancel-After deadline ({plan.cancel_after_seconds} s) passed while it ran"
                   if plan.cancel_after_seconds is not None else "someone else cancelled it")
            raise Unavailable(f"{self.name}: prediction {pid} was canceled: {why}")
        output = prediction.get("output")
        if prediction.get("data_removed") or output is None:
            raise NotFound(f"{self.name}: the output of prediction {pid} has expired (Replicate deletes API data "
                           "an hour after a run)")
        return OUTPUT_READERS[_model_key(job)](self, job, pid, output, clock)

    def _stems(self, job: TierJob, pid: str, output: Any, clock: _Clock) -> tuple[dict[str, Path], dict[str, Any]]:
        if not isinstance(output, dict):
            raise self._malformed(pid, f"Demucs output is {type(output).__name__}, expected an object of stem -> URI")
        wanted = set(job.params.get("stems") or []) or None
        outputs: dict[str, Path] = {}
        for stem, uri in output.items():
            # Stems the model does not make (guitar, piano for 4-stem models) come back null.
            if uri is None or (wanted is not None and stem not in wanted):
                continue
            outputs[stem] = self._download(uri, Path(job.work_dir), safe_name(stem, "stem"), pid, clock)
        missing = sorted((wanted or set()) - set(outputs))
        if missing:
            raise self._malformed(pid, f"Demucs returned no {missing}")
        if not outputs:
            raise self._malformed(pid, "Demucs returned no stems")
        return outputs, {}

    def _generated(self, job: TierJob, pid: str, output: Any, clock: _Clock) -> tuple[dict[str, Path], dict[str, Any]]:
        if isinstance(output, list) and len(output) == 1:
            output = output[0]  # some versions answer a one-item list
        return self._one_audio(job, pid, output, clock, "MusicGen")

    def _one_audio(self, job: TierJob, pid: str, output: Any, clock: _Clock,
                   model: str) -> tuple[dict[str, Path], dict[str, Any]]:
        """An output schema of one URI string (an audio file) as {"audio": path}; anything else is malformed."""
        if not isinstance(output, str):
            raise self._malformed(pid, f"{model} output is {type(output).__name__}, expected a URI")
        return {"audio": self._download(output, Path(job.work_dir), "output", pid, clock)}, {}

    def _riffusion(self, job: TierJob, pid: str, output: Any, clock: _Clock) -> tuple[dict[str, Path], dict[str, Any]]:
        # Its predictor's Output: {"audio": <wav>, "spectrogram": <jpg>}; only the audio is wanted.
        if not isinstance(output, dict) or not isinstance(output.get("audio"), str):
            raise self._malformed(pid, f"Riffusion output must be an object with an audio URI; got "
                                       f"{type(output).__name__}")
        return self._one_audio(job, pid, output["audio"], clock, "Riffusion")

    def _transcript(self, job: TierJob, pid: str, output: Any, clock: _Clock) -> tuple[dict[str, Path], dict[str, Any]]:
        if not isinstance(output, dict) or not isinstance(output.get("transcription"), str):
            raise self._malformed(pid, "Whisper output must be an object with a transcription string")
        segments = output.get("segments") or []
        if not isinstance(segments, list):
            raise self._malformed(pid, "Whisper segments must be a list")
        data = {
            "text": output["transcription"],
            "segments": [
                {"start": s.get("start"), "end": s.get("end"), "text": str(s.get("text", "")).strip()}
                for s in segments if isinstance(s, dict)
            ],
            "language": output.get("detected_language"),
            "translation": output.get("translation"),
        }
        text = output["transcription"]
        path = write_output(Path(job.work_dir) / "transcript.txt", text.encode("utf-8"))
        return {"transcript": path}, data

    def _download(self, uri: Any, folder: Path, stem: str, pid: str, clock: _Clock) -> Path:
        """Write one output (https URL or data: URI) to folder/stem.<ext>, atomically."""
        if not isinstance(uri, str):
            raise self._malformed(pid, f"an output is {type(uri).__name__}, expected a URI")
        if uri.startswith("data:"):
            try:
                data, content_type = _decode_data_uri(uri)
            except ValueError as err:
                raise self._malformed(pid, f"output {stem!r} is {err}") from err
        elif urlsplit(uri).scheme in ("https", "http"):
            data, content_type = self._call("GET", uri, clock, lambda r: self._read_file(r, pid),
                                            follow_redirects=True)
        else:
            raise self._malformed(pid, f"an output is not an https URL or a data: URI ({uri[:40]!r})")
        extension = audio_extension(content_type, data) or PurePosixPath(urlsplit(uri).path).suffix.lstrip(".")
        if not extension:
            raise self._malformed(pid, f"output {stem!r} is not audio ({content_type!r})")
        return write_output(folder / f"{stem}.{safe_name(extension, 'bin')}", data)

    # -- inputs -------------------------------------------------------------------------------

    def _audio_uri(self, job: TierJob, clock: _Clock) -> tuple[str, str]:
        """(URI for the model's audio input, "data_uri" | "upload"): a data: URI when the whole
        URI fits in inline_limit_bytes, else an upload through POST /v1/files."""
        path = Path(job.input_path)  # type: ignore[arg-type]
        data = read_input(self.name, job)
        mime = EXTENSION_TYPES.get(path.suffix.lower().lstrip(".")) or EXTENSION_TYPES.get(sniff_audio(data) or "")
        if mime is None:
            raise BadRequest(f"{self.name}: input_path {str(path)!r} is not an audio type we can name "
                             f"(expected one of {sorted(EXTENSION_TYPES)})")
        prefix = f"data:{mime};base64,"
        # The limit is on what the API receives: the whole URI, base64 and all (4 chars per 3 bytes).
        if len(prefix) + 4 * math.ceil(len(data) / 3) <= self.inline_limit_bytes:
            return prefix + base64.b64encode(data).decode("ascii"), "data_uri"
        uploaded = self._call(
            "POST", f"{self.base_url}/v1/files", clock, self._read_object,
            timeout=self.timeout_seconds + len(data) / UPLOAD_BYTES_PER_SECOND,
            files={"content": (path.name, data, mime)}, data={"filename": path.name, "type": mime},
        )
        urls = uploaded.get("urls")
        url = urls.get("get") if isinstance(urls, dict) else None
        if not isinstance(url, str):
            raise Unavailable(f"{self.name}: POST /v1/files answered no urls.get")
        log.info("%s: uploaded %s (%d bytes) as file %s", self.name, path.name, len(data), uploaded.get("id"))
        return url, "upload"

    def _run_seconds(self, job: TierJob) -> float:
        fixed, per_second = RUN_SECONDS.get(job.task, (10.0, 1.0))
        if job.task == "generate":
            length = job.params.get("duration_seconds", DEFAULT_GENERATE_SECONDS)
            length = length if isinstance(length, (int, float)) else DEFAULT_GENERATE_SECONDS
        else:
            length = job.audio_seconds
        return fixed + per_second * float(length)

    # -- HTTP ---------------------------------------------------------------------------------

    def _send(self, method: str, url: str, tick: Callable[[], None], *, timeout: float | None = None,
              headers: Mapping[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        """One request; the token goes only to our own origin. Transport failures become _Transient."""
        url = url if "://" in url else f"{self.base_url}{url}"
        merged = dict(headers or {})
        if _origin(url) == self._origin:
            merged.update(self._auth)
        try:
            return self._http.send(method, url, timeout_seconds=timeout or self.timeout_seconds,
                                   check_cancelled=tick, headers=merged, **kwargs)
        except TransportFailed as err:
            raise _Transient(err, applied=err.request_sent) from err

    def _call(self, method: str, url: str, clock: _Clock, read: Callable[[httpx.Response], T], *,
              timeout: float | None = None, **kwargs: Any) -> T:
        """`read(response)` of a request that is safe to repeat, retried on _Transient failures."""
        attempt = 0
        while True:
            try:
                return read(self._send(method, url, clock.tick, timeout=timeout, **kwargs))
            except _Transient as transient:
                if attempt >= self.max_retries:
                    raise transient.error from None
                self._pause(transient, attempt, clock)
                attempt += 1

    def _pause(self, transient: _Transient, attempt: int, clock: _Clock) -> None:
        """Wait before another try: Retry-After when the server gave one, else the backoff."""
        if transient.retry_after is not None:
            delay = transient.retry_after
        else:
            delay = min(self.poll_max_seconds, self.poll_initial_seconds * 2**attempt)
        if not clock.deadline.allows(delay):
            raise Unavailable(f"{transient.error.message}; waiting {delay:.1f} s to try again would pass the "
                              f"deadline ({clock.deadline.remaining():.1f} s left)") from None
        log.info("%s: %s; trying again in %.2f s", self.name, transient.error.message, delay)
        wait(delay, clock.tick)

    def _raise_for_status(self, response: httpx.Response, what: str) -> None:
        status = response.status_code
        if status < 300:
            return
        message = self._describe(response)
        if status in (408, 429) or status >= 500:
            # A 429 was refused before any work; a 5xx or 408 may have been acted on.
            raise _Transient(Unavailable(f"{self.name}: {what}: HTTP {status}: {message}"),
                             retry_after=retry_after_seconds(response.headers), applied=status != 429)
        raise error_for_status(self.name, status, f"{what}: {message}")

    def _json(self, response: httpx.Response, what: str) -> Any:
        self._raise_for_status(response, what)
        try:
            return response.json()
        except ValueError:
            raise _Transient(Unavailable(f"{self.name}: {what}: HTTP {response.status_code} with a malformed "
                                         f"body ({response.headers.get('content-type', 'no content type')})")) from None

    def _read_object(self, response: httpx.Response) -> dict[str, Any]:
        what = f"{response.request.method} {_path(str(response.request.url))}"
        body = self._json(response, what)
        if not isinstance(body, dict):
            raise _Transient(Unavailable(f"{self.name}: {what}: expected a JSON object, got {type(body).__name__}"))
        return body

    def _read_prediction(self, response: httpx.Response, what: str) -> dict[str, Any]:
        body = self._read_object(response)
        if not isinstance(body.get("id"), str) or body.get("status") not in STATUSES:
            raise _Transient(Unavailable(f"{self.name}: {what}: not a prediction (id {body.get('id')!r}, "
                                         f"status {body.get('status')!r})"))
        return body

    def _read_page(self, response: httpx.Response) -> dict[str, Any]:
        body = self._read_object(response)
        if not isinstance(body.get("results"), list):
            raise _Transient(Unavailable(f"{self.name}: GET /v1/predictions: no results list"))
        return body

    def _read_file(self, response: httpx.Response, pid: str) -> tuple[bytes, str | None]:
        if response.status_code in (404, 410):
            raise NotFound(f"{self.name}: an output of prediction {pid} has expired (HTTP {response.status_code})")
        self._raise_for_status(response, f"GET output of {pid}")
        return response.content, response.headers.get("content-type")

    def _describe(self, response: httpx.Response) -> str:
        """An RFC 7807 problem as one line: title, detail and any invalid_fields, scrubbed."""
        message = self._http.message(response)
        try:
            body = response.json()
        except ValueError:
            return message
        if not isinstance(body, dict):
            return message
        title = body.get("title")
        if isinstance(title, str) and title and title not in message:
            message = f"{title}: {message}"
        fields = body.get("invalid_fields")
        described = [f"{f.get('field')}: {f.get('description')}" for f in fields or []
                     if isinstance(f, dict) and str(f.get("description")) not in message]  # not said twice
        if described:
            message = f"{message} (invalid: {'; '.join(described)})"
        return scrub(message, self._http.secrets)

    def _malformed(self, pid: str, what: str) -> Unavailable:
        return malformed(self.name, f"prediction {pid}", what)


# -- inputs per model ---------------------------------------------------------------------------


def _options(params: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {key: params[key] for key in names if params.get(key) is not None}


def _require_audio(audio: str | None, task: str, tier: str) -> str:
    if audio is None:
        raise BadRequest(f"{tier}: {task} needs an input audio file; input_path is None")
    return audio


def demucs_input(job: TierJob, audio: str | None, tier: str) -> dict[str, Any]:
    """cjwbw/demucs: audio, model_name, stem ("none" or one stem to isolate), output_format, ..."""
    params = job.params
    model = params.get("model") or "htdemucs"
    if model not in DEMUCS_MODELS:
        raise BadRequest(f"{tier}: params.model is {model!r}; expected one of {', '.join(DEMUCS_MODELS)}")
    makes = DEMUCS_STEMS if model == "htdemucs_6s" else DEMUCS_4_STEMS
    two_stems = params.get("two_stems") or "none"
    if two_stems != "none" and two_stems not in makes:
        raise BadRequest(f"{tier}: params.two_stems is {two_stems!r}; {model} makes {', '.join(makes)}")
    unknown = [stem for stem in params.get("stems") or [] if stem not in makes]
    if unknown:
        raise BadRequest(f"{tier}: params.stems {unknown} are not stems of {model} ({', '.join(makes)})")
    return {
        "audio": _require_audio(audio, "stems", tier),
        "model_name": model,
        "stem": two_stems,
        "output_format": "wav",  # lossless, and every tier's outputs must be readable by soundfile
        **_options(params, DEMUCS_OPTIONS),
    }


def musicgen_input(job: TierJob, audio: str | None, tier: str) -> dict[str, Any]:
    """meta/musicgen: prompt, duration (s, at most 30), model_version, seed, ...; input_audio
    (a melody to follow, or the audio to continue) when the job has an input file."""
    params = job.params
    prompt = params.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest(f"{tier}: generate needs params.prompt, a non-empty string; got {prompt!r}")
    duration = params.get("duration_seconds", DEFAULT_GENERATE_SECONDS)
    number = isinstance(duration, (int, float)) and not isinstance(duration, bool)
    if not number or not 1 <= duration <= MUSICGEN_MAX_SECONDS:
        raise BadRequest(f"{tier}: params.duration_seconds is {duration!r}; expected 1..{MUSICGEN_MAX_SECONDS} "
                         "(MusicGen's limit)")
    built: dict[str, Any] = {"prompt": prompt, "duration": math.ceil(duration), "output_format": "wav"}
    built.update(_options(params, MUSICGEN_OPTIONS))
    if audio is not None:
        built["input_audio"] = audio
    return built


def stable_audio_input(job: TierJob, audio: str | None, tier: str) -> dict[str, Any]:
    """stackadoc/stable-audio-open-1.0: prompt, seconds_total (integer, at most 47), steps,
    cfg_scale, negative_prompt, seed; it takes no audio."""
    params = job.params
    prompt = _prompt(job, tier, "Stable Audio Open", audio)
    duration = _duration(job, tier, STABLE_AUDIO_MAX_SECONDS, "Stable Audio Open's limit")
    built: dict[str, Any] = {"prompt": prompt, "seconds_total": math.ceil(duration)}
    for ours, theirs in STABLE_AUDIO_OPTIONS.items():
        if params.get(ours) not in (None, ""):
            built[theirs] = params[ours]
    return built


def audiogen_input(job: TierJob, audio: str | None, tier: str) -> dict[str, Any]:
    """sepal/audiogen: prompt, duration (number, 1..10 s), top_k, top_p, temperature,
    classifier_free_guidance (integer), output_format; it takes no audio."""
    prompt = _prompt(job, tier, "AudioGen", audio)
    duration = _duration(job, tier, AUDIOGEN_MAX_SECONDS, "AudioGen's limit")
    # Shorter than its minimum: it makes 1 s and the job trims to the length asked.
    built: dict[str, Any] = {"prompt": prompt, "duration": max(AUDIOGEN_MIN_SECONDS, duration), "output_format": "wav"}
    built.update({theirs: job.params[ours] for ours, theirs in AUDIOGEN_OPTIONS.items()
                  if job.params.get(ours) is not None})
    if job.params.get("guidance_scale") is not None:
        built["classifier_free_guidance"] = max(1, round(float(job.params["guidance_scale"])))
    return built


def riffusion_input(job: TierJob, audio: str | None, tier: str) -> dict[str, Any]:
    """riffusion/riffusion: prompt_a, prompt_b, alpha, denoising, num_inference_steps, seed_image_id.
    It has no length: one clip of about 5 s, so a job may ask for at most RIFFUSION_SECONDS."""
    prompt = _prompt(job, tier, "Riffusion", audio)
    _duration(job, tier, RIFFUSION_SECONDS, "Riffusion makes one clip of about 5 s; it cannot be longer")
    built: dict[str, Any] = {"prompt_a": prompt}
    built.update({theirs: job.params[ours] for ours, theirs in RIFFUSION_OPTIONS.items()
                  if job.params.get(ours) not in (None, "")})
    return built


def chatterbox_input(job: TierJob, audio: str | None, tier: str) -> dict[str, Any]:
    """resemble-ai/chatterbox: prompt (the text), audio_prompt (a voice clip to speak like),
    exaggeration, cfg_weight, temperature, seed."""
    text = job.params.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BadRequest(f"{tier}: tts needs params.text, a non-empty string; got {text!r}")
    built: dict[str, Any] = {"prompt": text, **_options(job.params, CHATTERBOX_OPTIONS)}
    if audio is not None:
        built["audio_prompt"] = audio
    return built


def rvc_input(job: TierJob, audio: str | None, tier: str) -> dict[str, Any]:
    """zsxkib/realistic-voice-cloning: song_input (the vocal), rvc_model (a shipped voice, or CUSTOM with
    custom_rvc_model_download_url), pitch_change_all (semitones), output_format; its reverb is turned off
    (the DAW owns the effects: a dry converted vocal comes back)."""
    voice = job.params.get("voice")
    if isinstance(voice, str) and voice.startswith("https://"):
        chosen = {"rvc_model": RVC_CUSTOM, "custom_rvc_model_download_url": voice}
    elif voice in RVC_VOICES:
        chosen = {"rvc_model": voice}
    else:
        raise BadRequest(f"{tier}: params.voice is {voice!r}; expected an https URL of an RVC v2 voice model "
                         f"(.zip) or one of the model's voices: {', '.join(RVC_VOICES)}")
    pitch = job.params.get("pitch", 0)
    if isinstance(pitch, bool) or not isinstance(pitch, (int, float)) or abs(pitch) > RVC_MAX_SEMITONES:
        raise BadRequest(f"{tier}: params.pitch is {pitch!r}; expected semitones in "
                         f"-{RVC_MAX_SEMITONES}..{RVC_MAX_SEMITONES}")
    return {"song_input": _require_audio(audio, "voice", tier), **chosen, "pitch_change": "no-change",
            "pitch_change_all": pitch, "output_format": "wav", "reverb_wetness": 0.0, "reverb_dryness": 1.0}


def _prompt(job: TierJob, tier: str, model: str, audio: str | None) -> str:
    prompt = job.params.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest(f"{tier}: generate needs params.prompt, a non-empty string; got {prompt!r}")
    if audio is not None:
        raise BadRequest(f"{tier}: {model} takes no input audio (a melody needs MusicGen)")
    return prompt


def _duration(job: TierJob, tier: str, limit: float, why: str) -> float:
    duration = job.params.get("duration_seconds", DEFAULT_GENERATE_SECONDS)
    number = isinstance(duration, (int, float)) and not isinstance(duration, bool)
    if not number or not 0 < duration <= limit:
        raise BadRequest(f"{tier}: params.duration_seconds is {duration!r}; expected (0, {limit:g}] ({why})")
    return float(duration)


# generate's model_family -> the key of the model that runs it (anything else: MusicGen).
GENERATE_FAMILIES = {STABLE_AUDIO_OPEN: STABLE_AUDIO, AUDIOGEN: AUDIOGEN, RIFFUSION: RIFFUSION}


def _key_for(task: str, model: str) -> str:
    """The models key that runs a `task` job asking for `model` (what its params.model_family says)."""
    if task == "generate":
        return GENERATE_FAMILIES.get(model, "generate")
    return {"tts": CHATTERBOX, "voice": RVC}.get(task, task)


def _model_key(job: TierJob) -> str:
    """Which configured model runs `job`: a generate job's model_family picks among generate models."""
    return _key_for(job.task, str(job.params.get("model_family") or ""))


def whisper_input(job: TierJob, audio: str | None, tier: str) -> dict[str, Any]:
    """openai/whisper: audio, language ("auto" or a code), transcription ("plain text"), ..."""
    params = job.params
    language = params.get("language") or "auto"
    if not isinstance(language, str):
        raise BadRequest(f"{tier}: params.language is {language!r}; expected 'auto' or a language code")
    return {
        "audio": _require_audio(audio, "transcribe", tier),
        "language": language,
        "transcription": "plain text",  # segments carry the timings
        **_options(params, WHISPER_OPTIONS),
    }


# Each builder takes the job, the audio input's URI (None without an input file) and the tier's
# name for messages, and returns the model's `input`.
INPUT_BUILDERS: dict[str, Callable[[TierJob, str | None, str], dict[str, Any]]] = {
    "stems": demucs_input,
    "generate": musicgen_input,
    STABLE_AUDIO: stable_audio_input,
    AUDIOGEN: audiogen_input,
    RIFFUSION: riffusion_input,
    "transcribe": whisper_input,
    CHATTERBOX: chatterbox_input,
    RVC: rvc_input,
}


def _one_audio_reader(model: str) -> Callable[..., tuple[dict[str, Path], dict[str, Any]]]:
    """The reader of a model whose documented output is one URI string (an audio file)."""

    def read(tier: ReplicateTier, job: TierJob, pid: str, output: Any,
             clock: _Clock) -> tuple[dict[str, Path], dict[str, Any]]:
        return tier._one_audio(job, pid, output, clock, model)

    return read


OUTPUT_READERS = {
    "stems": ReplicateTier._stems,
    "generate": ReplicateTier._generated,
    STABLE_AUDIO: _one_audio_reader("Stable Audio"),
    AUDIOGEN: _one_audio_reader("AudioGen"),
    RIFFUSION: ReplicateTier._riffusion,
    "transcribe": ReplicateTier._transcript,
    CHATTERBOX: _one_audio_reader("Chatterbox"),
    RVC: _one_audio_reader("RVC"),
}


# -- small helpers ------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """`Cancel-After`'s duration format: 5 -> "5s", 90 -> "1m30s", 5400 -> "1h30m" (whole
    seconds, rounded up, at least the API's minimum of 5 s)."""
    total = max(MIN_CANCEL_AFTER_SECONDS, math.ceil(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts)


def _decode_data_uri(uri: str) -> tuple[bytes, str | None]:
    """(bytes, media type) of a data: URI; ValueError when it is not one."""
    header, comma, payload = uri[5:].partition(",")
    if not comma:
        raise ValueError("a data: URI without a comma")
    media_type, *flags = header.split(";")
    try:
        data = base64.b64decode(payload, validate=True) if "base64" in flags else unquote_to_bytes(payload)
    except ValueError as err:
        raise ValueError("a data: URI that is not valid base64") from err
    return data, media_type or None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def _path(url: str) -> str:
    return urlsplit(url).path or "/"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
