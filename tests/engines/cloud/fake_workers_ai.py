"""A fake Cloudflare Workers AI on loopback, faithful to `shared/reference/cloud-tiers.md`
section 3: `POST /client/v4/accounts/{account_id}/ai/run/{model}` with a Bearer token, answers in
the `{result, success, errors, messages}` envelope.

Models: `@cf/openai/whisper` (raw bytes or JSON {"audio": [0-255 ints]}),
`@cf/openai/whisper-large-v3-turbo` (JSON {"audio": "<base64>", ...} only), `@cf/myshell-ai/melotts`
({prompt, lang} -> {"audio": "<base64 MP3>"}, or binary audio/mpeg when `tts_binary` is set) and
`@cf/baai/bge-{small,base,large}-en-v1.5` ({text, pooling} -> {shape, data, pooling}). Errors use
the documented codes: 5007 no such model, 5004 invalid base64, 3003 incomplete request; scripted
ones add 3036 quota and 3040 capacity 429s (with or without Retry-After), 5xx, slow answers and
malformed bodies.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import soundfile
from fastapi import FastAPI, Request, Response

from tests.engines.cloud.fake_hf import FakeControl, Scripted, Seen, serve

TOKEN = "cf_fake_token_abcdef0123456789"
ACCOUNT_ID = "0123456789abcdef0123456789abcdef"
EMBED_DIMENSIONS = {
    "@cf/baai/bge-small-en-v1.5": 384,
    "@cf/baai/bge-base-en-v1.5": 768,
    "@cf/baai/bge-large-en-v1.5": 1024,
}
TURBO_KEYS = {"audio", "task", "language", "vad_filter", "initial_prompt", "prefix"}


def envelope(result: Any) -> dict[str, Any]:
    return {"result": result, "success": True, "errors": [], "messages": []}


def failure(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {"result": None, "success": False, "errors": [{"code": code, "message": message}], "messages": []}
    return Response(json.dumps(body), status_code=status, headers=headers or {}, media_type="application/json")


def quota() -> Scripted:
    """The daily free allocation is used up: 429 code 3036, until 00:00 UTC."""
    body = {"result": None, "success": False, "messages": [], "errors": [{
        "code": 3036, "message": "AiError: AiError: You have used up your daily free allocation of 10,000 neurons, "
                                 "please upgrade to Cloudflare's Workers Paid plan if you would like to continue "
                                 "usage."}]}
    return Scripted(429, body)


def capacity(retry_after: str | None = None) -> Scripted:
    """Out of capacity: 429 code 3040, transient; optionally with Retry-After."""
    body = {"result": None, "success": False, "messages": [],
            "errors": [{"code": 3040, "message": "Capacity temporarily exceeded, please try again."}]}
    return Scripted(429, body, headers={"retry-after": retry_after} if retry_after is not None else {})


class WorkersAIControl(FakeControl):
    """The Workers AI fake's state."""

    def __init__(self, token: str = TOKEN, account_id: str = ACCOUNT_ID) -> None:
        super().__init__(token)
        self.account_id = account_id
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.transcript = "one two three four"
        self.tts_binary = False  # answer MeloTTS with audio/mpeg bytes instead of the envelope

    def base_url(self, root: str) -> str:
        return f"{root}/client/v4"


def create_app(control: WorkersAIControl) -> FastAPI:
    app = FastAPI()

    @app.post("/client/v4/accounts/{account_id}/ai/run/{model:path}")
    async def run(account_id: str, model: str, request: Request) -> Response:
        seen = await control.record(request)
        if not control.authorized(seen) or account_id != control.account_id:
            return failure(401, 10000, "Authentication error")
        scripted = await control.scripted_answer()
        if scripted is not None:
            return scripted
        if model in ("@cf/openai/whisper", "@cf/openai/whisper-large-v3-turbo"):
            return _whisper(control, model, seen)
        if model == "@cf/myshell-ai/melotts":
            return _melotts(control, seen)
        if model in EMBED_DIMENSIONS:
            return _embed(model, seen)
        return failure(400, 5007, f"No such model {model} or task")

    return app


def _json_body(seen: Seen) -> dict[str, Any] | Response:
    try:
        body = json.loads(seen.body)
    except ValueError:
        return failure(400, 3003, "AiError: AiError: Bad input: body is not JSON")
    if not isinstance(body, dict):
        return failure(400, 3003, "AiError: AiError: Bad input: expected an object")
    return body


