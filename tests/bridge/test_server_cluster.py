"""Several `flowstate serve` instances on one shared job store, for real: a PostgreSQL server on a
loopback port (started here, stopped after the module even when a test fails), two server processes
sharing it and one data folder, driven over HTTP. A job submitted to one is seen, followed, canceled
and downloaded through the other; an instance killed mid-job hands its job to the other, which
finishes it once. The store's own guarantees (one claim per job, a lapsed claim cannot record) are
checked against the same server with two stores in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bridge.errors import Internal
from bridge.job_store import JobStore
from bridge.testing import PostgresServer, free_port, postgres_bin_dir
from tests.bridge.test_server import (
    SERVED_NAME,
    STEMS,
    TOKEN,
    ServerProcess,
    auth,
    read_events,
    repo,  # noqa: F401  (the module's tiny HTDemucs, a fixture)
    submit,
    wait_finished,
    wait_for,
    write_audio,
)

# The instance names come from server.instance_id (the plain ENTRY passes one fixed id).
CLUSTER_ENTRY = (
    "import logging, sys; from pathlib import Path; from bridge.config import load_config; "
    "from bridge.server import serve; "
    "logging.basicConfig(level='INFO', format='%(asctime)s %(levelname)s %(name)s: %(message)s'); "
    "config = load_config(sys.argv[1]); "
    "serve(config, '127.0.0.1', int(sys.argv[2]), Path(sys.argv[3]), max_upload_bytes=int(sys.argv[4]), "
    "instance_id=config.server.instance_id)"
)
# Short, so a killed instance's job comes back within seconds; renewed every third of it. Not
# shorter: a renewal held up for the whole lease (two servers, PostgreSQL and a torch job on two
# busy cores) would hand a live job to the other server, and it would run twice.
LEASE_SECONDS = 5.0
INSTANCES = ("a", "b")


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL's initdb and pg_ctl are not installed (scripts/system-deps.sh installs postgresql)")
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


class Cluster:
    """Two server processes on one PostgreSQL database and one data folder."""

    def __init__(self, workdir: Path, repo: Path, dsn: str, password: str) -> None:  # noqa: F811
        self.data_dir = workdir / "shared"
        self.servers: dict[str, ServerProcess] = {}
        for name in INSTANCES:
            # No drain at a stop: a stopped instance hands its running jobs back at once. With the
            # default 3 s drain, a job that the machine happens to finish within it (a quiet machine
            # runs the tiny model fast) would end on the stopped instance, and the hand-back test
            # would depend on the machine's speed.
            settings = {"server": {"allowed_hosts": [SERVED_NAME], "store": dsn, "lease_seconds": LEASE_SECONDS,
                                   "instance_id": name},
                        "daemon": {"shutdown_timeout_seconds": 0.0}}
            process = ServerProcess(workdir / name, repo, settings=settings, entry=CLUSTER_ENTRY,
                                    env={"FLOWSTATE_SERVER_STORE_PASSWORD": password})
            process.data_dir = self.data_dir  # one folder for both: uploads and outputs are shared
            self.servers[name] = process
        self.killed: set[str] = set()

    def other(self, name: str) -> ServerProcess:
        return next(server for key, server in self.servers.items() if key != name)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, repo: Path,  # noqa: F811
            postgres: PostgresServer) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    for name in INSTANCES:
        (workdir / name).mkdir()
    group = Cluster(workdir, repo, postgres.create_database("cluster"), postgres.password)
    try:
        for server in group.servers.values():
            server.start()
        yield group
    finally:
        codes = {name: server.stop() for name, server in group.servers.items() if server.process is not None}
        logs = {name: server.log() for name, server in group.servers.items()}
        for name, code in codes.items():
            assert name in group.killed or code == 0, f"instance {name} exited with {code}:\n{logs[name]}"
        for name, log in logs.items():
            assert postgres.password not in log, f"the store's password appeared in instance {name}'s log"
            assert TOKEN not in log


def job_via(server: ServerProcess, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=auth(), timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def stem_files(data_dir: Path, key_folder: str) -> list[str]:
    return sorted(path.name for path in (data_dir / "outputs").glob(f"*/{key_folder}/*") if path.is_file())


def wait_until(condition: Any, what: str, timeout_seconds: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        assert time.monotonic() < deadline, f"still not so after {timeout_seconds} s: {what}"
        time.sleep(0.1)


# -- through HTTP ---------------------------------------------------------------------------------


def test_a_job_submitted_to_one_instance_is_followed_and_downloaded_through_the_other(
        cluster: Cluster, tmp_path: Path) -> None:
    a, b = cluster.servers["a"], cluster.servers["b"]
    created = submit(a, write_audio(tmp_path / "short.wav", 0.5, seed=41), {"format": "wav"})
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    assert job_via(b, job_id)["id"] == job_id  # B knows it at once: one queue
    events: list[tuple[str, dict[str, Any]]] = []
    read_events(b, job_id, events)  # B's event stream follows it to the end, whoever runs it
    assert events[-1][0] == "done" and [name for name, _ in events].count("done") == 1
    job = job_via(b, job_id)
    assert job["state"] == "done" and job["attempts"] == 1 and job["runner"] in INSTANCES
    assert set(job["result"]["outputs"]) == STEMS
    bodies = [httpx.get(f"{server.url}{job['result']['outputs']['vocals']}", headers=auth(), timeout=30)
              for server in (a, b)]
    assert [body.status_code for body in bodies] == [200, 200]
    assert bodies[0].content[:4] == b"RIFF" and bodies[0].content == bodies[1].content
    missing = httpx.get(f"{b.url}/v1/jobs/0123456789ab", headers=auth(), timeout=10)
    assert missing.status_code == 404 and "shared job store" in missing.json()["error"]["message"]


def test_a_job_running_on_one_instance_is_canceled_through_the_other(cluster: Cluster, tmp_path: Path) -> None:
    created = submit(cluster.servers["a"], write_audio(tmp_path / "cancel.wav", 30.0, seed=42), {"format": "wav"})
    job_id = created.json()["id"]
    running = wait_for(cluster.servers["b"], job_id,
                       lambda job: job["state"] == "running" and job["progress"] > 0.02)
    holder = running["runner"]
    # Canceled through the instance that does not run it: the holder learns it from the store.
    canceled = httpx.post(f"{cluster.other(holder).url}/v1/jobs/{job_id}/cancel", headers=auth(), timeout=10)
    assert canceled.status_code == 200 and canceled.json()["state"] == "canceled"
    job = wait_finished(cluster.servers[holder], job_id)
    assert job["state"] == "canceled" and job["result"] is None
    # The holder stops the separation at its next segment, before any stem is written.
    wait_until(lambda: f"job {job_id} (stems) canceled" in cluster.servers[holder].log(), "the holder stopped it")
    assert job_via(cluster.servers[holder], job_id)["state"] == "canceled"
    assert stem_files(cluster.data_dir, "cancel") == []
    health = httpx.get(f"{cluster.servers[holder].url}/v1/health", timeout=10).json()
    assert health["running"] == 0


def test_an_instance_stopped_mid_job_hands_it_back_and_the_other_runs_it(cluster: Cluster, tmp_path: Path) -> None:
    created = submit(cluster.servers["b"], write_audio(tmp_path / "stop.wav", 30.0, seed=44), {"format": "wav"})
    job_id = created.json()["id"]
    running = wait_for(cluster.servers["b"], job_id,
                       lambda job: job["state"] == "running" and job["progress"] > 0.05)
    holder = cluster.servers[running["runner"]]
    other = cluster.other(running["runner"])
    try:
        assert holder.stop() == 0  # SIGTERM: a graceful stop, say a rolling deploy
        job = wait_finished(other, job_id, timeout_seconds=120.0)
        assert job["state"] == "done" and job["runner"] != running["runner"], job
        assert job["attempts"] == 1  # handed back, not crashed: the stopped run does not count
        assert stem_files(cluster.data_dir, "stop") == sorted(f"{stem}.wav" for stem in STEMS)
        assert f"handing 1 job(s) still running at shutdown to the other instances: {job_id}" in holder.log()
    finally:
        holder.start()  # back for the tests after this one


def test_an_instance_killed_mid_job_hands_it_to_the_other_which_finishes_it_once(
        cluster: Cluster, tmp_path: Path) -> None:
    created = submit(cluster.servers["a"], write_audio(tmp_path / "k.wav", 30.0, seed=43), {"format": "wav"})
    job_id = created.json()["id"]
    running = wait_for(cluster.servers["a"], job_id,
                       lambda job: job["state"] == "running" and job["progress"] > 0.05)
    victim = running["runner"]
    survivor = cluster.other(victim)
    survivor_name = next(name for name in INSTANCES if name != victim)
    events: list[tuple[str, dict[str, Any]]] = []
    reader = threading.Thread(target=read_events, args=(survivor, job_id, events))
    reader.start()
    process = cluster.servers[victim].process
    assert process is not None
    cluster.killed.add(victim)
    process.kill()  # SIGKILL: no shutdown, no release; its claim simply stops being renewed
    process.wait(30)

    job = wait_finished(survivor, job_id, timeout_seconds=120.0)
    reader.join(150.0)
    assert job["state"] == "done", job
    assert job["attempts"] == 2 and job["runner"] == survivor_name, job
    names = [name for name, _ in events]
    assert names.count("done") == 1 and names[-1] == "done" and "failed" not in names, names
    vocals = httpx.get(f"{survivor.url}{job['result']['outputs']['vocals']}", headers=auth(), timeout=30)
    assert vocals.status_code == 200 and vocals.content[:4] == b"RIFF"
    # One set of stems: the killed attempt's files were replaced, none left beside them.
    assert stem_files(cluster.data_dir, "k") == sorted(f"{stem}.wav" for stem in STEMS)
    assert f"requeued 1 job(s) whose instance stopped renewing its claim: {job_id}" in survivor.log()


# -- start-up ------------------------------------------------------------------------------------


SECRET = "hunter2-never-in-a-log"


@pytest.mark.parametrize(("store", "password", "expected"), [
    ("closed-port", SECRET, "Connection refused"),
    ("password-in-dsn", None, "password authentication failed"),
    ("mysql://flowstate@127.0.0.1/x", SECRET, "a PostgreSQL DSN"),
])
def test_a_store_that_cannot_be_used_stops_start_up_naming_the_setting_not_the_password(
        postgres: PostgresServer, tmp_path: Path, store: str, password: str | None, expected: str) -> None:
    dsn = {"closed-port": f"postgresql://flowstate@127.0.0.1:{free_port()}/postgres",
           "password-in-dsn": postgres.dsn().replace("flowstate@", f"flowstate:{SECRET}@")}.get(store, store)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"server": {"store": dsn, "data_dir": str(tmp_path / "data")},
                                      "jobs": {"database": str(tmp_path / "unused.sqlite3")}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
    env.update({"FLOWSTATE_SERVER_TOKEN": TOKEN, **({"FLOWSTATE_SERVER_STORE_PASSWORD": password} if password else {})})
    env.pop("PGPASSWORD", None)
    command = [sys.executable, "-m", "bridge", "serve", "--config", str(config), "--port", str(free_port())]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "server.store" in output and expected in output, output
    assert SECRET not in output


# -- the store itself ---------------------------------------------------------------------------


@pytest.fixture
def stores(postgres: PostgresServer, request: pytest.FixtureRequest) -> Iterator[tuple[JobStore, JobStore]]:
    dsn = postgres.create_database(f"store_{request.node.name.split('[')[0][-40:]}")
    first = JobStore.shared(dsn, postgres.password, owner="first", lease_seconds=1.0)
    second = JobStore.shared(dsn, postgres.password, owner="second", lease_seconds=1.0)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def test_two_stores_claiming_at_once_take_each_job_once(stores: tuple[JobStore, JobStore]) -> None:
    ids = [stores[0].submit("k", {"n": n})[0].id for n in range(60)]
    claimed: dict[str, list[str]] = {"first": [], "second": []}
    start = threading.Barrier(2)

    def drain(store: JobStore) -> None:
        start.wait(30)
        while (job := store.claim_next()) is not None:
            claimed[store.owner].append(job.id)

    threads = [threading.Thread(target=drain, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    together = claimed["first"] + claimed["second"]
    assert sorted(together) == sorted(ids)  # every job claimed, none twice
    assert {job.owner for job in stores[1].list("running", 100)} <= {"first", "second"}
    assert stores[1].counts() == {"queued": 0, "running": 60, "done": 0, "failed": 0, "canceled": 0}


def test_a_lapsed_claim_goes_to_another_store_and_only_it_records_the_outcome(
        stores: tuple[JobStore, JobStore]) -> None:
    first, second = stores
    job, _ = first.submit("k", {})
    assert first.claim_next() is not None
    assert first.renew() == {job.id}
    requeued: list[str] = []

    def lapsed() -> bool:
        requeued.extend(second.requeue_expired(3)[1])
        return bool(requeued)

    # The first store stops renewing (its instance died); once its lease has run out, the job comes back.
    wait_until(lapsed, "the first store's lease ran out")
    assert requeued == [job.id]
    again = second.claim_next()
    assert again is not None and again.id == job.id and again.attempts == 2 and again.owner == "second"
    with pytest.raises(Internal, match="for second, not for first"):
        first.finish(job.id, {"by": "first"})  # the first instance, back from a pause, records nothing
    assert first.renew() == set()
    done = second.finish(job.id, {"by": "second"})
    assert done.state == "done" and done.result == {"by": "second"} and done.attempts == 2


def test_a_job_whose_holders_keep_dying_is_failed_after_max_attempts(stores: tuple[JobStore, JobStore]) -> None:
    first, second = stores
    job, _ = first.submit("k", {})
    given_up: list[str] = []
    for holder in (first, second):  # each claims it, then dies (stops renewing)
        claimed = holder.claim_next()
        assert claimed is not None and claimed.id == job.id

        def lapsed() -> bool:
            failed, requeued = second.requeue_expired(2)
            given_up.extend(failed_job.id for failed_job in failed)
            return bool(requeued or failed)

        wait_until(lapsed, f"{holder.owner}'s lease ran out")
    assert given_up == [job.id]
    failed = second.get(job.id)
    assert failed.state == "failed" and failed.error_code == "internal" and failed.attempts == 2
    assert "2 attempt(s)" in (failed.error_message or "")
    with pytest.raises(Internal):
        second.finish(job.id, {})  # the last holder, were it only paused, records nothing
