"""Router decisions under deadlines, measured speed, tier health, budget and failures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge import router as router_module
from bridge.config import RouterConfig
from bridge.errors import Forbidden
from bridge.job_store import JobStore
from bridge.ledger import Ledger
from bridge.router import Router


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with JobStore(tmp_path / "jobs.sqlite3") as store:
        yield Ledger(store.database)


def router(ledger: Ledger, available: set[str] | None = None, **settings: object) -> Router:
    config = RouterConfig.model_validate(settings)
    return Router(config, {"selfhosted", "replicate", "huggingface"} if available is None else available, ledger, "cpu")


def test_background_jobs_and_jobs_local_can_meet_run_locally(ledger: Ledger) -> None:
    r = router(ledger)
    plan = r.plan("stems", "htdemucs", audio_seconds=300, deadline_seconds=None)
    assert plan[0].tier == "local" and "background" in plan[0].reason
    assert [d.tier for d in plan[1:]] == ["selfhosted", "replicate", "huggingface"]  # fallbacks
    plan = r.plan("stems", "htdemucs", audio_seconds=10, deadline_seconds=30)
    assert plan[0].tier == "local" and "meets the deadline" in plan[0].reason


def test_a_deadline_local_cannot_meet_goes_to_the_cheapest_tier_that_can(ledger: Ledger) -> None:
    r = router(ledger)
    # Five minutes of audio in 60 s: local ~300 s; selfhosted ~33 s $0.01, replicate ~85 s.
    plan = r.plan("stems", "htdemucs", audio_seconds=300, deadline_seconds=60)
    assert plan[0].tier == "selfhosted"
    assert "cheapest tier that meets the deadline" in plan[0].reason
    assert "local would take about 300 s" in plan[0].reason
    assert plan[0].estimated_cost_usd == pytest.approx(0.01)
    assert plan[-1].tier == "local"  # late rather than never
    # When the cheap tier is slower than the deadline, a dearer one that meets it wins.
    r2 = router(ledger, usd_per_audio_minute={"selfhosted": 0.5, "replicate": 0.01, "huggingface": 0.005})
    plan = r2.plan("stems", "htdemucs", audio_seconds=300, deadline_seconds=100)
    assert [d.tier for d in plan[:2]] == ["replicate", "selfhosted"]
    assert plan[2].tier == "huggingface"  # too slow for the deadline: after those that meet it


def test_measured_local_speed_changes_the_decision(ledger: Ledger) -> None:
    r = router(ledger)
    assert r.plan("stems", "htdemucs", 300, 60)[0].tier == "selfhosted"
    for _ in range(10):  # a fast machine: 0.1 s per audio second, measured
        r.learn_local("stems", "htdemucs", 100, 10)
    plan = r.plan("stems", "htdemucs", 300, 60)
    assert plan[0].tier == "local" and "measured" in plan[0].reason
    # Per model and device: another model is still unmeasured.
    assert r.plan("stems", "htdemucs_ft", 300, 60)[0].tier == "selfhosted"


class _Clock:
    """The router's `time`, moved on by the test: a breaker's pause is not a race with a busy machine."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_an_open_circuit_skips_a_tier_until_its_half_open_probe(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _Clock()
    monkeypatch.setattr(router_module, "time", clock)
    r = router(ledger, breaker_failures=2, breaker_open_seconds=0.2)
    r.failed("selfhosted")
    assert r.plan("stems", "htdemucs", 300, 100)[0].tier == "selfhosted"  # one failure: still closed
    r.failed("selfhosted")
    assert r.breakers["selfhosted"].state == "open"
    assert r.plan("stems", "htdemucs", 300, 100)[0].tier == "replicate"
    clock.now += 0.19
    assert r.breakers["selfhosted"].state == "open"
    clock.now += 0.02
    assert r.breakers["selfhosted"].state == "half_open"
    assert r.plan("stems", "htdemucs", 300, 100)[0].tier == "selfhosted"  # the probe
    assert r.plan("stems", "htdemucs", 300, 100)[0].tier == "replicate"  # one probe at a time
    r.succeeded("selfhosted", 0.01, "job1")
    assert r.breakers["selfhosted"].state == "closed"
    assert r.status()["tiers"]["selfhosted"] == {"circuit": "closed", "failures": 0}


