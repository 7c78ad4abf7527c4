"""Daemon lifecycle: start the transports, dispatch requests, shut down gracefully on a signal.

Shutdown runs in three steps: stop accepting (new requests get `unavailable`, job workers claim
nothing more), drain in-flight work for `daemon.shutdown_timeout_seconds`, then cancel what is left
and close every socket. Signals are handled here, in the entry point, and nowhere else.

Request handlers that block (`asyncio.to_thread`) run on the loop's default executor; the
daemon's own blocking steps (opening and closing the job queue, streams, sockets) run on a
separate lifecycle executor, so handlers stuck in a model load or a network wait can never hold
up a shutdown. `run()` does not wait for stuck handler threads at exit (see `exit_now`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import faulthandler
import functools
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import zmq

from bridge import __version__
from bridge.commands import EVENTS, lookup
from bridge.config import Config
from bridge.daw import DawState
from bridge.errors import BridgeError, Busy, Internal, StartupError, Unavailable
from bridge.events import EventHub
from bridge.protocol import CallContext, CommandSpec, Origin, Reply, Request, quote_name
from bridge.services import Services
from bridge.stream import release_audio_host
from bridge.stream_manager import AudioSessions
from bridge.transports.audio import AudioServer
from bridge.transports.midi import MidiTransport
from bridge.transports.osc import OscServer
from bridge.transports.zmq import ZmqServer, new_event_loop

log = logging.getLogger(__name__)

T = TypeVar("T")
Respond = Callable[[Reply], None]

# After the drain, closing the queue, streams and sockets gets this long in all, so a stop takes at
# most shutdown_timeout_seconds (<= 4.5) + this: the README's 5 s.
CLOSE_SECONDS = 0.5
# A shutdown still running this long past those bounds is stuck where they cannot reach (`end_past`).
HARD_STOP_MARGIN_SECONDS = 5.0


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
        daw = DawState(config.daw.default_tempo)
        self.midi = MidiTransport(config.midi, self.dispatch, daw)
        # What the handlers use (streams, job queue, router, tiers, samples): built here, closed at shutdown.
        self.services = Services(config, self, self.hub, daw, self.midi)
        # The daemon's own blocking steps; never shared with request handlers (see the module doc).
        self._lifecycle = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="flowstate-lifecycle")
        self.audio = AudioServer(
            config.zmq.host, config.zmq.audio_port, config.zmq.max_message_bytes * 16,
            AudioSessions(self.services.streams),
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
            await self._off_loop(self._start_jobs)
            await self.osc.start(self._bind)
            await self.zmq.start(self._bind)
            await self._bind("zmq.audio_port", self.config.zmq.audio_port, self._off_loop(self.audio.bind))
            self.started_at = time.monotonic()
            log.info("flowstate %s listening:", __version__)
            for name, endpoint in self.endpoints().items():
                if name != "midi":
                    log.info("  %-13s %s", name, endpoint)
            # MIDI last, and it never fails start-up: without it, midi.status says why.
            await self.midi.start()
            log.info("  %-13s %s", "midi", self.endpoints().get("midi", "off"))
            if self.services.jobs is not None and self.services.jobs.given_up:
                # Jobs given up at start-up (their daemon died during each attempt) say so once
                # someone can hear it: the first OSC listener or ZeroMQ subscriber to job.failed.
                self.hub.when_heard("job.failed", self.services.jobs.announce_given_up)
        except BaseException:
            self._accepting = False
            if self.services.jobs is not None:
                self.services.jobs.stop_claiming()
            await self._stop_jobs(0.0)
            await self._close_transports()
            raise

    def _start_jobs(self) -> None:
        after_job = release_memory if self.config.daemon.malloc_tuning else None
        requeued = self.services.open_jobs(self._publish_job, after_job)
        log.info("jobs: %s (%d worker(s)); %d interrupted job(s) requeued", self.config.jobs.database,
                 self.config.jobs.workers, len(requeued))

    def _publish_job(self, event: str, job_id: str, origin: Origin | None, /, **data: Any) -> None:
        self.hub.publish(event, origin, id=job_id, **data)

    async def _bind(self, key: str, port: int, opening: Awaitable[T]) -> T:
        try:
            return await opening
        except (OSError, zmq.ZMQError) as err:
            # libzmq says EADDRINUSE in the C library's number, which on Windows is not Python's
            # errno.EADDRINUSE (WSAEADDRINUSE, 10048) but pyzmq's zmq.EADDRINUSE (100).
            if getattr(err, "errno", None) in (errno.EADDRINUSE, zmq.EADDRINUSE):
                env = "FLOWSTATE_" + key.replace(".", "_").upper()
                raise StartupError(
                    f"port {port} ({key}) is already in use: is another flowstate daemon running? "
                    f"Stop it, or set {key} in config.yaml or {env} to a free port."
                ) from None
            raise StartupError(f"cannot open {key} = {port}: {err}") from None

    async def shutdown(self) -> None:
        """Stop accepting, drain in-flight work with a timeout, cancel the rest, close.

        Bounded whatever is in flight: `daemon.shutdown_timeout_seconds` for the drain, then
        CLOSE_SECONDS for closing. A handler thread stuck in native code or a network wait is left
        behind (its request is answered `unavailable`); `run()` exits without waiting for it.
        """
        self._accepting = False
        jobs = self.services.jobs
        if jobs is not None:
            jobs.stop_claiming()  # on the loop, at once: no job starts after the signal
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
                task.cancel()  # the task ends at once; a thread it waited on is left behind
            if pending:
                await asyncio.wait(pending, timeout=CLOSE_SECONDS / 5)
                log.warning("cancelled %d request(s) still running at shutdown", len(pending))
        await jobs_stopping
        closing = time.monotonic() + CLOSE_SECONDS
        await self._bounded("streams", self._off_loop(self.services.streams.close), closing)
        await self._bounded("engines and tiers", self._off_loop(self.services.close_engines), closing)
        await self._close_transports(closing)
        log.info("flowstate stopped")

    async def _stop_jobs(self, timeout: float) -> None:  # noqa: ASYNC109 (a thread's deadline: jobs.stop runs off the loop)
        """Let running jobs finish within the timeout; one still running goes back in the queue."""
        jobs = self.services.jobs
        if jobs is not None:
            left = await self._off_loop(jobs.stop, timeout)
            if left:
                handed = await self._off_loop(jobs.hand_back)
                log.info("%d running job(s) will run again at the next start: %s", len(handed), ", ".join(handed))
        closing = time.monotonic() + CLOSE_SECONDS
        await self._bounded("sample library and job store", self._off_loop(self.services.close_jobs), closing)
        self.services.release_store()

    async def _close_transports(self, deadline: float | None = None) -> None:
        deadline = time.monotonic() + CLOSE_SECONDS if deadline is None else deadline
        await self._bounded("midi", self.midi.close(), deadline)
        await self._bounded("osc", self.osc.close(), deadline)
        await self._bounded("zmq", self.zmq.close(), deadline)
        await self._bounded("zmq audio", self._off_loop(self.audio.close), deadline)

    async def _bounded(self, what: str, step: Awaitable[object], deadline: float) -> None:
        """Await one closing step until `deadline` (at least 0.1 s); log and go on when it overruns."""
        try:
            await asyncio.wait_for(step, timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            log.warning("shutdown: closing %s did not finish in time; going on without it", what)

    def _off_loop(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run a blocking lifecycle step on the lifecycle executor (never the handlers' one)."""
        return asyncio.get_running_loop().run_in_executor(self._lifecycle, functools.partial(function, *args))

    def close_executors(self) -> None:
        """Let the lifecycle threads go once the loop is done (never waits for a stuck one)."""
        self._lifecycle.shutdown(wait=False, cancel_futures=True)

    def endpoints(self) -> dict[str, str]:
        return {**self.osc.endpoints(), **self.zmq.endpoints(), "zmq_audio": self.audio.endpoint(),
                "midi": self.midi.endpoint()}

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
                "%s from %s %s: %s: %s", quote_name(request.name), request.origin.transport, request.origin.host,
                err.code, logged(err.message),
            )
            respond(Reply(request.name, error=err))
            return
        ctx = CallContext(services=self.services, origin=request.origin)
        if spec.is_async:
            # Each async request holds a task (and often a worker thread): a burst must not pile up
            # without bound, so beyond daemon.max_in_flight the answer is `busy`, at once.
            limit = self.config.daemon.max_in_flight
            if len(self._tasks) >= limit:
                busy = Busy(
                    f"{spec.name}: {len(self._tasks)} requests are already running "
                    f"(daemon.max_in_flight = {limit}); try again when one has finished"
                )
                log.warning("%s from %s %s: busy: %s", spec.name, request.origin.transport, request.origin.host,
                            busy.message)
                respond(Reply(spec.name, error=busy, spec=spec))
                return
            task = asyncio.get_running_loop().create_task(self._run_async(spec, ctx, kwargs, respond))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            respond(self._run_sync(spec, ctx, kwargs))

    async def call(self, request: Request) -> dict[str, Any]:
        """Run one request on the path every wire takes (`dispatch`: lookup, validation, limits, handler)
        and return its result, or raise its error. For commands that run other commands (`ask`)."""
        replied: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.dispatch(request, replied.set_result)
        reply = await replied
        if reply.error is not None:
            raise reply.error
        return reply.result or {}

    def _run_sync(self, spec: CommandSpec, ctx: CallContext, kwargs: dict[str, Any]) -> Reply:
        try:
            result = spec.handler(ctx, **kwargs)
        except BridgeError as err:
            log.warning("%s: %s: %s", spec.name, err.code, logged(err.message))
            return Reply(spec.name, error=err, spec=spec)
        except Exception as err:
            log.exception("%s failed", spec.name)
            return Reply(spec.name, error=_internal(spec, err), spec=spec)
        # Not is_async: the handler returned its result, not an awaitable.
        return Reply(spec.name, result=cast(dict[str, Any], result), spec=spec)

    async def _run_async(self, spec: CommandSpec, ctx: CallContext, kwargs: dict[str, Any], respond: Respond) -> None:
        try:
            result = await cast(Awaitable[dict[str, Any]], spec.handler(ctx, **kwargs))  # is_async
        except asyncio.CancelledError:
            respond(Reply(spec.name, error=Unavailable(f"{spec.name} was cancelled: the daemon is shutting down"),
                          spec=spec))
            raise
        except BridgeError as err:
            log.warning("%s: %s: %s", spec.name, err.code, logged(err.message))
            respond(Reply(spec.name, error=err, spec=spec))
        except Exception as err:
            log.exception("%s failed", spec.name)
            respond(Reply(spec.name, error=_internal(spec, err), spec=spec))
        else:
            respond(Reply(spec.name, result=result, spec=spec))


