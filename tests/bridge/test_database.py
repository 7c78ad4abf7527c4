"""The SQLite helper every store opens its file through: real files, real migrations, real limits."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from bridge.database import Database, Statement, add_column
from bridge.errors import StartupError, Unavailable

V1: tuple[tuple[Statement, ...], ...] = (("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)",),)
V2: tuple[tuple[Statement, ...], ...] = (*V1, (add_column("notes", "tag", "TEXT"),))


def open_db(path: Path, migrations: Sequence[Sequence[Statement]] = V2) -> Database:
    return Database(path, name="notes database", setting="notes.database", migrations=migrations)


def test_an_older_file_is_upgraded_in_place_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite3"
    old = open_db(path, V1)
    old.execute("INSERT INTO notes (text) VALUES ('kept')")
    old.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()

    new = open_db(path)
    try:
        new.execute("UPDATE notes SET tag = 'drums'")
        assert [tuple(row) for row in new.execute("SELECT text, tag FROM notes")] == [("kept", "drums")]
        assert new.execute("PRAGMA journal_mode")[0][0] == "wal"
        assert new.execute("PRAGMA user_version")[0][0] == 2
    finally:
        new.close()


def test_a_column_an_earlier_build_already_added_is_not_added_twice(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite3"
    with sqlite3.connect(path) as conn:  # version 1 in its counter, the version-2 column already there
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL, tag TEXT)")
        conn.execute("INSERT INTO notes (text, tag) VALUES ('kept', 'bass')")
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    db = open_db(path)
    try:
        assert [tuple(row) for row in db.execute("SELECT text, tag FROM notes")] == [("kept", "bass")]
    finally:
        db.close()


def test_a_newer_schema_is_refused_naming_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite3"
    open_db(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 7")
    conn.close()
    with pytest.raises(StartupError, match=r"schema version 7.*notes\.database"):
        open_db(path)


def test_a_failed_transaction_writes_nothing_and_the_database_keeps_serving(tmp_path: Path) -> None:
    db = open_db(tmp_path / "notes.sqlite3")
    try:
        with pytest.raises(sqlite3.IntegrityError), db.transaction() as conn:
            conn.execute("INSERT INTO notes (text) VALUES ('first half')")
            conn.execute("INSERT INTO notes (text) VALUES (NULL)")  # NOT NULL: the second half fails
        assert db.execute("SELECT COUNT(*) FROM notes")[0][0] == 0
        with db.transaction() as conn:
            conn.executemany("INSERT INTO notes (text) VALUES (?)", [("a",), ("b",)])
        assert db.execute("SELECT COUNT(*) FROM notes")[0][0] == 2
    finally:
        db.close()


def test_a_full_file_is_unavailable_naming_it_and_its_setting(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite3"
    db = open_db(path)
    try:
        # SQLite's own limit on the file's size: the same "database or disk is full" as a full disk.
        pages = db.execute("PRAGMA page_count")[0][0]
        db.execute(f"PRAGMA max_page_count = {pages + 2}")
        with pytest.raises(Unavailable) as full, db.transaction() as conn:
            conn.executemany("INSERT INTO notes (text) VALUES (?)", [("x" * 4000,)] * 100)
        assert str(path) in full.value.message and "notes.database" in full.value.message
        assert db.execute("SELECT COUNT(*) FROM notes")[0][0] == 0  # all or nothing
    finally:
        db.close()


def test_a_closed_database_is_unavailable_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite3"
    db = open_db(path)
    db.close()
    assert db.closed
    with pytest.raises(Unavailable, match="is closed"):
        db.execute("SELECT 1")
    with pytest.raises(Unavailable, match=re.escape(str(path))), db.transaction():
        pass
