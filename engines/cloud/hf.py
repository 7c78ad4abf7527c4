"""Hugging Face as a tier: Inference Providers (the `hf-inference` router) or a dedicated Endpoint.

Wire protocol (`shared/reference/cloud-tiers.md`, section 2, from huggingface_hub's
`hf_inference.py` and the Inference Endpoints autoscaling guide):

- `POST {base_url}/models/{model_id}` (router) or `POST {endpoint_url}` (an Endpoint, which serves
  one model), `Authorization: Bearer <token>`.
- stems (audio-to-audio) and transcribe (automatic-speech-recognition): with no parameters the
  body is the raw audio with its MIME type as `Content-Type`; with parameters it is JSON
  `{"inputs": "<base64 audio>", "parameters": {...}}`.
  audio-to-audio answers `[{"label", "content-type", "blob": "<base64>"}]`;
  speech recognition answers `{"text", "chunks": [{"text", "timestamp": [start, end]}]}`.
- generate (text-to-audio): JSON `{"inputs": "<prompt>", "parameters": {"generation_parameters":
  {...}}}`; the answer is the raw audio.
- Errors are `{"error": "..."}`.
- Cold starts: the legacy router answered 503 `{"error": "Model X is currently loading",
  "estimated_time": 20.0}`; we wait `estimated_time` and try again. An Endpoint scaled to zero
  answers 503 (older docs: 502) while a replica starts; `X-Scale-Up-Timeout: <s>` asks its proxy
  to hold the request until the replica is ready, so every request to an Endpoint carries it.
  Either way at most `max_cold_start_waits` waits, never past the job's deadline.
"""

from __future__ import annotations

import base64
import logging
import time
from pathlib import Path
from typing import Any

import httpx

from bridge.errors import BadRequest, Unavailable
from engines.cloud.base import CheckCancelled, Progress, Tier, TierJob, TierResult
from engines.cloud.http import (
    EXTENSION_TYPES,
    Deadline,
    TierClient,
    TransportFailed,
    audio_extension,
    backoff_seconds,
    check_offered,
    decode_base64,
    malformed,
    never_cancelled,
    read_input,
    safe_name,
    sniff_audio,
    wait,
    write_output,
)

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://router.huggingface.co/hf-inference"
HF_TASKS = ("stems", "transcribe", "generate")
# Serverless defaults: models Hugging Face's own snippets show on hf-inference. There is no
# stem-separation model there; stems needs a dedicated Endpoint (the strategy document puts
# Open-Unmix on HF Endpoints) or a model id named in `models`.
DEFAULT_MODELS: dict[str, str] = {
    "transcribe": "openai/whisper-large-v3-turbo",
    "generate": "facebook/musicgen-small",
}
# An Endpoint serves one model; without `models` we assume the strategy document's Open-Unmix,
# the umxl weights (the openunmix package's default). Requests go to `endpoint_url`; the name says
# which model the Endpoint runs, in the job's own naming (`openunmix:umxl`, `openunmix:umxhq`,
# `htdemucs` …), so only a job that asks for that model is sent there.
DEFAULT_ENDPOINT_MODELS: dict[str, str] = {"stems": "openunmix:umxl"}

# One wait on a loading model is at most this long; the next 503 brings a fresh estimate.
MAX_COLD_START_WAIT_SECONDS = 120.0
# MusicGen's EnCodec runs at 50 frames per second: max_new_tokens = 50 * seconds.
MUSICGEN_TOKENS_PER_SECOND = 50

# A result's cost without `price_per_hour`: the strategy document's Hugging Face column
# (transcription $0.01 per minute, music generation $0.05 per run, stems: no price given).
# (The router plans with router.seconds_per_audio_second / usd_per_audio_minute, its one source.)
DEFAULT_GENERATE_SECONDS = 8.0
ROUTER_COST_USD = {
    "transcribe": lambda job: 0.01 * job.audio_seconds / 60.0,
    "generate": lambda job: 0.05,
}


