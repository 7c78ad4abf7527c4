"""Tag a clip by how it sounds: an Audio Spectrogram Transformer (AST) with AudioSet's labels.

`AudioTagger` loads an `ASTForAudioClassification` and its `ASTFeatureExtractor` once through
`transformers` (`from_pretrained`: a hub name from the local cache, downloaded when online, or a
folder saved with `save_pretrained`) and keeps them warm. `tag(path, top)` reads the clip with
soundfile, mixes it to mono, resamples it to the extractor's rate (16 kHz for the AudioSet AST)
with `engines.resample.resample`, and returns the `top` labels with their scores, best first.

Long clips: only the first `seconds` are read and classified. AST's AudioSet checkpoints were trained
on 10 s clips and their extractor pads or cuts every input to 1024 frames of 10 ms (10.24 s), so
more audio would be cut by the extractor anyway; a sample's attack (the part a producer names it by)
is at its start. Averaging over windows would cost one forward per window for little gain on
samples, the clips this is for.

Scores are independent probabilities (a sigmoid per label), not a softmax: AudioSet is multi-label
(a clip can be both `Music` and `Drum`), and the checkpoint was trained that way.

Nothing heavy happens at import: torch and transformers are imported when the model loads.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from bridge.errors import BadRequest, Unavailable
from engines.base import Engine
from engines.hub import cached_first
from engines.resample import resample

log = logging.getLogger(__name__)

DEFAULT_MODEL = "MIT/ast-finetuned-audioset-10-10-0.4593"
MODEL_TYPE = "audio-spectrogram-transformer"  # config.json's model_type of an AST checkpoint
DEFAULT_SECONDS = 10.0
MAX_SECONDS = 60.0
MAX_TOP = 50


def available_source(model: str) -> tuple[str, str] | None:
    """(where, model type) when `model` is already on this machine (a folder with a config.json, or a
    hub name in the Hugging Face cache); None when it is not. Reads no weights and never goes online:
    for `flowstate doctor`."""
    folder = Path(model).expanduser()
    config = folder / "config.json"
    where = f"folder {folder}"
    if not config.is_file():
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.errors import HFValidationError

        try:
            cached = try_to_load_from_cache(model, "config.json")
        except HFValidationError:
            return None  # not a valid repo id, so it cannot be cached
        if not isinstance(cached, str):
            return None
        config, where = Path(cached), f"hub cache {model}"
    try:
        model_type = str(json.loads(config.read_text(encoding="utf-8")).get("model_type") or "?")
    except (OSError, ValueError):
        model_type = "unreadable config.json"
    return where, model_type


class AudioTagger(Engine):
    """An AST audio classifier, loaded once; thread-safe (one clip at a time)."""

    name = "audio_tags"

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "auto", seconds: float = DEFAULT_SECONDS,
                 threads: int | None = None) -> None:
        if not isinstance(model, str) or not model.strip():
            raise BadRequest(f"audio_tags: model expected a hub name such as {DEFAULT_MODEL!r} or a folder, "
                             f"got {model!r}")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= MAX_SECONDS:
            raise BadRequest(f"audio_tags: seconds expected a number in (0, {MAX_SECONDS:g}], got {seconds!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or not 1 <= threads <= 256):
            raise BadRequest(f"audio_tags: threads expected an integer in [1, 256] or null, got {threads!r}")
        super().__init__(device)
        self.model_name = model.strip()
        self.seconds = float(seconds)
        self.threads = threads
        self._model: Any = None
        self._extractor: Any = None
        self._labels: list[str] = []

    @property
    def sample_rate(self) -> int:
        """The rate the model hears (the feature extractor's); 0 before loading."""
        return int(self._extractor.sampling_rate) if self._extractor is not None else 0

    @property
    def labels(self) -> list[str]:
        """Every label the model knows, in its output order (AudioSet's 527 for the default)."""
        return list(self._labels)

    def _load(self) -> None:
        if self.threads is not None and self.device.type == "cpu":
            import torch

            torch.set_num_threads(self.threads)
        from transformers import ASTFeatureExtractor, ASTForAudioClassification

        name = str(Path(self.model_name).expanduser()) if self.model_name.startswith("~") else self.model_name
        try:
            extractor, model = cached_first(lambda local: (
                ASTFeatureExtractor.from_pretrained(name, local_files_only=local),
                ASTForAudioClassification.from_pretrained(name, local_files_only=local)), name)
        except (OSError, ValueError) as err:
            raise Unavailable(
                f"audio_tags: the AST model {self.model_name!r} could not be loaded ({str(err)[:300]}); name a folder "
                "saved with save_pretrained in classify.audio_model, or run once online to fill the hub cache"
            ) from err
        id2label = model.config.id2label or {}
        self._labels = [str(id2label.get(index, f"LABEL_{index}")) for index in range(model.config.num_labels)]
        self._model = model.to(self.device).eval()
        self._extractor = extractor
        log.info("audio_tags: %s loaded (%d labels, %d Hz)", self.model_name, len(self._labels), self.sample_rate)

    def _close(self) -> None:
        self._model = None
        self._extractor = None

    def tag(self, path: Path | str, top: int = 5) -> dict[str, Any]:
        """The `top` likeliest labels of the clip at `path` (its first `seconds`), best first."""
        _check_top(top)
        audio, rate, duration = read_clip(path, self.seconds)
        result = self.tag_audio(audio, rate, top)
        return {**result, "seconds": round(audio.size / rate, 3), "duration_seconds": round(duration, 3),
                "model": self.model_name}

    def tag_audio(self, audio: np.ndarray, rate: int, top: int = 5) -> dict[str, Any]:
        """The same for a clip already read: mono float32 at `rate` (the sample index reads each file once)."""
        _check_top(top)
        if not isinstance(audio, np.ndarray) or audio.ndim != 1 or audio.size == 0:
            raise BadRequest(f"audio_tags: expected a non-empty mono float32 array, got "
                             f"{getattr(audio, 'shape', type(audio).__name__)}")
        heard = np.asarray(audio[: max(1, int(round(self.seconds * rate)))], np.float32)
        result: dict[str, Any] = self.process(heard, rate, top)
        return result

    def _process(self, audio: np.ndarray, rate: int, top: int) -> dict[str, Any]:
        import torch

        heard = resample(audio, rate, self.sample_rate)
        inputs = self._extractor(heard, sampling_rate=self.sample_rate, return_tensors="pt")
        with torch.inference_mode():
            logits = self._model(input_values=inputs["input_values"].to(self.device)).logits[0]
        scores = torch.sigmoid(logits.float()).cpu().numpy()
        count = min(top, scores.size)
        # Stable sort on the negated scores: ties keep the model's label order, so a result repeats.
        best = np.argsort(-scores, kind="stable")[:count]
        labels = [self._labels[index] for index in best]
        values = [round(float(scores[index]), 6) for index in best]
        return {"label": labels[0], "score": values[0], "labels": labels, "scores": values}


def _check_top(top: Any) -> None:
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= MAX_TOP:
        raise BadRequest(f"audio_tags: top expected an integer in [1, {MAX_TOP}], got {top!r}")


def read_clip(path: Path | str, seconds: float) -> tuple[np.ndarray, int, float]:
    """(mono float32 of the first `seconds`, its rate, the whole file's length in seconds)."""
    import soundfile

    try:
        with soundfile.SoundFile(str(path)) as clip:
            rate = int(clip.samplerate)
            frames = clip.frames
            block = clip.read(frames=min(frames, max(1, int(round(seconds * rate)))), dtype="float32",
                              always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as err:
        raise BadRequest(f"audio_tags: {path} is not an audio file libsndfile can read ({err})") from None
    if block.shape[0] == 0:
        raise BadRequest(f"audio_tags: {path} holds no audio (0 frames)")
    mono = np.ascontiguousarray(block.mean(axis=1, dtype=np.float32))
    return mono, rate, frames / rate
