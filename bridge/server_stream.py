"""Live stems across the network: the self-hosted server's `/v1/stream` WebSocket.

A laptop that cannot separate in real time streams its input here and gets the stems back; the
daemon's side is `engines/cloud/selfhosted_stream.py`, driven by the same `LiveStream` as a local
engine (bridge/stream.py), so its dry fallback and latency report are the local ones.

    client                                             server
    connect, `Authorization: Bearer <token>`  ──▶      401 (the HTTP error body) without the token
    text {"version": 1, "model", "sample_rate",  ──▶   a warm StreamingSeparator for those settings
          "channels", hop_seconds ...}
                                              ◀──      text {"version", "stems", "latency_frames",
                                                            "hop_frames", ..., "load_timing"}
    block seq n: text header + binary float32  ──▶     engine.process_ahead(block)
                                              ◀──      one reply per block: text header + binary
                                                       stems, every output frame that exists now

Blocks and replies are the audio socket's frames (engines/audio_frames.py), one WebSocket message
per frame; `seq` 0 (re)starts the stream. A reply carries the block's output and that of the input
still to come before the next window (`StreamingSeparator.process_ahead`), so the client waits on
the network only for a block that runs a window: the same place a local engine waits on the model.
A malformed block is answered with an error frame naming the problem; the connection stays open
(send seq 0 to start again), and other connections are not touched. A bad first message, or one
that does not arrive within `HELLO_SECONDS`, gets an error frame and a close with code 1008.

The token is checked before the upgrade. The Host guard of the HTTP routes (bridge/server_http.py)
is not needed here: a web page cannot put an Authorization header on a WebSocket it opens.

Engines stay warm in this process between connections, per settings (`server.max_streams` at
once; more is `busy`). With `flowstate serve --ray` the stream runs here too, in the server's own
process (the HTTP ingress), on `stream.engine_device`; the Ray deployments run the file jobs.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import anyio
from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.websockets import WebSocketDisconnect

from bridge import __version__
from bridge.config import Config, StreamModel
from bridge.errors import BadRequest, BridgeError, Busy
from bridge.server_http import clip, error_body
from bridge.stream_manager import StreamManager
from engines.audio_frames import FrameLimits, RequestError, error_frame, parse_request, reply_frames
from engines.cloud.selfhosted_wire import STREAM_ROUTE, STREAM_VERSION
from engines.separation.streaming import StreamingSeparator

log = logging.getLogger(__name__)

HELLO_SECONDS = 30.0
MAX_HELLO_BYTES = 4096
# Close codes (RFC 6455): 1008 a message that breaks the protocol, 1011 the server failed.
POLICY_VIOLATION = 1008
SERVER_ERROR = 1011
# One block at most: 16 MiB of float32 frames (65536 frames, 2 channels, is 512 KiB).
LIMITS = FrameLimits(16 * 1024 * 1024, max_header_bytes=1024, max_block_frames=65536,
                     message_key="the server's message limit", header_key="the header limit",
                     block_key="the block limit")


class StreamHello(BaseModel):
    """The first message of a live stream: what the client's stream needs; the server's own
    `stream.*` config decides the rest (engine_device, precision, threads, backend)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    model: StreamModel
    sample_rate: int
    channels: int
    context_seconds: float | None = None
    hop_seconds: float | None = None
    lookahead_seconds: float | None = None
    crossfade_ms: float | None = None


class StreamSessions:
    """Warm streaming engines per settings, lent to one connection at a time."""

    def __init__(self, config: Config, max_streams: int) -> None:
        self._manager = StreamManager(config.stream, config.models.demucs_repo, spleeter_dir=config.models.spleeter_dir)
        self._max_streams = max_streams
        self._idle: dict[tuple[Any, ...], list[StreamingSeparator]] = {}
        self._active = 0
        self._lock = threading.Lock()

    def open(self, text: str) -> tuple[StreamHello, tuple[Any, ...], StreamingSeparator]:
        """(hello, key, engine) for a first message; blocking (may load a model)."""
        if len(text) > MAX_HELLO_BYTES:
            raise BadRequest(f"the first message is {len(text)} bytes; expected a JSON object under {MAX_HELLO_BYTES}")
        try:
            hello = StreamHello.model_validate_json(text)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
            raise BadRequest(f"the first message: {problems}") from None
        if hello.version != STREAM_VERSION:
            raise BadRequest(f"stream version {hello.version} is not served here: this server ({__version__}) speaks "
                             f"version {STREAM_VERSION}; update the daemon or the server")
        settings = self._manager.settings_with(hello.model_dump(exclude={"version"}, exclude_none=True))
        key = self._manager.engine_key(settings)
        with self._lock:
            if self._active >= self._max_streams:
                raise Busy(f"this server runs {self._active} live streams, its limit (server.max_streams); "
                           "try again when one ends")
            self._active += 1
            idle = self._idle.get(key)
            engine = idle.pop() if idle else None
        if engine is None:
            try:
                engine = self._manager.new_engine(settings)
            except BaseException:
                with self._lock:
                    self._active -= 1
                raise
        engine.reset()
        return hello, key, engine

    def give_back(self, key: tuple[Any, ...], engine: StreamingSeparator) -> None:
        with self._lock:
            self._active -= 1
            self._idle.setdefault(key, []).append(engine)

    def close(self) -> None:
        with self._lock:
            engines = [engine for idle in self._idle.values() for engine in idle]
            self._idle.clear()
        for engine in engines:
            engine.close()


