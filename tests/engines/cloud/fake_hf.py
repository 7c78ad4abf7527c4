"""A fake Hugging Face inference service on loopback, faithful to `shared/reference/cloud-tiers.md`
section 2: the `hf-inference` router (`POST /hf-inference/models/{model_id}`) and dedicated
Endpoints (`POST /endpoints/{name}`, each serving one task).

The models are toys (stems are the input at other gains, the transcript is fixed, generated audio
is a sine) but the wire shapes are the documented ones: raw audio with an audio Content-Type or
JSON `{"inputs": <base64>, "parameters": {...}}` in; `[{label, content-type, blob}]`, `{text,
chunks}` or raw audio out; errors as `{"error": "..."}`. Failures are scripted through the
control object: the legacy 503 `{"error": "... is currently loading", "estimated_time": s}`, an
Endpoint scaled to zero that holds requests for `X-Scale-Up-Timeout` seconds, any status with any
body and headers, slow answers and malformed bodies.

`serve(app)` (a uvicorn server on a free port in a background thread) is also used by
`fake_workers_ai.py`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile
import uvicorn
from fastapi import FastAPI, Request, Response

TOKEN = "hf_fake_token_0123456789abcdef"
ASR = "automatic-speech-recognition"
AUDIO_TO_AUDIO = "audio-to-audio"
TEXT_TO_AUDIO = "text-to-audio"
ASR_PARAMETERS = {"return_timestamps", "generation_parameters"}


@contextmanager
def serve(app: FastAPI, name: str = "fake") -> Iterator[str]:
    """Run `app` on uvicorn on a free loopback port in a background thread; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # A slow scripted answer must not hold shutdown for long.
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False, timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True)
    thread.start()
    started = time.monotonic()
    while not server.started:
        if not thread.is_alive() or time.monotonic() - started > 10:
            raise RuntimeError(f"{name}: uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@dataclass
class Seen:
    """One request as the fake received it."""

    at: float  # time.monotonic() on arrival
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Scripted:
    """A scripted answer for the next request: wait `delay_seconds`, then answer `status` with
    `body` (bytes as is; anything else as JSON) and `headers`; `status=None` answers normally
    after the delay (a slow answer)."""

    status: int | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_seconds: float = 0.0

    def response(self) -> Response:
        if isinstance(self.body, bytes):
            media = self.headers.get("content-type", "application/octet-stream")
            return Response(self.body, status_code=self.status or 200, headers=self.headers, media_type=media)
        return Response(json.dumps(self.body), status_code=self.status or 200, headers=self.headers,
                        media_type="application/json")


class FakeControl:
    """What tests use to script a fake and to see what it received. Thread-safe."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.requests: list[Seen] = []
        self._script: deque[Scripted] = deque()
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Forget requests and scripted answers (between tests sharing one server)."""
        with self._lock:
            self.requests.clear()
            self._script.clear()

    def script(self, *answers: Scripted) -> None:
        """Answer the next requests (of the inference routes) with `answers`, in order."""
        with self._lock:
            self._script.extend(answers)

    def next_scripted(self) -> Scripted | None:
        with self._lock:
            return self._script.popleft() if self._script else None

    async def scripted_answer(self) -> Response | None:
        """The next scripted answer after its delay; None to answer normally."""
        scripted = self.next_scripted()
        if scripted is None:
            return None
        if scripted.delay_seconds:
            await asyncio.sleep(scripted.delay_seconds)
        return scripted.response() if scripted.status is not None else None

    async def record(self, request: Request) -> Seen:
        seen = Seen(time.monotonic(), request.method, request.url.path,
                    {k.lower(): v for k, v in request.headers.items()}, await request.body())
        with self._lock:
            self.requests.append(seen)
        return seen

    def authorized(self, seen: Seen) -> bool:
        return seen.headers.get("authorization") == f"Bearer {self.token}"


def error(status: int, message: Any, headers: dict[str, str] | None = None) -> Response:
    """Hugging Face's error body: {"error": "..."}."""
    return Response(json.dumps({"error": message}), status_code=status, headers=headers or {},
                    media_type="application/json")


def flac(audio: np.ndarray, sample_rate: int) -> bytes:
    """`audio` shaped (num_samples, num_channels) as FLAC bytes."""
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, sample_rate, format="FLAC")
    return buffer.getvalue()


