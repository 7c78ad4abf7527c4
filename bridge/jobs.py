"""The durable job queue: file jobs (stem separation, transcription, ...) that survive a crash.

The only durable state is the SQLite database `JobStore` owns; everything in memory (which
requester to send events to, cancel flags) is a convenience that a restart may lose. A job moves
queued -> running -> done | failed | canceled. A daemon that dies with a job `running` leaves it
there; the next `JobRunner.start()` puts it back to `queued` (`JobStore.requeue_interrupted`), so
handlers must be safe to run again: they write outputs through `bridge.files.Folder.write_atomic`
(folder handles reached from a root without links), which never leaves a half-written file under a
final name.

`JobRunner` is generic over job kinds: the daemon hands it `{kind: handler}`; a handler receives a
`JobContext` (progress, cancel checks, output registration) and returns the result dict.
"""

from __future__ import annotations

import builtins
import json
import logging
import math
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from bridge.errors import BadRequest, BridgeError, Internal, NotFound, StartupError, Unavailable
from bridge.fileio import disk_full, remove_partials
from bridge.files import open_folder
from bridge.protocol import Origin

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "failed", "canceled"]
JOB_STATES: tuple[JobState, ...] = ("queued", "running", "done", "failed", "canceled")
FINISHED_STATES: frozenset[str] = frozenset({"done", "failed", "canceled"})

