"""`flowstate serve --ray` on a shared PostgreSQL job store, for real, beside a plain `flowstate serve`:
a PostgreSQL server and a small Ray instance on loopback (started here once for the module and
stopped after it even when a test fails), a Ray-backed server process joining that instance and a
plain one, both on one database and one data folder, driven over HTTP and over `/v1/stream`.

A job run by the Ray-backed server is followed, downloaded and canceled through the plain one and
recorded once; each server takes over the job of the other when that one is killed mid-job (its claim lapses);
a live stream to the Ray-backed server (which runs streams in its own process) returns the stems the
plain server returns, and those of the local engine.

To have a given instance claim a job, the other is held still (SIGSTOP) until the job is claimed:
both poll the one queue, so otherwise either may take it.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import ray

from bridge.testing import PostgresServer, passthrough_htdemucs_repo, tiny_htdemucs_repo
from engines.cloud.selfhosted_stream import RemoteStreamingSeparator
from engines.separation.streaming import StreamingSeparator
from tests.bridge.test_server import (
    SERVED_NAME,
    STEMS,
    TOKEN,
    ServerProcess,
    auth,
    read_events,
    submit,
    wait_finished,
    wait_for,
    write_audio,
)
from tests.bridge.test_server_cluster import (  # noqa: F401  (postgres: the module's PostgreSQL, a fixture)
    CLUSTER_ENTRY,
    job_via,
    postgres,
    stem_files,
    wait_until,
)
from tests.bridge.test_server_ray import IDLE
from tests.bridge.test_stream import SAMPLE_RATE, _noise
from tests.bridge.test_stream_remote import STREAM

# The Ray-backed server, its instance id from server.instance_id like CLUSTER_ENTRY's plain one.
RAY_CLUSTER_ENTRY = CLUSTER_ENTRY.replace("from bridge.server import serve;",
                                          "from bridge.server_ray import serve_ray as serve;")
# Short, so a killed instance's job comes back within seconds; renewed every third of it.
LEASE_SECONDS = 3.0


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder with both models: the tiny HTDemucs of file jobs, the passthrough one of streams."""
    folder = tmp_path_factory.mktemp("models")
    tiny_htdemucs_repo(folder, depth=3)
    return passthrough_htdemucs_repo(folder, threads=1)


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A small local Ray instance for the module, owned by this process (so a Ray-backed server
    killed mid-test leaves nothing behind: the instance ends here); always shut down."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 1024 * 1024)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


class Pair:
    """A Ray-backed server and a plain one on one PostgreSQL database and one data folder."""

    def __init__(self, workdir: Path, models: Path, dsn: str, password: str, ray_address: str) -> None:
        self.data_dir = workdir / "shared"
        server = {"allowed_hosts": [SERVED_NAME], "store": dsn, "lease_seconds": LEASE_SECONDS}
        ray_settings = {"address": ray_address, "max_batch_size": 1, "max_retries": 1,
                        "stems": {"min_replicas": 1, "max_replicas": 1, "max_ongoing_requests": 1, "num_cpus": 0.5},
                        "generate": IDLE, "transcribe": IDLE, "tts": IDLE}
        env = {"FLOWSTATE_SERVER_STORE_PASSWORD": password}
        self.ray = ServerProcess(workdir / "ray", models, env=env, entry=RAY_CLUSTER_ENTRY, settings={
            "stream": STREAM, "server": {**server, "instance_id": "ray", "backend": "ray", "ray": ray_settings}})
        self.plain = ServerProcess(workdir / "plain", models, env=env, entry=CLUSTER_ENTRY, settings={
            "stream": STREAM, "server": {**server, "instance_id": "plain"}})
        for process in (self.ray, self.plain):
            process.data_dir = self.data_dir  # one folder for both: uploads and outputs are shared
        self.killed: set[str] = set()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, models: Path, postgres: PostgresServer,  # noqa: F811
         ray_address: str) -> Iterator[Pair]:
    workdir = tmp_path_factory.mktemp("ray-cluster")
    for name in ("ray", "plain"):
        (workdir / name).mkdir()
    group = Pair(workdir, models, postgres.create_database("ray_cluster"), postgres.password, ray_address)
    try:
        group.plain.start()
        group.ray.start(timeout_seconds=150.0)
        yield group
    finally:
        servers = {"ray": group.ray, "plain": group.plain}
        codes = {name: server.stop() for name, server in servers.items() if server.process is not None}
        for name, code in codes.items():
            assert name in group.killed or code == 0, f"{name} exited with {code}:\n{servers[name].log()}"
        for name, server in servers.items():
            assert postgres.password not in server.log() and TOKEN not in server.log(), name


