"""The base of every engine-backed job handler (stems.separate, generate, transcribe, tts), and
what every job handler is built from (`JobDeps`).

Kept apart from the job command declarations (`bridge/commands.py`), which import every capability:
a capability imports this module, never the declarations, so the two never import each other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from bridge.config import Config
from bridge.jobs import JobContext, JobHandler
from bridge.paths import PathPolicy
from bridge.router import LOCAL, LocalTier, Route, Router
from bridge.samples import SampleLibrary
from engines.cloud.base import CheckCancelled, Progress, Tier, TierJob, TierResult

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
    router and tiers (None: always local), and its engines, kept warm across jobs by key.

    A handler with a local engine names its task in `LOCAL_TASK` and implements `run_here`, its
    engine's side of the `Tier` interface: the router's local tier (`router.local`, one per router)
    runs the task's `TierJob`s through it, like any other tier (`route`)."""

    LOCAL_TASK: ClassVar[str | None] = None  # the task this handler's engine runs here; None: tiers only

    def __init__(
        self, config: Config, paths: PathPolicy, router: Router | None = None, tiers: dict[str, Tier] | None = None
    ) -> None:
        self.config = config
        self.paths = paths
        self.router = router  # None: always local
        self.tiers = tiers or {}
        self.local = router.local if router is not None else LocalTier(config.router, None, "cpu")
        if self.LOCAL_TASK is not None:
            self.local.provide(self.LOCAL_TASK, self.run_here)
        self._engines: dict[Hashable, Any] = {}
        self._lock = threading.RLock()  # reentrant: a `make` may itself look up a warm engine

    def run_here(self, job: TierJob, progress: Progress, check_cancelled: CheckCancelled) -> TierResult:
        """Run `job` on this machine's engine (a handler with `LOCAL_TASK` implements it)."""
        raise NotImplementedError(f"{type(self).__name__} has no local engine")

    def route(self, ctx: JobContext, task: str, model: str, units: float,
              cloud: tuple[str, str] = ("", "")) -> Route:
        """The tiers to try for `ctx`'s job, this machine's among them (see `Route`)."""
        return Route(ctx, self.router, {LOCAL: self.local, **self.tiers}, task, model, units, cloud)

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
