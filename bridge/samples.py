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
cannot read is recorded as skipped, with the reason, and the rest carry on. A file modified within
`SETTLE_SECONDS` of the listing may still be being written (a bounce being exported): its row is
marked, and the next pass reads it again. A folder indexed with
`watch` is scanned again every `samples.watch_interval_seconds` by one watcher thread (started
again when the daemon restarts), so files added, changed or deleted show up in searches by
themselves. A watched folder that has gone missing (an unplugged drive) keeps its rows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bridge.config import Config
from bridge.embed_tier import EmbeddingTiers
from bridge.errors import BadRequest, BridgeError, NotFound
from bridge.jobs import JobContext
from bridge.licences import describe
from bridge.paths import PathPolicy
from bridge.router import Router
from bridge.sample_analysis import (
    ANALYSIS_VERSION,
    SETTLE_SECONDS,
    CheckCancelled,
    FileState,
    Record,
    analyse_file,
    list_audio,
    settling,
)
from bridge.sample_store import Known, SampleStore, VectorIndex, library_database
from bridge.sound_index import SoundIndex
from engines.audio_tags import AudioTagger
from engines.cloud.base import Tier
from engines.embeddings import TextEmbedder
from engines.zeroshot import ZeroShotClassifier

log = logging.getLogger(__name__)

KIND = "samples.index"
BATCH_FILES = 32  # files analysed, embedded and committed together (a search waits at most one batch)
MAX_QUERY_CHARS = 500
MAX_RESULTS = 50
SKIPPED_SHOWN = 20

Progress = Callable[[float, str], None]


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
    settling: int = 0  # read while they may still have been written: read again on the next pass
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder, "files": self.files, "added": self.added, "updated": self.updated,
            "removed": self.removed, "unchanged": self.unchanged, "settling": self.settling,
            "skipped": len(self.skipped),
            "skipped_files": self.skipped[:SKIPPED_SHOWN],
        }


class SampleLibrary:
    """The index, its embedder, and the watcher: one per daemon, shared by commands and the job."""

    def __init__(self, config: Config, paths: PathPolicy, embedder: TextEmbedder | None = None,
                 audio_tagger: Callable[[], AudioTagger] | None = None,
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
        self.sound = SoundIndex(config, audio_tagger)  # CLAP vectors and AST tags (bridge/sound_index.py)
        self._scan_lock = threading.Lock()  # one pass over the files at a time: a job or the watcher
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._missing_logged: set[str] = set()
        self._load_vectors()
        self.sound.load(self.store)

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

    def search(self, query: str, k: int, tag: str = "") -> dict[str, Any]:
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
        matches = self.sound.search(query.strip(), vector, self.vectors, k, tag)
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
            "nli_model_loaded": self._zeroshot is not None and self._zeroshot.loaded, **self.sound.status(),
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
                "seconds": round(time.monotonic() - started, 3), **self.sound.describe()}

    def _scan(self, folder: Path, progress: Progress | None, check_cancelled: CheckCancelled) -> ScanReport:
        report = ScanReport(str(folder))
        note = progress or (lambda fraction, stage: None)
        note(0.0, "listing")
        listed_ns = time.time_ns()
        files = list_audio(folder, self.paths, check_cancelled)
        known = self.store.known_under(folder)
        report.files = len(files)
        listed = {f.path for f in files}
        gone = [k.id for path, k in known.items() if path not in listed]
        if gone:
            self.store.delete(gone)
            self.vectors.remove(gone)
            self.sound.remove(gone)
            report.removed = len(gone)
        todo = [f for f in files if self._stale(f, known.get(f.path))]
        report.unchanged = len(files) - len(todo)
        note(0.05, "reading")
        for start in range(0, len(todo), BATCH_FILES):
            batch = todo[start:start + BATCH_FILES]
            records = []
            for file in batch:
                check_cancelled()
                record = analyse_file(file, folder, self.sound.clip_seconds)
                record.settling = settling(file, listed_ns, SETTLE_SECONDS)
                report.settling += record.settling
                records.append(record)
            self._commit(records, known, report)
            note(0.05 + 0.95 * (start + len(batch)) / len(todo), "indexing")
        note(1.0, "done")
        return report

    def _stale(self, file: FileState, known: Known | None) -> bool:
        if known is None or known.size != file.size or known.mtime_ns != file.mtime_ns:
            return True
        if known.analysis != ANALYSIS_VERSION:
            return True
        return (known.status == "ok" and known.model != self.model_id) or self.sound.stale(known)

    def _commit(self, records: list[Record], known: dict[str, Known], report: ScanReport) -> None:
        """Tag and embed a batch (words and sound), write it in one transaction, then update the matrices."""
        self.sound.tag(records)  # before the words are embedded: the tags are read with them
        self.sound.embed(records)
        readable = [i for i, r in enumerate(records) if r.error is None]
        vectors = self.embedder.encode([records[i].text or "" for i in readable]) if readable else None
        by_position = {i: vectors[n] for n, i in enumerate(readable)} if vectors is not None else {}
        ids = self.store.write(records, by_position, self.model_id, self.sound.clap_model, self.sound.tag_model)
        for record, _sample_id in zip(records, ids, strict=True):
            if record.file.path in known:
                report.updated += 1
            else:
                report.added += 1
            if record.error:
                report.skipped.append({"path": record.file.path, "error": record.error})
        unreadable = [ids[i] for i, r in enumerate(records) if r.error is not None]
        if unreadable:
            self.vectors.remove(unreadable)  # a file that became unreadable leaves the results
            self.sound.remove(unreadable)
        if readable:
            readable_ids = [ids[i] for i in readable]
            self.vectors.upsert(readable_ids, np.stack([by_position[i] for i in readable]),
                                self.store.entries(readable_ids))
            self.sound.upsert(readable_ids, [records[i] for i in readable])

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
        self.sound.close()


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
