"""The sample index's ears: CLAP vectors of each sample's sound, AST tags, and how a search fuses them.

Two optional stages run on each batch the index reads (`bridge/samples.py` calls them), on the clip
the analysis already read (the file is read once):

* **tags** (`samples.audio_tags`): `classify.audio_model` (the AudioSet AST) hears the first
  `classify.audio_seconds` of the sample; its best `samples.audio_tags_top` labels scoring at least
  `samples.audio_tags_min_score` are stored with their scores, shown in search results, appended to
  the text the words model reads (`... sounds like drum, bass guitar`) and filterable (`tag=`).
* **sound** (`samples.clap`): `samples.clap_model` (CLAP) embeds the first 10 s of the sample into
  its text-audio space; the vectors live in the database and in a second in-memory matrix.

A search then scores every file twice: the query's sentence embedding against the file's text
embedding (the words side, as without CLAP), and the query's CLAP text embedding against the
file's CLAP audio embedding (the sound side). The two cosines live on different scales (CLAP's
text-audio cosines sit in a narrow band), so each side is z-scored over the files searched for
that query, and the score is `w * z(sound) + (1 - w) * z(words)` with `w = samples.clap_weight`
(`fuse`). A file whose sound is not embedded yet (indexed before CLAP was on, until the next pass)
counts as average on the sound side (z = 0).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from bridge.config import Config
from bridge.errors import BadRequest
from bridge.sample_analysis import Record
from bridge.sample_store import Known, SampleStore, VectorIndex
from engines.audio_tags import AudioTagger
from engines.clap import AudioTextEmbedder

log = logging.getLogger(__name__)

CLAP_SECONDS = 10.0  # the LAION CLAP models hear 10 s; the engine cuts to its own window
MAX_TAG_CHARS = 100


def zscore(scores: np.ndarray) -> np.ndarray:
    """(x - mean) / std over the given scores; all zeros when they are all equal (nothing to tell apart)."""
    if scores.size == 0:
        return scores.astype(np.float32)
    std = float(scores.std())
    if std < 1e-9:
        return np.zeros_like(scores, dtype=np.float32)
    return ((scores - float(scores.mean())) / std).astype(np.float32)


def fuse(text: np.ndarray, audio: np.ndarray, has_audio: np.ndarray, weight: float) -> np.ndarray:
    """`weight * z(audio) + (1 - weight) * z(text)` per file, each side z-scored over the files it covers.

    `text` and `audio` are cosine scores of the same files in the same order; `has_audio` says which
    files have an audio vector (the others count as average on that side: z = 0).
    """
    if not 0.0 <= weight <= 1.0:
        raise BadRequest(f"samples.clap_weight: expected a number in [0, 1], got {weight!r}")
    z_audio = np.zeros(text.shape, np.float32)
    if has_audio.any():
        z_audio[has_audio] = zscore(audio[has_audio])
    fused: np.ndarray = weight * z_audio + (1.0 - weight) * zscore(text)
    return fused


def tag_matches(entry: dict[str, Any], tag: str) -> bool:
    """Whether a file carries `tag` (lower-case): a sound tag's label or one of its words, or a name tag."""
    for item in entry.get("sound_tags") or []:
        label = str(item["label"]).casefold()
        if tag == label or tag in label.replace(",", " ").split():
            return True
    return tag in entry.get("tags", [])


