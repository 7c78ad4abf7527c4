"""Daemon lifecycle: start the transports, dispatch requests, shut down gracefully on a signal.

Shutdown runs in three steps: stop accepting (new requests get `unavailable`), drain in-flight
work for `daemon.shutdown_timeout_seconds`, then cancel what is left and close every socket.
Signals are handled here, in the entry point, and nowhere else.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import zmq

from bridge import __version__
from bridge.commands import EVENTS, lookup
from bridge.config import Config
from bridge.daw import DawState
from bridge.errors import BridgeError, Busy, Internal, StartupError, Unavailable
from bridge.events import EventHub
from bridge.protocol import CallContext, CommandSpec, Reply, Request
from bridge.jobs import JobRunner, JobStore
from bridge.paths import PathPolicy
from bridge.protocol import Origin
from bridge.stream import AudioSessions, StreamManager
from bridge.transports.audio import AudioServer
from bridge.transports.midi import MidiTransport
from bridge.transports.osc import OscServer
from bridge.transports.zmq import ZmqServer

log = logging.getLogger(__name__)

T = TypeVar("T")
Respond = Callable[[Reply], None]


class Daemon:
    """Owns the transports, the event hub and every task it starts."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.hub = EventHub(EVENTS, config.daemon.max_listeners, config.daemon.listener_ttl_seconds)
        self.started_at = time.monotonic()
        self._accepting = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.osc = OscServer(config.osc, self.dispatch, self.hub)
        self.zmq = ZmqServer(config.zmq, self.dispatch, self.hub)
        self.streams = StreamManager(config.stream, config.models.demucs_repo)
        self.paths = PathPolicy.from_config(config)
        self.daw = DawState(config.daw.default_tempo)
        self.midi = MidiTransport(config.midi, self.dispatch, self.daw)
        self.job_store: JobStore | None = None
        self.tiers: dict[str, Any] = {}
        self.router: Any = None
        self.jobs: JobRunner | None = None
        self.samples: Any = None  # bridge.samples.SampleLibrary, opened with the job queue
        self.audio = AudioServer(
            config.zmq.host, config.zmq.audio_port, config.zmq.max_message_bytes * 16, AudioSessions(self.streams),
            max_header_bytes=config.zmq.audio_max_header_bytes, max_block_frames=config.zmq.audio_max_block_frames,
        )

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind every endpoint or raise StartupError naming the port and its config key."""
        self.hub.attach(asyncio.get_running_loop())
        # Serve as soon as each transport is bound: a client that reaches the first socket while
        # the others are still binding gets a real answer, not "shutting down".
        self._accepting = True
        try:
            # The job queue first: a client that gets an answer from the first socket must find
            # every command working (requeued jobs may already run; their events reach whoever
            # is connected once the sockets are up).
            await asyncio.to_thread(self._start_jobs)
            await self.osc.start(self._bind)
            await self.zmq.start(self._bind)
            await self._bind("zmq.audio_port", self.config.zmq.audio_port, asyncio.to_thread(self.audio.bind))
            self.started_at = time.monotonic()
            log.info("flowstate %s listening:", __version__)
            for name, endpoint in self.endpoints().items():
                if name != "midi":
                    log.info("  %-13s %s", name, endpoint)
            # MIDI last, and it never fails start-up: without it, midi.status says why.
            await self.midi.start()
            log.info("  %-13s %s", "midi", self.endpoints().get("midi", "off"))
        except BaseException:
            self._accepting = False
            await self._stop_jobs(0.0)
            await self._close_transports()
            raise

    def _start_jobs(self) -> None:
        from bridge.tasks import job_handlers

        database = self.config.jobs.database
        assert database is not None  # load_config fills the default
        self.job_store = JobStore(database)
        from bridge.router import Router, build_tiers
        from engines.base import pick_device

        self.tiers = build_tiers(self.config)
        device = pick_device(self.config.separate.engine_device).type
        offered = {name: frozenset(tier.tasks) for name, tier in self.tiers.items()}
        self.router = Router(self.config.router, offered, self.job_store, device)
        if self.tiers:
            log.info("tiers configured: %s", ", ".join(sorted(self.tiers)))
        from bridge.samples import SampleLibrary

        self.samples = SampleLibrary(self.config, self.paths)
        self.jobs = JobRunner(
            self.job_store,
            job_handlers(self.config, self.paths, self.router, self.tiers, samples=self.samples),
            self.config.jobs.workers,
            self._publish_job,
            max_attempts=self.config.jobs.max_attempts,
        )
        requeued = self.jobs.start()
        self.samples.start_watching()  # folders indexed with watch stay fresh across restarts
        log.info("jobs: %s (%d worker(s)); %d interrupted job(s) requeued", database, self.config.jobs.workers, len(requeued))

    def _publish_job(self, event: str, job_id: str, origin: Origin | None, /, **data: Any) -> None:
        self.hub.publish(event, origin, id=job_id, **data)

    def job_runner(self) -> JobRunner:
        if self.jobs is None:
            raise Unavailable("the job queue is not running")
        return self.jobs

    async def _bind(self, key: str, port: int, opening: Awaitable[T]) -> T:
        try:
            return await opening
        except (OSError, zmq.ZMQError) as err:
            if getattr(err, "errno", None) == errno.EADDRINUSE:
                env = "FLOWSTATE_" + key.replace(".", "_").upper()
                raise StartupError(
                    f"port {port} ({key}) is already in use: is another flowstate daemon running? "
                    f"Stop it, or set {key} in config.yaml or {env} to a free port."
                ) from None
            raise StartupError(f"cannot open {key} = {port}: {err}") from None

    async def shutdown(self) -> None:
        """Stop accepting, drain in-flight work with a timeout, cancel the rest, close."""
        self._accepting = False
        self.hub.publish("daemon.stopping", reason="shutdown")
        self.osc.stop_accepting()
        self.zmq.stop_accepting()
        self.midi.stop_accepting()
        timeout = self.config.daemon.shutdown_timeout_seconds
        jobs_stopping = asyncio.create_task(self._stop_jobs(timeout))
        if self._tasks:
            log.info("draining %d in-flight request(s) for up to %.1f s", len(self._tasks), timeout)
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=0.5)
                log.warning("cancelled %d request(s) still running at shutdown", len(pending))
        await jobs_stopping
        await asyncio.to_thread(self.streams.close)
        await self._close_transports()
        log.info("flowstate stopped")

    async def _stop_jobs(self, timeout: float) -> None:
        """Let running jobs finish within the timeout; one still running is requeued next start."""
        if self.jobs is not None:
            left = await asyncio.to_thread(self.jobs.stop, timeout)
            if left:
                log.info("%d running job(s) will be requeued at the next start: %s", len(left), ", ".join(left))
        if self.samples is not None:
            await asyncio.to_thread(self.samples.close)
        if self.job_store is not None:
            await asyncio.to_thread(self.job_store.close)

    async def _close_transports(self) -> None:
        await self.midi.close()
        await self.osc.close()
        await self.zmq.close()
        await asyncio.to_thread(self.audio.close)

    def endpoints(self) -> dict[str, str]:
        return {**self.osc.endpoints(), **self.zmq.endpoints(), "zmq_audio": self.audio.endpoint(), "midi": self.midi.endpoint()}

    def in_flight(self) -> int:
        return len(self._tasks)

    # -- requests ----------------------------------------------------------------------------------

    def dispatch(self, request: Request, respond: Respond) -> None:
        """Validate and run one request; `respond` is called exactly once with the outcome."""
        if not self._accepting:
            respond(Reply(request.name, error=Unavailable("the daemon is shutting down; try again when it is back")))
            return
        try:
            spec = lookup(request.name)
            kwargs = spec.bind(request.args)
        except BridgeError as err:
            log.warning(
                "%s from %s %s: %s: %s", request.name[:64], request.origin.transport, request.origin.host,
                err.code, err.message[:512],
            )
            respond(Reply(request.name, error=err))
            return
        ctx = CallContext(daemon=self, origin=request.origin)
        if spec.is_async:
            # Each async request holds a task (and often a worker thread): a burst must not pile up
            # without bound, so beyond daemon.max_in_flight the answer is `busy`, at once.
            limit = self.config.daemon.max_in_flight
            if len(self._tasks) >= limit:
                busy = Busy(
                    f"{spec.name}: {len(self._tasks)} requests are already running "
                    f"(daemon.max_in_flight = {limit}); try again when one has finished"
                )
                log.warning("%s from %s %s: busy: %s", spec.name, request.origin.transport, request.origin.host, busy.message)
                respond(Reply(spec.name, error=busy, spec=spec))
                return
            task = asyncio.get_running_loop().create_task(self._run_async(spec, ctx, kwargs, respond))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            respond(self._run_sync(spec, ctx, kwargs))

    def _run_sync(self, spec: CommandSpec, ctx: CallContext, kwargs: dict[str, Any]) -> Reply:
        try:
            result = spec.handler(ctx, **kwargs)
        except BridgeError as err:
            log.warning("%s: %s: %s", spec.name, err.code, err.message)
            return Reply(spec.name, error=err, spec=spec)
        except Exception as err:
            log.exception("%s failed", spec.name)
            return Reply(spec.name, error=_internal(spec, err), spec=spec)
        return Reply(spec.name, result=result, spec=spec)

    async def _run_async(self, spec: CommandSpec, ctx: CallContext, kwargs: dict[str, Any], respond: Respond) -> None:
        try:
            result = await spec.handler(ctx, **kwargs)
        except asyncio.CancelledError:
            respond(Reply(spec.name, error=Unavailable(f"{spec.name} was cancelled: the daemon is shutting down"), spec=spec))
            raise
        except BridgeError as err:
            log.warning("%s: %s: %s", spec.name, err.code, err.message)
            respond(Reply(spec.name, error=err, spec=spec))
        except Exception as err:
            log.exception("%s failed", spec.name)
            respond(Reply(spec.name, error=_internal(spec, err), spec=spec))
        else:
            respond(Reply(spec.name, result=result, spec=spec))


def _internal(spec: CommandSpec, err: Exception) -> Internal:
    return Internal(f"{spec.name} failed inside the daemon ({type(err).__name__}: {err}); the daemon log has the traceback")


def tune_allocator() -> bool:
    """glibc only: one malloc arena and high mmap/trim thresholds, before any thread starts.

    Model tensors are larger than glibc's mmap threshold, and a worker thread's arena caps what it
    keeps; so by default every forward pass maps fresh memory and faults it in again (a third of
    the CPU time of a separation went to page faults). Returns whether the settings took.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no mallopt)
    m_arena_max, m_mmap_threshold, m_trim_threshold = -8, -3, -1
    return all(
        mallopt(option, value) == 1
        for option, value in ((m_arena_max, 1), (m_mmap_threshold, 1 << 30), (m_trim_threshold, 2**31 - 1))
    )


async def serve(config: Config) -> None:
    """Run a daemon until SIGINT or SIGTERM, then shut it down gracefully."""
    loop = asyncio.get_running_loop()
    daemon = Daemon(config)
    stop = asyncio.Event()
    # Handlers first: clients get answers as soon as the first socket is bound, while the rest
    # (MIDI last) is still opening, and a SIGTERM then must still shut down gracefully.
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await daemon.start()
    except BaseException:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        raise
    try:
        await stop.wait()
        log.info("signal received, shutting down")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await daemon.shutdown()
