"""A single-producer, single-consumer audio ring buffer addressed by absolute frame numbers.

The realtime callback and the worker thread share these without locks: each side only writes
its own counter, and a counter is published (a plain int store, atomic under the GIL) only after
the frames it covers have been copied. Nothing here allocates audio memory after construction.
"""

from __future__ import annotations

import numpy as np


class FrameRing:
    """`(channels, capacity)` float32 frames; frame `n` lives at column `n % capacity`."""

    def __init__(self, channels: int, capacity: int) -> None:
        if channels < 1 or capacity < 1:
            raise ValueError(f"FrameRing needs channels >= 1 and capacity >= 1, got {channels}, {capacity}")
        self.channels = channels
        self.capacity = capacity
        self.data = np.zeros((channels, capacity), dtype=np.float32)
        # Frames [0, written) have been stored; the producer advances it after copying.
        self.written = 0

    def write_at(self, start: int, block: np.ndarray) -> None:
        """Copy `block` (channels, n), frames-last, to absolute frames [start, start + n)."""
        n = block.shape[-1]
        offset = start % self.capacity
        first = min(n, self.capacity - offset)
        self.data[:, offset : offset + first] = block[:, :first]
        if first < n:
            self.data[:, : n - first] = block[:, first:]

    def write_frames_last(self, block: np.ndarray) -> None:
        """Append a (channels, n) block and publish it."""
        self.write_at(self.written, block)
        self.written += block.shape[-1]

    def write_interleaved(self, block: np.ndarray) -> None:
        """Append a (n, channels) block, as PortAudio hands it over, and publish it."""
        self.write_at(self.written, block.T)
        self.written += block.shape[0]

    def read_at(self, start: int, out: np.ndarray) -> None:
        """Copy absolute frames [start, start + n) into `out` (channels, n), frames-last."""
        n = out.shape[-1]
        offset = start % self.capacity
        first = min(n, self.capacity - offset)
        out[:, :first] = self.data[:, offset : offset + first]
        if first < n:
            out[:, first:] = self.data[:, : n - first]

    def read_interleaved_at(self, start: int, out: np.ndarray) -> None:
        """Copy absolute frames [start, start + n) into `out` shaped (n, channels)."""
        self.read_at(start, out.T)
