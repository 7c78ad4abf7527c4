"""Running the durable job queue: workers, progress, cancel, and the files a failed job leaves.

The queue itself is the SQLite job store (bridge/job_store.py); this module runs it. A daemon that
dies with a job `running` leaves it there; the next `JobRunner.start()` puts it back to `queued`
(`JobStore.requeue_interrupted`), so handlers must be safe to run again: they write outputs through
`bridge.files.Folder.write_atomic` (folder handles reached from a root without links), which never
leaves a half-written file under a final name.

`JobRunner` is generic over job kinds: the daemon hands it `{kind: handler}`; a handler receives a
`JobContext` (progress, cancel checks, output registration) and returns the result dict.

On a shared store (PostgreSQL, several `flowstate serve` instances: `JobStore.is_shared`) nothing
is requeued at start (the other instances' running jobs are alive); instead a lease thread renews
the claims of this runner's jobs, stops a job that was canceled through another instance or taken
over after its claim ran out, and requeues the jobs whose holder stopped renewing (it died).
"""

from __future__ import annotations

import builtins
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from bridge.errors import BadRequest, BridgeError, Internal, Unavailable
from bridge.fileio import disk_full, not_permitted, remove_partials
from bridge.files import open_folder
from bridge.job_store import Job, JobStore, to_json
from bridge.protocol import Origin

log = logging.getLogger(__name__)


class JobCanceled(Exception):
    """Raised by `JobContext.check_cancelled` inside a handler; the runner marks the job canceled."""


class Publish(Protocol):
    """The runner's event callback; the daemon maps it onto `EventHub.publish(name, origin, id=job_id, **data)`."""

    def __call__(self, event: str, job_id: str, origin: Origin | None, /, **data: Any) -> None: ...


def _emit(publish: Publish, event: str, job_id: str, origin: Origin | None, **data: Any) -> None:
    # An event that cannot be delivered (say, one not declared in EVENTS) must neither kill a worker
    # nor change a job's outcome; the log keeps the traceback.
    try:
        publish(event, job_id, origin, **data)
    except Exception:
        log.exception("publishing %s for job %s failed", event, job_id)


