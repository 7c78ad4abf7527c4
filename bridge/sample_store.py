"""The sample index's storage: the SQLite database (one row per file) and the in-memory vector matrices.

`SampleStore` owns `samples.sqlite3` (WAL, one connection behind a lock, like the job store) and its
migrations; `VectorIndex` holds unit-length vectors by sample id in one contiguous float32 matrix, so
a search is one matrix-vector product.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bridge.config import Config
from bridge.database import Database
from bridge.errors import StartupError, Unavailable
from bridge.sample_analysis import ANALYSIS_VERSION, UNSETTLED, Descriptors, Record


def library_database(config: Config) -> Path:
    """`samples.database`, or `samples.sqlite3` next to the job database."""
    if config.samples.database is not None:
        return config.samples.database.expanduser().absolute()
    jobs = config.jobs.database
    if jobs is None:
        raise StartupError("samples.database is not set and jobs.database is unknown; set samples.database")
    return jobs.with_name("samples.sqlite3")


# -- the database ------------------------------------------------------------------------------------

_SCHEMA = (
    """
    CREATE TABLE samples (
        id               INTEGER PRIMARY KEY,
        path             TEXT NOT NULL UNIQUE,
        name             TEXT NOT NULL,          -- file name with extension
        folder           TEXT NOT NULL,          -- the folder holding it
        root             TEXT NOT NULL,          -- the indexed folder it was found under
        size             INTEGER NOT NULL,
        mtime_ns         INTEGER NOT NULL,
        analysis         INTEGER NOT NULL,       -- ANALYSIS_VERSION that wrote the row (UNSETTLED: read again)
        status           TEXT NOT NULL CHECK (status IN ('ok', 'skipped')),
        error            TEXT,                   -- why it was skipped
        duration_seconds REAL,
        channels         INTEGER,
        sample_rate      INTEGER,
        frames           INTEGER,
        format           TEXT,
        bpm              REAL,
        tags             TEXT NOT NULL,          -- JSON list of words
        peak_db          REAL,
        rms_db           REAL,
        centroid_hz      REAL,
        flatness         REAL,
        attack_ms        REAL,
        tail_db          REAL,
        percussive       INTEGER,
        kind             TEXT,                   -- one-shot or loop
        text             TEXT,                   -- what the model embedded
        model            TEXT,                   -- which model embedded it
        embedding        BLOB,                   -- float32, unit length
        indexed_at       REAL NOT NULL
    )
    """,
    """
    CREATE TABLE folders (
        path       TEXT PRIMARY KEY,
        watch      INTEGER NOT NULL,
        files      INTEGER NOT NULL,
        indexed_at REAL NOT NULL
    )
    """,
)
# Schema 2 (issue 16): the sound models' columns. A version-1 database gains them empty, so its rows stay
# searchable by their words and get their audio vector and tags at the next index or watcher pass.
_SCHEMA_2 = (
    "ALTER TABLE samples ADD COLUMN audio_model TEXT",  # which CLAP model embedded the sound
    "ALTER TABLE samples ADD COLUMN audio_embedding BLOB",  # float32, unit length, in CLAP's space
    "ALTER TABLE samples ADD COLUMN tag_model TEXT",  # which audio classifier tagged it
    "ALTER TABLE samples ADD COLUMN sound_tags TEXT",  # JSON list of {label, score}, best first
)
_ROW = ("id, path, name, folder, duration_seconds, channels, sample_rate, format, bpm, tags, peak_db, rms_db, "
        "centroid_hz, flatness, attack_ms, tail_db, percussive, kind, sound_tags")
_FIELDS = ("path", "name", "folder", "root", "size", "mtime_ns", "analysis", "status", "error", "duration_seconds",
           "channels", "sample_rate", "frames", "format", "bpm", "tags", "peak_db", "rms_db", "centroid_hz",
           "flatness", "attack_ms", "tail_db", "percussive", "kind", "text", "model", "embedding", "indexed_at",
           "audio_model", "audio_embedding", "tag_model", "sound_tags")


@dataclass(frozen=True)
class Known:
    """What the database holds about a file, enough to tell whether it must be read again."""

    id: int
    size: int
    mtime_ns: int
    analysis: int
    status: str
    model: str | None
    audio_model: str | None = None
    tag_model: str | None = None


class SampleStore:
    """The samples database: one SQLite file through `bridge/database.py`, like the job store."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.database = Database(
            self.path, name="samples database", setting="samples.database", migrations=(_SCHEMA, _SCHEMA_2),
            unusable_hint="it only holds the sample index, so deleting it is safe (samples.index builds it again)",
        )

    def close(self) -> None:
        self.database.close()

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return self.database.execute(sql, params)

    def known_under(self, folder: Path) -> dict[str, Known]:
        """Rows for every path below `folder` (a range scan on the path index)."""
        # A root already ends in the separator (a sample drive, E:\, or /): it gets no second one.
        low = os.path.join(str(folder), "")
        high = low[:-1] + chr(ord(os.sep) + 1)
        rows = self._execute(
            "SELECT id, path, size, mtime_ns, analysis, status, model, audio_model, tag_model FROM samples "
            "WHERE path > ? AND path < ?",
            (low, high),
        )
        return {
            r["path"]: Known(r["id"], r["size"], r["mtime_ns"], r["analysis"], r["status"], r["model"],
                             r["audio_model"], r["tag_model"]) for r in rows
        }

    def write(self, records: list[Record], vectors: dict[int, np.ndarray], model: str,
              audio_model: str | None = None, tag_model: str | None = None) -> list[int]:
        """Insert or replace rows for `records` in one transaction; returns their ids in order.

        `vectors` maps a record's position to its embedding (skipped records have none); a record's
        `audio_vector` and `sound_tags`, when the sound models made them, are written with the model
        that made them (`audio_model`, `tag_model`).
        """
        now = time.time()
        marks = ", ".join("?" for _ in _FIELDS)
        updates = ", ".join(f"{name} = excluded.{name}" for name in _FIELDS if name != "path")
        sql = (f"INSERT INTO samples ({', '.join(_FIELDS)}) VALUES ({marks}) "
               f"ON CONFLICT (path) DO UPDATE SET {updates} RETURNING id")
        ids: list[int] = []
        with self.database.transaction() as conn:
            for position, record in enumerate(records):
                vector = vectors.get(position)
                values = _values(record, vector, model if vector is not None else None, now, audio_model, tag_model)
                ids.append(conn.execute(sql, values).fetchone()[0])
        return ids

    def delete(self, ids: list[int]) -> None:
        with self.database.transaction() as conn:
            conn.executemany("DELETE FROM samples WHERE id = ?", [(i,) for i in ids])

    def searchable(self, model: str) -> Iterator[tuple[dict[str, Any], bytes]]:
        """(entry, embedding) of every readable file embedded by `model`."""
        rows = self._execute(f"SELECT {_ROW}, embedding FROM samples WHERE status = 'ok' AND model = ? "
                             "AND embedding IS NOT NULL ORDER BY id", (model,))
        for row in rows:
            yield _entry(row), row["embedding"]

    def audio_vectors(self, audio_model: str) -> Iterator[tuple[int, bytes]]:
        """(id, audio embedding) of every readable file whose sound `audio_model` embedded."""
        rows = self._execute("SELECT id, audio_embedding FROM samples WHERE status = 'ok' AND audio_model = ? "
                             "AND audio_embedding IS NOT NULL ORDER BY id", (audio_model,))
        for row in rows:
            yield row["id"], row["audio_embedding"]

    def entries(self, ids: list[int]) -> list[dict[str, Any]]:
        marks = ", ".join("?" for _ in ids)
        rows = self._execute(f"SELECT {_ROW} FROM samples WHERE id IN ({marks})", tuple(ids))
        by_id = {row["id"]: _entry(row) for row in rows}
        return [by_id[i] for i in ids]

    def set_folder(self, folder: Path, watch: bool, files: int) -> None:
        self._execute(
            "INSERT INTO folders (path, watch, files, indexed_at) VALUES (?, ?, ?, ?) ON CONFLICT (path) DO UPDATE "
            "SET watch = excluded.watch, files = excluded.files, indexed_at = excluded.indexed_at",
            (str(folder), int(watch), files, time.time()),
        )

    def folders(self) -> list[dict[str, Any]]:
        rows = self._execute("SELECT path, watch, files, indexed_at FROM folders ORDER BY path")
        return [
            {"path": r["path"], "watch": bool(r["watch"]), "files": r["files"], "indexed_at": r["indexed_at"]}
            for r in rows
        ]

    def skipped(self, limit: int) -> tuple[int, list[dict[str, str]]]:
        count = self._execute("SELECT COUNT(*) FROM samples WHERE status = 'skipped'")[0][0]
        rows = self._execute("SELECT path, error FROM samples WHERE status = 'skipped' ORDER BY path LIMIT ?", (limit,))
        return int(count), [{"path": r["path"], "error": r["error"]} for r in rows]