class HFControl(FakeControl):
    """The Hugging Face fake's state: models per task, loading models, Endpoints scaled to zero."""

    def __init__(self, token: str = TOKEN) -> None:
        super().__init__(token)
        # model id -> task, as on the hub; the client's defaults plus a stems model for tests.
        self.models: dict[str, str] = {
            "openai/whisper-large-v3-turbo": ASR,
            "facebook/musicgen-small": TEXT_TO_AUDIO,
            "fake/separator": AUDIO_TO_AUDIO,
        }
        self.endpoints: dict[str, str] = {"stems": AUDIO_TO_AUDIO, "asr": ASR, "music": TEXT_TO_AUDIO,
                                          "umx": AUDIO_TO_AUDIO}
        # An Endpoint's own stems, where they are not `stem_labels`: Open-Unmix's four.
        self.endpoint_labels: dict[str, list[str]] = {"umx": ["vocals", "drums", "bass", "other"]}
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.transcript = "one two three four"
        self.stem_labels = ["vocals", "accompaniment"]
        self._loading_until: dict[str, float] = {}
        self._scale_up_seconds: float | None = None
        self._ready_at: float | None = None

    def loading(self, model: str, seconds: float) -> None:
        """Legacy router cold start: `model` answers 503 with estimated_time for `seconds` from now."""
        self._loading_until[model] = time.monotonic() + seconds

    def scale_to_zero(self, start_seconds: float) -> None:
        """The Endpoints have no replica; the next request starts one that is ready
        `start_seconds` later."""
        self._scale_up_seconds = start_seconds
        self._ready_at = None

    def endpoint_url(self, base_url: str, name: str) -> str:
        return f"{base_url}/endpoints/{name}"

    def router_url(self, base_url: str) -> str:
        return f"{base_url}/hf-inference"

    def loading_left(self, model: str) -> float:
        return max(0.0, self._loading_until.get(model, 0.0) - time.monotonic())

    def replica_wait(self, now: float) -> float:
        """Seconds until the Endpoint's replica is ready (0: ready), starting it if needed."""
        if self._scale_up_seconds is None:
            return 0.0
        if self._ready_at is None:
            self._ready_at = now + self._scale_up_seconds
        left = self._ready_at - now
        if left <= 0:
            self._scale_up_seconds = None
            return 0.0
        return left


def create_app(control: HFControl) -> FastAPI:
    app = FastAPI()

    @app.post("/hf-inference/models/{model_id:path}")
    async def router(model_id: str, request: Request) -> Response:
        seen, early = await _begin(control, request)
        task = control.models.get(model_id)
        if early is not None or task is None:
            return early or error(404, f"Model {model_id} does not exist")
        left = control.loading_left(model_id)
        if left > 0:
            body = {"error": f"Model {model_id} is currently loading", "estimated_time": round(left, 3)}
            return Response(json.dumps(body), status_code=503, media_type="application/json")
        return _infer(control, task, seen)

    @app.post("/endpoints/{name}")
    async def endpoint(name: str, request: Request) -> Response:
        seen, early = await _begin(control, request)
        task = control.endpoints.get(name)
        if early is not None or task is None:
            return early or error(404, "Not Found")
        left = control.replica_wait(seen.at)
        if left > 0:
            # The proxy holds the request up to X-Scale-Up-Timeout seconds for the replica. Checked
            # against the clock after each sleep: the server's loop (uvloop: millisecond timers on
            # a cached clock) may wake a sleep early, which once answered 503 to a request the
            # replica was ready for by the time it was held.
            until = seen.at + float(seen.headers.get("x-scale-up-timeout", "0") or 0)
            while (left := control.replica_wait(time.monotonic())) > 0 and time.monotonic() < until:  # noqa: ASYNC110 - a clock, no event
                await asyncio.sleep(min(left, until - time.monotonic()))
            if left > 0:
                # The documentation does not show this body; plain text keeps clients honest.
                return Response(b"503 Service Unavailable", status_code=503, media_type="text/plain")
        return _infer(control, task, seen, control.endpoint_labels.get(name))

    @app.get("/hf-inference/models/{model_id:path}")
    async def router_get(model_id: str, request: Request) -> Response:
        return await _probe(control, request, model_id in control.models)

    @app.get("/endpoints/{name}")
    async def endpoint_get(name: str, request: Request) -> Response:
        return await _probe(control, request, name in control.endpoints)

    return app


