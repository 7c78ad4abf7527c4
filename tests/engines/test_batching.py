"""Batching several streams' windows into one forward (engines/batching.py), on the CPU (and on
CUDA where there is a GPU: `gpu`-marked, skipped without one).

Batching is for GPUs; on the CPU it is forced on, and what matters is that it changes nothing a stream
hears: each engine fed from its own thread gives what it gives alone (max abs difference <= 1e-5:
the same model on the same windows, only the batched kernels' rounding may differ), a stream that
ends while others wait for it holds nobody up, and a failed batch reaches each of its members.
Tests that need every window batched use a long gather period and members that are always
expected, so the batch sizes do not depend on how the threads happen to be scheduled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from bridge.errors import Internal
from bridge.testing import tiny_htdemucs_repo
from engines.batching import WindowBatcher, WindowBatchers
from engines.separation.streaming import StreamingSeparator

SHORT = {"context_seconds": 0.1, "hop_seconds": 0.1, "lookahead_seconds": 0.1}  # 4096-frame blocks
ALWAYS = 1e9  # expect_hops: every member is waited for until it hands its window in, or leaves
TOLERANCE = 1e-5
# On CUDA, cuDNN picks its convolution algorithm (and TF32, torch's default for convolutions) per
# batch size, so a batched window can round differently from the same window alone: the stems are
# compared as the CUDA-vs-CPU test compares them (engines/test_separation.py), relative L2 error.
CUDA_RELATIVE = 1e-3


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_htdemucs_repo(tmp_path_factory.mktemp("demucs") / "repo", depth=3)


def engine(repo: Path, batching: WindowBatchers | None = None, device: str = "cpu") -> StreamingSeparator:
    separator = StreamingSeparator("tiny", repo=repo, device=device, sample_rate=48000, threads=1, batching=batching,
                                   **SHORT)
    separator.load()
    return separator


def noise(frames: int, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal((2, frames))).astype(np.float32)


def stream(separator: StreamingSeparator, audio: np.ndarray, block: int) -> np.ndarray:
    return np.concatenate([separator.process(audio[:, i:i + block]) for i in range(0, audio.shape[1], block)], axis=-1)


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def in_threads(jobs: list[Callable[[], object]], seconds: float = 300.0) -> list[object]:
    results: list[object] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = jobs[index]()
        except BaseException as err:  # noqa: BLE001 - reported below, in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,), name=f"stream-{i}") for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds)
    assert not any(t.is_alive() for t in threads), "a stream hung"
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("streams", [2, 4])
def test_batched_streams_equal_each_stream_alone(repo: Path, streams: int, device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    frames = 48000  # 1 s: ten 0.1 s hops
    audios = [noise(frames, seed) for seed in range(streams)]
    alone = engine(repo, device=device)
    expected = []
    for audio in audios:
        alone.reset()
        expected.append(stream(alone, audio, 512))
    alone.close()

    pool = WindowBatchers(gather_seconds=30.0, max_streams=streams, expect_hops=ALWAYS)
    engines = [engine(repo, pool, device) for _ in range(streams)]
    blocks = [256, 1000, 4096, 333][:streams]  # any block sizes: the windows are the same
    try:
        outputs = in_threads([lambda e=e, a=a, b=b: stream(e, a, b)
                              for e, a, b in zip(engines, audios, blocks, strict=True)])
        for got, want in zip(outputs, expected, strict=True):
            assert got.shape == want.shape
            if device == "cuda":
                assert np.linalg.norm(got - want) / np.linalg.norm(want) < CUDA_RELATIVE
            else:
                assert float(np.abs(got - want).max()) <= TOLERANCE
        for separator in engines:
            stats = separator.stats()
            assert stats["batching"] and stats["batch_members"] == streams
            assert stats["batch_sizes"] == {streams: stats["hops"]} and stats["hops"] >= 8
            assert stats["batch_size_mean"] == streams
            assert stats["latency_frames"] == engines[0].latency_frames  # batching changes compute time only
        counts = engines[0]._batcher.counts()
        assert counts["sizes"] == {streams: engines[0].stats()["hops"]}
    finally:
        for separator in engines:
            separator.close()
    assert engines[0]._batching.describe()[0]["members"] == 0  # every engine left when it closed


def test_a_lone_stream_never_waits_for_the_gather_period(repo: Path) -> None:
    pool = WindowBatchers(gather_seconds=3600.0, max_streams=2)
    separator = engine(repo, pool)
    try:
        audio = noise(24000, 7)
        in_threads([lambda: stream(separator, audio, 1024)], seconds=300.0)  # an hour's wait would fail here
        stats = separator.stats()
        assert stats["batch_sizes"] == {1: stats["hops"]} and stats["hops"] >= 3
    finally:
        separator.close()


def test_a_stream_that_closes_while_another_waits_for_it_does_not_hang_it(repo: Path) -> None:
    pool = WindowBatchers(gather_seconds=3600.0, max_streams=2, expect_hops=ALWAYS)
    waiting, leaving = engine(repo, pool), engine(repo, pool)
    alone = engine(repo)
    audio = noise(24000, 3)
    first = waiting.input_frames_to_window()  # this block completes a window: it waits for `leaving`
    try:
        expected = alone.process(audio[:, :first])
        result: list[np.ndarray] = []
        thread = threading.Thread(target=lambda: result.append(waiting.process(audio[:, :first])), name="waiting")
        thread.start()
        batcher = waiting._batcher
        wait_for(lambda: batcher.waiting == 1, "the first stream to wait for the second")
        leaving.close()  # leaves the batcher: the waiting stream runs alone
        thread.join(timeout=300)
        assert not thread.is_alive(), "the waiting stream hung after the other closed"
        assert float(np.abs(result[0] - expected).max()) <= TOLERANCE
        assert waiting.stats()["batch_sizes"] == {1: 1} and batcher.members == 1
    finally:
        for separator in (waiting, leaving, alone):
            separator.close()


def test_a_failed_batch_reaches_every_member_and_the_next_batch_runs() -> None:
    batcher = WindowBatcher("test", gather_seconds=3600.0, expect_hops=ALWAYS)
    members = [batcher.join(0.1) for _ in range(2)]
    windows = [torch.full((1, 2, 8), float(i)) for i in range(2)]

    def failing(batch: torch.Tensor) -> list[torch.Tensor]:
        raise ValueError("out of memory, say")

    def doubling(batch: torch.Tensor) -> list[torch.Tensor]:
        return [batch * 2]

    raised: list[type] = []

    def run(member: int, window: torch.Tensor, forward: Callable) -> object:
        try:
            return batcher.run(member, window, forward)
        except (ValueError, Internal) as err:
            raised.append(type(err))
            return None

    in_threads([lambda m=m, w=w: run(m, w, failing) for m, w in zip(members, windows, strict=True)])
    assert sorted(t.__name__ for t in raised) == ["Internal", "ValueError"]  # the leader's own, and the other's
    results = in_threads([lambda m=m, w=w: batcher.run(m, w, doubling) for m, w in zip(members, windows, strict=True)])
    for index, result in enumerate(results):
        assert result.batch_size == 2 and torch.equal(result.outputs[0], windows[index] * 2)
    assert batcher.counts() == {"batches": 2, "windows": 4, "sizes": {2: 2}}
    assert batcher.waiting == 0
