"""Audio ring buffers addressed by absolute frame numbers: `FrameRing` and the `FrameFifo` on it.

`FrameRing` is single-producer, single-consumer: the realtime callback and the worker thread of
bridge/stream.py share one without locks: each side only writes its own counter, and a counter is
published (a plain int store, atomic under the GIL) only after the frames it covers have been
copied. `FrameFifo` adds a read position and refuses to overflow or underflow: the output queue of
the streaming separator (engines/separation/streaming.py), used by one thread at a time. Nothing
here allocates audio memory after construction.
"""

from __future__ import annotations

import numpy as np

from bridge.errors import Internal


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


class FrameFifo:
    """A first-in, first-out queue of `(channels, capacity)` float32 frames on a `FrameRing`."""

    def __init__(self, channels: int, capacity: int) -> None:
        self._ring = FrameRing(channels, capacity)
        self._read = 0  # frames [_read, _ring.written) are queued

    @property
    def size(self) -> int:
        """Frames queued."""
        return self._ring.written - self._read

    def clear(self, silence: int = 0) -> None:
        """Empty it, then queue `silence` zero frames (the alignment delay)."""
        self._ring.data[:, :silence] = 0.0
        self._ring.written = silence
        self._read = 0

    def write(self, data: np.ndarray) -> None:
        """Queue a `(channels, n)` block."""
        n = data.shape[-1]
        if self.size + n > self._ring.capacity:
            raise Internal(f"stream FIFO overflow: {self.size} + {n} frames > capacity {self._ring.capacity}")
        self._ring.write_frames_last(data)

    def read(self, out: np.ndarray) -> None:
        """Take the oldest `out.shape[-1]` frames into `out` `(channels, n)`."""
        n = out.shape[-1]
        if n > self.size:
            raise Internal(f"stream FIFO underflow: {n} frames asked, {self.size} queued")
        self._ring.read_at(self._read, out)
        self._read += n
