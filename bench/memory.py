"""The daemon's memory over jobs: what `daemon.malloc_tuning` keeps, and whether many jobs grow it.

Two measurements on a real daemon (`python -m bridge up` via `bridge.testing.DaemonProcess`):

* `malloc`: one daemon with `daemon.malloc_tuning` on and one with it off, each running a warm-up
  job (the model load) and then `--repeat` `stems.separate` jobs on `--seconds` of synthetic music
  (bench/separate.py's), the released htdemucs architecture (`bridge.testing.RELEASED_HTDEMUCS_KWARGS`,
  41.98 M parameters, random weights) unless `--tiny` (a small test model). Per job: wall time from
  the request to `job.done`, the resident memory once the job is over (after the worker has handed
  freed memory back: `malloc_trim(0)` with the tuning on) and the peak. The tuning pays when its
  jobs are faster; it must not keep the peak resident between jobs.
* `jobs`: `--jobs` small jobs (0.25 s of audio each, the tiny model, 8 in flight) on one daemon with
  the default config; resident memory after the first job and after every tenth of the run. The
  target: after all of them within 10 % of after the first.

Linux only (resident memory from /proc). The last line of output is one JSON object.

    .venv/bin/python bench/memory.py malloc [--seconds S] [--repeat N] [--threads N] [--tiny]
    .venv/bin/python bench/memory.py jobs [--jobs N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bridge`, `engines`, `bench` as a script

from bench.separate import SAMPLE_RATE, SUBTYPE, build_repo, music, process_memory_mb, settled_rss_mb
from bridge.client import Client
from bridge.testing import DaemonProcess, describe_htdemucs, tiny_htdemucs_repo

TARGET_GROWTH = 1.10


def _daemon(stack: ExitStack, folder: Path, overrides: dict[str, Any]) -> DaemonProcess:
    folder.mkdir(parents=True)
    daemon = DaemonProcess(overrides=overrides, workdir=folder)
    stack.callback(daemon.stop)
    return daemon.start(timeout_seconds=300)


def _run(client: Client, paths: list[Path]) -> float:
    started = time.perf_counter()
    ids = [client.call("stems.separate", {"path": str(path)})["id"] for path in paths]
    final = client.wait_jobs(ids, lambda *_: None, 1800)
    failed = [f for f in final.values() if f["event"] != "job.done"]
    if failed:
        raise RuntimeError(f"jobs ended badly: {failed[:3]}")
    return time.perf_counter() - started


def bench_malloc(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"bench": "memory.malloc", "seconds": args.seconds, "repeat": args.repeat,
                               "threads": args.threads, "loadavg_before": os.getloadavg()[0]}
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flowstate-bench-memory-")))
        repo, name = build_repo(folder / "models", args.tiny)
        results["model"] = name
        from demucs.pretrained import get_model

        results["model_architecture"] = describe_htdemucs(get_model(name, repo=repo).models[0])
        print(f"model {name}: {results['model_architecture']}"
              + (" (the small test model, NOT the product figure)" if args.tiny else ""), flush=True)
        for tuning in ("on", "off"):
            overrides = {
                "daemon": {"log_level": "WARNING", "malloc_tuning": tuning == "on"},
                "models": {"demucs_repo": str(repo)},
                "separate": {"model": name, "engine_device": "cpu", "threads": args.threads},
            }
            daemon = _daemon(stack, folder / f"daemon-{tuning}", overrides)
            assert daemon.process is not None
            pid = daemon.process.pid
            files = daemon.workdir / "files"
            source, warmup = files / "song.wav", files / "warmup.wav"
            soundfile.write(str(source), music(args.seconds), SAMPLE_RATE, subtype=SUBTYPE)
            soundfile.write(str(warmup), music(2.0, seed=1), SAMPLE_RATE, subtype=SUBTYPE)
            with Client(daemon.zmq_requests, timeout_seconds=60) as client:
                _run(client, [warmup])
                before = settled_rss_mb(pid)
                jobs = []
                for index in range(args.repeat):
                    wall = _run(client, [source])
                    after = settled_rss_mb(pid)
                    memory = process_memory_mb(pid)
                    jobs.append({"wall_s": round(wall, 2), "rss_after_mb": round(after or 0),
                                 "peak_mb": round(memory[1] if memory else 0)})
                    print(f"malloc_tuning {tuning:3}: job {index + 1}: {wall:7.2f} s, resident after {after:6.0f} MB, "
                          f"peak {jobs[-1]['peak_mb']:6.0f} MB (load {os.getloadavg()[0]:.2f})", flush=True)
            daemon.stop()
            results[tuning] = {"rss_before_mb": round(before or 0), "jobs": jobs}
    results["loadavg_after"] = os.getloadavg()[0]
    on, off = results["on"]["jobs"], results["off"]["jobs"]
    results["wall_ratio_on_off"] = round(sum(j["wall_s"] for j in on) / sum(j["wall_s"] for j in off), 3)
    print(f"\nmalloc_tuning on/off wall time {results['wall_ratio_on_off']:.3f} (below 1: the tuning pays); "
          f"resident after the last job: on {on[-1]['rss_after_mb']} MB, off {off[-1]['rss_after_mb']} MB; "
          f"peak: on {on[-1]['peak_mb']} MB, off {off[-1]['peak_mb']} MB")
    return results


def bench_jobs(args: argparse.Namespace) -> dict[str, Any]:
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flowstate-bench-jobs-")))
        repo = tiny_htdemucs_repo(folder / "models", "tiny", depth=3)
        overrides = {
            "daemon": {"log_level": "WARNING"},
            "models": {"demucs_repo": str(repo)},
            # One short segment per clip: the tiny model would otherwise pad each to its 4 s.
            "separate": {"model": "tiny", "engine_device": "cpu", "threads": 1, "segment_seconds": 0.25},
        }
        daemon = _daemon(stack, folder / "daemon", overrides)
        assert daemon.process is not None
        pid = daemon.process.pid
        files = daemon.workdir / "files"
        sources = []
        for index in range(8):  # 8 different files, reused; each job writes its own stems folder
            path = files / f"clip{index}.wav"
            soundfile.write(str(path), music(0.25, seed=index), SAMPLE_RATE, subtype=SUBTYPE)
            sources.append(path)
        started = time.perf_counter()
        samples: list[tuple[int, float]] = []
        with Client(daemon.zmq_requests, timeout_seconds=60) as client:
            _run(client, sources[:1])
            samples.append((1, settled_rss_mb(pid) or 0.0))
            done = 1
            step = max(1, args.jobs // 10)
            while done < args.jobs:
                batch = [sources[(done + i) % len(sources)] for i in range(min(8, args.jobs - done))]
                _run(client, batch)
                done += len(batch)
                if done % step < len(batch) or done == args.jobs:
                    samples.append((done, settled_rss_mb(pid) or 0.0))
                    print(f"  {done:6d} jobs: resident {samples[-1][1]:7.1f} MB (load {os.getloadavg()[0]:.2f})",
                          flush=True)
        wall = time.perf_counter() - started
    first, last = samples[0][1], samples[-1][1]
    growth = last / first if first else float("nan")
    verdict = "met" if growth <= TARGET_GROWTH else "NOT met"
    print(f"\n{args.jobs} jobs in {wall:.0f} s: resident {first:.1f} MB after the first, {last:.1f} MB after the last: "
          f"x{growth:.3f} (target <= {TARGET_GROWTH}: {verdict})")
    return {"bench": "memory.jobs", "jobs": args.jobs, "wall_s": round(wall, 1), "rss_first_mb": round(first, 1),
            "rss_last_mb": round(last, 1), "growth": round(growth, 4), "target_growth": TARGET_GROWTH,
            "samples": [[n, round(mb, 1)] for n, mb in samples]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    malloc = sub.add_parser("malloc", help="daemon.malloc_tuning on against off")
    malloc.add_argument("--seconds", type=float, default=30.0, help="audio per job (default 30)")
    malloc.add_argument("--repeat", type=int, default=2, help="jobs per setting after the warm-up")
    malloc.add_argument("--threads", type=int, default=2, help="separate.threads")
    malloc.add_argument("--tiny", action="store_true",
                        help="the small test HTDemucs instead of the released architecture")
    jobs = sub.add_parser("jobs", help="resident memory over many small jobs")
    jobs.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args(argv)
    if not Path("/proc/self/status").exists():
        parser.error("reads resident memory from /proc: Linux only")
    results = bench_malloc(args) if args.mode == "malloc" else bench_jobs(args)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
