"""Several live streams' windows through one forward: batching for GPUs.

On a GPU one HTDemucs window costs a few milliseconds and leaves most of the device idle, so the
audio socket's clients and the device stream, each with its own `StreamingSeparator`, can share
forwards: a stream whose window is full hands it to the `WindowBatcher` of its (model, device,
precision, window length) and waits; one of the waiting streams (the leader) stacks every window
handed in, runs its own copy of the model once on the batch, and gives each stream its row back.
Each engine then does its own overlap-add, so a stream's output and its exact latency are what
they would be alone: batching changes compute time only (the model treats each row on its own:
HTDemucs normalises, convolves and attends within one item of a batch).

When a batch runs:
* at once when no other member is expected: a lone stream never waits;
* when every member expected has handed its window in, or the gather period after the first
  window has passed (`gather_seconds`, a few ms: about one device block, so hops that align
  within a block share a forward);
* windows handed in while a batch computes wait for it and go together in the next one, which
  also waits up to the gather period for the members the finished batch just served: under load,
  which is when it matters, streams batch whatever their phase (without that wait, two streams
  that are behind take turns forever, each window waiting out the other's forward).
A member is expected when it joined, handed a window in or got one back within `expect_hops` of its
hops: a stream that stops feeding drops out after that, and one that leaves (its engine closes)
drops out at once, waking whoever waits, so a stream that ends never holds the others up for longer
than the gather period.

Nothing here imports torch at import time; `run` takes the window tensor and the forward to call.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import BadRequest, Internal

GATHER_SECONDS = 0.003  # about one 256-frame device block at 48 kHz (5.3 ms), less the scheduling
EXPECT_HOPS = 1.5  # a member that handed nothing in for this many of its hops is not waited for
SAFETY_WAIT_SECONDS = 0.5  # a waiter re-checks at least this often (a lost wake-up costs this, not a hang)


@dataclass
class BatchResult:
    """What `WindowBatcher.run` gives a member back: its rows of each output, the batch's size,
    the batched forward's time and the time spent waiting before it started."""

    outputs: list[Any]
    batch_size: int
    forward_ms: float
    wait_ms: float


@dataclass
class _Slot:
    member: int
    window: Any
    submitted: float
    done: bool = False
    result: BatchResult | None = None
    error: BaseException | None = None


@dataclass
class _Member:
    hop_seconds: float
    last_seen: float
    pending: bool = False


@dataclass
class _Counts:
    batches: int = 0
    windows: int = 0
    sizes: dict[int, int] = field(default_factory=dict)


