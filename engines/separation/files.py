"""Offline stem separation of whole files, through demucs's own `apply_model`.

Nothing heavy happens at import: torch and demucs are imported when a model is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import Engine, check_range, conv_size_limit
from engines.openunmix import is_openunmix
from engines.separation.models import htdemucs_longest_frames, load_model
from engines.spleeter import is_spleeter

log = logging.getLogger(__name__)


class FileSeparator(Engine):
    """Whole-file separation through demucs's own `apply_model` (split, overlap, optional shifts).

    Spleeter runs through it too, on 11 s segments (its own 512-frame partitions), without the
    normalisation HTDemucs expects (its U-Nets were trained on the raw magnitude); so does
    Open-Unmix, on 30 s segments (its BLSTM sees a whole segment). Kept warm
    between jobs. `process(audio, on_segment)` takes float32 `(channels, n)` at the
    model's rate and returns `(stems, channels, n)`; `on_segment(fraction)` is called after every
    segment and may raise to abort (a canceled job does).
    """

    name = "separation.file"

    def __init__(self, model: str, *, repo: Path | None = None, spleeter_dir: Path | None = None,
                 openunmix_dir: Path | None = None, device: str = "auto", shifts: int = 0, overlap: float = 0.25,
                 segment_seconds: float | None = None,
                 threads: int | None = None) -> None:
        super().__init__(device)
        check_range("shifts", shifts, 0, 10)
        check_range("overlap", overlap, 0.0, 0.99)
        self.model_name = model
        self.repo = repo
        self.spleeter_dir = spleeter_dir
        self.openunmix_dir = openunmix_dir
        self.shifts = int(shifts)
        self.overlap = float(overlap)
        self.segment_seconds = segment_seconds
        self.threads = threads
        self._bag: Any = None
        self._concurrent = False  # wrap_forward: process calls run at once, their segments batched

    @property
    def stems(self) -> tuple[str, ...]:
        self.load()
        return tuple(self._bag.sources)

    @property
    def sample_rate(self) -> int:
        self.load()
        return int(self._bag.samplerate)

    def _load(self) -> None:
        import torch

        if self.threads is not None and self.device.type == "cpu":
            torch.set_num_threads(self.threads)
        self._bag = load_model(self.model_name, self.repo, self.spleeter_dir, self.openunmix_dir)
        self._bag.to(self.device)

    def _close(self) -> None:
        self._bag = None

    def wrap_forward(self, wrap: Callable[[Callable[[Any], Any]], Callable[[Any], Any]]) -> bool:
        """Send every HTDemucs segment through `wrap(forward)` instead of `forward`, and let several
        `process` calls run at once (not one at a time, the base's rule): a caller running several
        jobs can then batch their segments, which share one shape (the segment length). HTDemucs
        keeps no state between forwards, so the calls only share weights. False, and nothing
        changed, for Spleeter and Open-Unmix (their wrappers are not batch-transparent). Loads the model."""
        self.load()
        if is_spleeter(self.model_name) or is_openunmix(self.model_name):
            return False
        for model in self._bag.models:
            model.forward = wrap(model.forward)
        self._concurrent = True
        return True

    def process(self, *args: Any, **kwargs: Any) -> Any:
        if not self._concurrent:
            return super().process(*args, **kwargs)
        self.load()
        return self._process(*args, **kwargs)

    def segment(self) -> float:
        """Seconds per segment: `segment_seconds`, else the models' own (HTDemucs: the 7.8 s it was
        trained on). On Apple silicon before macOS 15.1 an HTDemucs segment is at most what MPS's
        convolutions take in one forward (`htdemucs_longest_frames`: 5.9 s at 44.1 kHz); a longer
        one fails there ("Output channels > 65536 not supported at the MPS device")."""
        self.load()
        bag = self._bag
        segment = self.segment_seconds or float(min(m.segment for m in bag.models))
        longest = htdemucs_longest_frames(bag.models, conv_size_limit(self.device))
        if longest is not None and segment * bag.samplerate > longest:
            log.info("%s: %.2f s segments on %s (macOS before 15.1 takes no longer one in a forward), not %.2f s",
                     self.name, longest / bag.samplerate, self.device, segment)
            segment = longest / bag.samplerate
        return segment

    def _process(self, audio: np.ndarray, on_segment: Callable[[float], None]) -> np.ndarray:
        import torch
        from demucs.apply import apply_model

        bag = self._bag
        mix = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
        # Normalise like demucs's own command line, and undo it afterwards (not for Spleeter or
        # Open-Unmix: their masks depend on the level they were trained at).
        reference = mix.mean(0)
        raw = is_spleeter(self.model_name) or is_openunmix(self.model_name)
        mean, std = (0.0, 1.0) if raw else (reference.mean(), reference.std() + 1e-8)
        mix = (mix - mean) / std
        segment = self.segment()
        length = mix.shape[-1]
        if self.shifts:
            length += int(0.5 * bag.samplerate)  # apply_model pads by up to half a second per shift
        segment_length = int(bag.samplerate * segment)
        stride = max(1, int((1 - self.overlap) * segment_length))
        total = len(bag.models) * max(1, self.shifts) * max(1, -(-length // stride))
        done = 0

        def callback(info: dict[str, Any]) -> None:
            nonlocal done
            if info.get("state") == "end":
                done += 1
                on_segment(min(done / total, 0.99))

        with torch.inference_mode():
            out = apply_model(
                bag, mix[None], shifts=self.shifts, split=True, overlap=self.overlap, progress=False,
                device=self.device, segment=segment, callback=callback,
            )[0]
        out = out * std + mean
        return out.cpu().numpy().astype(np.float32, copy=False)
