"""`flowstate serve --ray` with no address, for real: the server starts a local Ray instance of its
own (the embedded default, no set-up) and stops it when it stops, and the stems deployment, bounded
to 1..2 replicas, scales up to its second replica under queued load.

A module of its own: tests/bridge/test_server_ray.py keeps a Ray instance of the test process for
its whole module, and this one must start beside nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.bridge.test_server import (
    SERVED_NAME,
    STEMS,
    ServerProcess,
    repo,  # noqa: F401  (the module's tiny HTDemucs, a fixture)
    submit,
    wait_finished,
    write_audio,
)
from tests.bridge.test_server_ray import IDLE, RAY_ENTRY

# Jobs the client keeps submitted: the server's runner hands two to the deployment (max_replicas x
# max_ongoing_requests), so one replica always has one waiting; and the most the test sends.
IN_FLIGHT = 3
MAX_JOBS = 16


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, repo: Path) -> Iterator[ServerProcess]:  # noqa: F811
    settings = {"server": {
        "allowed_hosts": [SERVED_NAME],
        "backend": "ray",
        "ray": {
            "address": None, "num_cpus": 3, "object_store_bytes": 100 * 1024 * 1024, "max_batch_size": 1,
            # One job per replica and a target of one: a second job waiting is load enough for a
            # second replica, added at once (no upscale delay) and never removed during the test.
            "stems": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1.0,
                      "max_ongoing_requests": 1, "num_cpus": 0.5, "upscale_delay_seconds": 0.0,
                      "downscale_delay_seconds": 3600.0},
            "generate": IDLE, "transcribe": IDLE, "tts": IDLE,
        },
    }}
    process = ServerProcess(tmp_path_factory.mktemp("ray-local"), repo, settings=settings, entry=RAY_ENTRY)
    process.start(timeout_seconds=150.0)
    try:
        yield process
    finally:
        code = process.stop()
        assert code == 0, f"the Ray-backed server exited with {code} after SIGTERM:\n{process.log()}"


def test_without_an_address_the_server_starts_its_own_ray_instance(server: ServerProcess) -> None:
    backend = httpx.get(f"{server.url}/v1/health", timeout=5).json()["backend"]
    assert backend["name"] == "ray" and backend["address"] == "local"
    scaling = backend["deployments"]["stems"]["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (1, 2)
    assert "a local Ray instance" in server.log()


def test_queued_jobs_scale_the_deployment_up_to_its_second_replica(server: ServerProcess, tmp_path: Path) -> None:
    # The deployment starts with one replica (min_replicas). Keep jobs queued behind it until one
    # runs on a second replica: Ray Serve added it (it takes a replica tens of seconds to start on
    # a busy 2-core machine, so how many jobs that takes varies; the bound is generous).
    source = write_audio(tmp_path / "s.wav", 6.0, seed=50)
    pending: list[str] = []
    finished: list[dict[str, Any]] = []
    submitted = 0
    while len({job["result"]["ray"]["replica"] for job in finished}) < 2:
        assert submitted < MAX_JOBS or pending, f"{MAX_JOBS} jobs all ran on one replica: {finished}"
        while len(pending) < IN_FLIGHT and submitted < MAX_JOBS:
            pending.append(submit(server, source, rid=f"scale-{submitted}").json()["id"])
            submitted += 1
        job = wait_finished(server, pending.pop(0), timeout_seconds=120.0)
        assert job["state"] == "done" and set(job["result"]["outputs"]) == STEMS, job
        finished.append(job)
    for job_id in pending:  # the rest finish too, on either replica
        assert wait_finished(server, job_id, timeout_seconds=120.0)["state"] == "done"
    assert finished[0]["result"]["ray"]["replica"] != finished[-1]["result"]["ray"]["replica"]
