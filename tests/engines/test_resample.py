"""Resampling (engines/resample.py): soxr for whole signals, `StreamingResampler` for live streams.

Files: any accepted rate (44101 Hz, coprime with the model's 44.1 kHz, used to need a 7.3 GiB
julius kernel) converts in bounded memory, measured as the peak RSS a fresh process adds, and keeps
pitch, level and timing. Streams: whatever the block sizes, the output is the same as one call on the
whole signal; the delay the resampler reports is where an impulse comes out; a ratio whose filter
matrix would not be small (44101 Hz: 14.5 GiB) is refused before anything is allocated.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from bridge.errors import BadRequest
from engines.resample import STANDARD_RATES, StreamingResampler, resample, resample_tensor

MODEL_RATE = 44100
ROOT = Path(__file__).resolve().parents[2]
# Odd rates a file may have: coprime with 44100 (44101 = 11 x 19 x 211), a prime, just inside the
# accepted range, and the old Macintosh rates.
ODD_RATES = (1009, 22254, 44101, 44111, 47999, 81001, 96001, 191999, 383999)


def noise(frames: int, rate: int, channels: int = 2, seed: int = 0) -> np.ndarray:
    """Noise band-limited to 16 kHz (made at 32 kHz, resampled), so every design agrees on it."""
    base = np.random.default_rng(seed).standard_normal((channels, frames * 32000 // rate + 64)).astype(np.float32)
    return 0.1 * resample(base, 32000, rate)[:, :frames]


def stream(resampler: StreamingResampler, audio: np.ndarray, sizes: list[int]) -> np.ndarray:
    out, at, i = [], 0, 0
    while at < audio.shape[1]:
        block = audio[:, at:at + sizes[i % len(sizes)]]
        out.append(resampler.process(block).copy())  # a view into the resampler's buffer
        at, i = at + block.shape[1], i + 1
    return np.concatenate(out, axis=1)


# ---- files --------------------------------------------------------------------------------------

# A fresh process: its peak RSS is its own. What it adds over the RSS before the call is soxr's
# filter and buffers plus our copies of input and output.
MEASURE = """
import json, resource, sys
import numpy as np
from engines.resample import resample
rate_in, rate_out, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
audio = np.random.default_rng(0).standard_normal((2, int(seconds * rate_in)), dtype=np.float32)  # no float64 copy
resample(audio[:, :rate_in], rate_in, rate_out)  # soxr's library and code paths loaded
scale = 1024 if sys.platform.startswith("linux") else 1
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
out = resample(audio, rate_in, rate_out)
added = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale - before
print(json.dumps({"added": added, "io": audio.nbytes + out.nbytes, "frames": out.shape[1]}))
"""


@pytest.mark.parametrize(("rate_in", "rate_out"), [(44101, MODEL_RATE), (MODEL_RATE, 44101), (96001, MODEL_RATE)])
def test_a_coprime_rate_is_resampled_in_bounded_memory(rate_in: int, rate_out: int) -> None:
    seconds = 20.0
    done = subprocess.run([sys.executable, "-c", MEASURE, str(rate_in), str(rate_out), str(seconds)], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["frames"] == int(seconds * rate_in) * rate_out // rate_in
    # Input and output are 14 MB each; julius's kernel alone would have been 7.3 GiB.
    assert measured["added"] <= 2 * measured["io"] + 32 * 1024**2, measured


@pytest.mark.parametrize(("rate_in", "rate_out"), [
    (44101, MODEL_RATE), (MODEL_RATE, 44101), (96001, MODEL_RATE), (MODEL_RATE, 96001), (48000, MODEL_RATE),
    (22050, 48000), (48000, 16000),
])
def test_a_tone_keeps_its_pitch_level_and_timing(rate_in: int, rate_out: int) -> None:
    seconds = 0.5
    t_in = np.arange(int(seconds * rate_in)) / rate_in
    tone = np.stack([np.sin(2 * np.pi * 1000 * t_in), 0.5 * np.cos(2 * np.pi * 3000 * t_in)]).astype(np.float32)
    out = resample(tone, rate_in, rate_out)
    assert out.dtype == np.float32 and out.shape == (2, len(t_in) * rate_out // rate_in)
    t_out = np.arange(out.shape[1]) / rate_out
    expected = np.stack([np.sin(2 * np.pi * 1000 * t_out), 0.5 * np.cos(2 * np.pi * 3000 * t_out)])
    inner = slice(rate_out // 50, -rate_out // 50)  # the edges: the signal stops there
    np.testing.assert_allclose(out[:, inner], expected[:, inner], atol=1e-3)


def test_downsampling_removes_what_the_new_rate_cannot_hold() -> None:
    t = np.arange(48000) / 48000
    out = resample(np.sin(2 * np.pi * 10000 * t).astype(np.float32)[None], 48000, 16000)
    assert np.sqrt(np.mean(out[:, 1600:-1600] ** 2)) < 1e-4  # over 80 dB down, not aliased to 6 kHz


@pytest.mark.parametrize("rate", ODD_RATES + STANDARD_RATES)
def test_every_accepted_file_rate_converts(rate: int) -> None:
    audio = noise(rate // 20, rate)
    for rate_in, rate_out, x in ((rate, MODEL_RATE, audio), (MODEL_RATE, rate, noise(MODEL_RATE // 20, MODEL_RATE))):
        out = resample(x, rate_in, rate_out)
        assert out.shape == (2, x.shape[1] * rate_out // rate_in) and np.isfinite(out).all()


@pytest.mark.parametrize(("rate_in", "rate_out"), [(1, MODEL_RATE), (MODEL_RATE, 10**8), (10**9, 8000)])
def test_an_absurd_ratio_is_refused(rate_in: int, rate_out: int) -> None:
    with pytest.raises(BadRequest) as caught:
        resample(np.zeros((2, 100), np.float32), rate_in, rate_out)
    assert str(min(rate_in, rate_out)) in caught.value.message


@pytest.mark.parametrize("rate", [0, -44100, 44100.0, True])
def test_a_rate_that_is_not_a_positive_integer_is_refused(rate: object) -> None:
    with pytest.raises(BadRequest) as caught:
        resample(np.zeros((2, 100), np.float32), rate, MODEL_RATE)  # type: ignore[arg-type]
    assert "rate_in" in caught.value.message and repr(rate) in caught.value.message


def test_the_same_rate_is_left_alone_and_empty_audio_stays_empty() -> None:
    audio = noise(1000, 22050)
    assert np.array_equal(resample(audio, 22050, 22050), audio)
    assert resample(np.zeros((2, 0), np.float32), 48000, MODEL_RATE).shape == (2, 0)


def test_stems_of_any_shape_and_tensors_round_trip() -> None:
    stems = np.random.default_rng(1).standard_normal((4, 2, 44101)).astype(np.float32)
    down = resample(stems, 44101, MODEL_RATE)
    assert down.shape == (4, 2, 44100)
    np.testing.assert_array_equal(down[2, 1], resample(stems[2, 1], 44101, MODEL_RATE))  # rows are independent
    tensor = resample_tensor(torch.from_numpy(down), MODEL_RATE, 44101)
    assert isinstance(tensor, torch.Tensor) and tuple(tensor.shape) == (4, 2, 44101)


# ---- streams ------------------------------------------------------------------------------------

DEVICE_PAIRS = [(48000, MODEL_RATE), (MODEL_RATE, 48000), (96000, MODEL_RATE), (MODEL_RATE, 22050)]


@pytest.mark.parametrize(("rate_in", "rate_out"), DEVICE_PAIRS)
@pytest.mark.parametrize("sizes", [[1], [64], [65], [8192], [8193], [1, 255, 4096, 9000, 17]],
                         ids=["1", "64", "65", "8192", "8193", "mixed"])
def test_chunked_streaming_equals_one_call_on_the_whole_signal(rate_in: int, rate_out: int, sizes: list[int]) -> None:
    """Within 1e-6 (float32 sums grouped differently by the matrix product; the signal peaks near 0.5)."""
    audio = noise(rate_in // 2 + 7, rate_in, seed=3)
    whole = StreamingResampler(rate_in, rate_out, 2, whole_delay=True).process(audio).copy()
    resampler = StreamingResampler(rate_in, rate_out, 2, whole_delay=True)
    chunked = stream(resampler, audio, sizes)
    assert chunked.shape == whole.shape == (2, resampler.produced(audio.shape[1]))
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("rate_in", "rate_out"), DEVICE_PAIRS)
def test_the_reported_delay_is_where_an_impulse_comes_out(rate_in: int, rate_out: int) -> None:
    """An impulse at an input instant that falls on an output sample comes out, symmetric (the
    filter has linear phase), exactly `delay_frames` after that sample."""
    resampler = StreamingResampler(rate_in, rate_out, 1, whole_delay=True)
    assert resampler.delay_frames == int(resampler.delay_frames) > 0
    at = 40 * resampler.down  # input sample at output sample 40 * up
    impulse = np.zeros((1, at + 4000), np.float32)
    impulse[0, at] = 1.0
    out = stream(resampler, impulse, [333])[0]
    peak = 40 * resampler.up + int(resampler.delay_frames)
    assert int(np.argmax(out)) == peak
    np.testing.assert_allclose(out[peak + 1:peak + 30], out[peak - 1:peak - 30:-1], atol=1e-6)


def test_resampler_round_trip_is_a_whole_sample_delay() -> None:
    x = noise(48000, 48000, seed=7)
    down = StreamingResampler(48000, MODEL_RATE, 2)
    half_width = StreamingResampler.design(MODEL_RATE, 48000)[1]
    up = StreamingResampler(MODEL_RATE, 48000, 2, extra_delay_ticks=-(down.delay_ticks + half_width) % 147)
    assert (down.up, down.down) == (147, 160) and (up.up, up.down) == (160, 147)
    delay, rest = divmod(down.delay_ticks + up.delay_ticks, 147)
    assert rest == 0 and 0 < delay < 48  # under a millisecond
    y = np.concatenate([up.process(down.process(x[:, i:i + 333])).copy() for i in range(0, x.shape[1], 333)],
                       axis=1)
    assert y.shape[1] == up.produced(down.produced(x.shape[1]))
    error = np.linalg.norm(y[:, 1000:] - x[:, 1000 - delay:y.shape[1] - delay]) / np.linalg.norm(x[:, 1000:])
    assert error < 1e-3


def test_the_stream_matches_the_file_resampler_at_its_stated_delay() -> None:
    """With the delay a whole number of output samples, the stream equals the file path's (soxr,
    zero-delay) output shifted by it, on band-limited audio; the output counts are exact."""
    x = noise(48000, 48000, seed=8)
    resampler = StreamingResampler(48000, MODEL_RATE, 2, whole_delay=True)
    shift = int(resampler.delay_frames)
    assert shift == resampler.delay_frames and resampler.delay_ticks >= resampler.half_width_ticks
    y = stream(resampler, x, [1, 64, 255, 256, 4096, 9000])  # 9000 > max_input: split inside
    assert y.shape[1] == resampler.produced(x.shape[1])
    assert resampler.produced(resampler.inputs_needed(y.shape[1])) >= y.shape[1]
    assert resampler.produced(resampler.inputs_needed(y.shape[1]) - 1) < y.shape[1]
    ref = resample(x, 48000, MODEL_RATE)
    got, want = y[:, 2000:], ref[:, 2000 - shift:y.shape[1] - shift]
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 2e-3


def test_the_resampler_matrix_is_bounded_for_every_accepted_rate() -> None:
    """The filter matrix is sized before it is built: every standard rate stays small, and a rate
    coprime with the model's (44101 Hz: 44100 x 44135, 14.5 GiB in float64) is refused unbuilt."""
    for rate in STANDARD_RATES:
        for rate_in, rate_out in ((rate, MODEL_RATE), (MODEL_RATE, rate)):
            if rate_in == rate_out:
                continue
            up, cols = StreamingResampler.matrix_shape(rate_in, rate_out)
            assert up * cols <= 200_000
            built = StreamingResampler(rate_in, rate_out, 2, whole_delay=True)
            assert built._matrix_t.shape[1] == up and built._matrix_t.shape[0] <= cols
    up, cols = StreamingResampler.matrix_shape(44101, MODEL_RATE)
    assert up * cols * 8 > 14 * 1024**3  # what the resampler used to allocate
    for rate_in, rate_out in ((44101, MODEL_RATE), (MODEL_RATE, 44101)):
        tracemalloc.start()
        try:
            with pytest.raises(BadRequest) as caught:
                StreamingResampler(rate_in, rate_out, 2)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1024**2  # refused before any buffer exists
        assert "44101" in caught.value.message and "48000" in caught.value.message