# The newest schema this code writes. `_MIGRATIONS[n]` takes a database from version n to n + 1,
# so a future column is one more entry here and older databases upgrade on open.
SCHEMA_VERSION = 3
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE jobs (
            seq           INTEGER PRIMARY KEY,  -- submission order: FIFO without trusting the clock
            id            TEXT NOT NULL UNIQUE,
            kind          TEXT NOT NULL,
            state         TEXT NOT NULL
                          CHECK (state IN ('queued', 'running', 'done', 'failed', 'canceled')),
            args          TEXT NOT NULL,        -- JSON object
            progress      REAL NOT NULL DEFAULT 0.0 CHECK (progress >= 0 AND progress <= 1),
            result        TEXT,                 -- JSON object once done
            error_code    TEXT,
            error_message TEXT,
            request_id    TEXT,
            created_at    REAL NOT NULL,
            started_at    REAL,
            finished_at   REAL,
            attempts      INTEGER NOT NULL DEFAULT 0,
            -- Idempotent submits: NULL request ids never collide (SQL NULLs are distinct).
            UNIQUE (kind, request_id)
        )
        """,
        "CREATE INDEX jobs_by_state ON jobs (state, seq)",
    ),
    (
        # The router's decision for the job (tier, reason, estimates), shown by job.status.
        "ALTER TABLE jobs ADD COLUMN route TEXT",
        # What each cloud tier cost, for the monthly budget.
        """
        CREATE TABLE spend (
            at       REAL NOT NULL,
            month    TEXT NOT NULL,   -- 'YYYY-MM' (UTC)
            tier     TEXT NOT NULL,
            job_id   TEXT,
            cost_usd REAL NOT NULL
        )
        """,
        "CREATE INDEX spend_by_month ON spend (month)",
        # Measured local speed per (task, model, device): seconds of work per second of audio.
        """
        CREATE TABLE calibration (
            key                      TEXT PRIMARY KEY,
            seconds_per_audio_second REAL NOT NULL,
            samples                  INTEGER NOT NULL,
            updated_at               REAL NOT NULL
        )
        """,
    ),
    (
        # Files and folders a job registered, across attempts and daemon lifetimes: a job given up
        # at start-up (its daemon died each time) still knows what to delete.
        """
        CREATE TABLE outputs (
            seq    INTEGER PRIMARY KEY,  -- registration order: a folder before the files put in it
            job_id TEXT NOT NULL,
            path   TEXT NOT NULL,
            -- the root the path lies below, as spelled and as opened (bridge.files.Folder.anchor):
            -- a later deletion walks from there without following links; NULL for own folders
            root      TEXT,
            real_root TEXT,
            UNIQUE (job_id, path)
        )
        """,
    ),
)

_COLUMNS = (
    "id, kind, state, args, progress, result, error_code, error_message, request_id, "
    "created_at, started_at, finished_at, attempts, route"
)

# Waiting for another process's write lock (a CLI reading `jobs` while the daemon writes) beats
# failing with "database is locked"; writes here are single short statements.
_BUSY_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Job:
    """One row of the jobs table, as it was when read. Times are unix seconds."""

    id: str
    kind: str
    state: JobState
    args: dict[str, Any]
    progress: float
    result: dict[str, Any] | None
    error_code: str | None
    error_message: str | None
    request_id: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    route: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        """True once the job is done, failed or canceled: nothing will change it again."""
        return self.state in FINISHED_STATES

    def to_dict(self) -> dict[str, Any]:
        """What `job.status` returns (and each entry of `job.list`)."""
        error = None
        if self.error_code is not None:
            error = {"code": self.error_code, "message": self.error_message or ""}
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "progress": self.progress,
            "result": self.result,
            "error": error,
            "request_id": self.request_id,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "attempts": self.attempts,
            "route": self.route,
            "args": self.args,
        }

    @classmethod
    def _from_row(cls, row: sqlite3.Row) -> Job:
        return cls(
            id=row["id"],
            kind=row["kind"],
            state=row["state"],
            args=json.loads(row["args"]),
            progress=float(row["progress"]),
            result=None if row["result"] is None else json.loads(row["result"]),
            error_code=row["error_code"],
            error_message=row["error_message"],
            request_id=row["request_id"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            attempts=row["attempts"],
            route=None if row["route"] is None else json.loads(row["route"]),
        )


def _to_json(value: Any, what: str, error: type[Exception] = BadRequest) -> str:
    """JSON text for args/results; NaN and infinities are refused because JSON has no such values."""
    if not isinstance(value, dict):
        raise error(f"{what} must be a JSON object, got {type(value).__name__}")
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as err:
        raise error(f"{what} must be a JSON object of plain values: {err}") from err


class JobStore:
    """The jobs table in one SQLite file (WAL). Thread-safe: one connection behind a lock.

    One connection and a lock keep it simple: every statement is short (no statement waits on a
    job), so threads barely contend, and there is one place where the connection is closed.
    Other processes may open the same file (a CLI listing jobs); SQLite's own locking and a busy
    timeout cover them, and every state change is a single atomic statement.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        _warn_if_emptied(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: autocommit. Each write is one statement (atomic on its own);
            # the schema migration opens its own BEGIN IMMEDIATE.
            conn = sqlite3.connect(
                self.path, timeout=_BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as err:
            raise StartupError(f"cannot open the job database {self.path}: {err}") from err
        conn.row_factory = sqlite3.Row
        try:
            self._configure(conn)
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn

    def _configure(self, conn: sqlite3.Connection) -> None:
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            # WAL + NORMAL: a commit is durable against a crash of the daemon (SIGKILL, a segfault in
            # a native library): the WAL is in the OS's page cache, which outlives the process. Only a
            # power cut or kernel panic can roll back the last commits (never corrupt the file), and
            # then a job is at worst run again, which handlers are built for. FULL would fsync every
            # commit, ten times a second per running job while it reports progress.
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError as err:  # not an SQLite file, or a locked/corrupt one
            raise StartupError(f"cannot use the job database {self.path}: {err}") from err
        if mode != "wal":
            # Some network filesystems refuse WAL; the queue still works, with coarser locking.
            log.warning("job database %s: journal_mode is %s, not wal (a network folder?)", self.path, mode)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        try:
            # IMMEDIATE takes the write lock first, so two processes opening a new file at once
            # cannot both create the schema.
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StartupError(
                        f"job database {self.path} has schema version {version}; this flowstate "
                        f"understands up to {SCHEMA_VERSION}: upgrade flowstate or set jobs.database "
                        "to another file"
                    )
                for step in range(version, SCHEMA_VERSION):
                    for statement in _MIGRATIONS[step]:
                        conn.execute(statement)
                    log.info("job database %s: schema %d -> %d", self.path, step, step + 1)
                # PRAGMA does not take parameters; the value is our own integer.
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as err:
            raise StartupError(f"cannot use the job database {self.path}: {err}") from err

    # -- plumbing ----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._conn is None

    def close(self) -> None:
        """Close the connection (checkpointing the WAL). Later calls raise Unavailable."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> builtins.list[sqlite3.Row]:
        with self._lock:
            if self._conn is None:
                raise Unavailable(f"the job store {self.path} is closed (the daemon is shutting down)")
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError as err:
                full = _store_full(self.path, err)
                if full is None:
                    raise
                raise full from err

    def _one(self, sql: str, params: tuple[Any, ...]) -> Job | None:
        rows = self._execute(sql, params)
        return Job._from_row(rows[0]) if rows else None

    def _transition(
        self, job_id: str, target: str, allowed: tuple[str, ...], sets: str, params: tuple[Any, ...]
    ) -> Job:
        """Move one job from one of `allowed` states, atomically (state checked in the WHERE)."""
        marks = ", ".join("?" for _ in allowed)
        job = self._one(
            f"UPDATE jobs SET {sets} WHERE id = ? AND state IN ({marks}) RETURNING {_COLUMNS}",
            (*params, job_id, *allowed),
        )
        if job is None:
            current = self.get(job_id)  # NotFound when it does not exist at all
            raise Internal(
                f"job {job_id} is {current.state}; it cannot become {target} "
                f"(only from {' or '.join(allowed)})"
            )
        return job

    # -- the queue ---------------------------------------------------------------------------------

    def submit(self, kind: str, args: dict[str, Any], request_id: str | None = None) -> tuple[Job, bool]:
        """Queue a job; returns (job, created).

        The same (kind, request_id) submitted again returns the first job and created=False, even
        from two threads or processes at once: the UNIQUE constraint decides, not a prior read.
        The first submission's args win. An empty request id means none (OSC cannot send null).
        """
        args_json = _to_json(args, f"{kind}: args")
        request_id = request_id or None
        job_id = uuid.uuid4().hex[:12]
        created = self._one(
            f"INSERT INTO jobs (id, kind, state, args, request_id, created_at) "
            f"VALUES (?, ?, 'queued', ?, ?, ?) "
            f"ON CONFLICT (kind, request_id) DO NOTHING RETURNING {_COLUMNS}",
            (job_id, kind, args_json, request_id, time.time()),
        )
        if created is not None:
            return created, True
        existing = self._one(
            f"SELECT {_COLUMNS} FROM jobs WHERE kind = ? AND request_id = ?", (kind, request_id)
        )
        if existing is None:  # only if someone deleted the row between the two statements
            raise Internal(f"{kind}: request id {request_id!r} collided with a job that no longer exists")
        return existing, False

    def get(self, job_id: str) -> Job:
        """The job with this id, or NotFound naming it."""
        job = self._one(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        if job is None:
            raise NotFound(f"job {job_id!r} not found; job.list shows the known jobs")
        return job

    def list(self, state: str | None = None, limit: int = 100) -> builtins.list[Job]:
        """Jobs newest first, optionally only those in `state`."""
        if state is not None and state not in JOB_STATES:
            raise BadRequest(f"job.list: state {state!r} is not a job state; expected one of {', '.join(JOB_STATES)}")
        if limit < 1:
            raise BadRequest(f"job.list: limit {limit} is too small; expected an integer >= 1")
        if state is None:
            rows = self._execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY seq DESC LIMIT ?", (limit,))
        else:
            rows = self._execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE state = ? ORDER BY seq DESC LIMIT ?", (state, limit)
            )
        return [Job._from_row(row) for row in rows]

    def claim_next(self) -> Job | None:
        """Atomically take the oldest queued job: it becomes running, attempts + 1. None if idle."""
        return self._one(
            f"UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ?, progress = 0 "
            f"WHERE seq = (SELECT seq FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1) "
            f"RETURNING {_COLUMNS}",
            (time.time(),),
        )

    def set_route(self, job_id: str, route: dict[str, Any]) -> None:
        """Record where the router sent the job and why (replaced on each fallback)."""
        self._execute("UPDATE jobs SET route = ? WHERE id = ?", (_to_json(route, "route", Internal), job_id))

    def add_spend(self, tier: str, cost_usd: float, job_id: str | None = None, at: float | None = None) -> None:
        at = time.time() if at is None else at
        month = time.strftime("%Y-%m", time.gmtime(at))
        self._execute(
            "INSERT INTO spend (at, month, tier, job_id, cost_usd) VALUES (?, ?, ?, ?, ?)",
            (at, month, tier, job_id, float(cost_usd)),
        )

    def month_spend(self, at: float | None = None) -> float:
        """US dollars spent on cloud tiers in the (UTC) calendar month of `at` (default: now)."""
        month = time.strftime("%Y-%m", time.gmtime(time.time() if at is None else at))
        rows = self._execute("SELECT COALESCE(SUM(cost_usd), 0) FROM spend WHERE month = ?", (month,))
        return float(rows[0][0])

    def calibration(self, key: str) -> tuple[float, int] | None:
        rows = self._execute("SELECT seconds_per_audio_second, samples FROM calibration WHERE key = ?", (key,))
        return (float(rows[0][0]), int(rows[0][1])) if rows else None

    def calibrate(self, key: str, seconds_per_audio_second: float, weight: float = 0.3) -> float:
        """Blend a new measurement into the stored speed (exponential average); returns it."""
        current = self.calibration(key)
        if current is None:
            value, samples = seconds_per_audio_second, 1
        else:
            value = (1 - weight) * current[0] + weight * seconds_per_audio_second
            samples = current[1] + 1
        self._execute(
            "INSERT INTO calibration (key, seconds_per_audio_second, samples, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET seconds_per_audio_second = excluded.seconds_per_audio_second, "
            "samples = excluded.samples, updated_at = excluded.updated_at",
            (key, value, samples, time.time()),
        )
        return value

    def set_progress(self, job_id: str, fraction: float) -> None:
        """Store a running job's progress, a fraction in [0, 1]."""
        if not (isinstance(fraction, (int, float)) and 0.0 <= fraction <= 1.0):
            raise ValueError(f"job {job_id}: progress {fraction!r} is not a fraction in [0, 1]")
        self._transition(job_id, "running", ("running",), "progress = ?", (float(fraction),))

    def finish(self, job_id: str, result: dict[str, Any]) -> Job:
        """running -> done with `result` (a JSON object); progress becomes 1."""
        result_json = _to_json(result, f"job {job_id}: result")
        return self._transition(
            job_id, "done", ("running",), "state = 'done', progress = 1, result = ?, finished_at = ?",
            (result_json, time.time()),
        )

    def fail(self, job_id: str, code: str, message: str) -> Job:
        """running -> failed with a Protocol v1 error code and a message."""
        return self._transition(
            job_id, "failed", ("running",), "state = 'failed', error_code = ?, error_message = ?, finished_at = ?",
            (code, message, time.time()),
        )

    def mark_canceled(self, job_id: str) -> Job:
        """queued or running -> canceled. A finished job is returned unchanged (cancel is idempotent)."""
        try:
            return self._transition(
                job_id, "canceled", ("queued", "running"), "state = 'canceled', finished_at = ?", (time.time(),)
            )
        except Internal:
            job = self.get(job_id)
            if job.finished:
                return job
            raise

    def requeue_interrupted(self, max_attempts: int | None = None) -> builtins.list[str]:
        """At start-up: put every job a dead daemon left `running` back to `queued`; returns their ids.

        Call it before any worker of this process claims a job, or it would requeue that job too.
        With `max_attempts`, a job that has already been started that many times is failed
        (`internal`) instead (see `give_up_interrupted`).
        """
        if max_attempts is not None:
            self.give_up_interrupted(max_attempts)
        rows = self._execute(
            "UPDATE jobs SET state = 'queued', progress = 0, started_at = NULL WHERE state = 'running' "
            "RETURNING id, seq"
        )
        return [row["id"] for row in sorted(rows, key=lambda row: row["seq"])]

    def give_up_interrupted(self, max_attempts: int) -> builtins.list[Job]:
        """At start-up: fail (`internal`) every job left `running` that was started `max_attempts` times.

        A job that kills the daemon (out of memory, a native crash) must not crash every start-up
        after it. Graceful stops do not count (`release` gives their attempt back), so only crashes
        reach the limit. Returns the failed jobs, oldest first, so the caller can delete their
        files and announce `job.failed` once its sockets are up.
        """
        message = (
            f"the daemon crashed during each of {max_attempts} attempt(s) at this job; "
            "not retried (raise jobs.max_attempts to retry more)"
        )
        rows = self._execute(
            f"UPDATE jobs SET state = 'failed', error_code = 'internal', error_message = ?, finished_at = ? "
            f"WHERE state = 'running' AND attempts >= ? RETURNING seq, {_COLUMNS}",
            (message, time.time(), max_attempts),
        )
        given_up = [Job._from_row(row) for row in sorted(rows, key=lambda row: row["seq"])]
        for job in given_up:
            log.warning("job %s: interrupted %d times, failed instead of requeued", job.id, max_attempts)
        return given_up

    def release(self, job_id: str) -> bool:
        """running -> queued without counting the attempt: a graceful stop is not a crash.

        Returns False when the job is no longer running (it finished in the meantime).
        """
        rows = self._execute(
            "UPDATE jobs SET state = 'queued', progress = 0, started_at = NULL, "
            "attempts = MAX(attempts - 1, 0) WHERE id = ? AND state = 'running' RETURNING id",
            (job_id,),
        )
        return bool(rows)

    # -- outputs -------------------------------------------------------------------------------

    def add_output(self, job_id: str, path: Path, anchor: tuple[Path, Path] | None = None) -> None:
        """Remember a file or folder a job registered (and the root it lies below), so it can be
        deleted, without following links, even after a crash."""
        root, real_root = (os.fspath(anchor[0]), os.fspath(anchor[1])) if anchor is not None else (None, None)
        self._execute(
            "INSERT INTO outputs (job_id, path, root, real_root) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (job_id, path) DO NOTHING",
            (job_id, os.fspath(path), root, real_root),
        )

    def outputs(self, job_id: str) -> builtins.list[tuple[Path, tuple[Path, Path] | None]]:
        """The (path, anchor) pairs a job registered, in registration order (over every attempt)."""
        rows = self._execute("SELECT path, root, real_root FROM outputs WHERE job_id = ? ORDER BY seq", (job_id,))
        return [
            (Path(row["path"]), (Path(row["root"]), Path(row["real_root"])) if row["root"] is not None else None)
            for row in rows
        ]

    def forget_outputs(self, job_id: str) -> None:
        """Drop a job's registered paths: it is done (they are its result) or they are deleted."""
        self._execute("DELETE FROM outputs WHERE job_id = ?", (job_id,))


class StoreOwner:
    """Which process owns a job database: an OS lock on `<database>.lock`, held while it runs.

    Two daemons on one queue would requeue and run each other's jobs, so a daemon takes this
    before it opens the store, and a second one refuses to start without touching anything. The
    OS drops the lock when the process ends however it ends (SIGKILL included), so a crash never
    leaves a stale owner behind. The file also holds the owner's pid, for the refusal message
    (best effort: Windows does not let another process read a locked file).
    """

    def __init__(self, database: Path) -> None:
        from filelock import FileLock

        self.database = Path(database)
        self.path = self.database.with_name(self.database.name + ".lock")
        self._lock = FileLock(str(self.path), timeout=0)

    def acquire(self) -> StoreOwner:
        """Take ownership or raise StartupError naming the database and the other daemon's pid."""
        from filelock import Timeout

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except Timeout:
            raise StartupError(
                f"the job database {self.database} is in use by another flowstate daemon{self._holder()}; "
                "stop that daemon first, or give this one its own jobs.database"
            ) from None
        except OSError as err:
            raise StartupError(f"cannot lock the job database {self.database} ({self.path}): {err}") from err
        try:
            with open(self.path, "w", encoding="ascii") as out:
                out.write(f"{os.getpid()}\n")
        except OSError as err:  # Windows: the locked region cannot be written through another handle
            log.debug("cannot write the owner's pid into %s: %s", self.path, err)
        return self

    def _holder(self) -> str:
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return ""
        return f" (pid {text})" if text.isdigit() else ""

    def release(self) -> None:
        """Give up ownership (the file stays: removing it would race with the next owner)."""
        if self._lock.is_locked:
            self._lock.release()


def _store_full(path: Path, err: sqlite3.OperationalError) -> Unavailable | None:
    """`unavailable` naming the database when SQLite reports a full disk; None for other errors."""
    if "database or disk is full" not in str(err):
        return None
    return Unavailable(
        f"the job database {path} cannot grow: its disk is full (SQLite: {err}); free space on the disk "
        f"holding {path.parent} (or set jobs.database to a file on another disk) and try again"
    )


def _warn_if_emptied(path: Path) -> None:
    """Log when the job database exists but is empty (0 bytes): its history is gone.

    SQLite takes a 0-byte file as a new, empty database, so without this the daemon would start
    as if nothing had ever been queued. Starting anyway is deliberate: the rows cannot be
    recovered from an empty file, and refusing would keep the DAW's bridge down until someone
    deletes it. The warning says what happened and where.
    """
    try:
        size = path.stat().st_size
    except OSError:
        return  # absent (a first start) or unreadable (connect reports that)
    if size == 0:
        log.warning(
            "job database %s is empty (0 bytes): it was truncated or replaced, and every earlier job, "
            "spend record and speed calibration is gone; starting with an empty queue", path,
        )


# -- running jobs --------------------------------------------------------------------------------


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
        self._store.set_progress(self.job.id, self._fraction)
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

    def announce_given_up(self) -> builtins.list[str]:
        """Publish `job.failed` for the jobs `start()` gave up on; returns their ids.

        The daemon calls this once its sockets are up: at `start()` nobody could hear it.
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
            with self._cond:
                self._running.pop(job.id, None)
                self._origins.pop(job.id, None)
            log.debug("job %s (%s) left its worker after %.2f s", job.id, job.kind, time.monotonic() - started)
            if self._after_job is not None:
                try:
                    self._after_job()
                except Exception:
                    log.exception("after-job hook failed (job %s)", job.id)

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
                full = disk_full(err, job.kind)
                if full is None:
                    raise
                raise full from err
            # A result the store cannot hold is the handler's bug: fail the job as internal.
            _to_json(result, f"the {job.kind} handler's result", TypeError)
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
            if self._store.closed:
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
