"""The job store: the jobs table of the durable queue, in one SQLite file that survives a crash.

The only durable state of the queue is this database; everything in memory (which requester to
send events to, cancel flags) is a convenience that a restart may lose. A job moves queued ->
running -> done | failed | canceled. A daemon that dies with a job `running` leaves it there; the
next `JobRunner.start()` (bridge/jobs.py) puts it back to `queued` (`JobStore.requeue_interrupted`).
The same file holds the router's spend and speed ledger (bridge/ledger.py), with the live stream's
measured compute per engine setting: one schema, one `user_version`. The connection set-up,
migrations and SQLite's errors are bridge/database.py's.

The same store runs on PostgreSQL (`JobStore.shared`, `server.store`) for several `flowstate serve`
instances that share one queue; the statements are the same, bar a row lock when claiming. Each
claim records who holds the job (`owner`, one per open store) until when (`lease_until`, unix
seconds): the holder renews its lease while it runs the job (`renew`), and only the holder may
record its progress or outcome, so a job is finished once even when its lease ran out and another
instance took it over. A holder that dies stops renewing; once the lease has run out any instance
puts the job back in the queue (`requeue_expired`), and the next claim counts a new attempt.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bridge.database import Database, PostgresDatabase
from bridge.errors import BadRequest, Internal, NotFound, StartupError
from bridge.protocol import quote_name

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "failed", "canceled"]
JOB_STATES: tuple[JobState, ...] = ("queued", "running", "done", "failed", "canceled")
FINISHED_STATES: frozenset[str] = frozenset({"done", "failed", "canceled"})

# The newest schema this code writes. `_MIGRATIONS[n]` takes a database from version n to n + 1,
# so a future column is one more entry here and older databases upgrade on open.
SCHEMA_VERSION = 5
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
    (
        # Who runs a claimed job and until when its claim holds (see the module's docstring).
        "ALTER TABLE jobs ADD COLUMN owner TEXT",
        "ALTER TABLE jobs ADD COLUMN lease_until REAL",
    ),
    (
        # The compute p99 of the last live stream per engine setting on this machine (bridge/ledger.py):
        # the next stream.start's compute budget, after a daemon restart too.
        """
        CREATE TABLE stream_compute (
            key        TEXT PRIMARY KEY,  -- StreamManager.timing_key: the settings and what the engine took
            p99_ms     REAL NOT NULL,
            hops       INTEGER NOT NULL,
            updated_at REAL NOT NULL
        )
        """,
    ),
)

# The same tables on PostgreSQL (`JobStore.shared`), created at once: the schema above as it stands
# now, in PostgreSQL's types (DOUBLE PRECISION: REAL is 4 bytes there). The ledger's tables stay in
# the daemon's SQLite file: a server has no router. Changes go in a further entry of both lists.
_PG_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE jobs (
            seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id            TEXT NOT NULL UNIQUE,
            kind          TEXT NOT NULL,
            state         TEXT NOT NULL
                          CHECK (state IN ('queued', 'running', 'done', 'failed', 'canceled')),
            args          TEXT NOT NULL,
            progress      DOUBLE PRECISION NOT NULL DEFAULT 0.0 CHECK (progress >= 0 AND progress <= 1),
            result        TEXT,
            error_code    TEXT,
            error_message TEXT,
            request_id    TEXT,
            created_at    DOUBLE PRECISION NOT NULL,
            started_at    DOUBLE PRECISION,
            finished_at   DOUBLE PRECISION,
            attempts      INTEGER NOT NULL DEFAULT 0,
            route         TEXT,
            owner         TEXT,
            lease_until   DOUBLE PRECISION,
            UNIQUE (kind, request_id)
        )
        """,
        "CREATE INDEX jobs_by_state ON jobs (state, seq)",
        """
        CREATE TABLE outputs (
            seq       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            job_id    TEXT NOT NULL,
            path      TEXT NOT NULL,
            root      TEXT,
            real_root TEXT,
            UNIQUE (job_id, path)
        )
        """,
    ),
)

# How long a claim holds without renewal by default; the runner renews it several times per lease.
DEFAULT_LEASE_SECONDS = 30.0

_COLUMNS = (
    "id, kind, state, args, progress, result, error_code, error_message, request_id, "
    "created_at, started_at, finished_at, attempts, route, owner"
)

# Waiting for another process's write lock (a CLI reading `jobs` while the daemon writes) beats


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
    # The store that claimed it last (`JobStore.owner`: an instance's name, its host and pid).
    owner: str | None = None

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
    def _from_row(cls, row: Mapping[str, Any]) -> Job:
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
            owner=row["owner"],
        )


