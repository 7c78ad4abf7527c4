"""File resampling (engines/resample.py): time and peak memory per rate pair, each in a fresh process.

A 30 s stereo float32 signal is resampled once per pair; each pair runs in its own subprocess so
its peak RSS (ru_maxrss) is its own. `added_mb` is the peak minus the RSS just before the call,
after the libraries are imported and the input exists: the method's filter and work buffers plus
the output. The baseline in the same run is the standard pair 48000 -> 44100 Hz (julius).

    .venv/bin/python bench/resample.py [--seconds 30] [--pairs 44101:44100,96001:44100]

The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PAIRS = ("48000:44100", "44101:44100", "44100:44101", "44100:48000", "81001:44100", "96001:44100")

CHILD = """
import json, resource, sys, time
import numpy as np
import julius, scipy.signal, torch  # imported before the baseline: their code is not the method's memory
from engines.resample import plan, resample
rate_in, rate_out, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
audio = np.random.default_rng(0).standard_normal((2, int(seconds * rate_in))).astype(np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
out = resample(audio, rate_in, rate_out)
elapsed = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
how = plan(rate_in, rate_out)
print(json.dumps({"pair": f"{rate_in}:{rate_out}", "method": how.method, "filter_mb": round(how.filter_bytes / 2**20, 1),
                  "seconds": round(elapsed, 3), "added_mb": round((peak - before) / 1024, 1),
                  "output_mb": round(out.nbytes / 2**20, 1)}))
"""


def measure(pair: str, seconds: float) -> dict[str, Any]:
    rate_in, rate_out = pair.split(":")
    done = subprocess.run([sys.executable, "-c", CHILD, rate_in, rate_out, str(seconds)], cwd=HERE.parent,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--pairs", default=",".join(PAIRS))
    options = parser.parse_args()
    rows = [measure(pair, options.seconds) for pair in options.pairs.split(",")]
    print(f"{'pair':>14} {'method':>7} {'filter MiB':>10} {'seconds':>8} {'+RSS MB':>8} {'output MB':>9}")
    for row in rows:
        print(f"{row['pair']:>14} {row['method']:>7} {row['filter_mb']:>10} {row['seconds']:>8} "
              f"{row['added_mb']:>8} {row['output_mb']:>9}")
    print(json.dumps({"seconds_of_audio": options.seconds, "rows": rows}))


if __name__ == "__main__":
    main()