# An error message in the log: a client's text quoted in it stays one bounded line.
MAX_LOGGED_CHARS = 2048


def logged(message: str) -> str:
    """`message` for one log line: line breaks shown as \\n, cut to MAX_LOGGED_CHARS."""
    text = message.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= MAX_LOGGED_CHARS else text[:MAX_LOGGED_CHARS] + f"... ({len(text)} characters)"


def _internal(spec: CommandSpec, err: Exception) -> Internal:
    return Internal(f"{spec.name} failed inside the daemon ({type(err).__name__}: {err}); "
                    "the daemon log has the traceback")


def _glibc() -> Any:
    """The C library through ctypes when it is glibc (it has mallopt and malloc_trim), else None."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    # musl has neither function; a missing symbol makes hasattr False.
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


# Open files (sockets, models, audio files) the daemon asks for: macOS starts a process with 256,
# which a few dozen clients and a job's files can use up; Linux usually gives 1024.
OPEN_FILES = 4096


def raise_open_file_limit(wanted: int = OPEN_FILES) -> tuple[int, int] | None:
    """POSIX: raise the soft limit on open files to `wanted` (never past the hard limit, nor above
    what it is); returns (before, after), or None where there is no such limit (Windows)."""
    if sys.platform == "win32":
        return None
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as err:
            log.debug("open files: could not raise the limit from %d to %d: %s", soft, target, err)
            return soft, soft
        return soft, target
    return soft, soft


def tune_allocator() -> bool:
    """glibc only: one malloc arena and high mmap/trim thresholds, before any thread starts.

    Model tensors are larger than glibc's mmap threshold, and a worker thread's arena caps what it
    keeps; so by default every forward pass maps fresh memory and faults it in again (a third of
    the CPU time of a separation went to page faults). The price is that freed memory stays with
    the process: `release_memory` hands it back after each job. Returns whether the settings took.
    """
    libc = _glibc()
    if libc is None:
        return False
    m_arena_max, m_mmap_threshold, m_trim_threshold = -8, -3, -1
    return all(
        libc.mallopt(option, value) == 1
        for option, value in ((m_arena_max, 1), (m_mmap_threshold, 1 << 30), (m_trim_threshold, 2**31 - 1))
    )


def release_memory() -> bool:
    """glibc only: return the heap's free memory to the OS (`malloc_trim(0)`); True if any went back.

    With `tune_allocator`'s thresholds glibc never trims on its own, so a job's peak (gigabytes
    for a long file) would stay resident until the daemon exits. Called after each job: within a
    job the buffers stay mapped (the speed-up), between jobs they go back. Elsewhere a no-op.
    """
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


# SIGINT (Ctrl-C) and SIGTERM everywhere; SIGBREAK (Ctrl-Break) exists on Windows only.
STOP_SIGNALS: tuple[int, ...] = tuple(
    signum for signum in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGBREAK", None)) if signum is not None
)


def watch_stop_signals(loop: asyncio.AbstractEventLoop, on_stop: Callable[[], None]) -> Callable[[], None]:
    """Call `on_stop` on the loop when a stop signal arrives; returns the function that undoes it.

    Unix event loops watch signals themselves (`loop.add_signal_handler`). Windows' event loops
    have no such method (it raises NotImplementedError): there a `signal.signal` handler hands the
    signal to the loop. Python runs that handler on the main thread, between bytecodes, so the
    loop's wait must end first: Windows delivers Ctrl-C on a thread of its own and does not
    interrupt a select(), so a selector loop (the daemon's, `new_event_loop`) is woken through
    `signal.set_wakeup_fd` on a socket it reads (the proactor loop sets one up itself). Either way
    Ctrl-C never becomes a KeyboardInterrupt in the middle of a shutdown. Only the main thread may
    set handlers; elsewhere nothing is watched.
    """
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_stop)
    except NotImplementedError:
        pass
    else:
        def remove_loop_handlers() -> None:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

        return remove_loop_handlers

    def handler(signum: int, frame: object) -> None:
        loop.call_soon_threadsafe(on_stop)

    previous: dict[int, Any] = {}
    try:
        for number in STOP_SIGNALS:
            previous[number] = signal.signal(number, handler)
    except ValueError as err:  # not the main thread
        log.warning("stop signals are not watched (%s): stop the daemon with its owner's means", err)
    else:
        log.debug("this event loop cannot watch signals; watching %s with signal.signal",
                  ", ".join(signal.Signals(signum).name for signum in STOP_SIGNALS))
    unwake = _wake_on_signals(loop) if previous else None

    def restore() -> None:
        if unwake is not None:
            unwake()
        for signum, old in previous.items():
            signal.signal(signum, old)

    return restore


def _wake_on_signals(loop: asyncio.AbstractEventLoop) -> Callable[[], None] | None:
    """Have a signal's arrival wake `loop` (a socket it reads, given to `signal.set_wakeup_fd`);
    returns the function that undoes it, or None for a loop that cannot read sockets (the
    proactor loop, which wakes for signals by itself)."""
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)  # set_wakeup_fd's requirement; on Windows it takes a socket's handle

    def drain() -> None:  # the bytes are signal numbers; the handlers already have them
        try:
            while reader.recv(512):
                pass
        except OSError:  # BlockingIOError: drained
            pass

    try:
        loop.add_reader(reader.fileno(), drain)
    except NotImplementedError:
        reader.close()
        writer.close()
        return None
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)

    def undo() -> None:
        signal.set_wakeup_fd(previous)
        loop.remove_reader(reader.fileno())
        reader.close()
        writer.close()

    return undo


async def serve(config: Config) -> None:
    """Run a daemon until SIGINT or SIGTERM (Ctrl-Break too on Windows), then shut it down gracefully."""
    loop = asyncio.get_running_loop()
    # Request handlers' threads (asyncio.to_thread), named so a stuck one is easy to spot.
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(thread_name_prefix="flowstate-handler"))
    daemon = Daemon(config)
    stop = asyncio.Event()
    # Handlers first: clients get answers as soon as the first socket is bound, while the rest
    # (MIDI last) is still opening, and a SIGTERM then must still shut down gracefully.
    unwatch = watch_stop_signals(loop, stop.set)
    try:
        await daemon.start()
    except BaseException:
        unwatch()
        raise
    try:
        await stop.wait()
        log.info("signal received, shutting down")
        end_past(config.daemon.shutdown_timeout_seconds + CLOSE_SECONDS + HARD_STOP_MARGIN_SECONDS)
    finally:
        unwatch()
        try:
            await daemon.shutdown()
        finally:
            daemon.close_executors()


def end_past(seconds: float) -> None:
    """End the process (exit 1) if it is still here in `seconds`, first writing where each of its
    threads is to the log.

    The shutdown's bounds hold while Python runs. A native call that keeps the GIL while it waits
    stops every thread, the ones keeping those bounds too: rtmidi closing its JACK MIDI port on a
    JACK server that stopped answering did (python-rtmidi's close_port keeps the GIL), and the daemon
    waited until it was killed. faulthandler's watchdog is a thread of C that needs no GIL.
    """
    try:  # the log's stream: `flowstate up` gives standard error a descriptor of its own (cli._own_stderr)
        faulthandler.dump_traceback_later(seconds, exit=True, file=sys.stderr)
    except (AttributeError, OSError, RuntimeError, ValueError) as err:  # no descriptor (pythonw's None)
        log.debug("no watchdog for the stop: %s", err)


def run(config: Config) -> None:
    """`serve` on a fresh event loop, without waiting for stuck handler threads at the end.

    `asyncio.run` would join the default executor's threads when the loop closes (up to 300 s,
    then again at interpreter exit): a handler stuck in a model load or a hub retry would keep a
    stopped daemon alive. Here the loop closes with `shutdown(wait=False)`; `exit_now` then ends
    the process if such threads are still there. Raises StartupError when the daemon cannot start.
    """
    loop = new_event_loop()  # a selector loop, Windows too: ZeroMQ's sockets are watched with add_reader
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(serve(config))
    finally:
        try:
            leftover = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in leftover:
                task.cancel()
            if leftover:
                loop.run_until_complete(asyncio.wait(leftover, timeout=CLOSE_SECONDS))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()  # the default executor: shutdown(wait=False)


def lingering_threads(grace_seconds: float = 0.2) -> list[threading.Thread]:
    """Threads other than the main one still alive after up to `grace_seconds` of joining them.

    Idle executor threads finish within the grace; what is left is stuck (a handler in a model
    load, a job worker in torch or ONNX Runtime native code).
    """
    deadline = time.monotonic() + grace_seconds
    left = []
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread is threading.current_thread():
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            left.append(thread)
    return left


def exit_now(code: int) -> None:
    """End the process with `code` at once if threads are still running after a clean shutdown.

    The last resort after the stores and sockets are closed: Python would wait forever for a
    non-daemon thread stuck in a blocking call (concurrent.futures joins its workers at exit), and
    a daemon thread still inside torch or ONNX Runtime native code at interpreter teardown aborts
    the process (SIGABRT, exit 134) instead of exiting 0. Logs are flushed first; without such
    threads this returns and the interpreter exits normally.
    """
    left = lingering_threads()
    if not left:
        return
    log.info("exiting without waiting for %d busy thread(s): %s", len(left), ", ".join(t.name for t in left))
    release_audio_host()  # the one exit handler that matters outside this process (a JACK client)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken pipe: nothing more can be said on it anyway
    os._exit(code)
