"""The self-hosted tier on Ray Serve for real: a local Ray instance (started here, once for the
module), `bridge.server_ray.serve_ray` in a subprocess joining it with `server.ray.address`, two CPU
replicas of the stems deployment holding a small HTDemucs, driven over HTTP.

The HTTP contract tests of tests/bridge/test_server.py run here unchanged against the Ray-backed
server (imported below: pytest collects them in this module, where `server` is the Ray one): every
test there that uses the module's server (auth, malformed, cut-off and oversized uploads, the Host
guard, stems end to end through `SelfHostedTier` with progress, resubmission, cancel mid-job, a job
failing remotely, unknown jobs, downloads and byte ranges, the SSE stream, health). Left out: the
ones that start a plain server of their own (expiry, signals) or none (wire contract, no token).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray

from bridge.jobs import JobStore
from tests.bridge.test_server import (  # noqa: F401  (fixtures and tests pytest collects here)
    SERVED_NAME,
    STEMS,
    ServerProcess,
    auth,
    finished,
    read_events,
    repo,
    sse_frames,
    submit,
    test_a_bad_range_on_an_output_is_a_structured_4xx,
    test_a_body_cut_off_is_400_and_leaves_no_upload,
    test_a_body_in_tiny_pieces_is_parsed_whole,
    test_a_file_just_over_the_limit_is_413_when_its_part_ends,
    test_a_file_name_with_path_separators_stays_in_its_upload_folder,
    test_a_good_range_on_an_output_is_served,
    test_a_host_header_the_server_does_not_serve_is_400,
    test_a_job_that_fails_remotely_raises_its_error_and_is_not_reused,
    test_a_long_job_id_is_404_quoted_briefly,
    test_a_resubmitted_job_is_the_same_job,
    test_a_wrong_token_is_forbidden_through_the_tier,
    test_an_unknown_job_is_not_found,
    test_an_unusable_content_type_is_400,
    test_an_upload_over_the_limit_is_413_from_its_content_length,
    test_an_upload_over_the_limit_is_413_while_it_streams,
    test_an_upload_over_the_limit_is_bad_request_through_the_tier,
    test_bad_uploads_are_400_naming_what_is_wrong,
    test_cancel_mid_job_cancels_the_remote_job,
    test_health_needs_no_token,
    test_ip_addresses_localhost_and_allowed_names_are_served,
    test_job_routes_refuse_a_missing_or_wrong_token,
    test_malformed_multipart_is_4xx_naming_the_problem,
    test_outputs_download_and_unknown_outputs_are_404,
    test_stems_end_to_end_through_the_tier,
    test_the_events_stream_ends_in_done,
    test_the_tier_reports_health,
    tier,
    wait_finished,
    wait_for,
    write_audio,
)

RAY_ENTRY = (
    "import logging, sys; from pathlib import Path; from bridge.config import load_config; "
    "from bridge.server_ray import serve_ray; "
    "logging.basicConfig(level='INFO', format='%(asctime)s %(levelname)s %(name)s: %(message)s'); "
    "serve_ray(load_config(sys.argv[1]), '127.0.0.1', int(sys.argv[2]), Path(sys.argv[3]), "
    "max_upload_bytes=int(sys.argv[4]), instance_id=sys.argv[5])"
)
REPLICAS = 2
PER_REPLICA = 2  # jobs one stems replica runs at once: two concurrent jobs can share forwards
# The other tasks are offered (health lists them) but scale from zero: no replica until a job comes.
IDLE = {"min_replicas": 0, "max_replicas": 1, "num_cpus": 0.25}


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A small local Ray instance for the module; always shut down (its raylet and GCS end with it)."""
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 1024 * 1024)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, repo: Path,  # noqa: F811 (the imported fixture)
           ray_address: str) -> Iterator[ServerProcess]:
    settings = {"server": {
        "allowed_hosts": [SERVED_NAME],
        "backend": "ray",
        "ray": {
            "address": ray_address, "max_batch_size": PER_REPLICA, "batch_wait_seconds": 0.05, "max_retries": 2,
            "stems": {"min_replicas": REPLICAS, "max_replicas": REPLICAS, "max_ongoing_requests": PER_REPLICA,
                      "num_cpus": 0.5},
            "generate": IDLE, "transcribe": IDLE, "tts": IDLE,
        },
    }}
    process = ServerProcess(tmp_path_factory.mktemp("ray-server"), repo, settings=settings, entry=RAY_ENTRY)
    process.start(timeout_seconds=110.0)
    try:
        yield process
    finally:
        code = process.stop()
        assert code == 0, f"the Ray-backed server exited with {code} after SIGTERM:\n{process.log()}"