def _values(record: Record, vector: np.ndarray | None, model: str | None, now: float, audio_model: str | None,
            tag_model: str | None) -> tuple[Any, ...]:
    d = record.descriptors
    path = Path(record.file.path)
    return (
        str(path), path.name, str(path.parent), str(record.root), record.file.size, record.file.mtime_ns,
        UNSETTLED if record.settling else ANALYSIS_VERSION, "skipped" if record.error else "ok", record.error,
        record.duration_seconds, record.channels, record.sample_rate, record.frames, record.format, record.bpm,
        json.dumps(record.tags),
        d.peak_db if d else None, d.rms_db if d else None, d.centroid_hz if d else None, d.flatness if d else None,
        d.attack_ms if d else None, d.tail_db if d else None, (int(d.percussive) if d else None),
        d.kind if d else None, record.text, model,
        vector.astype(np.float32).tobytes() if vector is not None else None, now,
        audio_model if record.audio_vector is not None else None,
        record.audio_vector.astype(np.float32).tobytes() if record.audio_vector is not None else None,
        tag_model if record.sound_tags is not None else None,
        json.dumps(record.sound_tags) if record.sound_tags is not None else None,
    )


def _entry(row: sqlite3.Row) -> dict[str, Any]:
    """What a search returns for a file (without its score)."""
    descriptors = None
    if row["centroid_hz"] is not None or row["peak_db"] is not None:
        descriptors = Descriptors(row["peak_db"], row["rms_db"], row["centroid_hz"], row["flatness"], row["attack_ms"],
                                  row["tail_db"], bool(row["percussive"]), row["kind"] or "one-shot").to_dict()
    return {
        "id": row["id"], "path": row["path"], "name": row["name"], "folder": row["folder"],
        "duration_seconds": row["duration_seconds"], "channels": row["channels"], "sample_rate": row["sample_rate"],
        "format": row["format"], "bpm": row["bpm"], "tags": json.loads(row["tags"]), "descriptors": descriptors,
        "sound_tags": json.loads(row["sound_tags"]) if row["sound_tags"] else [],
    }