def welcome(engine: Any) -> dict[str, Any]:
    """The server's answer to a hello: what the client's `LiveStream` reports and budgets from."""
    stats = engine.stats()
    return {
        "version": STREAM_VERSION, "server_version": __version__, "stems": list(engine.stems),
        "latency_frames": int(engine.latency_frames), "hop_frames": int(engine.hop_frames),
        "context_seconds": float(engine.context_seconds), "hop_seconds": float(engine.hop_seconds),
        "lookahead_seconds": float(engine.lookahead_seconds), "window_seconds": float(engine.window_seconds),
        "hop_choice": stats.get("hop_choice"), "backend": stats.get("backend"), "device": stats.get("device"),
        "resampler_delay_frames": stats.get("resampler_delay_frames"), "load_timing": engine.load_timing(),
    }


class _Connection:
    """One client's stream: blocks in order, each answered with the output that exists."""

    def __init__(self, engine: StreamingSeparator, sample_rate: int, channels: int) -> None:
        self.engine = engine
        self.sample_rate = sample_rate
        self.channels = channels
        self.next_seq: int | None = None
        self.info = {"stems": list(engine.stems), "latency_frames": int(engine.latency_frames),
                     "sample_rate": sample_rate}

    def process(self, seq: int, header: dict[str, Any], block: Any) -> tuple[bytes, bytes]:
        if (header["sample_rate"], block.shape[0]) != (self.sample_rate, self.channels):
            raise BadRequest(f"block is {block.shape[0]} ch at {header['sample_rate']} Hz but this stream is "
                             f"{self.channels} ch at {self.sample_rate} Hz; open a new stream for new settings")
        if seq == 0:
            self.engine.reset()
        elif seq != self.next_seq:
            expected = "seq 0 (nothing started yet)" if self.next_seq is None else f"seq {self.next_seq}"
            raise BadRequest(f"sequence gap: expected {expected}, got {seq}; send seq 0 to restart")
        self.next_seq = seq + 1
        return reply_frames(seq, self.engine.process_ahead(block), self.info)


def add_stream_route(app: FastAPI, token_ok: Callable[[str], bool], sessions: StreamSessions) -> None:
    """`STREAM_ROUTE` on `app`; `token_ok(authorization header)` says whether the token is right."""

    @app.websocket(STREAM_ROUTE)
    async def live_stream(websocket: WebSocket) -> None:
        if not token_ok(websocket.headers.get("authorization", "")):
            peer = websocket.client.host if websocket.client else "?"
            log.warning("%s: 401 (no valid token) from %s", STREAM_ROUTE, peer)
            message = "missing or wrong token: send 'Authorization: Bearer <FLOWSTATE_SERVER_TOKEN>'"
            await websocket.send_denial_response(JSONResponse(error_body("forbidden", message), status_code=401,
                                                              headers={"WWW-Authenticate": "Bearer"}))
            return
        await websocket.accept()
        try:
            with anyio.fail_after(HELLO_SECONDS):
                text = await websocket.receive_text()
            hello, key, engine = await anyio.to_thread.run_sync(sessions.open, text)
        except WebSocketDisconnect:
            return
        except (BridgeError, TimeoutError, KeyError, UnicodeDecodeError) as err:
            error = err if isinstance(err, BridgeError) else BadRequest(
                f"expected a first text message with the stream's settings within {HELLO_SECONDS:g} s")
            log.warning("%s: %s: %s", STREAM_ROUTE, error.code, error.message[:300])
            await websocket.send_text(error_frame(None, error).decode())
            await websocket.close(POLICY_VIOLATION, clip(error.message, 100))
            return
        connection = _Connection(engine, hello.sample_rate, hello.channels)
        log.info("%s: live stream of %s at %d Hz from %s", STREAM_ROUTE, hello.model, hello.sample_rate,
                 websocket.client.host if websocket.client else "?")
        try:
            await websocket.send_text(json.dumps(welcome(engine)))
            await _serve_blocks(websocket, connection)
        except WebSocketDisconnect:
            pass
        finally:
            sessions.give_back(key, engine)
            log.info("%s: live stream ended", STREAM_ROUTE)


async def _serve_blocks(websocket: WebSocket, connection: _Connection) -> None:
    while True:
        header_text = await _frame(websocket)
        seq: int | None = None
        try:
            if isinstance(header_text, bytes):
                raise BadRequest("expected a text header before the samples, got a binary message")
            payload = await _frame(websocket)
            if isinstance(payload, str):
                raise BadRequest("expected the samples as a binary message after the header, got text")
            seq, header, block = parse_request([header_text.encode(), payload], LIMITS)
            header_bytes, samples = await anyio.to_thread.run_sync(connection.process, seq, header, block)
        except BridgeError as err:
            log.warning("%s: %s: %s", STREAM_ROUTE, err.code, err.message[:300])
            await websocket.send_text(error_frame(err.seq if isinstance(err, RequestError) else seq, err).decode())
            continue
        await websocket.send_text(header_bytes.decode())
        await websocket.send_bytes(samples)


async def _frame(websocket: WebSocket) -> str | bytes:
    """The next message, text or binary; WebSocketDisconnect when the client has gone."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text = message.get("text")
    return text if text is not None else message.get("bytes") or b""
