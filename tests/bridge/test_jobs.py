"""The durable job queue: real SQLite files, real worker threads, a real SIGKILLed process.

Waits use Events and Conditions with a generous deadline (WAIT); nothing asserts on timing.
"""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from bridge.errors import BadRequest, Internal, NotFound, StartupError, Unavailable
from bridge.fileio import atomic_write, not_permitted, partial_path, remove_partials
from bridge.files import open_folder
from bridge.job_queue import JobQueue
from bridge.job_store import JOB_STATES, SCHEMA_VERSION, Job, JobStore, StoreOwner
from bridge.jobs import JobCanceled, JobContext, JobHandler, JobRunner
from bridge.ledger import Ledger

WAIT = 10.0  # a deadline for things that happen in milliseconds; never a measurement
REPO = Path(__file__).resolve().parents[2]


class Events:
    """A `publish` callback that records (event, job id, origin, data) and lets tests wait."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.items: list[tuple[str, str, Any, dict[str, Any]]] = []

    def __call__(self, event: str, job_id: str, origin: Any, /, **data: Any) -> None:
        with self._cond:
            self.items.append((event, job_id, origin, data))
            self._cond.notify_all()

    def of(self, job_id: str) -> list[tuple[str, dict[str, Any]]]:
        with self._cond:
            return [(event, data) for event, jid, _, data in self.items if jid == job_id]

    def names(self, job_id: str) -> list[str]:
        return [event for event, _ in self.of(job_id)]

    def wait_for(self, job_id: str, event: str) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((data for name, data in self.of(job_id) if name == event), None)

        with self._cond:
            assert self._cond.wait_for(lambda: found() is not None, WAIT), (
                f"no {event} for job {job_id} within {WAIT} s; got {self.of(job_id)}"
            )
        result = found()
        assert result is not None
        return result


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "jobs.sqlite3"  # a folder that does not exist yet


@pytest.fixture
def store(db: Path) -> Iterator[JobStore]:
    with JobStore(db) as opened:
        yield opened


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def make_runner(store: JobStore, events: Events) -> Iterator[Callable[..., JobRunner]]:
    runners: list[JobRunner] = []

    def make(handlers: dict[str, JobHandler], workers: int = 1, **options: Any) -> JobRunner:
        options.setdefault("progress_interval_seconds", 0.0)  # every report goes out, unless a test throttles
        runner = JobRunner(store, handlers, workers, events, **options)
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        assert runner.stop(WAIT, cancel_running=True) == [], "a worker did not stop"


def echo(ctx: JobContext) -> dict[str, Any]:
    return {"echo": ctx.job.args}


# -- JobStore --------------------------------------------------------------------------------------


def test_lifecycle_submit_claim_progress_finish(store: JobStore) -> None:
    job, created = store.submit("stems.separate", {"path": "/music/song.wav"})
    assert created and job.state == "queued" and job.attempts == 0 and job.started_at is None
    assert len(job.id) == 12

    claimed = store.claim_next()
    assert claimed is not None and claimed.id == job.id
    assert claimed.state == "running" and claimed.attempts == 1 and claimed.started_at is not None
    assert store.claim_next() is None  # nothing else queued

    store.set_progress(job.id, 0.5)
    assert store.get(job.id).progress == 0.5

    done = store.finish(job.id, {"stems": ["vocals.wav"]})
    assert done.state == "done" and done.progress == 1.0 and done.finished_at is not None
    assert done.to_dict() == {
        "id": job.id,
        "kind": "stems.separate",
        "state": "done",
        "progress": 1.0,
        "result": {"stems": ["vocals.wav"]},
        "error": None,
        "request_id": None,
        "created_at": job.created_at,
        "started_at": claimed.started_at,
        "finished_at": done.finished_at,
        "attempts": 1,
        "route": None,
        "args": {"path": "/music/song.wav"},
    }


def test_fail_records_code_and_message(store: JobStore) -> None:
    job, _ = store.submit("stems.separate", {})
    store.claim_next()
    failed = store.fail(job.id, "not_found", "path '/x.wav' does not exist")
    assert failed.state == "failed" and failed.finished_at is not None
    assert failed.to_dict()["error"] == {"code": "not_found", "message": "path '/x.wav' does not exist"}
    assert store.get(job.id) == failed


def test_claim_takes_the_oldest_first(store: JobStore) -> None:
    ids = [store.submit("k", {"n": n})[0].id for n in range(3)]
    claimed = [store.claim_next() for _ in ids]
    assert [job.id for job in claimed if job is not None] == ids


def test_transitions_only_from_running(store: JobStore) -> None:
    job, _ = store.submit("k", {})
    with pytest.raises(Internal, match=f"job {job.id} is queued"):
        store.finish(job.id, {})
    with pytest.raises(Internal, match="queued"):
        store.set_progress(job.id, 0.5)
    canceled = store.mark_canceled(job.id)
    assert canceled.state == "canceled"
    assert store.mark_canceled(job.id) == canceled  # idempotent on a finished job
    assert store.claim_next() is None


def test_get_unknown_job_names_it(store: JobStore) -> None:
    with pytest.raises(NotFound, match="'nosuchjob123'"):
        store.get("nosuchjob123")


def test_args_and_results_must_be_json_objects(store: JobStore) -> None:
    with pytest.raises(BadRequest, match="args must be a JSON object"):
        store.submit("k", {"when": object()})
    with pytest.raises(BadRequest, match="args must be a JSON object, got list"):
        store.submit("k", [1, 2])  # type: ignore[arg-type]
    job, _ = store.submit("k", {})
    store.claim_next()
    with pytest.raises(BadRequest, match="result"):
        store.finish(job.id, {"gain": math.nan})  # JSON has no NaN


def test_same_request_id_gives_the_same_job(store: JobStore) -> None:
    first, created = store.submit("stems.separate", {"path": "a.wav"}, request_id="req-1")
    again, created_again = store.submit("stems.separate", {"path": "a.wav"}, request_id="req-1")
    assert created and not created_again and again == first

    other_kind, created_other = store.submit("transcribe", {}, request_id="req-1")
    assert created_other and other_kind.id != first.id  # unique per kind

    anonymous = {store.submit("stems.separate", {}, request_id=rid)[0].id for rid in (None, None, "", "")}
    assert len(anonymous) == 4  # no request id (None or "") never deduplicates


@pytest.mark.parametrize("connections", ["one store", "a store per thread"])
def test_concurrent_submits_with_one_request_id_make_one_job(db: Path, connections: str) -> None:
    num_threads = 8
    shared = JobStore(db)
    stores = [shared if connections == "one store" else JobStore(db) for _ in range(num_threads)]
    barrier = threading.Barrier(num_threads)
    outcomes: list[tuple[Job, bool]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def submit(own: JobStore) -> None:
        try:
            barrier.wait(WAIT)
            outcome = own.submit("stems.separate", {"path": "a.wav"}, request_id="same")
        except BaseException as err:  # noqa: BLE001 - reported below, with the others
            with lock:
                errors.append(err)
            return
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=submit, args=(own,)) for own in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    try:
        assert errors == []
        assert len({job.id for job, _ in outcomes}) == 1
        assert sorted(created for _, created in outcomes) == [False] * (num_threads - 1) + [True]
        assert len(shared.list()) == 1
    finally:
        for own in set(stores):
            own.close()


def test_list_newest_first_with_state_filter(store: JobStore) -> None:
    ids = [store.submit("k", {"n": n})[0].id for n in range(4)]
    store.claim_next()  # ids[0] is running
    assert [job.id for job in store.list()] == ids[::-1]
    assert [job.id for job in store.list(limit=2)] == [ids[3], ids[2]]
    assert [job.id for job in store.list("queued")] == [ids[3], ids[2], ids[1]]
    assert [job.id for job in store.list("running")] == [ids[0]]
    assert store.list("done") == []
    assert store.counts() == {"queued": 3, "running": 1, "done": 0, "failed": 0, "canceled": 0}  # `status` shows it


def test_list_unknown_state_names_the_valid_ones(store: JobStore) -> None:
    with pytest.raises(BadRequest) as caught:
        store.list("finished")
    assert "'finished'" in caught.value.message
    for state in JOB_STATES:
        assert state in caught.value.message
    with pytest.raises(BadRequest, match="limit 0"):
        store.list(limit=0)


def test_a_second_store_requeues_what_the_first_left_running(db: Path) -> None:
    first = JobStore(db)
    job, _ = first.submit("stems.separate", {"path": "a.wav"})
    waiting, _ = first.submit("stems.separate", {"path": "b.wav"})
    first.claim_next()
    first.set_progress(job.id, 0.4)
    # The first daemon "crashes": it never finishes the job and never closes cleanly.
    with JobStore(db) as second:
        assert second.requeue_interrupted() == [job.id]
        requeued = second.get(job.id)
        assert requeued.state == "queued" and requeued.progress == 0.0 and requeued.started_at is None
        assert requeued.attempts == 1  # kept: it counts how often the job was started
        assert second.get(waiting.id).state == "queued"
        again = second.claim_next()
        assert again is not None and again.id == job.id and again.attempts == 2  # it keeps its place
        assert second.requeue_interrupted() == [job.id]
    first.close()


def test_requeue_fails_a_job_that_was_interrupted_too_often(store: JobStore) -> None:
    job, _ = store.submit("k", {})
    outcomes = []
    for _ in range(3):  # three start-ups, each killed while the job runs
        store.claim_next()
        outcomes.append(store.requeue_interrupted(max_attempts=3))
    assert outcomes == [[job.id], [job.id], []]
    failed = store.get(job.id)
    assert failed.state == "failed" and failed.error_code == "internal"
    assert "3 attempt(s)" in (failed.error_message or "")


CRASHING_DAEMON = """
import sys
from pathlib import Path
from bridge.job_store import JobStore

