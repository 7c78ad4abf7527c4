"""One thread per CUDA device runs every model call on it (engines/device_thread.py).

cuDNN's execution plans are cached per thread in PyTorch, so a CUDA model warmed up on one
thread is cold on another; the streaming engine therefore hands its forwards to the device's
thread. Here the thread itself, on the CPU: calls from any thread run on that one, in order,
with their results and errors; a call made from inside a call does not wait for itself.
"""

from __future__ import annotations

import threading

import pytest
import torch

from engines.device_thread import DeviceThread, device_thread


def test_calls_from_several_threads_all_run_on_the_one_thread_in_order() -> None:
    worker = DeviceThread("test-device")
    ran: list[tuple[int, int]] = []

    def caller(k: int) -> None:
        for i in range(20):
            assert worker.call(lambda k=k, i=i: ran.append((threading.get_ident(), 100 * k + i)) or k) == k

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert {ident for ident, _ in ran} == {worker.ident} != {threading.get_ident()}
    for k in range(4):  # each caller's calls ran in the order it made them
        assert [v for _, v in ran if v // 100 == k] == [100 * k + i for i in range(20)]


def test_an_error_reaches_the_caller_and_the_thread_serves_on() -> None:
    worker = DeviceThread("test-device")

    def fail() -> None:
        raise ValueError("no such window")

    with pytest.raises(ValueError, match="no such window"):
        worker.call(fail)
    assert worker.call(lambda: 7) == 7


def test_a_call_inside_a_call_runs_at_once() -> None:
    worker = DeviceThread("test-device")
    assert worker.call(lambda: worker.call(threading.get_ident)) == worker.ident


def test_only_cuda_devices_get_a_thread_one_per_device() -> None:
    assert device_thread(torch.device("cpu")) is None
    first = device_thread(torch.device("cuda", 0))  # no GPU needed: nothing runs on it here
    assert first is not None and device_thread(torch.device("cuda", 0)) is first
    assert device_thread(torch.device("cuda", 1)) is not first