class HuggingFaceTier(Tier):
    """Runs stems, transcribe and generate jobs on Hugging Face (see the module docstring).

    `models` maps task -> model id. On the router it is merged over `DEFAULT_MODELS`; with an
    `endpoint_url` it names exactly the tasks the Endpoint serves (default: stems). The token is
    sent only in the Authorization header and never appears in an error.
    """

    def __init__(
        self,
        token: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        endpoint_url: str | None = None,
        models: dict[str, str] | None = None,
        timeout_seconds: float = 30.0,
        scale_up_timeout_seconds: int = 60,
        max_cold_start_waits: int = 3,
        price_per_hour: float | None = None,
        name: str = "huggingface",
    ) -> None:
        if not isinstance(token, str) or not token:
            raise ValueError(f"{name}: token must be a non-empty string")
        if endpoint_url is not None:
            chosen = dict(models) if models is not None else dict(DEFAULT_ENDPOINT_MODELS)
        else:
            chosen = {**DEFAULT_MODELS, **(models or {})}
        for task, model in chosen.items():
            if task not in HF_TASKS:
                raise ValueError(f"{name}: models key {task!r} is not a task this tier runs; "
                                 f"expected one of {HF_TASKS}")
            if not isinstance(model, str) or not model:
                raise ValueError(f"{name}: models[{task!r}] is {model!r}, expected a model id")
        if timeout_seconds <= 0:
            raise ValueError(f"{name}: timeout_seconds is {timeout_seconds}, expected > 0")
        if scale_up_timeout_seconds < 1:
            raise ValueError(f"{name}: scale_up_timeout_seconds is {scale_up_timeout_seconds}, expected >= 1")
        if max_cold_start_waits < 0:
            raise ValueError(f"{name}: max_cold_start_waits is {max_cold_start_waits}, expected >= 0")
        if price_per_hour is not None and price_per_hour < 0:
            raise ValueError(f"{name}: price_per_hour is {price_per_hour}, expected >= 0 or None")
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.endpoint_url = endpoint_url
        self.models = chosen
        self.tasks = frozenset(chosen)
        self.timeout_seconds = float(timeout_seconds)
        self.scale_up_timeout_seconds = int(scale_up_timeout_seconds)
        self.max_cold_start_waits = int(max_cold_start_waits)
        self.price_per_hour = price_per_hour
        self._http = TierClient(name, {"Authorization": f"Bearer {token}"}, secrets=(token,))

    # -- the Tier interface -------------------------------------------------------------------

    def model_for(self, task: str, model: str) -> str:
        """This tier runs its own model per task (`models`), whatever the job asked for."""
        return self.models.get(task, model)

    def run(self, job: TierJob, progress: Progress, check_cancelled: CheckCancelled) -> TierResult:
        """Send `job` to its model, wait out cold starts, write the outputs into `job.work_dir`."""
        check_offered(self.name, self.tasks, job.task)
        started = time.monotonic()
        deadline = Deadline(job.deadline_seconds)
        model = self.models[job.task]
        asked = job.params.get("model") if job.task == "stems" else None
        if asked and asked != model:
            raise BadRequest(f"{self.name}: model {asked!r}: this tier's stems run {model!r} only "
                             f"(set cloud.huggingface_models.stems to the model the Endpoint serves)")
        progress(0.0)
        check_cancelled()
        request = self._request(job)
        progress(0.1)
        response, waits = self._post(model, request, deadline, check_cancelled)
        progress(0.9)
        result = TierResult(tier=self.name)
        if job.task == "stems":
            result.outputs = self._write_stems(job, model, response)
        elif job.task == "transcribe":
            result.data = self._transcript(model, response)
        else:
            result.outputs = {"audio": self._write_generated(job, model, response)}
        result.seconds = time.monotonic() - started
        result.cost_usd = self._cost(job, result.seconds)
        result.details = {"model": model, "endpoint": self.endpoint_url is not None, "cold_start_waits": waits}
        progress(1.0)
        return result

    def offers_model(self, task: str, model: str) -> bool:
        """Stems only for the one model this tier's stems run: an Endpoint runs the model it was
        deployed with (`models["stems"]`, default `openunmix:umxl`), the router the model id in
        `models["stems"]`. A job for any other model (htdemucs on an Open-Unmix Endpoint, umxhq on
        a umxl one) is never sent here, where another model would answer."""
        if task == "stems":
            return self.supports(task) and model == self.models.get("stems")
        return super().offers_model(task, model)

    def health(self) -> bool:
        """GET on the model's URL: up when it answers below 500 and accepts the token. (The
        reference documents no health route; a 405 for the GET still proves the service and the
        token work. A 503 means loading or scaled to zero: not healthy yet.)"""
        model = next(iter(sorted(self.models.values())), "")
        try:
            response = self._http.send("GET", self._url(model), timeout_seconds=min(self.timeout_seconds, 5.0),
                                       check_cancelled=never_cancelled)
        except TransportFailed:
            return False
        return response.status_code < 500 and response.status_code not in (401, 402, 403)

    def close(self) -> None:
        self._http.close()

    # -- requests -----------------------------------------------------------------------------

    def _url(self, model: str) -> str:
        return self.endpoint_url or f"{self.base_url}/models/{model}"

    def _request(self, job: TierJob) -> dict[str, Any]:
        """httpx keyword arguments for the job's body, in the shape its task takes."""
        params = job.params
        if job.task == "generate":
            prompt = params.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise BadRequest(f"{self.name}: generate needs params.prompt, a non-empty string; got {prompt!r}")
            generation = _generation_parameters(params, self.name)
            if "generation_parameters" not in params and params.get("duration_seconds") is not None:
                generation = {"max_new_tokens": round(MUSICGEN_TOKENS_PER_SECOND * _duration(params, self.name))}
            body: dict[str, Any] = {"inputs": prompt}
            if generation:
                body["parameters"] = {"generation_parameters": generation}
            return {"json": body}
        parameters: dict[str, Any] = {}
        if job.task == "transcribe":
            # Timestamps by default: they are what becomes `segments`.
            if params.get("timestamps", True):
                parameters["return_timestamps"] = True
            generation = _generation_parameters(params, self.name)
            if generation:
                parameters["generation_parameters"] = generation
        else:
            extra = params.get("parameters")
            if extra is not None and not isinstance(extra, dict):
                raise BadRequest(f"{self.name}: params.parameters must be an object; got {type(extra).__name__}")
            parameters.update(extra or {})
        audio, mime = self._read_audio(job)
        if not parameters:
            return {"content": audio, "headers": {"Content-Type": mime}}
        return {"json": {"inputs": base64.b64encode(audio).decode("ascii"), "parameters": parameters}}

    def _read_audio(self, job: TierJob) -> tuple[bytes, str]:
        audio = read_input(self.name, job)
        path = Path(job.input_path or "")
        extension = path.suffix.lower().lstrip(".")
        mime = EXTENSION_TYPES.get(extension) or EXTENSION_TYPES.get(sniff_audio(audio) or "")
        if mime is None:
            raise BadRequest(f"{self.name}: input_path {str(path)!r} is not an audio type we can name "
                             f"(expected one of {sorted(EXTENSION_TYPES)})")
        return audio, mime

    def _post(self, model: str, request: dict[str, Any], deadline: Deadline,
              check_cancelled: CheckCancelled) -> tuple[httpx.Response, int]:
        """The first successful response, waiting out at most `max_cold_start_waits` cold starts."""
        waits = 0
        while True:
            headers = dict(request.get("headers", {}))
            timeout = self.timeout_seconds
            if self.endpoint_url is not None:
                # The proxy holds the request while a replica starts, so the read timeout covers it.
                hold = max(1, int(deadline.cap(self.scale_up_timeout_seconds)))
                headers["X-Scale-Up-Timeout"] = str(hold)
                timeout += hold
            if deadline.remaining() == 0:
                raise Unavailable(f"{self.name}: the deadline passed before {model} answered")
            kwargs = {key: value for key, value in request.items() if key != "headers"}
            response = self._http.send("POST", self._url(model), timeout_seconds=deadline.cap(timeout),
                                       check_cancelled=check_cancelled, headers=headers, **kwargs)
            if response.status_code < 400:
                return response, waits
            delay = self._cold_start_delay(response, waits)
            if delay is None:
                raise self._http.error(response)
            if waits >= self.max_cold_start_waits:
                raise Unavailable(f"{self.name}: {model} is still starting after {waits} cold-start waits "
                                  f"(HTTP {response.status_code}: {self._http.message(response)})")
            if not deadline.allows(delay):
                raise Unavailable(f"{self.name}: cold start outlasts the deadline: {model} needs about "
                                  f"{delay:.1f} s more, {deadline.remaining():.1f} s left")
            log.info("%s: %s is starting (HTTP %d); waiting %.1f s (wait %d of %d)", self.name, model,
                     response.status_code, delay, waits + 1, self.max_cold_start_waits)
            wait(delay, check_cancelled)
            waits += 1

    def _cold_start_delay(self, response: httpx.Response, waits: int) -> float | None:
        """Seconds to wait before trying again if `response` says the model is starting, else None."""
        status = response.status_code
        endpoint_starting = self.endpoint_url is not None and status in (502, 503)
        if status != 503 and not endpoint_starting:
            return None
        try:
            body = response.json()
        except ValueError:
            body = None  # the Endpoint proxy's 503 body is unconfirmed; the status is what counts
        estimated = body.get("estimated_time") if isinstance(body, dict) else None
        loading = isinstance(body, dict) and "loading" in str(body.get("error", "")).lower()
        if isinstance(estimated, (int, float)) and not isinstance(estimated, bool):
            return min(max(float(estimated), 0.0), MAX_COLD_START_WAIT_SECONDS)
        if loading or endpoint_starting:
            return backoff_seconds(waits)
        return None  # a plain 503 from the router: an outage, not a cold start

    # -- responses ----------------------------------------------------------------------------

    def _json(self, model: str, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as err:
            content_type = response.headers.get("content-type", "no content type")
            raise malformed(self.name, model, f"not JSON ({content_type})") from err

    def _write_stems(self, job: TierJob, model: str, response: httpx.Response) -> dict[str, Path]:
        body = self._json(model, response)
        if not isinstance(body, list) or not body:
            raise malformed(self.name, model,
                            "audio-to-audio must answer a non-empty list of {label, content-type, blob}")
        decoded: list[tuple[str, bytes, str]] = []
        for index, item in enumerate(body):
            if not isinstance(item, dict) or not isinstance(item.get("label"), str):
                raise malformed(self.name, model, f"item {index} has no label")
            try:
                audio = decode_base64(item.get("blob"), f"item {index} blob")
            except ValueError as err:
                raise malformed(self.name, model, str(err)) from err
            extension = audio_extension(item.get("content-type"), audio)
            if extension is None:
                raise malformed(self.name, model,
                                f"item {index} content-type {item.get('content-type')!r} is not audio")
            decoded.append((item["label"], audio, extension))
        outputs: dict[str, Path] = {}
        for index, (label, audio, extension) in enumerate(decoded):
            stem = safe_name(label, f"stem{index}")
            while stem in outputs:
                stem = f"{stem}_{index}"
            outputs[stem] = write_output(Path(job.work_dir) / f"{stem}.{extension}", audio)
        return outputs

    def _transcript(self, model: str, response: httpx.Response) -> dict[str, Any]:
        body = self._json(model, response)
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            raise malformed(self.name, model, "speech recognition must answer {\"text\": ...}")
        chunks = body.get("chunks") or []
        if not isinstance(chunks, list):
            raise malformed(self.name, model, "chunks must be a list")
        segments = []
        for index, chunk in enumerate(chunks):
            stamp = chunk.get("timestamp") if isinstance(chunk, dict) else None
            if not isinstance(stamp, (list, tuple)) or len(stamp) != 2:
                raise malformed(self.name, model, f"chunk {index} has no [start, end] timestamp")
            segments.append({"start": stamp[0], "end": stamp[1], "text": str(chunk.get("text", ""))})
        return {"text": body["text"], "segments": segments}

    def _write_generated(self, job: TierJob, model: str, response: httpx.Response) -> Path:
        audio = response.content
        extension = audio_extension(response.headers.get("content-type"), audio)
        if extension is None or not audio:
            raise malformed(self.name, model,
                            f"text-to-audio answered {response.headers.get('content-type')!r}, not audio")
        return write_output(Path(job.work_dir) / f"generated.{extension}", audio)

    # -- prices -------------------------------------------------------------------------------

    def _cost(self, job: TierJob, seconds: float) -> float | None:
        if self.price_per_hour is not None:
            return self.price_per_hour * seconds / 3600.0
        if self.endpoint_url is not None:
            return None  # an Endpoint bills by the hour; without its price we cannot say
        price = ROUTER_COST_USD.get(job.task)
        return None if price is None else price(job)


def _generation_parameters(params: dict[str, Any], tier: str) -> dict[str, Any]:
    generation = params.get("generation_parameters") or {}
    if not isinstance(generation, dict):
        raise BadRequest(f"{tier}: params.generation_parameters must be an object; got {type(generation).__name__}")
    return dict(generation)


def _duration(params: dict[str, Any], tier: str) -> float:
    value = params.get("duration_seconds", DEFAULT_GENERATE_SECONDS)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 300:
        raise BadRequest(f"{tier}: params.duration_seconds is {value!r}, expected a number in (0, 300]")
    return float(value)