store = JobStore(Path(sys.argv[1]))
job = store.claim_next()
store.set_progress(job.id, 0.25)
print(job.id, flush=True)
sys.stdin.read()  # hold the job until SIGKILL
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_job_claimed_by_a_killed_process_is_requeued(db: Path) -> None:
    with JobStore(db) as store:
        job, _ = store.submit("stems.separate", {"path": "a.wav"})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(
        [sys.executable, "-c", CRASHING_DAEMON, str(db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line == job.id, f"the child did not claim the job: {line!r} {process.stderr.read() if not line else ''}"
        process.send_signal(signal.SIGKILL)
        assert process.wait(WAIT) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(WAIT)
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
    with JobStore(db) as store:
        left = store.get(job.id)
        assert left.state == "running" and left.progress == 0.25  # committed before the kill
        assert store.requeue_interrupted() == [job.id]
        assert store.get(job.id).state == "queued"


def test_a_newer_schema_is_refused(db: Path) -> None:
    JobStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StartupError, match="schema version 99"):
        JobStore(db)


def test_a_file_that_is_not_a_database_is_refused(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StartupError, match=str(db)):
        JobStore(db)


def test_wal_mode_and_schema_version(store: JobStore, db: Path) -> None:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    conn.close()


# -- JobRunner -------------------------------------------------------------------------------------


def test_runner_runs_a_job_and_publishes_its_events_in_order(
    make_runner: Callable[..., JobRunner], events: Events, store: JobStore
) -> None:
    def work(ctx: JobContext) -> dict[str, Any]:
        ctx.progress(0.5, stage="drums")
        return {"stems": ["drums.wav"], "args": ctx.job.args}

    runner = make_runner({"stems.separate": work})
    runner.start()
    origin = object()  # the runner treats origins as opaque
    job, created = runner.submit("stems.separate", {"path": "a.wav"}, origin=origin)
    assert created
    done = events.wait_for(job.id, "job.done")
    assert done == {"result": {"stems": ["drums.wav"], "args": {"path": "a.wav"}}}
    assert events.of(job.id) == [
        ("job.progress", {"fraction": 0.0}),
        ("job.progress", {"fraction": 0.5, "stage": "drums"}),
        ("job.progress", {"fraction": 1.0}),
        ("job.done", done),
    ]
    assert {item[2] for item in events.items} == {origin}
    stored = store.get(job.id)
    assert stored.state == "done" and stored.progress == 1.0 and stored.result == done["result"]


def test_runner_submit_is_idempotent_and_refuses_unknown_kinds(
    make_runner: Callable[..., JobRunner], events: Events
) -> None:
    runner = make_runner({"stems.separate": echo, "transcribe": echo})
    first, created = runner.submit("stems.separate", {"path": "a.wav"}, request_id="r1")
    again, created_again = runner.submit("stems.separate", {"path": "a.wav"}, request_id="r1")
    assert created and not created_again and again.id == first.id
    with pytest.raises(BadRequest, match=r"'tts'.*stems.separate, transcribe"):
        runner.submit("tts", {})
    runner.start()
    events.wait_for(first.id, "job.done")
    assert events.names(first.id).count("job.done") == 1


def test_workers_run_jobs_side_by_side(make_runner: Callable[..., JobRunner], events: Events) -> None:
    both_running = threading.Barrier(2)

    def meet(ctx: JobContext) -> dict[str, Any]:
        both_running.wait(WAIT)  # breaks (and fails the job) unless the other job runs at the same time
        return {"met": True}

    runner = make_runner({"meet": meet}, workers=2)
    runner.start()
    jobs = [runner.submit("meet", {"n": n})[0] for n in range(2)]
    for job in jobs:
        assert events.wait_for(job.id, "job.done") == {"result": {"met": True}}
    assert {thread.name for thread in runner._threads} == {"flowstate-job-1", "flowstate-job-2"}


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (BadRequest("stems.separate: argument 'path' expected an audio file, got 'a.txt'"), "bad_request",
         "stems.separate: argument 'path' expected an audio file, got 'a.txt'"),
        (ValueError("boom"), "internal", "ValueError: boom"),
    ],
)
def test_a_failing_handler_fails_its_job(
    make_runner: Callable[..., JobRunner], events: Events, store: JobStore,
    error: Exception, code: str, message: str,
) -> None:
    def fail(ctx: JobContext) -> dict[str, Any]:
        raise error

    runner = make_runner({"fail": fail})
    runner.start()
    job, _ = runner.submit("fail", {})
    failed = events.wait_for(job.id, "job.failed")
    assert failed["code"] == code and message in failed["message"]
    assert events.names(job.id) == ["job.progress", "job.failed"]
    stored = store.get(job.id)
    assert stored.state == "failed" and stored.error_code == code and message in (stored.error_message or "")