@contextmanager
def held_still(server: ServerProcess) -> Iterator[None]:
    """The server's process stopped (SIGSTOP) for the block: it claims nothing meanwhile."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def claimed_by(runner: ServerProcess, other: ServerProcess, source: Path, progress: float = 0.0) -> str:
    """Submit a stems job to `runner` while `other` is held still; return its id once `runner` runs
    it (past `progress`), or, with `progress` 0, has already run it: a short job on a quiet machine
    can be done before the event stream's first frame."""
    with held_still(other):
        created = submit(runner, source, {"format": "wav"})
        assert created.status_code == 201, created.text
        job_id: str = created.json()["id"]
        wait_for(runner, job_id, lambda job: (job["state"] == "running" and job["progress"] > progress)
                 or (progress == 0.0 and job["state"] == "done"), timeout_seconds=120.0)
    return job_id


def test_a_job_run_on_ray_is_followed_and_downloaded_through_the_plain_server(pair: Pair, tmp_path: Path) -> None:
    job_id = claimed_by(pair.ray, pair.plain, write_audio(tmp_path / "short.wav", 1.0, seed=61))
    events: list[tuple[str, dict[str, Any]]] = []
    read_events(pair.plain, job_id, events)  # the plain server's stream follows it to the end
    names = [name for name, _ in events]
    assert names[-1] == "done" and names.count("done") == 1 and "failed" not in names, names
    job = job_via(pair.plain, job_id)
    assert job["state"] == "done" and job["attempts"] == 1 and job["runner"] == "ray", job
    assert set(job["result"]["outputs"]) == STEMS and job["result"]["ray"]["tries"] == 1
    bodies = [httpx.get(f"{server.url}{job['result']['outputs']['vocals']}", headers=auth(), timeout=30)
              for server in (pair.ray, pair.plain)]
    assert [body.status_code for body in bodies] == [200, 200]
    assert bodies[0].content[:4] == b"RIFF" and bodies[0].content == bodies[1].content
    assert stem_files(pair.data_dir, "short") == sorted(f"{stem}.wav" for stem in STEMS)


def test_a_job_running_on_ray_is_canceled_through_the_plain_server(pair: Pair, tmp_path: Path) -> None:
    job_id = claimed_by(pair.ray, pair.plain, write_audio(tmp_path / "cancel.wav", 20.0, seed=64), progress=0.02)
    canceled = httpx.post(f"{pair.plain.url}/v1/jobs/{job_id}/cancel", headers=auth(), timeout=10)
    assert canceled.status_code == 200 and canceled.json()["state"] == "canceled"
    # The Ray-backed server learns it from the store at its next renewal and stops its replica's run.
    wait_until(lambda: f"job {job_id} (stems) canceled" in pair.ray.log(), "the Ray-backed server stopped it")
    job = job_via(pair.ray, job_id)
    assert job["state"] == "canceled" and job["result"] is None and job["runner"] == "ray", job
    assert stem_files(pair.data_dir, "cancel") == []
    wait_until(lambda: httpx.get(f"{pair.ray.url}/v1/health", timeout=10).json()["running"] == 0, "nothing running")


def stream_through(server: ServerProcess, signal_in: np.ndarray) -> tuple[np.ndarray, RemoteStreamingSeparator]:
    """`signal_in` through the server's /v1/stream as a live stream feeds it; the stems and the client."""
    remote = RemoteStreamingSeparator(server.url, TOKEN, {"model": "passthrough", "sample_rate": SAMPLE_RATE,
                                                          "channels": 2})
    try:
        remote.load()
        remote.reset()
        outputs, start = [], 0
        while start < signal_in.shape[1]:  # up to the frame that waits, as the daemon's stream does
            n = min(256, remote.input_frames_to_window())
            outputs.append(remote.process(signal_in[:, start:start + n]))
            start += n
    finally:
        remote.close()
    return np.concatenate(outputs, axis=2), remote


