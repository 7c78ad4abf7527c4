"""One job queue as every composition root runs it: a store, a handler per job kind, the runner that
hands the store's jobs to them, and the lifetimes of all three.

The daemon (through `Services.open_jobs`), `flowstate separate --local` and `flowstate serve` each
build one `JobQueue` and close it at shutdown, so none wires store, handlers and runner by hand and
none forgets to release the handlers' warm engines or the tiers' clients. Closing is split in steps
(`close_store`, `close_engines`) because the daemon bounds each step of its shutdown by time; `close`
does both for a caller that needs no such bound.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from bridge.job_store import JobStore
from bridge.jobs import JobHandler, JobRunner, Publish
from engines.cloud.base import Tier

log = logging.getLogger(__name__)


class JobQueue:
    """A store, its handlers and its runner; owns the handlers' warm engines and the tiers it is given."""

    def __init__(
        self,
        store: JobStore,
        handlers: dict[str, JobHandler],
        workers: int,
        publish: Publish,
        *,
        max_attempts: int | None = 3,
        after_job: Callable[[], object] | None = None,
        tiers: dict[str, Tier] | None = None,
    ) -> None:
        self.store = store
        self.handlers = dict(handlers)
        self.tiers = dict(tiers or {})
        self.workers = workers
        self.runner = JobRunner(store, self.handlers, workers, publish, max_attempts=max_attempts, after_job=after_job)

    def start(self) -> list[str]:
        """Start the runner's workers; returns the ids of the interrupted jobs it requeued."""
        return self.runner.start()

    def close_store(self) -> None:
        """After the runner stopped: close the job store."""
        self.store.close()

    def closers(self) -> list[tuple[str, Callable[[], object]]]:
        """What `close_engines` closes, named: each handler's warm engines, then each tier's client."""
        closers: list[tuple[str, Callable[[], object]]] = [
            (f"job {kind}", close) for kind, handler in self.handlers.items()
            if (close := getattr(handler, "close", None)) is not None]
        return closers + [(f"tier {name}", tier.close) for name, tier in self.tiers.items()]

    def close_engines(self) -> None:
        """Release what the handlers keep warm between jobs and the tiers' clients; each is closed
        even if another fails (the failure is logged)."""
        close_each(self.closers())

    def close(self, timeout: float, cancel_running: bool = False) -> list[str]:
        """Stop the runner (see `JobRunner.stop`), then close the store and the engines; returns the
        ids of the jobs still running when `timeout` passed."""
        left = self.runner.stop(timeout, cancel_running=cancel_running)
        self.close_store()
        self.close_engines()
        return left


def close_each(closers: Sequence[tuple[str, Callable[[], object]]]) -> None:
    """Call every closer, each even if another fails; a failure is logged with what it closed."""
    for what, close in closers:
        try:
            close()
        except Exception:
            log.exception("closing %s failed", what)
