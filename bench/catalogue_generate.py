"""Generation: MusicGen through our engine and through a daemon job, against transformers called directly.

The model is a random MusicGen saved with `save_pretrained` and loaded through the real path (no
hub here); its cost does not depend on its weights. `--size small` (the default) is a scaled-down
architecture that still takes real time per step (T5 d_model 256, two layers; decoder hidden 512,
four layers, 8 heads; EnCodec 32 kHz with 32 filters, 4 codebooks); `--size tiny` is the tests'
model. Same prompt, seed and number of decoder steps on every side; rounds alternate which side
runs first, so load from elsewhere on a shared machine hits both alike.

* **engine** — `MusicGenEngine.process` (the step hook that reports progress and checks for
  cancel, the seed, inputs on the device) against `model.generate(**processor(text=...),
  max_new_tokens=N, do_sample=True)` after `torch.manual_seed`, on the same checkpoint (each side its own copy).
* **daemon** — a `generate` job over ZeroMQ on a real daemon (`bridge.testing.DaemonProcess`,
  model warmed by one untimed job), from the request to `job.done`: check, queue, generation,
  resampling to 48 kHz, exact length and fades, BS.1770 loudness normalisation, an atomic fsynced
  WAV, events. Direct: generate, `engines.resample.resample` to 48 kHz, `soundfile.write` of a
  pcm24 WAV, in this process, with the model loaded the same way.

    .venv/bin/python bench/catalogue_generate.py [--quick] [--size small|tiny] [--seconds S] [--repeat N]

Figures: medians over the rounds; `ratio` = ours / direct of the medians (target <= 1.05) and
`ratio_min` best against best, which a burst of load from elsewhere moves least.

The last line of output is one JSON object: {"results": [one dict per measurement], ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bridge`, `engines`, `tests` when run as a script
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bridge.client import Client
from bridge.testing import DaemonProcess

PROMPT = "lofi electric piano chords, warm, dusty, mellow"
SEED = 1234
SAMPLE_RATE = 48000
TARGET_RATIO = 1.05


def build_model(folder: Path, size: str) -> Path:
    """Save a random MusicGen of the given size; returns the folder."""
    from transformers import EncodecConfig, T5Config

    from bridge.testing import build_tiny_musicgen, save_random_musicgen

    folder = build_tiny_musicgen(folder)
    if size == "tiny":
        return folder
    text = T5Config(vocab_size=64, d_model=256, d_kv=32, d_ff=1024, num_layers=2, num_heads=8)
    audio = EncodecConfig(sampling_rate=32000, upsampling_ratios=[8, 5, 4, 4], codebook_size=2048,
                          target_bandwidths=[2.2], num_filters=32, hidden_size=128, codebook_dim=128,
                          num_lstm_layers=2, audio_channels=1)
    decoder = {"vocab_size": 2048, "num_codebooks": 4, "hidden_size": 512, "num_hidden_layers": 4,
               "num_attention_heads": 8, "ffn_dim": 2048}
    small = folder.parent / "small"
    save_random_musicgen(small, text, audio, decoder, processor_from=folder)  # the tiny model's tokenizer
    return small


def _median(values: list[float]) -> float:
    return statistics.median(values)


def bench_engine(folder: Path, seconds: float, repeat: int) -> dict[str, Any]:
    import torch
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    from engines.generation import GenerationRequest, MusicGenEngine

    engine = MusicGenEngine(str(folder), device="cpu")
    engine.load()
    steps = engine.steps_for(seconds)
    processor = AutoProcessor.from_pretrained(folder)
    direct_model = MusicgenForConditionalGeneration.from_pretrained(folder).eval()

    def ours() -> float:
        started = time.perf_counter()
        engine.process(GenerationRequest(prompt=PROMPT, seconds=seconds, seed=SEED), lambda fraction: None)
        return time.perf_counter() - started

    def direct() -> float:
        started = time.perf_counter()
        inputs = processor(text=[PROMPT], padding=True, return_tensors="pt")
        torch.manual_seed(SEED)
        with torch.inference_mode():
            direct_model.generate(**inputs, max_new_tokens=steps, do_sample=True)
        return time.perf_counter() - started

    ours(), direct()  # warm-up
    timed: dict[str, list[float]] = {"ours": [], "direct": []}
    for index in range(repeat):
        order = (("ours", ours), ("direct", direct)) if index % 2 == 0 else (("direct", direct), ("ours", ours))
        for name, run in order:
            timed[name].append(run())
    engine_s, direct_s = _median(timed["ours"]), _median(timed["direct"])
    return {"engine": "musicgen", "what": f"engine.process {seconds:g} s ({steps} steps)",
            "engine_s": round(engine_s, 4),
            "direct_s": round(direct_s, 4), "ratio": round(engine_s / direct_s, 4),
            "ratio_min": round(min(timed["ours"]) / min(timed["direct"]), 4),
            "engine_runs_s": [round(v, 4) for v in timed["ours"]],
            "direct_runs_s": [round(v, 4) for v in timed["direct"]]}


def bench_daemon(folder: Path, seconds: float, repeat: int, workdir: Path) -> dict[str, Any]:
    import soundfile
    import torch
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    from engines.generation import MusicGenEngine
    from engines.resample import resample

    probe = MusicGenEngine(str(folder), device="cpu")
    probe.load()
    steps = probe.steps_for(seconds)
    probe.close()
    processor = AutoProcessor.from_pretrained(folder)
    model = MusicgenForConditionalGeneration.from_pretrained(folder).eval()
    out_dir = workdir / "direct"
    out_dir.mkdir(parents=True, exist_ok=True)

    def direct(index: int) -> float:
        started = time.perf_counter()
        inputs = processor(text=[PROMPT], padding=True, return_tensors="pt")
        torch.manual_seed(SEED)
        with torch.inference_mode():
            values = model.generate(**inputs, max_new_tokens=steps, do_sample=True)
        audio = resample(values[0].float().numpy(), 32000, SAMPLE_RATE)
        soundfile.write(str(out_dir / f"take{index}.wav"), audio.T, SAMPLE_RATE, subtype="PCM_24")
        return time.perf_counter() - started

    overrides = {"generate": {"model": str(folder), "engine_device": "cpu"}, "midi": {"enabled": False}}
    (workdir / "daemon").mkdir(parents=True, exist_ok=True)
    process = DaemonProcess(overrides=overrides, workdir=workdir / "daemon", env={"HF_HUB_OFFLINE": "1"}).start()
    try:
        with Client(process.zmq_requests, timeout_seconds=30) as client:

            def ours(index: int) -> float:
                started = time.perf_counter()
                request = {"prompt": PROMPT, "seconds": seconds, "seed": SEED, "name": f"take {index}"}
                reply = client.call("generate", request)
                final = client.wait_jobs([reply["id"]], lambda name, data: None, 600)[reply["id"]]
                if final["event"] != "job.done":
                    raise RuntimeError(f"the daemon's job ended with {final}:\n{process.log()[-3000:]}")
                return time.perf_counter() - started

            ours(-1), direct(-1)  # warm-up: loads the daemon's model
            timed: dict[str, list[float]] = {"ours": [], "direct": []}
            for index in range(repeat):
                pair = (("ours", ours), ("direct", direct)) if index % 2 == 0 else (("direct", direct), ("ours", ours))
                for name, run in pair:
                    timed[name].append(run(index))
    finally:
        process.stop()
    daemon_s, direct_s = _median(timed["ours"]), _median(timed["direct"])
    return {"engine": "musicgen", "what": f"generate job {seconds:g} s -> 48 kHz WAV", "daemon_s": round(daemon_s, 4),
            "direct_s": round(direct_s, 4), "ratio": round(daemon_s / direct_s, 4),
            "ratio_min": round(min(timed["ours"]) / min(timed["direct"]), 4),
            "daemon_runs_s": [round(v, 4) for v in timed["ours"]],
            "direct_runs_s": [round(v, 4) for v in timed["direct"]]}


def run(
    quick: bool = False, size: str = "small", seconds: float | None = None, repeat: int | None = None
) -> list[dict[str, Any]]:
    """The measurements, one dict each (see the module docstring)."""
    seconds = seconds if seconds is not None else (2.0 if quick else 8.0)
    repeat = repeat if repeat is not None else (3 if quick else 5)
    with tempfile.TemporaryDirectory(prefix="flowstate-bench-generate-") as scratch:
        folder = build_model(Path(scratch) / "model" / "tiny", size)
        rows = [bench_engine(folder, seconds, repeat), bench_daemon(folder, seconds, repeat, Path(scratch))]
    for row in rows:
        row.update({"model_size": size, "threads": _threads()})
    return rows


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s of audio, 3 rounds")
    parser.add_argument("--size", choices=("small", "tiny"), default="small")
    parser.add_argument("--seconds", type=float, default=None, help="audio seconds per job (default 8; quick: 2)")
    parser.add_argument("--repeat", type=int, default=None, help="timed rounds (default 5; quick: 3)")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = run(args.quick, args.size, args.seconds, args.repeat)
    for row in rows:
        ours = row.get("daemon_s", row.get("engine_s"))
        print(f"{row['what']:<44} ours {ours:.3f} s  direct {row['direct_s']:.3f} s  ratio {row['ratio']:.3f} "
              f"(best vs best {row['ratio_min']:.3f})")
    worst = max(row["ratio"] for row in rows)
    print(f"worst ratio {worst:.3f} (target <= {TARGET_RATIO}); {time.perf_counter() - started:.0f} s")
    summary = {"bench": "catalogue_generate", "results": rows, "worst_ratio": worst, "target_ratio": TARGET_RATIO}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
