"""Streaming HTDemucs: per-hop cost, load and latency of `StreamingSeparator`, against bare forwards.

The model is the released htdemucs architecture (`bridge.testing.RELEASED_HTDEMUCS_KWARGS`, 41.98 M
parameters, the published checkpoints' shape; seeded random weights: the cost does not depend on
the weights), saved as a demucs local repo and loaded through the engine's real loader. For each
(context, hop, lookahead) setting it streams `--seconds` of noise at 48 kHz in device blocks of
the daemon's `stream.block_size` (512 frames) and, on the very windows the engine separates (cut
from the same input, resampled by the same resampler), times a bare `model(window)` forward under
`inference_mode`, interleaved hop by hop so that load from elsewhere on a shared machine hits both
alike. The audio is streamed `ROUNDS` times in a row as one stream.

Figures per setting:
* `p50_ms`, `p99_ms`: the engine's own compute time per hop (model, bag weighting, overlap-add,
  host copy), from `stats()`.
* `load_p50`, `load_p99`: that time over the hop's duration; real time needs load_p99 < 1.
* `latency_ms`: the engine's exact delay (`latency_ms`: hop + lookahead + resamplers).
* `total_ms` = latency_ms + hop_ms: the output of a hop is due one hop after its window is
  complete, the compute budget a worker thread must meet anyway (valid while load_p99 < 1).
  `tight_ms` = latency_ms + p99_ms is the least a stream could add instead. The audio device's
  own buffer (`stream.block_size`, 512 frames, 10.7 ms at 48 kHz) comes on top of both.
* `ratio`: the engine's per-hop compute p50 over the bare forward's p50 on the same windows, the
  bare forward run by what the engine runs (`backend`: eager torch, or its OpenVINO build, which
  the model's default `auto` takes where it measures faster; `--backend` to choose).
  `ratio_total`: every `process()` call's wall time, summed (resampling, FIFO, buffers, model),
  over the bare forwards, summed. Target <= 1.10 for both.
* `x_rt`: audio separated (hops x hop) per second of `process()` wall time; real time needs > 1.
* Baseline: demucs's `apply_model(shifts=0, split=True, overlap=0.25)` on the same audio at
  44.1 kHz, offline, on the same checkpoint loaded as demucs's CLI loads it (each 7.8 s segment
  padded to the training length), as x real time.
* The machine's speed, before the settings: the bare forward p50 of a 1.02 s window
  (`bridge.testing.REFERENCE_WINDOW_SECONDS`, the CPU default's until 2026-12-04) of the released architecture, the
  figure latency targets are stated against (<= 0.35 s), and of demucs's default-argument model
  (26.9 M parameters, lighter than any released checkpoint: an extra labelled line that shows what
  the released architecture costs, `released/default`; never a product figure). `--no-default-model`
  skips the latter.

    .venv/bin/python bench/stream.py [--device cpu|cuda|mps|auto] [--seconds S] [--threads N] [--no-default-model]
        [--backend auto|torch|openvino]
    .venv/bin/python bench/stream.py --streams 1,4,8 [--unbatched] [--device cuda] [--setting C,H,L] [--tiny]
    .venv/bin/python bench/stream.py --backends [--rounds N] [--threads N] [--hops 0.25,0.5,1,2,4] [--busy N]

`--backends` compares only the inference backends (stream.backend, engines/inference.py) on the
CPU default's window: eager torch against OpenVINO, per-window compute (whole, and the network
between the STFT and its inverse alone), taking turns, their max abs difference, and the end-to-end
latency each gives (the engine's latency + 1.3 x p99, the default compute budget). `--hops` adds
a row per hop of the ladder (HOP_LADDER: where the engine climbs on a slow or busy machine) with
the CPU default's context and lookahead: both backends' window p50/p99, load (p99 / hop), end to
end, and OpenVINO's build for that window from the kept conversion. `--busy N` keeps N processes
spinning on a core each through the whole comparison (builds too): a machine busy elsewhere.

Concurrent streams (issue 12: GPU readiness), `--streams 1,4,8`: instead of the settings table, for
each N, N engines (each its own model copy, as the daemon's device stream and audio-socket clients
have) share one `WindowBatcher` (engines/batching.py, the daemon's default gather period) at the
device's default setting (`--setting C,H,L` to choose), each fed `--seconds` of its own noise in
512-frame blocks paced in real time like a device, each stream's worker thread taking what has
arrived as the live worker does (stream k starts k blocks after stream 0: hops that align within a
few blocks). Per N:
* `p50_ms`, `p99_ms`: each stream's compute per hop (waiting for its batch included), worst stream;
  `load99` = p99 over the hop (real time needs < 1);
* `rt_ms`: the round trip a live stream would report: the engine's exact latency + a compute budget
  of 1.3 x p99 in whole blocks (bridge/stream.py) + one block (as `stream.status`'s `round_trip_ms`);
* `batch`: mean windows per forward; `fwd_ms`: a batched forward's p50; `dev_load`: the model's
  busy time over the wall time (sum of the batches' forwards / elapsed);
* `ratio`: a bare forward of N stacked windows over N separate forwards of one (median of 5 each):
  what batching saves on this device (near 1/N on a GPU with room, about 1 on a CPU).
* `--unbatched`: for each N > 1 a second row, the same streams each running its own windows (no
  batcher): the baseline batching is measured against;
* the worst stream's three slowest hops: when in the stream, the batch they were in and that
  batch's forward time (the rest of a hop's compute is waiting for the batch).
On a CPU it runs too, labelled: batching is for GPUs (`stream.batch_streams: auto` is off there).
`--tiny` runs it on the 27 k-parameter test model (checks the bench itself; not a product figure).

The last line of output is one JSON object with every figure. Run time: every hop is computed twice
(engine and bare forward). On the 2-core AMD EPYC at load average 10 (2026-12-02),
`--seconds 1 --threads 1` took 7 minutes, with a 1.02 s window at 3.3 s. There, 2 threads were
slower still: torch's OpenMP threads spin-wait for a core.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bridge`, `engines` when run as a script

from bridge.config_sections import StreamConfig
from bridge.testing import (
    REFERENCE_WINDOW_SECONDS,
    bare_forward_ms,
    default_argument_htdemucs,
    describe_htdemucs,
    device_label,
    released_htdemucs,
    released_htdemucs_repo,
)
from engines.base import synchronize
from engines.resample import StreamingResampler
from engines.separation.streaming import CPU_DEFAULTS, CUDA_DEFAULTS, StreamingSeparator, stream_defaults

SAMPLE_RATE = 48000
BLOCK = StreamConfig().block_size  # the daemon's device block (stream.block_size)
ROUNDS = 2
TARGET_RATIO = 1.10
SETTINGS: tuple[tuple[float, float, float], ...] = (
    CPU_DEFAULTS,
    (0.5, 0.5, 0.25),
    (1.0, 0.25, 0.25),
    (0.25, 0.1, 0.1),
)


def build_repo(folder: Path) -> Path:
    return released_htdemucs_repo(folder, "htdemucs_random")


def engine_windows(engine: StreamingSeparator, audio: np.ndarray) -> list[np.ndarray]:
    """The model-rate windows the engine separates for `audio`, cut the way the engine cuts them."""
    rate = engine.model_sample_rate
    context, hop, lookahead = (round(s * rate) for s in (engine.context_seconds, engine.hop_seconds,
                                                          engine.lookahead_seconds))
    resampler = StreamingResampler(SAMPLE_RATE, rate, audio.shape[0], whole_delay=True)
    offset = round(resampler.delay_frames)
    mono = resampler.process(audio)
    padded = np.concatenate([np.zeros((2, context), np.float32), mono[:, offset:]], axis=1)
    count = (padded.shape[1] - context - lookahead) // hop
    return [np.ascontiguousarray(padded[:, k * hop:k * hop + context + hop + lookahead]) for k in range(count)]


def run_setting(repo: Path, device: str, precision: str, threads: int | None, audio: np.ndarray,
                setting: tuple[float, float, float], backend: str | None = None) -> dict[str, Any]:
    import torch

    context, hop, lookahead = setting
    engine = StreamingSeparator("htdemucs_random", repo=repo, device=device, sample_rate=SAMPLE_RATE,
                                context_seconds=context, hop_seconds=hop, lookahead_seconds=lookahead,
                                precision=precision, threads=threads, backend=backend)
    engine.load()
    model = engine._runners[0]  # what the engine runs: the module, or its OpenVINO build
    stream = np.concatenate([audio] * ROUNDS, axis=1)  # one continuous stream, ROUNDS passes over the audio
    windows = [torch.from_numpy(w)[None].to(engine.device) for w in engine_windows(engine, stream)]

    def bare(window: Any) -> float:
        started = time.perf_counter()
        with torch.inference_mode(), engine._autocast():
            model(window)
        synchronize(engine.device)
        return time.perf_counter() - started

    # Warm-up: allocator, oneDNN primitives, cuDNN plans.
    bare(windows[0])
    engine.process(stream[:, :engine.hop_frames * 3])
    engine.reset()

    # Interleaved at hop granularity: after each engine hop, the bare forward of that same window,
    # so a burst of load from elsewhere on the machine hits both sides alike.
    engine_seconds, bare_times = 0.0, []
    for start in range(0, stream.shape[1], BLOCK):
        started = time.perf_counter()
        engine.process(stream[:, start:start + BLOCK])
        engine_seconds += time.perf_counter() - started
        while len(bare_times) < engine._stream_hops:
            bare_times.append(bare(windows[len(bare_times)]))
    stats = engine.stats()
    hops, hop_ms = stats["hops"], stats["hop_ms"]
    p50, p99 = stats["compute_ms_p50"], stats["compute_ms_p99"]
    bare_p50 = 1000 * float(np.median(bare_times))
    result = {
        "backend": engine.backend,
        "context_s": round(engine.context_seconds, 4),
        "hop_s": round(engine.hop_seconds, 4),
        "lookahead_s": round(engine.lookahead_seconds, 4),
        "window_s": round(engine.window_seconds, 4),
        "hops": hops,
        "p50_ms": round(p50, 2),
        "p99_ms": round(p99, 2),
        "bare_p50_ms": round(bare_p50, 2),
        "load_p50": round(p50 / hop_ms, 3),
        "load_p99": round(p99 / hop_ms, 3),
        "latency_ms": round(engine.latency_ms, 2),
        "total_ms": round(engine.latency_ms + hop_ms, 2),
        "tight_ms": round(engine.latency_ms + p99, 2),
        "ratio": round(p50 / bare_p50, 3),
        "ratio_total": round(engine_seconds / sum(bare_times), 3),
        "x_realtime": round(hops * engine.hop_seconds / engine_seconds, 2),
    }
    engine.close()
    return result


def run_streams(repo: Path, name: str, device: str, precision: str, threads: int | None, count: int,
                setting: tuple[float, float, float], seconds: float, batched: bool = True) -> dict[str, Any]:
    """`count` engines sharing one window batcher (or, not `batched`, each running its own windows),
    each fed in real time from its own thread."""
    import threading

    import torch

    from bridge.stream import budget_frames_for
    from engines.batching import WindowBatchers

    context, hop, lookahead = setting
    pool = WindowBatchers(max_streams=count) if batched else None
    engines = [StreamingSeparator(name, repo=repo, device=device, sample_rate=SAMPLE_RATE, context_seconds=context,
                                  hop_seconds=hop, lookahead_seconds=lookahead, precision=precision, threads=threads,
                                  batching=pool) for _ in range(count)]
    for engine in engines:
        engine.load()
    frames = int(seconds * SAMPLE_RATE)
    audios = [(0.1 * np.random.default_rng(k).standard_normal((2, frames))).astype(np.float32) for k in range(count)]
    errors: list[BaseException] = []
    begin = time.perf_counter() + 0.2

    def feed(k: int) -> None:
        # Like the live worker (bridge/stream.py): every block the device has delivered, up to a hop
        # at a time, with the frames before a window's last one fed on their own.
        try:
            start_at = begin + k * BLOCK / SAMPLE_RATE
            engine, fed, hop_frames = engines[k], 0, engines[k].hop_frames
            while fed < frames:
                arrived = min(frames, int((time.perf_counter() - start_at) * SAMPLE_RATE) // BLOCK * BLOCK)
                if arrived <= fed:
                    time.sleep(max(0.0, start_at + (fed + BLOCK) / SAMPLE_RATE - time.perf_counter()))
                    continue
                n = min(arrived - fed, hop_frames)
                until = engine.input_frames_to_window()
                if 1 < until <= n:
                    n = until - 1
                engine.process(audios[k][:, fed:fed + n])
                fed += n
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    threads_ = [threading.Thread(target=feed, args=(k,), name=f"bench-stream-{k}") for k in range(count)]
    for thread in threads_:
        thread.start()
    for thread in threads_:
        thread.join()
    elapsed = time.perf_counter() - begin
    if errors:
        raise errors[0]
    stats = [engine.stats() for engine in engines]
    # The model's busy time: each batch's forward once (every member records it; divide by the size).
    busy_ms = sum(float((e._forward_ms[:min(s["hops"], len(e._forward_ms))]
                         / np.maximum(e._batch_sizes[:min(s["hops"], len(e._batch_sizes))], 1)).sum())
                  for e, s in zip(engines, stats, strict=True))
    # Bare forwards: N stacked windows against one window N times, on the first engine's model.
    model = engines[0]._models[0]
    window = torch.randn((1, 2, round(engines[0].window_seconds * engines[0].model_sample_rate)),
                         device=engines[0].device)
    stacked = window.repeat(count, 1, 1)

    def timed(batch: Any) -> float:
        started = time.perf_counter()
        with torch.inference_mode(), engines[0]._autocast():
            model(batch)
        synchronize(engines[0].device)
        return time.perf_counter() - started

    timed(stacked)
    single = float(np.median([timed(window) for _ in range(5)]))
    stacked_s = float(np.median([timed(stacked) for _ in range(5)]))
    p99 = max(st["compute_ms_p99"] for st in stats)
    # Where the worst stream's slowest hops were: its hop number (and when in the stream), its
    # compute, the batch it was in and that batch's forward (the rest is waiting for the batch).
    # The engine keeps its last STATS_WINDOW hops in rings: slot i holds the latest hop k with k % size == i.
    worst = max(range(count), key=lambda k: stats[k]["compute_ms_p99"])
    ring, total = engines[worst]._compute_ms, stats[worst]["hops"]
    kept = min(total, len(ring))

    def hop_of(slot: int) -> int:
        return slot + len(ring) * ((total - 1 - slot) // len(ring))

    slowest = [{"hop": hop_of(int(i)), "at_s": round(hop_of(int(i)) * engines[worst].hop_seconds, 2),
                "compute_ms": round(float(ring[i]), 1), "batch": int(engines[worst]._batch_sizes[i]),
                "forward_ms": round(float(engines[worst]._forward_ms[i]), 1)}
               for i in np.argsort(ring[:kept])[::-1][:3]]
    budget = budget_frames_for(p99, 1.3, SAMPLE_RATE, BLOCK)  # no lead at 48 kHz: the windows end anywhere in a block
    hop_ms = stats[0]["hop_ms"]
    result = {
        "streams": count,
        "setting_s": [round(engines[0].context_seconds, 4), round(engines[0].hop_seconds, 4),
                      round(engines[0].lookahead_seconds, 4)],
        "hops_per_stream": min(st["hops"] for st in stats),
        "p50_ms": round(max(st["compute_ms_p50"] for st in stats), 2),
        "p99_ms": round(p99, 2),
        "load_p99": round(p99 / hop_ms, 3),
        "latency_ms": round(engines[0].latency_ms, 2),
        "round_trip_ms": round(engines[0].latency_ms + 1000.0 * (budget + BLOCK) / SAMPLE_RATE, 2),
        "batched": batched,
        "batch_size_mean": round(float(np.mean([st["batch_size_mean"] for st in stats])), 2),
        "batch_sizes": pool.describe()[0]["sizes"] if pool is not None else {1: sum(st["hops"] for st in stats)},
        "slowest_hops": slowest,
        "forward_ms_p50": round(float(np.median([st["forward_ms_p50"] for st in stats])), 2),
        "device_load": round(busy_ms / (1000.0 * elapsed), 3),
        "bare_single_ms": round(1000 * single, 2),
        "bare_batched_ms": round(1000 * stacked_s, 2),
        "batched_over_separate": round(stacked_s / (count * single), 3),
    }
    for engine in engines:
        engine.close()
    return result


def streams_main(args: argparse.Namespace) -> int:
    """`--streams`: concurrent streams batched into shared forwards (see the module docstring)."""
    import torch

    from bridge.testing import tiny_htdemucs_repo
    from engines.base import pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    counts = [int(n) for n in args.streams.split(",")]
    setting = (tuple(float(x) for x in args.setting.split(",")) if args.setting
               else stream_defaults("htdemucs", device.type))
    load_before = os.getloadavg()
    started = time.perf_counter()
    reference = None if args.tiny else reference_forward(device, with_default=False)
    with tempfile.TemporaryDirectory(prefix="flowstate-bench-") as folder:
        if args.tiny:
            repo, name = tiny_htdemucs_repo(Path(folder), depth=3), "tiny"
        else:
            repo, name = build_repo(Path(folder)), "htdemucs_random"
        rows = []
        for n in counts:
            rows.append(run_streams(repo, name, args.device, args.precision, args.threads, n, setting, args.seconds))
            if args.unbatched and n > 1:  # the baseline: the same streams, each running its own windows
                rows.append(run_streams(repo, name, args.device, args.precision, args.threads, n, setting,
                                        args.seconds, batched=False))
    load_after = os.getloadavg()
    device_name = device_label(device)
    label = "" if device.type == "cuda" else " [CPU: batching is for GPUs; stream.batch_streams auto is off here]"
    model = "the 27 k-parameter test model (checks the bench; not a product figure)" if args.tiny \
        else "the released htdemucs architecture (random weights)"
    print(f"Concurrent streams batched into shared forwards, {model}, {device_name}, {args.precision}, "
          f"{SAMPLE_RATE} Hz in {BLOCK}-frame blocks paced in real time, {args.seconds:g} s per stream{label}")
    if reference is not None:
        print(f"this machine: bare forward of a {reference['window_s']:.2f} s window, released architecture: "
              f"{reference['released_ms']:.0f} ms p50 (latency targets assume <= 350 ms)")
    header = (f"{'N':>3} {'mode':>5} {'ctx/hop/look s':>17} {'hops':>5} {'p50 ms':>7} {'p99 ms':>7} {'load99':>6} "
              f"{'lat ms':>7} {'rt ms':>7} {'batch':>5} {'fwd ms':>7} {'dev_load':>8} {'1 fwd':>7} {'N stk':>7} "
              f"{'ratio':>5}")
    print(header)
    print("-" * len(header))
    for row in rows:
        setting_text = "/".join(f"{x:.3f}" for x in row["setting_s"])
        mode = "batch" if row["batched"] else "alone"
        print(f"{row['streams']:>3} {mode:>5} {setting_text:>17} {row['hops_per_stream']:>5} {row['p50_ms']:>7.1f} "
              f"{row['p99_ms']:>7.1f} {row['load_p99']:>6.2f} {row['latency_ms']:>7.1f} {row['round_trip_ms']:>7.1f} "
              f"{row['batch_size_mean']:>5.2f} {row['forward_ms_p50']:>7.1f} {row['device_load']:>8.2f} "
              f"{row['bare_single_ms']:>7.1f} {row['bare_batched_ms']:>7.1f} {row['batched_over_separate']:>5.2f}")
    for row in rows:
        print(f"  N={row['streams']} batching {'on' if row['batched'] else 'off'}: the worst stream's slowest hops "
              + ", ".join(f"#{h['hop']} ({h['at_s']} s) {h['compute_ms']} ms in a batch of {h['batch']}"
                          f" whose forward took {h['forward_ms']} ms" for h in row["slowest_hops"]))
    print(f"p50/p99: each stream's compute per hop, its wait for the batch included (worst stream); rt = latency + "
          f"1.3 x p99 in whole blocks + one block; ratio = N stacked windows / N separate forwards; mode: batch = "
          f"the streams share forwards, alone = each runs its own (--unbatched). Run took "
          f"{time.perf_counter() - started:.0f} s; load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after.")
    print(json.dumps({
        "bench": "stream.streams", "device": str(device), "device_name": device_name, "precision": args.precision,
        "tiny": args.tiny, "sample_rate": SAMPLE_RATE, "block": BLOCK, "seconds": args.seconds,
        "reference_forward": reference, "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after], "rows": rows,
    }))
    return 0


def apply_model_baseline(repo: Path, device: str, audio: np.ndarray) -> dict[str, Any]:
    import julius
    import torch
    from demucs.apply import apply_model
    from demucs.pretrained import get_model

    from engines.base import pick_device

    target = pick_device(device)
    bag = get_model("htdemucs_random", repo=repo)  # as demucs's CLI loads it: 7.8 s training segments
    mix = julius.resample_frac(torch.from_numpy(audio), SAMPLE_RATE, bag.samplerate)[None]
    with torch.inference_mode():  # warm-up on the same 7.8 s segment shape
        apply_model(bag, mix[..., :bag.samplerate], shifts=0, split=True, overlap=0.25, device=target)
    started = time.perf_counter()
    with torch.inference_mode():
        apply_model(bag, mix, shifts=0, split=True, overlap=0.25, device=target)
    synchronize(target)
    elapsed = time.perf_counter() - started
    seconds = mix.shape[-1] / bag.samplerate
    return {"audio_s": round(seconds, 2), "wall_s": round(elapsed, 3), "x_realtime": round(seconds / elapsed, 2)}


def reference_forward(device: Any, with_default: bool) -> dict[str, Any]:
    """This machine's speed: bare forward p50 of a 1.02 s window, released architecture (and default-argument)."""
    released = released_htdemucs().to(device)
    models = [released]
    if with_default:
        models.append(default_argument_htdemucs().to(device))
    times = bare_forward_ms(*models, window_seconds=REFERENCE_WINDOW_SECONDS)
    result: dict[str, Any] = {"window_s": round(REFERENCE_WINDOW_SECONDS, 4), "released_ms": round(times[0], 1),
                              "released_model": describe_htdemucs(released)}
    if with_default:
        result.update(default_args_ms=round(times[1], 1), default_args_model=describe_htdemucs(models[1]),
                      released_over_default=round(times[0] / times[1], 3))
    return result


