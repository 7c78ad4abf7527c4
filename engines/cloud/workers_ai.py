"""Cloudflare Workers AI as a tier: Whisper transcription, MeloTTS speech and bge embeddings.

Wire protocol (`shared/reference/cloud-tiers.md`, section 3, from cloudflare-docs' model JSON,
errors.mdx, limits.mdx and pricing.mdx):

- `POST {base_url}/accounts/{account_id}/ai/run/{model}`, `Authorization: Bearer <API token>`.
- Answers are the envelope `{"result": {...}, "success": true, "errors": [], "messages": []}`;
  failures `{"success": false, "errors": [{"code", "message"}], "result": null}` with messages
  often prefixed `AiError: AiError:`.
- 429 means two different things, told apart by code: 3036 (and 4006) the daily free allocation
  is used up until 00:00 UTC: never retried, `QuotaExhausted` (retryable=False) so the router
  opens the circuit at once; 3040 out of capacity: retried with backoff, honouring Retry-After.
  5xx and 408 (3007/3008) are retried too, at most `max_retries` times; 4xx are not.
- `@cf/openai/whisper` takes the raw audio bytes as the body and answers {text, word_count,
  words: [{word, start, end}], vtt}; `@cf/openai/whisper-large-v3-turbo` takes JSON {"audio":
  "<base64>", "task", "language", ...} and answers {text, segments: [{start, end, text, words}],
  transcription_info, vtt}.
- `@cf/myshell-ai/melotts` takes {"prompt", "lang"} and answers {"audio": "<base64 MP3>"}; the
  schema also allows a binary audio response, which we accept as well.
- `@cf/baai/bge-*-en-v1.5` take {"text": [<= 100 strings], "pooling"} and answer {shape, data, pooling}.
"""

from __future__ import annotations

import base64
import logging
import re
import time
from pathlib import Path
from typing import Any

import httpx
import soundfile

from bridge.errors import BadRequest, BridgeError, NotFound, Unavailable
from engines.cloud.base import CheckCancelled, Progress, Tier, TierJob, TierResult
from engines.cloud.http import (
    Deadline,
    QuotaExhausted,
    TierClient,
    TransportFailed,
    audio_extension,
    backoff_seconds,
    check_offered,
    decode_base64,
    error_for_status,
    malformed,
    never_cancelled,
    read_input,
    retry_after_seconds,
    scrub,
    wait,
    write_output,
)

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4"
WORKERS_AI_TASKS = ("transcribe", "tts", "embed")
DEFAULT_MODELS: dict[str, str] = {
    "transcribe": "@cf/openai/whisper-large-v3-turbo",
    "tts": "@cf/myshell-ai/melotts",
    # bge-small: what the daemon runs here when `samples.model` has no Workers AI counterpart (the
    # default, MiniLM, has none), and the cheapest; a BGE `samples.model` runs its own counterpart.
    "embed": "@cf/baai/bge-small-en-v1.5",
}
# Whisper models whose body is JSON with base64 audio; the others take the raw bytes.
BASE64_WHISPER_MODELS = frozenset({"@cf/openai/whisper-large-v3-turbo"})
TURBO_OPTIONS = ("task", "language", "vad_filter", "initial_prompt", "prefix")

# Prices: pricing.mdx / PR #24748 (model pages differ slightly: whisper $0.00045, turbo $0.00051).
PRICE_PER_AUDIO_MINUTE_USD = {
    "@cf/openai/whisper": 0.0005,
    "@cf/openai/whisper-large-v3-turbo": 0.0005,
    "@cf/myshell-ai/melotts": 0.0002,
}
PRICE_PER_M_TOKENS_USD = {
    "@cf/baai/bge-small-en-v1.5": 0.020,
    "@cf/baai/bge-base-en-v1.5": 0.067,
    "@cf/baai/bge-large-en-v1.5": 0.204,
}
MAX_EMBED_TEXTS = 100
# BAAI's bge-*-en-v1.5 as Workers AI names them. Cloudflare's catalogue lists these as BAAI's released
# models (the same names, the same dimensions: 384, 768, 1024), so a vector from one is comparable with
# a vector from a local copy of the same model when both pool the same way (see `EMBED_POOLING`).
BGE_ON_WORKERS_AI = {
    "baai/bge-small-en-v1.5": "@cf/baai/bge-small-en-v1.5",
    "baai/bge-base-en-v1.5": "@cf/baai/bge-base-en-v1.5",
    "baai/bge-large-en-v1.5": "@cf/baai/bge-large-en-v1.5",
}
# sentence-transformers reads BGE with CLS pooling (then L2-normalises); Workers AI pools with the mean
# unless asked otherwise, so a caller that compares with local vectors asks for this.
EMBED_POOLING = "cls"

