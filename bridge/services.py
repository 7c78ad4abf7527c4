"""What command handlers use: one typed object, built once by the daemon and closed by it.

The daemon (bridge/daemon.py) is the composition root: it owns the transports and the lifecycle;
this object owns what the commands work with: the live streams, the job queue (a `JobQueue`, the
same one `flowstate separate --local` and `flowstate serve` build), the router and its tiers, the
sample library and `classify.audio`'s model.
A handler gets it as `ctx.services`, never the daemon, so a handler can reach exactly what is
listed here and the type checker knows every piece's type.

Opening and closing are split in steps because the daemon bounds each step of a shutdown by time
(`daemon.shutdown_timeout_seconds`): `open_jobs` at start-up; at shutdown the daemon stops the
runner, then `close_jobs`, `streams.close`, `close_engines`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from bridge.commands import job_handlers
from bridge.config import Config
from bridge.daw import DawState
from bridge.errors import StartupError, Unavailable
from bridge.events import EventHub
from bridge.job_queue import JobQueue, close_each
from bridge.job_store import JobStore, StoreOwner
from bridge.jobs import JobRunner, Publish
from bridge.ledger import Ledger
from bridge.licences import licensed_offers
from bridge.paths import PathPolicy
from bridge.protocol import Request
from bridge.router import Router, build_tiers
from bridge.samples import SampleLibrary
from bridge.stream_manager import StreamManager
from bridge.transports.midi import MidiTransport
from engines.audio_tags import AudioTagger
from engines.base import pick_device
from engines.cloud.base import Tier

log = logging.getLogger(__name__)


class Runtime(Protocol):
    """What handlers need of the process that serves the request: `status` reads it, `ask` runs a
    command through it (the same path as a request from the wire)."""

    started_at: float

    def endpoints(self) -> dict[str, str]: ...

    def in_flight(self) -> int: ...

    async def call(self, request: Request) -> dict[str, Any]: ...


class Services:
    """Everything a command handler may use (see the module doc)."""

    def __init__(self, config: Config, runtime: Runtime, hub: EventHub, daw: DawState, midi: MidiTransport) -> None:
        # Annotated: job command checks (bridge/commands.py) read these, and the two modules refer to each other.
        self.config: Config = config
        self.runtime = runtime
        self.hub = hub
        self.daw: DawState = daw
        self.midi = midi
        self.paths: PathPolicy = PathPolicy.from_config(config)
        cloud = config.cloud
        selfhosted = ((cloud.selfhosted_url, cloud.server_token.get_secret_value())
                      if cloud.selfhosted_url and cloud.server_token is not None else None)
        self.streams = StreamManager(config.stream, config.models.demucs_repo, on_event=hub.publish,
                                     spleeter_dir=config.models.spleeter_dir, selfhosted=selfhosted)
        # The job side (its queue: store, handlers, runner), opened by `open_jobs`.
        self.job_store: JobStore | None = None
        self.store_owner: StoreOwner | None = None
        self.tiers: dict[str, Tier] = {}
        self.router: Router | None = None
        self.queue: JobQueue | None = None
        self.jobs: JobRunner | None = None  # the queue's runner
        self.samples: SampleLibrary | None = None
        # classify.audio's model, built on first use (`audio_tagger`).
        self._audio_tagger: AudioTagger | None = None
        self._audio_tagger_lock = threading.Lock()

    # -- what handlers call -------------------------------------------------------------------------

    def job_runner(self) -> JobRunner:
        if self.jobs is None:
            raise Unavailable("the job queue is not running")
        return self.jobs

    def sample_library(self) -> SampleLibrary:
        if self.samples is None:
            raise Unavailable("the sample library is not open (the daemon is starting or stopping)")
        return self.samples

    def audio_tagger(self) -> AudioTagger:
        """The `classify.audio` model (classify.audio_*), made on first use; call it off the event loop."""
        with self._audio_tagger_lock:
            if self._audio_tagger is None:
                section = self.config.classify
                self._audio_tagger = AudioTagger(section.audio_model, section.audio_device, section.audio_seconds,
                                                 section.audio_threads)
            return self._audio_tagger

    # -- lifetimes ----------------------------------------------------------------------------------

    def open_jobs(self, publish: Publish, after_job: Callable[[], object] | None = None) -> list[str]:
        """Open the job store, tiers, router, sample library and runner; returns the requeued job ids.

        Blocking (SQLite, the tiers' clients): the daemon calls it off its event loop. `after_job`
        runs on a worker after each job (the daemon's allocator trim).
        """
        database = self.config.jobs.database
        if database is None:  # load_config fills the default; a hand-built Config may not
            raise StartupError("jobs.database is not set")
        # Ownership before anything touches the store: a second daemon must not requeue (and run)
        # the first one's running jobs.
        self.store_owner = StoreOwner(database).acquire()
        self.job_store = JobStore(database)

        self.tiers = build_tiers(self.config)
        device = pick_device(self.config.separate.engine_device).type
        offered = {name: frozenset(tier.tasks) for name, tier in self.tiers.items()}
        # A tier whose own model the project's licence policy refuses is never planned.
        models = {name: licensed_offers(tier, self.config.project) for name, tier in self.tiers.items()}
        runs: dict[str, Callable[[str, str], str]] = {name: tier.model_for for name, tier in self.tiers.items()}
        ledger = Ledger(self.job_store.database)
        self.router = Router(self.config.router, offered, ledger, device, models=models, runs=runs)
        self.streams.route = self.router.stream_tier  # stream.tier auto
        self.streams.ledger = ledger  # each setting's live compute, kept across restarts
        if self.tiers:
            log.info("tiers configured: %s", ", ".join(sorted(self.tiers)))

        self.samples = SampleLibrary(self.config, self.paths, audio_tagger=self.audio_tagger,
                                     router=self.router, tiers=self.tiers)
        handlers = job_handlers(self.config, self.paths, self.router, self.tiers, samples=self.samples)
        self.queue = JobQueue(self.job_store, handlers, self.config.jobs.workers, publish,
                              max_attempts=self.config.jobs.max_attempts, after_job=after_job, tiers=self.tiers)
        self.jobs = self.queue.runner
        requeued = self.queue.start()
        self.samples.start_watching()  # folders indexed with watch stay fresh across restarts
        return requeued

    def close_jobs(self) -> None:
        """After the runner stopped: close the sample library and the job store."""
        if self.samples is not None:
            self.samples.close()
        if self.job_store is not None:  # the queue's (or alone, when opening failed before the queue was made)
            self.job_store.close()

    def release_store(self) -> None:
        """Give up the job store's ownership: another daemon may now open it and requeue."""
        if self.store_owner is not None:
            self.store_owner.release()

    def close_engines(self) -> None:
        """Release every model and client held between requests: the job handlers' warm engines,
        `classify.audio`'s model and the tiers' HTTP clients. Each is closed even if another fails."""
        with self._audio_tagger_lock:
            tagger, self._audio_tagger = self._audio_tagger, None
        closers: list[tuple[str, Callable[[], object]]] = []
        if tagger is not None:
            closers.append(("classify.audio", tagger.close))
        if self.queue is not None:
            closers += self.queue.closers()
        else:  # opening failed before the queue was made: the tiers are still this object's to close
            closers += [(f"tier {name}", tier.close) for name, tier in self.tiers.items()]
        close_each(closers)