def test_a_result_that_is_not_json_fails_as_internal(
    make_runner: Callable[..., JobRunner], events: Events
) -> None:
    runner = make_runner({"bad": lambda ctx: ["not", "a", "dict"]})
    runner.start()
    job, _ = runner.submit("bad", {})
    failed = events.wait_for(job.id, "job.failed")
    assert failed["code"] == "internal" and "TypeError" in failed["message"] and "list" in failed["message"]


def test_a_publish_that_raises_does_not_change_the_outcome(store: JobStore) -> None:
    finished = threading.Event()

    def broken_publish(event: str, job_id: str, origin: Any, /, **data: Any) -> None:
        if event == "job.done":
            finished.set()
        raise KeyError(f"event {event!r} is not declared")

    runner = JobRunner(store, {"echo": echo}, 1, broken_publish)
    runner.start()
    try:
        job, _ = runner.submit("echo", {"x": 1})
        assert finished.wait(WAIT)
    finally:
        assert runner.stop(WAIT) == []
    assert store.get(job.id).state == "done"


def test_cancel_a_queued_job(make_runner: Callable[..., JobRunner], events: Events, store: JobStore) -> None:
    ran: list[str] = []

    def record(ctx: JobContext) -> dict[str, Any]:
        ran.append(ctx.job.id)
        return {}

    runner = make_runner({"record": record})
    queued, _ = runner.submit("record", {})
    canceled = runner.cancel(queued.id)
    assert canceled.state == "canceled" and canceled.finished_at is not None
    assert events.of(queued.id) == [("job.canceled", {})]

    runner.start()
    later, _ = runner.submit("record", {})
    events.wait_for(later.id, "job.done")
    assert ran == [later.id]  # workers never picked up the canceled job
    assert store.get(queued.id).state == "canceled"


