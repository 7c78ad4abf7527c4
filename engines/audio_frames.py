"""The one audio framing of the project: float32 blocks in, stems out, as a JSON header and a payload.

    Request (two frames):  {"seq": n, "channels": c, "sample_rate": sr}   +  float32 (c, frames), planar
    Reply   (two frames):  {"seq": n, "frames": f, "channels": c, "stems": [...], "latency_frames": L,
                            "sample_rate": sr, ...}                        +  float32 (stems, c, f)
    Error   (one frame):   {"seq": n, "error": {"code": ..., "message": ...}}

The daemon's ZeroMQ audio socket (bridge/transports/audio.py) carries these as the frames of a
multipart message; the self-hosted server's live stream (`/v1/stream`, bridge/server_stream.py) as
WebSocket messages, the header as text and the payload as binary, and its client
(engines/cloud/selfhosted_stream.py) reads them with the same functions. `seq` 0 starts (or
restarts) a stream; every later block carries the next number.

Everything a request controls is bounded before any work (`FrameLimits`): the header's size (which
also bounds its JSON nesting and the digits of its numbers), `seq` (0 .. 2**63 - 1), `channels` (1
or 2), `sample_rate` (8000 .. 192000 Hz) and the frames of one block. Anything malformed raises
`BadRequest` naming the problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np

from bridge.errors import BadRequest, BridgeError, Busy, Forbidden, Internal, NotFound, Unavailable

MAX_SEQ = 2**63 - 1  # fits every client's integer type; larger is an error, not a bigint
SAMPLE_RATE_RANGE = (8000, 192000)
# What an error frame's code becomes on the receiving side.
_ERRORS: dict[str, type[BridgeError]] = {cls.code: cls for cls in (BadRequest, NotFound, Busy, Unavailable,
                                                                   Forbidden, Internal)}


@dataclass(frozen=True)
class FrameLimits:
    """What one request may carry (the daemon's zmq.audio_* settings, or the server's)."""

    max_message_bytes: int
    max_header_bytes: int = 1024
    max_block_frames: int = 65536
    # The settings that hold each bound, as the error messages name them.
    message_key: str = "max_message_bytes"
    header_key: str = "max_header_bytes"
    block_key: str = "max_block_frames"


def request_frames(seq: int, sample_rate: int, block: np.ndarray) -> tuple[bytes, bytes]:
    """The header and payload of one `(channels, frames)` block."""
    header = {"seq": seq, "channels": int(block.shape[0]), "sample_rate": sample_rate}
    return json.dumps(header).encode(), np.ascontiguousarray(block, dtype="<f4").tobytes()


def parse_request(body: list[bytes], limits: FrameLimits) -> tuple[int, dict[str, Any], np.ndarray]:
    """(seq, header, block) of a two-frame request; BadRequest naming what is wrong.

    A request whose header is readable but whose block is not raises with `seq` known: the caller
    answers with `error_frame(seq, err)`, and `RequestError.seq` says which."""
    seq: int | None = None
    try:
        header = _header(body, limits)
        seq = _seq(header)
        return seq, header, _block(header, body[1], limits)
    except BadRequest as err:
        raise RequestError(err.message, seq) from None


class RequestError(BadRequest):
    """A malformed request, with the `seq` its header carried when that much was readable."""

    def __init__(self, message: str, seq: int | None) -> None:
        super().__init__(message)
        self.seq = seq


def reply_frames(seq: int, stems: np.ndarray, info: dict[str, Any]) -> tuple[bytes, bytes]:
    """The header and payload of the stems `(stems, channels, frames)` answering block `seq`."""
    header = {"seq": seq, "frames": int(stems.shape[-1]), "channels": int(stems.shape[1]), **info}
    return json.dumps(header).encode(), np.ascontiguousarray(stems, dtype="<f4").tobytes()


def error_frame(seq: int | None, err: BridgeError) -> bytes:
    return json.dumps({"seq": seq, "error": err.to_dict()}).encode()


def parse_reply(header: dict[str, Any], payload: bytes, num_stems: int) -> np.ndarray:
    """The stems `(num_stems, channels, frames)` of a reply whose header `parse_header` read;
    `Unavailable` naming what is wrong when they do not match."""
    channels, frames = header.get("channels"), header.get("frames")
    if not _is_int(channels) or channels not in (1, 2) or not _is_int(frames) or frames < 0:
        raise Unavailable(f"a reply header without valid channels and frames: {str(header)[:200]}")
    if len(payload) != 4 * num_stems * channels * frames:
        raise Unavailable(f"a reply payload of {len(payload)} bytes; expected float32 ({num_stems}, {channels}, "
                          f"{frames})")
    return np.frombuffer(payload, dtype="<f4").reshape(num_stems, channels, frames)


def parse_header(header_bytes: bytes | str) -> dict[str, Any]:
    """A reply's (or an error's) JSON header; an error frame raises its error."""
    try:
        header = json.loads(header_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as err:
        raise Unavailable(f"a malformed reply header: {err}") from None
    if not isinstance(header, dict):
        raise Unavailable("a reply header that is not a JSON object")
    error = header.get("error")
    if isinstance(error, dict):
        raise _ERRORS.get(str(error.get("code")), Unavailable)(str(error.get("message", ""))[:2000])
    return header


def _header(body: list[bytes], limits: FrameLimits) -> dict[str, Any]:
    """The JSON header of a two-frame request, size-checked before it is parsed."""
    size = sum(len(part) for part in body)
    if size > limits.max_message_bytes:
        raise BadRequest(f"audio message of {size} bytes exceeds {limits.max_message_bytes} bytes "
                         f"({limits.message_key})")
    if len(body) != 2:
        raise BadRequest(f"expected 2 frames (JSON header, float32 samples), got {len(body)}")
    if len(body[0]) > limits.max_header_bytes:
        raise BadRequest(f"header of {len(body[0])} bytes exceeds {limits.header_key} "
                         f"({limits.max_header_bytes}); "
                         "expected {\"seq\": n, \"channels\": c, \"sample_rate\": sr}")
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


def _block(header: dict[str, Any], payload: bytes, limits: FrameLimits) -> np.ndarray:
    channels, sample_rate = header.get("channels"), header.get("sample_rate")
    if not _is_int(channels) or channels not in (1, 2):
        raise BadRequest(f"header 'channels' expected 1 or 2, got {show(channels)}")
    if not _is_int(sample_rate) or not SAMPLE_RATE_RANGE[0] <= sample_rate <= SAMPLE_RATE_RANGE[1]:
        raise BadRequest(f"header 'sample_rate' expected an integer in [{SAMPLE_RATE_RANGE[0]}, "
                         f"{SAMPLE_RATE_RANGE[1]}] Hz, got {show(sample_rate)}")
    if len(payload) % (4 * channels):
        raise BadRequest(f"payload of {len(payload)} bytes is not whole float32 frames of {channels} channel(s)")
    frames = len(payload) // (4 * channels)
    if frames > limits.max_block_frames:
        raise BadRequest(f"block of {frames} frames exceeds {limits.block_key} ({limits.max_block_frames}); "
                         "send shorter blocks")
    block = np.frombuffer(payload, dtype="<f4").reshape(channels, -1)
    if not np.isfinite(block).all():
        raise BadRequest("payload contains NaN or infinite samples")
    return block


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def show(value: Any) -> str:
    """A request's value for an error message, cut short: the message must stay small."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


def _seq(header: dict[str, Any]) -> int:
    seq = header.get("seq")
    if not _is_int(seq) or not 0 <= seq <= MAX_SEQ:
        raise BadRequest(f"header 'seq' expected an integer in [0, 2**63 - 1], got {show(seq)}")
    return seq
