"""Every job kind the daemon runs, by name: the command that submits it -> its handler.

A capability that runs as a job (stems.separate, generate, transcribe, tts, voice.convert, samples.index)
adds its handler here; `bridge/jobs.py` runs them, `bridge/commands.py` submits them. Their common base,
`EngineJob`, lives in `bridge/engine_job.py`, so the capabilities never import this table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bridge import generate, separate, speech, transcribe, voice
from bridge.config import Config
from bridge.jobs import JobContext
from bridge.paths import PathPolicy
from bridge.router import Router
from bridge.samples import KIND as SAMPLES_INDEX
from bridge.samples import IndexJob, SampleLibrary
from engines.cloud.base import Tier

JobHandler = Callable[[JobContext], dict[str, Any]]


def job_handlers(
    config: Config, paths: PathPolicy, router: Router | None = None, tiers: dict[str, Tier] | None = None,
    samples: SampleLibrary | None = None,
) -> dict[str, JobHandler]:
    """Handlers keep their engines warm across jobs; `router`/`tiers` None: always local.

    `samples`: the daemon's `bridge.samples.SampleLibrary` (shared with `samples.search`); None: no
    `samples.index` jobs.
    """
    # The lyrics chain (transcribe stem=vocals) reuses the warm separation engine of stems.separate.
    separator = separate.SeparateJob(config, paths, router, tiers)
    handlers: dict[str, JobHandler] = {
        separate.KIND: separator,
        generate.KIND: generate.GenerateJob(config, paths, router, tiers),
    }
    handlers[transcribe.KIND] = transcribe.TranscribeJob(config, paths, router, tiers, separator=separator)
    handlers[speech.KIND] = speech.SpeechJob(config, paths, router, tiers)
    handlers[voice.KIND] = voice.VoiceJob(config, paths, router, tiers)
    if samples is not None:
        handlers[SAMPLES_INDEX] = IndexJob(samples)
    return handlers
