"""Where the text embeddings of `classify` (method=embeddings) and `samples.search` queries run: the
local sentence-transformers model (`samples.model`) or BGE on Workers AI, chosen by `samples.tier`.

- `local`: this machine, always.
- `workers_ai`: Workers AI, always. `classify` embeds its text and labels in one request, so any BGE
  there will do (the result names the one that ran); a search compares the query with the library's
  vectors, so Workers AI must run the model that indexed the library, else `unavailable` naming both.
- `auto`: local when the model is here (loaded, a folder, or in the hub cache); otherwise Workers AI
  when it is configured and runs the same model as `samples.model`; whichever runs first, the other
  is its fallback when it fails. Auto never changes which model answers.

Indexing always runs locally. The same model: Workers AI's `@cf/baai/bge-small-en-v1.5` is the
catalogue name of BAAI's released `BAAI/bge-small-en-v1.5` (likewise -base and -large). Local
sentence-transformers reads BGE with CLS pooling and L2 normalisation; Workers AI pools with the mean
unless asked, so every request asks for `pooling: cls` and the vectors are normalised here. That is
all that can be checked offline: no test here compares the two services' numbers.

Every cloud call goes through the tier interface (`engines.cloud.base.Tier`) and the router's
circuit breaker and spend ledger: its price (bge-small $0.020 per million tokens) is recorded like
any other tier call, and the month's budget (`router.monthly_budget_usd`) applies.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bridge.config import Config
from bridge.errors import BadRequest, BridgeError, Forbidden, Unavailable
from bridge.licences import describe
from bridge.router import LOCAL, Router
from engines.cloud.base import Tier, TierJob
from engines.cloud.http import never_cancelled
from engines.cloud.workers_ai import EMBED_POOLING, MAX_EMBED_TEXTS, WorkersAITier, bge_model_for
from engines.embeddings import TextEmbedder, available_source, check_classify, rank

log = logging.getLogger(__name__)

TASK = "embed"
WORKERS_AI = "workers_ai"


class EmbeddingTiers:
    """Runs classify's and search's text embeddings where `samples.tier` says (see the module docstring).

    `local` returns the local engine (built on first use); `local_loaded` says whether it is loaded.
    """

    def __init__(self, config: Config, router: Router | None, tiers: dict[str, Tier] | None,
                 local: Callable[[], TextEmbedder], local_loaded: Callable[[], bool]) -> None:
        self.settings = config.samples
        self.budget_usd = config.router.monthly_budget_usd
        self.model_id = self.settings.model.strip()
        self.router = router
        self.tiers = dict(tiers or {})
        self._local = local
        self._local_loaded = local_loaded

    # -- requests ----------------------------------------------------------------------------------

    def classify(self, text: str, labels: Sequence[str]) -> tuple[list[tuple[str, float]], dict[str, Any]]:
        """Labels ranked by cosine similarity to `text`, and where it ran: {"tier", "model", "licence", ...}."""
        text, cleaned = check_classify(text, labels)

        def remote() -> tuple[list[tuple[str, float]], float]:
            vectors, cost = self._remote_embed("classify", [text, *cleaned])
            return rank(cleaned, vectors[1:], vectors[0]), cost

        return self._run("classify", False, lambda: self._local().classify(text, cleaned), remote)

    def query(self, text: str) -> tuple[np.ndarray, dict[str, Any]]:
        """A search query's unit vector, comparable with the library's (embedded by `samples.model`)."""
        return self._run("samples.search", True, lambda: self._local().encode([text])[0],
                         lambda: _first(self._remote_embed("samples.search", [text])))

    # -- the plan ----------------------------------------------------------------------------------

    def remote_model(self) -> str | None:
        """The BGE Workers AI runs for embeddings here, or None when it is not configured (or the
        project's licence policy or `router.order.embed` leaves it out)."""
        if self.router is None or WORKERS_AI not in self.tiers:
            return None
        if WORKERS_AI not in self.router.remote_tiers(TASK, self.model_id):
            return None
        return self.router.model_for(WORKERS_AI, TASK, self.model_id)

    def plan(self, command: str, same_model: bool) -> list[str]:
        """The tiers to try in order; `same_model`: the cloud must run `samples.model` itself."""
        chosen = self.settings.tier
        if chosen == LOCAL:
            return [LOCAL]
        remote = self.remote_model()
        matches = remote is not None and remote == bge_model_for(self.model_id)
        if chosen == WORKERS_AI:
            if remote is None:
                raise Unavailable(
                    f"{command}: samples.tier is workers_ai but Workers AI is not configured: set "
                    "CLOUDFLARE_API_TOKEN and CLOUDFLARE_ACCOUNT_ID (or cloud.workers_ai_token and "
                    "cloud.workers_ai_account_id) and keep workers_ai in router.order.embed, or set samples.tier "
                    "to local or auto")
            if same_model and not matches:
                raise Unavailable(
                    f"{command}: the library was embedded by {self.model_id!r} and Workers AI runs {remote!r}; "
                    "their vectors cannot be compared. Set samples.model to BAAI/bge-small-en-v1.5 (or -base, "
                    "-large) and run samples.index again, or set samples.tier to local")
            return [WORKERS_AI]
        if not matches:
            return [LOCAL]
        return [LOCAL, WORKERS_AI] if self._local_present() else [WORKERS_AI, LOCAL]

    def _local_present(self) -> bool:
        return self._local_loaded() or available_source(self.model_id, self.settings.model_dir) is not None

    def _run(self, command: str, same_model: bool, local: Callable[[], Any],
             remote: Callable[[], tuple[Any, float]]) -> tuple[Any, dict[str, Any]]:
        """The first tier of the plan that answers: (value, where it ran). Bad input is not retried
        elsewhere; when every tier fails, the error lists each one."""
        failed: list[str] = []
        errors: list[BridgeError] = []
        for tier in self.plan(command, same_model):
            try:
                if tier == LOCAL:
                    where: dict[str, Any] = {"tier": LOCAL, **describe(TASK, self.model_id)}
                    value = local()
                else:
                    value, cost = remote()
                    where = {"tier": tier, "cost_usd": cost, **describe(TASK, self.remote_model() or "")}
            except BadRequest:
                raise
            except BridgeError as err:
                failed.append(f"{tier}: {err.code}: {err.message}")
                errors.append(err)
                log.warning("%s: embeddings on %s failed (%s); trying the next tier", command, tier, err.message)
                continue
            return value, {**where, "failed": failed} if failed else where
        if len(errors) == 1:
            raise errors[0]
        raise Unavailable(f"{command}: every embeddings tier failed: " + "; ".join(failed))

    # -- Workers AI --------------------------------------------------------------------------------

    def _remote_embed(self, command: str, texts: list[str]) -> tuple[np.ndarray, float]:
        """Unit vectors of `texts` from Workers AI (at most MAX_EMBED_TEXTS a request), and their cost."""
        router, tier = self.router, self.tiers[WORKERS_AI]
        assert router is not None  # plan() only names the tier when the router knows it
        breaker = router.breakers[WORKERS_AI]
        rows: list[list[float]] = []
        total = 0.0
        with tempfile.TemporaryDirectory(prefix="flowstate-embed-") as work:
            for start in range(0, len(texts), MAX_EMBED_TEXTS):
                chunk = texts[start:start + MAX_EMBED_TEXTS]
                job = TierJob(TASK, {"text": chunk, "pooling": EMBED_POOLING},
                              Path(work), deadline_seconds=self.settings.tier_deadline_seconds)
                estimated = _estimated_cost(tier, chunk)
                spent = router.ledger.month_spend()
                if spent + estimated > self.budget_usd:
                    raise Forbidden(f"{command}: Workers AI would cost ${estimated:.2g}, and ${spent:.4g} of "
                                    f"router.monthly_budget_usd (${self.budget_usd:.4g}) is spent this month")
                if not breaker.allows():
                    raise Unavailable(f"{command}: Workers AI's circuit is open after {breaker.failures} failures "
                                      "in a row; it is tried again after router.breaker_open_seconds")
                try:
                    result = tier.run(job, _no_progress, never_cancelled)
                    data = result.data
                    if data.get("pooling") != EMBED_POOLING:
                        raise Unavailable(f"{command}: Workers AI answered with {data.get('pooling')!r} pooling, "
                                          f"not {EMBED_POOLING!r}: its vectors would not match the local model's")
                except BadRequest:
                    breaker.success()  # the input was refused, the tier itself is fine
                    raise
                except BridgeError:
                    router.failed(WORKERS_AI)
                    raise
                cost = result.cost_usd if result.cost_usd is not None else estimated
                router.succeeded(WORKERS_AI, cost, None)  # the spend ledger, like every tier call
                rows.extend(data["data"])
                total += cost
        vectors = np.asarray(rows, np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12), total


def _estimated_cost(tier: Tier, texts: list[str]) -> float:
    """What a request of `texts` would cost, checked against the month's budget before it is sent."""
    cost = tier.embed_cost(texts) if isinstance(tier, WorkersAITier) else None
    return float(cost or 0.0)


def _first(embedded: tuple[np.ndarray, float]) -> tuple[np.ndarray, float]:
    vectors, cost = embedded
    return vectors[0], cost


def _no_progress(fraction: float) -> None:
    """An embedding is one short request: nobody follows its progress."""
