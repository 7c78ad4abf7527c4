"""The base of every engine-backed job handler (stems.separate, generate, transcribe, tts), and
what every job handler is built from (`JobDeps`).

Kept apart from the job command declarations (`bridge/commands.py`), which import every capability:
a capability imports this module, never the declarations, so the two never import each other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bridge.config import Config
from bridge.jobs import JobHandler
from bridge.paths import PathPolicy
from bridge.router import Router
from bridge.samples import SampleLibrary
from engines.cloud.base import Tier

E = TypeVar("E")
J = TypeVar("J", bound="EngineJob")


@dataclass
class JobDeps:
    """What a job handler is built from: each job command's declaration (`job_command` in
    bridge/commands.py) names a `build(deps)`; `job_handlers` calls them in declaration order."""

    config: Config
    paths: PathPolicy
    router: Router | None = None  # None: always local
    tiers: dict[str, Tier] = field(default_factory=dict)
    samples: SampleLibrary | None = None  # the daemon's sample library; None: no samples.index jobs
    handlers: dict[str, JobHandler] = field(default_factory=dict)  # the ones built so far, by kind


class EngineJob:
    """What every engine-backed job handler holds: the config, the folders it may touch, the
    router and tiers (None: always local), and its engines, kept warm across jobs by key."""

    def __init__(
        self, config: Config, paths: PathPolicy, router: Router | None = None, tiers: dict[str, Tier] | None = None
    ) -> None:
        self.config = config
        self.paths = paths
        self.router = router  # None: always local
        self.tiers = tiers or {}
        self._engines: dict[Hashable, Any] = {}
        self._lock = threading.RLock()  # reentrant: a `make` may itself look up a warm engine

    @classmethod
    def build(cls: type[J], deps: JobDeps) -> J:
        """The handler a declaration's `job` makes: the config, folders, router and tiers of `deps`."""
        return cls(deps.config, deps.paths, deps.router, deps.tiers)

    def warm(self, key: Hashable, make: Callable[[], E]) -> E:
        """The engine for `key`, made on first use and reused by every later job."""
        with self._lock:
            if key not in self._engines:
                self._engines[key] = make()
            return self._engines[key]

    def close(self) -> None:
        """Release every warm engine (at shutdown); a later job would make them again."""
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            close = getattr(engine, "close", None)
            if close is not None:
                close()
