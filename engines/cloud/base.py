"""The job interface every tier implements — cloud providers, our own GPU server, and local engines.

The router (`bridge/router.py`) holds an ordered list of `Tier`s per task and runs a `TierJob` on
the first that can meet its deadline; when a tier fails it falls back to the next. A tier writes
its output files into `job.work_dir` (any audio format soundfile reads); the job code converts them
to the user's format and moves them into place, so every tier lands its stems exactly where a
local job would.

Errors are the project's own (`bridge.errors`): `Unavailable` for what another try or another tier
may fix (5xx, capacity 429s, timeouts, cold starts that outlast the deadline), `BadRequest` for
inputs the provider refuses (422), `Forbidden` for credentials it refuses (401/403) — never with
the token in the message — and `NotFound` for expired outputs. The router opens a tier's circuit
on repeated `Unavailable`/`Forbidden`/`Internal`, never on `BadRequest`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bridge.errors import BridgeError, Unavailable
from engines.spleeter import is_spleeter
from engines.stable_audio import is_stable_audio

# Tasks a tier may offer. stems: audio file -> one file per stem; voice: a vocal clip -> the same
# performance in another voice (RVC-style conversion).
TASKS = ("stems", "transcribe", "tts", "generate", "embed", "voice")

# Model names a job asks for that only some cloud tiers run (their dependencies cannot share the
# daemon's environment): AudioGen and Riffusion for generate, Chatterbox for tts. Any other tier
# would answer such a job with its own model, so it says no to them unless it lists them in
# `named_models`.
AUDIOGEN = "audiogen"
RIFFUSION = "riffusion"
CHATTERBOX = "chatterbox"
CLOUD_ONLY_MODELS = frozenset({("generate", AUDIOGEN), ("generate", RIFFUSION), ("tts", CHATTERBOX)})


@dataclass(frozen=True)
class TierJob:
    """One unit of work, the same whichever tier runs it."""

    task: str
    params: dict[str, Any]  # task options, e.g. stems: {"model": "htdemucs", "stems": [...], "two_stems": ""}
    work_dir: Path  # an empty folder the tier writes its output files into
    input_path: Path | None = None  # the audio file, for tasks that take one
    audio_seconds: float = 0.0  # input length, for estimates and prices
    deadline_seconds: float | None = None  # from submission; None: no deadline (background)


@dataclass
class TierResult:
    """What a tier hands back: files it wrote or audio it holds, plain data, and what it cost."""

    tier: str
    outputs: dict[str, Path] = field(default_factory=dict)  # e.g. {"vocals": work_dir/"vocals.wav"}
    data: dict[str, Any] = field(default_factory=dict)  # e.g. {"text": ...}
    seconds: float = 0.0
    cost_usd: float | None = None
    details: dict[str, Any] = field(default_factory=dict)  # provider ids, model versions (no secrets)
    # Audio this machine's engines made, by output name: (channels, frames) float32 and its sample
    # rate; never written to a scratch file only to be read back.
    audio: dict[str, tuple[np.ndarray, int]] = field(default_factory=dict)

    def audio_names(self) -> list[str]:
        """The names of the audio outputs, in-memory first, in the order the tier gave them."""
        return [*self.audio, *(name for name in self.outputs if name not in self.audio)]

    def read_audio(self, name: str, what: str, error: type[BridgeError] = Unavailable) -> tuple[np.ndarray, int]:
        """Output `name` as `(channels, frames)` float32 and its sample rate, whichever way the tier
        handed it back; `error` (Unavailable: the router tries the next tier) names `what` asked
        when it is missing or does not decode."""
        import soundfile

        if name in self.audio:
            return self.audio[name]
        path = self.outputs.get(name)
        if path is None:
            raise error(f"{what}: {self.tier} returned no {name!r} audio (it returned {self.audio_names() or 'none'})")
        try:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        except (RuntimeError, soundfile.LibsndfileError) as err:
            raise error(f"{what}: {self.tier} answered audio that cannot be decoded ({err})") from None
        return np.ascontiguousarray(data.T), int(rate)


Progress = Callable[[float], None]
CheckCancelled = Callable[[], None]


class Tier(ABC):
    """A place that can run jobs. Implementations must be safe to call from worker threads."""

    name: str = "tier"
    tasks: frozenset[str] = frozenset()
    # Whether a generate job that asks for Stable Audio Open may run here; a tier whose generate
    # model is MusicGen says no, so such a job never comes back as MusicGen.
    offers_stable_audio: bool = False
    # The (task, model name) pairs of CLOUD_ONLY_MODELS this tier runs.
    named_models: frozenset[tuple[str, str]] = frozenset()

    def supports(self, task: str) -> bool:
        return task in self.tasks

    def offers_model(self, task: str, model: str) -> bool:
        """Whether this tier can run `task` with the job's `model` (the name the job asked for).

        Default: yes for any task it offers (the tier maps the task to its own model, or the
        server behind it answers `not_found`). A tier that passes the name on to a provider with a
        fixed list says no to other names, so the router never plans it for them.

        Spleeter (`spleeter:2stems`) is local only: no tier runs Deezer's weights (Replicate and
        our server take demucs names, a Hugging Face endpoint runs its own model), so a job that
        asks for it is never sent where another model would answer. Stable Audio Open likewise
        goes only to a tier that says it runs it (`offers_stable_audio`), and the cloud-only
        models (AudioGen, Riffusion, Chatterbox) only to a tier that names them (`named_models`).
        """
        if task == "stems" and is_spleeter(model):
            return False
        if task == "generate" and is_stable_audio(model) and not self.offers_stable_audio:
            return False
        if (task, model) in CLOUD_ONLY_MODELS and (task, model) not in self.named_models:
            return False
        return self.supports(task)

    def model_for(self, task: str, model: str) -> str:
        """The model this tier runs for a `task` job that asked for `model` (its licence is the
        one the result names). Default: that model; a tier with its own model per task says so."""
        return model

    @abstractmethod
    def run(self, job: TierJob, progress: Progress, check_cancelled: CheckCancelled) -> TierResult:
        """Run `job`, calling `progress(fraction)` as it goes and `check_cancelled()` at least once a
        second (it raises to abort; the tier then cancels remote work it started, best effort)."""

    def health(self) -> bool:
        """A cheap probe for the router's half-open circuit; default: assume healthy."""
        return True

    def close(self) -> None:  # noqa: B027 (optional: a tier with nothing to release keeps this no-op)
        """Release connections."""