def test_cancel_a_running_job_stops_it_and_removes_its_outputs(
    make_runner: Callable[..., JobRunner], events: Events, store: JobStore, tmp_path: Path
) -> None:
    out = tmp_path / "song (stems)"
    writing = threading.Event()

    def separate(ctx: JobContext) -> dict[str, Any]:
        out.mkdir()
        ctx.register_output(out)
        atomic_write(ctx.register_output(out / "drums.wav"), lambda tmp: tmp.write_bytes(b"drums"))

        def write_vocals(tmp: Path) -> None:
            with tmp.open("wb") as file:
                while True:  # one segment of model work per iteration
                    file.write(b"vocals")
                    writing.set()
                    ctx.check_cancelled()
                    time.sleep(0.01)

        atomic_write(ctx.register_output(out / "vocals.wav"), write_vocals)
        return {"never": "reached"}

    runner = make_runner({"separate": separate})
    runner.start()
    job, _ = runner.submit("separate", {})
    assert writing.wait(WAIT)
    assert (out / "drums.wav").exists()
    assert runner.cancel(job.id).state == "running"  # the handler stops at its next check

    events.wait_for(job.id, "job.canceled")
    assert store.get(job.id).state == "canceled"
    assert events.names(job.id) == ["job.progress", "job.canceled"]
    assert not out.exists()  # both stems and the folder made for them are gone
    assert list(tmp_path.rglob("*partial*")) == []
    assert runner.running() == []


def test_cancel_a_finished_job_is_a_no_op(make_runner: Callable[..., JobRunner], events: Events) -> None:
    runner = make_runner({"echo": echo})
    runner.start()
    job, _ = runner.submit("echo", {})
    events.wait_for(job.id, "job.done")
    before = events.of(job.id)
    assert runner.cancel(job.id).state == "done"
    assert events.of(job.id) == before
    with pytest.raises(NotFound):
        runner.cancel("nosuchjob123")


def test_stop_leaves_a_running_job_for_the_next_start(
    make_runner: Callable[..., JobRunner], events: Events, store: JobStore, db: Path
) -> None:
    started = threading.Event()
    release = threading.Event()

    def slow(ctx: JobContext) -> dict[str, Any]:
        started.set()
        while not release.wait(0.01):
            ctx.check_cancelled()
        return {"finished": "late"}

    runner = make_runner({"slow": slow})
    runner.start()
    job, _ = runner.submit("slow", {})
    assert started.wait(WAIT)
    assert runner.stop(timeout=0.05) == [job.id]  # graceful: not cancelled
    assert store.get(job.id).state == "running"
    store.close()  # what the daemon does next; the abandoned handler can no longer record anything
    release.set()
    assert runner.stop(timeout=WAIT) == []  # its worker ended
    assert "job.done" not in events.names(job.id)

    with JobStore(db) as restarted:
        runner2 = JobRunner(restarted, {"slow": slow}, 1, events)
        assert runner2.start() == [job.id]  # requeued, then run again
        try:
            events.wait_for(job.id, "job.done")
        finally:
            assert runner2.stop(WAIT) == []
        finished = restarted.get(job.id)
        assert finished.state == "done" and finished.attempts == 2


def test_stop_can_cancel_running_jobs(make_runner: Callable[..., JobRunner], events: Events, store: JobStore) -> None:
    started = threading.Event()

    def forever(ctx: JobContext) -> dict[str, Any]:
        started.set()
        while True:
            ctx.check_cancelled()
            time.sleep(0.01)  # one segment of work

    runner = make_runner({"forever": forever})
    runner.start()
    job, _ = runner.submit("forever", {})
    assert started.wait(WAIT)
    assert runner.stop(WAIT, cancel_running=True) == []
    assert store.get(job.id).state == "canceled"
    assert events.names(job.id)[-1] == "job.canceled"
    with pytest.raises(Exception, match="shutting down"):
        runner.submit("forever", {})


class WarmHandler:
    """A job handler that keeps what its first job loads for the next ones and releases it on
    `close`, as the engine-backed handlers do (bridge/engine_job.py)."""

    def __init__(self, close_fails: bool = False) -> None:
        self.loads = 0
        self.loaded = False
        self._close_fails = close_fails

    def __call__(self, ctx: JobContext) -> dict[str, Any]:
        if not self.loaded:
            self.loads += 1
            self.loaded = True
        return {"loads": self.loads}

    def close(self) -> None:
        self.loaded = False
        if self._close_fails:
            raise RuntimeError("the device went away")