QUOTA_CODES = frozenset({3036, 4006})
CAPACITY_CODE = 3040
TIMEOUT_CODES = frozenset({3007, 3008})
NO_SUCH_MODEL_CODES = frozenset({5007, 3042})
BAD_INPUT_CODES = frozenset({5004, 3003, 3006})

# A result's price when the answer does not say how long the audio is: speech at about 15
# characters a second (150 words a minute); about 4 characters per bge token. (The router plans
# with router.seconds_per_audio_second / usd_per_audio_minute, its one source.)
SPEECH_CHARS_PER_SECOND = 15.0
CHARS_PER_TOKEN = 4.0

_AI_ERROR_PREFIX = re.compile(r"^(?:\s*AiError:\s*)+")


class _Failure:
    """One failed attempt: the error to raise, whether another attempt may help, and the wait the
    provider asked for."""

    def __init__(self, error: BridgeError, retryable: bool, retry_after: float | None = None) -> None:
        self.error = error
        self.retryable = retryable
        self.retry_after = retry_after


class WorkersAITier(Tier):
    """Runs transcribe, tts and embed jobs on Workers AI (see the module docstring).

    `models` (task -> model) is merged over `DEFAULT_MODELS`. Transcripts and embeddings come back
    in `TierResult.data`; speech is written into `job.work_dir`. The token and the account id are
    never in an error.
    """

    def __init__(
        self,
        token: str,
        account_id: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        models: dict[str, str] | None = None,
        timeout_seconds: float = 30.0,
        max_retries: int = 3,
        name: str = "workers_ai",
    ) -> None:
        if not isinstance(token, str) or not token:
            raise ValueError(f"{name}: token must be a non-empty string")
        if not isinstance(account_id, str) or not re.fullmatch(r"[A-Za-z0-9]+", account_id):
            raise ValueError(f"{name}: account_id must be the account's id (letters and digits)")
        chosen = {**DEFAULT_MODELS, **(models or {})}
        for task, model in chosen.items():
            if task not in WORKERS_AI_TASKS:
                raise ValueError(f"{name}: models key {task!r} is not a task this tier runs; "
                                 f"expected one of {WORKERS_AI_TASKS}")
            if not isinstance(model, str) or not model.startswith("@"):
                raise ValueError(f"{name}: models[{task!r}] is {model!r}, expected a Workers AI model like '@cf/...'")
        if timeout_seconds <= 0:
            raise ValueError(f"{name}: timeout_seconds is {timeout_seconds}, expected > 0")
        if max_retries < 0:
            raise ValueError(f"{name}: max_retries is {max_retries}, expected >= 0")
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.account_id = account_id
        self.models = chosen
        self.tasks = frozenset(chosen)
        self.timeout_seconds = float(timeout_seconds)
        self.max_retries = int(max_retries)
        # The account id is in the URL, not secret as such, but it has no business in messages.
        self._http = TierClient(name, {"Authorization": f"Bearer {token}"}, secrets=(token, account_id))

    # -- the Tier interface -------------------------------------------------------------------

    def model_for(self, task: str, model: str) -> str:
        """This tier runs its own model per task (`models`), whatever the job asked for."""
        return self.models.get(task, model)

    def run(self, job: TierJob, progress: Progress, check_cancelled: CheckCancelled) -> TierResult:
        """Run `job` on its model, retrying capacity 429s, 408s and 5xx boundedly."""
        check_offered(self.name, self.tasks, job.task)
        started = time.monotonic()
        deadline = Deadline(job.deadline_seconds)
        model = self.models[job.task]
        progress(0.0)
        check_cancelled()
        if job.task == "transcribe":
            request = self._transcribe_request(job, model)
        elif job.task == "tts":
            request = {"json": self._tts_body(job)}
        else:
            request = {"json": {"text": self._embed_texts(job), **_pooling(job.params, self.name)}}
        progress(0.1)
        response, attempts = self._post(model, request, deadline, check_cancelled)
        progress(0.9)
        result = TierResult(tier=self.name)
        if job.task == "transcribe":
            answer = self._result(model, response)
            result.data = self._transcript(model, answer)
            # Billed per audio minute: the duration turbo reports, else the job's own figure.
            info = answer.get("transcription_info")
            duration = info.get("duration") if isinstance(info, dict) else None
            billed = float(duration) if isinstance(duration, (int, float)) and duration > 0 else job.audio_seconds
            result.cost_usd = self._audio_cost(model, billed)
        elif job.task == "tts":
            path = self._write_speech(job, model, response)
            result.outputs = {"audio": path}
            result.cost_usd = self._audio_cost(model, _duration_seconds(path) or _speech_seconds(job))
        else:
            texts = request["json"]["text"]
            result.data = self._embeddings(model, self._result(model, response), len(texts))
            result.cost_usd = self._token_cost(model, texts)
        result.seconds = time.monotonic() - started
        result.details = {"model": model, "attempts": attempts}
        progress(1.0)
        return result

    def health(self) -> bool:
        """A one-word embedding: proves the token, the account and the daily allocation (a used-up
        quota is unhealthy until 00:00 UTC) for a negligible price."""
        model = self.models.get("embed")
        if model is None:
            return True
        try:
            self._post(model, {"json": {"text": ["ping"]}}, Deadline(min(self.timeout_seconds, 5.0)), never_cancelled,
                       retries=0)
        except BridgeError:
            return False
        return True

    def close(self) -> None:
        self._http.close()

    # -- requests -----------------------------------------------------------------------------

    def _url(self, model: str) -> str:
        return f"{self.base_url}/accounts/{self.account_id}/ai/run/{model}"

    def _transcribe_request(self, job: TierJob, model: str) -> dict[str, Any]:
        audio = read_input(self.name, job)
        if model not in BASE64_WHISPER_MODELS:
            return {"content": audio, "headers": {"Content-Type": "application/octet-stream"}}
        body: dict[str, Any] = {"audio": base64.b64encode(audio).decode("ascii")}
        for key in TURBO_OPTIONS:
            if job.params.get(key) is not None:
                body[key] = job.params[key]
        return {"json": body}

    def _tts_body(self, job: TierJob) -> dict[str, Any]:
        text = job.params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise BadRequest(f"{self.name}: tts needs params.text, a non-empty string; got {text!r}")
        lang = job.params.get("lang", "en")
        if not isinstance(lang, str) or not lang:
            raise BadRequest(f"{self.name}: params.lang is {lang!r}, expected a language code like 'en'")
        return {"prompt": text, "lang": lang}

    def _embed_texts(self, job: TierJob) -> list[str]:
        text = job.params.get("text")
        texts = [text] if isinstance(text, str) else text
        if (not isinstance(texts, list) or not texts or len(texts) > MAX_EMBED_TEXTS
                or not all(isinstance(item, str) for item in texts)):
            raise BadRequest(f"{self.name}: embed needs params.text, a string or a list of 1 to "
                             f"{MAX_EMBED_TEXTS} strings; got {_describe(text)}")
        return texts

    def _post(self, model: str, request: dict[str, Any], deadline: Deadline, check_cancelled: CheckCancelled,
              *, retries: int | None = None) -> tuple[httpx.Response, int]:
        """A successful response and the number of attempts it took."""
        retries = self.max_retries if retries is None else retries
        attempt = 0
        while True:
            if deadline.remaining() == 0:
                raise Unavailable(f"{self.name}: the deadline passed before {model} answered")
            try:
                response = self._http.send("POST", self._url(model), timeout_seconds=deadline.cap(self.timeout_seconds),
                                           check_cancelled=check_cancelled, **request)
            except TransportFailed as err:
                # A read timeout may have run (and billed) the work: only unsent requests are retried.
                failure = _Failure(err, retryable=not err.request_sent)
            else:
                refused = self._failure(model, response)
                if refused is None:
                    return response, attempt + 1
                failure = refused
            if not failure.retryable:
                raise failure.error
            if attempt >= retries:
                raise Unavailable(f"{self.name}: gave up after {attempt + 1} attempts: {failure.error.message}") \
                    from failure.error
            delay = failure.retry_after if failure.retry_after is not None else backoff_seconds(attempt)
            if not deadline.allows(delay):
                raise Unavailable(f"{self.name}: a retry in {delay:.1f} s outlasts the deadline: "
                                  f"{failure.error.message}") from failure.error
            log.info("%s: retrying %s in %.1f s (attempt %d of %d): %s", self.name, model, delay, attempt + 2,
                     retries + 1, failure.error.message)
            wait(delay, check_cancelled)
            attempt += 1

    def _failure(self, model: str, response: httpx.Response) -> _Failure | None:
        """None for a success (an envelope with success true, or binary audio), else the failure."""
        status = response.status_code
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if status < 300 and (content_type.startswith("audio/") or content_type == "application/octet-stream"):
            return None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("success"), bool):
            if status < 300:
                what = f"not a Workers AI envelope ({content_type or 'no content type'})"
                return _Failure(malformed(self.name, model, what), retryable=False)
            return _Failure(self._http.error(response), retryable=status in (408, 429) or status >= 500,
                            retry_after=retry_after_seconds(response.headers))
        if body["success"] and status < 300:
            return None
        errors = body.get("errors")
        first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
        code = first.get("code")
        text = _AI_ERROR_PREFIX.sub("", str(first.get("message") or "no message"))
        message = scrub(f"{model}: error {code}: {text}", self._http.secrets)
        if code in QUOTA_CODES:
            return _Failure(QuotaExhausted(f"{self.name}: quota exhausted, resets at 00:00 UTC ({message})"),
                            retryable=False)
        if code == CAPACITY_CODE or status == 429:
            return _Failure(Unavailable(f"{self.name}: out of capacity ({message})"), retryable=True,
                            retry_after=retry_after_seconds(response.headers))
        if code in TIMEOUT_CODES or status == 408 or status >= 500:
            return _Failure(Unavailable(f"{self.name}: HTTP {status}: {message}"), retryable=True,
                            retry_after=retry_after_seconds(response.headers))
        if code in NO_SUCH_MODEL_CODES:
            return _Failure(NotFound(f"{self.name}: no such model ({message})"), retryable=False)
        if code in BAD_INPUT_CODES:
            return _Failure(BadRequest(f"{self.name}: the provider refused the request ({message})"), retryable=False)
        if status < 300:
            return _Failure(Unavailable(f"{self.name}: the provider reported a failure ({message})"), retryable=False)
        return _Failure(error_for_status(self.name, status, message), retryable=False)

    # -- responses ----------------------------------------------------------------------------

    def _result(self, model: str, response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = None
        result = body.get("result") if isinstance(body, dict) else None
        if not isinstance(result, dict):
            raise malformed(self.name, model, "the envelope's result is not an object")
        return result

    def _transcript(self, model: str, result: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(result.get("text"), str):
            raise malformed(self.name, model, "result.text is missing")
        segments: list[dict[str, Any]] = []
        words: list[Any] = []  # as the model sent them, then checked and rebuilt below
        try:
            for segment in result.get("segments") or []:
                segments.append({"start": float(segment["start"]), "end": float(segment["end"]),
                                 "text": str(segment["text"])})
                words.extend(segment.get("words") or [])
            words.extend(result.get("words") or [])
            words = [{"word": str(w["word"]), "start": float(w["start"]), "end": float(w["end"])} for w in words]
        except (TypeError, KeyError, ValueError, AttributeError) as err:
            what = f"segments or words are not [{{start, end, text|word}}]: {err!r}"
            raise malformed(self.name, model, what) from err
        data: dict[str, Any] = {"text": result["text"], "segments": segments, "words": words}
        if isinstance(result.get("vtt"), str):
            data["vtt"] = result["vtt"]
        info = result.get("transcription_info")
        if isinstance(info, dict) and isinstance(info.get("language"), str):
            data["language"] = info["language"]
        return data

    def _write_speech(self, job: TierJob, model: str, response: httpx.Response) -> Path:
        content_type = response.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            audio_b64 = self._result(model, response).get("audio")
            try:
                audio = decode_base64(audio_b64, "result.audio")
            except ValueError as err:
                raise malformed(self.name, model, str(err)) from err
            content_type = "audio/mpeg"  # the documented format of result.audio
        else:
            audio = response.content
        extension = audio_extension(content_type, audio)
        if extension is None or not audio:
            raise malformed(self.name, model, "the speech is not audio we recognise")
        return write_output(Path(job.work_dir) / f"speech.{extension}", audio)

    def _embeddings(self, model: str, result: dict[str, Any], count: int) -> dict[str, Any]:
        shape, vectors = result.get("shape"), result.get("data")
        if (not isinstance(vectors, list) or len(vectors) != count
                or not all(isinstance(v, list) and all(isinstance(x, (int, float)) for x in v) for v in vectors)):
            raise malformed(self.name, model, f"result.data must be {count} vectors of numbers")
        if not isinstance(shape, list) or shape[:1] != [count]:
            raise malformed(self.name, model, f"result.shape is {shape!r}, expected [{count}, dimensions]")
        return {"shape": shape, "data": vectors, "pooling": result.get("pooling", "mean")}

    # -- prices -------------------------------------------------------------------------------

    def _audio_cost(self, model: str, audio_seconds: float) -> float | None:
        price = PRICE_PER_AUDIO_MINUTE_USD.get(model)
        return None if price is None else price * audio_seconds / 60.0

    def embed_cost(self, texts: list[str]) -> float | None:
        """What embedding `texts` would bill, by the price that bills the result (about 4 characters
        a token): the month's budget is checked with it before the request. None: no known price."""
        return self._token_cost(self.models.get("embed", ""), texts)

    def _token_cost(self, model: str, texts: list[str]) -> float | None:
        price = PRICE_PER_M_TOKENS_USD.get(model)
        tokens = sum(max(1.0, len(text) / CHARS_PER_TOKEN) for text in texts)
        return None if price is None else price * tokens / 1_000_000


def bge_model_for(local_model: str) -> str | None:
    """Workers AI's name for a local BGE hub name (`BAAI/bge-small-en-v1.5` ->
    `@cf/baai/bge-small-en-v1.5`), or None when Workers AI does not run that model."""
    return BGE_ON_WORKERS_AI.get(local_model.strip().lower())


def _pooling(params: dict[str, Any], tier: str) -> dict[str, str]:
    pooling = params.get("pooling")
    if pooling is None:
        return {}
    if pooling not in ("mean", "cls"):
        raise BadRequest(f"{tier}: params.pooling is {pooling!r}, expected 'mean' or 'cls'")
    return {"pooling": pooling}


def _speech_seconds(job: TierJob) -> float:
    text = job.params.get("text")
    return len(text) / SPEECH_CHARS_PER_SECOND if isinstance(text, str) else 0.0


def _duration_seconds(path: Path) -> float | None:
    """The length of an audio file, or None when soundfile cannot read its format."""
    try:
        return float(soundfile.info(str(path)).duration)
    except (soundfile.LibsndfileError, RuntimeError):
        return None


def _describe(value: Any) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    return repr(value) if value is None else type(value).__name__
