"""One SQLite file the daemon keeps: connection set-up, schema migrations, errors that name the file.

The job store (`bridge/job_store.py`, with the router's ledger in the same file) opens its database
through `Database`. It sets up what every store here wants: WAL with `synchronous=NORMAL`, a busy
timeout (a CLI reading while the daemon writes waits instead of failing "database is locked"),
autocommit (each write one atomic statement; `transaction()` for several), one connection behind a
lock (statements are short, so threads barely contend, and there is one place that closes it),
migrations counted by `PRAGMA user_version`, and SQLite's errors turned into the project's: a file
that cannot be opened or is not a database -> `StartupError`, a full disk -> `Unavailable` naming
the file and the setting that moves it, a closed store -> `Unavailable`.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bridge.errors import StartupError, Unavailable

log = logging.getLogger(__name__)

# Waiting for another process's write lock beats failing with "database is locked"; writes here
# are single short statements.
BUSY_TIMEOUT_SECONDS = 5.0

# One step of a migration: SQL text, or a function of the connection for what SQL alone cannot say
# (`add_column`: a column added only where an earlier build has not added it already).
Statement = str | Callable[[sqlite3.Connection], None]


def add_column(table: str, column: str, definition: str) -> Callable[[sqlite3.Connection], None]:
    """A migration step adding `column` to `table` unless the table already has it."""

    def step(conn: sqlite3.Connection) -> None:
        if column not in columns(conn, table):
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")

    return step


def columns(conn: sqlite3.Connection, table: str) -> set[str]:
    """The column names `table` has now (empty when there is no such table)."""
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


class Database:
    """One SQLite file (WAL): one connection behind a lock, migrated to the newest schema on open.

    `name` is how messages call it ("job database"), `setting` the config key that moves it
    ("jobs.database"), `migrations[n]` the statements taking a file from `user_version` n to n + 1
    (so the newest version is `len(migrations)`, and a future column is one more entry), and
    `unusable_hint` a sentence added when the file is not a usable database (what deleting it costs).
    Other processes may open the same file; SQLite's own locking and the busy timeout cover them.
    """

    def __init__(self, path: Path, *, name: str, setting: str, migrations: Sequence[Sequence[Statement]],
                 unusable_hint: str = "") -> None:
        self.path = Path(path)
        self.name = name
        self.setting = setting
        self.version = len(migrations)
        self._migrations = migrations
        self._hint = f"; {unusable_hint}" if unusable_hint else ""
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: autocommit. Each write is one statement (atomic on its own);
            # the schema migration and `transaction()` open their own BEGIN IMMEDIATE.
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as err:
            raise StartupError(f"cannot open the {name} {self.path}: {err}") from err
        conn.row_factory = sqlite3.Row
        try:
            self._configure(conn)
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn

    def _unusable(self, err: sqlite3.DatabaseError) -> StartupError:
        return StartupError(f"cannot use the {self.name} {self.path}: {err}{self._hint}")

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
            raise self._unusable(err) from err
        if mode != "wal":
            # Some network filesystems refuse WAL; the store still works, with coarser locking.
            log.warning("%s %s: journal_mode is %s, not wal (a network folder?)", self.name, self.path, mode)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        try:
            # IMMEDIATE takes the write lock first, so two processes opening a new file at once
            # cannot both create the schema.
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > self.version:
                    raise StartupError(
                        f"{self.name} {self.path} has schema version {version}; this flowstate "
                        f"understands up to {self.version}: upgrade flowstate or set {self.setting} "
                        "to another file"
                    )
                for step in range(version, self.version):
                    for statement in self._migrations[step]:
                        if isinstance(statement, str):
                            conn.execute(statement)
                        else:
                            statement(conn)
                    log.info("%s %s: schema %d -> %d", self.name, self.path, step, step + 1)
                # PRAGMA does not take parameters; the value is our own integer.
                conn.execute(f"PRAGMA user_version = {self.version:d}")
                conn.execute("COMMIT")
            except BaseException:
                _roll_back(conn)
                raise
        except sqlite3.DatabaseError as err:
            raise self._unusable(err) from err

    @property
    def closed(self) -> bool:
        return self._conn is None

    def close(self) -> None:
        """Close the connection (checkpointing the WAL). Later calls raise Unavailable."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> sqlite3.Connection:
        """The open connection (caller holds the lock)."""
        if self._conn is None:
            raise Unavailable(f"the {self.name} {self.path} is closed (the daemon is shutting down)")
        return self._conn

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Run one statement (atomic on its own) and return every row it gives."""
        with self._lock:
            conn = self._connection()
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError as err:
                full = self._full(err)
                if full is None:
                    raise
                raise full from err

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Several statements as one: BEGIN IMMEDIATE, COMMIT on leaving, ROLLBACK on any error."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    _roll_back(conn)
                    raise
            except sqlite3.OperationalError as err:
                full = self._full(err)
                if full is None:
                    raise
                raise full from err

    def _full(self, err: sqlite3.OperationalError) -> Unavailable | None:
        """`unavailable` naming the database when SQLite reports a full disk; None for other errors."""
        if "database or disk is full" not in str(err):
            return None
        return Unavailable(
            f"the {self.name} {self.path} cannot grow: its disk is full (SQLite: {err}); free space on the disk "
            f"holding {self.path.parent} (or set {self.setting} to a file on another disk) and try again"
        )


def _roll_back(conn: sqlite3.Connection) -> None:
    """Undo an open transaction. SQLite has already undone one that failed on a full disk (or an
    interrupt), and a ROLLBACK then would raise over the error that says why."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")