def test_a_job_queue_keeps_engines_warm_and_its_close_releases_every_one(db: Path, events: Events) -> None:
    """What the daemon, `flowstate separate --local` and `flowstate serve` each build: one close
    stops the runner and the store and releases each handler's engines, even when one fails."""
    failing, other = WarmHandler(close_fails=True), WarmHandler()
    queue = JobQueue(JobStore(db), {"failing": failing, "other": other}, 1, events)
    assert queue.start() == []
    jobs = [queue.runner.submit(kind, {"n": n})[0] for n in range(2) for kind in ("failing", "other")]
    results = [events.wait_for(job.id, "job.done") for job in jobs]
    assert [result["result"]["loads"] for result in results] == [1, 1, 1, 1]  # loaded once, then warm
    assert queue.close(WAIT) == []
    assert not failing.loaded and not other.loaded
    with pytest.raises(Unavailable, match="shutting down"):
        queue.runner.submit("other", {})
    reopened = JobStore(db)  # the store was closed cleanly, its jobs kept
    try:
        assert reopened.get(jobs[-1].id).state == "done"
    finally:
        reopened.close()


def test_throttled_progress_still_delivers_the_final_value(
    make_runner: Callable[..., JobRunner], events: Events, store: JobStore
) -> None:
    def many_steps(ctx: JobContext) -> dict[str, Any]:
        for step in range(1, 101):
            ctx.progress(step / 100)
        return {}

    def fails_at_30(ctx: JobContext) -> dict[str, Any]:
        ctx.progress(0.3)
        raise ValueError("segment 3 failed")

    runner = make_runner({"many": many_steps, "fails": fails_at_30}, progress_interval_seconds=3600.0)
    runner.start()
    job, _ = runner.submit("many", {})
    events.wait_for(job.id, "job.done")
    assert events.of(job.id)[:2] == [("job.progress", {"fraction": 0.0}), ("job.progress", {"fraction": 1.0})]
    assert len(events.of(job.id)) == 3
    assert store.get(job.id).progress == 1.0

    failing, _ = runner.submit("fails", {})
    events.wait_for(failing.id, "job.failed")
    assert [data.get("fraction") for _, data in events.of(failing.id)] == [0.0, 0.3, None]  # 0.3 flushed
    assert store.get(failing.id).progress == 0.3


# -- JobContext ------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def context(store: JobStore, events: Events) -> tuple[JobContext, Clock]:
    store.submit("k", {})
    job = store.claim_next()
    assert job is not None
    clock = Clock()
    return JobContext(job, store, events, progress_interval_seconds=0.1, clock=clock), clock


def test_progress_is_throttled_to_the_interval(
    context: tuple[JobContext, Clock], events: Events, store: JobStore
) -> None:
    ctx, clock = context
    ctx.progress(0.0)  # the first report always goes out
    ctx.progress(0.1)  # same instant: held back
    clock.now += 0.05
    ctx.progress(0.2)  # still within 0.1 s: held back
    assert [data["fraction"] for _, data in events.of(ctx.job.id)] == [0.0]
    assert store.get(ctx.job.id).progress == 0.0
    clock.now += 0.06
    ctx.progress(0.3)  # 0.11 s after the last event
    ctx.progress(0.4)
    ctx.flush()  # the runner does this before the final event
    ctx.flush()  # nothing pending: no duplicate
    assert [data["fraction"] for _, data in events.of(ctx.job.id)] == [0.0, 0.3, 0.4]
    assert store.get(ctx.job.id).progress == 0.4


def test_progress_is_clamped_and_monotonic(context: tuple[JobContext, Clock], events: Events) -> None:
    ctx, clock = context
    ctx.progress(-3)
    clock.now += 1
    ctx.progress(0.6)
    clock.now += 1
    ctx.progress(0.2)  # never backwards, and nothing new to report
    clock.now += 1
    ctx.progress(7.0)
    assert [data["fraction"] for _, data in events.of(ctx.job.id)] == [0.0, 0.6, 1.0]
    assert ctx.fraction == 1.0
    with pytest.raises(ValueError, match="finite"):
        ctx.progress(math.nan)
    with pytest.raises(TypeError, match="fraction"):
        ctx.progress(0.5, fraction=0.1)


def test_cancel_flag(context: tuple[JobContext, Clock]) -> None:
    ctx, _ = context
    ctx.check_cancelled()
    assert not ctx.cancelled
    ctx.request_cancel()
    assert ctx.cancelled
    with pytest.raises(JobCanceled, match=ctx.job.id):
        ctx.check_cancelled()


# -- files -----------------------------------------------------------------------------------------


def test_atomic_write_keeps_the_suffix_for_soundfile(tmp_path: Path) -> None:
    target = tmp_path / "song (vocals).flac"
    seen: list[Path] = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        sf.write(tmp, np.zeros((4410, 2), dtype=np.float32), 44100)  # format inferred from the suffix

    assert atomic_write(target, write) == target
    assert seen[0].name.startswith(".song (vocals).partial-") and seen[0].suffix == ".flac"
    assert sf.info(target).format == "FLAC"
    assert sorted(path.name for path in tmp_path.iterdir()) == [target.name]


@pytest.mark.parametrize("wrote_before_failing", [True, False])
def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path: Path, wrote_before_failing: bool) -> None:
    target = tmp_path / "drums.wav"

    def write(tmp: Path) -> None:
        if wrote_before_failing:
            tmp.write_bytes(b"half a file")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, write)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "drums.wav"
    target.write_bytes(b"the previous take")

    def canceled_midway(tmp: Path) -> None:
        tmp.write_bytes(b"the new take, half")
        raise JobCanceled("job abc was canceled")

    with pytest.raises(JobCanceled):
        atomic_write(target, canceled_midway)
    assert target.read_bytes() == b"the previous take"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["drums.wav"]


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(WAIT)
    return process.pid


