"""The self-hosted tier on Ray Serve: stems throughput with 1 and 2 replicas, batching off and on.

One local Ray instance for the whole run; for each of four settings (replicas 1 or 2, batching off
or on) the stems deployment is started afresh (`bridge.server_ray.RayBackend`, the server's own
backend), warmed with one job per replica, then `--jobs` jobs are queued at once in a job store and
run by the server's `JobRunner` through the backend's handler, exactly as `flowstate serve --ray`
runs them (minus HTTP: uploads and downloads cost the same whatever the backend). Throughput is
audio seconds separated per wall second, from the first job queued to the last one done; the ratios
are against 1 replica without batching, measured in the same run.

The model is the released htdemucs architecture (`bridge.testing.RELEASED_HTDEMUCS_KWARGS`, 41.98 M
parameters, seeded random weights: the cost does not depend on the weights), run by the daemon's
`FileSeparator` with `separate.segment_seconds` (default 1.0 s: short clips, so the run takes a few
minutes on 2 cores) and one torch thread per replica. Each replica reserves one CPU, and runs up
to `--jobs` jobs at once (their segments batched when batching is on, one job at a time otherwise).

    .venv/bin/python bench/serve_ray.py [--jobs N] [--seconds S] [--segment S] [--max-batch N]

What to expect: on a CPU a batch of HTDemucs windows costs about the sum of its rows (the cores are
already busy), so batching is worth about 1.0x here; a second replica on a second core is worth up
to 2x. On a GPU one window leaves most of the device idle, so batching is where the gain is.
The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bridge`, `engines` when run as a script

import ray

from bridge.config import Config
from bridge.job_store import FINISHED_STATES, JobStore
from bridge.jobs import JobRunner
from bridge.paths import PathPolicy
from bridge.separate import check_request
from bridge.server_ray import RayBackend
from bridge.testing import describe_htdemucs, released_htdemucs, released_htdemucs_repo

SETTINGS = [(1, False), (1, True), (2, False), (2, True)]  # (replicas, batching); the first is the baseline


def config_for(repo: Path, data_dir: Path, replicas: int, batching: bool, jobs: int, segment: float,
               max_batch: int) -> Config:
    stems = {"min_replicas": replicas, "max_replicas": replicas, "max_ongoing_requests": jobs, "num_cpus": 1.0}
    return Config.model_validate({
        "models": {"demucs_repo": str(repo)},
        "separate": {"model": "htdemucs_random", "engine_device": "cpu", "threads": 1, "segment_seconds": segment,
                     "format": "wav"},
        "paths": {"roots": [str(data_dir)]},
        "server": {"tasks": ["stems"], "backend": "ray",
                   "ray": {"max_batch_size": max_batch if batching else 1, "batch_wait_seconds": 0.01,
                           "stems": stems}},
    })


def ray_rss_mb() -> float:
    """Resident memory of Ray's processes on this machine (GCS, raylet, agents, Serve, replicas), MB."""
    table = subprocess.run(["ps", "-eo", "rss=,args="], capture_output=True, text=True, check=True).stdout
    rows = [line.split(None, 1) for line in table.splitlines() if line.strip()]
    return round(sum(int(rss) for rss, args in rows if "ray::" in args or "/ray/" in args) / 1024, 1)


