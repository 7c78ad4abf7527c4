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
    config: Config, paths: PathPolicy, router: Any = None, tiers: dict[str, Any] | None = None
) -> dict[str, JobHandler]:
    """Handlers keep their engines warm across jobs; `router`/`tiers` None: always local."""
    from bridge import separate

    handlers: dict[str, JobHandler] = {
        separate.KIND: separate.SeparateJob(config, paths, router, tiers),
    }
    return handlers