def test_remove_partials_touches_only_partial_files_of_dead_writers(tmp_path: Path) -> None:
    dead = _dead_pid()
    nested = tmp_path / "album"
    nested.mkdir()
    leftovers = [
        tmp_path / f".song.partial-{dead}-0a1b2c3d.wav",
        tmp_path / f".song (vocals).partial-{dead}-ffffffff.flac",
        tmp_path / f".notes.partial-{dead}-12345678",
    ]
    kept = [
        tmp_path / "song.wav",
        tmp_path / ".song.wav",
        tmp_path / f"song.partial-{dead}-0a1b2c3d.wav",  # no leading dot: not ours
        tmp_path / f".song.partial-{dead}-xyz.wav",  # not our token
        tmp_path / f".song.partial-{dead}-0A1B2C3D.wav",  # tokens are lower-case hex
        partial_path(tmp_path / "live.wav"),  # this process is still writing it
        nested / f".deep.partial-{dead}-0a1b2c3d.wav",  # not recursive unless asked
    ]
    for path in leftovers + kept:
        path.write_bytes(b"x")
    folder_named_like_one = tmp_path / f".dir.partial-{dead}-0a1b2c3d"
    folder_named_like_one.mkdir()

    assert sorted(remove_partials(tmp_path)) == sorted(leftovers)
    assert all(path.exists() for path in kept) and folder_named_like_one.is_dir()
    assert remove_partials(tmp_path, recursive=True) == [nested / f".deep.partial-{dead}-0a1b2c3d.wav"]
    assert remove_partials(tmp_path / "missing") == []


