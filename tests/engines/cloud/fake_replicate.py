"""A fake Replicate HTTP API on loopback, faithful to `shared/reference/cloud-tiers.md` section 1.

`running_fake()` starts it under uvicorn on a free port in a background thread and yields
`(base_url, fake)`; `fake` is the control object: it holds the state (predictions, files, every
request with its arrival time) and scripts failures (`fake.fail(route, Fault(...))`).

What it speaks:
- Auth `Authorization: Bearer <token>` or `Token <token>`; otherwise 401 problem+json.
- `POST /v1/predictions` (`version`: 64-hex, `owner/name:<hex>`, or `owner/name` of an official
  model) and `POST /v1/models/{owner}/{name}/predictions`: 201 with the prediction. `Prefer:
  wait[=N]` holds the answer up to N s (default 60) and echoes `Preference-Applied`;
  `Cancel-After` sets the deadline (aborted before the run starts, canceled during it).
- `GET /v1/predictions/{id}`, `POST /v1/predictions/{id}/cancel` (200; a finished prediction
  keeps its status), `GET /v1/predictions?created_after=` (100 a page, `next` cursor).
- `POST /v1/files` (multipart `content`, `filename`, `type`, `metadata`): 201; `GET`, `DELETE` (204).
- `GET /v1/models/{owner}/{name}` (with `latest_version`), `GET /v1/account`.
- Lifecycle: `starting` for `start_seconds`, `processing` for `run_seconds` (tqdm lines in
  `logs`), then `succeeded` with `metrics` or `failed` with `error`. Time is the fake's own clock,
  which `advance()` moves forward, so tests can pass deadlines and the one-hour retention
  without sleeping.
- Outputs: https-style URLs the fake serves itself under `/delivery/` (or `data:` URIs with
  `output_mode="data"`); after `retention_seconds` the prediction says `data_removed: true`,
  `output: null`, and its files answer 404.
- Errors: RFC 7807 bodies, `Content-Type: application/problem+json`.

⚠ Where the reference is silent the fake chooses, and says so: a model-scoped create for a
community model answers 422 "Invalid version or not permitted"; a `Prefer` or `Cancel-After` the
schema refuses answers 422; the prediction object does not echo `webhook` (the documented object
has no such field) unless `echo_webhook=True`.

The "models" are small and deterministic: Demucs splits the input into gain-scaled copies
(4 stems, 6 for htdemucs_6s, summing to the input), MusicGen writes a sine whose pitch comes
from the prompt, Whisper answers a fixed sentence naming the uploaded file, Stable Audio Open
(`stackadoc/stable-audio-open-1.0`, a community model pinned to the version docs/cloud-models.md
records) writes `seconds_total` of 44.1 kHz stereo noise shaped by the prompt and seed.
⚠ Its API page documents no output format; the fake delivers WAV. The models docs/cloud-models.md
records next, each pinned to the version it records: AudioGen (`sepal/audiogen`) writes `duration` s
of 16 kHz mono noise bursts; Riffusion (`riffusion/riffusion`) answers its predictor's object
`{"audio", "spectrogram"}` with 5.12 s of 44.1 kHz stereo and a JPEG-typed image; Chatterbox
(`resemble-ai/chatterbox`) speaks 24 kHz mono whose length follows the text (and whose pitch follows
the `audio_prompt` clip when one is given, which must be readable audio); RVC
(`zsxkib/realistic-voice-cloning`) returns the `song_input` vocal pitch-shifted by
`pitch_change_all`, at 44.1 kHz, after checking `rvc_model` against its enum (CUSTOM needs
`custom_rvc_model_download_url`). `malformed_output=True` makes each answer the wrong shape: an
object where the schema says a URI string, a bare string where Riffusion's says an object.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import math
import re
import secrets
import socket
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import numpy as np
import soundfile
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

PROBLEM = "application/problem+json"
ROUTES = ("create", "get", "cancel", "list", "upload", "file", "model", "account", "delivery")
PREFER = re.compile(r"^wait(=([1-9]|[1-9][0-9]|60))?$")
DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
TERMINAL = ("succeeded", "failed", "canceled", "aborted")
STEM_GAINS = {
    4: {"vocals": 0.4, "drums": 0.3, "bass": 0.2, "other": 0.1},
    6: {"vocals": 0.3, "drums": 0.2, "bass": 0.2, "other": 0.1, "guitar": 0.1, "piano": 0.1},
}
DEMUCS_STEMS = ("vocals", "bass", "drums", "guitar", "piano", "other")
DEMUCS_MODELS = ("htdemucs", "htdemucs_ft", "htdemucs_6s", "hdemucs_mmi", "mdx", "mdx_q", "mdx_extra", "mdx_extra_q")
MUSICGEN_VERSIONS = ("melody", "large", "encode-decode", "stereo-melody-large", "stereo-large")
MUSICGEN_SAMPLE_RATE = 32000
STABLE_AUDIO_SAMPLE_RATE = 44100
STABLE_AUDIO_MAX_SECONDS = 47
AUDIOGEN_SAMPLE_RATE = 16000
RIFFUSION_SAMPLE_RATE, RIFFUSION_SECONDS = 44100, 5.12
RIFFUSION_SEED_IMAGES = ("agile", "marim", "mask_beat_lines_80", "mask_gradient_dark", "mask_gradient_top_70",
                         "mask_gradient_top_fifth_75", "mask_top_third_75", "mask_top_third_95", "motorway", "og_beat",
                         "vibes")
CHATTERBOX_SAMPLE_RATE = 24000
RVC_SAMPLE_RATE = 44100
RVC_VOICES = ("Squidward", "MrKrabs", "Plankton", "Drake", "Vader", "Trump", "Biden", "Obama", "Guitar", "Voilin",
              "CUSTOM")
FORMATS = {"wav": ("WAV", "audio/wav"), "flac": ("FLAC", "audio/flac"), "mp3": ("MP3", "audio/mpeg")}


@dataclass
class Fault:
    """One scripted answer. Without `apply` the fault replaces the handling (a refused request);
    with `apply` the request is handled for real first and only its answer is delayed or garbled
    (a create that went through but whose answer the client never reads)."""

    status: int | None = None  # answer this status with a problem body
    retry_after: str | None = None  # with this Retry-After header
    delay_seconds: float = 0.0  # hold the answer this long first
    malformed: bool = False  # answer 2xx with a body that is not JSON
    apply: bool = False
    detail: str | None = None
    invalid_fields: list[dict[str, str]] | None = None


@dataclass
class Recorded:
    """A request as it arrived: `at` is time.monotonic() on arrival."""

    route: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    at: float


@dataclass
class FakeModel:
    slug: str
    kind: str  # demucs | musicgen | whisper | stable_audio | audiogen | riffusion | chatterbox | rvc
    official: bool
    pinned: str | None = None  # a real version id, where a default ref pins one

    @property
    def version(self) -> str:
        return self.pinned or hashlib.sha256(self.slug.encode()).hexdigest()


@dataclass
class Prediction:
    id: str
    model: FakeModel
    input: dict[str, Any]
    webhook: str | None
    created: float  # fake clock
    created_at: datetime
    start_seconds: float
    run_seconds: float
    cancel_after: float | None
    status: str = "starting"
    output: Any = None
    error: str | None = None
    completed: float | None = None
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # name -> (bytes, content type)


class _Early(Exception):
    """Ends a request with `response` before its handler runs (a refused token, a scripted fault)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


