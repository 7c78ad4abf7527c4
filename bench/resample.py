"""Resampling candidates side by side, on the same signals, in one run: speed, quality, delay.

Files (the whole buffer at once): julius's `resample_frac`, scipy's `resample_poly`, the method the
project shipped before this comparison (julius for standard ratios, scipy's `upfirdn` with julius's
filter for coprime ones: `before`, the baseline), what `engines/resample.py` runs now (`engines`),
and `soxr.resample` at quality HQ and VHQ.
Streams (stateful, chunked): `engines.resample.StreamingResampler` (the baseline) against
`soxr.ResampleStream` at HQ and LQ (its lowest-latency setting that still filters properly).

Per rate pair (stereo float32):
* `xRT`: seconds of audio converted per second of wall time (one `--seconds` signal; streams in
  `--block`-frame chunks, as a device delivers them; after one untimed warm-up call); `ratio` is xRT
  over the baseline's.
* `snr_db`: a multi-tone (7 tones up to 0.85 x the lower Nyquist frequency, random phases;
  `snr<.45`: up to 0.45 x, about 10 kHz at 44.1 kHz)
  against the exact tones evaluated at the output instants, edges left out.
* `reject_db`: downsampling, a tone halfway between the new and the old Nyquist frequency: input
  level over output level (everything that comes out is alias). Upsampling, a tone at 0.9 x the
  old Nyquist frequency: its level over the level of the images above the old Nyquist frequency.
* streams: `delay`: the delay the resampler reports (soxr: its largest pending output over the run),
  `measured`: the delay of an impulse's peak in output frames, `latency`: the most output frames a
  sample waited for (received x ratio - emitted + measured delay, worst chunk end), and `chunked`:
  the largest difference between random-size chunks (1..2000 frames) and one call on the whole.

    nice -n 19 .venv/bin/python bench/resample.py [--seconds 60] [--block 512]

The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import soxr
import torch
from julius import resample_frac
from scipy.signal import resample_poly, upfirdn

from bridge.errors import BadRequest
from engines.resample import StreamingResampler, resample

PAIRS = ((44100, 48000), (48000, 44100), (22050, 44100), (44101, 44100))
QUALITY_SECONDS = 2.0
JULIUS_MAX_KERNEL = 1 << 20  # the coefficients above which the old path left julius for upfirdn


def before(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """The file path shipped before this comparison (the baseline), rebuilt from what is installed."""
    gcd = math.gcd(rate_in, rate_out)
    up, down = rate_out // gcd, rate_in // gcd
    width = math.ceil(24 * down / (min(up, down) * 0.945))
    if up * (down + 2 * width) <= JULIUS_MAX_KERNEL:
        return resample_frac(torch.from_numpy(audio), down, up).numpy()
    # julius's filter (24 zero crossings, cos^2 window, cutoff 0.945) as one polyphase FIR.
    scale = 0.945 * min(1.0, rate_out / rate_in)
    half = math.floor(24 / scale * up)
    pre = down - half % down
    remove = (half + pre) // down
    total = audio.shape[-1] * up // down
    j = np.arange(2 * half + 1)
    distance = np.abs(j - half) * (scale / up)
    taps = np.sinc(distance) * np.cos(np.pi * np.minimum(distance, 24) / 48) ** 2
    taps /= np.bincount(j % up, weights=taps, minlength=up)[j % up]
    length = max(pre + 2 * half + 1, (remove + total - 1) * down + 1 - (audio.shape[-1] - 1) * up)
    h = np.zeros(length, np.float32)
    h[pre:pre + 2 * half + 1] = taps
    return np.ascontiguousarray(upfirdn(h, audio, up, down, axis=-1, mode="edge")[:, remove:remove + total])


def julius(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    gcd = math.gcd(rate_in, rate_out)
    up, down = rate_out // gcd, rate_in // gcd
    width = math.ceil(24 * down / (min(up, down) * 0.945))
    if up * (down + 2 * width) > JULIUS_MAX_KERNEL:
        raise MemoryError(f"julius's kernel would hold {up * (down + 2 * width) * 4 / 2**30:.1f} GiB")
    return resample_frac(torch.from_numpy(audio), rate_in, rate_out).numpy()


def scipy_poly(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    gcd = math.gcd(rate_in, rate_out)
    return resample_poly(audio, rate_out // gcd, rate_in // gcd, axis=-1).astype(np.float32)


def soxr_file(quality: str) -> Callable[[np.ndarray, int, int], np.ndarray]:
    def run(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
        return soxr.resample(audio.T, rate_in, rate_out, quality).T
    return run


FILE_METHODS: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {
    "before": before, "julius": julius, "scipy poly": scipy_poly, "engines": resample,
    "soxr HQ": soxr_file("HQ"), "soxr VHQ": soxr_file("VHQ"),
}


# -- streams: one interface over both ----------------------------------------------------------


class Stream:
    """`process(block)` -> the outputs it made; `delay` reported; `phase` = output index of input 0."""

    def __init__(self, kind: str, rate_in: int, rate_out: int, channels: int) -> None:
        self.kind, self.ratio = kind, rate_out / rate_in
        self.pending_max = 0.0
        if kind == "engines":
            self._engine = StreamingResampler(rate_in, rate_out, channels, whole_delay=True)
            self.delay = self._engine.delay_frames
        else:
            self._soxr = soxr.ResampleStream(rate_in, rate_out, channels, dtype="float32", quality=kind.split()[1])
            self.delay = 0.0

    def process(self, block: np.ndarray) -> np.ndarray:
        if self.kind == "engines":
            return self._engine.process(block).copy()
        out = self._soxr.resample_chunk(np.ascontiguousarray(block.T)).T
        self.pending_max = max(self.pending_max, self._soxr.delay())
        return out


STREAM_METHODS = ("engines", "soxr HQ", "soxr LQ")


def run_stream(kind: str, audio: np.ndarray, rate_in: int, rate_out: int,
               sizes: list[int]) -> tuple[np.ndarray, Stream, float]:
    """The chunked output, the stream, and the worst wait in output frames before the phase shift."""
    stream = Stream(kind, rate_in, rate_out, audio.shape[0])
    parts, at, emitted, behind, i = [], 0, 0, 0.0, 0
    while at < audio.shape[1]:
        block = audio[:, at:at + sizes[i % len(sizes)]]
        parts.append(stream.process(block))
        at, i = at + block.shape[1], i + 1
        emitted += parts[-1].shape[1]
        behind = max(behind, at * stream.ratio - emitted)
    if kind != "engines":
        stream.delay = stream.pending_max
    return np.concatenate(parts, axis=1), stream, behind


def file_output(method: Callable[[np.ndarray, int, int], np.ndarray], rate_in: int, rate_out: int,
                audio: np.ndarray) -> np.ndarray:
    return method(audio, rate_in, rate_out)


def stream_output(kind: str, rate_in: int, rate_out: int, sizes: list[int], audio: np.ndarray) -> np.ndarray:
    return run_stream(kind, audio, rate_in, rate_out, sizes)[0]


# -- signals and measures -----------------------------------------------------------------------


def tones(rate_in: int, rate_out: int, top: float = 0.85) -> tuple[np.ndarray, np.ndarray]:
    """7 tone frequencies from 0.01 to `top` x the lower Nyquist frequency, and their phases."""
    nyquist = min(rate_in, rate_out) / 2
    return nyquist * top * np.array([0.01, 0.1, 0.25, 0.45, 0.65, 0.8, 1.0]), \
        np.random.default_rng(0).uniform(0, 2 * np.pi, 7)


def multitone(rate: int, frames: int, freqs: np.ndarray, phases: np.ndarray, shift: float = 0.0) -> np.ndarray:
    t = (np.arange(frames) - shift)[None, :] / rate
    mono = 0.1 * np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None]).sum(axis=0)
    return np.stack([mono, -mono]).astype(np.float32)


def snr_db(out: np.ndarray, rate_in: int, rate_out: int, shift: float = 0.0, top: float = 0.85) -> float:
    freqs, phases = tones(rate_in, rate_out, top)
    ref = multitone(rate_out, out.shape[1], freqs, phases, shift)
    edge = int(0.1 * rate_out)
    err = out[:, edge:-edge] - ref[:, edge:-edge]
    return float(10 * np.log10(np.sum(ref[:, edge:-edge] ** 2) / max(np.sum(err.astype(np.float64) ** 2), 1e-30)))


def rejection_signal(rate_in: int, rate_out: int) -> np.ndarray:
    if rate_out < rate_in:
        freq = (rate_out / 2 + rate_in / 2) / 2
    else:
        freq = 0.9 * rate_in / 2
    t = np.arange(int(QUALITY_SECONDS * rate_in)) / rate_in
    return np.stack([0.5 * np.sin(2 * np.pi * freq * t)] * 2).astype(np.float32)


def reject_db(out: np.ndarray, rate_in: int, rate_out: int) -> float:
    edge = int(0.1 * rate_out)
    middle = out[0, edge:-edge].astype(np.float64)
    if rate_out < rate_in:
        return float(10 * np.log10(0.125 / max(float(np.mean(middle**2)), 1e-30)))
    power = np.abs(np.fft.rfft(middle * np.hanning(len(middle)))) ** 2
    freqs = np.fft.rfftfreq(len(middle), 1 / rate_out)
    images = power[freqs > rate_in / 2 * 1.01].sum()
    return float(10 * np.log10(power.sum() / max(images, 1e-30)))


def quality(run: Callable[[np.ndarray], np.ndarray], rate_in: int, rate_out: int,
            shift: float = 0.0) -> dict[str, float]:
    """SNR of the multi-tone up to 0.85 and up to 0.45 x the lower Nyquist frequency, and rejection."""
    figures = {}
    for key, top in (("snr_db", 0.85), ("snr_low_db", 0.45)):
        tone = multitone(rate_in, int(QUALITY_SECONDS * rate_in), *tones(rate_in, rate_out, top))
        figures[key] = snr_db(run(tone), rate_in, rate_out, shift, top)
    figures["reject_db"] = reject_db(run(rejection_signal(rate_in, rate_out)), rate_in, rate_out)
    return figures


def timed(run: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = run()
    return result, time.perf_counter() - started


def files(rate_in: int, rate_out: int, seconds: float) -> list[dict[str, Any]]:
    audio = np.random.default_rng(1).standard_normal((2, int(seconds * rate_in))).astype(np.float32)
    rows = []
    for name, method in FILE_METHODS.items():
        row: dict[str, Any] = {"pair": f"{rate_in}->{rate_out}", "method": name}
        try:
            method(audio[:, :rate_in // 10], rate_in, rate_out)  # warm-up: first-call costs are not per second
            _, elapsed = timed(partial(method, audio, rate_in, rate_out))
        except (MemoryError, BadRequest) as err:
            rows.append({**row, "skipped": str(err)})
            continue
        row.update(xrt=seconds / elapsed, **quality(partial(file_output, method, rate_in, rate_out), rate_in, rate_out))
        rows.append(row)
    return rows


def streams(rate_in: int, rate_out: int, seconds: float, block: int) -> list[dict[str, Any]]:
    audio = np.random.default_rng(1).standard_normal((2, int(seconds * rate_in))).astype(np.float32)
    freqs, phases = tones(rate_in, rate_out)
    tone = multitone(rate_in, int(QUALITY_SECONDS * rate_in), freqs, phases)
    random_sizes = [int(n) for n in np.random.default_rng(2).integers(1, 2001, 4096)]
    impulse = np.zeros((2, int(0.5 * rate_in)), np.float32)
    at = rate_in // 4
    impulse[:, at] = 1.0
    rows = []
    for kind in STREAM_METHODS:
        row: dict[str, Any] = {"pair": f"{rate_in}->{rate_out}", "method": kind}
        try:
            run_stream(kind, audio[:, :rate_in // 10], rate_in, rate_out, [block])  # warm-up
            _, elapsed = timed(partial(run_stream, kind, audio, rate_in, rate_out, [block]))
        except BadRequest as err:
            rows.append({**row, "skipped": err.message.split(";")[0]})
            continue
        peak, stream, _ = run_stream(kind, impulse, rate_in, rate_out, [block])
        # The impulse's peak, to a fraction of a frame (a parabola through the top three samples).
        k = int(np.argmax(peak[0]))
        a, b, c = peak[0, k - 1:k + 2].astype(np.float64)
        measured = k + 0.5 * (a - c) / (a - 2 * b + c) - at * rate_out / rate_in
        chunked, _, behind = run_stream(kind, tone, rate_in, rate_out, random_sizes)
        whole, _, _ = run_stream(kind, tone, rate_in, rate_out, [tone.shape[1]])
        n = min(chunked.shape[1], whole.shape[1])
        shifted = stream.delay if kind == "engines" else 0.0
        row.update(xrt=seconds / elapsed, delay=stream.delay, measured=measured, latency=behind + measured,
                   chunked=float(np.abs(chunked[:, :n] - whole[:, :n]).max()),
                   **quality(partial(stream_output, kind, rate_in, rate_out, random_sizes), rate_in, rate_out, shifted))
        rows.append(row)
    return rows


def print_table(title: str, rows: list[dict[str, Any]], baseline: str, columns: list[tuple[str, str]]) -> None:
    print(f"\n{title} (ratio: xRT over {baseline!r} on the same pair, same run)")
    print(f"{'pair':>13} {'method':>10} {'xRT':>8} {'ratio':>6} " + " ".join(f"{label:>9}" for label, _ in columns))
    for row in rows:
        if "skipped" in row:
            print(f"{row['pair']:>13} {row['method']:>10}  skipped: {row['skipped']}")
            continue
        base = next((r for r in rows if r["pair"] == row["pair"] and r["method"] == baseline and "xrt" in r), None)
        row["ratio"] = row["xrt"] / base["xrt"] if base else None
        ratio = f"{row['ratio']:6.2f}" if base else f"{'-':>6}"
        print(f"{row['pair']:>13} {row['method']:>10} {row['xrt']:8.0f} {ratio} "
              + " ".join(f"{row[key]:9.{0 if key.endswith('_db') else 2}f}" if key != "chunked"
                         else f"{row[key]:9.1e}" for _, key in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--block", type=int, default=512, help="frames per streaming call")
    options = parser.parse_args()
    torch.set_num_threads(1)
    file_rows = [row for rate_in, rate_out in PAIRS for row in files(rate_in, rate_out, options.seconds)]
    stream_rows = [row for rate_in, rate_out in PAIRS
                   for row in streams(rate_in, rate_out, options.seconds, options.block)]
    print_table(f"Files: {options.seconds:g} s stereo, one call", file_rows, "before",
                [("snr_db", "snr_db"), ("snr<.45", "snr_low_db"), ("reject_db", "reject_db")])
    print_table(f"Streams: {options.seconds:g} s stereo in {options.block}-frame calls", stream_rows, "engines",
                [("snr_db", "snr_db"), ("snr<.45", "snr_low_db"), ("reject_db", "reject_db"), ("delay", "delay"),
                 ("measured", "measured"), ("latency", "latency"), ("chunked", "chunked")])
    print(json.dumps({"seconds": options.seconds, "block": options.block, "files": file_rows,
                      "streams": stream_rows}))


if __name__ == "__main__":
    main()
