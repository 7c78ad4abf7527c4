"""Live stems in real time: the daemon's stream on JACK's dummy backend for a minute.

What it shows: whether a setting runs in real time on this machine — load below 1 and no late
hops over the whole run, with the latency the daemon reports. The released htdemucs architecture
(`bridge.testing.RELEASED_HTDEMUCS_KWARGS`, 41.98 M parameters) runs with random weights (the speed is the same as trained weights). The baseline, measured in
the same run after the stream stops, is a bare `model(window)` forward on windows of the same
size: `ratio` = the stream's compute per hop / the bare forward (the stream's overhead).

    .venv/bin/python bench/stream_live.py [--seconds 60] [--hop 0.25] [--threads 2]

Needs `jackd` (make test installs jackd2). The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.client import Client  # noqa: E402
from bridge.testing import DaemonProcess, released_htdemucs_repo  # noqa: E402


def start_jack() -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    name = f"flowstate-bench-{uuid.uuid4().hex[:6]}"
    env = {"JACK_NO_START_SERVER": "1", "JACK_DEFAULT_SERVER": name}
    process = subprocess.Popen(
        ["jackd", "-n", name, "--no-realtime", "-d", "dummy", "-r", "48000", "-p", "256"],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    subprocess.run(["jack_wait", "-w", "-t", "10"], env={**os.environ, **env}, check=True, capture_output=True)
    return process, env


def bare_forward_ms(repo: Path, window_seconds: float, threads: int, count: int = 20) -> float:
    """p50 of a bare `model(window)` forward, same model, same window length, same threads."""
    import torch
    from demucs.pretrained import get_model

    torch.set_num_threads(threads)
    model = get_model("htdemucs_bench", repo=repo).models[0].eval()
    model.use_train_segment = False
    window = torch.randn(1, 2, int(round(window_seconds * model.samplerate)))
    times = []
    with torch.inference_mode():
        for index in range(count + 3):
            start = time.perf_counter()
            model(window)
            if index >= 3:
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--context", type=float, default=None, help="context seconds (default: the CPU default)")
    parser.add_argument("--hop", type=float, default=None, help="hop seconds (default: the CPU default)")
    parser.add_argument("--lookahead", type=float, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="flowstate-bench-"))
    repo = released_htdemucs_repo(workdir / "models", "htdemucs_bench")
    jack, env = start_jack()
    stream = {
        "model": "htdemucs_bench", "engine_device": "cpu", "threads": args.threads,
        "context_seconds": args.context, "hop_seconds": args.hop, "lookahead_seconds": args.lookahead,
    }
    daemon = DaemonProcess(
        overrides={"models": {"demucs_repo": str(repo)}, "stream": stream, "daemon": {"log_level": "WARNING"}},
        workdir=workdir, env=env,
    ).start()
    samples: list[dict[str, Any]] = []
    try:
        with Client(daemon.zmq_requests, timeout_seconds=120) as client:
            started = client.call("stream.start")
            print(f"stream: {started['device']}, hop {started['hop_frames']} frames, "
                  f"latency {started['latency_ms']:.1f} ms, round trip {started['round_trip_ms']:.1f} ms; "
                  f"hop: {started.get('hop_choice')}")
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
                status = client.call("stream.status")
                samples.append(status)
                print(f"  t={status['seconds']:5.1f} s  hops {status['hops']:4d}  load p50 {status['load']:.2f} "
                      f"p99 {status['load_p99']:.2f}  late hops {status['late_hops']}  xruns {status['xruns']}")
            final = client.call("stream.stop")
    finally:
        daemon.stop()
        jack.terminate()
        jack.wait(5)
    window_seconds = final["window_seconds"]
    bare = bare_forward_ms(repo, window_seconds, args.threads)
    ratio = final["compute_ms_p50"] / bare
    real_time = final["late_hops"] == 0 and final["load_p99"] < 1.0
    print(f"bare model(window) forward: {bare:.1f} ms; stream compute p50 {final['compute_ms_p50']:.1f} ms; "
          f"ratio {ratio:.3f}")
    print(f"real time over {args.seconds:.0f} s: {'yes' if real_time else 'NO'} "
          f"(late hops {final['late_hops']}, xruns {final['xruns']}, load p50 {final['load']:.2f}, "
          f"p99 {final['load_p99']:.2f})")
    figures = {
        "bench": "stream_live",
        "seconds": args.seconds,
        "threads": args.threads,
        "hop_frames": final["hop_frames"], "hop_choice": started.get("hop_choice"),
        "window_seconds": round(window_seconds, 4),
        "latency_ms": final["latency_ms"],
        "round_trip_ms": final["round_trip_ms"],
        "compute_ms_p50": round(final["compute_ms_p50"], 2),
        "compute_ms_p99": round(final["compute_ms_p99"], 2),
        "load_p50": round(final["load"], 3),
        "load_p99": round(final["load_p99"], 3),
        "late_hops": final["late_hops"],
        "xruns": final["xruns"],
        "hops": final["hops"],
        "bare_forward_ms_p50": round(bare, 2),
        "ratio": round(ratio, 3),
        "real_time": real_time,
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