def test_health_names_the_ray_backend_and_its_deployments(server: ServerProcess) -> None:
    body = httpx.get(f"{server.url}/v1/health", timeout=5).json()
    backend = body["backend"]
    assert backend["name"] == "ray" and backend["address"] != "local"  # it joined the module's instance
    assert backend["deployments"]["stems"]["num_replicas"] == REPLICAS
    assert backend["deployments"]["tts"]["autoscaling_config"]["min_replicas"] == 0


def test_concurrent_jobs_spread_over_both_replicas_and_share_forwards(server: ServerProcess, tmp_path: Path) -> None:
    # Long enough that all of them are in flight at once: each replica takes PER_REPLICA of them.
    sources = [write_audio(tmp_path / f"c{i}.wav", 8.0, seed=20 + i) for i in range(REPLICAS * PER_REPLICA)]
    ids = [submit(server, source).json()["id"] for source in sources]
    jobs = [wait_finished(server, job_id, timeout_seconds=110.0) for job_id in ids]
    assert [job["state"] for job in jobs] == ["done"] * len(jobs), jobs
    assert all(set(job["result"]["outputs"]) == STEMS for job in jobs)
    replicas = {job["result"]["ray"]["replica"] for job in jobs}
    assert len(replicas) == REPLICAS, [job["result"]["ray"] for job in jobs]
    sizes = [size for job in jobs for size in job["result"]["ray"]["batch_sizes"]]
    assert sizes and set(sizes) <= {1, 2}
    assert 2 in sizes, "no two jobs on one replica ever shared a forward"


def route(server: ServerProcess, job_id: str) -> dict[str, Any] | None:
    """The job's route as the server's own store records it (the replica that runs it)."""
    with JobStore(server.data_dir / "jobs.sqlite3") as store:
        return store.get(job_id).route


def test_a_job_whose_replica_is_killed_finishes_once_on_another(server: ServerProcess, tmp_path: Path) -> None:
    created = submit(server, write_audio(tmp_path / "k.wav", 30.0, seed=31), {"format": "wav"})
    job_id = created.json()["id"]
    events: list[tuple[str, dict[str, Any]]] = []
    reader = threading.Thread(target=read_events, args=(server, job_id, events))
    reader.start()
    # Mid-job: the replica has reported progress while separating.
    seen = wait_for(server, job_id, lambda job: job["progress"] > 0.1 and job["state"] == "running")
    first = route(server, job_id)
    assert first is not None and first["try"] == 1, first
    ray.kill(ray.get_actor(first["actor"], namespace="serve"))

    job = wait_finished(server, job_id, timeout_seconds=110.0)
    reader.join(120.0)
    assert seen["state"] == "running"
    assert job["state"] == "done", job
    assert job["result"]["ray"]["tries"] == 2 and job["result"]["ray"]["replica"] != first["replica"]
    assert job["attempts"] == 1  # one run of the job as the queue sees it, finished once
    names = [name for name, _ in events]
    assert names.count("done") == 1 and names[-1] == "done" and "failed" not in names
    vocals = httpx.get(f"{server.url}{job['result']['outputs']['vocals']}", headers=auth(), timeout=30)
    assert vocals.status_code == 200 and vocals.content[:4] == b"RIFF"
    # The job's folder holds exactly one set of stems: nothing of the killed replica's try reached it.
    out_dirs = list((server.data_dir / "outputs").glob("*/k"))
    assert len(out_dirs) == 1 and sorted(p.name for p in out_dirs[0].iterdir()) == sorted(f"{s}.wav" for s in STEMS)


def test_address_without_ray_is_refused_naming_the_flag(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
    env["FLOWSTATE_SERVER_TOKEN"] = "a-token-long-enough-for-the-server"
    done = subprocess.run([sys.executable, "-m", "bridge", "serve", "--address", "head.example:6379", "--port", "1"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert "--ray" in done.stderr and "server.backend" in done.stderr
