"""The ZeroMQ audio socket: float32 blocks in, stems out, for DAW-side code that cannot open a device.

Request (two frames):  {"seq": n, "channels": c, "sample_rate": sr}   +  float32 (c, frames), planar
Reply   (two frames):  {"seq": n, "frames": f, "channels": c, "stems": [...], "latency_frames": L,
                        "sample_rate": sr}                             +  float32 (stems, c, frames)
Error   (one frame):   {"seq": n, "error": {"code": ..., "message": ...}}

Each client (ROUTER identity) gets its own streaming state; `seq` 0 starts (or restarts) it and
each later block must carry the next number, so a lost or reordered block is an error, not a glitch.
The socket lives on its own thread: model work never runs on the daemon's event loop.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import numpy as np
import zmq

from bridge.errors import BadRequest, BridgeError

log = logging.getLogger(__name__)

POLL_MS = 100


class AudioServer:
    """A ROUTER socket on its own thread; `sessions` does the audio work (bridge.stream)."""

    def __init__(self, host: str, port: int, max_message_bytes: int, sessions: Any) -> None:
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.sessions = sessions
        self._context = zmq.Context()
        self._socket: zmq.Socket | None = None
        self._thread: threading.Thread | None = None
        self._running = False

    def bind(self) -> int:
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            if self.port == 0:
                self.port = sock.bind_to_random_port(f"tcp://{self.host}")
            else:
                sock.bind(f"tcp://{self.host}:{self.port}")
        except zmq.ZMQError:
            sock.close()
            raise
        self._socket = sock
        self._running = True
        self._thread = threading.Thread(target=self._serve, name="zmq-audio", daemon=True)
        self._thread.start()
        return self.port

    def endpoint(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    def close(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sessions.close()
        self._context.term()

    def _serve(self) -> None:
        assert self._socket is not None
        sock = self._socket
        try:
            while self._running:
                if not sock.poll(POLL_MS):
                    continue
                frames = sock.recv_multipart()
                identity, body = frames[0], frames[1:]
                sock.send_multipart([identity, *self._answer(identity, body)])
        finally:
            sock.close(linger=0)

    def _answer(self, identity: bytes, body: list[bytes]) -> list[bytes]:
        seq: Any = None
        try:
            size = sum(len(part) for part in body)
            if size > self.max_message_bytes:
                raise BadRequest(f"audio message of {size} bytes exceeds zmq.max_message_bytes ({self.max_message_bytes})")
            if len(body) != 2:
                raise BadRequest(f"expected 2 frames (JSON header, float32 samples), got {len(body)}")
            try:
                header = json.loads(body[0])
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise BadRequest(f"malformed JSON header: {err}") from None
            if not isinstance(header, dict):
                raise BadRequest("the header must be a JSON object with seq, channels and sample_rate")
            seq = header.get("seq")
            block = _decode_block(header, body[1])
            stems, info = self.sessions.process(identity, seq, int(header["sample_rate"]), block)
        except BridgeError as err:
            log.warning("audio socket: %s: %s", err.code, err.message)
            return [json.dumps({"seq": seq, "error": err.to_dict()}).encode()]
        except Exception as err:
            log.exception("audio socket: processing failed")
            message = f"audio processing failed inside the daemon ({type(err).__name__}: {err})"
            return [json.dumps({"seq": seq, "error": {"code": "internal", "message": message}}).encode()]
        reply = {"seq": seq, "frames": block.shape[1], "channels": block.shape[0], **info}
        return [json.dumps(reply).encode(), np.ascontiguousarray(stems, dtype="<f4").tobytes()]


def _decode_block(header: dict[str, Any], payload: bytes) -> np.ndarray:
    seq, channels, sample_rate = header.get("seq"), header.get("channels"), header.get("sample_rate")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise BadRequest(f"header 'seq' expected an int >= 0, got {seq!r}")
    if channels not in (1, 2):
        raise BadRequest(f"header 'channels' expected 1 or 2, got {channels!r}")
    if not isinstance(sample_rate, int) or isinstance(sample_rate, bool):
        raise BadRequest(f"header 'sample_rate' expected an int, got {sample_rate!r}")
    if len(payload) % (4 * channels):
        raise BadRequest(
            f"payload of {len(payload)} bytes is not whole float32 frames of {channels} channel(s)"
        )
    block = np.frombuffer(payload, dtype="<f4").reshape(channels, -1)
    if not np.isfinite(block).all():
        raise BadRequest("payload contains NaN or infinite samples")
    return block