def _whisper(control: WorkersAIControl, model: str, seen: Seen) -> Response:
    turbo = model.endswith("turbo")
    content_type = seen.headers.get("content-type", "").split(";")[0]
    if content_type == "application/json":
        body = _json_body(seen)
        if isinstance(body, Response):
            return body
        audio = body.get("audio")
        if turbo:
            if set(body) - TURBO_KEYS or not isinstance(audio, str):
                return failure(400, 3003, "AiError: AiError: Bad input: audio must be a base64 string")
            try:
                raw = base64.b64decode(audio, validate=True)
            except binascii.Error:
                return failure(400, 5004, "AiError: AiError: Invalid base64 audio")
        else:
            if not isinstance(audio, list) or not all(isinstance(b, int) and 0 <= b <= 255 for b in audio):
                return failure(400, 3003, "AiError: AiError: Bad input: audio must be an array of bytes")
            raw = bytes(audio)
    elif turbo:
        return failure(400, 3003, "AiError: AiError: Bad input: this model takes JSON")
    else:
        raw = seen.body
    try:
        data, sample_rate = soundfile.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except soundfile.LibsndfileError:
        return failure(400, 3003, "AiError: AiError: Bad input: cannot decode audio")
    duration = data.shape[0] / sample_rate
    words = control.transcript.split()
    step = duration / max(1, len(words))
    timed = [{"word": w, "start": round(i * step, 3), "end": round((i + 1) * step, 3)} for i, w in enumerate(words)]
    vtt = "WEBVTT\n\n" + "\n\n".join(f"{w['start']:.3f} --> {w['end']:.3f}\n{w['word']}" for w in timed)
    if turbo:
        result = {
            "transcription_info": {"language": "en", "language_probability": 0.99, "duration": duration,
                                   "duration_after_vad": duration},
            "text": control.transcript, "word_count": len(words), "vtt": vtt,
            "segments": [{"start": 0.0, "end": round(duration, 3), "text": control.transcript, "temperature": 0.0,
                          "avg_logprob": -0.2, "compression_ratio": 1.1, "no_speech_prob": 0.01, "words": timed}],
        }
    else:
        result = {"text": control.transcript, "word_count": len(words), "words": timed, "vtt": vtt}
    return Response(json.dumps(envelope(result)), media_type="application/json")


def _melotts(control: WorkersAIControl, seen: Seen) -> Response:
    body = _json_body(seen)
    if isinstance(body, Response):
        return body
    if not isinstance(body.get("prompt"), str) or not body["prompt"] or set(body) - {"prompt", "lang"}:
        return failure(400, 3003, "AiError: AiError: Bad input: prompt is required")
    sample_rate = 44100
    seconds = min(2.0, len(body["prompt"]) / 15.0)
    t = np.arange(int(seconds * sample_rate), dtype=np.float32) / sample_rate
    buffer = io.BytesIO()
    soundfile.write(buffer, (0.1 * np.sin(2 * np.pi * 220.0 * t))[:, None], sample_rate, format="MP3")
    if control.tts_binary:
        return Response(buffer.getvalue(), media_type="audio/mpeg")
    audio = base64.b64encode(buffer.getvalue()).decode()
    return Response(json.dumps(envelope({"audio": audio})), media_type="application/json")


def embedding_vectors(model: str, texts: list[str]) -> list[list[float]]:
    """The fake's vectors for one request's `texts` (not normalised): what tests derive rankings from."""
    dimensions = EMBED_DIMENSIONS[model]
    return [[round(float(np.sin(i + len(t) + j)), 6) for j in range(dimensions)] for i, t in enumerate(texts)]


def _embed(model: str, seen: Seen) -> Response:
    body = _json_body(seen)
    if isinstance(body, Response):
        return body
    text = body.get("text")
    texts = [text] if isinstance(text, str) else text
    if (not isinstance(texts, list) or not texts or len(texts) > 100 or not all(isinstance(t, str) for t in texts)
            or body.get("pooling", "mean") not in ("mean", "cls") or set(body) - {"text", "pooling"}):
        return failure(400, 3003, "AiError: AiError: Bad input: text must be a string or up to 100 strings")
    vectors = embedding_vectors(model, texts)
    result = {"shape": [len(texts), EMBED_DIMENSIONS[model]], "data": vectors, "pooling": body.get("pooling", "mean")}
    return Response(json.dumps(envelope(result)), media_type="application/json")


@contextmanager
def fake_workers_ai(token: str = TOKEN, account_id: str = ACCOUNT_ID) -> Iterator[tuple[str, WorkersAIControl]]:
    """Start the fake; yield (base URL for the client, control)."""
    control = WorkersAIControl(token, account_id)
    with serve(create_app(control), "fake-workers-ai") as root:
        yield control.base_url(root), control
