"""The engine base: load once, place on a device (cuda > mps > cpu), process under a lock, close;
and `check_range`, the check of an engine's numeric settings.

Engines implement `_load`, `_process` and `_close`. Nothing happens at import time: torch is
imported and devices are probed only when an engine is constructed or loaded.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import TYPE_CHECKING, Any

from bridge.errors import BadRequest, Unavailable

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


def pick_device(preference: str = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; a forced device that is absent is an error."""
    import torch

    if preference not in DEVICE_CHOICES:
        raise BadRequest(f"device: expected one of {', '.join(DEVICE_CHOICES)}, got {preference!r}")
    mps = getattr(torch.backends, "mps", None)
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": bool(mps is not None and mps.is_available()),
        "cpu": True,
    }
    if preference == "auto":
        for name in ("cuda", "mps", "cpu"):
            if available[name]:
                return torch.device(name)
    if not available[preference]:
        raise Unavailable(f"device {preference!r} was asked for but is not available on this machine")
    return torch.device(preference)


# PyTorch's MPS convolutions refuse an output with any dimension over 2^16 before macOS 15.1
# ("Output channels > 65536 not supported at the MPS device", aten/src/ATen/native/mps/operations/
# Convolution.mm, for convolutions and, on their input, transposed ones; a 1-D convolution runs as a
# 2-D one there, so its length counts too). Earlier PyTorch ran them and gave wrong output.
MPS_CONV_LIMIT = 1 << 16


def conv_size_limit(device: torch.device) -> int | None:
    """The largest size a dimension of a convolution's output may have on `device`; None where any goes."""
    if device.type != "mps":
        return None
    import torch

    return None if torch.backends.mps.is_macos_or_newer(15, 1) else MPS_CONV_LIMIT


def synchronize(device: torch.device) -> None:
    """Wait until the work queued on `device` is done (CUDA and MPS run asynchronously; the CPU does
    not), so that a timer round it measures the work and not only its queueing."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def release_cached_memory(device: torch.device) -> None:
    """Hand back what PyTorch's allocator keeps cached on `device` once an engine has let go of its
    tensors (CUDA; MPS, whose memory on Apple silicon is the whole machine's, the DAW's too); blocks
    still in use stay. Nothing on the CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def check_range(name: str, value: float | None, low: float, high: float, *, low_open: bool = False,
                unit: str = "s") -> None:
    """A numeric setting within [low, high] (or (low, high] with `low_open`); None passes (the default)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{name}: expected a number, got {value!r}")
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        bracket = "(" if low_open else "["
        raise BadRequest(f"{name}: expected {bracket}{low:g}, {high:g}] {unit}, got {value!r}")


class Engine:
    """Base class for model engines. Thread-safe: one `process` at a time per engine."""

    name = "engine"

    def __init__(self, device: str = "auto") -> None:
        self.device = pick_device(device)
        self._lock = threading.Lock()
        self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        """Load weights once; later calls return at once (the model stays warm).

        A loaded engine returns without taking the lock, which `process` holds for as long as it
        runs: a live stream's status reads the engine's properties while a window computes.
        """
        if self._loaded:
            return
        with self._lock:
            if not self._loaded:
                log.info("%s: loading on %s", self.name, self.device)
                self._load()
                self._loaded = True

    def process(self, *args: Any, **kwargs: Any) -> Any:
        if not self._loaded:
            self.load()
        with self._lock:
            return self._process(*args, **kwargs)

    def close(self) -> None:
        with self._lock:
            if self._loaded:
                self._close()
                self._loaded = False
                release_cached_memory(self.device)

    def _load(self) -> None:
        raise NotImplementedError

    def _process(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def _close(self) -> None:
        """Release what `_load` took; the default drops nothing."""
