"""The models only a cloud tier runs, through a real daemon's wires against the fake Replicate:
`generate model=audiogen|riffusion`, `tts voice=chatterbox` with a voice prompt, `voice.convert`.
Each result names its model and licence; bad input is refused at once; a commercial project
refuses the non-commercial ones; a daemon without a Replicate token says what to configure."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from bridge.client import Client, RemoteError
from bridge.testing import DaemonProcess
from engines.cloud.replicate_models import DEFAULT_MODELS
from tests.conftest import OscUdp
from tests.engines.cloud.fake_replicate import FakeReplicate, running_fake

TOKEN = "r8_cloud_models_test_token_0123456789"
OFFLINE = {"HF_HUB_OFFLINE": "1"}
VOICE_URL = "https://voices.example.net/models/alto%20v2.zip"


@pytest.fixture(scope="module")
def cloud() -> Iterator[tuple[DaemonProcess, FakeReplicate]]:
    with running_fake(token=TOKEN) as (base_url, fake):
        daemon = DaemonProcess(overrides={"cloud": {"replicate_url": base_url}},
                               env={**OFFLINE, "REPLICATE_API_TOKEN": TOKEN}).start()
        try:
            yield daemon, fake
        finally:
            assert daemon.stop() == 0, daemon.log()


@pytest.fixture
def daemon(cloud: tuple[DaemonProcess, FakeReplicate]) -> DaemonProcess:
    cloud[1].reset()
    return cloud[0]


@pytest.fixture
def fake(cloud: tuple[DaemonProcess, FakeReplicate], daemon: DaemonProcess) -> FakeReplicate:
    return cloud[1]


def files(daemon: DaemonProcess) -> Path:
    return daemon.workdir / "files"


def clip(path: Path, seconds: float = 1.0, sample_rate: int = 22050) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    soundfile.write(path, (0.4 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32), sample_rate, subtype="PCM_16")
    return path


def run(daemon: DaemonProcess, command: str, args: dict[str, Any]) -> dict[str, Any]:
    with Client(daemon.zmq_requests, timeout_seconds=30) as client:
        reply = client.call(command, args)
        return client.wait_jobs([reply["id"]], lambda name, data: None, 120)[reply["id"]]


def refused(daemon: DaemonProcess, command: str, args: dict[str, Any]) -> RemoteError:
    with Client(daemon.zmq_requests) as client, pytest.raises(RemoteError) as caught:
        client.call(command, args)
    return caught.value


def test_audiogen_makes_a_sound_effect_at_the_daws_rate(daemon, fake):
    outcome = run(daemon, "generate", {"model": "audiogen", "prompt": "glass shatter", "seconds": 2.5,
                                       "guidance_scale": 4.0})
    assert outcome["event"] == "job.done", outcome
    result = outcome["result"]
    assert (result["tier"], result["model"]) == ("replicate", DEFAULT_MODELS["audiogen"])
    assert result["licence"]["id"] == "CC-BY-NC-4.0" and result["licence"]["commercial_use"] is False
    assert fake.seen("create")[0].body["input"] == {"prompt": "glass shatter", "duration": 2.5, "output_format": "wav",
                                                    "classifier_free_guidance": 4}
    info = soundfile.info(result["path"])
    assert (info.samplerate, info.frames) == (48000, 120000)  # AudioGen's 16 kHz, at the daemon's rate


def test_riffusion_fills_bars_that_fit_in_its_one_clip(daemon, fake):
    outcome = run(daemon, "generate", {"model": "riffusion", "prompt": "jazzy rhodes", "bars": 2, "tempo": 120.0,
                                       "steps": 30})
    assert outcome["event"] == "job.done", outcome
    result = outcome["result"]
    assert result["model"] == DEFAULT_MODELS["riffusion"] and result["licence"]["commercial_use"] is True
    assert fake.seen("create")[0].body["input"] == {"prompt_a": "jazzy rhodes", "num_inference_steps": 30}
    info = soundfile.info(result["path"])
    assert (info.frames, info.channels) == (4 * 48000, 2)  # 2 bars at 120 BPM: 4 s of its ~5 s clip


@pytest.mark.parametrize(("args", "words"), [
    ({"model": "riffusion", "prompt": "x", "bars": 4, "tempo": 120.0}, "Riffusion's one clip"),
    ({"model": "audiogen", "prompt": "x", "seconds": 12.0}, "AudioGen's longest sound"),
    ({"model": "riffusion", "prompt": "x", "seconds": 2.0, "temperature": 1.1}, "'temperature'"),
    ({"model": "audiogen", "prompt": "x", "seconds": 2.0, "melody_path": "tune.wav"}, "'melody_path'"),
])
def test_what_a_cloud_model_cannot_make_is_refused_at_once(daemon, fake, args, words):
    error = refused(daemon, "generate", args)
    assert error.code == "bad_request" and words in error.message
    assert fake.requests == []


def test_chatterbox_speaks_like_the_voice_prompt_uploaded_through_the_files_api(daemon, fake):
    prompt = clip(files(daemon) / "voices" / "me.wav", seconds=10.0, sample_rate=16000)  # 320 kB: past inline
    outcome = run(daemon, "tts", {"text": "Drop the beat right here.", "voice": "chatterbox",
                                  "voice_prompt": str(prompt), "exaggeration": 0.9})
    assert outcome["event"] == "job.done", outcome
    result = outcome["result"]
    assert (result["tier"], result["model"]) == ("replicate", DEFAULT_MODELS["chatterbox"])
    assert result["licence"]["id"] == "MIT" and result["voice_prompt"] == str(prompt)
    assert len(fake.seen("upload")) == 1
    sent = fake.seen("create")[0].body["input"]
    assert sent["audio_prompt"].startswith(f"{fake.base_url}/v1/files/") and sent["exaggeration"] == 0.9
    assert soundfile.info(result["path"]).samplerate == 48000


@pytest.mark.parametrize(("args", "code", "words"), [
    ({"voice_prompt": "/etc/passwd"}, "forbidden", "voice_prompt"),
    ({"voice_prompt": "voices/nobody.wav"}, "not_found", "no such file"),
    ({"voice_prompt": "voices/not-audio.wav"}, "bad_request", "not an audio file"),
    ({"voice": "en_US-joe-medium", "voice_prompt": "voices/not-audio.wav"}, "bad_request", "'voice_prompt' applies"),
    ({"speed": 1.5}, "bad_request", "'speed'"),
])
def test_bad_chatterbox_requests_are_refused_naming_the_problem(daemon, fake, args, code, words):
    (files(daemon) / "voices").mkdir(exist_ok=True)
    (files(daemon) / "voices" / "not-audio.wav").write_text("not audio")
    request = {"text": "hello", "voice": "chatterbox", **args}
    if "voice_prompt" in args and not args["voice_prompt"].startswith("/"):
        request["voice_prompt"] = str(files(daemon) / args["voice_prompt"])
    error = refused(daemon, "tts", request)
    assert error.code == code and words in error.message, error.message
    assert fake.requests == []


def test_voice_convert_over_osc_writes_the_converted_vocal_next_to_the_clip(daemon, fake):
    vocal = clip(files(daemon) / "session" / "lead vocal.wav", seconds=1.5)
    osc = OscUdp(daemon.osc_udp)
    try:
        reply = osc.request("/flow/voice/convert", str(vocal), VOICE_URL, -2.0)
        assert reply.address == "/flow/reply/voice/convert", reply.params
        job_id = reply.params[0]
        done = osc.receive(60.0)
        while not (done.address in ("/flow/event/job/done", "/flow/event/job/failed") and done.params[0] == job_id):
            done = osc.receive(60.0)
    finally:
        osc.close()
    assert done.address == "/flow/event/job/done", done.params


    result = json.loads(done.params[1])
    assert result["kind"] == "voice.convert" and result["tier"] == "replicate"
    assert result["path"] == str(vocal.parent / "lead vocal - alto v2.wav")
    assert result["model"] == VOICE_URL and result["licence"]["id"] == "unknown"  # your own voice: its own terms
    sent = fake.seen("create")[0].body["input"]
    assert (sent["rvc_model"], sent["custom_rvc_model_download_url"], sent["pitch_change_all"]) == (
        "CUSTOM", VOICE_URL, -2.0)
    info = soundfile.info(result["path"])
    assert (info.samplerate, info.frames) == (22050, int(1.5 * 22050))  # back at the clip's rate and length


def test_a_failed_conversion_fails_the_job_with_the_providers_error(daemon, fake):
    fake.reset(fail_with="voice model zip has no .pth file")
    vocal = clip(files(daemon) / "take.wav")
    outcome = run(daemon, "voice.convert", {"path": str(vocal), "voice": "Obama"})
    assert outcome["event"] == "job.failed" and outcome["code"] == "unavailable"
    assert "no .pth file" in outcome["message"]
    assert not (files(daemon) / "take - Obama.wav").exists()


def test_a_malformed_conversion_fails_the_job(daemon, fake):
    fake.reset(malformed_output=True)
    outcome = run(daemon, "voice.convert", {"path": str(clip(files(daemon) / "take2.wav")), "voice": "Obama"})
    assert outcome["event"] == "job.failed" and "RVC output is dict" in outcome["message"]


@pytest.mark.parametrize(("args", "code", "words"), [
    ({"path": "/etc/hosts", "voice": "Obama"}, "forbidden", "path"),
    ({"path": "missing.wav", "voice": "Obama"}, "not_found", "no such file"),
    ({"path": "take3.wav", "voice": "http://voices.example.net/a.zip"}, "bad_request", "https URL"),
    ({"path": "take3.wav", "voice": "../../etc"}, "bad_request", "'voice'"),
    ({"path": "take3.wav", "voice": "Obama", "pitch": 30.0}, "bad_request", "pitch"),
])
def test_bad_voice_convert_requests_are_refused_at_once(daemon, fake, args, code, words):
    clip(files(daemon) / "take3.wav")
    request = {**args, "path": args["path"] if args["path"].startswith("/") else str(files(daemon) / args["path"])}
    error = refused(daemon, "voice.convert", request)
    assert error.code == code and words in error.message, error.message
    assert fake.requests == []


# -- a commercial project without a Replicate token ---------------------------------------------------


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    env = {**OFFLINE, "FLOWSTATE_PROJECT_COMMERCIAL": "true"}
    daemon = DaemonProcess(workdir=tmp_path_factory.mktemp("bare"), env=env).start()
    try:
        yield daemon
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_a_commercial_project_refuses_non_commercial_cloud_models(bare):
    error = refused(bare, "generate", {"model": "audiogen", "prompt": "rain", "seconds": 2.0})
    assert error.code == "forbidden" and "CC-BY-NC-4.0" in error.message
    vocal = clip(files(bare) / "take.wav")
    error = refused(bare, "voice.convert", {"path": str(vocal), "voice": "Obama"})
    assert error.code == "forbidden" and "LicenseRef-RVC-shipped-voices" in error.message


@pytest.mark.parametrize(("command", "args"), [
    ("tts", {"text": "hello", "voice": "chatterbox"}),
    ("generate", {"model": "riffusion", "prompt": "rain", "seconds": 2.0}),
    ("voice.convert", {"voice": VOICE_URL}),
])
def test_without_a_replicate_token_cloud_models_are_unavailable_naming_what_to_set(bare, command, args):
    if command == "voice.convert":
        args = {**args, "path": str(clip(files(bare) / "take.wav"))}
    error = refused(bare, command, args)
    assert error.code == "unavailable" and "REPLICATE_API_TOKEN" in error.message, error.message
    with Client(bare.zmq_requests) as client:
        assert client.call("ping", {})["reply"] == "pong"  # and it keeps serving
