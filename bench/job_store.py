"""The job queue's own cost: the embedded SQLite file against a shared PostgreSQL server.

For each store, `--jobs` jobs go through the queue's whole life one after another (submit, claim,
ten progress writes, finish: what a job costs the store, whatever its work), then the same again
from two stores at once (two instances draining one queue; SQLite here is two connections to one
file, PostgreSQL two connections to one server). PostgreSQL is a real server on a loopback port,
started for the run (`bridge.testing.PostgresServer`: initdb's defaults, fsync off as in the tests,
so these are the queue's statements, not a disk's). The ratios are against SQLite, measured in the
same run; it also prints how long the PostgreSQL server took to create and start.

    .venv/bin/python bench/job_store.py [--jobs N]

What to expect: every statement to PostgreSQL is a round trip over TCP where SQLite's is a call,
so the shared store costs more per job; either is milliseconds, against jobs that take seconds
to minutes. The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bridge`, `engines` when run as a script

from bridge.job_store import JobStore
from bridge.testing import PostgresServer, postgres_bin_dir

PROGRESS_WRITES = 10


def drain(store: JobStore) -> int:
    """Claim and run jobs until the queue is empty; returns how many this store ran."""
    count = 0
    while (job := store.claim_next()) is not None:
        for step in range(1, PROGRESS_WRITES + 1):
            store.set_progress(job.id, step / (PROGRESS_WRITES + 1))
        store.finish(job.id, {"stems": {"vocals": "vocals.wav"}})
        count += 1
    return count


def jobs_per_second(stores: list[JobStore], jobs: int) -> float:
    started = time.perf_counter()
    for n in range(jobs):
        stores[0].submit("stems", {"path": f"uploads/{n}.wav", "out_dir": f"outputs/{n}"})
    counts: list[int] = []
    threads = [threading.Thread(target=lambda s=store: counts.append(drain(s))) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(counts) == jobs, counts  # every job ran once
    return jobs / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=300)
    args = parser.parse_args()
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        sys.exit("PostgreSQL's initdb and pg_ctl are not installed (scripts/system-deps.sh installs postgresql)")
    figures: dict[str, float] = {}
    started = time.perf_counter()
    server = PostgresServer(bin_dir).start()
    figures["postgres_start_seconds"] = round(time.perf_counter() - started, 2)
    try:
        with tempfile.TemporaryDirectory(prefix="flowstate-bench-") as folder:
            for name, open_store in (
                ("sqlite", lambda db, owner: JobStore(Path(folder) / f"{db}.sqlite3", owner=owner)),
                ("postgres", lambda db, owner: JobStore.shared(db, server.password, owner=owner)),
            ):
                for instances in (1, 2):
                    db = f"q{instances}" if name == "sqlite" else server.create_database(f"q{instances}")
                    stores = [open_store(db, f"instance-{i}") for i in range(instances)]
                    try:
                        rate = jobs_per_second(stores, args.jobs)
                    finally:
                        for store in stores:
                            store.close()
                    figures[f"{name}_{instances}_jobs_per_second"] = round(rate, 1)
                    print(f"{name:8} {instances} instance(s): {rate:8.1f} jobs/s "
                          f"({1000 / rate:.2f} ms a job: submit, claim, {PROGRESS_WRITES} progress, finish)")
    finally:
        server.stop()
    for instances in (1, 2):
        ratio = figures[f"postgres_{instances}_jobs_per_second"] / figures[f"sqlite_{instances}_jobs_per_second"]
        figures[f"postgres_vs_sqlite_{instances}"] = round(ratio, 2)
        print(f"PostgreSQL / SQLite, {instances} instance(s): {ratio:.2f}x the jobs per second")
    print(f"PostgreSQL server created and started in {figures['postgres_start_seconds']} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
