"""The model catalogue: time per job through the daemon's engines against the library called directly.

Each engine's part lives beside this file (`catalogue_<part>.py`, runnable alone) and measures,
in the same run, our path (the engine or a daemon job) and the library it wraps called directly
on the same input (sentence-transformers, faster-whisper, piper, transformers' MusicGen):
`ratio` = ours / direct, target <= 1.05. The embeddings part also reports sample-search latency
on a synthetic 10,000-file library.

    .venv/bin/python bench/catalogue.py [--quick] [--only embeddings,speech,generate]

The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # `bridge`, `engines`
sys.path.insert(0, str(HERE))  # the parts

PARTS = ("embeddings", "speech", "generate")
TARGET_RATIO = 1.05


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a smaller library")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {', '.join(PARTS)}")
    args = parser.parse_args()
    wanted = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = [part for part in wanted if part not in PARTS]
    if unknown:
        parser.error(f"--only: unknown part(s) {', '.join(unknown)}; expected some of {', '.join(PARTS)}")

    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for part in wanted:
        module = importlib.import_module(f"catalogue_{part}")
        part_started = time.perf_counter()
        for row in module.run(quick=args.quick):
            rows.append({"part": part, **row})
        print(f"[{part}] done in {time.perf_counter() - part_started:.0f} s", flush=True)

    print(f"{'engine':<12} {'what':<48} {'ours s':>9} {'direct s':>9} {'ratio':>6}")
    for row in rows:
        ours = row.get("daemon_s", row.get("engine_s"))
        direct = row.get("direct_s")
        ratio = row.get("ratio")
        print(f"{row.get('engine', row['part']):<12} {row.get('what', '')!s:<48} "
              f"{_fmt(ours):>9} {_fmt(direct):>9} {_fmt(ratio, 3):>6}")
        extra = {k: v for k, v in row.items() if k not in ("part", "engine", "what", "daemon_s", "engine_s",
                                                           "direct_s", "ratio")}
        if extra:
            print(f"{'':<12} {json.dumps(extra)}")
    ratios = [row["ratio"] for row in rows if isinstance(row.get("ratio"), (int, float))]
    worst = max(ratios) if ratios else None
    verdict = "ok" if worst is not None and worst <= TARGET_RATIO else "MISSED"
    print(f"worst ratio {_fmt(worst, 3)} (target <= {TARGET_RATIO}): {verdict}; run took "
          f"{time.perf_counter() - started:.0f} s")
    print(json.dumps({"bench": "catalogue", "rows": rows, "worst_ratio": worst, "target_ratio": TARGET_RATIO}))
    return 0


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


if __name__ == "__main__":
    raise SystemExit(main())
