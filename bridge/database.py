"""One SQLite file the daemon keeps: connection set-up, schema migrations, errors that name the file.

The job store (`bridge/job_store.py`, with the router's ledger in the same file) opens its database
through `Database`. It sets up what every store here wants: WAL with `synchronous=NORMAL`, a busy
timeout (a CLI reading while the daemon writes waits instead of failing "database is locked"),
autocommit (each write one atomic statement; `transaction()` for several), one connection behind a
lock (statements are short, so threads barely contend, and there is one place that closes it),
migrations counted by `PRAGMA user_version`, and SQLite's errors turned into the project's: a file
that cannot be opened or is not a database -> `StartupError`, a full disk -> `Unavailable` naming
the file and the setting that moves it, a closed store -> `Unavailable`.

`PostgresDatabase` is the same interface on a PostgreSQL server (`server.store`: the job store that
several `flowstate serve` instances share). Statements are written once, with SQLite's `?`
placeholders; it turns them into psycopg's `%s` (so no statement here may hold a literal `?` or
`%`). Its migrations are counted in a `flowstate_schema` table under an advisory lock, its errors
become `StartupError` (cannot connect: naming the setting, never the password) and `Unavailable`
(the server went away mid-way; the next statement connects again).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bridge.errors import Internal, StartupError, Unavailable

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


# How long connecting to the PostgreSQL store may take before start-up fails naming the setting.
CONNECT_TIMEOUT_SECONDS = 10
# Advisory lock key serialising schema migrations of the shared store (any constant; "flow" in ASCII).
_MIGRATION_LOCK = 0x666C6F77


def redact_dsn(dsn: str) -> str:
    """A PostgreSQL DSN fit for a log line or an error message: user, host, port, database; no password."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error:  # an unparsable DSN: say nothing of its text
        return "<an unparsable DSN>"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{parts.get('host', '')}{port}/{parts.get('dbname', '')}"


class PostgresDatabase:
    """A PostgreSQL database with `Database`'s interface: one connection behind a lock, autocommit,
    `execute`, `transaction`, migrations counted per store `name` in `flowstate_schema`.

    psycopg is imported here (the `cluster` extra): a plain install never needs it. The password
    comes apart from the DSN (`server.store_password`, FLOWSTATE_SERVER_STORE_PASSWORD; libpq's own
    PGPASSWORD and ~/.pgpass work too), and no message here shows it.
    """

    def __init__(self, dsn: str, *, password: str | None, name: str, setting: str,
                 migrations: Sequence[Sequence[str]]) -> None:
        try:
            import psycopg  # deferred: the `cluster` extra; a store of one's own never needs it
        except ImportError as err:
            raise StartupError(f"{setting}: a PostgreSQL {name} needs psycopg ({err}); "
                               "pip install 'flowstate-bridge[cluster]' (make setup installs it)") from err

        self._psycopg = psycopg
        self.name = name
        self.setting = setting
        self.where = redact_dsn(dsn)
        self.path = Path(self.where)  # what messages print for a SQLite file
        self.version = len(migrations)
        self._dsn = dsn
        self._password = password
        self._lock = threading.Lock()
        self._conn: Any = None
        self._closed = False
        try:
            conn = self._connect()
        except psycopg.Error as err:
            raise StartupError(f"{setting}: cannot connect to the {name} at {self.where}: "
                               f"{self._scrub(err)}") from None
        try:
            self._migrate(conn, migrations)
        except psycopg.Error as err:
            conn.close()
            raise StartupError(f"{setting}: cannot set up the {name} at {self.where}: {self._scrub(err)}") from None
        self._conn = conn

    def _connect(self) -> Any:
        from psycopg.rows import dict_row

        extra: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS, "application_name": "flowstate"}
        if self._password:
            extra["password"] = self._password
        return self._psycopg.connect(self._dsn, autocommit=True, row_factory=dict_row, **extra)

    def _scrub(self, err: BaseException) -> str:
        """The error's text, first line, with the password (if it somehow appears) taken out."""
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        for secret in filter(None, (self._password, _dsn_password(self._dsn))):
            text = text.replace(secret, "<hidden>")
        return text

    def _migrate(self, conn: Any, migrations: Sequence[Sequence[str]]) -> None:
        with conn.transaction():
            # Two instances starting at once on a new database: one creates the schema, the other waits.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS flowstate_schema "
                         "(name TEXT PRIMARY KEY, version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM flowstate_schema WHERE name = %s", (self.name,)).fetchone()
            version = 0 if row is None else int(row["version"])
            if version > self.version:
                raise StartupError(f"{self.name} at {self.where} has schema version {version}; this flowstate "
                                   f"understands up to {self.version}: upgrade flowstate on every instance")
            for step in range(version, self.version):
                for statement in migrations[step]:
                    conn.execute(statement)
                log.info("%s at %s: schema %d -> %d", self.name, self.where, step, step + 1)
            conn.execute("INSERT INTO flowstate_schema (name, version) VALUES (%s, %s) "
                         "ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version", (self.name, self.version))

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the connection. Later calls raise Unavailable."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> Any:
        """The open connection (caller holds the lock), connecting again after the server went away."""
        if self._closed:
            raise Unavailable(f"the {self.name} at {self.where} is closed (the server is shutting down)")
        if self._conn is None or self._conn.closed:
            try:
                self._conn = self._connect()
            except self._psycopg.Error as err:
                raise self._unreachable(err) from None
        return self._conn

    def _unreachable(self, err: BaseException) -> Unavailable:
        return Unavailable(f"the {self.name} at {self.where} ({self.setting}) is unreachable: {self._scrub(err)}")

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Run one statement (atomic on its own) and return every row it gives, as dicts."""
        with self._lock:
            conn = self._connection()
            try:
                cursor = conn.execute(_placeholders(sql), params)
                return cursor.fetchall() if cursor.description is not None else []
            except self._psycopg.OperationalError as err:
                raise self._unreachable(err) from None
            except self._psycopg.Error as err:
                raise Internal(f"the {self.name} at {self.where} refused a statement: {self._scrub(err)}") from None

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """Several statements as one (COMMIT on leaving, ROLLBACK on any error); `?` placeholders."""
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    yield _Placeholders(conn)
            except self._psycopg.OperationalError as err:
                raise self._unreachable(err) from None


class _Placeholders:
    """A psycopg connection whose `execute` takes `?` placeholders, like sqlite3's."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self._conn.execute(_placeholders(sql), params)


def _placeholders(sql: str) -> str:
    return sql.replace("?", "%s")


def _dsn_password(dsn: str) -> str | None:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:  # unparsable: nothing to scrub that libpq would have echoed
        return None
    return None if password is None else str(password)
