"""HTTP plumbing the cloud tiers share: one client per tier, requests the caller can cancel while
they wait, deadlines, Retry-After, backoff, audio content types, and the status -> error mapping.

Everything here follows "Client practice" in `shared/reference/cloud-tiers.md`: connect timeout
5 s, capped exponential backoff with jitter (0.5 -> 8 s), `Retry-After` (seconds or HTTP date)
and `retry-after-ms` honoured up to 60 s, quota errors never retried. Tokens never leave this
module in a message: every provider text passes through `scrub` first.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import httpx

from bridge.errors import BadRequest, BridgeError, Forbidden, NotFound, Unavailable
from bridge.fileio import atomic_write
from engines.cloud.base import TierJob

CONNECT_TIMEOUT_SECONDS = 5.0
RETRY_AFTER_CAP_SECONDS = 60.0
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 8.0
# check_cancelled must run at least once a second (engines/cloud/base.py); poll well inside that.
CANCEL_POLL_SECONDS = 0.25
MAX_MESSAGE_CHARS = 300

# MIME type <-> file extension for the audio that crosses the wire. The first type per extension
# is the one we send.
AUDIO_TYPES: dict[str, str] = {
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/vnd.wave": "wav",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/ogg": "ogg",
    "audio/aiff": "aiff",
    "audio/x-aiff": "aiff",
    "audio/mp4": "m4a",
    "audio/webm": "webm",
}
EXTENSION_TYPES: dict[str, str] = {}
for _mime, _ext in AUDIO_TYPES.items():
    EXTENSION_TYPES.setdefault(_ext, _mime)
EXTENSION_TYPES["aif"] = "audio/aiff"


class QuotaExhausted(Unavailable):
    """A provider's quota or credits are used up: no retry helps until it resets, so the router
    should open the tier's circuit at once instead of counting failures."""

    retryable = False


class TransportFailed(Unavailable):
    """No HTTP answer: the connection failed or the read timed out.

    `request_sent` is False when the request never reached the provider (a connect error or
    timeout), so a retry cannot run the work twice."""

    def __init__(self, message: str, *, request_sent: bool) -> None:
        super().__init__(message)
        self.request_sent = request_sent


class Deadline:
    """Seconds left of a job's deadline, counted from when the tier started it (a `TierJob`
    does not carry its submission time); `seconds=None` never expires."""

    def __init__(self, seconds: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._end = None if seconds is None else clock() + seconds

    def remaining(self) -> float | None:
        return None if self._end is None else max(0.0, self._end - self._clock())

    def cap(self, seconds: float) -> float:
        """`seconds`, or what is left of the deadline if that is shorter."""
        remaining = self.remaining()
        return seconds if remaining is None else min(seconds, remaining)

    def allows(self, seconds: float) -> bool:
        remaining = self.remaining()
        return remaining is None or seconds <= remaining


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced by `***`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def provider_message(response: httpx.Response, secrets: Iterable[str] = ()) -> str:
    """The human message in an error body: `{"error": ...}` (Hugging Face), `{"errors": [{code,
    message}]}` (Cloudflare), `{"detail": ...}` or plain text, shortened and scrubbed."""
    text = response.text
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    message: Any = text
    if isinstance(body, dict):
        for key in ("error", "errors", "detail", "message"):
            if body.get(key):
                message = body[key]
                break
    if isinstance(message, list) and message:
        message = message[0]
    if isinstance(message, dict):
        message = message.get("message") or message.get("msg") or json.dumps(message)
    message = " ".join(str(message).split()) or response.reason_phrase or "no message"
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    return scrub(message, secrets)


def error_for_status(tier: str, status: int, message: str) -> BridgeError:
    """The project error for an HTTP error status (`message` must already be scrubbed)."""
    if status in (401, 403):
        return Forbidden(f"{tier}: the provider refused the credentials (HTTP {status}): {message}")
    if status in (400, 413, 415, 422):
        return BadRequest(f"{tier}: the provider refused the request (HTTP {status}): {message}")
    if status == 404:
        return NotFound(f"{tier}: not found (HTTP 404): {message}")
    if status == 402:
        return QuotaExhausted(f"{tier}: credits exhausted (HTTP 402): {message}")
    return Unavailable(f"{tier}: HTTP {status}: {message}")


def malformed(tier: str, model: str, what: str) -> Unavailable:
    """A 2xx answer we cannot use: another try or another tier may do better."""
    return Unavailable(f"{tier}: malformed response from {model}: {what}")


def check_offered(tier: str, tasks: Iterable[str], task: str) -> None:
    """BadRequest unless the tier offers `task`."""
    if task not in tasks:
        raise BadRequest(f"{tier}: task {task!r} is not offered here; offered: {sorted(tasks)}")


def read_input(tier: str, job: TierJob) -> bytes:
    """The bytes of `job.input_path`; BadRequest naming the path when there is none to read."""
    if job.input_path is None:
        raise BadRequest(f"{tier}: {job.task} needs an input audio file; input_path is None")
    try:
        return Path(job.input_path).read_bytes()
    except OSError as err:
        raise BadRequest(f"{tier}: cannot read input_path {str(job.input_path)!r}: {err.strerror}") from err


def write_output(path: Path, data: bytes) -> Path:
    """`data` written to `path` atomically (bridge.fileio.atomic_write)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def retry_after_seconds(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """The wait a response asks for (`retry-after-ms`, `Retry-After` in seconds or as an HTTP
    date), capped at 60 s; None when it asks for none or says something unreadable."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return min(max(float(value) / 1000.0, 0.0), RETRY_AFTER_CAP_SECONDS)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - now()
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_SECONDS)