def to_json(value: Any, what: str, error: type[Exception] = BadRequest) -> str:
    """JSON text for args/results; NaN and infinities are refused because JSON has no such values."""
    if not isinstance(value, dict):
        raise error(f"{what} must be a JSON object, got {type(value).__name__}")
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as err:
        raise error(f"{what} must be a JSON object of plain values: {err}") from err


class JobStore:
    """The jobs table in one SQLite file (WAL), or on a PostgreSQL server (`JobStore.shared`).
    Thread-safe: one connection behind a lock.

    One connection and a lock keep it simple: every statement is short (no statement waits on a
    job), so threads barely contend, and there is one place where the connection is closed.
    Other processes may open the same file (a CLI listing jobs); SQLite's own locking and a busy
    timeout cover them, and every state change is a single atomic statement.

    `owner` names this store's claims (default: host, pid and a random part, unique per store);
    `lease_seconds` is how long a claim holds unless renewed.
    """

    def __init__(self, path: Path, *, owner: str | None = None, lease_seconds: float = DEFAULT_LEASE_SECONDS,
                 database: PostgresDatabase | None = None) -> None:
        self.owner = owner or default_owner()
        self.lease_seconds = lease_seconds
        self._db: Database | PostgresDatabase
        if database is not None:
            self.path = database.path
            self._db = database
            # PostgreSQL: the oldest queued row nobody else is claiming right now, locked while taken.
            self._claim_lock = " FOR UPDATE SKIP LOCKED"
        else:
            self.path = Path(path)
            _warn_if_emptied(self.path)
            self._db = Database(self.path, name="job database", setting="jobs.database", migrations=_MIGRATIONS)
            self._claim_lock = ""  # SQLite: one writer at a time already

    @classmethod
    def shared(cls, dsn: str, password: str | None, *, owner: str | None = None,
               lease_seconds: float = DEFAULT_LEASE_SECONDS, setting: str = "server.store") -> JobStore:
        """The store on a PostgreSQL server that several instances share (StartupError naming
        `setting` when it cannot be reached; no message shows the password)."""
        database = PostgresDatabase(dsn, password=password, name="job store", setting=setting,
                                    migrations=_PG_MIGRATIONS)
        return cls(database.path, owner=owner, lease_seconds=lease_seconds, database=database)

    @property
    def is_shared(self) -> bool:
        """True when other processes, on other machines too, run jobs from this store (PostgreSQL)."""
        return isinstance(self._db, PostgresDatabase)

    @property
    def database(self) -> Database:
        """The SQLite file, which also holds the router's ledger (bridge/ledger.py): the daemon's."""
        if not isinstance(self._db, Database):
            raise Internal(f"the job store at {self._db.where} is shared (PostgreSQL); the ledger needs the "
                           "daemon's own SQLite file (jobs.database)")
        return self._db

    # -- plumbing ----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._db.closed

    def close(self) -> None:
        """Close the connection (checkpointing the WAL). Later calls raise Unavailable."""
        self._db.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> builtins.list[Any]:
        return self._db.execute(sql, params)

    def _one(self, sql: str, params: tuple[Any, ...]) -> Job | None:
        rows = self._execute(sql, params)
        return Job._from_row(rows[0]) if rows else None

    def _transition(
        self, job_id: str, target: str, allowed: tuple[str, ...], sets: str, params: tuple[Any, ...],
        *, held: bool = False,
    ) -> Job:
        """Move one job from one of `allowed` states, atomically (state checked in the WHERE).
        `held`: only while this store's claim holds it (another's outcome is never overwritten)."""
        marks = ", ".join("?" for _ in allowed)
        owned = " AND owner = ?" if held else ""
        job = self._one(
            f"UPDATE jobs SET {sets} WHERE id = ? AND state IN ({marks}){owned} RETURNING {_COLUMNS}",
            (*params, job_id, *allowed, *((self.owner,) if held else ())),
        )
        if job is None:
            current = self.get(job_id)  # NotFound when it does not exist at all
            if current.state in allowed:
                raise Internal(f"job {job_id} is {current.state} for {current.owner or 'nobody'}, not for "
                               f"{self.owner}; it cannot become {target} here (its claim ran out)")
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
        args_json = to_json(args, f"{kind}: args")
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
            raise NotFound(f"job {quote_name(job_id)} not found; job.list shows the known jobs")
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

    def counts(self) -> dict[str, int]:
        """How many jobs are in each state (every state, 0 included)."""
        rows = self._execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        found = {row["state"]: int(row["n"]) for row in rows}
        return {state: found.get(state, 0) for state in JOB_STATES}

    def claim_next(self) -> Job | None:
        """Atomically take the oldest queued job: it becomes running for this store's owner, with a
        lease of `lease_seconds`, attempts + 1. None if idle."""
        now = time.time()
        return self._one(
            f"UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ?, progress = 0, "
            f"owner = ?, lease_until = ? "
            f"WHERE seq = (SELECT seq FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1{self._claim_lock}) "
            f"AND state = 'queued' RETURNING {_COLUMNS}",
            (now, self.owner, now + self.lease_seconds),
        )

    def renew(self) -> set[str]:
        """Extend the lease of every job this store's owner runs; returns their ids (a job missing
        from them was canceled, or taken over after its lease ran out)."""
        rows = self._execute("UPDATE jobs SET lease_until = ? WHERE owner = ? AND state = 'running' RETURNING id",
                             (time.time() + self.lease_seconds, self.owner))
        return {row["id"] for row in rows}

    def requeue_expired(self, max_attempts: int | None = None) -> tuple[builtins.list[Job], builtins.list[str]]:
        """Put running jobs whose lease ran out (their holder died) back in the queue; returns (the
        jobs failed instead, having been started `max_attempts` times, the ids requeued)."""
        now = time.time()
        given_up: builtins.list[Job] = []
        if max_attempts is not None:
            message = (f"the instance running this job stopped answering during each of {max_attempts} "
                       "attempt(s); not retried (raise jobs.max_attempts to retry more)")
            rows = self._execute(
                # owner NULL: the attempt that lost it, if only paused, sees its claim gone (records nothing).
                f"UPDATE jobs SET state = 'failed', error_code = 'internal', error_message = ?, finished_at = ?, "
                f"owner = NULL, lease_until = NULL "
                f"WHERE state = 'running' AND lease_until < ? AND attempts >= ? RETURNING seq, {_COLUMNS}",
                (message, now, now, max_attempts),
            )
            given_up = [Job._from_row(row) for row in sorted(rows, key=lambda row: row["seq"])]
        rows = self._execute(
            "UPDATE jobs SET state = 'queued', progress = 0, started_at = NULL, owner = NULL, lease_until = NULL "
            "WHERE state = 'running' AND lease_until < ? RETURNING id, seq", (now,))
        for job in given_up:
            log.warning("job %s: its instance stopped answering %d times; failed instead of requeued",
                        job.id, max_attempts)
        return given_up, [row["id"] for row in sorted(rows, key=lambda row: row["seq"])]

    def set_route(self, job_id: str, route: dict[str, Any]) -> None:
        """Record where the router sent the job and why (replaced on each fallback)."""
        self._execute("UPDATE jobs SET route = ? WHERE id = ?", (to_json(route, "route", Internal), job_id))

    def set_progress(self, job_id: str, fraction: float) -> None:
        """Store a running job's progress, a fraction in [0, 1]."""
        if not (isinstance(fraction, (int, float)) and 0.0 <= fraction <= 1.0):
            raise ValueError(f"job {job_id}: progress {fraction!r} is not a fraction in [0, 1]")
        self._transition(job_id, "running", ("running",), "progress = ?", (float(fraction),), held=True)

    def finish(self, job_id: str, result: dict[str, Any]) -> Job:
        """running -> done with `result` (a JSON object); progress becomes 1."""
        result_json = to_json(result, f"job {job_id}: result")
        return self._transition(
            job_id, "done", ("running",), "state = 'done', progress = 1, result = ?, finished_at = ?",
            (result_json, time.time()), held=True,
        )

    def fail(self, job_id: str, code: str, message: str) -> Job:
        """running -> failed with a Protocol v1 error code and a message."""
        return self._transition(
            job_id, "failed", ("running",), "state = 'failed', error_code = ?, error_message = ?, finished_at = ?",
            (code, message, time.time()), held=True,
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
            "UPDATE jobs SET state = 'queued', progress = 0, started_at = NULL, owner = NULL, lease_until = NULL "
            "WHERE state = 'running' RETURNING id, seq"
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
            "UPDATE jobs SET state = 'queued', progress = 0, started_at = NULL, owner = NULL, lease_until = NULL, "
            "attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END "
            "WHERE id = ? AND state = 'running' AND owner = ? RETURNING id",
            (job_id, self.owner),
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

def default_owner(instance: str | None = None) -> str:
    """A name for a store's claims, unique per store: the instance (or host), the pid, a random part."""
    return f"{instance or socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


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
