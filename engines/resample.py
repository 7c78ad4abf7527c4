"""Sample-rate conversion of whole signals (files, model output) in bounded memory, and rate checks.

Three methods, all windowed-sinc with julius's design (24 zero crossings, cutoff at 0.945 of the
lower Nyquist frequency, a cos^2 window, every output's taps normalised to unit DC gain), so they
agree to about 1e-4 and any of them can stand in for another:

* **julius** (`resample_frac`) for ordinary ratios. It precomputes one dense kernel per output
  phase: `up x (down + 2 * width)` float32 coefficients for the reduced ratio up:down. For the rates
  a DAW uses (8 k ... 192 kHz against 44.1, 32 or 16 kHz) that is under 200 k coefficients; for a
  rate coprime with the other (44101 Hz against 44100 Hz) it is 44100 x 44149, 7.3 GiB, so it is
  only used while the kernel stays under `JULIUS_MAX_KERNEL`.
* **poly**: scipy's compiled `upfirdn` with the same filter laid out as one polyphase FIR of
  about 51 x max(up, down) taps (2.2 M for 44101 Hz: 9 MiB), used up to `POLY_MAX_TAPS`, which
  covers every odd rate up to about 82 kHz.
* **sinc** beyond that: the filter read from one table of `ZEROS * TABLE_STEPS` points by linear
  interpolation, evaluated for chunks of outputs at a time (slower, about 1 s per second of audio
  at 96001 Hz on 2 cores, but its buffers do not grow with the rates).

Whatever the rates `plan` accepts, the filter and work buffers stay under `MAX_WORK_BYTES` (64 MiB);
the signal, an edge-padded copy and the output come on top. Measured on a shared 2-core CPU, 30 s
of stereo: 44101 -> 44100 Hz (poly) 0.7-0.9 s and +46 MB peak RSS including the 10 MB output;
48000 -> 44100 Hz (julius) 0.1-0.6 s and +50 MB.

Every method keeps the output aligned with the input (output m is the input at time
m * rate_in / rate_out, edges replicated) and gives `floor(frames * rate_out / rate_in)` frames.
Rates are checked first: a file's rate must lie in a configured range (`check_file_rate`), and the
streaming path (`check_stream_rate`) only takes rates whose ratio to the model's is made of small
numbers.

Nothing heavy happens at import: julius, torch and scipy are imported when they run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from bridge.errors import BadRequest

# The rates audio devices and DAW projects run at. Every one of them reduces against 44.1 kHz to a
# ratio whose terms are at most 640 (192000:44100 = 640:147).
STANDARD_RATES: tuple[int, ...] = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000,
                                   176400, 192000)

ZEROS = 24  # zero crossings of the sinc on each side (julius's default)
ROLLOFF = 0.945  # cutoff as a share of the lower Nyquist frequency (julius's default)
TABLE_STEPS = 1024  # filter table points per zero crossing: linear interpolation error ~1e-6
JULIUS_MAX_KERNEL = 1 << 20  # coefficients (4 MiB of float32): above it, the polyphase method
POLY_MAX_TAPS = 1 << 22  # polyphase filter taps (16 MiB of float32): above it, the sinc method
POLY_CHUNK = 1 << 18  # filter taps computed at once (float64 temporaries)
CHUNK_ELEMENTS = 1 << 17  # outputs x taps evaluated at once by the sinc method
MAX_TAPS = 1 << 14  # taps of one output: bounds a downsampling ratio at about 320:1
MAX_EXPANSION = 1024  # outputs per input frame: bounds an upsampling ratio
# Bytes the sinc method holds per (output, tap) element of a chunk: the index (int64), the distance
# and the weight (float64, twice), the float32 weight and one row's gathered samples, plus slack.
_BYTES_PER_ELEMENT = 48
MAX_WORK_BYTES = 64 * 1024 * 1024  # the stated bound: filter + work buffers of any method


@dataclass(frozen=True)
class ResamplePlan:
    """How `resample` converts `rate_in` to `rate_out`, and what it allocates for the filter.

    `filter_bytes` is the most memory the method holds for its filter and work buffers at once
    (the julius kernel, the polyphase filter and its transposed copy, or the sinc table plus one
    chunk of work buffers); the signal itself comes on top.
    """

    rate_in: int
    rate_out: int
    up: int
    down: int
    method: Literal["copy", "julius", "poly", "sinc"]
    taps: int  # inputs read per output
    chunk_outputs: int  # outputs evaluated at once (sinc), 0 otherwise
    filter_bytes: int


def reduced_ratio(rate_in: int, rate_out: int) -> tuple[int, int]:
    """(up, down): `rate_out / rate_in` in lowest terms."""
    gcd = math.gcd(rate_in, rate_out)
    return rate_out // gcd, rate_in // gcd


def julius_kernel_elements(rate_in: int, rate_out: int, zeros: int = ZEROS, rolloff: float = ROLLOFF) -> int:
    """Coefficients julius's `ResampleFrac` would allocate for this pair, without allocating them."""
    up, down = reduced_ratio(rate_in, rate_out)
    if up == down:
        return 0
    width = math.ceil(zeros * down / (min(up, down) * rolloff))
    return up * (down + 2 * width)


