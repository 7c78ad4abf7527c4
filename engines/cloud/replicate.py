"""Replicate as a tier: Demucs stems; MusicGen, Stable Audio Open, AudioGen and Riffusion
generation; Whisper transcription; Chatterbox speech; RVC voice conversion, on hosted GPUs.

Three modules, one idea each: this one is the tier (its settings, what it offers, estimates, and one
job's run from input to outputs); `replicate_client.py` is Replicate's prediction protocol (the wire,
from `shared/reference/cloud-tiers.md`, section 1); `replicate_models.py` is what each model takes
and gives (the schemas, with where they were read: docs/cloud-models.md).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from bridge.errors import BadRequest, ConfigError, Unavailable
from engines.cloud.base import AUDIOGEN, CHATTERBOX, RIFFUSION, CheckCancelled, Progress, Tier, TierJob, TierResult
from engines.cloud.http import check_offered, read_input
from engines.cloud.replicate_client import (
    DEFAULT_BASE_URL,
    DEFAULT_WEBHOOK_URL,
    MAX_WAIT_SECONDS,
    Clock,
    ModelRef,
    PredictionClient,
)
from engines.cloud.replicate_models import (
    DEFAULT_GENERATE_SECONDS,
    DEFAULT_MODELS,
    DEMUCS_MODELS,
    INPUT_BUILDERS,
    MODEL_KEYS,
    MODEL_TASKS,
    OUTPUT_READERS,
    STABLE_AUDIO,
    key_for,
    model_key,
)
from engines.stable_audio import is_stable_audio

log = logging.getLogger(__name__)

AUDIO_PLACEHOLDER = "<the input audio>"  # where the audio's URI goes once it is known

# The Prefer: wait decision. ⚠ Run times are guesses anchored on the strategy
# document ("Demucs (HTDemucs) 10-60s"; "Replicate 500ms-2s" latency) and say nothing about cold
# starts of community models: (fixed seconds, seconds per second of audio in or out).
RUN_SECONDS: dict[str, tuple[float, float]] = {"stems": (10.0, 0.15), "generate": (10.0, 2.0), "transcribe": (5.0, 0.1),
                                               "tts": (5.0, 0.5), "voice": (20.0, 0.5)}


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
        self.price_per_second = prices
        self._refs = refs
        # The protocol's settings (timeouts, Prefer: wait, polling, inline limit, retries, webhook) live there.
        self._client = PredictionClient(
            name, token, base_url=self.base_url, timeout_seconds=timeout_seconds, wait_seconds=wait_seconds,
            poll_initial_seconds=poll_initial_seconds, poll_max_seconds=poll_max_seconds,
            inline_limit_bytes=inline_limit_bytes, max_retries=max_retries, webhook_url=webhook_url,
        )

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
        return self.models.get(key_for(task, model), model)

    def run(self, job: TierJob, progress: Progress, check_cancelled: CheckCancelled) -> TierResult:
        """Create a prediction for `job`, follow it to the end, write its outputs into `job.work_dir`."""
        check_offered(self.name, self.tasks, job.task)
        key = model_key(job)
        if key not in self._refs:
            raise BadRequest(f"{self.name}: {job.task} with params.model_family {job.params.get('model_family')!r} "
                             f"needs models[{key!r}], which this tier does not configure")
        clock = Clock(progress, check_cancelled, self._run_seconds(job), job.deadline_seconds)
        ref = self._refs[key]
        clock.tick()
        # Build (and so check) the input before anything goes out; the audio's URI comes after.
        model_input = INPUT_BUILDERS[key](job, AUDIO_PLACEHOLDER if job.input_path else None, self.name)
        sent_as = None
        if job.input_path is not None:
            uri, sent_as = self._client.audio_uri(Path(job.input_path), read_input(self.name, job), clock)
            model_input = {key: uri if value == AUDIO_PLACEHOLDER else value for key, value in model_input.items()}
        plan = self._client.plan(ref, model_input, self._run_seconds(job), clock)
        clock.creating()
        prediction, applied = self._client.create(plan, clock)
        prediction = self._client.watch(prediction, clock)
        result = TierResult(tier=self.name)
        output, pid = self._client.output(prediction, plan), prediction["id"]

        def fetch(uri: Any, stem: str) -> Path:
            return self._client.download(uri, Path(job.work_dir), stem, pid, clock)

        def bad(what: str) -> Unavailable:
            return self._client.malformed(pid, what)

        result.outputs, result.data = OUTPUT_READERS[key](job, output, fetch, bad)
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
        return self._client.healthy()

    def close(self) -> None:
        self._client.close()

    def _run_seconds(self, job: TierJob) -> float:
        fixed, per_second = RUN_SECONDS.get(job.task, (10.0, 1.0))
        if job.task == "generate":
            length = job.params.get("duration_seconds", DEFAULT_GENERATE_SECONDS)
            length = length if isinstance(length, (int, float)) else DEFAULT_GENERATE_SECONDS
        else:
            length = job.audio_seconds
        return fixed + per_second * float(length)
