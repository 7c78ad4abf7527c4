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
from bridge.errors import Unavailable
from bridge.jobs import JobContext, JobHandler
from bridge.paths import PathPolicy
from bridge.router import LOCAL, Route, Router
from bridge.samples import SampleLibrary
from engines.cloud.base import CLOUD_ONLY_MODELS, CheckCancelled, Progress, Tier, TierJob, TierResult

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


class EngineJob(Tier):
    """What every engine-backed job handler holds: the config, the folders it may touch, the
    router and tiers (None: always local), and its engines, kept warm across jobs by key.

    A handler with a local engine is this machine's tier for its task: it names the task in
    `LOCAL_TASK` and implements `run`, the one interface every tier implements (a `TierJob` in, a
    `TierResult` out, audio in memory), so its job loops over the plan's tiers, itself among them,
    with no branch for local (`route`)."""

    name = LOCAL
    LOCAL_TASK: ClassVar[str | None] = None  # the task this handler's engine runs here; None: tiers only

    def __init__(
        self, config: Config, paths: PathPolicy, router: Router | None = None, tiers: dict[str, Tier] | None = None
    ) -> None:
        self.config = config
        self.paths = paths
        self.router = router  # None: always local
        self.tiers = tiers or {}
        self.tasks = frozenset() if self.LOCAL_TASK is None else frozenset({self.LOCAL_TASK})
        self._engines: dict[Hashable, Any] = {}
        self._lock = threading.RLock()  # reentrant: a `make` may itself look up a warm engine

    def offers_model(self, task: str, model: str) -> bool:
        """Any model of its task but those only cloud tiers run (they have no local engine)."""
        return task in self.tasks and (task, model) not in CLOUD_ONLY_MODELS

    def run(self, job: TierJob, progress: Progress, check_cancelled: CheckCancelled) -> TierResult:
        """Run `job` on this machine's engine (a handler with `LOCAL_TASK` implements it)."""
        raise Unavailable(f"{job.task}: no engine on this machine runs it")

    def route(self, ctx: JobContext, task: str, model: str, units: float,
              cloud: tuple[str, str] = ("", "")) -> Route:
        """The tiers to try for `ctx`'s job: the router's plan over the cloud tiers and this one."""
        return Route(ctx, self.router, {**self.tiers, LOCAL: self}, task, model, units, cloud)

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
