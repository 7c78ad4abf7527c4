"""Text-audio embeddings (CLAP through `transformers`' `ClapModel`): search samples by how they sound.

`AudioTextEmbedder` loads a `ClapModel` and its `ClapProcessor` once (laion/clap-htsat-unfused by
default) and keeps them warm. `embed_audio` turns clips into vectors of the joint space and
`embed_text` turns descriptions into vectors of the same space, so the cosine of a query's text
vector and a clip's audio vector says how well the words describe the sound. Every vector is
float32 and L2-normalised (a dot product is the cosine).

Clips: mono float32 at any rate, resampled to the processor's rate (48 kHz for the LAION models)
with `engines.resample.resample`, and cut to the processor's window (10 s) here, before the
processor sees them: the published unfused checkpoint's processor would otherwise pick a random
10 s of a longer clip (`rand_trunc`), and an index must give one file the same vector every time.
Shorter clips are repeated to the window by the processor (`repeatpad`), as in training.

Where the weights come from, in order (the error lists every attempt):

1. `model` as a folder (absolute, `~`, `./` or an existing path) written by `save_pretrained`,
   holding the model and its processor (feature extractor and tokenizer);
2. `model` as a hub name, from the local hub cache (downloaded when online).

Nothing heavy happens at import: torch and transformers are imported when the model loads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bridge.errors import BadRequest, NotFound, Unavailable
from engines.base import Engine
from engines.embeddings import Attempt, _short, looks_like_path
from engines.hub import cached_first
from engines.resample import resample

log = logging.getLogger(__name__)

DEFAULT_MODEL = "laion/clap-htsat-unfused"
MODEL_TYPE = "clap"  # config.json's model_type of a CLAP checkpoint
MAX_TEXT_CHARS = 500


class AudioTextEmbedder(Engine):
    """A CLAP model and its processor, loaded once; thread-safe (one batch at a time)."""

    name = "clap"

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "auto", threads: int | None = None,
                 batch_size: int = 8) -> None:
        if not isinstance(model, str) or not model.strip():
            raise BadRequest(f"clap: model expected a hub name such as {DEFAULT_MODEL!r} or a folder, got {model!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or not 1 <= threads <= 256):
            raise BadRequest(f"clap: threads expected an integer in [1, 256] or null, got {threads!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 256:
            raise BadRequest(f"clap: batch_size expected an integer in [1, 256], got {batch_size!r}")
        super().__init__(device)
        self.model_name = model.strip()
        self.threads = threads
        self.batch_size = batch_size
        self.source: Attempt | None = None
        self._model: Any = None
        self._processor: Any = None
        self._dimension = 0

    # -- loading -----------------------------------------------------------------------------------

    def _load(self) -> None:
        if self.threads is not None and self.device.type == "cpu":
            import torch

            torch.set_num_threads(self.threads)  # process-wide: torch has one intra-op pool
        tried: list[Attempt] = []
        for source, where in self._candidates():
            try:
                model, processor = self._load_from(source, where)
            except (OSError, ValueError, KeyError) as err:
                # The hub raises OSError for a name it cannot find or reach; FileNotFoundError is ours.
                tried.append(Attempt(source, where, _short(err), missing=isinstance(err, OSError)))
                log.info("clap: %s %s did not load: %s", source, where, _short(err))
                continue
            self._model = model.to(self.device).eval()
            self._processor = processor
            self._dimension = int(model.config.projection_dim)
            self.source = Attempt(source, where)
            log.info("clap: %s loaded from %s (%d dimensions, %d Hz, %.1f s windows, %s)", self.model_name,
                     self.source.describe(), self._dimension, self.sample_rate, self.window_seconds, self.device)
            return
        attempts = "; ".join(f"({n}) {a.describe()}" for n, a in enumerate(tried, 1))
        error = NotFound if all(a.missing for a in tried) else Unavailable
        raise error(f"CLAP model {self.model_name!r} (samples.clap_model) could not be loaded; tried {attempts}. "
                    "Fix: name a folder written by save_pretrained (ClapModel with its ClapProcessor), or run once "
                    "with internet access so the hub name is cached, or set samples.clap: false")

    def _candidates(self) -> list[tuple[str, str]]:
        if looks_like_path(self.model_name):
            return [("folder", str(Path(self.model_name).expanduser()))]
        return [("hub", self.model_name)]

    def _load_from(self, source: str, where: str) -> tuple[Any, Any]:
        from transformers import ClapModel, ClapProcessor

        if source == "folder":
            if not Path(where).is_dir():
                raise FileNotFoundError(f"no such folder {where}")
            return ClapModel.from_pretrained(where, local_files_only=True), \
                ClapProcessor.from_pretrained(where, local_files_only=True)
        return cached_first(lambda local: (ClapModel.from_pretrained(where, local_files_only=local),
                                           ClapProcessor.from_pretrained(where, local_files_only=local)), where)

    def _close(self) -> None:
        self._model = None
        self._processor = None

    @property
    def sample_rate(self) -> int:
        """The rate the model hears (its feature extractor's); 0 before loading."""
        return int(self._processor.feature_extractor.sampling_rate) if self._processor is not None else 0

    @property
    def window_seconds(self) -> float:
        """How much of a clip the model hears (its feature extractor's window); 0 before loading."""
        if self._processor is None:
            return 0.0
        extractor = self._processor.feature_extractor
        return float(extractor.nb_max_samples) / float(extractor.sampling_rate)

    @property
    def dimension(self) -> int:
        """The length of every vector (512 for the LAION models); loads the model."""
        self.load()
        return self._dimension

    # -- embedding ---------------------------------------------------------------------------------

    def embed_audio(self, clips: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
        """`(len(clips), dimension)` float32 unit vectors of `(mono float32, sample_rate)` clips."""
        for n, (audio, rate) in enumerate(clips):
            if not isinstance(audio, np.ndarray) or audio.ndim != 1 or audio.size == 0:
                raise BadRequest(f"clap: clip {n} expected a non-empty mono float32 array, got "
                                 f"{getattr(audio, 'shape', type(audio).__name__)}")
            if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
                raise BadRequest(f"clap: clip {n} expected a positive integer sample rate, got {rate!r}")
        result: np.ndarray = self.process("audio", list(clips))
        return result

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """`(len(texts), dimension)` float32 unit vectors of descriptions, in the audio vectors' space."""
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise BadRequest(f"clap: expected a description such as 'punchy kick', got {text!r}")
            if len(text) > MAX_TEXT_CHARS:
                raise BadRequest(f"clap: a description is {len(text)} characters; expected at most {MAX_TEXT_CHARS}")
        result: np.ndarray = self.process("text", [text.strip() for text in texts])
        return result

    def _process(self, kind: str, items: list[Any]) -> np.ndarray:
        import torch

        if self._model is None:
            raise Unavailable("clap: the model was closed (the daemon is shutting down)")
        if not items:
            return np.zeros((0, self._dimension), np.float32)
        out: list[np.ndarray] = []
        for start in range(0, len(items), self.batch_size):
            batch = items[start:start + self.batch_size]
            with torch.inference_mode():
                if kind == "audio":
                    inputs = self._processor(audio=self._heard(batch), sampling_rate=self.sample_rate,
                                             return_tensors="pt")
                    output = self._model.get_audio_features(**inputs.to(self.device))
                else:
                    inputs = self._processor(text=batch, return_tensors="pt", padding=True, truncation=True)
                    output = self._model.get_text_features(**inputs.to(self.device))
            vectors = getattr(output, "pooler_output", output)  # transformers 5 wraps the projection
            out.append(torch.nn.functional.normalize(vectors.float(), dim=-1).cpu().numpy())
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)

    def _heard(self, clips: list[tuple[np.ndarray, int]]) -> list[np.ndarray]:
        """Each clip at the model's rate, cut to its window (so the processor never picks a random one)."""
        rate = self.sample_rate
        limit = int(self._processor.feature_extractor.nb_max_samples)
        # Cut before resampling too: a long file costs no more than its window.
        return [resample(np.asarray(audio[: -(-limit * source_rate // rate)], np.float32), source_rate, rate)[:limit]
                for audio, source_rate in clips]