def _check_rates(rate_in: int, rate_out: int) -> None:
    for name, rate in (("rate_in", rate_in), ("rate_out", rate_out)):
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise BadRequest(f"resample: {name} expected a positive integer sample rate in Hz, got {rate!r}")


def plan(rate_in: int, rate_out: int) -> ResamplePlan:
    """Choose the method for this pair of rates and size its buffers (nothing is allocated).

    Raises `BadRequest` when the ratio is beyond what any method does in bounded memory: more than
    `MAX_EXPANSION` outputs per input, or more than `MAX_TAPS` taps per output (about 320:1 down).
    """
    _check_rates(rate_in, rate_out)
    rate_in, rate_out = int(rate_in), int(rate_out)
    up, down = reduced_ratio(rate_in, rate_out)
    if up == down:
        return ResamplePlan(rate_in, rate_out, 1, 1, "copy", 1, 0, 0)
    if up > MAX_EXPANSION * down:
        raise BadRequest(f"resample: {rate_in} Hz -> {rate_out} Hz makes {up / down:.0f} outputs per input "
                         f"frame; at most {MAX_EXPANSION} are supported")
    scale = ROLLOFF * min(1.0, rate_out / rate_in)  # zero crossings per input sample
    half_width = ZEROS / scale  # in input samples
    taps = 2 * math.ceil(half_width) + 2
    if taps > MAX_TAPS:
        raise BadRequest(f"resample: {rate_in} Hz -> {rate_out} Hz needs {taps} taps per output sample; at most "
                         f"{MAX_TAPS} are supported (a ratio of about {MAX_TAPS * ROLLOFF / (2 * ZEROS):.0f}:1)")
    kernel = julius_kernel_elements(rate_in, rate_out)
    if kernel <= JULIUS_MAX_KERNEL:
        return ResamplePlan(rate_in, rate_out, up, down, "julius", taps, 0, 4 * kernel)
    half = _poly_half_length(up, down, scale)
    if 2 * half + 1 <= POLY_MAX_TAPS:
        # The filter (float32), upfirdn's transposed copy, and one chunk of float64 temporaries.
        return ResamplePlan(rate_in, rate_out, up, down, "poly", taps, 0,
                            2 * 4 * (2 * half + 1 + 2 * down) + 4 * 8 * POLY_CHUNK)
    chunk = max(1, CHUNK_ELEMENTS // taps)
    table_bytes = 8 * (ZEROS * TABLE_STEPS + 2)
    return ResamplePlan(rate_in, rate_out, up, down, "sinc", taps, chunk,
                        table_bytes + _BYTES_PER_ELEMENT * chunk * taps)


def _poly_half_length(up: int, down: int, scale: float) -> int:
    """Half the polyphase filter's length, in taps at the upsampled rate (`rate_in * up`)."""
    return math.floor(ZEROS / scale * up)


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """`(..., frames)` audio from `rate_in` to `rate_out` Hz, float32, in bounded memory.

    Returns `floor(frames * rate_out / rate_in)` frames. The filter and work buffers stay under
    `MAX_WORK_BYTES` (64 MiB; 52 MiB for 44101 <-> 44100 Hz, under 1 MiB for standard rates) for
    any pair of rates `plan` accepts; the signal, its edge-padded copy and the output come on top
    (O(frames)). Time is linear in the longer of input and output.
    """
    how = plan(rate_in, rate_out)
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if audio.ndim == 0:
        raise BadRequest("resample: expected audio shaped (..., frames), got a scalar")
    if how.method == "copy":
        return audio
    rows = audio.reshape(-1, audio.shape[-1])
    if how.method == "julius":
        import torch
        from julius import resample_frac

        out = resample_frac(torch.from_numpy(rows), how.down, how.up).numpy()
    elif how.method == "poly":
        out = _resample_poly(rows, how)
    else:
        out = _resample_sinc(rows, how)
    return out.reshape(*audio.shape[:-1], out.shape[-1])


def resample_tensor(audio: Any, rate_in: int, rate_out: int) -> Any:
    """The same for a `(channels, frames)` CPU torch tensor; returns a float32 tensor."""
    import torch

    if int(rate_in) == int(rate_out):
        return audio
    return torch.from_numpy(resample(audio.detach().cpu().numpy(), rate_in, rate_out))


def _kernel(distance: np.ndarray) -> np.ndarray:
    """julius's filter at `distance` zero crossings from the output: a cos^2-windowed sinc."""
    kernel = np.sinc(distance) * np.cos(np.pi * np.minimum(distance, ZEROS) / (2 * ZEROS)) ** 2
    kernel[distance >= ZEROS] = 0.0
    return kernel


def _resample_poly(audio: np.ndarray, how: ResamplePlan) -> np.ndarray:
    """scipy's `upfirdn` (compiled polyphase filtering) with julius's filter, aligned like julius.

    The filter has `2 * half + 1` taps at the upsampled rate, built in chunks into one float32
    array; each output phase's taps are normalised to unit DC gain. Zeros in front make the
    filter's centre land on output 0 after dropping `remove` outputs (as `resample_poly` does).
    """
    from scipy.signal import upfirdn

    channels, frames = audio.shape
    up, down = how.up, how.down
    total = frames * up // down
    if total == 0:
        return np.empty((channels, 0), np.float32)
    scale = ROLLOFF * min(1.0, how.rate_out / how.rate_in)
    half = _poly_half_length(up, down, scale)
    pre = down - half % down
    remove = (half + pre) // down
    length = pre + 2 * half + 1
    # upfirdn gives ((frames - 1) * up + len(h) - 1) // down + 1 outputs: enough for remove + total.
    length = max(length, (remove + total - 1) * down + 1 - (frames - 1) * up)
    h = np.zeros(length, np.float32)
    sums = np.zeros(up, np.float64)
    for start in range(0, 2 * half + 1, POLY_CHUNK):
        j = np.arange(start, min(start + POLY_CHUNK, 2 * half + 1), dtype=np.int64)
        values = _kernel(np.abs(j - half) * (scale / up))
        h[pre + start:pre + start + len(j)] = values
        sums += np.bincount(j % up, weights=values, minlength=up)
    for start in range(0, 2 * half + 1, POLY_CHUNK):
        j = np.arange(start, min(start + POLY_CHUNK, 2 * half + 1), dtype=np.int64)
        h[pre + start:pre + start + len(j)] /= sums[j % up].astype(np.float32)
    out = upfirdn(h, audio, up, down, axis=-1, mode="edge")
    return np.ascontiguousarray(out[:, remove:remove + total], dtype=np.float32)


def _filter_table() -> np.ndarray:
    """julius's kernel as a function of the distance in zero crossings, sampled TABLE_STEPS per unit."""
    x = np.arange(ZEROS * TABLE_STEPS + 2, dtype=np.float64) / TABLE_STEPS
    return _kernel(x)


def _resample_sinc(audio: np.ndarray, how: ResamplePlan) -> np.ndarray:
    """Windowed-sinc interpolation, `how.chunk_outputs` outputs at a time (see the module docstring).

    Output m sits at input position m * down / up, split exactly into an integer index and a phase
    with integer arithmetic, so long signals do not drift.
    """
    channels, frames = audio.shape
    up, down, taps = how.up, how.down, how.taps
    total = frames * up // down
    out = np.empty((channels, total), np.float32)
    if total == 0 or frames == 0:
        return out
    scale = ROLLOFF * min(1.0, how.rate_out / how.rate_in)
    reach = taps // 2 - 1  # taps to the left of the output's input index (the rest: at and right of it)
    padded = np.pad(audio, ((0, 0), (reach, reach + 2)), mode="edge")  # julius replicates the edges too
    table = _filter_table()
    last = len(table) - 2
    offsets = np.arange(-reach, taps - reach, dtype=np.int64)  # (taps,)
    for start in range(0, total, how.chunk_outputs):
        m = np.arange(start, min(start + how.chunk_outputs, total), dtype=np.int64)
        ticks = m * down
        index = ticks // up  # the input at or before output m
        phase = (ticks - index * up) / up  # in [0, 1)
        inputs = index[:, None] + offsets[None, :]  # (outputs, taps)
        where = np.abs(offsets[None, :] - phase[:, None]) * (scale * TABLE_STEPS)  # table coordinate
        np.minimum(where, last, out=where)
        cell = where.astype(np.int64)
        where -= cell  # the fraction between table points
        weights = table[cell] * (1.0 - where) + table[cell + 1] * where
        weights /= weights.sum(axis=1, keepdims=True)
        weights32 = weights.astype(np.float32)
        for row in range(channels):  # one row at a time: the gathered taps stay one chunk in size
            out[row, start:start + len(m)] = np.einsum("ot,ot->o", padded[row][inputs + reach], weights32)
    return out


# -- rate checks ------------------------------------------------------------------------------------


def check_file_rate(sample_rate: int, low: int, high: int, *, what: str, keys: str) -> None:
    """Refuse a file whose sample rate lies outside [low, high] Hz, naming the rate and the keys."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) \
            or not low <= sample_rate <= high:
        raise BadRequest(f"{what}: sample rate {sample_rate!r} Hz is outside the accepted range [{low}, {high}] Hz "
                         f"({keys}); convert the file to a standard rate such as 44100 or 48000 Hz")


def standard_rates(model_rate: int, max_terms: int) -> list[int]:
    """The standard rates a live stream against `model_rate` accepts under `max_terms`."""
    return [rate for rate in STANDARD_RATES if max(reduced_ratio(rate, model_rate)) <= max_terms]


def stream_rate_problem(sample_rate: int, model_rate: int, max_terms: int) -> str | None:
    """Why a live stream at `sample_rate` cannot run against a model at `model_rate`, or None.

    The streaming resampler holds one `(up, down + taps)` filter matrix for the reduced ratio
    up/down, so it only takes ratios whose terms are at most `max_terms`.
    """
    up, down = reduced_ratio(sample_rate, model_rate)
    if max(up, down) <= max_terms:
        return None
    standard = ", ".join(str(rate) for rate in standard_rates(model_rate, max_terms))
    return (f"sample rate {sample_rate} Hz against the model's {model_rate} Hz reduces to the ratio {down}:{up}, "
            f"whose terms exceed {max_terms} (the streaming resampler would need a filter matrix of about "
            f"{up} x {down} coefficients); expected a standard rate: {standard} Hz")


def check_stream_rate(sample_rate: int, model_rate: int, max_terms: int, *, what: str, key: str) -> None:
    """Raise `BadRequest` naming the rate, the bound's `key` and the accepted standard rates."""
    problem = stream_rate_problem(sample_rate, model_rate, max_terms)
    if problem is not None:
        raise BadRequest(f"{what}: {problem} (bound: {key} = {max_terms})")
