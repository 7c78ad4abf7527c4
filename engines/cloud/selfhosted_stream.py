"""Live stems from our own GPU server: a streaming engine whose windows run on `flowstate serve`.

`RemoteStreamingSeparator` has the surface a live stream drives (bridge/stream.py's `LiveStream`):
`stems`, `latency_frames`, `hop_frames`, `load_timing`, `block_lead_frames`, `input_frames_to_window`,
`process`, `reset`, `stats`, `close`; so the dry fallback on a late hop and the latency report are the local
path's own code. The wire is the server's `/v1/stream` WebSocket (bridge/server_stream.py), whose
blocks and replies are the audio socket's frames (engines/audio_frames.py).

Where the time goes. `process(block)` sends the block without waiting. Each reply carries every
output frame the server's engine has, its input's and that of the input still to come before the
next window, so a block is answered from what has arrived, at once, unless it reaches past that:
then it waits for the reply to the block that runs the window, one network round trip plus the
window's compute. `input_frames_to_window` says where that is, as the local engine's does, and
`load_timing` reports those waits, timed at connect over `LOAD_TIMING_WINDOWS` windows: the round
trip is in the compute p99 the stream's budget is made from, so the latency reported is exact.

A lost connection (the server gone, a reply later than `timeout_seconds`, an error frame) raises
`Unavailable` naming the tier; `reset` connects again (and must find the same latency, or it
raises). The live stream plays the dry input meanwhile (bridge/stream.py).
"""

from __future__ import annotations

import json
import logging
import socket
import time
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from bridge.errors import BridgeError, Unavailable
from engines.audio_frames import parse_header, parse_reply, request_frames
from engines.cloud.selfhosted_wire import STREAM_ROUTE, STREAM_SETTINGS, STREAM_VERSION, USER_AGENT
from engines.ringbuffer import FrameFifo

log = logging.getLogger(__name__)

LOAD_TIMING_WINDOWS = 24
LOAD_TIMING_MIN_WINDOWS = 3
LOAD_TIMING_SECONDS = 5.0
STATS_WINDOW = 512
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def stream_url(base_url: str) -> str:
    """The WebSocket URL of a server's live stream: http(s)://host -> ws(s)://host/v1/stream."""
    scheme, sep, rest = base_url.rstrip("/").partition("://")
    if scheme not in ("http", "https") or not sep or not rest:
        raise Unavailable(f"cloud.selfhosted_url {base_url!r} is not an http(s) URL such as https://stems.example.net")
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}{STREAM_ROUTE}"


