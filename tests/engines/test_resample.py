"""Whole-signal resampling (engines/resample.py): any accepted rate in bounded memory, and correct.

The bound is asserted on the plan, which sizes every buffer before anything is allocated: building
julius's kernel for 44101 Hz to check it would take 7.3 GiB.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from julius import resample_frac

from bridge.errors import BadRequest
from engines.resample import (
    MAX_WORK_BYTES,
    STANDARD_RATES,
    julius_kernel_elements,
    plan,
    resample,
    resample_tensor,
)

MODEL_RATE = 44100
# Odd rates a file may have: coprime with 44100 (44101 = 11 x 19 x 211), a prime, just inside the
# accepted range, and the old Macintosh rates.
ODD_RATES = (1009, 22254, 44101, 44111, 47999, 81001, 96001, 191999, 383999)


def test_a_rate_coprime_with_the_model_rate_plans_a_small_filter() -> None:
    # What julius alone would have allocated for 44101 Hz -> 44.1 kHz, and what the plan holds.
    assert 4 * julius_kernel_elements(44101, MODEL_RATE) > 7 * 1024**3
    for rate_in, rate_out in ((44101, MODEL_RATE), (MODEL_RATE, 44101)):
        how = plan(rate_in, rate_out)
        assert how.method != "julius"
        assert how.filter_bytes <= MAX_WORK_BYTES


@pytest.mark.parametrize("rate", ODD_RATES + STANDARD_RATES)
@pytest.mark.parametrize("other", (MODEL_RATE, 16000, 32000, 48000))
def test_every_accepted_file_rate_plans_within_the_bound(rate: int, other: int) -> None:
    for rate_in, rate_out in ((rate, other), (other, rate)):
        assert plan(rate_in, rate_out).filter_bytes <= MAX_WORK_BYTES


@pytest.mark.parametrize(("rate_in", "rate_out"), [(1, MODEL_RATE), (MODEL_RATE, 10**8), (10**9, 8000)])
def test_a_ratio_no_method_bounds_is_refused(rate_in: int, rate_out: int) -> None:
    with pytest.raises(BadRequest) as caught:
        plan(rate_in, rate_out)
    assert str(min(rate_in, rate_out)) in caught.value.message


@pytest.mark.parametrize(("rate_in", "rate_out", "method"), [
    (44101, MODEL_RATE, "poly"), (MODEL_RATE, 44101, "poly"), (96001, MODEL_RATE, "sinc"),
    (MODEL_RATE, 96001, "sinc"), (48000, MODEL_RATE, "julius"),
])
def test_a_tone_keeps_its_pitch_level_and_timing(rate_in: int, rate_out: int, method: str) -> None:
    seconds = 0.5
    t_in = np.arange(int(seconds * rate_in)) / rate_in
    tone = np.stack([np.sin(2 * np.pi * 1000 * t_in), 0.5 * np.cos(2 * np.pi * 3000 * t_in)]).astype(np.float32)
    assert plan(rate_in, rate_out).method == method
    out = resample(tone, rate_in, rate_out)
    assert out.dtype == np.float32 and out.shape == (2, len(t_in) * rate_out // rate_in)
    t_out = np.arange(out.shape[1]) / rate_out
    expected = np.stack([np.sin(2 * np.pi * 1000 * t_out), 0.5 * np.cos(2 * np.pi * 3000 * t_out)])
    inner = slice(200, -200)  # the edges are replicated, not continued
    np.testing.assert_allclose(out[:, inner], expected[:, inner], atol=2e-3)


@pytest.mark.parametrize("method", ("poly", "sinc"))
@pytest.mark.parametrize(("rate_in", "rate_out"), [(48000, MODEL_RATE), (MODEL_RATE, 48000), (MODEL_RATE, 16000)])
def test_the_bounded_methods_match_julius_where_julius_is_cheap(method: str, rate_in: int, rate_out: int) -> None:
    from engines import resample as module

    rng = np.random.default_rng(0)
    noise = rng.standard_normal((2, rate_in // 4 + 13)).astype(np.float32)
    reference = resample_frac(torch.from_numpy(noise), rate_in, rate_out).numpy()
    how = plan(rate_in, rate_out)
    taps = 2 * int(np.ceil(module.ZEROS / (module.ROLLOFF * min(1.0, rate_out / rate_in)))) + 2
    forced = dataclasses.replace(how, method=method, taps=taps, chunk_outputs=max(1, module.CHUNK_ELEMENTS // taps))
    run = module._resample_poly if method == "poly" else module._resample_sinc
    out = run(noise, forced)
    assert out.shape == reference.shape
    np.testing.assert_allclose(out, reference, atol=2e-4)


def test_stems_of_any_shape_and_tensors_round_trip() -> None:
    stems = np.random.default_rng(1).standard_normal((4, 2, 44101)).astype(np.float32)
    down = resample(stems, 44101, MODEL_RATE)
    assert down.shape == (4, 2, 44100)
    tensor = resample_tensor(torch.from_numpy(down), MODEL_RATE, 44101)
    assert isinstance(tensor, torch.Tensor) and tuple(tensor.shape) == (4, 2, 44101)