def run_setting(config: Config, data_dir: Path, clips: list[Path], warm: Path, replicas: int) -> dict[str, Any]:
    backend = RayBackend(config.server.ray)
    paths = PathPolicy([data_dir])
    store = JobStore(data_dir / f"jobs-{time.monotonic_ns()}.sqlite3")
    handlers = backend.start(config, paths, data_dir, ["stems"])
    runner = JobRunner(store, handlers, backend.workers(config), lambda *a, **k: None)
    runner.start()

    def submit(path: Path, tag: str) -> str:
        args = check_request({"path": str(path), "out_dir": str(data_dir / "outputs" / tag)}, paths, config)
        for name in ("path", "out_dir"):
            args[name] = str(Path(args[name]).relative_to(data_dir))
        job, _ = runner.submit("stems", args)
        return job.id

    try:
        # Warm: every replica has loaded its model (one job each, at once) before the clock starts.
        warmed = _poll(store, [submit(warm, f"warm{i}") for i in range(replicas)])
        memory = ray_rss_mb()
        started = time.monotonic()
        ids = [submit(clip, f"{replicas}-{i}") for i, clip in enumerate(clips)]
        finished = _poll(store, ids)
        wall = time.monotonic() - started
    finally:
        runner.stop(10.0)
        backend.stop()
        store.close()
    failed = [job for job in [*warmed, *finished] if job.state != "done"]
    if failed:
        raise SystemExit(f"jobs failed: {[(job.id, job.error_code, job.error_message) for job in failed]}")
    audio = sum(job.result["duration_seconds"] for job in finished)
    sizes = [size for job in finished for size in job.result["ray"]["batch_sizes"]]
    return {"wall_s": round(wall, 2), "audio_s": audio, "throughput": round(audio / wall, 3),
            "replicas_used": len({job.result["ray"]["replica"] for job in finished}),
            "ray_rss_mb": memory, "mean_batch": round(float(np.mean(sizes)), 2) if sizes else 1.0,
            "max_batch": max(sizes, default=1)}


def _poll(store: JobStore, ids: list[str]) -> list[Any]:
    """The jobs once all have finished (the store is what is true; a short poll, as the server's SSE does)."""
    while True:
        jobs = [store.get(i) for i in ids]
        if all(job.state in FINISHED_STATES for job in jobs):
            return jobs
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=4, help="jobs queued at once per setting (default 4)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each clip (default 4 s)")
    parser.add_argument("--segment", type=float, default=1.0, help="separate.segment_seconds (default 1.0)")
    parser.add_argument("--max-batch", type=int, default=4, help="server.ray.max_batch_size when on (default 4)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="flowstate-bench-ray-") as scratch:
        root = Path(scratch)
        repo = released_htdemucs_repo(root / "repo", "htdemucs_random")
        print(describe_htdemucs(released_htdemucs()), flush=True)
        data_dir = root / "data"
        rng = np.random.default_rng(0)
        clips = []
        for i in range(args.jobs):
            clips.append(data_dir / "uploads" / f"c{i}" / f"clip{i}.wav")
            clips[-1].parent.mkdir(parents=True)
            soundfile.write(str(clips[-1]),
                            (0.1 * rng.standard_normal((int(args.seconds * 44100), 2))).astype(np.float32), 44100)
        warm = data_dir / "uploads" / "warm" / "warm.wav"
        warm.parent.mkdir(parents=True)
        soundfile.write(str(warm), np.zeros((22050, 2), np.float32), 44100)

        started = time.monotonic()
        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=200 * 1024 * 1024)
        print(f"local Ray instance up in {time.monotonic() - started:.1f} s ({os.cpu_count()} CPUs), its processes "
              f"{ray_rss_mb()} MB resident", flush=True)
        results: dict[str, Any] = {}
        try:
            for replicas, batching in SETTINGS:
                config = config_for(repo, data_dir, replicas, batching, args.jobs, args.segment, args.max_batch)
                key = f"{replicas}r-{'batch' if batching else 'nobatch'}"
                results[key] = run_setting(config, data_dir, clips, warm, replicas)
                print(f"{key}: {json.dumps(results[key])}", flush=True)
        finally:
            ray.shutdown()
    base = results["1r-nobatch"]["throughput"]
    ratios = {key: round(r["throughput"] / base, 2) for key, r in results.items()}
    print("throughput ratios against 1 replica without batching: "
          + ", ".join(f"{key} {ratio:.2f}x" for key, ratio in ratios.items()))
    print(json.dumps({"jobs": args.jobs, "clip_seconds": args.seconds, "segment_seconds": args.segment,
                      "load_average": os.getloadavg(), "results": results, "ratios": ratios}))


if __name__ == "__main__":
    main()