class SoundIndex:
    """The CLAP matrix and the two sound models (built on first use), for one `SampleLibrary`."""

    def __init__(self, config: Config, tagger: Callable[[], AudioTagger] | None = None) -> None:
        samples, classify = config.samples, config.classify
        self.clap_on = samples.clap
        self.clap_model = samples.clap_model.strip()
        self.weight = samples.clap_weight
        self.tags_on = samples.audio_tags
        self.tag_model = classify.audio_model.strip()
        self.tags_top = samples.audio_tags_top
        self.tags_min_score = samples.audio_tags_min_score
        self._device, self._threads = samples.engine_device, samples.threads
        self._classify = classify
        self._shared_tagger = tagger  # the daemon's classify.audio engine: one warm AST for both
        self._own_tagger: AudioTagger | None = None
        self._clap: AudioTextEmbedder | None = None
        self._lock = threading.Lock()
        self.vectors = VectorIndex()

    @property
    def clip_seconds(self) -> float:
        """How much of each file's start the stages need (0: keep no audio)."""
        return max(CLAP_SECONDS if self.clap_on else 0.0, self._classify.audio_seconds if self.tags_on else 0.0)

    @property
    def clap(self) -> AudioTextEmbedder:
        with self._lock:
            if self._clap is None:
                self._clap = AudioTextEmbedder(self.clap_model, device=self._device, threads=self._threads)
            return self._clap

    def tagger(self) -> AudioTagger:
        if self._shared_tagger is not None:
            return self._shared_tagger()
        with self._lock:
            if self._own_tagger is None:
                c = self._classify
                self._own_tagger = AudioTagger(c.audio_model, c.audio_device, c.audio_seconds, c.audio_threads)
            return self._own_tagger

    def load(self, store: SampleStore) -> None:
        """The stored audio vectors of the configured CLAP model (the others wait for the next pass)."""
        if not self.clap_on:
            return
        ids: list[int] = []
        rows: list[np.ndarray] = []
        for sample_id, blob in store.audio_vectors(self.clap_model):
            vector = np.frombuffer(blob, np.float32)
            if rows and vector.size != rows[0].size:
                continue  # cannot happen with one model id; never let it break a search
            ids.append(sample_id)
            rows.append(vector)
        if ids:
            self.vectors.upsert(ids, np.stack(rows), [{}] * len(ids))
        log.info("samples: %d file(s) searchable by sound (%s)", len(ids), self.clap_model)

    # -- indexing ----------------------------------------------------------------------------------

    def stale(self, known: Known) -> bool:
        """Whether a readable row lacks what the configured sound models would give it."""
        if known.status != "ok":
            return False
        return (self.clap_on and known.audio_model != self.clap_model) or (
            self.tags_on and known.tag_model != self.tag_model)

    def tag(self, records: list[Record]) -> None:
        """Tag each readable record by sound and fold the tags into the text the words model reads."""
        if not self.tags_on:
            return
        tagger = self.tagger()
        for record in records:
            if record.clip is None or record.sample_rate is None:
                continue
            result = tagger.tag_audio(record.clip, record.sample_rate, self.tags_top)
            record.sound_tags = [{"label": label, "score": round(score, 4)}
                                 for label, score in zip(result["labels"], result["scores"], strict=True)
                                 if score >= self.tags_min_score]
            if record.sound_tags and record.text:
                record.text += ". sounds like " + ", ".join(t["label"].lower() for t in record.sound_tags)

    def embed(self, records: list[Record]) -> None:
        """Embed each readable record's sound, then let go of the audio."""
        readable = [(r, (r.clip, r.sample_rate)) for r in records if r.clip is not None and r.sample_rate]
        if self.clap_on and readable:
            vectors = self.clap.embed_audio([clip for _, clip in readable])
            for (record, _), vector in zip(readable, vectors, strict=True):
                record.audio_vector = vector
        for record in records:
            record.clip = None

    def upsert(self, ids: list[int], records: list[Record]) -> None:
        embedded = [(i, r.audio_vector) for i, r in zip(ids, records, strict=True) if r.audio_vector is not None]
        if embedded:
            self.vectors.upsert([i for i, _ in embedded], np.stack([v for _, v in embedded]), [{}] * len(embedded))

    def remove(self, ids: list[int]) -> None:
        self.vectors.remove(ids)

    # -- searching ---------------------------------------------------------------------------------

    def search(self, query: str, text_vector: np.ndarray, words: VectorIndex, k: int,
               tag: str = "") -> list[dict[str, Any]]:
        """The `k` best files for `query`, best first: entries with `score` (and, with CLAP, each side's cosine)."""
        wanted = check_tag(tag)
        if not self.clap_on and not wanted:
            return [{**entry, "score": round(score, 4)} for entry, score in words.search(text_vector, k)]
        ids, text = words.scores(text_vector)
        if wanted:
            keep = np.array([tag_matches(words.entry(int(i)), wanted) for i in ids], dtype=bool)
            ids, text = ids[keep], text[keep]
        if ids.size == 0:
            return []
        if not self.clap_on:
            order = np.argsort(-text, kind="stable")[:k]
            return [{**words.entry(int(ids[n])), "score": round(float(text[n]), 4)} for n in order]
        audio, has_audio = self._audio_scores(query, ids)
        fused = fuse(text, audio, has_audio, self.weight)
        order = np.argsort(-fused, kind="stable")[:k]
        return [{**words.entry(int(ids[n])), "score": round(float(fused[n]), 4),
                 "text_score": round(float(text[n]), 4),
                 "audio_score": round(float(audio[n]), 4) if has_audio[n] else None} for n in order]

    def _audio_scores(self, query: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The CLAP cosine of `query` and each file in `ids` (0 where unknown), and which are known."""
        audio = np.zeros(ids.shape, np.float32)
        has_audio = np.zeros(ids.shape, bool)
        if len(self.vectors) == 0:
            return audio, has_audio  # no need to load the model to learn nothing
        audio_ids, scores = self.vectors.scores(self.clap.embed_text([query])[0])
        if audio_ids.size == 0:  # emptied since the check above (a pass removed every file)
            return audio, has_audio
        order = np.argsort(audio_ids)
        sorted_ids = audio_ids[order]
        at = np.minimum(np.searchsorted(sorted_ids, ids), max(0, sorted_ids.size - 1))
        has_audio = sorted_ids[at] == ids
        audio[has_audio] = scores[order[at[has_audio]]]
        return audio, has_audio

    def status(self) -> dict[str, Any]:
        clap = self._clap
        return {
            "clap": self.clap_on, "clap_model": self.clap_model, "clap_weight": self.weight,
            "clap_loaded": clap is not None and clap.loaded, "searchable_by_sound": len(self.vectors),
            "audio_tags": self.tags_on, "tag_model": self.tag_model,
        }

    def describe(self) -> dict[str, Any]:
        """What an index job's result says of the sound models it ran."""
        return {"clap_model": self.clap_model if self.clap_on else None,
                "tag_model": self.tag_model if self.tags_on else None}

    def close(self) -> None:
        if self._clap is not None:
            self._clap.close()
        if self._own_tagger is not None:
            self._own_tagger.close()


def check_tag(tag: Any) -> str:
    """A search's tag filter, lower-cased ('' for none), or BadRequest naming the argument."""
    if tag is None:
        return ""
    if not isinstance(tag, str) or len(tag) > MAX_TAG_CHARS:
        raise BadRequest(f"samples.search: argument 'tag' expected a tag such as 'drum' (at most {MAX_TAG_CHARS} "
                         f"characters), got {tag!r}")
    return tag.strip().casefold()
