"""The router: which tier runs a job — local, our GPU server, or a cloud provider — and why.

Per task, `router.order` lists the tiers to consider. For each job the router estimates how long
the local engine would take (from measured throughput, calibrated per task, model and device and
stored in the job database's ledger, bridge/ledger.py) and:

- runs it locally when there is no deadline (a background job) or local meets the deadline;
- otherwise picks, among healthy tiers (circuit closed, or half-open for one probe) whose
  estimate meets the deadline and whose estimated cost fits the monthly budget, the cheapest;
  the others follow as fallbacks, and local comes last (late beats never);
- when only over-budget tiers could meet the deadline, falls back to local or refuses
  (`router.over_budget`).

Every decision carries the tier, the reason and the estimated seconds and cost; the job records it
(`job.status` shows `route`) and the log says it. A tier that fails opens its circuit after
`breaker_failures` consecutive failures; after `breaker_open_seconds` one job may probe it again.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from bridge.config import Config, RouterConfig
from bridge.errors import BadRequest, BridgeError, Forbidden, Unavailable
from bridge.jobs import JobCanceled
from bridge.ledger import Ledger
from bridge.licences import describe
from engines.cloud.base import Tier, TierResult
from engines.cloud.hf import HuggingFaceTier
from engines.cloud.replicate import ReplicateTier
from engines.cloud.selfhosted import SelfHostedTier
from engines.cloud.workers_ai import BGE_ON_WORKERS_AI, WorkersAITier, bge_model_for

if TYPE_CHECKING:
    from bridge.jobs import JobContext

log = logging.getLogger(__name__)

LOCAL = "local"


@dataclass(frozen=True)
class Decision:
    """One tier to try, with what the router expects of it."""

    tier: str
    reason: str
    estimated_seconds: float
    estimated_cost_usd: float

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["estimated_seconds"] = round(self.estimated_seconds, 2)
        out["estimated_cost_usd"] = round(self.estimated_cost_usd, 4)
        return out


@dataclass(frozen=True)
class Estimate:
    """How long a tier would take for a job and what it would cost, and on what the guess rests."""

    seconds: float
    cost_usd: float
    basis: str


class LocalSpeed:
    """How fast this machine's engines are, for the plans: measured per task, model and device
    (kept in the job database's ledger, bridge/ledger.py), assumed from
    `router.local_seconds_per_audio_second` until the first job. The local tier itself is the job
    handler that runs the task (`bridge/engine_job.py`); it costs nothing and has no circuit."""

    def __init__(self, config: RouterConfig, ledger: Ledger, device: str) -> None:
        self.config = config
        self.ledger = ledger
        self.device = device

    def calibration_key(self, task: str, model: str) -> str:
        return f"{task}:{model}:{self.device}"

    def estimate(self, task: str, model: str, audio_seconds: float) -> Estimate:
        measured = self.ledger.calibration(self.calibration_key(task, model))
        if measured is not None:
            rate, samples = measured
            return Estimate(rate * audio_seconds, 0.0,
                            f"measured {rate:.2f} s per audio second over {samples} job(s)")
        rate = self.config.local_seconds_per_audio_second.get(self.device, 1.0)
        return Estimate(rate * audio_seconds, 0.0,
                        f"assumed {rate:.2f} s per audio second on {self.device} (not measured yet)")

    def learn(self, task: str, model: str, audio_seconds: float, seconds: float) -> None:
        if audio_seconds > 0:
            rate = self.ledger.calibrate(self.calibration_key(task, model), seconds / audio_seconds)
            log.info("router: local %s/%s on %s now %.3f s per audio second", task, model, self.device, rate)


class Breaker:
    """A circuit breaker: closed -> open after N failures in a row -> half-open after a pause."""

    def __init__(self, failures_to_open: int, open_seconds: float) -> None:
        self.failures_to_open = failures_to_open
        self.open_seconds = open_seconds
        self.failures = 0
        self.opened_at: float | None = None
        self._probing = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if time.monotonic() - self.opened_at >= self.open_seconds else "open"

    def allows(self) -> bool:
        """Closed: yes. Open: no. Half-open: yes for one probe at a time."""
        with self._lock:
            state = self.state
            if state == "closed":
                return True
            if state == "half_open" and not self._probing:
                self._probing = True
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self.failures, self.opened_at, self._probing = 0, None, False

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            self._probing = False
            if self.failures >= self.failures_to_open or self.opened_at is not None:
                self.opened_at = time.monotonic()  # (re)open: a failed probe restarts the pause


class Router:
    """Plans where jobs run; learns local speed and tier health as jobs finish."""

    def __init__(
        self, config: RouterConfig, available: set[str] | dict[str, frozenset[str]], ledger: Ledger, device: str,
        models: dict[str, Callable[[str, str], bool]] | None = None,
        runs: dict[str, Callable[[str, str], str]] | None = None,
    ) -> None:
        self.config = config
        # Remote tiers with credentials configured, and the tasks each offers (a set: all tasks).
        self.tasks = dict(available) if isinstance(available, dict) else dict.fromkeys(available)
        self.available = set(self.tasks)
        # Per tier, whether it runs (task, model); absent: any model of a task it offers.
        self.models = dict(models or {})
        # Per tier, the model it runs for (task, model asked for); absent: the model asked for.
        self.runs = dict(runs or {})
        self.ledger = ledger
        self.local = LocalSpeed(config, ledger, device)
        self.breakers = {
            name: Breaker(config.breaker_failures, config.breaker_open_seconds) for name in available
        }

    # -- live streams ----------------------------------------------------------------------------

    def stream_tier(self, local_load: float, max_load: float, measured: str) -> Decision:
        """Where a live stream with `stream.tier: auto` runs: the self-hosted server when the local
        engine's measured load (p99 window compute / hop; `measured` says of which windows) is over
        `max_load` and that tier is configured with its circuit not open; else here."""
        load = f"local load {local_load:.2f} (p99 compute / hop, {measured})"
        if local_load <= max_load:
            return Decision(LOCAL, f"{load} is within stream.max_local_load {max_load:g}", 0.0, 0.0)
        over = f"{load} is over stream.max_local_load {max_load:g}"
        if "selfhosted" not in self.available:
            return Decision(LOCAL, f"{over}, but no self-hosted tier is configured (cloud.selfhosted_url)", 0.0, 0.0)
        if self.breakers["selfhosted"].state == "open":
            return Decision(LOCAL, f"{over}, but the self-hosted tier's circuit is open after failures", 0.0, 0.0)
        return Decision("selfhosted", f"{over}: the self-hosted tier", 0.0, 0.0)

    # -- estimates: the one source of every tier's speed and price --------------------------------

    def estimate(self, tier: str, task: str, model: str, audio_seconds: float) -> Estimate:
        """Local: measured (or assumed) speed, free. A remote tier: `router.overhead_seconds` plus
        `router.seconds_per_audio_second`, priced at `router.usd_per_audio_minute`."""
        if tier == LOCAL:
            return self.local.estimate(task, model, audio_seconds)
        speed = self.config.seconds_per_audio_second.get(tier, 1.0)
        overhead = self.config.overhead_seconds.get(tier, 5.0)
        price = self.config.usd_per_audio_minute.get(tier, 0.0)
        return Estimate(overhead + speed * audio_seconds, price * audio_seconds / 60.0,
                        f"configured {speed:.2f} s per audio second + {overhead:.0f} s")

    def learn_local(self, task: str, model: str, audio_seconds: float, seconds: float) -> None:
        self.local.learn(task, model, audio_seconds, seconds)

    # -- planning --------------------------------------------------------------------------------

    def plan(
        self, task: str, model: str, audio_seconds: float, deadline_seconds: float | None, realtime: bool = False
    ) -> list[Decision]:
        """The tiers to try, in order; the first is the router's choice.

        Deadline classes: `realtime` (as soon as possible: the fastest healthy tier within budget),
        interactive (a deadline in seconds), background (no deadline).
        """
        order = [t for t in self.config.order.get(task, [LOCAL]) if t == LOCAL or self._offers(t, task, model)]
        # Every tier's estimate from one place, local's included (it is planned even when not listed).
        estimates = {tier: self.estimate(tier, task, model, audio_seconds) for tier in [LOCAL, *order]}
        local = estimates[LOCAL]
        remotes = [t for t in order if t != LOCAL]
        if realtime:
            return self._fastest(remotes, estimates)
        if deadline_seconds is None or local.seconds <= deadline_seconds or not remotes:
            if deadline_seconds is None:
                why = f"background job: local ({local.basis})"
            elif local.seconds <= deadline_seconds:
                why = (f"local meets the deadline: about {local.seconds:.0f} s <= {deadline_seconds:.0f} s "
                       f"({local.basis})")
            else:
                why = (f"local would take about {local.seconds:.0f} s > {deadline_seconds:.0f} s, "
                       "but no other tier is configured")
            fallbacks = [Decision(t, "fallback after local failed", estimates[t].seconds, estimates[t].cost_usd)
                         for t in remotes]
            return [Decision(LOCAL, why, local.seconds, local.cost_usd), *fallbacks]

        spent = self.ledger.month_spend()
        budget = self.config.monthly_budget_usd
        fits: list[Decision] = []
        slow: list[Decision] = []
        over_budget: list[str] = []
        for tier in remotes:
            seconds, cost = estimates[tier].seconds, estimates[tier].cost_usd
            if not self.breakers[tier].allows():
                log.info("router: %s skipped: circuit open after %d failures", tier, self.breakers[tier].failures)
                continue
            if spent + cost > budget:
                over_budget.append(f"{tier} (${cost:.3f}; ${spent:.2f} of ${budget:.2f} spent this month)")
                continue
            decision = Decision(
                tier,
                f"local would take about {local.seconds:.0f} s > deadline {deadline_seconds:.0f} s ({local.basis}); "
                f"{tier} about {seconds:.0f} s for ${cost:.3f}",
                seconds,
                cost,
            )
            (fits if seconds <= deadline_seconds else slow).append(decision)
        fits.sort(key=lambda d: (d.estimated_cost_usd, d.estimated_seconds))
        if fits:
            fits[0] = Decision(fits[0].tier, "cheapest tier that meets the deadline: " + fits[0].reason,
                               fits[0].estimated_seconds, fits[0].estimated_cost_usd)
        if not fits and over_budget and self.config.over_budget == "refuse":
            raise Forbidden(
                f"{task}: only over-budget tiers could meet the {deadline_seconds:.0f} s deadline: "
                f"{', '.join(over_budget)}; raise router.monthly_budget_usd or drop the deadline"
            )
        why_local = (
            f"no tier can meet the deadline within budget ({', '.join(over_budget) or 'none healthy'}): local"
            if not fits
            else "fallback: local, late rather than never"
        )
        last = Decision(LOCAL, why_local, local.seconds, local.cost_usd)
        return [*fits, *sorted(slow, key=lambda d: d.estimated_seconds), last]

    def _fastest(self, remotes: list[str], estimates: dict[str, Estimate]) -> list[Decision]:
        spent, budget = self.ledger.month_spend(), self.config.monthly_budget_usd
        local = estimates[LOCAL]
        options = [Decision(LOCAL, f"realtime: local about {local.seconds:.0f} s ({local.basis})", local.seconds,
                            local.cost_usd)]
        for tier in remotes:
            seconds, cost = estimates[tier].seconds, estimates[tier].cost_usd
            if spent + cost > budget or not self.breakers[tier].allows():
                continue
            options.append(Decision(tier, f"realtime: {tier} about {seconds:.0f} s for ${cost:.3f}", seconds, cost))
        options.sort(key=lambda d: (d.estimated_seconds, d.estimated_cost_usd))
        first = options[0]
        options[0] = Decision(first.tier, "fastest tier: " + first.reason, first.estimated_seconds,
                              first.estimated_cost_usd)
        return options

    def _offers(self, tier: str, task: str, model: str) -> bool:
        """Whether `tier` is configured, offers `task` and can run `model` (else it is not planned:
        a tier that refuses the model would fail the job instead of letting local run it)."""
        if tier not in self.tasks:
            return False
        tasks = self.tasks[tier]
        if tasks is not None and task not in tasks:
            return False
        runs = self.models.get(tier)
        if runs is not None and not runs(task, model):
            log.info("router: %s left out of the plan: it does not offer %s model %r", tier, task, model)
            return False
        return True

    def remote_tiers(self, task: str, model: str) -> list[str]:
        """The configured remote tiers, in `router.order`, that can run `task` with `model`."""
        return [t for t in self.config.order.get(task, []) if t != LOCAL and self._offers(t, task, model)]

    def model_for(self, tier: str, task: str, model: str) -> str:
        """The model `tier` runs for a `task` job that asked for `model` (what the result names)."""
        runs = self.runs.get(tier)
        return model if runs is None else runs(task, model)

    # -- outcomes --------------------------------------------------------------------------------

    def succeeded(self, tier: str, cost_usd: float | None, job_id: str | None) -> None:
        """Close the tier's circuit and add its cost to the spend ledger (`job_id` None: a call that is no job)."""
        if tier in self.breakers:
            self.breakers[tier].success()
        if cost_usd:
            self.ledger.add_spend(tier, cost_usd, job_id)

    def failed(self, tier: str) -> None:
        breaker = self.breakers.get(tier)
        if breaker is not None:
            breaker.failure()
            log.warning("router: %s failed (%d in a row, circuit %s)", tier, breaker.failures, breaker.state)

    def status(self) -> dict[str, Any]:
        return {
            "tiers": {name: {"circuit": b.state, "failures": b.failures} for name, b in self.breakers.items()},
            "month_spend_usd": round(self.ledger.month_spend(), 4),
            "monthly_budget_usd": self.config.monthly_budget_usd,
        }


def deadline_class(args: dict[str, Any], kind: str) -> str:
    """realtime (as soon as possible), interactive (a deadline in seconds) or background, checked
    against the request's `deadline_class` and `deadline_seconds` arguments."""
    wanted = args.get("deadline_class") or ""
    if wanted == "realtime":
        return "realtime"
    if wanted == "interactive" and args.get("deadline_seconds") is None:
        raise BadRequest(f"{kind}: deadline_class 'interactive' needs deadline_seconds")
    if wanted == "background" and args.get("deadline_seconds") is not None:
        raise BadRequest(f"{kind}: deadline_class 'background' cannot have deadline_seconds")
    return "interactive" if args.get("deadline_seconds") is not None else "background"


def cloud_only(router: Router | None, task: str, model: str, what: str, key: str) -> list[str]:
    """The remote tiers that can run a model no local engine runs, in order; Unavailable naming what
    to configure when there are none (`key`: its entry in cloud.replicate_models)."""
    tiers = [] if router is None else router.remote_tiers(task, model)
    if not tiers:
        raise Unavailable(
            f"{what} runs only on a cloud tier (its dependencies cannot share this environment), and no configured "
            f"tier offers it: set REPLICATE_API_TOKEN (or cloud.replicate_token), keep cloud.replicate_models."
            f"{key} (a default is built in) and list replicate in router.order.{task}"
        )
    return tiers


class Route:
    """The tiers to try for one job, in the router's order, this machine's among them, each run by
    the job itself through the one `Tier` interface:

        route = self.route(ctx, "stems", model, audio_seconds)   # EngineJob.route: its tiers and itself
        for attempt in route:
            with attempt:  # a BridgeError here marks the tier failed and moves on to the next
                job = TierJob(..., work_dir=attempt.scratch)     # the job in this tier's terms
                result = attempt.tier.run(job, progress, ctx.check_cancelled)
                return read(result), attempt.ran(result)         # files or in-memory audio
        raise route.failure()

    The job calls the router, never the other way round, and the local tier is the job's handler
    itself (its engine, `EngineJob.run`): no closure crosses. `units` is what speed and price scale
    with (audio seconds in or out). The job's `deadline_seconds` / `deadline_class` args choose the
    plan; each decision is recorded on the job (`route`) and logged. `ran(result)` returns {"tier",
    "device", "cost_usd"?, "model", "licence"}: the model that ran (a tier's own, when it runs one)
    and its licence. A cancel or a BadRequest (input no tier will accept) is not retried elsewhere.

    Local is planned when the local tier offers the model; a model only cloud tiers run has no
    local engine (`cloud`: what it is and its models key, for `cloud_only`'s message), and a plan
    left empty is Unavailable.
    """

    def __init__(self, ctx: JobContext, router: Router | None, tiers: Mapping[str, Tier], task: str, model: str,
                 units: float, cloud: tuple[str, str] = ("", "")) -> None:
        self.ctx, self.router, self.tiers, self.task, self.model, self.units = ctx, router, tiers, task, model, units
        args = ctx.job.args
        if router is None:
            plan: list[Decision] = []
        else:
            realtime = args.get("deadline_class") == "realtime"
            plan = router.plan(task, model, units, args.get("deadline_seconds"), realtime=realtime)
        local = tiers.get(LOCAL)
        if local is None or not local.offers_model(task, model):
            offered = cloud_only(router, task, model, *cloud)
            plan = [decision for decision in plan if decision.tier != LOCAL]
            if not plan:
                raise Unavailable(f"{ctx.job.kind}: {cloud[0]} runs on {', '.join(offered)}, and none of them can "
                                  "take a job now (circuit open after failures, or over router.monthly_budget_usd)")
        self.plan: list[Decision | None] = [*plan] if plan else [None]  # None: run it here
        self.failures: list[str] = []
        self.errors: list[BridgeError] = []

    def __iter__(self) -> Iterator[Attempt]:
        for decision in self.plan:
            name = LOCAL if decision is None else decision.tier
            if decision is not None:
                self.ctx.set_route({**decision.to_dict(), "failed": list(self.failures)})
                log.info("job %s -> %s: %s", self.ctx.job.id, name, decision.reason)
            self.ctx.check_cancelled()
            yield Attempt(self, name, decision)

    def failure(self) -> BridgeError:
        """What to raise when every tier failed: the only tier's own error (e.g. not_found for a
        missing model), else Unavailable naming each failure."""
        if len(self.errors) == 1:
            return self.errors[0]
        return Unavailable(f"{self.ctx.job.kind}: every tier failed: " + "; ".join(self.failures))


class Attempt:
    """One tier of a `Route`: a context manager that holds a scratch folder for the tier's files
    (`scratch`, removed on exit) and turns a tier's BridgeError into a failure recorded on the
    router (its circuit) and the route, so the job's loop moves on."""

    def __init__(self, route: Route, name: str, decision: Decision | None) -> None:
        self.route = route
        self.name = name
        self.tier = route.tiers[name]
        self.decision = decision
        self.local = name == LOCAL
        self.started = time.monotonic()
        self._scratch: tempfile.TemporaryDirectory[str] | None = None

    @property
    def scratch(self) -> Path:
        """An empty folder for this attempt's files (a TierJob's work_dir), made on first use."""
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix=f".flowstate-{self.name}-")
        return Path(self._scratch.name)

    def ran(self, result: TierResult) -> dict[str, Any]:
        """Record the tier's success, and where the job ran: this machine (its measured speed, for
        the next plans) or a tier (its cost; a tier that reports no price is charged what the router
        expected)."""
        route, router = self.route, self.route.router
        if self.local:
            if router is not None:
                router.learn_local(route.task, route.model, route.units, time.monotonic() - self.started)
                router.succeeded(LOCAL, None, route.ctx.job.id)
            device = str(result.details.get("device", "cpu"))
            return {"device": device, "tier": LOCAL, **describe(route.task, route.model)}
        assert router is not None and self.decision is not None  # a remote tier comes from a plan
        cost = self.decision.estimated_cost_usd if result.cost_usd is None else result.cost_usd
        router.succeeded(self.name, cost, route.ctx.job.id)
        return {"device": self.name, "tier": self.name, "cost_usd": cost,
                **describe(route.task, router.model_for(self.name, route.task, route.model))}

    def __enter__(self) -> Attempt:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> bool:
        if self._scratch is not None:
            self._scratch.cleanup()
        if err is None or isinstance(err, (JobCanceled, BadRequest)) or not isinstance(err, BridgeError):
            return False
        route = self.route
        if route.router is not None:
            route.router.failed(self.name)
        route.failures.append(f"{self.name}: {err.code}: {err.message}")
        route.errors.append(err)
        log.warning("job %s: %s failed (%s); trying the next tier", route.ctx.job.id, self.name, err.message)
        return True


