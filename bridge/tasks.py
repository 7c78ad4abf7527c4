"""Every job kind the daemon runs, by name: the command that submits it -> its handler.

A capability that runs as a job (stems.separate, generate, transcribe, tts, voice.convert, samples.index) adds
its handler here; `bridge/jobs.py` runs them, `bridge/commands.py` submits them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from bridge.config import Config
from bridge.jobs import JobContext
from bridge.paths import PathPolicy

JobHandler = Callable[[JobContext], dict[str, Any]]
E = TypeVar("E")


class EngineJob:
    """What every engine-backed job handler holds: the config, the folders it may touch, the
    router and tiers (None: always local), and its engines, kept warm across jobs by key."""

    def __init__(
        self, config: Config, paths: PathPolicy, router: Any = None, tiers: dict[str, Any] | None = None
    ) -> None:
        self.config = config
        self.paths = paths
        self.router = router  # bridge.router.Router, or None: always local
        self.tiers = tiers or {}
        self._engines: dict[Hashable, Any] = {}
        self._lock = threading.RLock()  # reentrant: a `make` may itself look up a warm engine

    def warm(self, key: Hashable, make: Callable[[], E]) -> E:
        """The engine for `key`, made on first use and reused by every later job."""
        with self._lock:
            if key not in self._engines:
                self._engines[key] = make()
            return self._engines[key]


def job_handlers(
    config: Config, paths: PathPolicy, router: Any = None, tiers: dict[str, Any] | None = None,
    samples: Any = None,
) -> dict[str, JobHandler]:
    """Handlers keep their engines warm across jobs; `router`/`tiers` None: always local.

    `samples`: the daemon's `bridge.samples.SampleLibrary` (shared with `samples.search`); None: no
    `samples.index` jobs.
    """
    from bridge import generate, separate

    # The lyrics chain (transcribe stem=vocals) reuses the warm separation engine of stems.separate.
    separator = separate.SeparateJob(config, paths, router, tiers)
    handlers: dict[str, JobHandler] = {
        separate.KIND: separator,
        generate.KIND: generate.GenerateJob(config, paths, router, tiers),
    }
    from bridge import speech, transcribe

    handlers[transcribe.KIND] = transcribe.TranscribeJob(config, paths, router, tiers, separator=separator)
    handlers[speech.KIND] = speech.SpeechJob(config, paths, router, tiers)
    from bridge import voice

    handlers[voice.KIND] = voice.VoiceJob(config, paths, router, tiers)
    if samples is not None:
        from bridge.samples import KIND as SAMPLES_INDEX, IndexJob

        handlers[SAMPLES_INDEX] = IndexJob(samples)
    return handlers