class RemoteStreamingSeparator:
    """A `StreamingSeparator` whose windows run on a self-hosted server (see the module doc)."""

    name = "separation.stream (selfhosted)"

    def __init__(self, base_url: str, token: str, settings: dict[str, Any], *, tier: str = "selfhosted",
                 timeout_seconds: float = 5.0, load_timeout_seconds: float = 120.0) -> None:
        unknown = sorted(set(settings) - set(STREAM_SETTINGS))
        if unknown:
            raise ValueError(f"{tier}: settings {unknown} are not sent to the server; expected {STREAM_SETTINGS}")
        self.tier = tier
        self.url = stream_url(base_url)
        self.base_url = base_url
        self._token = token
        self.settings = dict(settings)
        self.sample_rate = int(settings["sample_rate"])
        self.channels = int(settings["channels"])
        self.timeout_seconds = float(timeout_seconds)
        self.load_timeout_seconds = float(load_timeout_seconds)
        self._ws: ClientConnection | None = None
        self._welcome: dict[str, Any] = {}
        self._fifo: FrameFifo | None = None
        self._seq = 0
        self._outstanding = 0  # blocks sent whose reply has not arrived
        self._load_ms: list[float] = []
        self._wait_ms = np.zeros(STATS_WINDOW, np.float64)
        self._waits = 0  # behind the statistics: from the last reset
        self._waits_run = 0  # every one since this separator was made (`hops_run`)
        self.reconnects = 0
        self.loaded = False

    # -- what LiveStream reads ---------------------------------------------------------------------

    @property
    def stems(self) -> tuple[str, ...]:
        return tuple(self._welcome["stems"])

    @property
    def latency_frames(self) -> int:
        return int(self._welcome["latency_frames"])

    @property
    def hop_frames(self) -> int:
        return int(self._welcome["hop_frames"])

    @property
    def context_seconds(self) -> float:
        return float(self._welcome["context_seconds"])

    @property
    def hop_seconds(self) -> float:
        return float(self._welcome["hop_seconds"])

    @property
    def lookahead_seconds(self) -> float:
        return float(self._welcome["lookahead_seconds"])

    @property
    def window_seconds(self) -> float:
        return float(self._welcome["window_seconds"])

    def load(self) -> None:
        """Connect, learn the server's engine, and time `LOAD_TIMING_WINDOWS` windows' round trips."""
        if self.loaded:
            return
        self._connect()
        self._load_ms = self._time_windows()
        self.loaded = True
        self.reset()
        log.info("%s: live stream on %s: %s on %s, latency %d frames, round trip p99 %.1f ms (of %d windows)",
                 self.tier, self.url, ",".join(self.stems), self._welcome.get("device"), self.latency_frames,
                 self.load_timing()["compute_ms_p99_at_load"], len(self._load_ms))

    def load_timing(self) -> dict[str, Any]:
        """The waits for a window's output timed at connect: the network round trip plus the compute."""
        times = self._load_ms
        return {
            "load_timing_windows": len(times),
            "compute_ms_p50_at_load": float(np.percentile(times, 50)) if times else 0.0,
            "compute_ms_p99_at_load": float(np.percentile(times, 99)) if times else 0.0,
        }

    def block_lead_frames(self, block_size: int) -> int:
        """0: a window's output comes when the network brings it, not at a place in the device's
        blocks (`StreamingSeparator.block_lead_frames`)."""
        return 0

    def input_frames_to_window(self) -> int:
        """The frames of input whose output is here already, plus the one that has to wait for the server."""
        return (self._fifo.size if self._fifo is not None else 0) + 1

    def reset(self) -> None:
        """Start a new stream (seq 0); connects again first when the connection was lost."""
        if self._ws is None:
            self._connect()
            self.reconnects += 1
        try:
            self._drain()
            if self._fifo is not None:
                self._fifo.clear()
            self._seq = 0
            self._send(np.zeros((self.channels, 0), np.float32))
            self._receive(block=True)  # the alignment silence: the first blocks play from it
        except Unavailable:
            self._drop()
            raise
        self._waits = 0

    def process(self, block: np.ndarray) -> np.ndarray:
        """The stems `(num_stems, channels, n)` of `block` delayed by `latency_frames`; Unavailable
        when the server cannot be reached (the connection is dropped: `reset` connects again)."""
        if self._ws is None or self._fifo is None:
            raise Unavailable(f"{self.tier} ({self.base_url}): not connected; the live stream reconnects")
        n = block.shape[1]
        try:
            self._send(block)
            self._receive(block=False)
            if self._fifo.size < n:
                started = time.perf_counter()
                while self._fifo.size < n:
                    self._receive(block=True)
                self._record_wait(1000.0 * (time.perf_counter() - started))
        except Unavailable:
            self._drop()
            raise
        out = np.empty((len(self.stems), self.channels, n), np.float32)
        self._fifo.read(out.reshape(-1, n))
        return out

    def stats(self) -> dict[str, Any]:
        waits = self._wait_ms[:min(self._waits, STATS_WINDOW)]
        p50, p99 = (float(np.percentile(waits, 50)), float(np.percentile(waits, 99))) if len(waits) else (0.0, 0.0)
        hop_ms = 1000.0 * self.hop_seconds if self._welcome else 0.0
        return {
            "hops": self._waits,
            "hops_run": self._waits_run,
            "compute_ms_p50": p50,
            "compute_ms_p99": p99,
            "load_p50": p50 / hop_ms if hop_ms else 0.0,
            "load_p99": p99 / hop_ms if hop_ms else 0.0,
            "latency_frames": self.latency_frames if self._welcome else 0,
            "resampler_delay_frames": self._welcome.get("resampler_delay_frames"),
            "hop_choice": self._welcome.get("hop_choice"),
            "backend": self._welcome.get("backend"),
            "backend_choice": f"the server's ({self._welcome.get('device')})",
            "link": {"url": self.url, "connected": self._ws is not None, "reconnects": self.reconnects,
                     "server_device": self._welcome.get("device"),
                     "server_compute_ms_p99_at_load": self._welcome.get("load_timing", {}).get(
                         "compute_ms_p99_at_load")},
            **self.load_timing(),
        }

    def close(self) -> None:
        self._drop()
        self.loaded = False

    # -- the wire ----------------------------------------------------------------------------------

    def _connect(self) -> None:
        where = f"{self.tier} ({self.base_url})"
        try:
            ws = connect(self.url, additional_headers={"Authorization": f"Bearer {self._token}"},
                         user_agent_header=USER_AGENT, compression=None, proxy=None, max_size=MAX_MESSAGE_BYTES,
                         open_timeout=self.timeout_seconds, close_timeout=1.0,
                         legacy=True)  # held across calls, closed by `close`: not a `with` block
        except InvalidStatus as err:
            status = err.response.status_code
            try:
                detail = json.loads(err.response.body or b"{}").get("error", {}).get("message", "")
            except ValueError:
                detail = ""
            raise Unavailable(f"{where}: the live stream was refused with HTTP {status}: {detail or 'no reason'}"
                              ) from None
        except (OSError, InvalidHandshake, TimeoutError) as err:
            raise Unavailable(f"{where}: cannot open the live stream at {self.url}: {err}") from None
        # A block is two messages (header, samples): without this, Nagle's algorithm holds the second
        # until the first is acknowledged, and a delayed ACK makes that about 40 ms per block.
        ws.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            ws.send(json.dumps({"version": STREAM_VERSION, **self.settings}))
            # The server may load the model first: its first stream of a model waits for that.
            welcome = parse_header(self._recv(ws, self.load_timeout_seconds))
        except BridgeError as err:
            ws.close()
            raise type(err)(f"{where}: the server refused the live stream: {err.message}") from None
        if self._welcome and (welcome["latency_frames"], welcome["stems"]) != (self.latency_frames, list(self.stems)):
            ws.close()
            raise Unavailable(f"{where}: the server's stream changed (latency {self.latency_frames} -> "
                              f"{welcome['latency_frames']} frames); stream.stop and stream.start again")
        self._ws, self._welcome = ws, welcome
        rows = len(welcome["stems"]) * self.channels
        if self._fifo is None:
            self._fifo = FrameFifo(rows, int(welcome["latency_frames"]) + 4 * int(welcome["hop_frames"]) + 65536)
        self._outstanding = 0

    def _recv(self, ws: ClientConnection, timeout: float | None = None) -> str | bytes:
        try:
            return ws.recv(timeout=self.timeout_seconds if timeout is None else timeout)
        except TimeoutError:
            if timeout == 0:
                raise
            raise Unavailable(f"{self.tier} ({self.base_url}): no reply within "
                              f"{self.timeout_seconds if timeout is None else timeout:g} s") from None
        except ConnectionClosed as err:
            raise Unavailable(f"{self.tier} ({self.base_url}): the live stream's connection closed: {err}") from None

    def _send(self, block: np.ndarray) -> None:
        ws = self._connection()
        header, payload = request_frames(self._seq, self.sample_rate, block)
        try:
            ws.send(header.decode())
            ws.send(payload)
        except (ConnectionClosed, OSError) as err:
            raise Unavailable(f"{self.tier} ({self.base_url}): the live stream's connection closed: {err}") from None
        self._seq += 1
        self._outstanding += 1

    def _receive(self, block: bool) -> None:
        """Take the replies that have arrived (`block`: at least one) into the FIFO."""
        ws = self._connection()
        while self._outstanding:
            try:
                text = self._recv(ws, None if block else 0)
            except TimeoutError:
                return
            try:
                header = parse_header(text)  # an error frame raises its error
                payload = self._recv(ws)
                if not isinstance(payload, bytes):
                    raise Unavailable("a reply header followed by text, not the samples")
                stems = parse_reply(header, payload, len(self.stems))
            except Unavailable:
                raise
            except BridgeError as err:
                raise Unavailable(f"{self.tier} ({self.base_url}): {err.code}: {err.message}") from None
            self._outstanding -= 1
            if self._fifo is not None and stems.shape[-1]:
                self._fifo.write(stems.reshape(-1, stems.shape[-1]))
            block = False

    def _drain(self) -> None:
        """Wait for every reply still due (the server answers each block once)."""
        while self._outstanding:
            self._receive(block=True)

    def _connection(self) -> ClientConnection:
        if self._ws is None:
            raise Unavailable(f"{self.tier} ({self.base_url}): not connected")
        return self._ws

    def _drop(self) -> None:
        ws, self._ws = self._ws, None
        self._outstanding = 0
        if ws is not None:
            ws.close()

    def _time_windows(self) -> list[float]:
        """The wait for each of up to `LOAD_TIMING_WINDOWS` windows' output (quiet noise in), the same
        waits `process` makes live; past `LOAD_TIMING_SECONDS`, no more than the minimum."""
        self.reset()
        rng = np.random.default_rng(0)
        deadline = time.monotonic() + LOAD_TIMING_SECONDS
        self._waits = 0
        for count in range(LOAD_TIMING_WINDOWS):
            if count >= LOAD_TIMING_MIN_WINDOWS and time.monotonic() > deadline:
                break
            free = self.input_frames_to_window() - 1
            self.process((1e-3 * rng.standard_normal((self.channels, free))).astype(np.float32))
            self.process(np.zeros((self.channels, 1), np.float32))  # the one that waits
        return [float(x) for x in self._wait_ms[:min(self._waits, STATS_WINDOW)]]

    def _record_wait(self, ms: float) -> None:
        self._wait_ms[self._waits % STATS_WINDOW] = ms
        self._waits += 1
        self._waits_run += 1