def setting_figures(repo: Path, setting: tuple[float, float, float], rate: int) -> tuple[int, float]:
    """The window (frames at the model's `rate`) and the latency (ms at SAMPLE_RATE) the engine gives `setting`:
    neither depends on the model or the backend, so a tiny one on torch answers (no conversion)."""
    context, hop, lookahead = setting
    engine = StreamingSeparator("tiny", repo=repo, device="cpu", sample_rate=SAMPLE_RATE, context_seconds=context,
                                hop_seconds=hop, lookahead_seconds=lookahead, backend="torch")
    try:
        return round(engine.window_seconds * rate), engine.latency_ms
    finally:
        engine.close()


def taking_turns(runs: dict[str, Any], rounds: int) -> dict[str, list[float]]:
    """Each of `runs` once per round, in turn (load from elsewhere hits them alike), `rounds` + 1
    rounds with the first one untimed (warm-up); ms per run."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(rounds + 1):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            if round_:
                times[name].append(1000.0 * (time.perf_counter() - started))
    return times


def percentiles(times: dict[str, list[float]]) -> dict[str, float]:
    return {f"{name}_{label}_ms": round(float(np.percentile(values, q)), 1)
            for name, values in times.items() for label, q in (("p50", 50), ("p99", 99))}


def compare_backends(rounds: int, hops: list[float], margin: float = 1.3) -> dict[str, Any]:
    """Eager torch against OpenVINO (engines/inference.py) on the released architecture, the CPU
    default's window (0.86 s; 1.02 s before 2026-12-04): per-window compute, whole (STFT, network,
    iSTFT) and the network alone, taking turns window by window; the max abs difference; and the end-to-end latency each
    gives, the engine's latency at the CPU default plus a compute budget of `margin` x p99. Then the
    same for the whole window at each of `hops` (the hop ladder's rungs, CPU default context and
    lookahead), each rung's OpenVINO build made from the kept conversion, as a climb makes it."""
    import torch

    import engines.inference
    from bridge.testing import tiny_htdemucs_repo
    from engines.inference import ConversionCache, OpenVinoModel, htdemucs_core

    model = released_htdemucs()
    model.use_train_segment = False
    context, default_hop, lookahead = CPU_DEFAULTS
    threads = torch.get_num_threads()
    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="flowstate-bench-") as folder:
        tiny = tiny_htdemucs_repo(Path(folder) / "tiny", depth=3)
        cache = ConversionCache(Path(folder) / "openvino")
        frames, latency_ms = setting_figures(tiny, CPU_DEFAULTS, model.samplerate)
        window = torch.randn(1, 2, frames, generator=generator)
        started = time.perf_counter()
        compiled = OpenVinoModel(model, window, threads, cache)  # converts, and keeps the conversion
        convert_s = time.perf_counter() - started
        # A build for the next rung's window (the 1.5 s hop's: 0.5 s longer) from that conversion,
        # what the hop ladder and a climb while running pay; then a later start's, from the disk.
        longer = torch.randn(1, 2, frames + round(0.5 * model.samplerate / 1024) * 1024)
        started = time.perf_counter()
        OpenVinoModel(model, longer, threads, cache)
        rebuild_s = time.perf_counter() - started
        engines.inference._CONVERTED.clear()  # as in a new process
        engines.inference._RECENT.clear()
        started = time.perf_counter()
        OpenVinoModel(model, window, threads, cache)
        cached_s = time.perf_counter() - started
        core = htdemucs_core(model)
        with torch.inference_mode():
            mag = model._magnitude(model._spec(window))
            difference = float((model(window) - compiled(window)).abs().max())
            times = taking_turns({"torch": lambda: model(window), "openvino": lambda: compiled(window),
                                  "torch_network": lambda: core(window, mag),
                                  "openvino_network": lambda: compiled.network(window, mag)}, rounds)
        rungs = []
        for hop in hops:
            row: dict[str, Any] = {"hop_s": hop}
            if hop == default_hop:
                row.update(window_s=round(frames / model.samplerate, 4), latency_ms=round(latency_ms, 1), build_s=None,
                           **percentiles({name: times[name] for name in ("torch", "openvino")}))
            else:
                rung_frames, rung_latency = setting_figures(tiny, (context, hop, lookahead), model.samplerate)
                rung_window = torch.randn(1, 2, rung_frames, generator=generator)
                started = time.perf_counter()
                rung_compiled = OpenVinoModel(model, rung_window, threads, cache)
                build_s = time.perf_counter() - started
                with torch.inference_mode():
                    rung_times = taking_turns({"torch": functools.partial(model, rung_window),
                                               "openvino": functools.partial(rung_compiled, rung_window)}, rounds)
                row.update(window_s=round(rung_frames / model.samplerate, 4), latency_ms=round(rung_latency, 1),
                           build_s=round(build_s, 1), **percentiles(rung_times))
            for name in ("torch", "openvino"):
                row[f"{name}_load_p99"] = round(row[f"{name}_p99_ms"] / (1000.0 * hop), 2)
                row[f"{name}_end_to_end_ms"] = round(row["latency_ms"] + margin * row[f"{name}_p99_ms"], 1)
            row["speedup_p50"] = round(row["torch_p50_ms"] / row["openvino_p50_ms"], 3)
            rungs.append(row)
    result: dict[str, Any] = {"window_s": round(frames / model.samplerate, 4), "rounds": rounds,
                              "convert_s": round(convert_s, 1), "rebuild_s": round(rebuild_s, 1),
                              "cached_start_s": round(cached_s, 1), "max_abs_difference": difference,
                              "latency_ms_before_budget": round(latency_ms, 1), "budget_margin": margin,
                              **percentiles(times)}
    for name in ("torch", "openvino"):
        result[f"{name}_end_to_end_ms"] = round(latency_ms + margin * result[f"{name}_p99_ms"], 1)
    result["speedup_window_p50"] = round(result["torch_p50_ms"] / result["openvino_p50_ms"], 3)
    result["speedup_network_p50"] = round(result["torch_network_p50_ms"] / result["openvino_network_p50_ms"], 3)
    result["rungs"] = rungs
    return result