# -- the in-memory matrix ------------------------------------------------------------------------------


class VectorIndex:
    """Unit-length vectors in one contiguous float32 matrix, by sample id; updated in place.

    Adding appends (the matrix doubles when full), replacing overwrites the row, removing moves the
    last row into the hole, so the live rows stay one block and a search is one matrix-vector product.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._matrix = np.zeros((0, 0), np.float32)
        self._ids = np.zeros(0, np.int64)
        self._slot: dict[int, int] = {}
        self._entries: dict[int, dict[str, Any]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def dimension(self) -> int:
        return self._matrix.shape[1]

    def upsert(self, ids: list[int], vectors: np.ndarray, entries: list[dict[str, Any]]) -> None:
        with self._lock:
            if self._matrix.shape[1] == 0 and len(ids):
                self._matrix = np.zeros((max(64, len(ids)), vectors.shape[1]), np.float32)
                self._ids = np.zeros(self._matrix.shape[0], np.int64)
            for sample_id, vector, entry in zip(ids, vectors, entries, strict=True):
                slot = self._slot.get(sample_id)
                if slot is None:
                    if self._count == self._matrix.shape[0]:
                        self._grow()
                    slot = self._count
                    self._count += 1
                    self._slot[sample_id] = slot
                    self._ids[slot] = sample_id
                self._matrix[slot] = vector
                self._entries[sample_id] = entry

    def remove(self, ids: list[int]) -> None:
        with self._lock:
            for sample_id in ids:
                slot = self._slot.pop(sample_id, None)
                self._entries.pop(sample_id, None)
                if slot is None:
                    continue
                last = self._count - 1
                if slot != last:
                    moved = int(self._ids[last])
                    self._matrix[slot] = self._matrix[last]
                    self._ids[slot] = moved
                    self._slot[moved] = slot
                self._count -= 1

    def search(self, vector: np.ndarray, k: int) -> list[tuple[dict[str, Any], float]]:
        """The `k` best (entry, cosine score), best first."""
        with self._lock:
            if self._count == 0:
                return []
            self._check_width(vector)
            # torch on tensors that share the numpy buffers: numpy's matrix-vector product goes through
            # OpenBLAS's thread pool, measured 10x slower (5.3 ms against 0.5 ms for 10,000 x 384) on
            # a busy 2-core machine, where torch keeps to the threads it was given.
            import torch

            query = torch.from_numpy(np.ascontiguousarray(vector, np.float32))
            scores = torch.mv(torch.from_numpy(self._matrix[: self._count]), query)
            top = torch.topk(scores, min(k, self._count))
            return [(self._entries[int(self._ids[i])], float(score))
                    for score, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]

    def scores(self, vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, cosine scores) of every row, in slot order: copies, for a search that ranks more than one space."""
        import torch

        with self._lock:
            if self._count == 0:
                return np.zeros(0, np.int64), np.zeros(0, np.float32)
            self._check_width(vector)
            query = torch.from_numpy(np.ascontiguousarray(vector, np.float32))
            scores = torch.mv(torch.from_numpy(self._matrix[: self._count]), query).numpy()
            return self._ids[: self._count].copy(), scores

    def entry(self, sample_id: int) -> dict[str, Any]:
        """What a search returns for a row (KeyError when it is not held)."""
        with self._lock:
            return self._entries[sample_id]

    def _check_width(self, vector: np.ndarray) -> None:
        if vector.shape[0] != self._matrix.shape[1]:
            raise Unavailable(f"samples.search: the index holds {self._matrix.shape[1]}-dimensional vectors "
                              f"and the model gives {vector.shape[0]}; run samples.index again to rebuild it")

    def _grow(self) -> None:
        matrix = np.zeros((self._matrix.shape[0] * 2, self._matrix.shape[1]), np.float32)
        matrix[: self._count] = self._matrix[: self._count]
        ids = np.zeros(matrix.shape[0], np.int64)
        ids[: self._count] = self._ids[: self._count]
        self._matrix, self._ids = matrix, ids
