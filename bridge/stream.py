"""The realtime path: a sounddevice duplex stream, ring buffers, a worker thread, output routing.

    device in ──callback──▶ input ring ──worker: engine.process, effects, gains──▶ output ring
    device out ◀─callback── output ring (wet), or the delayed dry input when the worker is late

The callback only copies between PortAudio's buffers and preallocated rings: it never allocates
audio memory, never calls the model, and takes no lock the worker holds (the one `Event.set` it
does takes a lock that is only ever held for a moment). The worker writes input frames `[a, b)`'s
output at frames `[a + budget, b + budget)`: `budget` is the time the worker has to compute.
When it is late anyway, the callback plays the dry input delayed by the same latency, with short
crossfades in and out, and the hop is counted.

The compute budget. A window can run once its lookahead's last frame is in, and that frame
arrives with a whole callback block; the frame's own output may come from that window (the
engine's latency is the least that holds every output frame by the time its input frame is in),
and it is due `budget` frames later, in the callback whose block holds it. Counting from the end
of the block that brought it, the worker has `budget` frames of time only when `budget` is whole
blocks (a frame at the start of a block waits out the rest of the block first). So

    budget = ceil(margin x p99 compute / block) x block          (margin: stream.budget_margin, 1.3)

with the p99 of the warm windows the engine timed at load, or of the last run's hops on this
engine when that is higher (`budget_source` says which). Frames that arrive while a window computes
queue in the input ring and cost next to nothing once it is done; the frames *before* the one that
completes a window are fed to the engine on their own first, so their output (already computed)
never waits on the model.

The budget is fixed for the life of a stream. Changing it while running would move every later
frame by the change, which is a glitch (a gap or a repeat), and it would make the round trip the
DAW compensates for wrong; so the stream keeps measuring (`compute_ms_p99`, `slack_ms_min`), warns in
`stream.status` (`budget_warning`) and the log when the live p99 times the margin outgrows the
budget, and the next `stream.start` takes its budget from that measurement.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bridge.config import StreamConfig
from bridge.errors import BadRequest, BridgeError, Busy, Forbidden, Unavailable
from engines.base import pick_device
from engines.batching import WindowBatchers
from engines.cloud.selfhosted_stream import RemoteStreamingSeparator
from engines.effects import EffectChain
from engines.resample import check_stream_rate
from engines.ringbuffer import FrameRing
from engines.separation.models import HTDEMUCS_RATE
from engines.separation.streaming import StreamingSeparator

if TYPE_CHECKING:
    from bridge.router import Decision

# What a live stream runs: this machine's separator, or one on the self-hosted tier (the same calls).
StreamEngine = StreamingSeparator | RemoteStreamingSeparator

log = logging.getLogger(__name__)

LOCAL = "local"
FADE_MS = 5.0
# While a stream runs, a thread waiting for the GIL asks its holder to let go after this long
# (Python's default is 5 ms, about a whole 256-frame block at 48 kHz): the audio callback needs the
# GIL for a few microseconds per block, and the worker holds it between torch ops for much longer.
GIL_SWITCH_SECONDS = 0.0005
# The budget from the last run's hops is used only when there were at least this many.
MIN_LIVE_HOPS = 8
# Audio-socket clients with a stream each; with the device stream, the most that can batch together.
MAX_AUDIO_SESSIONS = 4


def import_sounddevice() -> Any:
    """Import sounddevice (which initialises PortAudio) without letting libjack launch a server.

    PortAudio's JACK host API would otherwise start a `jackd` of its own when none is running.
    """
    import os

    os.environ.setdefault("JACK_NO_START_SERVER", "1")
    import sounddevice

    return sounddevice


def lower_thread_priority(steps: int) -> int | None:
    """Make the calling thread `steps` nicer than it is; return its nice value now, or None where
    nothing changed (`steps` 0, or an OS without a per-thread nice).

    Linux only: there a nice value belongs to each thread, and the OpenMP threads torch starts for
    a thread that runs the model are created by it and inherit it. So the stream's worker and its
    torch threads yield a core to the audio threads (PortAudio's callback, JACK's, the daemon's
    MIDI port) whenever both want one, which is what keeps callbacks on time when the model's
    threads take every core. On macOS `setpriority` would renice the whole process, audio included,
    and Windows has no such call: both keep the worker as it is.
    """
    if steps <= 0 or not sys.platform.startswith("linux"):
        return None
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + steps))
        return os.getpriority(os.PRIO_PROCESS, tid)
    except OSError as err:  # a sandbox that forbids it: the stream runs, the worker at its old priority
        log.warning("stream: cannot lower the worker thread's priority: %s", err)
        return None


def load_at_worker_priority(engine: Any, steps: int) -> None:
    """`engine.load()` on a thread `steps` nicer (lower_thread_priority), as the stream's worker
    will run: the windows the engine times at load (the hop ladder, the compute budget's p99) then
    cost what they will cost live, where other busy programs take a nicer thread's cores first."""
    def load() -> None:
        lower_thread_priority(steps)
        engine.load()

    # A thread of its own (its torch threads with it), gone when the load is done; errors come back here.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-engine-load") as pool:
        pool.submit(load).result()


def db_to_gain(gain_db: float) -> float:
    return 0.0 if gain_db <= -120.0 else float(10.0 ** (gain_db / 20.0))


@dataclass
class StemControl:
    gain_db: float = 0.0
    mute: bool = False

    @property
    def gain(self) -> float:
        return 0.0 if self.mute else db_to_gain(self.gain_db)


def budget_frames_for(compute_ms: float, margin: float, sample_rate: int, block_size: int) -> int:
    """Whole callback blocks covering `margin` x `compute_ms` (see the module docstring), at least one."""
    needed = margin * compute_ms * sample_rate / 1000.0
    return max(1, math.ceil(needed / block_size)) * block_size


@dataclass
class Counters:
    late_hops: int = 0
    dry_blocks: int = 0
    xruns: int = 0
    xruns_startup: int = 0  # before the first output of the model is due (device and graph start-up)
    input_overflows: int = 0
    output_underflows: int = 0
    callbacks: int = 0
    resyncs: int = 0
    link_losses: int = 0  # a remote tier's connection lost (bridge/stream.py LiveStream._reconnect)


@dataclass
class Layout:
    """Where each output channel comes from: the mix, or one stem's channel."""

    stems: tuple[str, ...]
    channels: int  # engine channels (= input channels)
    routing: str
    mix_channels: list[int] = field(default_factory=list)
    stem_channels: dict[str, list[int]] = field(default_factory=dict)

    @property
    def num_outputs(self) -> int:
        return len(self.mix_channels) + sum(len(c) for c in self.stem_channels.values())

    @classmethod
    def build(cls, stems: tuple[str, ...], channels: int, routing: str) -> Layout:
        layout = cls(stems=stems, channels=channels, routing=routing)
        next_channel = 0
        if routing in ("mix", "both"):
            layout.mix_channels = list(range(channels))
            next_channel = channels
        if routing in ("stems", "both"):
            for stem in stems:
                layout.stem_channels[stem] = list(range(next_channel, next_channel + channels))
                next_channel += channels
        return layout

    def describe(self) -> dict[str, list[int]]:
        out = {"mix": [c + 1 for c in self.mix_channels]} if self.mix_channels else {}
        out.update({stem: [c + 1 for c in chans] for stem, chans in self.stem_channels.items()})
        return out


class LiveStream:
    """One running live-stems stream: device, engine, effects, routing and counters."""

    def __init__(self, settings: StreamConfig, engine: StreamEngine, effects: EffectRack,
                 on_event: Callable[..., None] | None = None,
                 last_run_p99_ms: float = 0.0) -> None:
        self.settings = settings
        self.engine = engine
        self.effects = effects
        self._on_event = on_event
        self.sample_rate = settings.sample_rate
        self.block_size = settings.block_size
        channels = settings.channels
        self.layout = Layout.build(tuple(engine.stems), channels, settings.routing)
        self.controls = {stem: StemControl() for stem in engine.stems}
        for stem, gain_db in settings.gains_db.items():
            self.controls[stem].gain_db = gain_db
        for stem in settings.muted:
            self.controls[stem].mute = True

        hop = int(engine.hop_frames)
        timing = engine.load_timing()
        at_load = float(timing["compute_ms_p99_at_load"])
        self.budget_margin = float(settings.budget_margin)
        if settings.budget_ms is not None:
            self.budget_frames = budget_frames_for(settings.budget_ms, 1.0, self.sample_rate, self.block_size)
            self.budget_source = (f"set in config: {settings.budget_ms:g} ms, rounded up to whole "
                                  f"{self.block_size}-frame blocks")
        else:
            compute_ms = max(at_load, last_run_p99_ms)
            self.budget_frames = budget_frames_for(compute_ms, self.budget_margin, self.sample_rate, self.block_size)
            measured = (f"p99 {at_load:.1f} ms of {timing['load_timing_windows']} windows timed at load"
                        if at_load >= last_run_p99_ms else f"p99 {last_run_p99_ms:.1f} ms of the last run's hops")
            self.budget_source = (f"{self.budget_margin:g} x {measured}, rounded up to whole "
                                  f"{self.block_size}-frame blocks")
        self.latency_frames = int(engine.latency_frames) + self.budget_frames
        self.max_chunk = hop
        max_block = max(self.block_size, 8192)
        capacity = 1 << math.ceil(math.log2(self.latency_frames + 4 * (hop + max_block)))
        n_out = self.layout.num_outputs
        self._in = FrameRing(channels, capacity)
        self._out = FrameRing(n_out, capacity)
        self._out.written = self.budget_frames  # frames [0, budget) are silence, ready to play
        # Worker scratch.
        self._chunk_in = np.zeros((channels, self.max_chunk), dtype=np.float32)
        self._chunk_out = np.zeros((n_out, self.max_chunk), dtype=np.float32)
        self._mix = np.zeros((channels, self.max_chunk), dtype=np.float32)
        self._scaled = np.zeros((channels, self.max_chunk), dtype=np.float32)
        # Callback scratch and the crossfade ramps.
        self._fade = max(1, int(self.sample_rate * FADE_MS / 1000))
        self._ramp_up = np.linspace(0.0, 1.0, self._fade, dtype=np.float32)[:, None]
        self._ramp_down = np.ascontiguousarray(self._ramp_up[::-1])
        self._dry = np.zeros((max_block, channels), dtype=np.float32)
        self._wet_tail = np.zeros((self._fade, n_out), dtype=np.float32)
        self._fade_tmp = np.zeros((self._fade, n_out), dtype=np.float32)
        self._dry_map = [o % channels for o in range(n_out)]

        self.counters = Counters()
        self._played = 0  # frames handed to the device so far (callback-owned)
        self._processed = 0  # input frames the worker has consumed (worker-owned)
        self._was_wet = True
        self._last_late_hop = -1
        self._min_slack_frames: int | None = None  # least lead a window's output had on the callback
        self._budget_warned = False
        self._switch_interval = sys.getswitchinterval()
        self._wake = threading.Event()
        self._stopping = threading.Event()  # set by stop(): ends a wait between reconnects
        self.tier = str(getattr(engine, "tier", "local"))
        self.tier_reason = "stream.tier is local"
        self.link_error: str | None = None
        self._running = False
        self._worker: threading.Thread | None = None
        self._stream: Any = None
        self.device_name = ""
        self.device_latency_seconds = 0.0
        self.started_at = 0.0
        self.worker_error: str | None = None
        self.worker_nice: int | None = None  # set by the worker (lower_thread_priority)

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        sounddevice = import_sounddevice()
        self.engine.reset()
        self.effects.reset()
        # The model and everything else loaded so far lives as long as the stream: out of the
        # collector's sight, a collection the worker's allocations trigger (with the GIL held)
        # scans only what is new, not the tens of thousands of objects torch and demucs hold.
        gc.collect()
        gc.freeze()
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        self._running = True
        self._worker = threading.Thread(target=self._work, name="stream-worker", daemon=True)
        self._worker.start()
        device = self.settings.device
        try:
            self._stream = sounddevice.Stream(
                samplerate=self.sample_rate,
                blocksize=self.block_size,
                device=(device, device),
                channels=(self.settings.channels, self.layout.num_outputs),
                dtype="float32",
                callback=self._callback,
                latency="low",
            )
            self._stream.start()
        except (sounddevice.PortAudioError, ValueError) as err:
            self._running = False
            self._wake.set()
            self._worker.join(timeout=2)
            self._restore_interpreter()
            raise Unavailable(
                f"cannot open audio device {device!r} with {self.settings.channels} in / "
                f"{self.layout.num_outputs} out at {self.sample_rate} Hz: {err}. `flowstate devices` lists devices"
            ) from None
        info = sounddevice.query_devices(self._stream.device[0])
        self.device_name = str(info["name"])
        latency = self._stream.latency
        self.device_latency_seconds = float(latency[0] + latency[1])
        self.started_at = time.monotonic()
        log.info(
            "stream started on %s: %d stems, latency %.1f ms (+ device %.1f ms); compute budget %.1f ms: %s",
            self.device_name, len(self.layout.stems), self.latency_ms, self.device_latency_seconds * 1000,
            self.budget_ms, self.budget_source,
        )

    def stop(self) -> None:
        self._running = False
        self._stopping.set()
        self._wake.set()
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None
        if self._worker is not None:
            self._worker.join(timeout=5)
            self._worker = None
        self._restore_interpreter()
        log.info("stream stopped: %s", self.counters)

    def _restore_interpreter(self) -> None:
        sys.setswitchinterval(self._switch_interval)
        gc.unfreeze()

    @property
    def running(self) -> bool:
        return self._running

    @property
    def latency_ms(self) -> float:
        return 1000.0 * self.latency_frames / self.sample_rate

    @property
    def budget_ms(self) -> float:
        return 1000.0 * self.budget_frames / self.sample_rate

    # -- the realtime callback ---------------------------------------------------------------------

    def _callback(self, indata: np.ndarray, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        counters = self.counters
        counters.callbacks += 1
        if status:
            counters.xruns += 1
            if self._played < self.latency_frames:
                counters.xruns_startup += 1
            if status.input_overflow:
                counters.input_overflows += 1
            if status.output_underflow:
                counters.output_underflows += 1
        self._in.write_interleaved(indata)
        self._wake.set()
        start = self._played
        available = self._out.written - start
        if available >= frames:
            self._out.read_interleaved_at(start, outdata)
            if not self._was_wet:
                self._crossfade_from_dry(outdata, start, frames)
            self._was_wet = True
        else:
            counters.dry_blocks += 1
            hop_index = start // self.max_chunk  # a hop is late once, however many blocks it spans
            if hop_index != self._last_late_hop:
                self._last_late_hop = hop_index
                counters.late_hops += 1
            fade = min(max(available, 0), self._fade, frames) if self._was_wet else 0
            if fade:
                self._out.read_interleaved_at(start, self._wet_tail[:fade])
            self._write_dry(outdata, start)
            if fade:
                tmp = self._fade_tmp[:fade]
                np.multiply(outdata[:fade], self._ramp_up[:fade], out=tmp)
                np.multiply(self._wet_tail[:fade], self._ramp_down[:fade], out=outdata[:fade])
                outdata[:fade] += tmp
            self._was_wet = False
        self._played = start + frames

    def _write_dry(self, outdata: np.ndarray, start: int) -> None:
        """The input as it was `latency_frames` ago, on every output channel."""
        dry = self._dry[: outdata.shape[0]]
        self._in.read_interleaved_at(start - self.latency_frames, dry)
        for out_channel, in_channel in enumerate(self._dry_map):
            outdata[:, out_channel] = dry[:, in_channel]

    def _crossfade_from_dry(self, outdata: np.ndarray, start: int, frames: int) -> None:
        fade = min(self._fade, frames)
        wet = self._wet_tail[:fade]
        wet[:] = outdata[:fade]
        self._write_dry(outdata[:fade], start)
        tmp = self._fade_tmp[:fade]
        np.multiply(wet, self._ramp_up[:fade], out=tmp)
        outdata[:fade] *= self._ramp_down[:fade]
        outdata[:fade] += tmp

    # -- the worker ----------------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            # Before the first window: the torch threads this thread starts inherit it.
            self.worker_nice = lower_thread_priority(self.settings.worker_nice)
            self._work_loop()
        except Exception as err:  # the stream keeps playing dry; status says why
            log.exception("stream worker failed")
            self.worker_error = f"{type(err).__name__}: {err}"

    def _work_loop(self) -> None:
        capacity = self._in.capacity
        while self._running:
            available = self._in.written - self._processed
            if available <= 0:
                self._wake.wait(0.1)
                self._wake.clear()
                continue
            if available > capacity // 2:
                # Hopelessly behind: the input we have not read is about to be overwritten.
                # Jump to the present and restart the engine's history; the callback plays dry.
                self.counters.resyncs += 1
                self._processed = self._in.written - self.max_chunk
                try:
                    self.engine.reset()
                except Unavailable as err:
                    self._reconnect(err)
                self.effects.reset()
                continue
            n = min(available, self.max_chunk)
            until = self.engine.input_frames_to_window()
            if 1 < until <= n:
                n = until - 1  # these go out now; the next chunk starts with the frame that runs the model
            block_in = self._chunk_in[:, :n]
            self._in.read_at(self._processed, block_in)
            try:
                stems = self.engine.process(block_in)
            except Unavailable as err:  # a remote tier's connection: dry until it is back
                self._reconnect(err)
                continue
            block_out = self._chunk_out[:, :n]
            self._route(stems, block_out, n)
            start_out = self._processed + self.budget_frames
            self._out.write_at(start_out, block_out)
            self._out.written = start_out + n
            self._processed += n
            if until <= n:  # a window ran: how far ahead of the callback did its output land?
                slack = start_out - self._played
                if self._min_slack_frames is None or slack < self._min_slack_frames:
                    self._min_slack_frames = slack

    def _reconnect(self, err: Unavailable) -> None:
        """The engine's tier cannot be reached (a remote engine lost its connection). The worker
        writes nothing, so the callback plays the dry input at the same latency; every
        `stream.reconnect_seconds` it tries `engine.reset()` (which connects again), and once that
        works the stream goes on from the present: the input that came meanwhile is skipped, and
        the wet signal returns after the engine's latency, crossfaded from the dry."""
        self.link_error = err.message
        self.counters.link_losses += 1
        log.warning("stream: %s; playing the dry input until it is back", err.message)
        self._publish("stream.error", tier=self.tier, code=err.code, message=err.message)
        while self._running:
            self._stopping.wait(self.settings.reconnect_seconds)
            if not self._running:
                return
            try:
                self.engine.reset()
            except Unavailable as again:
                self.link_error = again.message
                continue
            # Output for input frame i lands at i + budget: from here that is no earlier than what
            # the callback plays next, so nothing stale in the output ring is ever played.
            self._processed = max(self._processed, self._in.written - self.budget_frames)
            self.effects.reset()
            self.link_error = None
            log.info("stream: %s is back; wet from the next hop", self.tier)
            self._publish("stream.reconnected", tier=self.tier)
            return

    def _publish(self, event: str, **data: Any) -> None:
        if self._on_event is not None:
            self._on_event(event, **data)

    def _route(self, stems: np.ndarray, out: np.ndarray, n: int) -> None:
        layout = self.layout
        mix = self._mix[:, :n]
        mix.fill(0.0)
        for index, stem in enumerate(layout.stems):
            audio = self.effects.process_stem(stem, stems[index])
            gain = self.controls[stem].gain
            if stem in layout.stem_channels:
                chans = layout.stem_channels[stem]
                np.multiply(audio, gain, out=out[chans[0] : chans[-1] + 1])
            if gain:
                np.multiply(audio, gain, out=self._scaled[:, :n])
                mix += self._scaled[:, :n]
        if layout.mix_channels:
            mix = self.effects.process_master(mix)
            out[layout.mix_channels[0] : layout.mix_channels[-1] + 1] = mix

    # -- control -------------------------------------------------------------------------------------

    def set_stem(self, stem: str, gain_db: float | None, mute: bool | None) -> dict[str, Any]:
        control = self.controls.get(stem)
        if control is None:
            raise BadRequest(f"stream.set: argument 'stem' expected one of {', '.join(self.controls)}, got {stem!r}")
        if gain_db is not None:
            control.gain_db = gain_db
        if mute is not None:
            control.mute = mute
        return {"stem": stem, "gain_db": control.gain_db, "mute": control.mute}

    def budget_warning(self, live_p99_ms: float, hops: int) -> str | None:
        """Why the next start should take a bigger budget, or None while this one covers the hops."""
        if hops < MIN_LIVE_HOPS or self.budget_margin * live_p99_ms <= self.budget_ms:
            return None
        warning = (f"the compute p99 of this run's hops, {live_p99_ms:.1f} ms, times the margin "
                   f"{self.budget_margin:g} exceeds the compute budget of {self.budget_ms:.1f} ms; hops may be "
                   "late. stream.stop and stream.start take a budget from this run (the latency grows)")
        if not self._budget_warned:
            self._budget_warned = True
            log.warning("stream: %s", warning)
        return warning

    def status(self) -> dict[str, Any]:
        stats = self.engine.stats()
        slack = self._min_slack_frames
        return {
            "running": self._running,
            "device": self.device_name,
            "model": self.settings.model,
            "stems": list(self.layout.stems),
            "sample_rate": self.sample_rate,
            "block_size": self.block_size,
            "latency_frames": self.latency_frames,
            "latency_ms": round(self.latency_ms, 3),
            # A duplex callback writes block k's output as block k's input arrives: one block more.
            "round_trip_frames": self.latency_frames + self.block_size,
            "round_trip_ms": round(1000.0 * (self.latency_frames + self.block_size) / self.sample_rate, 3),
            "device_latency_ms": round(self.device_latency_seconds * 1000, 3),
            "total_latency_ms": round(self.latency_ms + self.device_latency_seconds * 1000, 3),
            "engine_latency_frames": int(self.engine.latency_frames),
            "resampler_delay_frames": stats.get("resampler_delay_frames"),
            "hop_frames": int(self.engine.hop_frames),
            "window_seconds": round(float(self.engine.window_seconds), 4),
            "context_seconds": round(float(self.engine.context_seconds), 4),
            "hop_seconds": round(float(self.engine.hop_seconds), 4),
            "hop_choice": stats.get("hop_choice"),
            # False: even the hop ladder's longest hop measured over stream.auto_hop_load at load.
            "real_time_at_load": stats.get("real_time_at_load"),
            "backend": stats.get("backend"),
            "backend_choice": stats.get("backend_choice"),
            "lookahead_seconds": round(float(self.engine.lookahead_seconds), 4),
            "compute_ms_p50": stats.get("compute_ms_p50"),
            "compute_ms_p99": stats.get("compute_ms_p99"),
            "compute_ms_p99_at_load": stats.get("compute_ms_p99_at_load"),
            "budget_frames": self.budget_frames,
            "budget_ms": round(self.budget_ms, 3),
            "budget_margin": self.budget_margin,
            "budget_source": self.budget_source,
            "worker_nice": self.worker_nice,
            "budget_warning": self.budget_warning(float(stats.get("compute_ms_p99") or 0.0), int(stats.get("hops", 0))),
            "slack_ms_min": None if slack is None else round(1000.0 * slack / self.sample_rate, 3),
            "load": stats.get("load_p50"),
            "load_p99": stats.get("load_p99"),
            "hops": stats.get("hops", 0),
            "batching": stats.get("batching", False),
            "batch_sizes": stats.get("batch_sizes", {}),
            "batch_size_mean": stats.get("batch_size_mean"),
            "forward_ms_p50": stats.get("forward_ms_p50"),
            "late_hops": self.counters.late_hops,
            "dry_blocks": self.counters.dry_blocks,
            "xruns": self.counters.xruns,
            "xruns_startup": self.counters.xruns_startup,
            "resyncs": self.counters.resyncs,
            "routing": self.layout.describe(),
            "controls": {stem: {"gain_db": c.gain_db, "mute": c.mute} for stem, c in self.controls.items()},
            "worker_error": self.worker_error,
            # Where the windows run (stream.tier) and why; a remote tier's connection and its losses.
            "tier": self.tier,
            "tier_reason": self.tier_reason,
            "link": stats.get("link"),
            "link_error": self.link_error,
            "link_losses": self.counters.link_losses,
            "seconds": round(time.monotonic() - self.started_at, 3) if self.started_at else 0.0,
        }


class EffectRack:
    """The master chain and one chain per stem, built from `stream.effects` in config."""

    def __init__(self, master: EffectChain, stems: dict[str, EffectChain]) -> None:
        self.master = master
        self.stems = stems

    @classmethod
    def build(cls, spec: dict[str, Any], stem_names: tuple[str, ...], sample_rate: int, channels: int) -> EffectRack:
        unknown = sorted(set(spec.get("stems", {})) - set(stem_names))
        if unknown:
            raise BadRequest(
                f"stream.effects.stems: unknown stem(s) {unknown}; this model has {', '.join(stem_names)}"
            )
        master = EffectChain.from_spec(spec.get("master", []), sample_rate, num_channels=channels)
        stems = {
            name: EffectChain.from_spec(chain, sample_rate, num_channels=channels)
            for name, chain in spec.get("stems", {}).items()
        }
        return cls(master, stems)

    def chain(self, name: str) -> EffectChain:
        if name == "master":
            return self.master
        if name in self.stems:
            return self.stems[name]
        choices = ", ".join(["master", *self.stems])
        raise BadRequest(f"fx.set: argument 'chain' expected one of {choices}, got {name!r}")

    def process_stem(self, stem: str, audio: np.ndarray) -> np.ndarray:
        chain = self.stems.get(stem)
        return audio if chain is None else chain.process(audio)

    def process_master(self, audio: np.ndarray) -> np.ndarray:
        return self.master.process(audio)

    def reset(self) -> None:
        for chain in (self.master, *self.stems.values()):
            chain.reset()

    def describe(self) -> dict[str, Any]:
        return {"master": self.master.describe(), **{name: c.describe() for name, c in self.stems.items()}}


class StreamManager:
    """Owns at most one live stream and keeps its engine warm between starts.

    It also owns the window batchers (engines/batching.py) that the device stream's engine and the
    audio socket's engines share, when `stream.batch_streams` says so: streams with the same model,
    device, precision and window then put aligned hops through one forward.
    """

    def __init__(self, base: StreamConfig, models_repo: Path | None, on_event: Callable[..., None] | None = None,
                 spleeter_dir: Path | None = None, selfhosted: tuple[str, str] | None = None) -> None:
        self.base = base
        # (cloud.selfhosted_url, its token) when the self-hosted tier is configured: stream.tier selfhosted.
        self.selfhosted = selfhosted
        # Where `stream.tier: auto` runs, from the local load and its limit: the router's `stream_tier`
        # (bridge/router.py), set once the daemon's router exists.
        self.route: Callable[[float, float], Decision] | None = None
        self.batchers = WindowBatchers(gather_seconds=base.batch_gather_ms / 1000.0,
                                       max_streams=MAX_AUDIO_SESSIONS + 1)
        self.models_repo = models_repo
        self.spleeter_dir = spleeter_dir
        self._on_event = on_event
        self._engines: dict[tuple[Any, ...], StreamingSeparator] = {}
        self._lock = threading.Lock()
        self.stream: LiveStream | None = None
        self._last_run: tuple[StreamEngine, float] | None = None  # (engine, its last stream's compute p99 in ms)

    def settings_with(self, overrides: dict[str, Any]) -> StreamConfig:
        from pydantic import ValidationError

        if "effects" in overrides:
            # A VST3 is native code: which plugins load is for config.yaml to say, not the wire.
            raise Forbidden("stream.start: effect chains come from stream.effects in config.yaml, not overrides")
        if "batch_gather_ms" in overrides:
            raise Forbidden("stream.start: stream.batch_gather_ms is shared by every stream; set it in config.yaml, "
                            "not an override")
        if "max_ratio_terms" in overrides:
            # A bound on what a request may allocate is not the request's to raise.
            raise Forbidden("stream.start: stream.max_ratio_terms is a memory bound set in config.yaml, "
                            "not an override")
        try:
            return StreamConfig.model_validate({**self.base.model_dump(), **overrides})
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])} = {e.get('input')!r}: {e['msg']}" for e in err.errors()
            )
            raise BadRequest(f"stream.start: bad overrides: {problems}") from None

    def batching_for(self, settings: StreamConfig) -> bool:
        """Whether engines for these settings batch their windows with other streams'."""
        if settings.batch_streams == "auto":
            try:
                return pick_device(settings.engine_device).type == "cuda"
            except Unavailable:  # a device asked for and absent: the engine's load says so, per request
                return False
        return settings.batch_streams == "on"

    def new_engine(self, settings: StreamConfig) -> StreamingSeparator:
        """A loaded streaming separator for these settings (blocking: loads the model)."""
        engine = StreamingSeparator(
            settings.model,
            repo=self.models_repo,
            spleeter_dir=self.spleeter_dir,
            device=settings.engine_device,
            sample_rate=settings.sample_rate,
            channels=settings.channels,
            context_seconds=settings.context_seconds,
            hop_seconds=settings.hop_seconds,
            auto_hop_load=settings.auto_hop_load,
            lookahead_seconds=settings.lookahead_seconds,
            crossfade_ms=settings.crossfade_ms,
            precision=settings.precision,
            threads=settings.threads,
            max_ratio_terms=settings.max_ratio_terms,
            batching=self.batchers if self.batching_for(settings) else None,
            backend=settings.backend,
        )
        load_at_worker_priority(engine, settings.worker_nice)
        return engine

    @staticmethod
    def engine_key(settings: StreamConfig) -> tuple[Any, ...]:
        """The settings an engine is built from: engines with the same key are interchangeable."""
        return (
            settings.model, settings.engine_device, settings.sample_rate, settings.channels,
            settings.context_seconds, settings.hop_seconds, settings.auto_hop_load, settings.lookahead_seconds,
            settings.crossfade_ms, settings.precision, settings.threads, settings.batch_streams, settings.backend,
        )

    def engine_for(self, settings: StreamConfig) -> StreamingSeparator:
        """The live stream's engine, kept warm while the settings stay the same."""
        key = self.engine_key(settings)
        engine = self._engines.get(key)
        if engine is None:
            for old in self._engines.values():
                old.close()
            self._engines.clear()  # keep one warm engine, not every setting ever tried
            engine = self.new_engine(settings)
            self._engines[key] = engine
        return engine

    def start(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Blocking: load (or reuse) the engine, open the device, start. Run off the event loop."""
        with self._lock:
            if self.stream is not None and self.stream.running:
                raise Busy("stream.start: a stream is already running; stream.stop it first")
            settings = self.settings_with(overrides)
            engine, reason = self.engine_on_tier(settings)
            unknown = sorted((set(settings.gains_db) | set(settings.muted)) - set(engine.stems))
            if unknown:
                raise BadRequest(f"stream.start: unknown stem(s) {unknown}; "
                                 f"{settings.model} has {', '.join(engine.stems)}")
            effects = EffectRack.build(
                settings.effects.model_dump(), tuple(engine.stems), settings.sample_rate, settings.channels
            )
            last_run_p99_ms = self._last_run[1] if self._last_run is not None and self._last_run[0] is engine else 0.0
            stream = LiveStream(settings, engine, effects, self._on_event, last_run_p99_ms=last_run_p99_ms)
            stream.tier_reason = reason
            try:
                stream.start()
            except BaseException:
                if stream.tier != LOCAL:
                    engine.close()  # its connection holds one of the server's streams
                raise
            self.stream = stream
            return stream.status()

    def engine_on_tier(self, settings: StreamConfig) -> tuple[StreamEngine, str]:
        """The loaded engine for `settings.tier` and why it runs there (blocking: loads or connects)."""
        if settings.tier == LOCAL:
            return self.engine_for(settings), "stream.tier is local"
        if settings.tier == "selfhosted":
            return self.remote_engine(settings), "stream.tier is selfhosted"
        local = self.engine_for(settings)
        load = float(local.load_timing()["compute_ms_p99_at_load"]) / (1000.0 * float(local.hop_seconds))
        if self.route is None:
            return local, "stream.tier is auto, but the router is not running: local"
        decision = self.route(load, settings.max_local_load)
        if decision.tier == LOCAL:
            return local, decision.reason
        try:
            return self.remote_engine(settings), decision.reason
        except BridgeError as err:
            log.warning("stream: %s, but it failed: %s; running locally", decision.reason, err.message)
            return local, f"{decision.reason}, but it failed ({err.message}): local"

    def remote_engine(self, settings: StreamConfig) -> RemoteStreamingSeparator:
        """A connected streaming engine on the self-hosted tier (blocking: connects, times windows)."""
        if self.selfhosted is None:
            raise Unavailable("stream.tier selfhosted: no self-hosted tier is configured; set cloud.selfhosted_url "
                              "and cloud.server_token (FLOWSTATE_SERVER_TOKEN) to your `flowstate serve`")
        url, token = self.selfhosted
        sent = {"model": settings.model, "sample_rate": settings.sample_rate, "channels": settings.channels,
                "crossfade_ms": settings.crossfade_ms}
        # Unset window settings are the server's defaults (on a GPU, shorter hops than a CPU's).
        sent.update({key: value for key in ("context_seconds", "hop_seconds", "lookahead_seconds")
                     if (value := getattr(settings, key)) is not None})
        engine = RemoteStreamingSeparator(url, token, sent, timeout_seconds=settings.remote_timeout_seconds)
        engine.load()
        return engine

    def stop(self) -> dict[str, Any]:
        with self._lock:
            if self.stream is None or not self.stream.running:
                return {"running": False}
            self.stream.stop()
            status = self.stream.status()
            if self.stream.tier != LOCAL:
                self.stream.engine.close()  # one connection per stream: the server's slot is free again
            elif status["hops"] >= MIN_LIVE_HOPS:
                self._last_run = (self.stream.engine, float(status["compute_ms_p99"]))
            return status

    def running_stream(self, command: str) -> LiveStream:
        stream = self.stream
        if stream is None or not stream.running:
            raise Unavailable(f"{command}: no stream is running; stream.start one first")
        return stream

    def close(self) -> None:
        self.stop()
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()


@dataclass
class _Session:
    engine: StreamingSeparator
    sample_rate: int
    channels: int
    next_seq: int = 0
    last_used: float = 0.0
    busy: bool = False  # a block is in its engine: not to be evicted (closing would reload it)


class AudioSessions:
    """Streaming state per ZeroMQ audio client; each client gets its own engine history.

    Thread-safe: with batching (`concurrent`), the audio socket answers each client on a thread of
    its own (bridge/transports/audio.py), so that clients' windows can share forwards; a client's
    own blocks still come one at a time, in order.
    """

    def __init__(self, manager: StreamManager, max_sessions: int = MAX_AUDIO_SESSIONS) -> None:
        self._manager = manager
        self._max_sessions = max_sessions
        self._sessions: dict[bytes, _Session] = {}
        self._lock = threading.Lock()  # the sessions dict; an engine's own lock serialises its audio

    @property
    def concurrent(self) -> bool:
        """Whether clients should be served at once: their engines batch (`stream.batch_streams`)."""
        return self._manager.batching_for(self._manager.base)

    @property
    def max_sessions(self) -> int:
        return self._max_sessions

    def process(self, identity: bytes, seq: int, sample_rate: int,
                block: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        # Before any engine exists: a rate the streaming resampler cannot hold is refused here.
        check_stream_rate(sample_rate, HTDEMUCS_RATE, self._manager.base.max_ratio_terms,
                          what="audio socket: header 'sample_rate'", key="stream.max_ratio_terms")
        channels = block.shape[0]
        with self._lock:
            session = self._sessions.get(identity)
            if seq == 0:
                if session is None or (session.sample_rate, session.channels) != (sample_rate, channels):
                    session = self._open(identity, sample_rate, channels)
                else:
                    session.engine.reset()
                session.next_seq = 0
            elif session is None:
                raise BadRequest(f"audio block seq {seq} without a session: start a stream with seq 0")
            elif seq != session.next_seq:
                raise BadRequest(f"sequence gap: expected seq {session.next_seq}, got {seq}; send seq 0 to restart")
            elif (sample_rate, channels) != (session.sample_rate, session.channels):
                raise BadRequest(
                    f"block is {channels} ch at {sample_rate} Hz but this stream is {session.channels} ch at "
                    f"{session.sample_rate} Hz; send seq 0 to restart with new settings"
                )
            session.last_used = time.monotonic()
            session.busy = True
        try:
            stems = session.engine.process(block)  # outside the lock: other clients' blocks go on meanwhile
            info = {"stems": list(session.engine.stems), "latency_frames": int(session.engine.latency_frames),
                    "sample_rate": sample_rate}
        finally:
            with self._lock:
                session.busy = False
        session.next_seq = seq + 1  # one client's blocks come one at a time (the audio socket pins it)
        return stems, info

    def stats(self, identity: bytes) -> dict[str, Any] | None:
        """The engine stats of one client's stream (batch sizes included), or None without one."""
        with self._lock:
            session = self._sessions.get(identity)
        return None if session is None else session.engine.stats()

    def _open(self, identity: bytes, sample_rate: int, channels: int) -> _Session:
        previous = self._sessions.pop(identity, None)  # this client's stream at another rate or channels
        if previous is not None:
            previous.engine.close()
        if len(self._sessions) >= self._max_sessions:
            idle = [key for key, session in self._sessions.items() if not session.busy]
            if not idle:
                raise Busy(f"audio socket: all {self._max_sessions} audio sessions are processing a block; "
                           "send seq 0 again when one is done")
            oldest = min(idle, key=lambda key: self._sessions[key].last_used)
            self._sessions.pop(oldest).engine.close()
        settings = self._manager.settings_with({"sample_rate": sample_rate, "channels": channels})
        engine = self._manager.new_engine(settings)
        session = _Session(engine=engine, sample_rate=sample_rate, channels=channels, last_used=time.monotonic())
        self._sessions[identity] = session
        return session

    def close(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            session.engine.close()