def main_backends(rounds: int, hops: list[float], busy: int) -> int:
    import torch

    from bridge.testing import busy_processes

    load_before = os.getloadavg()
    started = time.perf_counter()
    with busy_processes(busy):
        row = compare_backends(rounds, hops)
    load_after = os.getloadavg()
    print(f"{describe_htdemucs(released_htdemucs())} (random weights), cpu, {torch.get_num_threads()} threads, "
          f"a {row['window_s']:.2f} s window (the CPU default), {rounds} rounds taking turns"
          f"{f', {busy} busy process(es) beside it' if busy else ''}; OpenVINO: conversion "
          f"and build {row['convert_s']:.1f} s, a build for a 0.5 s longer window {row['rebuild_s']:.1f} s, a later "
          f"start's build from the kept conversion {row['cached_start_s']:.1f} s; max abs difference "
          f"{row['max_abs_difference']:.2g}")
    for name in ("torch", "openvino"):
        print(f"{name:>9}: window p50 {row[f'{name}_p50_ms']:.0f} ms, p99 {row[f'{name}_p99_ms']:.0f} ms; network "
              f"between STFT and iSTFT p50 {row[f'{name}_network_p50_ms']:.0f} ms; end to end "
              f"{row['latency_ms_before_budget']:.1f} + {row['budget_margin']} x p99 = "
              f"{row[f'{name}_end_to_end_ms']:.0f} ms")
    print(f"torch/openvino: window {row['speedup_window_p50']:.2f}x, network {row['speedup_network_p50']:.2f}x.")
    if hops != [CPU_DEFAULTS[1]]:
        header = (f"{'hop s':>6} {'window s':>8} {'build s':>7} {'torch p50':>9} {'p99':>6} {'load99':>6} "
                  f"{'OV p50':>7} {'p99':>6} {'load99':>6} {'torch/OV':>8} {'e2e torch':>9} {'e2e OV':>7}")
        print(f"the hop ladder's rungs (context {CPU_DEFAULTS[0]} s, lookahead {CPU_DEFAULTS[2]} s; ms; load99 = "
              "p99 / hop, real time needs < 1; e2e = latency + 1.3 x p99):")
        print(header)
        print("-" * len(header))
        for rung in row["rungs"]:
            build = "-" if rung["build_s"] is None else f"{rung['build_s']:.1f}"
            print(f"{rung['hop_s']:>6.2f} {rung['window_s']:>8.2f} {build:>7} {rung['torch_p50_ms']:>9.0f} "
                  f"{rung['torch_p99_ms']:>6.0f} {rung['torch_load_p99']:>6.2f} {rung['openvino_p50_ms']:>7.0f} "
                  f"{rung['openvino_p99_ms']:>6.0f} {rung['openvino_load_p99']:>6.2f} {rung['speedup_p50']:>7.2f}x "
                  f"{rung['torch_end_to_end_ms']:>9.0f} {rung['openvino_end_to_end_ms']:>7.0f}")
    print(f"Run took {time.perf_counter() - started:.0f} s; load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after.")
    print(json.dumps({"bench": "stream-backends", "busy_processes": busy, **row,
                      "loadavg_before": [round(x, 2) for x in load_before],
                      "loadavg_after": [round(x, 2) for x in load_after]}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--seconds", type=float, default=6.0, help="audio streamed per setting and round")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--precision", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--no-default-model", action="store_true",
                        help="skip the labelled default-argument HTDemucs line (released/default ratio)")
    parser.add_argument("--streams", default=None,
                        help="concurrent streams batched into shared forwards, e.g. 1,4,8 "
                             "(replaces the settings table)")
    parser.add_argument("--setting", default=None, help="with --streams: context,hop,lookahead in seconds "
                                                        "(default: the device's)")
    parser.add_argument("--unbatched", action="store_true",
                        help="with --streams: also each N > 1 without batching, each stream running its own windows")
    parser.add_argument("--tiny", action="store_true",
                        help="with --streams: the 27 k-parameter test model (checks the bench; not a product figure)")
    parser.add_argument("--backends", action="store_true",
                        help="only compare torch and OpenVINO (stream.backend) at the CPU default window")
    parser.add_argument("--backend", default=None, choices=("auto", "torch", "openvino"),
                        help="stream.backend for the settings table (default: the model's, auto)")
    parser.add_argument("--rounds", type=int, default=10, help="windows per backend with --backends")
    parser.add_argument("--hops", default=None,
                        help="with --backends: also each of these hops' windows, e.g. 0.25,0.5,1,2,4 (the ladder)")
    parser.add_argument("--busy", type=int, default=0,
                        help="with --backends: this many processes spinning on a core meanwhile (a busy machine)")
    args = parser.parse_args(argv)
    if args.streams:
        return streams_main(args)

    import torch

    if args.backends:
        if args.threads:
            torch.set_num_threads(args.threads)
        hops = [float(h) for h in args.hops.split(",")] if args.hops else [CPU_DEFAULTS[1]]
        return main_backends(args.rounds, hops, args.busy)

    from engines.base import pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    settings = SETTINGS if device.type != "cuda" else SETTINGS + (CUDA_DEFAULTS,)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((2, int(args.seconds * SAMPLE_RATE)))).astype(np.float32)
    started = time.perf_counter()
    load_before = os.getloadavg()
    reference = reference_forward(device, not args.no_default_model)
    with tempfile.TemporaryDirectory(prefix="flowstate-bench-") as folder:
        repo = build_repo(Path(folder))
        rows = [run_setting(repo, args.device, args.precision, args.threads, audio, s, args.backend)
                for s in settings]
        baseline = apply_model_baseline(repo, args.device, audio)

    name = device_label(device)
    load_after = os.getloadavg()
    print(f"StreamingSeparator, {reference['released_model']} (random weights), {name}, {args.precision}, "
          f"{SAMPLE_RATE} Hz in {BLOCK}-frame blocks, {args.seconds:g} s x {ROUNDS} rounds per setting")
    print(f"this machine: bare forward of a {reference['window_s']:.2f} s window, released architecture: "
          f"{reference['released_ms']:.0f} ms p50 (latency targets assume <= 350 ms)")
    if "default_args_ms" in reference:
        print(f"  extra, not a product figure: {reference['default_args_model']}: "
              f"{reference['default_args_ms']:.0f} ms p50 on the same window, interleaved; "
              f"released/default {reference['released_over_default']:.2f}")
    header = (f"{'backend':>8} {'ctx/hop/look s':>17} {'window s':>8} {'hops':>5} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'bare ms':>7} "
              f"{'load50':>6} {'load99':>6} {'lat ms':>6} {'total ms':>8} {'tight ms':>8} {'ratio':>5} {'r.tot':>5} "
              f"{'x RT':>5}")
    print(header)
    print("-" * len(header))
    for row in rows:
        setting = f"{row['context_s']:.3f}/{row['hop_s']:.3f}/{row['lookahead_s']:.3f}"
        print(f"{row['backend']:>8} {setting:>17} {row['window_s']:>8.3f} "
              f"{row['hops']:>5} {row['p50_ms']:>7.1f} {row['p99_ms']:>7.1f} "
              f"{row['bare_p50_ms']:>7.1f} {row['load_p50']:>6.2f} {row['load_p99']:>6.2f} {row['latency_ms']:>6.1f} "
              f"{row['total_ms']:>8.1f} {row['tight_ms']:>8.1f} {row['ratio']:>5.2f} {row['ratio_total']:>5.2f} "
              f"{row['x_realtime']:>5.2f}")
    print(f"baseline: demucs apply_model(shifts=0, split=True, overlap=0.25) offline on {baseline['audio_s']} s: "
          f"{baseline['wall_s']} s, {baseline['x_realtime']} x real time")
    worst = max(row["ratio"] for row in rows)
    worst_total = max(row["ratio_total"] for row in rows)
    verdict = "ok" if max(worst, worst_total) <= TARGET_RATIO else "MISSED"
    print(f"engine/bare: worst ratio {worst:.3f}, worst ratio_total {worst_total:.3f} (target <= {TARGET_RATIO}): "
          f"{verdict}; "
          "total_ms = latency_ms + hop_ms (one hop of compute budget); tight_ms = latency_ms + p99_ms; "
          f"device buffer not included. Run took {time.perf_counter() - started:.0f} s; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after.")
    print(json.dumps({
        "bench": "stream", "device": str(device), "device_name": name, "precision": args.precision,
        "sample_rate": SAMPLE_RATE, "block": BLOCK, "seconds": args.seconds, "rounds": ROUNDS,
        "reference_forward": reference,
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
        "settings": rows, "apply_model": baseline, "target_ratio": TARGET_RATIO, "worst_ratio": worst,
        "worst_ratio_total": worst_total,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