class ModelError(Exception):
    """The model run failed (the prediction ends `failed` with this message)."""


class FakeReplicate:
    """State and control of one fake API. Thread-safe: tests read it while the server runs."""

    def __init__(self, token: str = "r8_fake_token", **options: Any) -> None:
        self.token = token
        self.base_url = ""
        self.models = {m.slug: m for m in (
            FakeModel("cjwbw/demucs", "demucs", official=False),
            FakeModel("meta/musicgen", "musicgen", official=True),
            FakeModel("openai/whisper", "whisper", official=False),
            FakeModel("stackadoc/stable-audio-open-1.0", "stable_audio", official=False,
                      pinned="49b1d4f06f69989dd2c8252d455d2deebaa3c3e3e894694b8aed301c69e75913"),
            FakeModel("sepal/audiogen", "audiogen", official=False,
                      pinned="154b3e5141493cb1b8cec976d9aa90f2b691137e39ad906d2421b74c2a8c52b8"),
            FakeModel("riffusion/riffusion", "riffusion", official=False,
                      pinned="8cf61ea6c56afd61d8f5b9ffd14d7c216c0a93844ce2d82ac1c9ecc9c7f24e05"),
            FakeModel("resemble-ai/chatterbox", "chatterbox", official=False,
                      pinned="1b8422bc49635c20d0a84e387ed20879c0dd09254ecdb4e75dc4bec10ff94e97"),
            FakeModel("zsxkib/realistic-voice-cloning", "rvc", official=False,
                      pinned="0a9c7c558af4c0f20667c1bd1260ce32a2879944a0b9e44e1398660c077b1550"),
        )}
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self.reset(**options)
        self.app = self._build_app()

    def reset(self, *, start_seconds: float = 0.05, run_seconds: float = 0.2, output_mode: str = "url",
              retention_seconds: float = 3600.0, page_size: int = 100, echo_webhook: bool = False,
              fail_with: str | None = None, malformed_output: bool = False) -> None:
        """Forget every prediction, file, request and fault; set the behaviour for what follows.
        start_seconds/run_seconds: time in `starting` and in `processing`; output_mode: "url" or
        "data"; retention_seconds: when outputs expire; fail_with: every run fails with this error."""
        with self._lock:
            self.start_seconds = start_seconds
            self.run_seconds = run_seconds
            self.output_mode = output_mode
            self.retention_seconds = retention_seconds
            self.page_size = page_size
            self.echo_webhook = echo_webhook
            self.fail_with = fail_with
            self.malformed_output = malformed_output
            self.predictions: dict[str, Prediction] = {}
            self.files: dict[str, dict[str, Any]] = {}
            self.requests: list[Recorded] = []
            self._faults: dict[str, list[Fault]] = {route: [] for route in ROUTES}
            self._offset = 0.0

    # -- control --------------------------------------------------------------------------------

    def fail(self, route: str, fault: Fault, times: int = 1) -> None:
        """Answer the next `times` requests to `route` (one of ROUTES) with `fault`."""
        if route not in ROUTES:
            raise ValueError(f"route is {route!r}; expected one of {ROUTES}")
        with self._lock:
            self._faults[route].extend([fault] * times)

    def advance(self, seconds: float) -> None:
        """Move the fake's clock forward (deadlines, lifecycle and retention follow it)."""
        with self._lock:
            self._offset += seconds

    def now(self) -> float:
        return time.monotonic() + self._offset

    def seen(self, route: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.route == route]

    def status_of(self, prediction_id: str) -> str:
        with self._lock:
            prediction = self.predictions[prediction_id]
            self._advance(prediction)
            return prediction.status

    def version_of(self, slug: str) -> str:
        return self.models[slug].version

    def close(self) -> None:
        self._closing.set()

    # -- lifecycle ------------------------------------------------------------------------------

    def _advance(self, p: Prediction) -> None:
        """Bring `p` up to the fake clock. Caller holds the lock."""
        if p.status in TERMINAL:
            return
        age = self.now() - p.created
        end = p.start_seconds + p.run_seconds
        if p.cancel_after is not None and age >= p.cancel_after and p.cancel_after < end:
            p.status = "aborted" if p.cancel_after < p.start_seconds else "canceled"
            p.completed = p.created + p.cancel_after
        elif age >= end:
            try:
                if self.fail_with:
                    raise ModelError(self.fail_with)
                p.output = self._run_model(p)
                p.status = "succeeded"
            except ModelError as err:
                p.status, p.error = "failed", str(err)
            p.completed = p.created + end
        elif age >= p.start_seconds:
            p.status = "processing"

    def _removed(self, p: Prediction) -> bool:
        return p.completed is not None and self.now() - p.completed >= self.retention_seconds

    def _to_json(self, p: Prediction) -> dict[str, Any]:
        self._advance(p)
        url = f"{self.base_url}/v1/predictions/{p.id}"

        def wall(moment: float) -> str:  # a fake-clock moment as the API's UTC timestamp
            return (p.created_at + timedelta(seconds=moment - p.created)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

        removed = self._removed(p)
        body: dict[str, Any] = {
            "id": p.id, "model": p.model.slug, "version": p.model.version, "input": {} if removed else p.input,
            "logs": self._logs(p), "error": p.error, "status": p.status, "data_removed": removed, "source": "api",
            "created_at": wall(p.created),
            "deadline": wall(p.created + p.cancel_after) if p.cancel_after is not None else None,
            "urls": {"get": url, "cancel": f"{url}/cancel", "web": f"{self.base_url}/p/{p.id}",
                     "stream": f"{self.base_url}/stream/{p.id}"},
        }
        if p.status not in ("starting", "aborted"):
            body["started_at"] = wall(p.created + p.start_seconds)
        if p.status in TERMINAL:
            body["output"] = None if removed else p.output
            body["completed_at"] = wall(p.completed or p.created)
            total = (p.completed or p.created) - p.created
            ran = max(0.0, min(p.run_seconds, total - p.start_seconds))
            body["metrics"] = {"predict_time": round(ran, 6), "total_time": round(total, 6)}
        if self.echo_webhook:
            body["webhook"] = p.webhook
        return body

    def _logs(self, p: Prediction) -> str:
        if p.status == "starting":
            return ""
        running = (self.now() - p.created - p.start_seconds) / p.run_seconds
        done = 100 if p.status == "succeeded" else int(100 * min(1.0, max(0.0, running)))
        return f"loading model\n{done:3d}%|{'#' * (done // 10):<10}| {done}/100 [00:01<00:01]\n"

    # -- the models -----------------------------------------------------------------------------

    def _audio(self, value: Any) -> tuple[np.ndarray, int, str]:
        """(samples as (frames, channels), sample rate, a name) of an audio input."""
        if not isinstance(value, str):
            raise ModelError("audio input is not a URI")
        if value.startswith("data:"):
            header, _, payload = value[5:].partition(",")
            try:
                data = base64.b64decode(payload, validate=True) if ";base64" in header else payload.encode()
            except (binascii.Error, ValueError) as err:
                raise ModelError(f"could not decode the data URI: {err}") from err
            name = "inline audio"
        else:
            file_id = value.rsplit("/", 1)[-1]
            with self._lock:
                stored = self.files.get(file_id) if value.startswith(f"{self.base_url}/v1/files/") else None
            if stored is None:
                raise ModelError(f"could not download {value}")
            data, name = stored["content"], stored["name"]
        try:
            samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except soundfile.LibsndfileError as err:
            raise ModelError(f"could not read the audio: {err}") from err
        return samples, rate, name

    def _deliver(self, p: Prediction, name: str, samples: np.ndarray | None, rate: int, fmt: str,
                 text: str | None = None) -> str:
        if text is not None:
            data, content_type = text.encode(), "text/plain"
        else:
            sf_format, content_type = FORMATS[fmt]
            buffer = io.BytesIO()
            soundfile.write(buffer, samples, rate, format=sf_format)
            data = buffer.getvalue()
        p.files[name] = (data, content_type)
        if self.output_mode == "data":
            return f"data:{content_type};base64,{base64.b64encode(data).decode()}"
        return f"{self.base_url}/delivery/{p.id}/{name}"

    def _run_model(self, p: Prediction) -> Any:
        inputs = p.input
        if p.model.kind == "demucs":
            samples, rate, _ = self._audio(inputs["audio"])
            fmt = inputs.get("output_format", "mp3")
            gains = STEM_GAINS[6 if inputs.get("model_name") == "htdemucs_6s" else 4]
            return {stem: self._deliver(p, f"{stem}.{fmt}", samples * gains[stem], rate, fmt) if stem in gains else None
                    for stem in DEMUCS_STEMS}
        if p.model.kind == "musicgen":
            if inputs.get("input_audio"):
                self._audio(inputs["input_audio"])
            frequency = 220.0 + zlib.crc32(str(inputs["prompt"]).encode()) % 440
            t = np.arange(int(inputs.get("duration", 8) * MUSICGEN_SAMPLE_RATE)) / MUSICGEN_SAMPLE_RATE
            tone = (0.3 * np.sin(2 * math.pi * frequency * t + float(inputs.get("seed") or 0))).astype(np.float32)
            fmt = inputs.get("output_format", "wav")
            return self._deliver(p, f"out.{fmt}", tone[:, None], MUSICGEN_SAMPLE_RATE, fmt)
        if p.model.kind == "stable_audio":
            seed = int(inputs.get("seed", -1))
            rng = np.random.default_rng(zlib.crc32(str(inputs["prompt"]).encode()) + (max(seed, 0)))
            frames = int(inputs.get("seconds_total", 8)) * STABLE_AUDIO_SAMPLE_RATE
            noise = (0.2 * rng.standard_normal((frames, 2))).astype(np.float32)
            url = self._deliver(p, "out.wav", noise, STABLE_AUDIO_SAMPLE_RATE, "wav")
            return {"audio": url} if self.malformed_output else url
        if p.model.kind in ("audiogen", "riffusion", "chatterbox", "rvc"):
            return self._run_new_model(p, inputs)
        samples, rate, name = self._audio(inputs["audio"])
        seconds = len(samples) / rate
        text = f"This is the fake transcript of {name}."
        language = inputs.get("language") or "auto"
        return {
            "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": round(seconds, 3), "text": f" {text}",
                          "tokens": [], "temperature": 0.0, "avg_logprob": -0.1, "compression_ratio": 1.0,
                          "no_speech_prob": 0.01}],
            "detected_language": "en" if language == "auto" else language,
            "transcription": text,
            "translation": None,
            "txt_file": self._deliver(p, "transcription.txt", None, 0, "", text=text),
            "srt_file": self._deliver(p, "transcription.srt", None, 0, "",
                                      text=f"1\n00:00:00,000 --> 00:00:{min(int(seconds), 59):02d},000\n{text}\n"),
        }

    def _run_new_model(self, p: Prediction, inputs: dict[str, Any]) -> Any:
        """AudioGen, Riffusion, Chatterbox and RVC: see the module doc."""
        kind = p.model.kind
        if kind == "audiogen":
            rng = np.random.default_rng(zlib.crc32(str(inputs["prompt"]).encode()))
            frames = int(float(inputs.get("duration", 3)) * AUDIOGEN_SAMPLE_RATE)
            bursts = (0.3 * rng.standard_normal(frames) * (np.arange(frames) % 4000 < 800)).astype(np.float32)
            url = self._deliver(p, "out.wav", bursts[:, None], AUDIOGEN_SAMPLE_RATE, inputs.get("output_format", "wav"))
            return {"audio": url} if self.malformed_output else url
        if kind == "riffusion":
            frequency = 110.0 + zlib.crc32(str(inputs.get("prompt_a", "")).encode()) % 440
            t = np.arange(int(RIFFUSION_SECONDS * RIFFUSION_SAMPLE_RATE)) / RIFFUSION_SAMPLE_RATE
            tone = (0.3 * np.sin(2 * math.pi * frequency * t)).astype(np.float32)
            audio = self._deliver(p, "gen_sound.wav", np.stack([tone, tone], axis=1), RIFFUSION_SAMPLE_RATE, "wav")
            if self.malformed_output:
                return audio
            image = b"\xff\xd8\xff\xe0 fake spectrogram \xff\xd9"
            p.files["spectrogram.jpg"] = (image, "image/jpeg")
            return {"audio": audio, "spectrogram": f"{self.base_url}/delivery/{p.id}/spectrogram.jpg"}
        if kind == "chatterbox":
            frequency = 140.0
            if inputs.get("audio_prompt"):
                prompt, rate, _ = self._audio(inputs["audio_prompt"])
                frequency += 20.0 * (len(prompt) / rate)  # a voice "like" the clip: it moves the pitch
            seconds = 0.06 * len(str(inputs["prompt"]))
            t = np.arange(int(seconds * CHATTERBOX_SAMPLE_RATE)) / CHATTERBOX_SAMPLE_RATE
            speech = (0.3 * np.sin(2 * math.pi * frequency * t)).astype(np.float32)
            url = self._deliver(p, "output.wav", speech[:, None], CHATTERBOX_SAMPLE_RATE, "wav")
            return {"audio": url} if self.malformed_output else url
        samples, rate, _ = self._audio(inputs["song_input"])
        if inputs.get("rvc_model", "Squidward") == "CUSTOM" and not str(inputs.get("custom_rvc_model_download_url",
                                                                                  "")).startswith("https://"):
            raise ModelError("rvc_model CUSTOM needs custom_rvc_model_download_url")
        ratio = 2.0 ** (float(inputs.get("pitch_change_all", 0)) / 12.0)
        mono = samples.mean(axis=1)
        # A pitch shift by resampling the positions (the length stays the input's), at the model's rate.
        frames = int(len(mono) / rate * RVC_SAMPLE_RATE)
        where = (np.arange(frames) * rate / RVC_SAMPLE_RATE * ratio) % max(1, len(mono))
        shifted = np.interp(where, np.arange(len(mono)), mono).astype(np.float32)
        fmt = inputs.get("output_format", "mp3")
        url = self._deliver(p, f"cover.{fmt}", shifted[:, None], RVC_SAMPLE_RATE, fmt)
        return {"audio": url} if self.malformed_output else url

    @staticmethod
    def _invalid(model: FakeModel, inputs: Any) -> list[dict[str, str]]:
        """Input validation against the documented schema: one entry per problem."""
        if not isinstance(inputs, dict):
            return [{"type": "type", "field": "input", "description": "input must be an object"}]
        problems: list[dict[str, str]] = []

        def need(key: str) -> None:
            if inputs.get(key) in (None, ""):
                problems.append({"type": "required", "field": "input", "description": f"{key} is required"})

        def one_of(key: str, allowed: tuple[Any, ...]) -> None:
            if key in inputs and inputs[key] not in allowed:
                problems.append({"type": "enum", "field": f"input.{key}",
                                 "description": f"{key} must be one of the following: {', '.join(map(str, allowed))}"})

        if model.kind == "demucs":
            need("audio")
            one_of("model_name", DEMUCS_MODELS)
            one_of("stem", ("none", *DEMUCS_STEMS))
            one_of("output_format", tuple(FORMATS))
        elif model.kind == "musicgen":
            need("prompt")
            one_of("model_version", MUSICGEN_VERSIONS)
            one_of("output_format", ("wav", "mp3"))
            duration = inputs.get("duration", 8)
            if not isinstance(duration, int) or not 1 <= duration <= 30:
                problems.append({"type": "number_one_of", "field": "input.duration",
                                 "description": "duration must be less than or equal to 30"})
        elif model.kind == "stable_audio":
            need("prompt")
            total = inputs.get("seconds_total", 8)
            if not isinstance(total, int) or isinstance(total, bool) or total > STABLE_AUDIO_MAX_SECONDS:
                problems.append({"type": "number_one_of", "field": "input.seconds_total",
                                 "description": "seconds_total must be less than or equal to "
                                                f"{STABLE_AUDIO_MAX_SECONDS}"})
            for key, kind in (("steps", int), ("seed", int), ("seconds_start", int), ("cfg_scale", (int, float))):
                if key in inputs and (not isinstance(inputs[key], kind) or isinstance(inputs[key], bool)):
                    problems.append({"type": "type", "field": f"input.{key}",
                                     "description": f"{key} has the wrong type"})
        elif model.kind in ("audiogen", "riffusion", "chatterbox", "rvc"):
            problems += _invalid_new_model(model.kind, inputs)
        else:
            need("audio")
            one_of("transcription", ("plain text", "srt", "vtt"))
        return problems

    # -- HTTP -----------------------------------------------------------------------------------

    def _problem(self, status: int, detail: str, title: str | None = None, *, headers: dict[str, str] | None = None,
                 invalid_fields: list[dict[str, str]] | None = None) -> JSONResponse:
        body: dict[str, Any] = {"detail": detail, "status": status}
        if title:
            body["title"] = title
        if invalid_fields:
            body["invalid_fields"] = invalid_fields
        return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)

    def _gate(self, route: str) -> Callable[[Request], Awaitable[Fault | None]]:
        """A dependency every route runs first: record the request, check the token, take the
        next scripted fault. Returns the fault to apply after handling; a fault that replaces
        the handling (or a refused token) ends the request through `_Early`."""

        async def gate(request: Request) -> Fault | None:
            body: Any = None
            if route == "create":
                try:
                    body = await request.json()
                except ValueError:
                    body = None
            elif route == "upload":
                body = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
            request.state.body = body
            with self._lock:
                self.requests.append(Recorded(route, request.method, request.url.path, dict(request.query_params),
                                              {k.lower(): v for k, v in request.headers.items()}, body,
                                              time.monotonic()))
            if route != "delivery":  # outputs are public URLs, like replicate.delivery
                auth = request.headers.get("authorization", "")
                if auth not in (f"Bearer {self.token}", f"Token {self.token}"):
                    raise _Early(self._problem(401, "You did not pass a valid authentication token", "Unauthenticated"))
            with self._lock:
                fault = self._faults[route].pop(0) if self._faults[route] else None
            if fault is None or fault.apply:
                return fault
            await self._sleep(fault.delay_seconds)
            raise _Early(self._faulty(fault))

        return gate

    def _faulty(self, fault: Fault, status: int = 200) -> Response:
        if fault.malformed:
            return Response(b'{"id": "truncated', status_code=fault.status or status, media_type="application/json")
        code = fault.status or status
        detail = fault.detail or {
            429: "Request was throttled. Your rate limit resets in ~30s.",
            500: "Internal server error",
        }.get(code, f"HTTP {code}")
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
        title = "Input validation failed" if code == 422 else None
        return self._problem(code, detail, title, headers=headers, invalid_fields=fault.invalid_fields)

    async def _finish(self, fault: Fault | None, response: Response) -> Response:
        """The answer to a request handled for real, delayed or garbled by an `apply` fault."""
        if fault is None:
            return response
        await self._sleep(fault.delay_seconds)
        if fault.malformed or fault.status:
            return self._faulty(fault, response.status_code)
        return response

    async def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        # ASYNC110: _closing is a threading.Event (set from the test's thread), not an asyncio one.
        while not self._closing.is_set() and time.monotonic() < end:  # noqa: ASYNC110
            await asyncio.sleep(min(0.05, max(0.0, end - time.monotonic())))

    def _create(self, model: FakeModel, body: dict[str, Any], request: Request) -> Prediction | Response:
        """The new prediction, or the 422 that refuses it."""
        prefer = request.headers.get("prefer")
        if prefer is not None and not PREFER.match(prefer):
            return self._problem(422, f"Prefer header {prefer!r} does not match wait or wait=1..60", "Invalid header")
        cancel_after = None
        raw = request.headers.get("cancel-after")
        if raw is not None:
            cancel_after = parse_duration(raw)
            if cancel_after is None or cancel_after < 5:
                return self._problem(422, f"Cancel-After {raw!r} must be a duration of at least 5s", "Invalid header")
        problems = self._invalid(model, body.get("input"))
        if problems:
            detail = "".join(f"- {p['field']}: {p['description']}\n" for p in problems)
            return self._problem(422, detail, "Input validation failed", invalid_fields=problems)
        with self._lock:
            prediction = Prediction(
                id=_prediction_id(), model=model, input=dict(body["input"]), webhook=body.get("webhook"),
                created=self.now(), created_at=datetime.now(UTC) + timedelta(seconds=self._offset),
                start_seconds=self.start_seconds, run_seconds=self.run_seconds, cancel_after=cancel_after,
            )
            self.predictions[prediction.id] = prediction
        return prediction

    async def _answer_create(self, route_fault: Fault | None, model: FakeModel | None, body: Any,
                             request: Request) -> Response:
        if model is None:
            return self._problem(422, "The specified version does not exist (or perhaps you don't have permission "
                                 "to use it?)", "Invalid version or not permitted")
        if not isinstance(body, dict):
            return self._problem(400, "The request body is not a JSON object", "Bad request")
        created = self._create(model, body, request)
        if isinstance(created, Response):
            return created
        prediction_id = created.id
        headers: dict[str, str] = {}
        prefer = request.headers.get("prefer")
        if prefer:
            hold = int(prefer.partition("=")[2] or 60)
            headers["Preference-Applied"] = f"wait={hold}"
            end = time.monotonic() + hold
            while time.monotonic() < end and not self._closing.is_set():
                if self.status_of(prediction_id) in TERMINAL:
                    break
                await asyncio.sleep(0.02)
        with self._lock:
            answer = self._to_json(self.predictions[prediction_id])
        return await self._finish(route_fault, JSONResponse(answer, status_code=201, headers=headers))

    def _build_app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        app.add_exception_handler(_Early, lambda request, early: early.response)

        @app.post("/v1/predictions")
        async def create(request: Request, fault: Fault | None = Depends(self._gate("create"))) -> Response:
            body = request.state.body
            version = body.get("version") if isinstance(body, dict) else None
            model = self._model_for_version(version)
            return await self._answer_create(fault, model, body, request)

        @app.post("/v1/models/{owner}/{name}/predictions")
        async def create_for_model(owner: str, name: str, request: Request,
                                   fault: Fault | None = Depends(self._gate("create"))) -> Response:
            body = request.state.body
            model = self.models.get(f"{owner}/{name}")
            if model is None:
                return self._problem(404, f"Model {owner}/{name} does not exist", "Not found")
            return await self._answer_create(fault, model if model.official else None, body, request)

        @app.get("/v1/predictions/{prediction_id}")
        async def get(prediction_id: str, fault: Fault | None = Depends(self._gate("get"))) -> Response:
            with self._lock:
                prediction = self.predictions.get(prediction_id)
                answer = None if prediction is None else self._to_json(prediction)
            if answer is None:
                return self._problem(404, f"Prediction {prediction_id} does not exist", "Not found")
            return await self._finish(fault, JSONResponse(answer))

        @app.post("/v1/predictions/{prediction_id}/cancel")
        async def cancel(prediction_id: str, fault: Fault | None = Depends(self._gate("cancel"))) -> Response:
            with self._lock:
                prediction = self.predictions.get(prediction_id)
                if prediction is not None:
                    self._advance(prediction)
                    if prediction.status not in TERMINAL:
                        prediction.status, prediction.completed = "canceled", self.now()
                answer = None if prediction is None else self._to_json(prediction)
            if answer is None:
                return self._problem(404, f"Prediction {prediction_id} does not exist", "Not found")
            return await self._finish(fault, JSONResponse(answer))

        @app.get("/v1/predictions")
        async def listing(request: Request,
                          fault: Fault | None = Depends(self._gate("list"))) -> Response:
            after = request.query_params.get("created_after")
            offset = int(request.query_params.get("cursor", "0"))
            try:
                since = datetime.fromisoformat(after) if after else None
            except ValueError:
                return self._problem(422, f"created_after {after!r} is not an ISO 8601 date-time", "Invalid query")
            with self._lock:
                chosen = sorted(self.predictions.values(), key=lambda p: p.created, reverse=True)
                if since is not None:
                    chosen = [p for p in chosen if p.created_at >= since]
                page = [self._to_json(p) for p in chosen[offset:offset + self.page_size]]
            more = offset + self.page_size < len(chosen)
            query = {"cursor": offset + self.page_size, **({"created_after": after} if after else {})}
            answer = {"next": f"{self.base_url}/v1/predictions?{urlencode(query)}" if more else None,
                      "previous": None, "results": page}
            return await self._finish(fault, JSONResponse(answer))

        @app.post("/v1/files")
        async def upload(request: Request, fault: Fault | None = Depends(self._gate("upload"))) -> Response:
            form = await request.form()
            content = form.get("content")
            if content is None or isinstance(content, str):
                return self._problem(422, "content is required", "Input validation failed")
            data = await content.read()
            file_id = _prediction_id()
            created = datetime.now(UTC)
            name = str(form.get("filename") or content.filename or "file")
            metadata = json.loads(str(form.get("metadata") or "{}"))
            stored = {
                "id": file_id, "name": name, "content_type": str(form.get("type") or content.content_type),
                "size": len(data), "etag": hashlib.md5(data).hexdigest(),
                "checksums": {"sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()},
                "metadata": metadata, "created_at": created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "expires_at": (created + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "urls": {"get": f"{self.base_url}/v1/files/{file_id}"},
            }
            with self._lock:
                self.files[file_id] = {**stored, "content": data}
            return await self._finish(fault, JSONResponse(stored, status_code=201))

        @app.get("/v1/files/{file_id}")
        async def file(file_id: str, fault: Fault | None = Depends(self._gate("file"))) -> Response:
            with self._lock:
                stored = self.files.get(file_id)
            if stored is None:
                return self._problem(404, f"File {file_id} does not exist", "Not found")
            return await self._finish(fault, JSONResponse({k: v for k, v in stored.items() if k != "content"}))

        @app.delete("/v1/files/{file_id}")
        async def delete_file(file_id: str, fault: Fault | None = Depends(self._gate("file"))) -> Response:
            with self._lock:
                gone = self.files.pop(file_id, None)
            if gone is None:
                return self._problem(404, f"File {file_id} does not exist", "Not found")
            return await self._finish(fault, Response(status_code=204))

        @app.get("/v1/models/{owner}/{name}")
        async def model(owner: str, name: str, fault: Fault | None = Depends(self._gate("model"))) -> Response:
            found = self.models.get(f"{owner}/{name}")
            if found is None:
                return self._problem(404, f"Model {owner}/{name} does not exist", "Not found")
            answer = {"url": f"{self.base_url}/{found.slug}", "owner": owner, "name": name, "visibility": "public",
                      "latest_version": {"id": found.version, "created_at": "2024-01-01T00:00:00.000000Z",
                                         "cog_version": "0.9.0"}}
            return await self._finish(fault, JSONResponse(answer))

        @app.get("/v1/account")
        async def account(fault: Fault | None = Depends(self._gate("account"))) -> Response:
            answer = {"type": "user", "username": "flowstate-test", "name": "Flowstate Test", "github_url": None}
            return await self._finish(fault, JSONResponse(answer))

        @app.get("/delivery/{prediction_id}/{name}")
        async def delivery(prediction_id: str, name: str,
                           fault: Fault | None = Depends(self._gate("delivery"))) -> Response:
            with self._lock:
                prediction = self.predictions.get(prediction_id)
                stored = None if prediction is None or self._removed(prediction) else prediction.files.get(name)
            if stored is None:
                return Response(b"Not found", status_code=404, media_type="text/plain")
            return await self._finish(fault, Response(stored[0], media_type=stored[1]))

        return app

    def _model_for_version(self, version: Any) -> FakeModel | None:
        if not isinstance(version, str):
            return None
        slug, _, pinned = version.partition(":")
        for model in self.models.values():
            if version == model.version or (slug == model.slug and pinned == model.version):
                return model
            if version == model.slug and model.official:
                return model
        return None


# (field, type, minimum, maximum) of the numeric inputs of the models docs/cloud-models.md records.
NUMBERS: dict[str, tuple[tuple[str, type | tuple[type, ...], float | None, float | None], ...]] = {
    "audiogen": (("duration", (int, float), 1, 10), ("top_k", int, None, None), ("top_p", (int, float), None, None),
                 ("temperature", (int, float), None, None), ("classifier_free_guidance", int, None, None)),
    "riffusion": (("alpha", (int, float), 0, 1), ("denoising", (int, float), 0, 1),
                  ("num_inference_steps", int, 1, None)),
    "chatterbox": (("exaggeration", (int, float), 0.25, 2), ("cfg_weight", (int, float), 0.2, 1),
                   ("temperature", (int, float), 0.05, 5), ("seed", int, None, None)),
    "rvc": (("pitch_change_all", (int, float), None, None), ("index_rate", (int, float), 0, 1),
            ("filter_radius", int, 0, 7), ("rms_mix_rate", (int, float), 0, 1), ("protect", (int, float), 0, 0.5),
            ("reverb_size", (int, float), 0, 1), ("reverb_wetness", (int, float), 0, 1),
            ("reverb_dryness", (int, float), 0, 1), ("reverb_damping", (int, float), 0, 1)),
}
REQUIRED = {"audiogen": "prompt", "riffusion": "prompt_a", "chatterbox": "prompt", "rvc": "song_input"}
ENUMS: dict[str, dict[str, tuple[str, ...]]] = {
    "audiogen": {"output_format": ("wav", "mp3")},
    "riffusion": {"seed_image_id": RIFFUSION_SEED_IMAGES},
    "chatterbox": {},
    "rvc": {"rvc_model": RVC_VOICES, "output_format": ("mp3", "wav"),
            "pitch_change": ("no-change", "male-to-female", "female-to-male")},
}


def _invalid_new_model(kind: str, inputs: dict[str, Any]) -> list[dict[str, str]]:
    """Validation against the schemas docs/cloud-models.md records: required, enums, types, ranges."""
    problems: list[dict[str, str]] = []
    if inputs.get(REQUIRED[kind]) in (None, ""):
        problems.append({"type": "required", "field": "input", "description": f"{REQUIRED[kind]} is required"})
    for key, allowed in ENUMS[kind].items():
        if key in inputs and inputs[key] not in allowed:
            problems.append({"type": "enum", "field": f"input.{key}",
                             "description": f"{key} must be one of the following: {', '.join(allowed)}"})
    for key, kinds, low, high in NUMBERS[kind]:
        if key not in inputs:
            continue
        value = inputs[key]
        if isinstance(value, bool) or not isinstance(value, kinds):
            problems.append({"type": "type", "field": f"input.{key}", "description": f"{key} has the wrong type"})
        elif (low is not None and value < low) or (high is not None and value > high):
            problems.append({"type": "number_one_of", "field": f"input.{key}",
                             "description": f"{key} must be between {low} and {high}"})
    return problems


def parse_duration(text: str) -> float | None:
    """Cancel-After's format: "30" (seconds), "30s", "5m", "1h30m"; None when unreadable."""
    if text.isdigit():
        return float(text)
    match = DURATION.match(text)
    if not text or match is None:
        return None
    hours, minutes, secs = (int(g or 0) for g in match.groups())
    return float(hours * 3600 + minutes * 60 + secs)


def _prediction_id() -> str:
    """26 lowercase base32 characters, like Replicate's ids."""
    return base64.b32encode(secrets.token_bytes(20)).decode().lower()[:26]


@contextmanager
def running_fake(**options: Any) -> Iterator[tuple[str, FakeReplicate]]:
    """Serve a FakeReplicate(**options) on a free loopback port; yields (base_url, fake)."""
    fake = FakeReplicate(**options)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    fake.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(fake.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="fake-replicate", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the fake Replicate server did not start")
        time.sleep(0.01)
    try:
        yield fake.base_url, fake
    finally:
        fake.close()
        server.should_exit = True
        thread.join(10)
        sock.close()