@pytest.mark.parametrize("cleaner", ["fileio", "folder"])
def test_a_partial_file_still_in_use_is_left_and_the_rest_cleaned(
        tmp_path: Path, cleaner: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Windows refuses to delete a file that is open (a writer process_alive cannot see there, or a virus
    # scanner): a PermissionError (CPython's os.unlink documentation). os.unlink stands in for that here.
    dead = _dead_pid()
    held = tmp_path / f".held.partial-{dead}-0a1b2c3d.wav"
    gone = tmp_path / f".gone.partial-{dead}-0a1b2c3d.wav"
    for path in (held, gone):
        path.write_bytes(b"x")
    real = os.unlink

    def unlink(path: Any, *, dir_fd: int | None = None) -> None:
        if Path(path).name == held.name:
            raise PermissionError(13, "The process cannot access the file because it is being used by another "
                                      "process", str(path), 32)
        real(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "unlink", unlink)
    if cleaner == "fileio":
        removed = remove_partials(tmp_path)
    else:
        with open_folder(tmp_path, (), "stems.separate") as folder:
            removed = folder.remove_partials()
    assert removed == [gone] and held.exists() and not gone.exists()


def test_route_spend_and_calibration_are_stored(tmp_path: Path) -> None:
    with JobStore(tmp_path / "jobs.sqlite3") as store:
        ledger = Ledger(store.database)
        job, _ = store.submit("stems.separate", {"path": "/a.wav"})
        store.set_route(job.id, {"tier": "selfhosted", "reason": "local would take 120 s > deadline 30 s"})
        assert store.get(job.id).to_dict()["route"]["tier"] == "selfhosted"
        now = time.time()  # one instant: the month read back is the month written, even at midnight on the 31st
        ledger.add_spend("replicate", 0.25, job.id, at=now)
        ledger.add_spend("replicate", 0.5, job.id, at=now)
        ledger.add_spend("replicate", 9.0, job.id, at=0.0)  # January 1970: another month
        assert ledger.month_spend(now) == pytest.approx(0.75)
        assert ledger.calibration("stems:htdemucs:cpu") is None
        assert ledger.calibrate("stems:htdemucs:cpu", 1.0) == 1.0
        assert ledger.calibrate("stems:htdemucs:cpu", 2.0) == pytest.approx(1.3)
        assert ledger.calibration("stems:htdemucs:cpu") == (pytest.approx(1.3), 2)
    # It is all durable.
    with JobStore(tmp_path / "jobs.sqlite3") as store:
        ledger = Ledger(store.database)
        assert ledger.calibration("stems:htdemucs:cpu") == (pytest.approx(1.3), 2)
        assert ledger.month_spend(now) == pytest.approx(0.75)


# -- graceful stops, given-up jobs, orphan files, full disks ---------------------------------------


def _hold(started: threading.Event, release: threading.Event) -> JobHandler:
    def slow(ctx: JobContext) -> dict[str, Any]:
        started.set()
        while not release.wait(0.01):
            ctx.progress(0.5)  # keeps talking to the store, as a real job does
        return {"finished": "late"}

    return slow


def test_graceful_stops_never_use_up_a_jobs_attempts(db: Path) -> None:
    """Three graceful stops during one job (max_attempts 3): it still runs, once, to the end."""
    events = Events()
    release = threading.Event()
    job_id = ""
    try:
        for _ in range(3):
            started = threading.Event()
            with JobStore(db) as store:
                runner = JobRunner(store, {"slow": _hold(started, release)}, 1, events, max_attempts=3)
                runner.start()
                if not job_id:
                    job_id = runner.submit("slow", {})[0].id
                assert started.wait(WAIT)
                assert runner.stop(timeout=0.05) == [job_id]
                assert runner.hand_back() == [job_id]
                job = store.get(job_id)
                assert (job.state, job.attempts) == ("queued", 0)  # back in line, the attempt given back
        release.set()  # the abandoned workers end; nothing they report may change the store
        with JobStore(db) as store:
            runner = JobRunner(store, {"slow": _hold(threading.Event(), release)}, 1, events, max_attempts=3)
            assert runner.start() == []  # nothing left running: the stops handed it back
            events.wait_for(job_id, "job.done")
            assert runner.stop(WAIT) == []
            done = store.get(job_id)
    finally:
        release.set()
    assert (done.state, done.attempts) == ("done", 1)
    assert events.names(job_id).count("job.done") == 1
    assert "job.failed" not in events.names(job_id)


def test_no_job_starts_after_stop_claiming(make_runner: Callable[..., JobRunner], store: JobStore) -> None:
    started = threading.Event()
    release = threading.Event()
    runner = make_runner({"slow": _hold(started, release)})
    runner.start()
    first, _ = runner.submit("slow", {})
    assert started.wait(WAIT)
    second, _ = runner.submit("slow", {})
    runner.stop_claiming()  # what the daemon does on the signal, before anything else
    release.set()
    # The worker finishes the running job and then ends by itself instead of taking the next.
    for worker in runner._threads:
        worker.join(WAIT)
        assert not worker.is_alive(), "the worker went on after stop_claiming()"
    assert runner.stop(WAIT) == []
    assert store.get(first.id).state == "done"
    later = store.get(second.id)
    assert (later.state, later.attempts, later.started_at) == ("queued", 0, None)


def _crashed_job_with_files(db: Path, out: Path, attempts: int) -> tuple[str, list[Path]]:
    """A job whose daemon died `attempts` times while writing stems, as the store and disk then are."""
    with JobStore(db) as store:
        job, _ = store.submit("separate", {"path": "song.wav"})
        out.mkdir(parents=True)
        for attempt in range(1, attempts + 1):
            claimed = store.claim_next()
            assert claimed is not None and claimed.id == job.id
            if attempt < attempts:
                assert store.requeue_interrupted() == [job.id]
        store.add_output(job.id, out)
        written = []
        for stem in ("drums", "bass"):
            target = out / f"{stem}.wav"
            store.add_output(job.id, target)
            atomic_write(target, lambda tmp: tmp.write_bytes(b"RIFF"))
            written.append(target)
        # The dead writer's half-written third stem: a pid that no longer exists.
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout.strip()
        partial = out / f".vocals.partial-{dead}-0123abcd.wav"
        partial.write_bytes(b"RIFF half")
        written.append(partial)
    return job.id, written


def test_a_job_given_up_at_start_up_is_announced_and_leaves_no_files(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "music" / "stems" / "song"
    job_id, written = _crashed_job_with_files(db, out, attempts=2)
    assert all(path.exists() for path in written)
    events = Events()
    with JobStore(db) as store:
        runner = JobRunner(store, {"separate": echo}, 1, events, max_attempts=2)
        assert runner.start() == []
        failed = store.get(job_id)
        assert (failed.state, failed.error_code) == ("failed", "internal")
        assert "2 attempt(s)" in (failed.error_message or "")
        assert not out.exists()  # stems, the dead writer's partial file and the folder made for them
        assert out.parent.exists()  # the user's folder above stays
        assert events.names(job_id) == []  # nobody could hear it yet
        assert runner.announce_given_up() == [job_id]
        assert runner.announce_given_up() == []  # once
        assert runner.stop(WAIT) == []
    [(event, data)] = events.of(job_id)
    assert event == "job.failed" and data["code"] == "internal" and "2 attempt(s)" in data["message"]


def test_a_failing_attempt_removes_what_earlier_attempts_wrote(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "music" / "stems" / "song"
    job_id, _written = _crashed_job_with_files(db, out, attempts=1)
    events = Events()

    def fails(ctx: JobContext) -> dict[str, Any]:
        raise BadRequest("the input went bad between attempts")

    with JobStore(db) as store:
        runner = JobRunner(store, {"separate": fails}, 1, events, max_attempts=3)
        assert runner.start() == [job_id]
        events.wait_for(job_id, "job.failed")
        assert runner.stop(WAIT) == []
        assert store.outputs(job_id) == []
    assert not out.exists()


def test_a_done_job_keeps_its_files_and_forgets_the_list(make_runner: Callable[..., JobRunner], events: Events,
                                                         store: JobStore, tmp_path: Path) -> None:
    target = tmp_path / "take.wav"

    def writes(ctx: JobContext) -> dict[str, Any]:
        atomic_write(ctx.register_output(target), lambda tmp: tmp.write_bytes(b"RIFF"))
        assert store.outputs(ctx.job.id) == [(target, None)]  # on disk in the store before the file exists
        return {"path": str(target)}

    runner = make_runner({"writes": writes})
    runner.start()
    job, _ = runner.submit("writes", {})
    events.wait_for(job.id, "job.done")
    assert target.read_bytes() == b"RIFF"
    assert store.outputs(job.id) == []


def test_a_second_owner_of_a_job_database_is_refused_naming_it_and_the_pid(db: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", ("import sys; from pathlib import Path; from bridge.job_store import StoreOwner; "
         "owner = StoreOwner(Path(sys.argv[1])).acquire(); print('held', flush=True); sys.stdin.read()"), str(db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(StartupError) as refused:
            StoreOwner(db).acquire()
        assert str(db) in str(refused.value) and f"pid {holder.pid}" in str(refused.value)
        assert not db.exists()  # the refused side touched nothing
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(WAIT)
    owner = StoreOwner(db).acquire()  # the OS dropped the lock with its process
    owner.release()


def test_a_full_database_is_unavailable_naming_it(store: JobStore, db: Path) -> None:
    # SQLite's own limit on the file's size: the same "database or disk is full" as a full disk.
    pages = store.database.execute("PRAGMA page_count")[0][0]
    store.database.execute(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(Unavailable) as full:
        for index in range(1000):
            store.submit("k", {"blob": "x" * 4000, "n": index})
    assert str(db) in full.value.message and "disk is full" in full.value.message
    assert "free space" in full.value.message
    assert store.list(limit=1)  # the store still answers


def _bytes_to(out: Any) -> None:
    out.write(b"x" * 65536)
    out.flush()


def _audio_to(out: Any) -> None:
    """Through libsndfile, which reports a full disk as "System error." only."""
    from bridge.files import audio_writer

    audio_writer(np.zeros((44100, 2), np.float32), 44100, "PCM_24", "wav")(out)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("write", [_bytes_to, _audio_to], ids=["bytes", "audio"])
def test_a_job_that_fills_the_disk_fails_unavailable_naming_the_file(
    make_runner: Callable[..., JobRunner], events: Events, store: JobStore, write: Callable[[Any], None]
) -> None:
    def writes_to_a_full_disk(ctx: JobContext) -> dict[str, Any]:
        with open("/dev/full", "w+b") as out:  # a real ENOSPC from the kernel
            write(out)
        return {}

    runner = make_runner({"fill": writes_to_a_full_disk})
    runner.start()
    job, _ = runner.submit("fill", {})
    failed = events.wait_for(job.id, "job.failed")
    assert failed["code"] == "unavailable", failed
    assert "no space left" in failed["message"] and "free space" in failed["message"]


@pytest.mark.parametrize("outcome", ["done", "failed", "canceled"])
def test_what_a_job_holds_is_let_go_after_its_outcome_is_recorded_and_its_files_deleted(
    make_runner: Callable[..., JobRunner], events: Events, store: JobStore, tmp_path: Path, outcome: str
) -> None:
    # A separation holds its track folder (JobContext.at_end) so another job cannot take it while
    # its files may still be deleted: the release comes once the outcome is in the store and a
    # failed or canceled job's files are gone, whatever the outcome.
    seen: list[tuple[str, bool]] = []
    released = threading.Event()
    written = tmp_path / "stems" / "vocals.wav"

    def release(job_id: str) -> None:
        seen.append((store.get(job_id).state, written.exists()))
        released.set()

    def writes_then_ends(ctx: JobContext) -> dict[str, Any]:
        written.parent.mkdir(exist_ok=True)
        written.write_bytes(b"stem")
        ctx.register_output(written)
        ctx.at_end(lambda: release(ctx.job.id))
        if outcome == "failed":
            raise BadRequest("the model refused it")
        if outcome == "canceled":
            ctx.request_cancel()
            ctx.check_cancelled()
        return {}

    runner = make_runner({"hold": writes_then_ends})
    runner.start()
    job, _ = runner.submit("hold", {})
    events.wait_for(job.id, f"job.{outcome}")
    assert released.wait(10.0), "not released within 10 s"
    assert seen == [(outcome, outcome == "done")]


def test_a_job_the_system_refuses_a_file_fails_forbidden_naming_it(
    make_runner: Callable[..., JobRunner], events: Events, store: JobStore
) -> None:
    # macOS refuses a daemon started at login the user's Documents, Desktop and Downloads (EPERM) until
    # the user allows it; this machine (root) is refused nothing, so the handler meets the OS's answer.
    def reads_a_private_folder(ctx: JobContext) -> dict[str, Any]:
        raise PermissionError(1, "Operation not permitted", "/Users/me/Documents/song.wav")

    runner = make_runner({"read": reads_a_private_folder})
    runner.start()
    job, _ = runner.submit("read", {})
    failed = events.wait_for(job.id, "job.failed")
    assert failed["code"] == "forbidden", failed  # it was `internal`, with a traceback in the log
    assert failed["message"].startswith("read: the system did not let the daemon use /Users/me/Documents/song.wav "
                                        "(Operation not permitted)")
    # On macOS the message says where to allow it.
    on_macos = not_permitted(PermissionError(1, "Operation not permitted", "/Users/me/Documents/song.wav"), "read",
                             platform="darwin")
    assert on_macos is not None and "Privacy & Security > Files and Folders" in on_macos.message
    assert sys.executable in on_macos.message


def test_an_emptied_database_is_reported(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    with JobStore(db) as store:
        store.submit("k", {})
    db.write_bytes(b"")  # truncated to 0 bytes (a sync tool, a bad restore)
    with caplog.at_level("WARNING", logger="bridge.job_store"), JobStore(db) as store:
        assert store.list() == []
    assert any(str(db) in r.getMessage() and "0 bytes" in r.getMessage() for r in caplog.records)