class WindowBatcher:
    """Gathers the windows of the streams that share one model, device, precision and window."""

    def __init__(self, key: Hashable, gather_seconds: float = GATHER_SECONDS, expect_hops: float = EXPECT_HOPS) -> None:
        if not 0.0 <= gather_seconds <= 3600.0:
            raise BadRequest(f"gather_seconds: expected [0, 3600] s, got {gather_seconds!r}")
        if not expect_hops > 0.0:
            raise BadRequest(f"expect_hops: expected > 0, got {expect_hops!r}")
        self.key = key
        self.gather_seconds = float(gather_seconds)
        self.expect_hops = float(expect_hops)
        self._cond = threading.Condition()
        self._members: dict[int, _Member] = {}
        self._ids = itertools.count(1)
        self._pending: list[_Slot] = []
        self._busy = False
        self._free_since = 0.0  # when the last batch finished: the gather period counts from then too
        self._waiting = 0
        self._counts = _Counts()

    # ---- membership ----------------------------------------------------------------------

    def join(self, hop_seconds: float) -> int:
        """Register a stream whose hops last `hop_seconds`; returns its member id for `run`/`leave`."""
        with self._cond:
            member = next(self._ids)
            self._members[member] = _Member(hop_seconds=float(hop_seconds), last_seen=time.perf_counter())
            return member

    def leave(self, member: int) -> None:
        """Unregister (an engine closing); whoever waits for it stops waiting."""
        with self._cond:
            self._members.pop(member, None)
            self._cond.notify_all()

    @property
    def members(self) -> int:
        with self._cond:
            return len(self._members)

    @property
    def waiting(self) -> int:
        """Members inside `run` right now (waiting for a batch or computing one)."""
        with self._cond:
            return self._waiting

    def counts(self) -> dict[str, Any]:
        """Batches run, windows through them, and how many batches had each size."""
        with self._cond:
            counts = self._counts
            return {"batches": counts.batches, "windows": counts.windows, "sizes": dict(sorted(counts.sizes.items()))}

    # ---- the batch -----------------------------------------------------------------------

    def run(self, member: int, window: Any, forward: Callable[[Any], list[Any]]) -> BatchResult:
        """Hand in `window` (a `(1, channels, frames)` tensor) and wait for its outputs.

        `forward(batch)` takes the stacked `(n, channels, frames)` windows and returns a list of
        tensors whose first axis is the batch (one per model of a bag); the member that leads a
        batch calls its own `forward`, which must compute what every member's would. Returns this
        member's rows (`[k:k+1]` of each). An error in a batched forward reaches every member of
        that batch: the leader gets it as raised, the others as `Internal` naming it.
        """
        import torch

        submitted = time.perf_counter()
        slot = _Slot(member, window, submitted)
        with self._cond:
            if member not in self._members:
                raise Internal(f"window batcher {self.key!r}: member {member} has left; join again first")
            state = self._members[member]
            state.last_seen, state.pending = submitted, True
            self._pending.append(slot)
            self._waiting += 1
            self._cond.notify_all()  # a leader waiting for this member may go now
            try:
                batch = self._wait_to_lead(slot)
            except BaseException:
                self._drop(slot)
                raise
        if batch is None:  # another member ran this window
            return self._finish(slot)
        started = time.perf_counter()
        error: BaseException | None = None
        outputs: list[Any] = []
        try:
            stacked = batch[0].window if len(batch) == 1 else torch.cat([s.window for s in batch], dim=0)
            outputs = list(forward(stacked))
        except BaseException as err:  # noqa: BLE001 - handed to every member of the batch, then raised here
            error = err
        finished = time.perf_counter()
        forward_ms = 1000.0 * (finished - started)
        with self._cond:
            for index, waiting in enumerate(batch):
                waiting.done = True
                if error is not None:
                    waiting.error = error
                else:
                    waiting.result = BatchResult([out[index:index + 1] for out in outputs], len(batch), forward_ms,
                                                 1000.0 * (started - waiting.submitted))
                member_state = self._members.get(waiting.member)
                if member_state is not None:
                    member_state.pending = False
                    state.last_seen = finished  # served: its next window may come at once (catching up)
            self._busy = False
            self._free_since = finished
            self._counts.batches += 1
            self._counts.windows += len(batch)
            self._counts.sizes[len(batch)] = self._counts.sizes.get(len(batch), 0) + 1
            self._cond.notify_all()
        return self._finish(slot, leader=True)

    def _wait_to_lead(self, slot: _Slot) -> list[_Slot] | None:
        """Under the lock: wait until `slot` is done (None) or this thread leads a batch (its slots)."""
        while not slot.done:
            if not self._busy and self._pending:
                now = time.perf_counter()
                deadline = max(self._pending[0].submitted, self._free_since) + self.gather_seconds
                if now >= deadline or not self._expected(now):
                    batch, self._pending = self._pending, []
                    self._busy = True
                    return batch
                self._cond.wait(min(deadline - now, SAFETY_WAIT_SECONDS))
            else:
                self._cond.wait(SAFETY_WAIT_SECONDS)
        return None

    def _expected(self, now: float) -> bool:
        """Whether a member that has not handed its window in yet is likely to soon."""
        return any(not m.pending and now - m.last_seen < self.expect_hops * m.hop_seconds
                   for m in self._members.values())

    def _drop(self, slot: _Slot) -> None:
        """Under the lock: take back a slot whose thread stopped waiting (interrupted)."""
        if slot in self._pending:
            self._pending.remove(slot)
        state = self._members.get(slot.member)
        if state is not None:
            state.pending = False
        self._waiting -= 1
        self._cond.notify_all()

    def _finish(self, slot: _Slot, leader: bool = False) -> BatchResult:
        with self._cond:
            self._waiting -= 1
        if slot.error is not None:
            if leader:
                raise slot.error
            raise Internal(f"window batcher {self.key!r}: the batched forward this window was in failed "
                           f"({type(slot.error).__name__}: {slot.error})") from slot.error
        if slot.result is None:
            raise Internal(f"window batcher {self.key!r}: a batch finished without a result for member {slot.member}")
        return slot.result


class WindowBatchers:
    """The process's batchers, one per key: (model, repo, device, precision, window frames).

    Owned by the composition root (bridge/stream.py) and handed to every `StreamingSeparator` that
    may batch; `max_streams` is how many streams can share one (the size the engines time their
    window at load, so that a stream's compute budget covers a full batch).
    """

    def __init__(self, gather_seconds: float = GATHER_SECONDS, max_streams: int = 5,
                 expect_hops: float = EXPECT_HOPS) -> None:
        if isinstance(max_streams, bool) or not isinstance(max_streams, int) or not 1 <= max_streams <= 64:
            raise BadRequest(f"max_streams: expected an integer in [1, 64], got {max_streams!r}")
        self.gather_seconds = float(gather_seconds)
        self.max_streams = max_streams
        self.expect_hops = float(expect_hops)
        self._lock = threading.Lock()
        self._batchers: dict[Hashable, WindowBatcher] = {}

    def batcher(self, key: Hashable) -> WindowBatcher:
        with self._lock:
            found = self._batchers.get(key)
            if found is None:
                found = self._batchers[key] = WindowBatcher(key, self.gather_seconds, self.expect_hops)
            return found

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            batchers = list(self._batchers.values())
        return [{"key": repr(b.key), "members": b.members, **b.counts()} for b in batchers]