class JobContext:
    """What a running handler gets: its job, progress reporting, cancel checks, output registration.

    Call `progress` and `register_output` from the handler's own thread; `request_cancel` (and so
    `JobRunner.cancel`) may come from any thread.
    """

    def __init__(
        self,
        job: Job,
        store: JobStore,
        publish: Publish,
        origin: Origin | None = None,
        *,
        progress_interval_seconds: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job = job
        self._store = store
        self._publish = publish
        self.origin = origin
        self._interval = progress_interval_seconds
        self._clock = clock
        self._cancel = threading.Event()
        self._outputs: builtins.list[tuple[Path, tuple[Path, Path] | None]] = []
        self._fraction = 0.0  # highest fraction reported, published or not
        self._published: float | None = None
        self._published_at = 0.0
        self._pending: dict[str, Any] | None = None  # detail of a throttled report not yet published
        # Another instance took the job over after this attempt's claim ran out: nothing this
        # attempt does may be recorded, nor its files deleted (they are the other attempt's now).
        self.taken_over = False
        self._at_end: builtins.list[Callable[[], None]] = []

    # -- progress ----------------------------------------------------------------------------------

    def set_route(self, route: dict[str, Any]) -> None:
        """Record the router's decision (job.status shows it) and tell the requester."""
        self._store.set_route(self.job.id, route)
        _emit(self._publish, "job.progress", self.job.id, self.origin, fraction=self._fraction, route=route)

    def progress(self, fraction: float, **detail: Any) -> None:
        """Report progress in [0, 1]; values are clamped and never go backwards.

        At most one store write and `job.progress` event per `progress_interval_seconds`; the
        first report and 1.0 always go out, and a throttled last value is flushed before the job's
        final event. `detail` (e.g. stage="vocals") rides along in the event's data.
        """
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction):
            raise ValueError(f"job {self.job.id}: progress fraction must be a finite number, got {fraction!r}")
        reserved = {"id", "fraction"} & detail.keys()
        if reserved:
            raise TypeError(
                f"job {self.job.id}: progress detail may not use the event's own field(s) {sorted(reserved)}"
            )
        self._fraction = max(self._fraction, min(1.0, max(0.0, float(fraction))))
        now = self._clock()
        if self._published is not None and self._fraction == self._published and not detail:
            return  # nothing new to say
        due = self._published is None or self._fraction >= 1.0 or now - self._published_at >= self._interval
        if not due:
            self._pending = detail
            return
        self._send(now, detail)

    def flush(self) -> None:
        """Publish a throttled report now (the runner calls this before a job's final event)."""
        if self._pending is not None:
            self._send(self._clock(), self._pending)

    def _send(self, now: float, detail: dict[str, Any]) -> None:
        try:
            self._store.set_progress(self.job.id, self._fraction)
        except Internal:
            if not self.claim_lost(self._store.get(self.job.id)):
                raise
            return  # stopping at the next check; nobody follows this attempt any more
        self._published = self._fraction
        self._published_at = now
        self._pending = None
        _emit(self._publish, "job.progress", self.job.id, self.origin, fraction=self._fraction, **detail)

    @property
    def fraction(self) -> float:
        """The highest fraction reported so far."""
        return self._fraction

    # -- cancel ------------------------------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """True once someone asked to cancel this job."""
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        """Raise JobCanceled if the job was cancelled; call it between segments of work."""
        if self._cancel.is_set():
            raise JobCanceled(f"job {self.job.id} was canceled")

    def request_cancel(self) -> None:
        """Set the cancel flag (what `JobRunner.cancel` does for a running job)."""
        self._cancel.set()

    def claim_lost(self, current: Job) -> bool:
        """Given the job as the store has it now: True, and cancel requested, when this attempt no
        longer holds it: canceled through another process, or (`taken_over`) claimed by another
        after this attempt's lease ran out. False while it holds it, or once it recorded the end."""
        mine = current.owner == self._store.owner
        if mine and current.state in ("running", "done", "failed"):
            return False
        if not (mine and current.state == "canceled"):
            self.taken_over = True
        self.request_cancel()
        return True

    def at_end(self, release: Callable[[], None]) -> None:
        """Call `release` once this attempt is over and its outcome recorded: after a failed or
        canceled job's outputs are deleted, so what it holds (a folder it writes into) is let go
        only when nothing of this attempt can touch it any more."""
        self._at_end.append(release)

    def run_at_end(self) -> None:
        for release in reversed(self._at_end):
            try:
                release()
            except Exception:
                log.exception("job %s: releasing what it held failed", self.job.id)
        self._at_end.clear()

    # -- outputs -----------------------------------------------------------------------------------

    def register_output(self, path: Path, anchor: tuple[Path, Path] | None = None) -> Path:
        """Note a file (or a folder created for this job) to delete if the job fails or is canceled.

        `anchor` is the (root, real root) the path lies below (`bridge.files.Folder.anchor`): the
        deletion then walks from that root without following links, so a folder swapped for a link
        after the write cannot turn the cleanup into a delete outside the roots. Without an anchor
        the path's parent folder is taken as it is then (for the daemon's own folders).
        """
        path = Path(path)
        self._outputs.append((path, anchor))
        return path

    @property
    def outputs(self) -> tuple[Path, ...]:
        return tuple(path for path, _ in self._outputs)

    def remove_outputs(self) -> None:
        """Delete registered files, then registered folders if that left them empty (never a tree).

        Only regular files and real, empty folders are deleted, each through a handle on the folder
        that holds it, reached from its root without links: a link found on the way is logged and
        left alone, and nothing it points to is touched.
        """
        for path, anchor in reversed(self._outputs):  # files inside a registered folder go before the folder
            root, real_root = anchor if anchor is not None else (path.parent, path.parent)
            try:
                parts = path.relative_to(root).parts
            except ValueError:
                log.warning("job %s: not removing output %s: it is not below %s", self.job.id, path, root)
                continue
            if not parts:
                continue  # never a root itself
            try:
                with open_folder(root, parts[:-1], self.job.kind, opened_root=real_root) as folder:
                    folder.remove(parts[-1])
            except FileNotFoundError:
                continue  # already gone
            except (OSError, BridgeError) as err:
                log.warning("job %s: could not remove output %s: %s", self.job.id, path, err)