def test_a_live_stream_to_the_ray_server_returns_the_plain_servers_stems(pair: Pair, models: Path) -> None:
    signal_in = _noise(2.0, seed=7)
    on_ray, remote = stream_through(pair.ray, signal_in)
    on_plain, plain_remote = stream_through(pair.plain, signal_in)
    assert (remote.hop_seconds, remote.latency_frames) == (plain_remote.hop_seconds, plain_remote.latency_frames)
    np.testing.assert_allclose(on_ray, on_plain, atol=1e-5)
    local = StreamingSeparator("passthrough", repo=models, device="cpu", sample_rate=SAMPLE_RATE, channels=2,
                               hop_seconds=remote.hop_seconds, threads=1)
    np.testing.assert_allclose(on_ray, local.process(signal_in), atol=1e-5)
    assert np.abs(on_ray).max() > 0.01  # the passthrough's stems carry the noise: not silence on both


def test_the_plain_server_killed_mid_job_leaves_it_to_the_ray_server_which_finishes_it_once(
        pair: Pair, tmp_path: Path) -> None:
    job_id = claimed_by(pair.plain, pair.ray, write_audio(tmp_path / "p.wav", 20.0, seed=62), progress=0.05)
    events: list[tuple[str, dict[str, Any]]] = []
    reader = threading.Thread(target=read_events, args=(pair.ray, job_id, events))
    reader.start()
    process = pair.plain.process
    assert process is not None
    pair.killed.add("plain")
    process.kill()  # SIGKILL: its claim stops being renewed
    process.wait(30)
    try:
        job = wait_finished(pair.ray, job_id, timeout_seconds=150.0)
        reader.join(150.0)
        assert job["state"] == "done" and job["attempts"] == 2 and job["runner"] == "ray", job
        assert job["result"]["ray"]["tries"] == 1
        names = [name for name, _ in events]
        assert names.count("done") == 1 and names[-1] == "done" and "failed" not in names, names
        assert stem_files(pair.data_dir, "p") == sorted(f"{stem}.wav" for stem in STEMS)
        assert f"requeued 1 job(s) whose instance stopped renewing its claim: {job_id}" in pair.ray.log()
    finally:
        pair.killed.discard("plain")
        pair.plain.start()  # back for the test after this one


def test_the_ray_server_killed_mid_job_leaves_it_to_the_plain_server_which_finishes_it_once(
        pair: Pair, tmp_path: Path) -> None:
    job_id = claimed_by(pair.ray, pair.plain, write_audio(tmp_path / "r.wav", 20.0, seed=63), progress=0.05)
    events: list[tuple[str, dict[str, Any]]] = []
    reader = threading.Thread(target=read_events, args=(pair.plain, job_id, events))
    reader.start()
    process = pair.ray.process
    assert process is not None
    pair.killed.add("ray")
    process.kill()  # SIGKILL; its replica may go on with the job, but nothing of it reaches the store
    process.wait(30)
    job = wait_finished(pair.plain, job_id, timeout_seconds=150.0)
    reader.join(150.0)
    assert job["state"] == "done" and job["attempts"] == 2 and job["runner"] == "plain", job
    assert "ray" not in job["result"]  # the plain server's own run
    names = [name for name, _ in events]
    assert names.count("done") == 1 and names[-1] == "done" and "failed" not in names, names
    vocals = httpx.get(f"{pair.plain.url}{job['result']['outputs']['vocals']}", headers=auth(), timeout=30)
    assert vocals.status_code == 200 and vocals.content[:4] == b"RIFF"
    assert stem_files(pair.data_dir, "r") == sorted(f"{stem}.wav" for stem in STEMS)
    assert f"requeued 1 job(s) whose instance stopped renewing its claim: {job_id}" in pair.plain.log()
