"""Every job kind the daemon runs, by name: the command that submits it -> its handler.

A capability that runs as a job (stems.separate, generate, transcribe, tts, samples.index) adds
its handler here; `bridge/jobs.py` runs them, `bridge/commands.py` submits them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bridge.config import Config
from bridge.jobs import JobContext
from bridge.paths import PathPolicy

JobHandler = Callable[[JobContext], dict[str, Any]]


def job_handlers(
    config: Config, paths: PathPolicy, router: Any = None, tiers: dict[str, Any] | None = None,
    samples: Any = None,
) -> dict[str, JobHandler]:
    """Handlers keep their engines warm across jobs; `router`/`tiers` None: always local.

    `samples`: the daemon's `bridge.samples.SampleLibrary` (shared with `samples.search`); None: no
    `samples.index` jobs.
    """
    from bridge import generate, separate

    handlers: dict[str, JobHandler] = {
        separate.KIND: separate.SeparateJob(config, paths, router, tiers),
        generate.KIND: generate.GenerateJob(config, paths, router, tiers),
    }
    from bridge import speech, transcribe

    # The lyrics chain (transcribe stem=vocals) reuses the warm separation engine of stems.separate.
    separator = handlers[separate.KIND]
    handlers[transcribe.KIND] = transcribe.TranscribeJob(config, paths, router, tiers, separator=separator)
    handlers[speech.KIND] = speech.SpeechJob(config, paths, router, tiers)
    if samples is not None:
        from bridge.samples import KIND as SAMPLES_INDEX, IndexJob

        handlers[SAMPLES_INDEX] = IndexJob(samples)
    return handlers