JobHandler = Callable[[JobContext], dict[str, Any]]


class _TrackedContext(JobContext):
    """A runner's JobContext: every registered output is also written to the store.

    The store's list outlives the process, so a job failed at a later start-up (or in a later
    attempt) can still delete what an earlier attempt wrote.
    """

    def register_output(self, path: Path, anchor: tuple[Path, Path] | None = None) -> Path:
        registered = super().register_output(path, anchor)
        self._store.add_output(self.job.id, registered, anchor)
        return registered


def _discard_outputs(context: JobContext, store: JobStore) -> None:
    """Delete what a failed or canceled job wrote, over every attempt, and forget the list.

    `atomic_write` leftovers of crashed attempts go first (in each folder the job wrote into), so
    a folder the job created is empty when `remove_outputs` comes to it.
    """
    folders: dict[Path, None] = {}
    for path in context.outputs:
        if path.is_symlink():
            continue  # never follow a link out of the job's own folders
        folders[path if path.is_dir() else path.parent] = None
    for folder in folders:
        if not folder.is_symlink():
            remove_partials(folder)
    context.remove_outputs()
    store.forget_outputs(context.job.id)


def _claim_lost_on(context: JobContext, store: JobStore) -> bool:
    """After the store refused a job's outcome: whether it was because the attempt lost its claim."""
    try:
        return context.claim_lost(store.get(context.job.id))
    except BridgeError:
        return False