def build_tiers(config: Config) -> dict[str, Tier]:
    """The remote tiers whose credentials are configured, by name (tokens stay inside them)."""
    cloud = config.cloud
    tiers: dict[str, Tier] = {}
    if cloud.selfhosted_url and cloud.server_token is not None:
        tiers["selfhosted"] = SelfHostedTier(cloud.selfhosted_url, cloud.server_token.get_secret_value())
    if cloud.replicate_token is not None:
        # No marker webhook: an unreachable webhook host might be refused; a lost create is then
        # reconciled by matching the exact input in the prediction list.
        tiers["replicate"] = ReplicateTier(
            cloud.replicate_token.get_secret_value(), base_url=cloud.replicate_url, webhook_url=None,
            models=dict(cloud.replicate_models) or None,
        )
    if cloud.huggingface_token is not None:
        tiers["huggingface"] = HuggingFaceTier(
            cloud.huggingface_token.get_secret_value(),
            base_url=cloud.huggingface_url,
            endpoint_url=cloud.huggingface_endpoint_url,
            models=dict(cloud.huggingface_models) or None,
        )
    if cloud.workers_ai_token is not None and cloud.workers_ai_account_id:
        tiers["workers_ai"] = WorkersAITier(
            cloud.workers_ai_token.get_secret_value(), cloud.workers_ai_account_id, base_url=cloud.workers_ai_url,
            models={"embed": workers_ai_embed_model(config)},
        )
    return tiers


def workers_ai_embed_model(config: Config) -> str:
    """The BGE that Workers AI runs for `embed`: the same model as `samples.model` when that is a BGE
    (so its vectors can be compared with the library's), else bge-small (the cheapest)."""
    return bge_model_for(config.samples.model) or BGE_ON_WORKERS_AI["baai/bge-small-en-v1.5"]
