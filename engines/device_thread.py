"""One thread per CUDA device runs every live model call on that device.

PyTorch keeps cuDNN's execution plans in a thread-local cache (aten/src/ATen/native/cudnn/
Conv_v8.cpp: `thread_local BenchmarkCache<...> benchmark_cache`, because plans are not
guaranteed thread-safe), so a model warmed up on the thread that loaded it is cold again on the
thread that streams: measured on an H200 (bench/stream.py --device cuda --streams, 2026-12-04),
the released HTDemucs's first live window took 195 ms against 29 ms warm (540 ms in float16), and
with batching each stream thread paid it again for every batch size it first led (a p99 of
366-396 ms). Several threads launching one launch-bound model also contend for the GIL (eight
unbatched streams: 281 ms p50 per window, 30 ms alone).

So the streaming engine hands each CUDA forward (its warm-up at load, its timing, its live and
batched windows) to the device's `DeviceThread`: one thread, whose caches the warm-up fills,
launching one forward at a time as the GPU runs them anyway. The hand-off costs a queue put and
a wake-up per window: 49 us for an empty call on the 2-core CI machine, against 20-30 ms a
window. CPU engines keep calling on the caller's thread: there a new thread's first OpenVINO
window showed no such penalty (an in-process check, 2026-12-04), and the intra-op pools do the
threading.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class DeviceThread:
    """A single worker thread that runs the calls handed to it, in order, one at a time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.ident = self._executor.submit(threading.get_ident).result()

    def call(self, fn: Callable[[], T]) -> T:
        """`fn()` on this thread; returns its result or raises what it raised. A call from this
        thread itself runs at once (a call inside a call would otherwise wait for itself)."""
        if threading.get_ident() == self.ident:
            return fn()
        return self._executor.submit(fn).result()


_THREADS: dict[str, DeviceThread] = {}
_LOCK = threading.Lock()


def device_thread(device: Any) -> DeviceThread | None:
    """The thread for `device` (a `torch.device`) when it is a CUDA device, else None (call directly)."""
    if getattr(device, "type", None) != "cuda":
        return None
    if device.index is None:
        import torch

        key = f"cuda:{torch.cuda.current_device()}"
    else:
        key = str(device)
    with _LOCK:
        found = _THREADS.get(key)
        if found is None:
            found = _THREADS[key] = DeviceThread(f"flowstate-{key.replace(':', '')}")
        return found
