"""Which engine a live stream gets: `StreamManager` (the device stream: at most one, its engine
kept warm between starts, on this machine or the self-hosted tier) and `AudioSessions` (one engine
history per ZeroMQ audio-socket client), with the window batchers they share. The realtime path
itself (device, rings, worker) is bridge/stream.py's `LiveStream`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bridge.config import StreamConfig
from bridge.errors import BadRequest, BridgeError, Busy, Forbidden, Unavailable
from bridge.ledger import KeptCompute, Ledger
from bridge.stream import (
    LOCAL,
    MIN_LIVE_HOPS,
    EffectRack,
    LiveStream,
    StreamEngine,
    audio_host_lost,
    check_device_channels,
    check_device_rate,
    current_audio_devices,
    describe_devices,
    device_rate,
    in_time_to_open,
    lower_thread_priority,
    starting_p99,
)
from engines.base import pick_device
from engines.batching import WindowBatchers
from engines.cloud.selfhosted_stream import RemoteStreamingSeparator
from engines.inference import ConversionCache
from engines.resample import check_stream_rate, stream_rate_problem
from engines.separation.models import HTDEMUCS_RATE
from engines.separation.streaming import StreamingSeparator

if TYPE_CHECKING:
    from bridge.router import Decision

log = logging.getLogger(__name__)

# Audio-socket clients with a stream each; with the device stream, the most that can batch together.
MAX_AUDIO_SESSIONS = 4


def load_at_worker_priority(engine: StreamingSeparator, steps: int) -> None:
    """`engine.load()` on a thread `steps` nicer (lower_thread_priority), as the stream's worker
    will run: the windows the engine times at load (the hop ladder, the compute budget's p99) then
    cost what they will cost live, where other busy programs take a nicer thread's cores first."""
    def load() -> None:
        lower_thread_priority(steps)
        engine.load()

    # A thread of its own (its torch threads with it), gone when the load is done; errors come back here.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-engine-load") as pool:
        pool.submit(load).result()


@dataclass
class _Starting:
    """A `stream.start` under way (the model loading, the device opening): what `stream.status`
    shows meanwhile, what a second start is told, and what `stream.stop` cancels."""
    model: str
    devices: str  # describe_devices
    phase: str = "reading the audio devices"
    since: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def describe(self) -> str:
        """"htdemucs on the default audio device (loading htdemucs, 12 s so far)"."""
        return f"{self.model} on {self.devices} ({self.phase}, {time.monotonic() - self.since:.0f} s so far)"

    def status(self) -> dict[str, Any]:
        return {"model": self.model, "devices": self.devices, "phase": self.phase,
                "seconds": round(time.monotonic() - self.since, 1), "cancelled": self.cancelled.is_set()}

    def check(self) -> None:
        """Unavailable if `stream.stop` cancelled the start: then nothing more is done."""
        if self.cancelled.is_set():
            raise Unavailable(f"stream.start: cancelled by stream.stop while {self.phase}; no stream was started "
                              "(a model that was loading stays loaded for the next start)")

    def go_on(self, phase: str) -> None:
        """The next phase, unless the start was cancelled (`check`)."""
        self.check()
        self.phase = phase


class StreamManager:
    """Owns at most one live stream and keeps its engine warm between starts.

    It also owns the window batchers (engines/batching.py) that the device stream's engine and the
    audio socket's engines share, when `stream.batch_streams` says so: streams with the same model,
    device, precision and window then put aligned hops through one forward.
    """

    def __init__(self, base: StreamConfig, models_repo: Path | None, on_event: Callable[..., None] | None = None,
                 spleeter_dir: Path | None = None, selfhosted: tuple[str, str] | None = None) -> None:
        self.base = base
        # (cloud.selfhosted_url, its token) when the self-hosted tier is configured: stream.tier selfhosted.
        self.selfhosted = selfhosted
        # Where `stream.tier: auto` runs, from the local load and its limit: the router's `stream_tier`
        # (bridge/router.py), set once the daemon's router exists.
        self.route: Callable[[float, float, str], Decision] | None = None
        self.batchers = WindowBatchers(gather_seconds=base.batch_gather_ms / 1000.0,
                                       max_streams=MAX_AUDIO_SESSIONS + 1)
        self.models_repo = models_repo
        self.spleeter_dir = spleeter_dir
        self._on_event = on_event
        self._engines: dict[tuple[Any, ...], StreamingSeparator] = {}
        self._lock = threading.Lock()  # the device stream: one start or stop at a time
        # A start under way, set and cleared under `_claim` (never held for long) with `stream`, so
        # that a stop either cancels the start or finds the stream it started, and a second start
        # is told at once instead of waiting out the model's load behind `_lock`.
        self._claim = threading.Lock()
        self._starting: _Starting | None = None
        self.stream: LiveStream | None = None
        # The compute p99 of the last stream per timing_key: kept here, and in the job database's
        # ledger once the daemon has opened it (`ledger`), so a restarted daemon starts from it too.
        self._kept: dict[str, KeptCompute] = {}
        self.ledger: Ledger | None = None

    def settings_with(self, overrides: dict[str, Any]) -> StreamConfig:
        from pydantic import ValidationError

        if "effects" in overrides:
            # A VST3 is native code: which plugins load is for config.yaml to say, not the wire.
            raise Forbidden("stream.start: effect chains come from stream.effects in config.yaml, not overrides")
        if "batch_gather_ms" in overrides:
            raise Forbidden("stream.start: stream.batch_gather_ms is shared by every stream; set it in config.yaml, "
                            "not an override")
        if {"openvino_cache_dir", "openvino_cache_mb"} & set(overrides):
            raise Forbidden("stream.start: where OpenVINO keeps its conversions is set in config.yaml "
                            "(stream.openvino_cache_dir, stream.openvino_cache_mb), not an override")
        if "max_ratio_terms" in overrides:
            # A bound on what a request may allocate is not the request's to raise.
            raise Forbidden("stream.start: stream.max_ratio_terms is a memory bound set in config.yaml, "
                            "not an override")
        try:
            return StreamConfig.model_validate({**self.base.model_dump(), **overrides})
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])} = {e.get('input')!r}: {e['msg']}" for e in err.errors()
            )
            raise BadRequest(f"stream.start: bad overrides: {problems}") from None

    def conversion_cache(self) -> ConversionCache | None:
        """Where OpenVINO conversions are kept between starts (config.yaml's, never an override's)."""
        folder, most = self.base.openvino_cache_dir, self.base.openvino_cache_mb
        return ConversionCache(folder, float(most)) if folder is not None and most > 0 else None

    def batching_for(self, settings: StreamConfig) -> bool:
        """Whether engines for these settings batch their windows with other streams'."""
        if settings.batch_streams == "auto":
            try:
                return pick_device(settings.engine_device).type == "cuda"
            except Unavailable:  # a device asked for and absent: the engine's load says so, per request
                return False
        return settings.batch_streams == "on"

    def new_engine(self, settings: StreamConfig) -> StreamingSeparator:
        """A loaded streaming separator for these settings (blocking: loads the model)."""
        engine = StreamingSeparator(
            settings.model,
            repo=self.models_repo,
            spleeter_dir=self.spleeter_dir,
            device=settings.engine_device,
            sample_rate=settings.rate,
            channels=settings.channels,
            context_seconds=settings.context_seconds,
            hop_seconds=settings.hop_seconds,
            auto_hop_load=settings.auto_hop_load,
            lookahead_seconds=settings.lookahead_seconds,
            crossfade_ms=settings.crossfade_ms,
            precision=settings.precision,
            threads=settings.threads,
            max_ratio_terms=settings.max_ratio_terms,
            batching=self.batchers if self.batching_for(settings) else None,
            backend=settings.backend,
            conversion_cache=self.conversion_cache(),
        )
        load_at_worker_priority(engine, settings.worker_nice)
        return engine

    @staticmethod
    def engine_key(settings: StreamConfig) -> tuple[Any, ...]:
        """The settings an engine is built from: engines with the same key are interchangeable."""
        return (
            settings.model, settings.engine_device, settings.rate, settings.channels,
            settings.context_seconds, settings.hop_seconds, settings.auto_hop_load, settings.lookahead_seconds,
            settings.crossfade_ms, settings.precision, settings.threads, settings.batch_streams, settings.backend,
        )

    def engine_for(self, settings: StreamConfig) -> StreamingSeparator:
        """The live stream's engine, kept warm while the settings stay the same, except after a
        stream climbed its hop while running (the machine slowed, perhaps only for a while): then
        it loads afresh, so the hop ladder measures the machine as it is now, and a stop and start
        gets the least latency that keeps real time again."""
        key = self.engine_key(settings)
        engine = self._engines.get(key)
        if engine is not None and engine.climbed_while_running:
            log.info("stream: the last stream climbed to a %.0f ms hop while running; loading %s afresh to measure "
                     "this machine again", 1000.0 * engine.hop_seconds, settings.model)
            engine = None
        if engine is None:
            for old in self._engines.values():
                old.close()
            self._engines.clear()  # keep one warm engine, not every setting ever tried
            engine = self.new_engine(settings)
            self._engines[key] = engine
        return engine

    def start(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Blocking: load (or reuse) the engine, open the device, start. Run off the event loop.
        Meanwhile `starting()` says how far it is, a second start is refused at once, and `stop`
        cancels it: it then starts nothing (what it was loading stays loaded)."""
        requested = self.settings_with(overrides)
        with self._claim:
            if self._starting is not None:
                raise Busy(self._busy_starting())
            if self.stream is not None and self.stream.running:
                raise Busy("stream.start: a stream is already running; stream.stop it first")
            starting = self._starting = _Starting(requested.model, describe_devices(requested.devices))
        try:
            with self._lock:
                return self._start(requested, starting)
        finally:
            with self._claim:
                self._starting = None

    def _busy_starting(self) -> str:
        starting = self._starting
        assert starting is not None
        if starting.cancelled.is_set():
            return (f"stream.start: the last start, cancelled by stream.stop, is still {starting.phase} "
                    f"({time.monotonic() - starting.since:.0f} s so far) and starts nothing; start again when it "
                    "is done (stream.status shows it)")
        return (f"stream.start: a stream is already starting: {starting.describe()}; its reply comes once it "
                "runs, and stream.stop cancels it")

    def starting(self) -> dict[str, Any] | None:
        """The start under way (`stream.status`'s `starting`), or None."""
        starting = self._starting
        return None if starting is None else starting.status()

    def _start(self, requested: StreamConfig, starting: _Starting) -> dict[str, Any]:
        starting.check()  # cancelled while a stop still held the lock
        settings, rate_choice = in_time_to_open(lambda: self.at_device_rate(requested))
        starting.go_on(f"loading {settings.model}" if settings.tier == LOCAL else
                       f"loading {settings.model} or connecting to the self-hosted tier")
        engine, reason = self.engine_on_tier(settings)
        try:
            starting.go_on("opening the audio device")
            unknown = sorted((set(settings.gains_db) | set(settings.muted)) - set(engine.stems))
            if unknown:
                raise BadRequest(f"stream.start: unknown stem(s) {unknown}; "
                                 f"{settings.model} has {', '.join(engine.stems)}")
            effects = EffectRack.build(
                settings.effects.model_dump(), tuple(engine.stems), settings.rate, settings.channels
            )
            last_run = self.kept_compute(self.timing_key(settings, engine)) \
                if isinstance(engine, StreamingSeparator) else None
            stream = LiveStream(settings, engine, effects, self._on_event, last_run=last_run)
            stream.tier_reason = reason
            stream.sample_rate_choice = rate_choice
            stream.start()
        except BaseException:
            if getattr(engine, "tier", LOCAL) != LOCAL:
                engine.close()  # its connection holds one of the server's streams
            raise
        with self._claim:
            # Under the claim: a stop now either found the start (and cancelled it) or finds this stream.
            cancelled = starting.cancelled.is_set()
            if not cancelled:
                self.stream, self._starting = stream, None
        if cancelled:
            log.info("stream: stream.stop came while %s; stopping the stream it opened", starting.phase)
            stream.stop()
            if stream.tier != LOCAL:
                engine.close()
            starting.check()  # raises: cancelled
        return stream.status()

    @staticmethod
    def at_device_rate(settings: StreamConfig) -> tuple[StreamConfig, str]:
        """`settings` with auto's sample rate the device's own (PortAudio's device list read afresh,
        so an interface plugged in since the daemon started is found too), and where the rate came
        from. Blocking; only while no stream runs (`start` holds the lock and refuses a second)."""
        with current_audio_devices():
            # The outputs the routing writes are known once the model is (its stems): here, the mix's
            # or the first stem's; LiveStream.start checks them all.
            check_device_channels(settings.devices, settings.first_input, settings.channels,
                                  settings.first_output, settings.channels)
            if settings.sample_rate != "auto":
                # A rate the device refuses is refused before a model loads for it; a rate the
                # resamplers cannot take is the request's fault, and the engine says so.
                if stream_rate_problem(settings.sample_rate, HTDEMUCS_RATE, settings.max_ratio_terms) is None:
                    check_device_rate(settings.devices, settings.first_input, settings.channels,
                                      settings.first_output, settings.channels, settings.sample_rate)
                return settings, "stream.sample_rate"
            rate, why = device_rate(settings.devices)
        problem = stream_rate_problem(rate, HTDEMUCS_RATE, settings.max_ratio_terms)
        if problem is not None:  # not the request's fault: the device's
            raise Unavailable(f"stream.start: {why}: {problem} (bound: stream.max_ratio_terms = "
                              f"{settings.max_ratio_terms}); set the device to one of those rates")
        return settings.model_copy(update={"sample_rate": rate}), why

    def engine_on_tier(self, settings: StreamConfig) -> tuple[StreamEngine, str]:
        """The loaded engine for `settings.tier` and why it runs there (blocking: loads or connects)."""
        if settings.tier == LOCAL:
            return self.engine_for(settings), "stream.tier is local"
        if settings.tier == "selfhosted":
            return self.remote_engine(settings), "stream.tier is selfhosted"
        local = self.engine_for(settings)
        # The load the stream will run at: the p99 its compute budget starts from.
        p99_ms, from_run = starting_p99(float(local.load_timing()["compute_ms_p99_at_load"]),
                                        self.kept_compute(self.timing_key(settings, local)))
        measured = "timed at load" if from_run is None else f"of the last run's {from_run.hops} hops"
        load = p99_ms / (1000.0 * float(local.hop_seconds))
        if self.route is None:
            return local, "stream.tier is auto, but the router is not running: local"
        decision = self.route(load, settings.max_local_load, measured)
        if decision.tier == LOCAL:
            return local, decision.reason
        try:
            return self.remote_engine(settings), decision.reason
        except BridgeError as err:
            log.warning("stream: %s, but it failed: %s; running locally", decision.reason, err.message)
            return local, f"{decision.reason}, but it failed ({err.message}): local"

    def remote_engine(self, settings: StreamConfig) -> RemoteStreamingSeparator:
        """A connected streaming engine on the self-hosted tier (blocking: connects, times windows)."""
        if self.selfhosted is None:
            raise Unavailable("stream.tier selfhosted: no self-hosted tier is configured; set cloud.selfhosted_url "
                              "and cloud.server_token (FLOWSTATE_SERVER_TOKEN) to your `flowstate serve`")
        url, token = self.selfhosted
        sent = {"model": settings.model, "sample_rate": settings.rate, "channels": settings.channels,
                "crossfade_ms": settings.crossfade_ms}
        # Unset window settings are the server's defaults (on a GPU, shorter hops than a CPU's).
        sent.update({key: value for key in ("context_seconds", "hop_seconds", "lookahead_seconds")
                     if (value := getattr(settings, key)) is not None})
        engine = RemoteStreamingSeparator(url, token, sent, timeout_seconds=settings.remote_timeout_seconds)
        engine.load()
        return engine

    def stop(self) -> dict[str, Any]:
        """Stop the running stream, or cancel a start under way (answered at once: the start stops
        after what it is doing, a model's load or PortAudio's open, and starts nothing)."""
        with self._claim:
            starting = self._starting
            if starting is not None:
                if not starting.cancelled.is_set():
                    log.info("stream: stream.stop cancels the start of %s", starting.describe())
                    starting.cancelled.set()
                return {"running": False, "audio_lost": audio_host_lost(), "cancelled": starting.describe()}
        with self._lock:
            if self.stream is None or not self.stream.running:
                return {"running": False}
            self.stream.stop()
            status = self.stream.status()
            if self.stream.tier != LOCAL:
                self.stream.engine.close()  # one connection per stream: the server's slot is free again
            elif status["compute_hops"] >= MIN_LIVE_HOPS and isinstance(self.stream.engine, StreamingSeparator):
                self.keep_compute(self.timing_key(self.stream.settings, self.stream.engine),
                                  float(status["compute_ms_p99"]), int(status["compute_hops"]))
            return status

    def timing_key(self, settings: StreamConfig, engine: StreamingSeparator) -> str:
        """What a stream's measured compute is kept under: the settings its engine is built from and
        what the engine took at load or climbed to (the device `auto` resolved to, backend, hop,
        window), so the next start of the same setting, in this daemon or a later one, finds it."""
        return json.dumps([*self.engine_key(settings), str(engine.device), engine.backend,
                           round(1000.0 * engine.hop_seconds, 3), round(1000.0 * engine.window_seconds, 3)])

    def kept_compute(self, key: str) -> KeptCompute | None:
        """The last stream's compute p99 for this key: this daemon's, else the job database's."""
        kept = self._kept.get(key)
        if kept is None and self.ledger is not None:
            try:
                kept = self.ledger.stream_compute(key)
            except BridgeError as err:  # the stream starts from the windows timed at load
                log.warning("stream: could not read the last run's compute: %s", err.message)
        return kept

    def keep_compute(self, key: str, p99_ms: float, hops: int) -> None:
        kept = KeptCompute(p99_ms, hops, time.time())
        if self.ledger is not None:
            try:
                self.ledger.keep_stream_compute(key, kept)
            except BridgeError as err:  # kept in memory: this daemon's next start still has it
                log.warning("stream: could not keep this run's compute in the job database: %s", err.message)
        self._kept[key] = kept

    def running_stream(self, command: str) -> LiveStream:
        stream = self.stream
        if stream is None or not stream.running:
            raise Unavailable(f"{command}: no stream is running; stream.start one first")
        return stream

    def close(self) -> None:
        self.stop()  # a start still loading is cancelled, not waited for: its engine is the process's to end
        engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            engine.close()


@dataclass
class _Session:
    engine: StreamingSeparator
    sample_rate: int
    channels: int
    next_seq: int = 0
    last_used: float = 0.0
    busy: bool = False  # a block is in its engine: not to be evicted (closing would reload it)


class AudioSessions:
    """Streaming state per ZeroMQ audio client; each client gets its own engine history.

    Thread-safe: with batching (`concurrent`), the audio socket answers each client on a thread of
    its own (bridge/transports/audio.py), so that clients' windows can share forwards; a client's
    own blocks still come one at a time, in order.
    """

    def __init__(self, manager: StreamManager, max_sessions: int = MAX_AUDIO_SESSIONS) -> None:
        self._manager = manager
        self._max_sessions = max_sessions
        self._sessions: dict[bytes, _Session] = {}
        self._lock = threading.Lock()  # the sessions dict; an engine's own lock serialises its audio

    @property
    def concurrent(self) -> bool:
        """Whether clients should be served at once: their engines batch (`stream.batch_streams`)."""
        return self._manager.batching_for(self._manager.base)

    @property
    def max_sessions(self) -> int:
        return self._max_sessions

    def process(self, identity: bytes, seq: int, sample_rate: int,
                block: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        # Before any engine exists: a rate the streaming resampler cannot hold is refused here.
        check_stream_rate(sample_rate, HTDEMUCS_RATE, self._manager.base.max_ratio_terms,
                          what="audio socket: header 'sample_rate'", key="stream.max_ratio_terms")
        channels = block.shape[0]
        with self._lock:
            session = self._sessions.get(identity)
            if seq == 0:
                if session is None or (session.sample_rate, session.channels) != (sample_rate, channels):
                    session = self._open(identity, sample_rate, channels)
                else:
                    session.engine.reset()
                session.next_seq = 0
            elif session is None:
                raise BadRequest(f"audio block seq {seq} without a session: start a stream with seq 0")
            elif seq != session.next_seq:
                raise BadRequest(f"sequence gap: expected seq {session.next_seq}, got {seq}; send seq 0 to restart")
            elif (sample_rate, channels) != (session.sample_rate, session.channels):
                raise BadRequest(
                    f"block is {channels} ch at {sample_rate} Hz but this stream is {session.channels} ch at "
                    f"{session.sample_rate} Hz; send seq 0 to restart with new settings"
                )
            session.last_used = time.monotonic()
            session.busy = True
        try:
            stems = session.engine.process(block)  # outside the lock: other clients' blocks go on meanwhile
            info = {"stems": list(session.engine.stems), "latency_frames": int(session.engine.latency_frames),
                    "sample_rate": sample_rate}
        finally:
            with self._lock:
                session.busy = False
        session.next_seq = seq + 1  # one client's blocks come one at a time (the audio socket pins it)
        return stems, info

    def stats(self, identity: bytes) -> dict[str, Any] | None:
        """The engine stats of one client's stream (batch sizes included), or None without one."""
        with self._lock:
            session = self._sessions.get(identity)
        return None if session is None else session.engine.stats()

    def _open(self, identity: bytes, sample_rate: int, channels: int) -> _Session:
        previous = self._sessions.pop(identity, None)  # this client's stream at another rate or channels
        if previous is not None:
            previous.engine.close()
        if len(self._sessions) >= self._max_sessions:
            idle = [key for key, session in self._sessions.items() if not session.busy]
            if not idle:
                raise Busy(f"audio socket: all {self._max_sessions} audio sessions are processing a block; "
                           "send seq 0 again when one is done")
            oldest = min(idle, key=lambda key: self._sessions[key].last_used)
            self._sessions.pop(oldest).engine.close()
        settings = self._manager.settings_with({"sample_rate": sample_rate, "channels": channels})
        engine = self._manager.new_engine(settings)
        session = _Session(engine=engine, sample_rate=sample_rate, channels=channels, last_used=time.monotonic())
        self._sessions[identity] = session
        return session

    def close(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            session.engine.close()
