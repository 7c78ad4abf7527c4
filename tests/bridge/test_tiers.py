"""A running daemon routes a stems job it cannot finish in time to the self-hosted tier.

The self-hosted server runs for real (`flowstate serve` in a subprocess, a tiny model); the daemon
believes its own CPU is slow (router prior), so a job with a deadline must go elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import soundfile
import yaml

from bridge.client import Client
from bridge.testing import DaemonProcess, free_port, tiny_htdemucs_repo
from tests.bridge.test_separate import write_audio

TOKEN = "test-server-token-1234"
STEMS = ["drums", "bass", "other", "vocals"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_htdemucs_repo(tmp_path_factory.mktemp("models"), depth=3)


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`flowstate serve` on a free loopback port; yields its base URL."""
    folder = tmp_path_factory.mktemp("server")
    port = free_port()
    config = {
        "models": {"demucs_repo": str(repo)},
        "separate": {"model": "tiny", "engine_device": "cpu", "threads": 1},
        "jobs": {"database": str(folder / "jobs.sqlite3")},
        "server": {"data_dir": str(folder / "data"), "host": "127.0.0.1", "port": port},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
    log = (folder / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve", "--config", str(folder / "config.yaml")],
        env={**env, "FLOWSTATE_SERVER_TOKEN": TOKEN}, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert process.poll() is None, (folder / "server.log").read_text()
        assert time.monotonic() < deadline, "flowstate serve did not come up"
        time.sleep(0.2)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()
        assert TOKEN not in (folder / "server.log").read_text()


def _daemon(repo: Path, tmp_path: Path, cloud: dict[str, Any], router: dict[str, Any],
            env: dict[str, str]) -> DaemonProcess:
    overrides = {
        "models": {"demucs_repo": str(repo)},
        "separate": {"model": "tiny", "engine_device": "cpu", "threads": 1},
        "cloud": cloud,
        # This machine claims to need 100 s per second of audio: no deadline can be met locally.
        "router": {"local_seconds_per_audio_second": {"cpu": 100.0}, **router},
    }
    return DaemonProcess(overrides=overrides, workdir=tmp_path, env=env).start()


def _separate(process: DaemonProcess, source: Path, deadline: float | None) -> tuple[dict[str, Any], dict[str, Any]]:
    with Client(process.zmq_requests, timeout_seconds=30) as client:
        args: dict[str, Any] = {"path": str(source)}
        if deadline is not None:
            args["deadline_seconds"] = deadline
        job_id = client.call("stems.separate", args)["id"]
        final = client.wait_jobs([job_id], lambda *_: None, 120)[job_id]
        status = client.call("job.status", {"id": job_id})
    return final, status


def test_a_job_local_cannot_finish_in_time_runs_on_the_self_hosted_tier(
    repo: Path, server: str, tmp_path: Path
) -> None:
    process = _daemon(repo, tmp_path, {"selfhosted_url": server}, {}, {"FLOWSTATE_SERVER_TOKEN": TOKEN})
    try:
        source = write_audio(tmp_path / "files" / "set" / "song.wav", 2.0, sample_rate=48000)
        final, status = _separate(process, source, deadline=30)
        background, bg_status = _separate(process, write_audio(tmp_path / "files" / "set" / "later.wav", 1.0), None)
    finally:
        assert process.stop() == 0
    assert final["event"] == "job.done", final
    result = final["result"]
    assert result["tier"] == "selfhosted"
    route = status["route"]
    assert route["tier"] == "selfhosted" and "cheapest tier that meets the deadline" in route["reason"]
    assert "local would take about 200 s > deadline 30 s" in route["reason"]
    assert route["estimated_seconds"] > 0 and route["estimated_cost_usd"] > 0
    # The stems land exactly where a local job puts them, in the same format and length.
    for stem in STEMS:
        path = source.parent / "stems" / "song" / f"{stem}.wav"
        assert result["paths"][stem] == str(path)
        info = soundfile.info(str(path))
        assert (info.samplerate, info.frames, info.subtype) == (48000, 96000, "PCM_24")
    # Without a deadline the same daemon keeps the job at home.
    assert background["event"] == "job.done" and background["result"]["tier"] == "local"
    assert "background job" in bg_status["route"]["reason"]
    assert "selfhosted" in process.log() and TOKEN not in process.log()
    # The tier reports no price, so the month's spend grows by what the router expected.
    assert result["cost_usd"] == pytest.approx(route["estimated_cost_usd"], abs=1e-4)


def test_a_failing_tier_falls_through_to_the_next(repo: Path, server: str, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    # The Endpoint says it serves the job's model, so the router plans it (first).
    cloud = {"selfhosted_url": server, "huggingface_endpoint_url": dead, "huggingface_models": {"stems": "tiny"}}
    router = {
        "order": {"stems": ["local", "huggingface", "selfhosted"]},
        # Make the dead tier the router's first choice.
        "usd_per_audio_minute": {"huggingface": 0.0001, "selfhosted": 0.002},
        "overhead_seconds": {"huggingface": 1.0, "selfhosted": 3.0},
    }
    env = {"FLOWSTATE_SERVER_TOKEN": TOKEN, "HF_TOKEN": "hf_test_token_abcdef"}
    process = _daemon(repo, tmp_path, cloud, router, env)
    try:
        source = write_audio(tmp_path / "files" / "fall" / "take.wav", 1.0)
        final, status = _separate(process, source, deadline=60)
    finally:
        assert process.stop() == 0
    assert final["event"] == "job.done", final
    assert final["result"]["tier"] == "selfhosted"
    assert status["route"]["tier"] == "selfhosted"
    [failure] = status["route"]["failed"]
    assert failure.startswith("huggingface: unavailable") and "cannot reach the provider" in failure
    assert "hf_test_token_abcdef" not in process.log()


def test_this_machine_is_a_tier_like_the_others_a_failure_here_falls_through(
    repo: Path, server: str, tmp_path: Path
) -> None:
    """The local tier fails like any other: the daemon's models folder lacks `tiny` (not_found here),
    so a background job, planned local first, lands on the server, which has it; the route records
    the local failure and the stems land where a local job puts them."""
    empty = tmp_path / "no-models"
    empty.mkdir()
    overrides = {
        "models": {"demucs_repo": str(empty)},
        "separate": {"model": "tiny", "engine_device": "cpu", "threads": 1},
        "cloud": {"selfhosted_url": server},
    }
    process = DaemonProcess(overrides=overrides, workdir=tmp_path, env={"FLOWSTATE_SERVER_TOKEN": TOKEN}).start()
    try:
        source = write_audio(tmp_path / "files" / "here" / "take.wav", 1.0)
        final, status = _separate(process, source, deadline=None)
    finally:
        assert process.stop() == 0
    assert final["event"] == "job.done", final
    assert final["result"]["tier"] == "selfhosted"
    route = status["route"]
    assert route["tier"] == "selfhosted" and route["reason"] == "fallback after local failed"
    [failure] = route["failed"]
    assert failure.startswith("local: not_found") and "tiny" in failure
    assert sorted(final["result"]["paths"]) == sorted(STEMS)
    assert all(Path(path).parent == source.parent / "stems" / "take" for path in final["result"]["paths"].values())


def test_a_realtime_job_for_a_model_only_local_has_falls_back_to_local(repo: Path, tmp_path: Path) -> None:
    """Replicate runs Demucs' own models only: a job for the local model `tiny` must not go there,
    even when the router would otherwise pick it as the fastest tier (it used to fail the job with
    Replicate's bad_request)."""
    from tests.engines.cloud.fake_replicate import running_fake

    token = "r8_test_token_abcdef"
    with running_fake(token=token) as (url, fake):
        process = _daemon(repo, tmp_path, {"replicate_url": url}, {}, {"REPLICATE_API_TOKEN": token})
        try:
            source = write_audio(tmp_path / "files" / "rt" / "take.wav", 1.0)
            with Client(process.zmq_requests, timeout_seconds=30) as client:
                job_id = client.call("stems.separate", {"path": str(source), "deadline_class": "realtime"})["id"]
                final = client.wait_jobs([job_id], lambda *_: None, 120)[job_id]
                status = client.call("job.status", {"id": job_id})
        finally:
            assert process.stop() == 0
        created = [r for r in fake.requests if r.method == "POST"]
    assert final["event"] == "job.done", final
    assert final["result"]["tier"] == "local"
    assert status["route"]["tier"] == "local" and status["route"]["failed"] == []
    assert created == []  # nothing was sent to the provider
    assert "replicate left out of the plan" in process.log() and token not in process.log()


def test_an_open_unmix_job_goes_to_the_hf_endpoint_and_an_htdemucs_job_does_not(repo: Path, tmp_path: Path) -> None:
    """The fake Endpoint runs Open-Unmix umxl (the tier's default): a deadline local cannot meet
    sends an `openunmix:umxl` job there, and its four labelled stems land like a local job's; the
    `tiny` HTDemucs job of the same daemon is never sent there (it would get Open-Unmix's stems)."""
    from tests.engines.cloud.fake_hf import TOKEN as HF_TOKEN
    from tests.engines.cloud.fake_hf import fake_hf

    with fake_hf() as (root, control):
        cloud = {"huggingface_endpoint_url": control.endpoint_url(root, "umx"),
                 "huggingface_url": control.router_url(root)}
        router = {"order": {"stems": ["local", "huggingface"]}}
        process = _daemon(repo, tmp_path, cloud, router, {"HF_TOKEN": HF_TOKEN})
        try:
            source = write_audio(tmp_path / "files" / "umx" / "take.wav", 1.0, sample_rate=48000)
            with Client(process.zmq_requests, timeout_seconds=30) as client:
                jobs = {model: client.call("stems.separate", {"path": str(source), "model": model,
                                                              "deadline_seconds": 30,
                                                              "out_dir": str(tmp_path / "files"
                                                                             / model.replace(":", "_"))})["id"]
                        for model in ("openunmix:umxl", "tiny")}
                final = client.wait_jobs(list(jobs.values()), lambda *_: None, 120)
                status = {model: client.call("job.status", {"id": job_id}) for model, job_id in jobs.items()}
        finally:
            assert process.stop() == 0
        sent = [seen.path for seen in control.requests if seen.method == "POST"]
    umx = final[jobs["openunmix:umxl"]]
    assert umx["event"] == "job.done", umx
    assert umx["result"]["tier"] == "huggingface" and status["openunmix:umxl"]["route"]["tier"] == "huggingface"
    assert sorted(umx["result"]["paths"]) == ["bass", "drums", "other", "vocals"]
    for stem, path in umx["result"]["paths"].items():
        assert path == str(tmp_path / "files" / "openunmix_umxl" / "take" / f"{stem}.wav")
        info = soundfile.info(path)
        assert (info.samplerate, info.frames, info.channels) == (48000, 48000, 2)
    assert sent == ["/endpoints/umx"]  # one request: the tiny job never went there
    tiny = final[jobs["tiny"]]
    assert tiny["event"] == "job.done" and tiny["result"]["tier"] == "local", tiny
    assert HF_TOKEN not in process.log()
