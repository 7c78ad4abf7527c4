"""The ZeroMQ audio socket: float32 blocks in, stems out, for DAW-side code that cannot open a device.

Request (two frames):  {"seq": n, "channels": c, "sample_rate": sr}   +  float32 (c, frames), planar
Reply   (two frames):  {"seq": n, "frames": f, "channels": c, "stems": [...], "latency_frames": L,
                        "sample_rate": sr}                             +  float32 (stems, c, frames)
Error   (one frame):   {"seq": n, "error": {"code": ..., "message": ...}}

Each client (ROUTER identity) gets its own streaming state; `seq` 0 starts (or restarts) it and
each later block must carry the next number, so a lost or reordered block is an error, not a glitch.
The socket lives on its own thread: model work never runs on the daemon's event loop.

Everything a request controls is bounded before any work: the header's size
(`zmq.audio_max_header_bytes`, which also bounds its JSON nesting and the digits of its numbers),
`seq` (0 .. 2**63 - 1), `channels` (1 or 2), `sample_rate` (8000 .. 192000 Hz and a ratio to the
model's 44.1 kHz the streaming resampler can hold: `stream.max_ratio_terms`), the frames of one
block (`zmq.audio_max_block_frames`) and the whole message (`max_message_bytes`; a single frame
larger than that is dropped by libzmq with the connection, before it is buffered). Anything else
malformed is answered with a `bad_request` error frame naming the problem; `internal` is only for
bugs.
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
MAX_SEQ = 2**63 - 1  # fits every client's integer type; larger is an error, not a bigint
SAMPLE_RATE_RANGE = (8000, 192000)


class AudioServer:
    """A ROUTER socket on its own thread; `sessions` does the audio work (bridge.stream)."""

    def __init__(self, host: str, port: int, max_message_bytes: int, sessions: Any, *,
                 max_header_bytes: int = 1024, max_block_frames: int = 65536) -> None:
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.max_header_bytes = max_header_bytes
        self.max_block_frames = max_block_frames
        self.sessions = sessions
        self._context = zmq.Context()
        self._socket: zmq.Socket | None = None
        self._thread: threading.Thread | None = None
        self._running = False

    def bind(self) -> int:
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        # libzmq refuses (and disconnects) a frame over this before buffering it: the only bound
        # on what one peer can make the daemon hold before the checks below can answer.
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
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
        sock = self._socket
        if sock is None:
            raise RuntimeError("AudioServer._serve runs only after bind()")
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
        seq: int | None = None
        try:
            header = self._header(body)
            seq = _seq(header)
            block = self._block(header, body[1])
            stems, info = self.sessions.process(identity, seq, header["sample_rate"], block)
        except BridgeError as err:
            log.warning("audio socket: %s: %s", err.code, err.message[:500])
            return [json.dumps({"seq": seq, "error": err.to_dict()}).encode()]
        except Exception as err:
            log.exception("audio socket: processing failed")
            message = f"audio processing failed inside the daemon ({type(err).__name__}: {err})"
            return [json.dumps({"seq": seq, "error": {"code": "internal", "message": message}}).encode()]
        reply = {"seq": seq, "frames": block.shape[1], "channels": block.shape[0], **info}
        return [json.dumps(reply).encode(), np.ascontiguousarray(stems, dtype="<f4").tobytes()]

    def _header(self, body: list[bytes]) -> dict[str, Any]:
        """The JSON header of a two-frame request, size-checked before it is parsed."""
        size = sum(len(part) for part in body)
        if size > self.max_message_bytes:
            raise BadRequest(f"audio message of {size} bytes exceeds {self.max_message_bytes} bytes "
                             "(16 x zmq.max_message_bytes)")
        if len(body) != 2:
            raise BadRequest(f"expected 2 frames (JSON header, float32 samples), got {len(body)}")
        if len(body[0]) > self.max_header_bytes:
            raise BadRequest(f"header of {len(body[0])} bytes exceeds zmq.audio_max_header_bytes "
                             f"({self.max_header_bytes}); expected {{\"seq\": n, \"channels\": c, \"sample_rate\": sr}}")
        try:
            header = json.loads(body[0])
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BadRequest(f"malformed JSON header: {err}") from None
        except RecursionError:
            raise BadRequest("malformed JSON header: nested too deeply; expected a flat object") from None
        except ValueError as err:  # an integer literal over Python's digit limit
            raise BadRequest(f"malformed JSON header: a number is too large ({err})") from None
        if not isinstance(header, dict):
            raise BadRequest("the header must be a JSON object with seq, channels and sample_rate")
        return header

    def _block(self, header: dict[str, Any], payload: bytes) -> np.ndarray:
        channels, sample_rate = header.get("channels"), header.get("sample_rate")
        if not _is_int(channels) or channels not in (1, 2):
            raise BadRequest(f"header 'channels' expected 1 or 2, got {_show(channels)}")
        if not _is_int(sample_rate) or not SAMPLE_RATE_RANGE[0] <= sample_rate <= SAMPLE_RATE_RANGE[1]:
            raise BadRequest(f"header 'sample_rate' expected an integer in [{SAMPLE_RATE_RANGE[0]}, "
                             f"{SAMPLE_RATE_RANGE[1]}] Hz, got {_show(sample_rate)}")
        if len(payload) % (4 * channels):
            raise BadRequest(
                f"payload of {len(payload)} bytes is not whole float32 frames of {channels} channel(s)"
            )
        frames = len(payload) // (4 * channels)
        if frames > self.max_block_frames:
            raise BadRequest(f"block of {frames} frames exceeds zmq.audio_max_block_frames ({self.max_block_frames}); "
                             "send shorter blocks")
        block = np.frombuffer(payload, dtype="<f4").reshape(channels, -1)
        if not np.isfinite(block).all():
            raise BadRequest("payload contains NaN or infinite samples")
        return block


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value: Any) -> str:
    """A request's value for an error message, cut short: the message must stay small."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


def _seq(header: dict[str, Any]) -> int:
    seq = header.get("seq")
    if not _is_int(seq) or not 0 <= seq <= MAX_SEQ:
        raise BadRequest(f"header 'seq' expected an integer in [0, 2**63 - 1], got {_show(seq)}")
    return seq
