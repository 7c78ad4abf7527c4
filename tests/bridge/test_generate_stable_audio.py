"""`generate model=stable-audio-open`: a real daemon runs a tiny random Stable Audio Open pipeline
(saved with save_pretrained, loaded through diffusers' own from_pretrained) at the song's tempo;
the same job routed to the Replicate fake's Stable Audio Open; `check_request`'s refusals."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from bridge.client import Client, RemoteError
from bridge.config import Config
from bridge.daw import DawState
from bridge.errors import BadRequest
from bridge.generate import check_request
from bridge.paths import PathPolicy
from bridge.testing import DaemonProcess, build_tiny_stable_audio
from tests.engines.cloud.fake_replicate import running_fake

OFFLINE = {"HF_HUB_OFFLINE": "1"}
TOKEN = "r8_sao_test_token_0123456789"
SAO_VERSION = "49b1d4f06f69989dd2c8252d455d2deebaa3c3e3e894694b8aed301c69e75913"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_stable_audio(tmp_path_factory.mktemp("sao") / "tiny")  # up to 4.096 s


def settings(tiny: Path) -> dict[str, Any]:
    return {"stable_audio_model": str(tiny), "stable_audio_steps": 4, "engine_device": "cpu"}


@pytest.fixture(scope="module")
def daemon(tiny: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(overrides={"generate": settings(tiny)}, env=OFFLINE).start()
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log()


def run(daemon: DaemonProcess, args: dict[str, Any]) -> dict[str, Any]:
    with Client(daemon.zmq_requests, timeout_seconds=30) as client:
        reply = client.call("generate", args)
        return client.wait_jobs([reply["id"]], lambda name, data: None, 120)[reply["id"]]


def test_stable_audio_open_makes_stereo_bars_at_the_tempo(daemon: DaemonProcess) -> None:
    outcome = run(daemon, {"model": "stable-audio-open", "prompt": "vinyl crackle loop", "bars": 2, "tempo": 120.0,
                           "seed": 3, "negative_prompt": "hiss", "steps": 3})
    assert outcome["event"] == "job.done", outcome
    result = outcome["result"]
    # 2 bars of 4/4 at 120 BPM = 4 s: 192000 frames at the daemon's 48 kHz, from the model's 8 kHz stereo.
    assert (result["bars"], result["seconds"], result["frames"], result["channels"]) == (2.0, 4.0, 192000, 2)
    assert (result["model"], result["tier"], result["device"]) == ("stable-audio-open", "local", "cpu")
    info = soundfile.info(result["path"])
    assert (info.samplerate, info.frames, info.channels) == (48000, 192000, 2)
    audio, _ = soundfile.read(result["path"], dtype="float32")
    assert np.abs(audio).max() > 0


def test_longer_than_the_model_can_make_is_refused_at_once_naming_the_limit(daemon: DaemonProcess) -> None:
    with Client(daemon.zmq_requests) as client, pytest.raises(RemoteError) as caught:
        client.call("generate", {"model": "stable-audio-open", "prompt": "drone", "bars": 4, "tempo": 120.0})
    assert caught.value.code == "bad_request"
    assert "bars 4 at 120 BPM" in str(caught.value) and "4.096" in str(caught.value)


def test_a_deadline_the_cpu_cannot_meet_runs_on_replicates_stable_audio_open(tiny: Path, tmp_path: Path) -> None:
    with running_fake(token=TOKEN) as (base_url, fake):
        overrides = {
            "generate": settings(tiny),
            "cloud": {"replicate_url": base_url},
            "router": {"local_seconds_per_audio_second": {"cpu": 100.0}},  # no deadline can be met here
        }
        process = DaemonProcess(overrides=overrides, workdir=tmp_path,
                                env={**OFFLINE, "REPLICATE_API_TOKEN": TOKEN}).start()
        try:
            outcome = run(process, {"model": "stable-audio-open", "prompt": "door creak", "seconds": 2.5, "seed": 5,
                                    "guidance_scale": 6.0, "deadline_seconds": 60})
        finally:
            assert process.stop() == 0, process.log()
        assert outcome["event"] == "job.done", outcome
        created = fake.seen("create")[-1]
    result = outcome["result"]
    assert result["tier"] == "replicate"
    assert created.path == "/v1/predictions" and created.body["version"].endswith(SAO_VERSION)
    assert created.body["input"] == {"prompt": "door creak", "seconds_total": 3, "seed": 5, "cfg_scale": 6.0}
    # Replicate's 44.1 kHz stereo comes back at the daemon's rate and the exact length asked.
    info = soundfile.info(result["path"])
    assert (info.samplerate, info.frames, info.channels) == (48000, 120000, 2)


# -- check_request on its own ------------------------------------------------------------------------


def _config(tmp_path: Path, **generate: Any) -> Config:
    return Config.model_validate({"paths": {"roots": [str(tmp_path)]}, "generate": generate})


def test_the_hub_model_allows_up_to_47_seconds_past_musicgens_30(tmp_path: Path) -> None:
    paths, daw = PathPolicy([tmp_path]), DawState()
    args = check_request({"prompt": "rain", "seconds": 47.0, "model": "stable-audio-open"}, paths,
                         _config(tmp_path), daw)
    assert (args["family"], args["seconds"]) == ("stable-audio-open", 47.0)
    with pytest.raises(BadRequest, match=r"argument 'seconds'.*\(0, 47\]"):
        check_request({"prompt": "rain", "seconds": 48.0, "model": "stable-audio-open"}, paths, _config(tmp_path), daw)
    # generate.model may name it too: then every request without a model is Stable Audio Open.
    args = check_request({"prompt": "rain", "seconds": 40.0}, paths, _config(tmp_path, model="stable-audio-open"), daw)
    assert args["family"] == "stable-audio-open"


@pytest.mark.parametrize(("args", "argument"), [
    ({"model": "stable-audio-open", "temperature": 1.2}, "'temperature'"),
    ({"model": "stable-audio-open", "top_k": 50}, "'top_k'"),
    ({"steps": 20}, "'steps'"),
    ({"negative_prompt": "noise"}, "'negative_prompt'"),
])
def test_options_of_the_other_model_are_refused_naming_the_argument(
    tmp_path: Path, args: dict[str, Any], argument: str
) -> None:
    with pytest.raises(BadRequest, match=argument):
        check_request({"prompt": "x", "seconds": 2.0, **args}, PathPolicy([tmp_path]), _config(tmp_path), DawState())


def test_doctor_says_where_stable_audio_open_would_load_from(tiny: Path, tmp_path: Path) -> None:
    from bridge.doctor import run_checks

    def row(**generate: Any) -> Any:
        return next(c for c in run_checks(_config(tmp_path, **generate), "test") if c.name == "stable audio open")

    found = row(stable_audio_model=str(tiny))
    assert found.state == "ok" and f"{tiny} (up to 4.1 s)" in found.detail
    # Missing weights only warn when generate.model asks for Stable Audio Open.
    assert row(stable_audio_model="flowstate-test/no-such-sao").state == "ok"
    missing = row(model="stable-audio-open", stable_audio_model=str(tmp_path / "nowhere"))
    assert missing.state == "warn" and "generate.stable_audio_model" in missing.detail