def backoff_seconds(attempt: int) -> float:
    """Capped exponential backoff with jitter: about 0.5, 1, 2, 4, 8, 8 ... s for attempt 0, 1, ..."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt)
    # Up to a quarter less, so clients that failed together do not retry together.
    return ceiling * (1.0 - 0.25 * random.random())


def wait(seconds: float, check_cancelled: Callable[[], None]) -> None:
    """Sleep `seconds`, calling `check_cancelled()` (which raises to abort) several times a second."""
    end = time.monotonic() + seconds
    while True:
        check_cancelled()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, CANCEL_POLL_SECONDS))


def never_cancelled() -> None:
    """`check_cancelled` for requests nobody cancels (health probes)."""


def decode_base64(value: Any, what: str) -> bytes:
    """Strict base64 -> bytes; ValueError naming `what` when it is not base64."""
    if not isinstance(value, str):
        raise ValueError(f"{what} is {type(value).__name__}, expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"{what} is not valid base64") from err


def sniff_audio(data: bytes) -> str | None:
    """The file extension the first bytes of an audio file announce, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"OggS":
        return "ogg"
    if data[:4] == b"FORM" and data[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "mp3"
    return None


def audio_extension(content_type: str | None, data: bytes) -> str | None:
    """The extension for audio received with `content_type`: the bytes win over a generic or
    missing type (one user reports WAV bytes where MP3 was documented)."""
    sniffed = sniff_audio(data)
    if sniffed:
        return sniffed
    mime = (content_type or "").split(";")[0].strip().lower()
    return AUDIO_TYPES.get(mime)


def safe_name(label: str, fallback: str) -> str:
    """A provider-chosen label as a file stem: letters, digits, `-` and `_` only."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", label).strip("_")
    return name[:64] or fallback


class TierClient:
    """One tier's HTTP client. `send` runs each request on a worker thread so the caller can
    call `check_cancelled()` while it waits; a cancelled request is abandoned (it ends at its own
    timeout). Safe to use from several threads."""

    def __init__(self, tier: str, headers: Mapping[str, str], secrets: Iterable[str], *,
                 max_workers: int = 8) -> None:
        self.tier = tier
        self.secrets = tuple(s for s in secrets if s)
        self._client = httpx.Client(headers=dict(headers), follow_redirects=False)
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"tier-{tier}")
        self._lock = threading.Lock()
        self._closed = False

    def send(self, method: str, url: str, *, timeout_seconds: float,
             check_cancelled: Callable[[], None], **kwargs: Any) -> httpx.Response:
        """The response to one request (any status), or TransportFailed naming the tier."""
        seconds = max(timeout_seconds, 0.001)
        timeout = httpx.Timeout(seconds, connect=min(CONNECT_TIMEOUT_SECONDS, seconds))
        with self._lock:
            if self._closed:
                raise Unavailable(f"{self.tier}: the tier is closed")
            future: Future[httpx.Response] = self._executor.submit(
                self._client.request, method, url, timeout=timeout, **kwargs)
        try:
            while True:
                check_cancelled()
                try:
                    return future.result(timeout=CANCEL_POLL_SECONDS)
                except FutureTimeout:
                    continue
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as err:
            raise TransportFailed(f"{self.tier}: cannot reach the provider ({type(err).__name__}: "
                                  f"{scrub(str(err), self.secrets)})", request_sent=False) from err
        except httpx.TimeoutException as err:
            raise TransportFailed(f"{self.tier}: no answer within {timeout_seconds:.1f} s",
                                  request_sent=True) from err
        except httpx.TransportError as err:
            raise TransportFailed(f"{self.tier}: the connection failed ({type(err).__name__}: "
                                  f"{scrub(str(err), self.secrets)})", request_sent=True) from err
        finally:
            future.cancel()  # no-op once running; stops a queued request after a cancel

    def message(self, response: httpx.Response) -> str:
        return provider_message(response, self.secrets)

    def error(self, response: httpx.Response) -> BridgeError:
        return error_for_status(self.tier, response.status_code, self.message(response))

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._client.close()