class JobRunner:
    """Runs queued jobs on `workers` threads and publishes their events.

    Events (`publish(event, job_id, origin, **data)`): `job.progress` (fraction, plus any detail),
    `job.done` (result), `job.failed` (code, message), `job.canceled` (no data). A successful job's
    events are progress 0, ..., progress 1.0, done.

    Shutdown: `stop_claiming()` (at once, from the signal) and then `stop(timeout)`, which waits
    for running jobs. A job still running at the deadline stays `running` (the next `start()`
    requeues it, counting the attempt as a crash) unless `hand_back()` puts it back in the queue
    without counting it (a graceful stop is not a crash); either way its worker thread (a daemon
    thread) is abandoned. Pass `cancel_running=True` to cancel running jobs instead (they end
    `canceled`). `after_job` runs on the worker after each job (the daemon returns freed memory
    to the OS there).
    """

    def __init__(
        self,
        store: JobStore,
        handlers: dict[str, JobHandler],
        workers: int,
        publish: Publish,
        *,
        max_attempts: int | None = 3,
        progress_interval_seconds: float = 0.1,
        idle_wait_seconds: float = 1.0,
        after_job: Callable[[], object] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"JobRunner: workers {workers} must be >= 1")
        self._store = store
        self._handlers = dict(handlers)
        self._num_workers = workers
        self._publish = publish
        self._max_attempts = max_attempts
        self._progress_interval = progress_interval_seconds
        # Idle workers also wake on this period, to pick up jobs queued by another process.
        self._idle_wait = idle_wait_seconds
        # One condition guards the fields below, and claim+register, so a cancel never sees a job
        # that has been claimed but is not yet in `_running`.
        self._cond = threading.Condition()
        self._origins: dict[str, Origin | None] = {}
        self._running: dict[str, JobContext] = {}
        self._threads: list[threading.Thread] = []
        self._started = False
        self._stopping = False
        self._after_job = after_job
        # Jobs handed back to the queue by stop() while their worker still runs: nothing that
        # worker reports later may change the store (the job is queued for the next start).
        self._abandoned: set[str] = set()
        self._given_up: builtins.list[Job] = []  # failed at start(); announced by announce_given_up()
        self._lease_thread: threading.Thread | None = None  # a shared store's (see the module's docstring)
        self._leases_stop = threading.Event()

    @property
    def store(self) -> JobStore:
        """The store this runner works from (for `job.status` and `job.list`)."""
        return self._store

    @property
    def kinds(self) -> tuple[str, ...]:
        """The job kinds this runner has handlers for, sorted."""
        return tuple(sorted(self._handlers))

    def start(self) -> builtins.list[str]:
        """Requeue jobs a dead daemon left running, then start the workers; returns requeued ids."""
        with self._cond:
            if self._started:
                raise RuntimeError("JobRunner.start() called twice")
            self._started = True
        if self._store.is_shared:
            # Others' running jobs are alive: only those whose lease runs out come back (_tend_leases).
            requeued: builtins.list[str] = []
            self._lease_thread = threading.Thread(target=self._keep_leases, name="flowstate-job-leases", daemon=True)
            self._lease_thread.start()
        else:
            # Before any worker exists: afterwards a `running` row might be one of ours.
            given_up = [] if self._max_attempts is None else self._store.give_up_interrupted(self._max_attempts)
            requeued = self._store.requeue_interrupted()
            for job in given_up:
                self._discard_stored(job)  # a failed job leaves no files, even when its daemon died each time
            self._given_up = given_up
            if requeued:
                log.info("requeued %d job(s) interrupted by a previous daemon: %s", len(requeued), ", ".join(requeued))
        for index in range(self._num_workers):
            # daemon=True: a job stuck in native code must not keep the process alive after stop().
            thread = threading.Thread(target=self._work, name=f"flowstate-job-{index + 1}", daemon=True)
            self._threads.append(thread)
            thread.start()
        return requeued

    @property
    def given_up(self) -> builtins.list[str]:
        """Ids of the jobs `start()` gave up on, not announced yet."""
        return [job.id for job in self._given_up]

    def announce_given_up(self) -> builtins.list[str]:
        """Publish `job.failed` for the jobs `start()` gave up on; returns their ids.

        The daemon calls this once someone can hear it (`EventHub.when_heard`): at `start()` nobody could.
        """
        given_up, self._given_up = self._given_up, []
        for job in given_up:
            _emit(self._publish, "job.failed", job.id, None, code=job.error_code or "internal",
                  message=job.error_message or "")
        return [job.id for job in given_up]

    def submit(
        self, kind: str, args: dict[str, Any], request_id: str | None = None, origin: Origin | None = None
    ) -> tuple[Job, bool]:
        """Queue a job of a known kind; events go to `origin` (and every listener). Returns (job, created)."""
        if kind not in self._handlers:
            raise BadRequest(f"unknown job kind {kind!r}; known kinds: {', '.join(self.kinds) or 'none'}")
        with self._cond:
            if self._stopping:
                raise Unavailable(f"{kind}: the job queue is shutting down; try again when the daemon is back")
            job, created = self._store.submit(kind, args, request_id)
            if not job.finished and (created or origin is not None):
                # A retry with the same request id (a lost reply, a restarted daemon) takes over the events.
                self._origins[job.id] = origin
            if created:
                self._cond.notify()
        return job, created

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: queued -> canceled now; running -> stops at its next check; finished -> no-op."""
        with self._cond:
            context = self._running.get(job_id)
            if context is not None:
                context.request_cancel()
                log.info("job %s: cancel requested", job_id)
                return self._store.get(job_id)
            job = self._store.get(job_id)
            if job.finished:
                return job
            # Queued, or `running` with no worker here (left by another process): no handler will
            # report back, so the store changes now. Workers claim under this lock, so no race.
            job = self._store.mark_canceled(job_id)
            origin = self._origins.pop(job_id, None)
        self._discard_stored(job)  # an earlier, interrupted attempt may have written some
        log.info("job %s: canceled before it ran", job_id)
        _emit(self._publish, "job.canceled", job_id, origin)
        return job

    def _discard_stored(self, job: Job) -> None:
        """Delete the outputs the store lists for a job no worker of ours runs (failed or canceled)."""
        context = JobContext(job, self._store, self._publish)
        for path, anchor in self._store.outputs(job.id):
            context.register_output(path, anchor)
        _discard_outputs(context, self._store)

    def stop_claiming(self) -> None:
        """No worker starts another job from now on (running ones go on). Returns at once."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def stop(self, timeout: float, cancel_running: bool = False) -> builtins.list[str]:
        """Stop claiming, wait up to `timeout` s for running jobs; returns the ids left running.

        Jobs left running go back to `queued` with their attempt given back, so the next start
        runs them again and a graceful stop never counts toward `max_attempts`. Calling stop()
        again waits again (for example, after cancelling).
        """
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            if cancel_running:
                for context in self._running.values():
                    context.request_cancel()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            left = sorted(set(self._running) - self._abandoned)
        if not left and self._lease_thread is not None:  # jobs still running keep their leases
            self._leases_stop.set()
            self._lease_thread.join(timeout)
        if left:
            log.warning("%d job(s) still running after %.1f s: %s", len(left), timeout, ", ".join(left))
        return left

    def hand_back(self) -> builtins.list[str]:
        """After `stop`: put jobs still running back in the queue, their attempt not counted.

        A graceful stop is not a crash, so it must not bring a job closer to `max_attempts`. Their
        workers are abandoned: whatever they report later is not recorded (the next start runs
        the job again from the start). Returns the ids handed back.
        """
        with self._cond:
            left = sorted(set(self._running) - self._abandoned)
            self._abandoned.update(left)
        handed: builtins.list[str] = []
        for job_id in left:
            try:
                if self._store.release(job_id):
                    handed.append(job_id)
            except (sqlite3.Error, BridgeError) as err:
                # Left `running`: the next start requeues it, counting this attempt.
                log.error("job %s: could not put it back in the queue: %s", job_id, err)
        if handed:
            log.info("queued again for the next start (this attempt does not count): %s", ", ".join(handed))
        return handed

    # -- leases (a shared store) -------------------------------------------------------------------

    def _keep_leases(self) -> None:
        period = self._store.lease_seconds / 3  # two renewals may fail before the lease runs out
        while True:
            try:
                self._tend_leases()
            except (sqlite3.Error, BridgeError) as err:
                log.error("job queue: cannot renew or check leases: %s", err)
            if self._leases_stop.wait(period) or self._store.closed:
                return

    def _tend_leases(self) -> None:
        """Renew this runner's claims, stop jobs it no longer holds, requeue the dead's jobs."""
        with self._cond:
            before = set(self._running) - self._abandoned  # claimed before the renewal: in its rows
        held = self._store.renew()
        for job_id in before - held:
            with self._cond:
                context = self._running.get(job_id)
            if context is not None and context.claim_lost(self._store.get(job_id)):
                how = "taken over by another instance" if context.taken_over else "canceled through another instance"
                log.warning("job %s: %s; stopping it here", job_id, how)
        given_up, requeued = self._store.requeue_expired(self._max_attempts)
        for job in given_up:
            self._discard_stored(job)
            _emit(self._publish, "job.failed", job.id, None, code=job.error_code or "internal",
                  message=job.error_message or "")
        if requeued:
            log.warning("requeued %d job(s) whose instance stopped renewing its claim: %s", len(requeued),
                        ", ".join(requeued))
            with self._cond:
                self._cond.notify_all()

    # -- workers -----------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                context = self._claim()
                while context is None:
                    if self._stopping:
                        return
                    self._cond.wait(self._idle_wait)
                    context = self._claim()
            self._run(context)

    def _claim(self) -> JobContext | None:
        """Claim the next job (caller holds the condition). Store errors are logged, not fatal."""
        if self._stopping:
            return None
        try:
            job = self._store.claim_next()
        except (sqlite3.Error, BridgeError) as err:
            log.error("job queue: cannot claim the next job: %s", err)
            return None
        if job is None:
            return None
        context = _TrackedContext(
            job, self._store, self._publish, self._origins.get(job.id),
            progress_interval_seconds=self._progress_interval,
        )
        try:
            # Earlier attempts' outputs, so a failure now deletes those too (no second store write).
            for path, anchor in self._store.outputs(job.id):
                JobContext.register_output(context, path, anchor)
        except (sqlite3.Error, BridgeError) as err:
            log.error("job %s: cannot read the outputs of earlier attempts: %s", job.id, err)
        self._running[job.id] = context
        return context

    def _run(self, context: JobContext) -> None:
        job = context.job
        started = time.monotonic()
        try:
            self._run_handler(context)
        finally:
            context.run_at_end()
            with self._cond:
                self._running.pop(job.id, None)
                self._origins.pop(job.id, None)
            if self._after_job is not None:
                try:
                    self._after_job()
                except Exception:
                    log.exception("after-job hook failed (job %s)", job.id)
            # Last: what follows the job on its worker (the freed memory handed back) is done.
            log.debug("job %s (%s) left its worker after %.2f s", job.id, job.kind, time.monotonic() - started)

    def _run_handler(self, context: JobContext) -> None:
        job = context.job
        origin = context.origin
        log.info("job %s (%s) started, attempt %d", job.id, job.kind, job.attempts)
        try:
            context.progress(0.0)
            handler = self._handlers.get(job.kind)
            if handler is None:  # queued by a daemon that had this kind; this one does not
                known = ", ".join(self.kinds) or "none"
                raise Unavailable(f"job kind {job.kind!r} is not available in this daemon; known kinds: {known}")
            try:
                result = handler(context)
            except OSError as err:
                said = disk_full(err, job.kind) or not_permitted(err, job.kind)
                if said is None:
                    raise
                raise said from err
            # A result the store cannot hold is the handler's bug: fail the job as internal.
            to_json(result, f"the {job.kind} handler's result", TypeError)
        except JobCanceled:
            log.info("job %s (%s) canceled", job.id, job.kind)
            if self._record(context, "canceled", lambda: self._store.mark_canceled(job.id)):
                _emit(self._publish, "job.canceled", job.id, origin)
        except BridgeError as err:
            log.warning("job %s (%s) failed: %s: %s", job.id, job.kind, err.code, err.message)
            # F821 is wrong here: the lambda runs inside _record, while `err` is still bound.
            if self._record(context, "failed", lambda: self._store.fail(job.id, err.code, err.message)):  # noqa: F821
                _emit(self._publish, "job.failed", job.id, origin, code=err.code, message=err.message)
        except Exception as err:
            log.exception("job %s (%s) failed", job.id, job.kind)
            message = (
                f"{job.kind} failed inside the daemon ({type(err).__name__}: {err}); "
                "the daemon log has the traceback"
            )
            if self._record(context, "failed", lambda: self._store.fail(job.id, "internal", message)):
                _emit(self._publish, "job.failed", job.id, origin, code="internal", message=message)
        else:
            if self._record(context, "done", lambda: self._finish(context, result)):
                _emit(self._publish, "job.done", job.id, origin, result=result)
                log.info("job %s (%s) done", job.id, job.kind)

    def _finish(self, context: JobContext, result: dict[str, Any]) -> None:
        context.progress(1.0)
        self._store.finish(context.job.id, result)
        self._store.forget_outputs(context.job.id)  # they are the result now, never to be deleted

    def _record(self, context: JobContext, outcome: str, write: Callable[[], object]) -> bool:
        """Store a job's outcome; False (logged, no event) when the store could not take it."""
        with self._cond:
            abandoned = context.job.id in self._abandoned
        if context.taken_over:
            log.warning("job %s ended (%s) after another instance took it over; not recorded", context.job.id, outcome)
            return False
        if abandoned:
            # stop() queued it again for the next start: that run owns its files and its outcome.
            log.info("job %s ended (%s) after the daemon handed it back to the queue; not recorded",
                     context.job.id, outcome)
            return False
        try:
            if outcome != "done":
                # Before the store says failed/canceled: a crash in between reruns the job instead
                # of leaving half a set of stems that no job owns.
                _discard_outputs(context, self._store)
                context.flush()
            write()
        except Exception as err:
            if not self._store.closed and _claim_lost_on(context, self._store):
                log.warning("job %s ended (%s) after it was %s elsewhere; not recorded", context.job.id, outcome,
                            "taken over" if context.taken_over else "canceled")
                if not context.taken_over:
                    _discard_outputs(context, self._store)  # canceled: what it wrote goes
            elif self._store.closed:
                log.warning(
                    "job %s ended (%s) after the job store closed; it stays running and the next start requeues it",
                    context.job.id, outcome,
                )
            else:
                log.exception("job %s: could not record %s: %s", context.job.id, outcome, err)
            return False
        return True

    def running(self) -> builtins.list[str]:
        """Ids of the jobs this runner's workers are running now."""
        with self._cond:
            return sorted(self._running)
