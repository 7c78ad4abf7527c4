"""Sample-rate conversion: one method for whole signals (files, model output), one for live streams.

Chosen by `bench/resample.py`, which runs every candidate on the same signals in one run (README,
"Benchmarks"):

* **Files: soxr** (`soxr.resample`, quality HQ: a linear-phase filter with about 20-bit
  precision). Against the julius / polyphase path shipped before it, it was 1.9-6x faster, its
  error on a multi-tone 15-70 dB lower and its alias rejection 70-100 dB higher; julius needs a
  dense kernel per output phase (7.3 GiB for 44101 -> 44100 Hz), while soxr's filter memory does
  not grow with the terms of the ratio: 20 s of stereo at 44101 Hz adds about one copy of the
  audio. The output is aligned with the input (output m is the input at time m * rate_in /
  rate_out) and has `floor(frames * rate_out / rate_in)` frames.
* **Streams: `StreamingResampler`** (below): a polyphase windowed-sinc with a fixed delay of a
  whole number of output frames, the same output whatever the block sizes, and closed forms for
  how many outputs a given input makes (`produced`, `inputs_needed`), which the streaming separator
  builds its exact latency on. It waits 18-35 output frames (under 1 ms); soxr's stream at HQ held
  back 820-1770 (17-40 ms), a figure that moves with the block sizes.
  Its limits (README, "Benchmarks"): the top of the band is attenuated (35 dB SNR at 0.85 x
  Nyquist, 89-97 dB below 10 kHz), and it only takes ratios of small terms (`MAX_RATIO_TERMS`).

Rates are checked first: a file's rate must lie in a configured range (`check_file_rate`), a file
ratio beyond `MAX_EXPANSION` up or `MAX_REDUCTION` down is refused, and the streaming path
(`check_stream_rate`) only takes rates whose ratio to the model's is made of small numbers.

Nothing heavy happens at import: soxr and torch are imported when they run.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bridge.errors import BadRequest

# The rates audio devices and DAW projects run at. Every one of them reduces against 44.1 kHz to a
# ratio whose terms are at most 640 (192000:44100 = 640:147).
STANDARD_RATES: tuple[int, ...] = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000,
                                   176400, 192000)

FILE_QUALITY = "HQ"  # VHQ's extra accuracy lies below -76 dB, and it was slower on two pairs of four
MAX_EXPANSION = 1024  # outputs per input frame a file may ask for
MAX_REDUCTION = 320  # inputs per output frame a file may ask for


def reduced_ratio(rate_in: int, rate_out: int) -> tuple[int, int]:
    """(up, down): `rate_out / rate_in` in lowest terms."""
    gcd = math.gcd(rate_in, rate_out)
    return rate_out // gcd, rate_in // gcd


def check_ratio(rate_in: int, rate_out: int) -> None:
    """Refuse rates that are not positive integers, or a ratio beyond the bounds above."""
    for name, rate in (("rate_in", rate_in), ("rate_out", rate_out)):
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise BadRequest(f"resample: {name} expected a positive integer sample rate in Hz, got {rate!r}")
    if rate_out > MAX_EXPANSION * rate_in:
        raise BadRequest(f"resample: {rate_in} Hz -> {rate_out} Hz makes {rate_out / rate_in:.0f} outputs per "
                         f"input frame; at most {MAX_EXPANSION} are supported")
    if rate_in > MAX_REDUCTION * rate_out:
        raise BadRequest(f"resample: {rate_in} Hz -> {rate_out} Hz reads {rate_in / rate_out:.0f} inputs per "
                         f"output frame; at most {MAX_REDUCTION} are supported")


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """`(..., frames)` audio from `rate_in` to `rate_out` Hz, float32, with soxr (see above).

    Returns `floor(frames * rate_out / rate_in)` frames; the same rates return the input as float32.
    """
    check_ratio(rate_in, rate_out)
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 0:
        raise BadRequest("resample: expected audio shaped (..., frames), got a scalar")
    if int(rate_in) == int(rate_out):
        return audio
    import soxr

    rows = audio.reshape(math.prod(audio.shape[:-1]), audio.shape[-1])  # -1 fails on empty audio
    frames = rows.shape[1] * int(rate_out) // int(rate_in)
    out = soxr.resample(np.ascontiguousarray(rows.T), int(rate_in), int(rate_out), FILE_QUALITY)
    return np.ascontiguousarray(out[:frames].T).reshape(*audio.shape[:-1], frames)


def resample_tensor(audio: Any, rate_in: int, rate_out: int) -> Any:
    """The same for a `(..., frames)` CPU torch tensor; returns a float32 tensor."""
    import torch

    if int(rate_in) == int(rate_out):
        return audio
    return torch.from_numpy(resample(audio.detach().cpu().numpy(), rate_in, rate_out))


# -- streams ----------------------------------------------------------------------------------------

# The streaming resampler's filter matrix is `up x (down + taps)` for the reduced ratio up/down of
# the device and model rates: a ratio whose terms are at most this keeps it under ~1 M coefficients
# (8 MB of float64 while it is built). Every standard rate against 44.1 kHz has terms of at most
# 640; a rate coprime with 44100 (44101) would need 44100 x 44135 (14.5 GiB).
MAX_RATIO_TERMS = 1000
PIECE_FRAMES = 8192  # the input resampler takes device blocks in pieces of at most this many frames
# Products of up to this many (channel, period) rows run in numpy's einsum on the calling thread
# (StreamingResampler): a 1024-frame stereo block at 48 kHz is 14-16. Measured for 48 -> 44.1 kHz
# on the 2-core CPU: einsum 8 us a row; torch's pooled matmul 170-210 us for 4-160 rows with its
# threads asleep (OMP_WAIT_POLICY=PASSIVE), 9 us for 4 rows with them spinning.
SMALL_PRODUCT_ROWS = 16


class StreamingResampler:
    """Stateful polyphase windowed-sinc resampler, `rate_in` -> `rate_out`, for any block sizes.

    Time is counted in ticks of the common grid `rate_in * up == rate_out * down` (7.056 MHz for
    48 kHz <-> 44.1 kHz, with up/down = 147/160). Input sample n sits at tick `n * up`; output
    sample m is the band-limited input at tick `m * down - delay_ticks`. `delay_ticks` is at least
    the filter's half-width (so the filter is causal); `extra_delay_ticks` adds to it, and
    `whole_delay=True` then rounds it up to a whole number of output samples.

    The engine rounds each resampler's delay up to a whole number of output samples: the input
    resampler's so the model sees the input on its own 1024-frame grid (HTDemucs is not invariant
    to sub-frame shifts), the output resampler's so the total latency is a whole number of frames.

    One period of `up` outputs reads a frame of `num_cols` inputs that starts `down` inputs after
    the previous period's, so each call is one matrix product of contiguous frames with a
    precomputed `(num_cols, up)` filter matrix. Output rows are normalised to unit DC gain.

    The product runs in torch on CPU tensors that share the numpy buffers: numpy's OpenBLAS keeps
    its own threads spinning after each call, and next to torch's pool on a 2-core machine that
    slowed the model's forward pass by 10-100x. A small product (a live stream's one device block:
    up to SMALL_PRODUCT_ROWS rows) runs in numpy's own einsum loop instead, on the calling thread
    alone: torch hands even that to its thread pool, whose threads sleep between calls under the
    daemon's OMP_WAIT_POLICY=PASSIVE (bridge/__init__.py), and waking them cost 170-280 us a call,
    14x the 20 us the product takes on one thread (48 -> 44.1 kHz, 256 stereo frames, 2-core CPU).

    Memory: the matrix has `matrix_shape(...)` coefficients, about up x (down + 2 * zeros * max(1,
    down / up)); the constructor refuses (`BadRequest`, before allocating anything) a ratio whose
    terms exceed `max_terms`, so with the default 1000 the matrix stays under ~1 M coefficients.
    """

    def __init__(self, rate_in: int, rate_out: int, channels: int, *, max_input: int = PIECE_FRAMES,
                 zeros: int = 16, rolloff: float = 0.94, kaiser_beta: float = 8.6,
                 extra_delay_ticks: int = 0, whole_delay: bool = False, max_terms: int = MAX_RATIO_TERMS) -> None:
        if rate_in <= 0 or rate_out <= 0:
            raise BadRequest(f"rates: expected positive sample rates, got {rate_in} -> {rate_out}")
        up, down = reduced_ratio(rate_in, rate_out)
        if max(up, down) > max_terms:
            accepted = ", ".join(map(str, standard_rates(rate_in, max_terms) or standard_rates(rate_out, max_terms)))
            raise BadRequest(f"streaming resampler {rate_in} Hz -> {rate_out} Hz: the reduced ratio {up}:{down} "
                             f"has terms over {max_terms} (a matrix of {up} x {down + 1}+ coefficients); expected "
                             f"a standard rate: {accepted} Hz")
        if extra_delay_ticks < 0:
            raise BadRequest(f"extra_delay_ticks: expected >= 0 (less delay than the filter's half-width is not "
                             f"causal), got {extra_delay_ticks}")
        import torch

        gcd = math.gcd(rate_in, rate_out)
        self.rate_in, self.rate_out = rate_in, rate_out
        self.up, self.down = rate_out // gcd, rate_in // gcd
        self.channels = channels
        self.max_input = max_input
        scale, self.half_width_ticks = self.design(rate_in, rate_out, zeros, rolloff)
        if whole_delay:
            extra_delay_ticks += -(self.half_width_ticks + extra_delay_ticks) % self.down
        self.delay_ticks = self.half_width_ticks + int(extra_delay_ticks)
        up, down, width, delay = self.up, self.down, self.half_width_ticks, self.delay_ticks
        self.num_taps = (2 * width - 1) // up + 1  # inputs under the filter for one output, at most
        # First input read by output m: the smallest n with m*down - delay - n*up < width.
        first = (np.arange(up) * down - delay - width) // up + 1
        self._first0 = int(first[0])
        self.num_cols = int(first[-1] - first[0]) + self.num_taps
        cols = (first - first[0])[:, None] + np.arange(self.num_taps)[None, :]  # (up, taps)
        ticks = (np.arange(up) * down - delay)[:, None] - (first[:, None] + np.arange(self.num_taps)[None, :]) * up
        ratio = np.clip(ticks / width, -1.0, 1.0)
        taps = np.sinc(scale * ticks) * np.i0(kaiser_beta * np.sqrt(1.0 - ratio**2)) / np.i0(kaiser_beta)
        taps[np.abs(ticks) >= width] = 0.0
        taps /= taps.sum(axis=1, keepdims=True)
        matrix = np.zeros((up, self.num_cols), dtype=np.float64)
        np.put_along_axis(matrix, cols, taps, axis=1)
        self._matrix_t = torch.from_numpy(np.ascontiguousarray(matrix.T, dtype=np.float32))  # (num_cols, up)

        max_blocks = max_input // down + 4  # periods one call can touch
        self._history = np.zeros((channels, self.num_cols + down * (max_blocks + 1) + max_input), np.float32)
        self._frames = np.zeros((channels, max_blocks, self.num_cols), np.float32)
        self._out = np.zeros((channels, max_blocks, up), np.float32)
        self._history_t = torch.from_numpy(self._history)
        self._frames_t, self._out_t = torch.from_numpy(self._frames), torch.from_numpy(self._out)
        self._matmul = torch.matmul
        self._matrix = self._matrix_t.numpy()
        self.reset()

    @classmethod
    def matrix_shape(cls, rate_in: int, rate_out: int, zeros: int = 16, rolloff: float = 0.94) -> tuple[int, int]:
        """(up, num_cols): the filter matrix this pair of rates needs, computed without allocating it.

        Worst case over the whole-delay options: the delay adds at most `down` ticks, which moves
        the first and last columns together and so leaves `num_cols` unchanged to within one.
        """
        up, down = reduced_ratio(rate_in, rate_out)
        _, width = cls.design(rate_in, rate_out, zeros, rolloff)
        taps = (2 * width - 1) // up + 1
        return up, ((up - 1) * down) // up + taps + 1

    @staticmethod
    def design(rate_in: int, rate_out: int, zeros: int = 16, rolloff: float = 0.94) -> tuple[float, int]:
        """(twice the cutoff in cycles per tick, the filter's half-width in ticks) for these rates."""
        tick_rate = rate_in * (rate_out // math.gcd(rate_in, rate_out))
        scale = rolloff * min(rate_in, rate_out) / tick_rate  # sinc zero crossings are 1/scale ticks apart
        return scale, math.ceil(zeros / scale)

    @property
    def delay_frames(self) -> float:
        """The delay in output samples (a whole number with `whole_delay=True`)."""
        return self.delay_ticks / self.down

    def reset(self) -> None:
        """Start a new stream: the history before sample 0 is silence."""
        self._history.fill(0.0)
        self._start = self._first0  # absolute input index of _history[:, 0]
        self._end = 0  # absolute input index one past the last sample received
        self._next = 0  # next output index to produce

    def produced(self, count: int) -> int:
        """How many output samples exist once `count` input samples have been received."""
        numerator = (count - self.num_taps) * self.up + self.delay_ticks + self.half_width_ticks
        return max(0, -(-numerator // self.down))

    def inputs_needed(self, outputs: int) -> int:
        """The fewest input samples after which `outputs` output samples exist."""
        if outputs <= 0:
            return 0
        # produced(count) >= outputs  <=>  (count - taps)*up + delay + width > (outputs - 1)*down
        return max(0, ((outputs - 1) * self.down - self.delay_ticks - self.half_width_ticks) // self.up
                   + 1 + self.num_taps)

    @property
    def delay_seconds(self) -> float:
        return self.delay_ticks / (self.rate_in * self.up)

    @property
    def received(self) -> int:
        """Input samples received since the last `reset`."""
        return self._end

    @property
    def next_output(self) -> int:
        """Output samples produced since the last `reset` (the index of the next one)."""
        return self._next

    def process(self, block: np.ndarray) -> np.ndarray:
        """Take `(channels, n)` float32 input, return every output sample that became computable.

        The result is a view into an internal buffer, valid until the next call.
        """
        n = block.shape[-1]
        if n > self.max_input:
            parts = [self.process(block[:, i:i + self.max_input]).copy() for i in range(0, n, self.max_input)]
            return np.concatenate(parts, axis=1)
        self._append(block)
        stop = self.produced(self._end)
        if stop <= self._next:
            return self._out[:, :0, 0]
        up, down = self.up, self.down
        first_block = self._next // up
        num_blocks = -(-stop // up) - first_block
        offset = self._first0 + first_block * down - self._start
        # Contiguous frames (channel, period, column): frame b starts `down` inputs after b-1. The
        # last frame may reach past the received input; those samples only feed outputs >= stop.
        source = self._history_t.as_strided((self.channels, num_blocks, self.num_cols),
                                            (self._history.shape[1], down, 1), offset)
        frames = self._frames_t[:, :num_blocks]
        frames.copy_(source)
        if self.channels * num_blocks <= SMALL_PRODUCT_ROWS:  # no thread pool to wake (class docstring)
            np.einsum("cbk,ku->cbu", self._frames[:, :num_blocks], self._matrix, out=self._out[:, :num_blocks])
        else:
            self._matmul(frames, self._matrix_t, out=self._out_t[:, :num_blocks])
        flat = self._out[:, :num_blocks].reshape(self.channels, num_blocks * up)
        result = flat[:, self._next - first_block * up:stop - first_block * up]
        self._next = stop
        return result

    def _append(self, block: np.ndarray) -> None:
        n = block.shape[-1]
        keep_from = self._first0 + (self._next // self.up) * self.down  # first input the next period reads
        drop = keep_from - self._start
        if drop > 0:
            kept = self._end - keep_from
            self._history[:, :kept] = self._history[:, drop:drop + kept]
            self._start = keep_from
        at = self._end - self._start
        self._history[:, at:at + n] = block
        self._end += n


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
