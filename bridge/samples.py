"""The sample library: `samples.index`, `samples.search`, `samples.status`, `classify` and the watcher.

`samples.index <folder>` walks a folder inside `paths.roots` and records, per audio file: its name,
folder, tags (words of the file and folder names), duration, channels, sample rate and a few audio
descriptors (peak and RMS level, spectral centroid and flatness, attack, one-shot or loop,
percussive or sustained), plus a sentence embedding of a text built from all of that. The rows live
in their own SQLite file (`samples.database`, next to the job database by default); the vectors are
also held in memory as one normalised float32 matrix, so a search is one embedding of the query and
one matrix-vector product (about a millisecond for 10,000 files).

Indexing again only reads and embeds files whose size or modification time changed (or that an
older analysis or another model wrote), and drops the rows of deleted files; a file libsndfile
cannot read is recorded as skipped, with the reason, and the rest carry on. A folder indexed with
`watch` is scanned again every `samples.watch_interval_seconds` by one watcher thread (started
again when the daemon restarts), so files added, changed or deleted show up in searches by
themselves. A watched folder that has gone missing (an unplugged drive) keeps its rows.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bridge.config import Config
from bridge.embed_tier import EmbeddingTiers
from bridge.errors import BadRequest, BridgeError, NotFound, StartupError, Unavailable
from bridge.jobs import JobContext
from bridge.licences import describe
from bridge.paths import PathPolicy
from bridge.router import Router
from engines.cloud.base import Tier
from engines.embeddings import TextEmbedder
from engines.zeroshot import ZeroShotClassifier

if TYPE_CHECKING:
    from engines.embeddings import TextEmbedder

log = logging.getLogger(__name__)

KIND = "samples.index"
AUDIO_SUFFIXES = frozenset({".wav", ".wave", ".aif", ".aiff", ".aifc", ".flac", ".ogg", ".oga", ".opus", ".mp3"})
ANALYSIS_VERSION = 1  # bump when the descriptors change: rows written by an older one are analysed again
ANALYSIS_SECONDS = 30.0  # descriptors look at the first 30 s; a long file costs no more than that
BATCH_FILES = 32  # files analysed, embedded and committed together (a search waits at most one batch)
MAX_QUERY_CHARS = 500
MAX_RESULTS = 50
SKIPPED_SHOWN = 20
SILENCE_DB = -120.0

Progress = Callable[[float, str], None]
CheckCancelled = Callable[[], None]


def library_database(config: Config) -> Path:
    """`samples.database`, or `samples.sqlite3` next to the job database."""
    if config.samples.database is not None:
        return config.samples.database.expanduser().absolute()
    jobs = config.jobs.database
    if jobs is None:
        raise StartupError("samples.database is not set and jobs.database is unknown; set samples.database")
    return jobs.with_name("samples.sqlite3")


# -- descriptors -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Descriptors:
    """What a sample sounds like, in numbers and in the words the embedding text uses."""

    peak_db: float
    rms_db: float
    centroid_hz: float | None  # None for silence
    flatness: float | None  # 0 = a pure tone, 1 = white noise
    attack_ms: float | None  # from audible to within 3 dB of the loudest moment
    tail_db: float | None  # the level of the last tenth against the loudest moment
    percussive: bool
    kind: str  # "one-shot" or "loop"

    @property
    def words(self) -> list[str]:
        """Plain words for the embedding text: kind, envelope, brightness, register, texture."""
        if self.centroid_hz is None:
            return [self.kind, "silent"]
        words = [self.kind, "percussive" if self.percussive else "sustained"]
        if self.centroid_hz < 500:
            words.append("dark")
        elif self.centroid_hz < 1500:
            words.append("warm")
        elif self.centroid_hz > 4000:
            words.append("bright")
        if self.centroid_hz < 250:
            words.append("low")
        if self.flatness is not None and self.flatness > 0.3:
            words.append("noisy")
        elif self.flatness is not None and self.flatness < 0.02:
            words.append("tonal")
        return words

    def to_dict(self) -> dict[str, Any]:
        return {
            "peak_db": self.peak_db, "rms_db": self.rms_db, "centroid_hz": self.centroid_hz,
            "flatness": self.flatness, "attack_ms": self.attack_ms, "tail_db": self.tail_db,
            "percussive": self.percussive, "kind": self.kind, "words": self.words,
        }


def _db(value: float) -> float:
    return round(max(SILENCE_DB, 20.0 * math.log10(value)) if value > 0 else SILENCE_DB, 2)


def describe_audio(audio: np.ndarray, sample_rate: int, duration_seconds: float) -> Descriptors:
    """Descriptors of `(frames, channels)` float32 audio (the first `ANALYSIS_SECONDS` of a file).

    `duration_seconds` is the whole file's, which decides one-shot against loop together with
    whether the sound is still going at the end.
    """
    mono = audio.mean(axis=1, dtype=np.float32) if audio.ndim == 2 else np.asarray(audio, np.float32)
    peak = float(np.max(np.abs(mono))) if mono.size else 0.0
    if peak <= 10 ** (SILENCE_DB / 20):
        return Descriptors(SILENCE_DB, SILENCE_DB, None, None, None, None, False, "one-shot")
    rms = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64))))
    env_db, hop_seconds = _envelope_db(mono, sample_rate)
    loudest = float(env_db.max())
    start = int(np.argmax(env_db > loudest - 40.0))
    peak_frame = int(np.argmax(env_db >= loudest - 3.0))
    attack_ms = (peak_frame - start) * hop_seconds * 1000.0
    after = peak_frame + max(1, round(0.3 / hop_seconds))  # 300 ms after the loudest moment, or the end
    decay_db = loudest - float(env_db[min(after, env_db.size - 1)])
    tail = env_db[-max(1, env_db.size // 10):]
    tail_db = float(tail.mean()) - loudest
    percussive = attack_ms <= 30.0 and decay_db >= 10.0
    kind = "loop" if duration_seconds >= 2.0 and tail_db > -24.0 else "one-shot"
    centroid, flatness = _spectrum(mono, sample_rate)
    return Descriptors(
        peak_db=_db(peak), rms_db=_db(rms), centroid_hz=round(centroid, 1), flatness=round(flatness, 4),
        attack_ms=round(attack_ms, 1), tail_db=round(tail_db, 2), percussive=percussive, kind=kind,
    )


def _envelope_db(mono: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float]:
    """RMS level in dB per 10 ms frame, and the frame length in seconds."""
    hop = max(1, round(0.01 * sample_rate))
    frames = -(-mono.size // hop)
    padded = np.zeros(frames * hop, np.float32)
    padded[: mono.size] = mono
    power = np.mean(np.square(padded.reshape(frames, hop)), axis=1)
    return 10.0 * np.log10(power + 1e-12), hop / sample_rate


def _spectrum(mono: np.ndarray, sample_rate: int, size: int = 2048, max_frames: int = 256) -> tuple[float, float]:
    """(spectral centroid in Hz, spectral flatness) of the power spectrum summed over frames.

    Summing the power of every frame weights loud frames more, which is what a listener hears.
    At most `max_frames` frames, spread over the audio, keep a long file cheap.
    """
    frames = max(1, -(-mono.size // size))
    padded = np.zeros(frames * size, np.float32)
    padded[: mono.size] = mono
    blocks = padded.reshape(frames, size)
    if frames > max_frames:
        blocks = blocks[np.linspace(0, frames - 1, max_frames).astype(int)]
    power = np.square(np.abs(np.fft.rfft(blocks * np.hanning(size).astype(np.float32), axis=1))).sum(axis=0)
    power = power.astype(np.float64) + 1e-20
    freqs = np.fft.rfftfreq(size, 1.0 / sample_rate)
    centroid = float((freqs * power).sum() / power.sum())
    flatness = float(np.exp(np.mean(np.log(power))) / np.mean(power))
    return centroid, flatness


# -- names, tags and the embedding text -----------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+")
_CASE = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])")
_BPM = re.compile(r"(?<![\d.])(\d{2,3}(?:\.\d+)?)\s*[-_ ]?bpm|bpm\s*[-_ ]?(\d{2,3}(?:\.\d+)?)(?![\d.])", re.IGNORECASE)
_STOPWORDS = frozenset({"a", "an", "and", "the", "of", "in", "by", "for", "with", "to", "my", "bpm"} |
                       {suffix.lstrip(".") for suffix in AUDIO_SUFFIXES})


def words_of(text: str) -> list[str]:
    """`HiHat_Closed-02 (808).wav` -> hi, hat, closed, 808: lower-case words, numbering dropped."""
    words: list[str] = []
    for token in _WORD.findall(text):
        for part in _CASE.split(token):
            word = part.lower()
            if word.isdigit() and (len(word) <= 2 or word.startswith("0")):
                continue  # take numbers (01, 2) say nothing; 808, 909, 120 do
            if word and word not in _STOPWORDS:
                words.append(word)
    return words


def bpm_of(name: str) -> float | None:
    """The tempo a file name states (`Loop 120bpm`, `bpm_90`), if it is a plausible one."""
    match = _BPM.search(name)
    if match is None:
        return None
    value = float(match.group(1) or match.group(2))
    return value if 40.0 <= value <= 300.0 else None


def tags_of(path: Path, root: Path) -> list[str]:
    """Words of the file name, then of its folders below `root`, each once."""
    tags: list[str] = []
    relative_folders = path.parent.relative_to(root).parts if path.parent != root else ()
    for word in words_of(path.stem) + [w for part in relative_folders for w in words_of(part)]:
        if word not in tags:
            tags.append(word)
    return tags


def embedding_text(path: Path, root: Path, descriptors: Descriptors, bpm: float | None) -> str:
    """`kick 808 punchy. drums kicks. one-shot percussive dark low tonal`: what the model reads."""
    name = " ".join(words_of(path.stem)) or path.stem
    relative_folders = path.parent.relative_to(root).parts if path.parent != root else ()
    folders = " ".join(w for part in relative_folders for w in words_of(part))
    words = " ".join(descriptors.words + ([f"{bpm:g} bpm"] if bpm else []))
    return ". ".join(part for part in (name, folders, words) if part)


# -- files -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileState:
    """A file as listed: where it is and what its size and modification time say about it."""

    path: str  # as listed (a str: a Path per file costs more than the rest of a rescan)
    size: int
    mtime_ns: int


@dataclass
class Record:
    """One analysed file, ready to be written (an `error` means skipped)."""

    file: FileState
    root: Path
    error: str | None = None
    duration_seconds: float | None = None
    channels: int | None = None
    sample_rate: int | None = None
    frames: int | None = None
    format: str | None = None
    bpm: float | None = None
    tags: list[str] = field(default_factory=list)
    descriptors: Descriptors | None = None
    text: str | None = None


def analyse_file(file: FileState, root: Path) -> Record:
    """Read a file's header and first `ANALYSIS_SECONDS`; a file that cannot be read gets an error."""
    import soundfile

    path = Path(file.path)
    record = Record(file, root, tags=tags_of(path, root), bpm=bpm_of(path.stem))
    try:
        info = soundfile.info(file.path)
        if info.frames <= 0 or info.samplerate <= 0:
            record.error = "holds no audio (0 frames)"
            return record
        wanted = min(info.frames, int(ANALYSIS_SECONDS * info.samplerate))
        audio, sample_rate = soundfile.read(file.path, frames=wanted, dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, OSError, ValueError, EOFError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        record.error = f"cannot be read: {type(err).__name__}: {first_line}"[:300]
        return record
    if audio.shape[0] == 0:
        record.error = "holds no audio (no frames could be decoded)"
        return record
    record.duration_seconds = round(info.frames / info.samplerate, 4)
    record.channels, record.sample_rate, record.frames = int(info.channels), int(sample_rate), int(info.frames)
    record.format = str(info.format)
    record.descriptors = describe_audio(audio, sample_rate, record.duration_seconds)
    record.text = embedding_text(path, root, record.descriptors, record.bpm)
    return record


def list_audio(folder: Path, paths: PathPolicy, check_cancelled: CheckCancelled) -> list[FileState]:
    """Every audio file under `folder` (hidden names skipped), following links that stay inside the roots."""
    found: list[FileState] = []
    seen = {os.path.realpath(folder)}
    stack = [folder]
    visited = 0
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError as err:
            log.warning("samples: cannot list %s: %s", current, err)
            continue
        for entry in entries:
            visited += 1
            if visited % 256 == 0:
                check_cancelled()
            if entry.name.startswith("."):
                continue  # hidden files, and atomic_write's partial files
            try:
                is_dir = entry.is_dir()
                is_link = entry.is_symlink()
                if is_link and not _inside(entry.path, paths):
                    continue  # a link that leads outside paths.roots is not followed
                if is_dir:
                    real = os.path.realpath(entry.path)
                    if real not in seen:  # a link back up the tree would loop forever
                        seen.add(real)
                        stack.append(Path(entry.path))
                elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in AUDIO_SUFFIXES:
                    stat = entry.stat()
                    found.append(FileState(entry.path, stat.st_size, stat.st_mtime_ns))
            except OSError as err:
                log.warning("samples: cannot stat %s: %s", entry.path, err)
    found.sort(key=lambda f: f.path)
    return found


def _inside(path: str, paths: PathPolicy) -> bool:
    real = Path(os.path.realpath(path))
    return any(real == root or root in real.parents for root in paths.roots)


# -- the database ------------------------------------------------------------------------------------

SCHEMA_VERSION = 1
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
        analysis         INTEGER NOT NULL,       -- ANALYSIS_VERSION that wrote the row
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
_ROW = ("id, path, name, folder, duration_seconds, channels, sample_rate, format, bpm, tags, peak_db, rms_db, "
        "centroid_hz, flatness, attack_ms, tail_db, percussive, kind")
_FIELDS = ("path", "name", "folder", "root", "size", "mtime_ns", "analysis", "status", "error", "duration_seconds",
           "channels", "sample_rate", "frames", "format", "bpm", "tags", "peak_db", "rms_db", "centroid_hz",
           "flatness", "attack_ms", "tail_db", "percussive", "kind", "text", "model", "embedding", "indexed_at")


@dataclass(frozen=True)
class Known:
    """What the database holds about a file, enough to tell whether it must be read again."""

    id: int
    size: int
    mtime_ns: int
    analysis: int
    status: str
    model: str | None


class SampleStore:
    """The samples database (SQLite, WAL): one connection behind a lock, like the job store."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as err:
            raise StartupError(f"cannot open the samples database {self.path}: {err}") from err
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._migrate(conn)
        except sqlite3.DatabaseError as err:
            conn.close()
            raise StartupError(f"cannot use the samples database {self.path}: {err}; it only holds the sample "
                               "index, so deleting it is safe (samples.index builds it again)") from err
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StartupError(f"samples database {self.path} has schema version {version}; this flowstate "
                                   f"understands up to {SCHEMA_VERSION}: upgrade, or set samples.database to "
                                   "another file")
            if version == 0:
                for statement in _SCHEMA:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise Unavailable(f"the samples database {self.path} is closed (the daemon is shutting down)")
        return self._conn

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._connection().execute(sql, params).fetchall()

    def known_under(self, folder: Path) -> dict[str, Known]:
        """Rows for every path below `folder` (a range scan on the path index)."""
        low = str(folder) + os.sep
        high = str(folder) + chr(ord(os.sep) + 1)
        rows = self._execute(
            "SELECT id, path, size, mtime_ns, analysis, status, model FROM samples WHERE path > ? AND path < ?",
            (low, high),
        )
        return {
            r["path"]: Known(r["id"], r["size"], r["mtime_ns"], r["analysis"], r["status"], r["model"]) for r in rows
        }

    def write(self, records: list[Record], vectors: dict[int, np.ndarray], model: str) -> list[int]:
        """Insert or replace rows for `records` in one transaction; returns their ids in order.

        `vectors` maps a record's position to its embedding (skipped records have none).
        """
        now = time.time()
        marks = ", ".join("?" for _ in _FIELDS)
        updates = ", ".join(f"{name} = excluded.{name}" for name in _FIELDS if name != "path")
        sql = (f"INSERT INTO samples ({', '.join(_FIELDS)}) VALUES ({marks}) "
               f"ON CONFLICT (path) DO UPDATE SET {updates} RETURNING id")
        ids: list[int] = []
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                for position, record in enumerate(records):
                    vector = vectors.get(position)
                    values = _values(record, vector, model if vector is not None else None, now)
                    ids.append(conn.execute(sql, values).fetchone()[0])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return ids

    def delete(self, ids: list[int]) -> None:
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("DELETE FROM samples WHERE id = ?", [(i,) for i in ids])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def searchable(self, model: str) -> Iterator[tuple[dict[str, Any], bytes]]:
        """(entry, embedding) of every readable file embedded by `model`."""
        rows = self._execute(f"SELECT {_ROW}, embedding FROM samples WHERE status = 'ok' AND model = ? "
                             "AND embedding IS NOT NULL ORDER BY id", (model,))
        for row in rows:
            yield _entry(row), row["embedding"]

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


def _values(record: Record, vector: np.ndarray | None, model: str | None, now: float) -> tuple[Any, ...]:
    d = record.descriptors
    path = Path(record.file.path)
    return (
        str(path), path.name, str(path.parent), str(record.root), record.file.size, record.file.mtime_ns,
        ANALYSIS_VERSION, "skipped" if record.error else "ok", record.error, record.duration_seconds,
        record.channels, record.sample_rate, record.frames, record.format, record.bpm, json.dumps(record.tags),
        d.peak_db if d else None, d.rms_db if d else None, d.centroid_hz if d else None, d.flatness if d else None,
        d.attack_ms if d else None, d.tail_db if d else None, (int(d.percussive) if d else None),
        d.kind if d else None, record.text, model,
        vector.astype(np.float32).tobytes() if vector is not None else None, now,
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
            for sample_id, vector, entry in zip(ids, vectors, entries):
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
            if vector.shape[0] != self._matrix.shape[1]:
                raise Unavailable(f"samples.search: the index holds {self._matrix.shape[1]}-dimensional vectors "
                                  f"and the model gives {vector.shape[0]}; run samples.index again to rebuild it")
            # torch on tensors that share the numpy buffers: numpy's matrix-vector product goes through
            # OpenBLAS's thread pool, measured 10x slower (5.3 ms against 0.5 ms for 10,000 x 384) on
            # a busy 2-core machine, where torch keeps to the threads it was given.
            import torch

            query = torch.from_numpy(np.ascontiguousarray(vector, np.float32))
            scores = torch.mv(torch.from_numpy(self._matrix[: self._count]), query)
            top = torch.topk(scores, min(k, self._count))
            return [(self._entries[int(self._ids[i])], float(score))
                    for score, i in zip(top.values.tolist(), top.indices.tolist())]

    def _grow(self) -> None:
        matrix = np.zeros((self._matrix.shape[0] * 2, self._matrix.shape[1]), np.float32)
        matrix[: self._count] = self._matrix[: self._count]
        ids = np.zeros(matrix.shape[0], np.int64)
        ids[: self._count] = self._ids[: self._count]
        self._matrix, self._ids = matrix, ids


# -- the library -------------------------------------------------------------------------------------


class _Stopped(Exception):
    """The watcher was asked to stop in the middle of a scan."""


@dataclass
class ScanReport:
    """What one pass over a folder did."""

    folder: str
    files: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder, "files": self.files, "added": self.added, "updated": self.updated,
            "removed": self.removed, "unchanged": self.unchanged, "skipped": len(self.skipped),
            "skipped_files": self.skipped[:SKIPPED_SHOWN],
        }


class SampleLibrary:
    """The index, its embedder, and the watcher: one per daemon, shared by commands and the job."""

    def __init__(self, config: Config, paths: PathPolicy, embedder: TextEmbedder | None = None,
                 router: Router | None = None, tiers: dict[str, Tier] | None = None) -> None:
        self.settings = config.samples
        self.classify_settings = config.classify  # classify's method and NLI model
        self.paths = paths
        self.model_id = self.settings.model.strip()
        self._embedder = embedder
        self._embedder_lock = threading.Lock()
        self._zeroshot: ZeroShotClassifier | None = None
        # Where classify's and search's text embeddings run: here or on Workers AI (samples.tier).
        self.text_tiers = EmbeddingTiers(config, router, tiers, lambda: self.embedder,
                                         lambda: self._embedder is not None and self._embedder.loaded)
        self.store = SampleStore(library_database(config))
        self.vectors = VectorIndex()
        self._scan_lock = threading.Lock()  # one pass over the files at a time: a job or the watcher
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._missing_logged: set[str] = set()
        self._load_vectors()

    def _load_vectors(self) -> None:
        ids: list[int] = []
        rows: list[np.ndarray] = []
        entries: list[dict[str, Any]] = []
        width = None
        for entry, blob in self.store.searchable(self.model_id):
            vector = np.frombuffer(blob, np.float32)
            width = width or vector.size
            if vector.size != width:
                log.warning("samples: %s has a %d-dimensional vector, not %d; it is embedded again at the next scan",
                            entry["path"], vector.size, width)
                continue
            ids.append(entry["id"])
            rows.append(vector)
            entries.append(entry)
        if ids:
            self.vectors.upsert(ids, np.stack(rows), entries)
        log.info("samples: %s: %d searchable file(s)", self.store.path, len(ids))

    @property
    def embedder(self) -> TextEmbedder:
        """The model's engine, built on first use: a device that is not there fails that request, not start-up."""
        with self._embedder_lock:
            if self._embedder is None:
                s = self.settings
                self._embedder = TextEmbedder(s.model, s.model_dir, device=s.engine_device, threads=s.threads)
            return self._embedder

    # -- requests ----------------------------------------------------------------------------------

    def check_folder(self, raw: str, command: str = KIND) -> Path:
        """An existing folder inside `paths.roots`, or forbidden / not_found / bad_request."""
        return self.paths.input_dir(raw, "folder", command)  # resolves and checks the roots

    def search(self, query: str, k: int) -> dict[str, Any]:
        """The `k` files that best match a description, best first, with their scores."""
        if not isinstance(query, str) or not query.strip():
            raise BadRequest(f"samples.search: argument 'query' expected a description such as 'punchy kick', "
                             f"got {query!r}")
        if len(query) > MAX_QUERY_CHARS:
            raise BadRequest(f"samples.search: argument 'query' is {len(query)} characters; "
                             f"expected at most {MAX_QUERY_CHARS}")
        if len(self.vectors) == 0:  # no need to load the model to find nothing
            return {"query": query, "matches": [], "count": 0, "indexed": 0, "search_ms": 0.0,
                    "hint": "nothing is indexed yet: run samples.index <folder>"}
        started = time.perf_counter()
        vector, where = self.text_tiers.query(query.strip())
        hits = self.vectors.search(vector, k)
        matches = [{**entry, "score": round(score, 4)} for entry, score in hits]
        for match in matches:
            match.pop("id", None)
        return {"query": query, "matches": matches, "count": len(matches), "indexed": len(self.vectors),
                "search_ms": round((time.perf_counter() - started) * 1000.0, 2), "embeddings": where}

    @property
    def zeroshot(self) -> ZeroShotClassifier:
        """The NLI model's engine (`classify method=nli`), built on first use, like the embedder."""
        with self._embedder_lock:
            if self._zeroshot is None:
                s = self.settings
                nli = self.classify_settings.nli_model
                self._zeroshot = ZeroShotClassifier(nli, device=s.engine_device, threads=s.threads)
            return self._zeroshot

    def classify(self, text: str, labels: list[str], method: str | None = None,
                 hypothesis: str | None = None) -> dict[str, Any]:
        """Labels ranked for `text`, best first: by cosine similarity of embeddings, or by an NLI model."""
        chosen = self.classify_settings.method if method is None or method == "" else method
        if chosen == "embeddings":
            if hypothesis:
                raise BadRequest("classify: argument 'hypothesis' only applies to method=nli; "
                                 f"got method=embeddings and hypothesis={hypothesis!r}")
            ranked, named = self.text_tiers.classify(text, labels)
        elif chosen == "nli":
            template = self.classify_settings.nli_hypothesis if hypothesis is None or hypothesis == "" else hypothesis
            ranked = self.zeroshot.classify(text, labels, template)
            named = describe("classify", self.classify_settings.nli_model.strip())
        else:
            raise BadRequest(f"classify: argument 'method' expected embeddings or nli, got {method!r}")
        return {
            "label": ranked[0][0], "score": ranked[0][1],
            "labels": [label for label, _ in ranked], "scores": [score for _, score in ranked],
            "method": chosen, **named,
        }

    def status(self) -> dict[str, Any]:
        skipped, skipped_files = self.store.skipped(SKIPPED_SHOWN)
        folders = [{**f, "exists": Path(f["path"]).is_dir()} for f in self.store.folders()]
        engine = self._embedder
        source = engine.source if engine is not None else None
        return {
            "database": str(self.store.path), "indexed": len(self.vectors), "skipped": skipped,
            "skipped_files": skipped_files, "folders": folders, "watching": self.watching,
            "watch_interval_seconds": self.settings.watch_interval_seconds, "model": self.model_id,
            "model_loaded": engine is not None and engine.loaded, "model_source": source.describe() if source else None,
            "classify_method": self.classify_settings.method, "nli_model": self.classify_settings.nli_model.strip(),
            "nli_model_loaded": self._zeroshot is not None and self._zeroshot.loaded,
            "tier": self.settings.tier, "remote_model": self.text_tiers.remote_model(),
        }

    # -- indexing ----------------------------------------------------------------------------------

    def index(self, folder: Path, progress: Progress, check_cancelled: CheckCancelled, watch: bool) -> dict[str, Any]:
        """Bring the index of `folder` up to date (the `samples.index` job)."""
        started = time.monotonic()
        progress(0.0, "waiting")
        while not self._scan_lock.acquire(timeout=0.2):  # the watcher may be mid-scan
            check_cancelled()
        try:
            report = self._scan(folder, progress, check_cancelled)
        finally:
            self._scan_lock.release()
        self.store.set_folder(folder, watch, report.files)
        self._missing_logged.discard(str(folder))
        return {**report.to_dict(), "watch": watch and self.settings.watch, "indexed": len(self.vectors),
                "seconds": round(time.monotonic() - started, 3)}

    def _scan(self, folder: Path, progress: Progress | None, check_cancelled: CheckCancelled) -> ScanReport:
        report = ScanReport(str(folder))
        note = progress or (lambda fraction, stage: None)
        note(0.0, "listing")
        files = list_audio(folder, self.paths, check_cancelled)
        known = self.store.known_under(folder)
        report.files = len(files)
        listed = {f.path for f in files}
        gone = [k.id for path, k in known.items() if path not in listed]
        if gone:
            self.store.delete(gone)
            self.vectors.remove(gone)
            report.removed = len(gone)
        todo = [f for f in files if self._stale(f, known.get(f.path))]
        report.unchanged = len(files) - len(todo)
        note(0.05, "reading")
        for start in range(0, len(todo), BATCH_FILES):
            batch = todo[start:start + BATCH_FILES]
            records = []
            for file in batch:
                check_cancelled()
                records.append(analyse_file(file, folder))
            self._commit(records, known, report)
            note(0.05 + 0.95 * (start + len(batch)) / len(todo), "indexing")
        note(1.0, "done")
        return report

    def _stale(self, file: FileState, known: Known | None) -> bool:
        if known is None or known.size != file.size or known.mtime_ns != file.mtime_ns:
            return True
        if known.analysis != ANALYSIS_VERSION:
            return True
        return known.status == "ok" and known.model != self.model_id

    def _commit(self, records: list[Record], known: dict[str, Known], report: ScanReport) -> None:
        """Embed a batch, write it in one transaction, then update the matrix."""
        readable = [i for i, r in enumerate(records) if r.error is None]
        vectors = self.embedder.encode([records[i].text or "" for i in readable]) if readable else None
        by_position = {i: vectors[n] for n, i in enumerate(readable)} if vectors is not None else {}
        ids = self.store.write(records, by_position, self.model_id)
        for record, _sample_id in zip(records, ids):
            if record.file.path in known:
                report.updated += 1
            else:
                report.added += 1
            if record.error:
                report.skipped.append({"path": record.file.path, "error": record.error})
        unreadable = [ids[i] for i, r in enumerate(records) if r.error is not None]
        if unreadable:
            self.vectors.remove(unreadable)  # a file that became unreadable leaves the results
        if readable:
            readable_ids = [ids[i] for i in readable]
            self.vectors.upsert(readable_ids, np.stack([by_position[i] for i in readable]),
                                self.store.entries(readable_ids))

    # -- the watcher -------------------------------------------------------------------------------

    @property
    def watching(self) -> bool:
        return self._watcher is not None and self._watcher.is_alive()

    def start_watching(self) -> None:
        """Start the watcher thread (when `samples.watch` is on): folders indexed with watch stay fresh."""
        if not self.settings.watch or self.watching:
            return
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch, name="flowstate-samples-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        interval = self.settings.watch_interval_seconds
        delay = 0.0  # first pass at once: catch what changed while the daemon was down
        while not self._stop.wait(delay):
            delay = interval
            for folder in self._watched_folders():
                if self._stop.is_set():
                    return
                self._refresh(folder)

    def _watched_folders(self) -> list[Path]:
        """Watched folders, without those inside another watched folder (scanned with it)."""
        folders = sorted(Path(f["path"]) for f in self.store.folders() if f["watch"])
        return [f for f in folders if not any(other in f.parents for other in folders)]

    def _refresh(self, folder: Path) -> None:
        try:
            self.check_folder(str(folder), "samples.watch")
        except NotFound:
            if str(folder) not in self._missing_logged:
                self._missing_logged.add(str(folder))
                log.warning("samples: watched folder %s is missing (an unplugged drive?); its samples are kept", folder)
            return
        except BridgeError as err:
            log.warning("samples: not watching %s: %s", folder, err.message)
            return
        self._missing_logged.discard(str(folder))
        if not self._scan_lock.acquire(blocking=False):
            return  # a samples.index job is scanning; the next pass looks again
        try:
            report = self._scan(folder, None, self._check_stop)
        except _Stopped:
            return
        except BridgeError as err:
            log.warning("samples: watching %s: %s: %s", folder, err.code, err.message)
            return
        except Exception:
            log.exception("samples: watching %s failed", folder)
            return
        finally:
            self._scan_lock.release()
        if report.changed:
            self.store.set_folder(folder, True, report.files)
            log.info("samples: %s changed: %d added, %d updated, %d removed, %d skipped", folder, report.added,
                     report.updated, report.removed, len(report.skipped))

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _Stopped()

    def close(self, timeout: float = 1.0) -> None:
        """Stop the watcher (it stops between two files), close the database and the model."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout)
            if self._watcher.is_alive():
                log.warning("samples: the watcher did not stop within %.1f s", timeout)
        # A job still scanning after the job runner's drain is requeued at the next start; closing the
        # store under it makes its next write fail, which is fine (the index is rebuilt incrementally).
        acquired = self._scan_lock.acquire(timeout=0.5)
        try:
            self.store.close()
        finally:
            if acquired:
                self._scan_lock.release()
        if self._embedder is not None:
            self._embedder.close()
        if self._zeroshot is not None:
            self._zeroshot.close()


# -- the job -----------------------------------------------------------------------------------------


def check_request(args: dict[str, Any], library: SampleLibrary) -> dict[str, Any]:
    """Validate a `samples.index` request at once; returns the job's args with defaults filled in."""
    folder = library.check_folder(args["folder"])
    watch = library.settings.watch if args.get("watch") is None else bool(args["watch"])
    return {"folder": str(folder), "watch": watch}


class IndexJob:
    """The `samples.index` job handler: one library (and one warm model) for every job."""

    def __init__(self, library: SampleLibrary) -> None:
        self.library = library

    def __call__(self, ctx: JobContext) -> dict[str, Any]:
        # Re-check: the roots may have changed since the job was queued, before a crash.
        folder = self.library.check_folder(ctx.job.args["folder"])

        def progress(fraction: float, stage: str) -> None:
            ctx.progress(fraction, stage=stage)

        result = self.library.index(folder, progress, ctx.check_cancelled, bool(ctx.job.args["watch"]))
        return {**result, **describe("embed", self.library.model_id)}