def test_budget_falls_back_to_local_or_refuses(ledger: Ledger) -> None:
    ledger.add_spend("replicate", 9.999)
    r = router(ledger)
    plan = r.plan("stems", "htdemucs", 300, 60)
    assert plan[0].tier == "local" and "within budget" in plan[0].reason
    strict = router(ledger, over_budget="refuse")
    with pytest.raises(Forbidden, match="over-budget"):
        strict.plan("stems", "htdemucs", 300, 60)
    # A success adds its cost to the month's spend.
    generous = router(ledger, monthly_budget_usd=100.0)
    generous.succeeded("selfhosted", 0.5, "job2")
    assert ledger.month_spend() == pytest.approx(10.499)


def test_only_configured_tiers_are_considered(ledger: Ledger) -> None:
    r = router(ledger, available=set())
    plan = r.plan("stems", "htdemucs", 300, 60)
    assert [d.tier for d in plan] == ["local"] and "no other tier" in plan[0].reason


def test_tiers_that_do_not_offer_the_task_are_left_out(ledger: Ledger) -> None:
    config = RouterConfig()
    r = Router(config, {"selfhosted": frozenset({"stems"}), "huggingface": frozenset({"transcribe"})}, ledger, "cpu")
    assert [d.tier for d in r.plan("stems", "htdemucs", 300, None)] == ["local", "selfhosted"]


@pytest.mark.parametrize("task", ["stems", "generate", "transcribe", "tts"])
def test_every_task_is_planned_only_on_the_tiers_that_offer_it(ledger: Ledger, task: str) -> None:
    """Every tier listed in router.order for every task, each offering a different subset: a plan (in
    every deadline class) holds exactly the tiers that offer the task, in the configured order."""
    offered = {
        "selfhosted": frozenset({"stems", "transcribe"}),  # a server whose server.tasks lists these two
        "replicate": frozenset({"stems", "generate", "transcribe"}),
        "huggingface": frozenset({"generate"}),
        "workers_ai": frozenset({"transcribe", "tts"}),
    }
    config = RouterConfig.model_validate({"local_seconds_per_audio_second": {"cpu": 100.0}})
    r = Router(config, offered, ledger, "cpu")
    expected = [tier for tier in config.order[task] if tier != "local" and task in offered[tier]]
    for realtime, deadline in ((True, None), (False, 30.0), (False, None)):
        plan = [d.tier for d in r.plan(task, "m", 60, deadline, realtime=realtime)]
        assert sorted(plan) == sorted(["local", *expected]), (realtime, deadline, plan)
    background = [d.tier for d in r.plan(task, "m", 60, None)]
    assert background == ["local", *expected]  # fallbacks in router.order's order


def test_realtime_jobs_take_the_fastest_tier_within_budget(ledger: Ledger) -> None:
    r = router(ledger)
    plan = r.plan("stems", "htdemucs", 300, None, realtime=True)
    # selfhosted ~33 s, replicate ~85 s, huggingface ~120 s, local ~300 s (assumed).
    assert [d.tier for d in plan] == ["selfhosted", "replicate", "huggingface", "local"]
    assert plan[0].reason.startswith("fastest tier: realtime")
    for _ in range(3):
        r.learn_local("stems", "htdemucs", 100, 1)  # a GPU laptop: 0.01 s per audio second
    assert r.plan("stems", "htdemucs", 300, None, realtime=True)[0].tier == "local"


def test_config_defaults_point_each_tier_where_its_client_expects() -> None:
    from bridge.config import CloudConfig
    from engines.cloud import hf, replicate_client, workers_ai

    cloud = CloudConfig()
    assert cloud.huggingface_url == hf.DEFAULT_BASE_URL
    assert cloud.replicate_url == replicate_client.DEFAULT_BASE_URL
    assert cloud.workers_ai_url == workers_ai.DEFAULT_BASE_URL


def test_a_tier_that_does_not_offer_the_model_is_not_planned(ledger: Ledger) -> None:
    """The daemon hands the router each tier's `offers_model`; Replicate's runs Demucs' models only."""
    offers = {"replicate": lambda task, model: model in ("htdemucs", "htdemucs_ft")}
    config = RouterConfig.model_validate({"local_seconds_per_audio_second": {"cpu": 100.0}})
    r = Router(config, {"selfhosted", "replicate"}, ledger, "cpu", models=offers)
    assert [d.tier for d in r.plan("stems", "htdemucs", 60, None, realtime=True)][:1] == ["selfhosted"]
    assert "replicate" in [d.tier for d in r.plan("stems", "htdemucs", 60, 30)]
    for realtime, deadline in ((True, None), (False, 30.0), (False, None)):
        plan = r.plan("stems", "my-local-model", 60, deadline, realtime=realtime)
        assert "replicate" not in [d.tier for d in plan]
        assert plan[-1].tier == "local" or plan[0].tier == "local"


