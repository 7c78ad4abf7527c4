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
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from bridge.config import Config, RouterConfig
from bridge.errors import BadRequest, BridgeError, Forbidden, Unavailable
from bridge.jobs import JobCanceled
from bridge.ledger import Ledger
from bridge.licences import describe
from engines.cloud.base import Tier
from engines.cloud.hf import HuggingFaceTier
from engines.cloud.replicate import ReplicateTier
from engines.cloud.selfhosted import SelfHostedTier
from engines.cloud.workers_ai import BGE_ON_WORKERS_AI, WorkersAITier, bge_model_for

if TYPE_CHECKING:
    from bridge.jobs import JobContext

T = TypeVar("T")

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
        self.device = device
        self.breakers = {
            name: Breaker(config.breaker_failures, config.breaker_open_seconds) for name in available
        }

    # -- live streams ----------------------------------------------------------------------------

    def stream_tier(self, local_load: float, max_load: float) -> Decision:
        """Where a live stream with `stream.tier: auto` runs: the self-hosted server when the local
        engine's measured load (p99 window compute / hop) is over `max_load` and that tier is
        configured with its circuit not open; else here."""
        load = f"local load {local_load:.2f} (p99 compute / hop)"
        if local_load <= max_load:
            return Decision(LOCAL, f"{load} is within stream.max_local_load {max_load:g}", 0.0, 0.0)
        over = f"{load} is over stream.max_local_load {max_load:g}"
        if "selfhosted" not in self.available:
            return Decision(LOCAL, f"{over}, but no self-hosted tier is configured (cloud.selfhosted_url)", 0.0, 0.0)
        if self.breakers["selfhosted"].state == "open":
            return Decision(LOCAL, f"{over}, but the self-hosted tier's circuit is open after failures", 0.0, 0.0)
        return Decision("selfhosted", f"{over}: the self-hosted tier", 0.0, 0.0)

    # -- estimates -------------------------------------------------------------------------------

    def calibration_key(self, task: str, model: str) -> str:
        return f"{task}:{model}:{self.device}"

    def local_seconds(self, task: str, model: str, audio_seconds: float) -> tuple[float, str]:
        measured = self.ledger.calibration(self.calibration_key(task, model))
        if measured is not None:
            rate, samples = measured
            return rate * audio_seconds, f"measured {rate:.2f} s per audio second over {samples} job(s)"
        rate = self.config.local_seconds_per_audio_second.get(self.device, 1.0)
        return rate * audio_seconds, f"assumed {rate:.2f} s per audio second on {self.device} (not measured yet)"

    def learn_local(self, task: str, model: str, audio_seconds: float, seconds: float) -> None:
        if audio_seconds > 0:
            rate = self.ledger.calibrate(self.calibration_key(task, model), seconds / audio_seconds)
            log.info("router: local %s/%s on %s now %.3f s per audio second", task, model, self.device, rate)

    def remote_estimate(self, tier: str, audio_seconds: float) -> tuple[float, float]:
        speed = self.config.seconds_per_audio_second.get(tier, 1.0)
        overhead = self.config.overhead_seconds.get(tier, 5.0)
        price = self.config.usd_per_audio_minute.get(tier, 0.0)
        return overhead + speed * audio_seconds, price * audio_seconds / 60.0

    # -- planning --------------------------------------------------------------------------------

    def plan(
        self, task: str, model: str, audio_seconds: float, deadline_seconds: float | None, realtime: bool = False
    ) -> list[Decision]:
        """The tiers to try, in order; the first is the router's choice.

        Deadline classes: `realtime` (as soon as possible: the fastest healthy tier within budget),
        interactive (a deadline in seconds), background (no deadline).
        """
        local_s, local_basis = self.local_seconds(task, model, audio_seconds)
        order = [t for t in self.config.order.get(task, [LOCAL]) if t == LOCAL or self._offers(t, task, model)]
        remotes = [t for t in order if t != LOCAL]
        if realtime:
            return self._fastest(remotes, audio_seconds, local_s, local_basis)
        if deadline_seconds is None or local_s <= deadline_seconds or not remotes:
            if deadline_seconds is None:
                why = f"background job: local ({local_basis})"
            elif local_s <= deadline_seconds:
                why = f"local meets the deadline: about {local_s:.0f} s <= {deadline_seconds:.0f} s ({local_basis})"
            else:
                why = f"local would take about {local_s:.0f} s > {deadline_seconds:.0f} s, but no other tier is configured"
            first = Decision(LOCAL, why, local_s, 0.0)
            return [first, *self._fallbacks(remotes, audio_seconds, "fallback after local failed")]

        spent = self.ledger.month_spend()
        budget = self.config.monthly_budget_usd
        fits: list[Decision] = []
        slow: list[Decision] = []
        over_budget: list[str] = []
        for tier in remotes:
            seconds, cost = self.remote_estimate(tier, audio_seconds)
            if not self.breakers[tier].allows():
                log.info("router: %s skipped: circuit open after %d failures", tier, self.breakers[tier].failures)
                continue
            if spent + cost > budget:
                over_budget.append(f"{tier} (${cost:.3f}; ${spent:.2f} of ${budget:.2f} spent this month)")
                continue
            decision = Decision(
                tier,
                f"local would take about {local_s:.0f} s > deadline {deadline_seconds:.0f} s ({local_basis}); "
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
        plan = [*fits, *sorted(slow, key=lambda d: d.estimated_seconds), Decision(LOCAL, why_local, local_s, 0.0)]
        return plan

    def _fastest(self, remotes: list[str], audio_seconds: float, local_s: float, local_basis: str) -> list[Decision]:
        spent, budget = self.ledger.month_spend(), self.config.monthly_budget_usd
        options = [Decision(LOCAL, f"realtime: local about {local_s:.0f} s ({local_basis})", local_s, 0.0)]
        for tier in remotes:
            seconds, cost = self.remote_estimate(tier, audio_seconds)
            if spent + cost > budget or not self.breakers[tier].allows():
                continue
            options.append(Decision(tier, f"realtime: {tier} about {seconds:.0f} s for ${cost:.3f}", seconds, cost))
        options.sort(key=lambda d: (d.estimated_seconds, d.estimated_cost_usd))
        first = options[0]
        options[0] = Decision(first.tier, "fastest tier: " + first.reason, first.estimated_seconds, first.estimated_cost_usd)
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

    def _fallbacks(self, remotes: list[str], audio_seconds: float, reason: str) -> list[Decision]:
        out = []
        for tier in remotes:
            seconds, cost = self.remote_estimate(tier, audio_seconds)
            out.append(Decision(tier, reason, seconds, cost))
        return out

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


def run_routed(
    ctx: JobContext,
    router: Router | None,
    task: str,
    model: str,
    units: float,
    run_local: Callable[[], tuple[T, str]] | None,
    run_remote: Callable[[str], tuple[T, float | None]],
    cloud: tuple[str, str] = ("", ""),
) -> tuple[T, dict[str, Any]]:
    """Run a job on the tier the router picks, falling through its plan when a tier fails.

    `units` is what speed and price scale with (audio seconds in or out). `run_local()` returns
    (value, device); `run_remote(tier)` returns (value, cost in USD or None). The job's
    `deadline_seconds` / `deadline_class` args choose the plan; each decision is recorded on the
    job (`route`) and logged. Returns (value, {"tier", "device", "cost_usd"?, "model", "licence"}):
    the model that ran (a tier's own, when it runs one) and its licence. A cancel or a
    BadRequest (input no tier will accept) is not retried elsewhere.

    `run_local` None: the model has no local engine (`cloud`: what it is and its models key, for
    `cloud_only`'s message); local leaves the plan, and a plan left empty is Unavailable.
    """
    args = ctx.job.args
    if router is None:
        plan: list[Decision] = []
    else:
        realtime = args.get("deadline_class") == "realtime"
        plan = router.plan(task, model, units, args.get("deadline_seconds"), realtime=realtime)
    if run_local is None:
        offered = cloud_only(router, task, model, *cloud)
        plan = [decision for decision in plan if decision.tier != LOCAL]
        if not plan:
            raise Unavailable(f"{ctx.job.kind}: {cloud[0]} runs on {', '.join(offered)}, and none of them can take "
                              "a job now (circuit open after failures, or over router.monthly_budget_usd)")
    failures: list[str] = []
    errors: list[BridgeError] = []
    attempts: list[Decision | None] = [*plan] if plan else [None]  # None: run it here
    for decision in attempts:
        tier = LOCAL if decision is None else decision.tier
        if decision is not None:
            ctx.set_route({**decision.to_dict(), "failed": list(failures)})
            log.info("job %s -> %s: %s", ctx.job.id, tier, decision.reason)
        ctx.check_cancelled()
        started = time.monotonic()
        try:
            if tier == LOCAL:
                assert run_local is not None  # left out of the plan above
                value, device = run_local()
                if router is not None:
                    router.learn_local(task, model, units, time.monotonic() - started)
                    router.succeeded(LOCAL, None, ctx.job.id)
                return value, {"device": device, "tier": LOCAL, **describe(task, model)}
            value, cost = run_remote(tier)
            assert router is not None and decision is not None
            if cost is None:  # a tier that reports no price is charged what the router expected
                cost = decision.estimated_cost_usd
            router.succeeded(tier, cost, ctx.job.id)
            return value, {"device": tier, "tier": tier, "cost_usd": cost,
                           **describe(task, router.model_for(tier, task, model))}
        except (JobCanceled, BadRequest):
            raise
        except BridgeError as err:
            if router is not None:
                router.failed(tier)
            failures.append(f"{tier}: {err.code}: {err.message}")
            errors.append(err)
            log.warning("job %s: %s failed (%s); trying the next tier", ctx.job.id, tier, err.message)
    if len(errors) == 1:
        raise errors[0]  # the only tier there was: its own error (e.g. not_found for a missing model)
    raise Unavailable(f"{ctx.job.kind}: every tier failed: " + "; ".join(failures))


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