async def _begin(control: FakeControl, request: Request) -> tuple[Seen, Response | None]:
    """Record the request; then a 401 without the token, or the next scripted answer, if any."""
    seen = await control.record(request)
    if not control.authorized(seen):
        return seen, error(401, "Invalid credentials in Authorization header")
    return seen, await control.scripted_answer()


async def _probe(control: FakeControl, request: Request, known: bool) -> Response:
    """GET on an inference URL: no documented health route, so method-not-allowed when all is well."""
    _, early = await _begin(control, request)
    if early is not None:
        return early
    return error(405, "Method Not Allowed") if known else error(404, "Not Found")


def _audio_input(seen: Seen) -> tuple[np.ndarray, int, dict[str, Any]] | Response:
    """The audio and parameters of an audio task, in either documented request shape."""
    content_type = seen.headers.get("content-type", "").split(";")[0].strip()
    parameters: dict[str, Any] = {}
    if content_type == "application/json":
        try:
            body = json.loads(seen.body)
            raw = base64.b64decode(body["inputs"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error):
            return error(400, "inputs must be base64-encoded audio")
        parameters = body.get("parameters") or {}
        if set(body) - {"inputs", "parameters"} or not isinstance(parameters, dict):
            return error(422, f"unexpected keys in payload: {sorted(set(body) - {'inputs', 'parameters'})}")
    elif content_type.startswith("audio/"):
        raw = seen.body
    else:
        return error(400, f"Content type {content_type!r} not supported: send audio/* or application/json")
    try:
        audio, sample_rate = soundfile.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except soundfile.LibsndfileError:
        return error(400, "Malformed soundfile")
    return audio, sample_rate, parameters


def _infer(control: HFControl, task: str, seen: Seen, labels: list[str] | None = None) -> Response:
    if task == TEXT_TO_AUDIO:
        return _text_to_audio(seen)
    decoded = _audio_input(seen)
    if isinstance(decoded, Response):
        return decoded
    audio, sample_rate, parameters = decoded
    if task == ASR:
        unknown = set(parameters) - ASR_PARAMETERS
        if unknown:
            return error(400, f"unknown parameters {sorted(unknown)}")
        body: dict[str, Any] = {"text": control.transcript}
        if parameters.get("return_timestamps"):
            words = control.transcript.split()
            step = audio.shape[0] / sample_rate / max(1, len(words))
            body["chunks"] = [{"text": word, "timestamp": [round(i * step, 3), round((i + 1) * step, 3)]}
                              for i, word in enumerate(words)]
        return Response(json.dumps(body), media_type="application/json")
    stems = []
    for index, label in enumerate(labels or control.stem_labels):
        blob = flac(audio * (0.5 / (index + 1)), sample_rate)
        stems.append({"label": label, "content-type": "audio/flac", "blob": base64.b64encode(blob).decode()})
    return Response(json.dumps(stems), media_type="application/json")


def _text_to_audio(seen: Seen) -> Response:
    if seen.headers.get("content-type", "").split(";")[0] != "application/json":
        return error(400, "text-to-audio takes JSON {\"inputs\": ..., \"parameters\": ...}")
    try:
        body = json.loads(seen.body)
    except ValueError:
        return error(400, "body is not JSON")
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), str) or not body["inputs"]:
        return error(422, "inputs must be a non-empty string")
    parameters = body.get("parameters") or {}
    if set(parameters) - {"generation_parameters"}:
        return error(400, f"unknown parameters {sorted(set(parameters) - {'generation_parameters'})}")
    tokens = (parameters.get("generation_parameters") or {}).get("max_new_tokens", 50)
    sample_rate = 32000
    seconds = min(float(tokens) / 50.0, 2.0)
    t = np.arange(int(seconds * sample_rate), dtype=np.float32) / sample_rate
    audio = (0.1 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)[:, None]
    return Response(flac(audio, sample_rate), media_type="audio/flac")


@contextmanager
def fake_hf(token: str = TOKEN) -> Iterator[tuple[str, HFControl]]:
    """Start the fake; yield (root URL, control). The router's base URL is `root + "/hf-inference"`."""
    control = HFControl(token)
    with serve(create_app(control), "fake-hf") as url:
        yield url, control
