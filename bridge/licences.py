"""Licences travel with outputs: which models a job runs, whether the project may use them, and
what its result says of them.

The facts (each model's licence) are the catalogue's (`engines/catalogue.py`); the policy is the
config's `project` section. A project marked commercial refuses, at request time, a job whose model
forbids commercial use (`forbidden`, naming the model and the licence), and the router plans no
cloud tier whose own model does (`licensed_offers`). Every job's result carries `model` and `licence`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from bridge.config import Config, ProjectConfig
from bridge.errors import Forbidden
from engines.catalogue import Found, licence_of
from engines.cloud.base import Tier

log = logging.getLogger(__name__)


def job_models(kind: str, args: dict[str, Any], config: Config) -> list[tuple[str, str]]:
    """(task, model) of every model a job with these (checked) args will run locally."""
    if kind == "stems.separate":
        return [("stems", str(args["model"]))]
    if kind == "generate":
        return [("generate", str(args["model"]))]
    if kind == "transcribe":
        models = [("transcribe", str(args["model"]))]
        if args.get("stem"):  # the lyrics chain separates first, with separate.model
            models.insert(0, ("stems", config.separate.model))
        return models
    if kind == "tts":
        return [("tts", str(args["voice"]))]
    if kind == "samples.index":
        models = [("embed", config.samples.model)]
        if config.samples.clap:
            models.append(("embed", config.samples.clap_model))
        if config.samples.audio_tags:
            models.append(("tag", config.classify.audio_model))
        return models
    if kind == "classify.audio":  # not a job, but the same policy: a request that runs a model
        return [("tag", config.classify.audio_model)]
    if kind == "voice.convert":  # the voice model's terms are what the output's use depends on
        return [("voice", str(args["voice"]))]
    return []


def refusal(kind: str, task: str, model: str, project: ProjectConfig, where: str = "") -> str | None:
    """Why a commercial project may not run `model` (None: it may, or the project is not commercial)."""
    if not project.commercial:
        return None
    found = licence_of(model, task)
    on = f" on {where}" if where else ""
    if not found.known:
        log.warning("%s: model %s%s is not in the model catalogue: its licence is unknown (project.commercial)",
                    kind, model, on)
        if project.unknown_licences == "refuse":
            return (f"{kind}: model {model}{on} is not in the model catalogue, so its licence is unknown; this "
                    "project is marked commercial (project.commercial) and refuses unknown licences "
                    "(project.unknown_licences)")
        return None
    if found.licence.commercial_use:
        return None
    return (f"{kind}: model {model}{on}: its weights are {found.licence.id} (non-commercial: "
            f"{found.licence.url}); this project is marked commercial (project.commercial)")


def check_job(kind: str, args: dict[str, Any], config: Config) -> None:
    """Forbidden when the project is commercial and a model the job runs forbids that."""
    for task, model in job_models(kind, args, config):
        why = refusal(kind, task, model, config.project)
        if why is not None:
            raise Forbidden(why)


def describe(task: str, model: str) -> dict[str, Any]:
    """What a job's result says of the model it ran: {"model", "licence": {id, name, url, commercial_use}}."""
    found: Found = licence_of(model, task)
    return {"model": model, "licence": found.licence.to_dict()}


def licensed_offers(tier: Tier, project: ProjectConfig) -> Callable[[str, str], bool]:
    """`tier.offers_model`, narrowed: False too when the model the tier would run for the job is
    one a commercial project refuses (so the router never sends it there)."""

    def offers(task: str, model: str) -> bool:
        if not tier.offers_model(task, model):
            return False
        ran = tier.model_for(task, model)
        why = refusal(task, task, ran, project, where=tier.name)
        if why is not None:
            log.info("router: %s left out of the plan: %s", tier.name, why)
            return False
        return True

    return offers
