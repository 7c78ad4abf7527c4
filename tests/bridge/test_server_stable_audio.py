"""Stable Audio Open on the self-hosted tier, for real: `flowstate serve` configured with
generate.model: stable-audio-open (a tiny random pipeline saved through diffusers' real format)
offers it, runs it through the daemon's own generate job code, and a daemon whose local engine is
too slow sends `generate model=stable-audio-open` there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import soundfile

from bridge.client import Client
from bridge.testing import DaemonProcess, build_tiny_stable_audio
from engines.cloud.base import TierJob
from engines.cloud.selfhosted import SelfHostedTier
from tests.bridge.test_server import TOKEN, ServerProcess, auth, no_cancel

OFFLINE = {"HF_HUB_OFFLINE": "1"}
pytestmark = pytest.mark.timeout(900)


def settings(tiny: Path) -> dict[str, Any]:
    return {"generate": {"model": "stable-audio-open", "stable_audio_model": str(tiny), "stable_audio_steps": 4,
                         "engine_device": "cpu"}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_stable_audio(tmp_path_factory.mktemp("sao") / "tiny-sao")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny: Path) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("server")
    config = {**settings(tiny), "server": {"tasks": ["generate"]}}
    process = ServerProcess(workdir, workdir / "no-demucs", settings=config, env=OFFLINE).start()
    try:
        yield process
    finally:
        code = process.stop()
        assert code == 0, f"server exited with {code} after SIGTERM:\n{process.log()}"


@pytest.fixture
def tier(server: ServerProcess) -> Iterator[SelfHostedTier]:
    client = SelfHostedTier(server.url, TOKEN, poll_seconds=0.1)
    yield client
    client.close()


def test_the_server_offers_stable_audio_open_and_nothing_else_for_generate(server: ServerProcess,
                                                                           tier: SelfHostedTier) -> None:
    body = httpx.get(f"{server.url}/v1/health", timeout=5).json()
    assert body["tasks"] == ["generate"] and body["models"] == {"generate": "stable-audio-open"}
    assert tier.offers_model("generate", "stable-audio-open")
    assert not tier.offers_model("generate", "facebook/musicgen-small")


def test_stable_audio_open_runs_through_the_tier(tier: SelfHostedTier, server: ServerProcess, tmp_path: Path) -> None:
    params = {"prompt": "metal door slam", "duration_seconds": 1.5, "seed": 4, "steps": 3,
              "negative_prompt": "hiss", "guidance_scale": 5.0, "model_family": "stable-audio-open"}
    fractions: list[float] = []
    result = tier.run(TierJob("generate", params, tmp_path / "w", audio_seconds=1.5), fractions.append, no_cancel)
    info = soundfile.info(str(result.outputs["audio"]))
    # The daemon's own job code ran on the server: its rate, length and the model's two channels.
    assert (info.samplerate, info.frames, info.channels) == (48000, 72000, 2)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    job = httpx.get(f"{server.url}/v1/jobs/{result.details['job_id']}", headers=auth(), timeout=5).json()
    assert (job["result"]["model"], job["result"]["seed"]) == ("stable-audio-open", 4)


def test_a_length_past_the_models_limit_is_a_400_naming_it(server: ServerProcess) -> None:
    refused = httpx.post(f"{server.url}/v1/jobs", headers=auth(), timeout=10, files={
        "task": (None, "generate"), "params": (None, '{"prompt": "x", "duration_seconds": 9}')})
    assert refused.status_code == 400 and "seconds" in refused.json()["error"]["message"]


def test_the_daemon_sends_stable_audio_open_to_the_server_when_local_is_too_slow(
        server: ServerProcess, tiny: Path, tmp_path: Path) -> None:
    overrides = {**settings(tiny), "cloud": {"selfhosted_url": server.url},
                 "router": {"local_seconds_per_audio_second": {"cpu": 100.0}}}
    with DaemonProcess(overrides=overrides, workdir=tmp_path,
                       env={**OFFLINE, "FLOWSTATE_SERVER_TOKEN": TOKEN}) as daemon:
        with Client(daemon.zmq_requests, timeout_seconds=30) as client:
            reply = client.call("generate", {"model": "stable-audio-open", "prompt": "vinyl loop", "bars": 1,
                                             "tempo": 120.0, "seed": 2, "deadline_seconds": 30})
            outcome = client.wait_jobs([reply["id"]], lambda name, data: None, 180)[reply["id"]]
    assert outcome["event"] == "job.done", outcome
    assert outcome["result"]["tier"] == "selfhosted"
    info = soundfile.info(outcome["result"]["path"])
    assert (info.samplerate, info.frames, info.channels) == (48000, 96000, 2)  # 1 bar of 4/4 at 120 BPM
