"""The base of every engine-backed job handler (stems.separate, generate, transcribe, tts).

Kept apart from the table of job kinds (`bridge/tasks.py`), which imports every capability: a
capability imports this module, never the table, so the two never import each other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from bridge.config import Config
from bridge.paths import PathPolicy
from bridge.router import Router
from engines.cloud.base import Tier

E = TypeVar("E")


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