def test_spleeter_is_planned_on_this_machine_only(ledger: Ledger) -> None:
    """No tier runs Deezer's 2-stem weights: the real tiers, all configured, decline spleeter:2stems."""
    from bridge.config import Config
    from bridge.router import build_tiers

    config = Config.model_validate({
        "cloud": {"selfhosted_url": "https://stems.example.net", "server_token": "s", "replicate_token": "r",
                  "huggingface_token": "h", "huggingface_endpoint_url": "https://endpoint.example.net"},
        "router": {"local_seconds_per_audio_second": {"cpu": 100.0}},
    })
    tiers = build_tiers(config)
    assert set(tiers) == {"selfhosted", "replicate", "huggingface"}
    offered = {name: frozenset(tier.tasks) for name, tier in tiers.items()}
    r = Router(config.router, offered, ledger, "cpu", models={name: t.offers_model for name, t in tiers.items()})
    for realtime, deadline in ((True, None), (False, 30.0), (False, None)):
        assert [d.tier for d in r.plan("stems", "spleeter:2stems", 60, deadline, realtime=realtime)] == ["local"]
    assert {"selfhosted", "replicate"} <= {d.tier for d in r.plan("stems", "htdemucs", 60, 30.0)}


def test_the_hf_endpoint_is_planned_for_the_model_it_serves_only(ledger: Ledger) -> None:
    """The Endpoint runs Open-Unmix umxl (the default): a job for it may go there, and never to
    Replicate (Demucs only); an htdemucs or umxhq job never goes to the Endpoint."""
    from bridge.config import Config
    from bridge.router import build_tiers

    config = Config.model_validate({
        "cloud": {"selfhosted_url": "https://stems.example.net", "server_token": "s", "replicate_token": "r",
                  "huggingface_token": "h", "huggingface_endpoint_url": "https://endpoint.example.net"},
        "router": {"local_seconds_per_audio_second": {"cpu": 100.0}},
    })
    tiers = build_tiers(config)
    offered = {name: frozenset(tier.tasks) for name, tier in tiers.items()}
    r = Router(config.router, offered, ledger, "cpu", models={name: t.offers_model for name, t in tiers.items()})
    planned = {model: {d.tier for d in r.plan("stems", model, 60, 30.0)}
               for model in ("openunmix:umxl", "openunmix:umxhq", "htdemucs")}
    assert {"huggingface", "selfhosted", "local"} <= planned["openunmix:umxl"]
    assert "replicate" not in planned["openunmix:umxl"]
    assert "huggingface" not in planned["openunmix:umxhq"] and "huggingface" not in planned["htdemucs"]


def test_cloud_only_models_are_planned_on_the_tier_that_names_them_only(ledger: Ledger) -> None:
    """AudioGen, Riffusion, Chatterbox and RVC run on Replicate alone: with every real tier configured,
    no other tier says it runs them (they would answer with their own model), and the plan for each
    has Replicate as its only remote tier."""
    from bridge.config import Config
    from bridge.router import build_tiers

    config = Config.model_validate({
        "cloud": {"selfhosted_url": "https://stems.example.net", "server_token": "s", "replicate_token": "r",
                  "huggingface_token": "h", "workers_ai_token": "w", "workers_ai_account_id": "a"},
        "router": {"local_seconds_per_audio_second": {"cpu": 100.0}},
    })
    tiers = build_tiers(config)
    assert set(tiers) == {"selfhosted", "replicate", "huggingface", "workers_ai"}
    offered = {name: frozenset(tier.tasks) for name, tier in tiers.items()}
    r = Router(config.router, offered, ledger, "cpu", models={name: t.offers_model for name, t in tiers.items()})
    for task, model in (("generate", "audiogen"), ("generate", "riffusion"), ("tts", "chatterbox"),
                        ("voice", "https://voices.example.net/alto.zip")):
        assert r.remote_tiers(task, model) == ["replicate"], (task, model)
        for name, tier in tiers.items():
            assert tier.offers_model(task, model) == (name == "replicate"), (name, task, model)
    # And Replicate never takes a Piper voice's job: Chatterbox is the only voice it speaks with.
    assert "replicate" not in r.remote_tiers("tts", "en_US-lessac-medium")
    for tier in tiers.values():
        tier.close()
