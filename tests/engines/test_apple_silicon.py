"""HTDemucs on Apple silicon's GPU (MPS).

Before macOS 15.1, PyTorch's MPS convolutions refuse an output with any dimension over 2^16, and
the inputs of transposed convolutions likewise ("Output channels > 65536 not supported at the MPS
device": aten/src/ATen/native/mps/operations/Convolution.mm, `_mps_convolution_impl` and
`mps_convolution_backward_input`; a 1-D convolution runs there as a 2-D one, so a signal's length
counts). HTDemucs's trained 7.8 s segment (343 980 frames) is past that after its first time-domain
layer, so file separation there takes shorter segments and a live window as long is refused by name.

The shapes are checked here on the released architecture on the CPU, with the same rule hooked onto
every convolution; the tests marked `mps` run the engines on an Apple silicon GPU and are skipped
without one (CI runs Linux).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bridge.testing import released_htdemucs, released_htdemucs_repo, tiny_htdemucs_repo
from engines.base import MPS_CONV_LIMIT, conv_size_limit, synchronize
from engines.separation.files import FileSeparator
from engines.separation.models import htdemucs_longest_frames
from engines.separation.streaming import StreamingSeparator

RATE = 44100


def largest_mps_checked_size(model: torch.nn.Module, frames: int) -> int:
    """The largest size MPS's convolutions check before macOS 15.1, over one forward of `model` on
    `frames` of stereo input: every convolution's output and every transposed convolution's input."""
    sizes: list[int] = []

    def output(module: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        sizes.append(max(out.shape))

    def transposed_input(module: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        sizes.append(max(args[0].shape))

    hooks = []
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d)):
            hooks.append(module.register_forward_hook(output))
        elif isinstance(module, (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d)):
            hooks.append(module.register_forward_hook(transposed_input))
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 2, frames))
    finally:
        for hook in hooks:
            hook.remove()
    return max(sizes)


def test_the_longest_htdemucs_segment_fits_mps_convolutions_before_macos_15_1() -> None:
    model = released_htdemucs()
    model.use_train_segment = False  # as load_model leaves every HTDemucs: any window length
    longest = htdemucs_longest_frames([model], MPS_CONV_LIMIT)
    assert longest is not None
    assert longest / RATE > 5.9  # what a file job's segments become there, instead of 7.8 s
    assert largest_mps_checked_size(model, longest) <= MPS_CONV_LIMIT
    # One model block (the STFT's hop, what every window length is a multiple of) more is refused,
    # and so is the 7.8 s segment HTDemucs was trained on, demucs's own default.
    assert largest_mps_checked_size(model, longest + 1024) > MPS_CONV_LIMIT
    assert largest_mps_checked_size(model, int(float(model.segment) * RATE)) > MPS_CONV_LIMIT


def test_no_limit_off_apple_silicon_and_for_models_without_htdemucs() -> None:
    assert conv_size_limit(torch.device("cpu")) is None
    assert htdemucs_longest_frames([released_htdemucs()], None) is None
    assert htdemucs_longest_frames([torch.nn.Identity()], MPS_CONV_LIMIT) is None  # Spleeter, Open-Unmix


def _mps() -> torch.device:
    if not torch.backends.mps.is_available():
        pytest.skip("needs Apple silicon's GPU (MPS)")
    return torch.device("mps")


@pytest.mark.mps
def test_a_file_job_on_mps_separates_like_the_cpu(tmp_path: Path) -> None:
    device = _mps()
    repo = released_htdemucs_repo(tmp_path / "repo")
    audio = (0.1 * np.random.default_rng(0).standard_normal((2, 9 * RATE))).astype(np.float32)
    on_mps = FileSeparator("htdemucs_released", repo=repo, device=str(device))
    on_cpu = FileSeparator("htdemucs_released", repo=repo, device="cpu")
    if conv_size_limit(device) is not None:
        assert on_mps.segment() < 6.0 < on_cpu.segment()
    out = on_mps.process(audio, lambda fraction: None)
    expected = on_cpu.process(audio, lambda fraction: None)
    assert out.shape == expected.shape
    assert np.linalg.norm(out - expected) / np.linalg.norm(expected) < 0.05  # segments differ where capped


@pytest.mark.mps
def test_a_stream_on_mps_matches_the_cpu_and_times_its_windows_done(tmp_path: Path) -> None:
    device = _mps()
    repo = tiny_htdemucs_repo(tmp_path / "repo", depth=3)
    setting = {"context_seconds": 0.1, "hop_seconds": 0.1, "lookahead_seconds": 0.1, "sample_rate": RATE}
    audio = (0.1 * np.random.default_rng(1).standard_normal((2, 2 * RATE))).astype(np.float32)
    results = []
    for name in (str(device), "cpu"):
        engine = StreamingSeparator("tiny", repo=repo, device=name, **setting)
        engine.reset()
        results.append(np.concatenate([engine.process(audio[:, i:i + 512]) for i in range(0, audio.shape[1], 512)],
                                      axis=-1))
        assert engine.load_timing()["load_timing_windows"] >= 3
    synchronize(device)
    streamed, expected = results
    assert np.linalg.norm(streamed - expected) / np.linalg.norm(expected) < 5e-3


@pytest.mark.mps
def test_closing_an_mps_engine_hands_its_cached_memory_back(tmp_path: Path) -> None:
    # On Apple silicon the GPU's memory is the machine's: what PyTorch keeps cached, the DAW lacks.
    device = _mps()
    repo = tiny_htdemucs_repo(tmp_path / "repo", depth=3)
    engine = StreamingSeparator("tiny", repo=repo, device=str(device), context_seconds=0.1, hop_seconds=0.1,
                                lookahead_seconds=0.1, sample_rate=RATE)
    engine.reset()
    engine.process(np.zeros((2, RATE), np.float32))
    held = torch.mps.driver_allocated_memory()
    engine.close()
    assert torch.mps.driver_allocated_memory() < held
