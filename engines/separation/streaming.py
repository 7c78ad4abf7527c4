"""Live stem separation: HTDemucs run on short overlapping windows of a stream.

The stream is cut into hops aligned to absolute sample positions from the start (or the last
`reset`). Each hop is separated inside a window that adds left context and lookahead:

    window k = [k*hop - context, (k+1)*hop + lookahead)      (model rate, zeros before 0)

and the model's output for `[k*hop, (k+1)*hop + crossfade)` is kept. Consecutive hops are joined by
a linear crossfade placed just *after* each hop boundary, so it reads from the previous window's
lookahead and costs no extra latency (the idea of demucs `apply.py`'s normalised overlap-add, with
weights that already sum to one). No random shifts: the output is a deterministic function of the
input samples, whatever block sizes they arrive in.

The device runs at `sample_rate` (48 kHz); the model at its own rate (44.1 kHz). Two streaming
polyphase windowed-sinc resamplers (`engines.resample.StreamingResampler`) convert in and out; an
output FIFO (`engines.ringbuffer.FrameFifo`), pre-filled with silence, makes the total delay exactly
`latency_frames` for every call. Models load through `engines.separation.models`.

Nothing heavy happens at import: torch and demucs are imported when a model is loaded.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from bridge.errors import BadRequest
from engines.base import Engine, check_range, conv_size_limit, synchronize
from engines.device_thread import DeviceThread, device_thread
from engines.inference import ConversionCache, check_backend, choose_backend, openvino_builds
from engines.openunmix import is_openunmix
from engines.resample import MAX_RATIO_TERMS, PIECE_FRAMES, StreamingResampler, stream_rate_problem
from engines.ringbuffer import FrameFifo
from engines.separation.models import HTDEMUCS_RATE, MODEL_EXAMPLES, htdemucs_longest_frames, load_model
from engines.spleeter import is_spleeter

if TYPE_CHECKING:
    import torch
    from demucs.apply import BagOfModels

    from engines.batching import WindowBatcher, WindowBatchers

log = logging.getLogger(__name__)
T = TypeVar("T")

# (context, hop, lookahead) in seconds; each becomes a multiple of 1024 frames at 44.1 kHz.
# CPU: the hop is what the compute allows: a window of 0.5 + 0.25 + 0.25 s (45056 frames) cost
# 0.13-0.16 s on OpenVINO on the shared 2-core AVX2 CPU (0.25-0.45 s in torch, where the hop
# ladder then takes 0.5 s or more). The lookahead is the least the quality table allows
# (bench/stream_quality.py, README "Quality: what a setting costs"): 0.1 s streams within 0.03 dB
# of offline, as 0.25 s does, for 163 ms less latency and a 0.86 s window (37888 frames).
# CUDA: a window of the released architecture cost 19-29 ms on an H200 (launch-bound; README, "On
# a GPU"), so the hop shrinks to 4096 frames (0.093 s: load 0.31 at p99, 0.75 with eight streams
# batched) and the lookahead to the ~0.1 s the STFT's reflect padding needs; the context stays
# 0.5 s, as on CPU (the window's normalisation and attention see enough signal, and on a GPU a
# longer window costs next to nothing). Latency at 48 kHz: 349.1 ms
# on CPU, 186.5 ms on CUDA, plus the device buffer and the compute budget.
CPU_DEFAULTS: tuple[float, float, float] = (0.5, 0.25, 0.1)
CUDA_DEFAULTS: tuple[float, float, float] = (0.5, 0.1, 0.1)
# Spleeter (engines/spleeter.py): its U-Net pads every window to a multiple of 64 STFT frames, and a
# live window is 128 frames (`STREAM_FRAMES`, 127 x 1024 samples, 2.95 s): the context is left out
# (None) and fills the window to that size. Chosen from the quality bench (README, "Quality: what a
# setting costs"; issue 12): on its 10 s mixture the 64-frame window streamed 0.54-0.65 dB under
# offline at these hops and lookaheads, the 128-frame one 0.10-0.24 dB. On torch the hop is the
# shortest that keeps real time on CPU: a 128-frame window cost 60-94 ms on the shared 2-core CPU,
# and 6 x 1024 frames (139 ms) leaves the load at 0.45-0.7, under AUTO_HOP_LOAD (the ladder below takes
# over where it measures slower); the lookahead is the ~0.1 s (4 x 1024) that keeps the STFT frames
# under the hop and its crossfade exact (-0.24 dB). Latency at 48 kHz: 233 ms, plus the device
# buffer and the compute budget.
SPLEETER_CPU_DEFAULTS: tuple[float | None, float, float] = (None, 0.14, 0.1)
# On OpenVINO (engines/inference.py; Spleeter's default backend where it measures faster) the same
# window cost 31-62 ms, which fits a hop of 4 x 1024 frames (93 ms); at that hop 6 x 1024 frames of
# lookahead (139 ms) stream 0.10 dB under offline where 4 lost 0.46: the same 233 ms at 48 kHz as
# torch's default, nearer offline. CUDA (a window costs a few ms) takes the same.
SPLEETER_OPENVINO_DEFAULTS: tuple[float | None, float, float] = (None, 0.1, 0.14)
SPLEETER_CUDA_DEFAULTS: tuple[float | None, float, float] = (None, 0.1, 0.14)
# When the hop is left to the default, the engine times its window at load and, if the default
# hop would leave less than this share of headroom (load = compute / hop above the limit), climbs
# the ladder to the first hop that keeps it: real time first, then the least latency this machine
# allows. The ladder ends at HOP_RANGE's top; past it the engine says it is not real time.
AUTO_HOP_LOAD = 0.8
# What runs the windows (engines/inference.py) when stream.backend is left out: auto for both, i.e.
# OpenVINO where it converts, matches torch within 1e-4 and measures at least 5 % faster at load,
# else torch. Spleeter: its U-Nets took 0.58-0.68x torch's time on the shared 2-core CPU (max abs
# difference 7e-7; converts in 2-3 s). HTDemucs: its window ran 1.15-2.2x faster at every rung of
# the hop ladder, quiet or beside a busy process, timed side by side (`bench/stream.py --backends
# --hops ...`; README, "Inference backend"); it converts once (11-14 s), kept on disk.
DEFAULT_BACKENDS = {"spleeter": "auto", "htdemucs": "auto"}
HOP_LADDER = (0.14, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)  # up to HOP_RANGE's top

MODEL_BLOCK = 1024  # HTDemucs STFT hop: window edges on this grid keep frames aligned across windows
CONTEXT_RANGE = (0.0, 8.0)
HOP_RANGE = (0.0, 4.0)  # exclusive low end; rounded up to at least one 1024-frame block
LOOKAHEAD_RANGE = (0.1, 4.0)
CROSSFADE_RANGE_MS = (0.0, 100.0)
SAMPLE_RATE_RANGE = (8000, 192000)
PRECISIONS = ("float32", "float16", "bfloat16")
STATS_WINDOW = 512  # hops kept for the compute-time percentiles
# Windows timed at load, at the setting finally taken, for the compute p99 that a live stream's
# compute budget starts from (with this few the p99 is close to their maximum: the safe side):
# up to LOAD_TIMING_WINDOWS, but once LOAD_TIMING_SECONDS have gone by, no more than the minimum,
# so a slow machine (or an 8 s window) does not wait a minute for its stream to start. A running
# stream measures on, and its next start takes the running p99 when that is higher.
LOAD_TIMING_WINDOWS = 24
LOAD_TIMING_MIN_WINDOWS = 3
LOAD_TIMING_SECONDS = 5.0


def stream_defaults(model: str, device_type: str, backend: str = "torch") -> tuple[float | None, float, float]:
    """(context, hop, lookahead) in seconds for `model` on a device of this type, its windows run
    by `backend`; a context of None fills the model's live window (Spleeter: `stream_window`, 128
    STFT frames)."""
    if is_spleeter(model):
        if device_type == "cuda":
            return SPLEETER_CUDA_DEFAULTS
        return SPLEETER_OPENVINO_DEFAULTS if backend == "openvino" else SPLEETER_CPU_DEFAULTS
    return CUDA_DEFAULTS if device_type == "cuda" else CPU_DEFAULTS


class StreamingSeparator(Engine):
    """Separate a live stream into stems with HTDemucs (or Spleeter) on chunked windows.

    `process(block)` takes float32 `(channels, n)` audio at `sample_rate`, any n >= 0, and returns
    float32 `(num_stems, channels, n)`: the stems of the input delayed by exactly `latency_frames`.
    It runs the model once for every hop that the block completes (zero or more times).
    """

    name = "separation.stream"
    # Set when a model is configured (_configure, _choose_backend).
    _models: list[torch.nn.Module]
    _runners: Sequence[Callable[[Any], Any]]  # what runs a window: the models, or their OpenVINO builds
    _window_dev: torch.Tensor
    _fill: int  # model frames in the window buffer
    _hop_start: int  # model frame (on the window grid) where the next window's hop begins

    def __init__(self, model: str, *, repo: Path | None = None, spleeter_dir: Path | None = None,
                 device: str = "auto", sample_rate: int = 48000,
                 channels: int = 2, context_seconds: float | None = None, hop_seconds: float | None = None,
                 lookahead_seconds: float | None = None, crossfade_ms: float = 10.0, precision: str = "float32",
                 threads: int | None = None, auto_hop_load: float = AUTO_HOP_LOAD,
                 max_ratio_terms: int = MAX_RATIO_TERMS, batching: WindowBatchers | None = None,
                 backend: str | None = None, conversion_cache: ConversionCache | None = None) -> None:
        if not isinstance(model, str) or not model.strip():
            raise BadRequest(f"model: expected a model name such as {MODEL_EXAMPLES}, got {model!r}")
        if is_openunmix(model):
            raise BadRequest(f"model: {model!r} separates files only (stems.separate); expected a streaming "
                             f"model such as {MODEL_EXAMPLES}")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) \
                or not SAMPLE_RATE_RANGE[0] <= sample_rate <= SAMPLE_RATE_RANGE[1]:
            raise BadRequest(f"sample_rate: expected an integer in [{SAMPLE_RATE_RANGE[0]}, "
                             f"{SAMPLE_RATE_RANGE[1]}] Hz, got {sample_rate!r}")
        # Refused here, before the model loads, against the rate every HTDemucs runs at; the
        # resamplers check again against the loaded model's own rate.
        problem = stream_rate_problem(sample_rate, HTDEMUCS_RATE, max_ratio_terms)
        if problem is not None:
            raise BadRequest(f"sample_rate: {problem}")
        if channels not in (1, 2) or isinstance(channels, bool):
            raise BadRequest(f"channels: expected 1 or 2, got {channels!r}")
        check_range("context_seconds", context_seconds, *CONTEXT_RANGE)
        check_range("hop_seconds", hop_seconds, *HOP_RANGE, low_open=True)
        check_range("lookahead_seconds", lookahead_seconds, *LOOKAHEAD_RANGE)
        check_range("crossfade_ms", crossfade_ms, *CROSSFADE_RANGE_MS, unit="ms")
        if precision not in PRECISIONS:
            raise BadRequest(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or not 1 <= threads <= 256):
            raise BadRequest(f"threads: expected an integer in [1, 256] or null, got {threads!r}")
        if backend is not None:
            check_backend(backend)  # engines/inference.py: auto, torch or openvino
        super().__init__(device)
        if precision == "float16" and self.device.type == "cpu":
            raise BadRequest("precision: 'float16' needs a CUDA device (this engine runs on cpu); "
                             "expected 'float32' or 'bfloat16' on cpu")
        defaults = stream_defaults(model, self.device.type)
        self.model_name = model
        self.repo = repo
        self.spleeter_dir = spleeter_dir
        self.sample_rate = sample_rate
        self.channels = channels
        self.precision = precision
        self.threads = threads
        self.max_ratio_terms = max_ratio_terms
        self.backend_requested = backend if backend is not None else \
            DEFAULT_BACKENDS["spleeter" if is_spleeter(model) else "htdemucs"]
        self._backend_default = backend is None
        self._backend_window = 0  # the window length the runners were built for (OpenVINO: one shape)
        self._conversion_cache = conversion_cache
        # OpenVINO builds for another window length (a climb while running), made in a thread, one
        # at a time: ahead of the climb (prepare_hop), or after it while torch runs the windows.
        self._builds = 0  # bumped by close: a build still running is for this engine no more
        self._building = 0  # the window length being built (0: none)
        self._built: tuple[int, float, list[Any], str | None, float] | None = None  # window, hop, builds, why not, s
        self._awaiting_build = False  # torch runs the windows until the build for them is taken (_take_build)
        self._build_lock = threading.Lock()
        self.backend, self.backend_choice = "torch", "not loaded yet"
        self._requested: tuple[float | None, float, float] = (
            defaults[0] if context_seconds is None else float(context_seconds),
            defaults[1] if hop_seconds is None else float(hop_seconds),
            defaults[2] if lookahead_seconds is None else float(lookahead_seconds),
        )
        self._crossfade_ms = float(crossfade_ms)
        # The hop was left to the default: measure at load whether this machine keeps real time.
        # CUDA's windows cost a few ms (README, "On a GPU"); a CPU's and Apple silicon's (MPS) are measured.
        self._auto_hop = hop_seconds is None and self.device.type != "cuda"
        self._auto_hop_load = float(auto_hop_load)
        self.hop_choice = "set in config" if hop_seconds is not None else f"the {self.device.type} default"
        # Measured by the hop ladder when it runs (CPU, hop left to the default); None otherwise.
        self.real_time_at_load: bool | None = None
        # A stream took a longer hop while running (change_hop): the machine was slower then than
        # the ladder measured, perhaps for a while only; a new stream loads afresh to measure again.
        self.climbed_while_running = False
        self._stats_lock = threading.Lock()
        self._compute_ms = np.zeros(STATS_WINDOW, np.float64)
        self._hops = 0  # behind the compute statistics: from the last reset or change of hop
        self._hops_run = 0  # every window since the load: a stream counts its own from its start
        self._load_compute_ms: list[float] = []  # every window timed at load, at the final setting
        # Batching (engines/batching.py): this engine's windows may share forwards with other
        # streams' of the same model, device, precision and window length.
        self._batching = batching
        self._batcher: WindowBatcher | None = None
        self._member = 0
        self._batch_sizes = np.zeros(STATS_WINDOW, np.int32)
        self._forward_ms = np.zeros(STATS_WINDOW, np.float64)

    # ---- public surface (loads the model on first use) ------------------------------------

    @property
    def stems(self) -> tuple[str, ...]:
        """Stem names in output order, e.g. ('drums', 'bass', 'other', 'vocals')."""
        self.load()
        return self._stems

    @property
    def model_sample_rate(self) -> int:
        self.load()
        return self._model_rate

    @property
    def latency_frames(self) -> int:
        """The exact, constant delay of `process` output behind its input, in frames at `sample_rate`."""
        self.load()
        return self._latency_frames

    @property
    def latency_ms(self) -> float:
        return 1000.0 * self.latency_frames / self.sample_rate

    @property
    def hop_frames(self) -> int:
        """One hop at `sample_rate` (rounded: the hop is exact at the model's rate)."""
        self.load()
        return round(self._hop * self.sample_rate / self._model_rate)

    @property
    def context_seconds(self) -> float:
        self.load()
        return self._context / self._model_rate

    @property
    def hop_seconds(self) -> float:
        self.load()
        return self._hop / self._model_rate

    @property
    def lookahead_seconds(self) -> float:
        self.load()
        return self._lookahead / self._model_rate

    @property
    def window_seconds(self) -> float:
        self.load()
        return self._window / self._model_rate

    @property
    def crossfade_ms(self) -> float:
        self.load()
        return 1000.0 * self._crossfade / self._model_rate

    def reset(self) -> None:
        """Start a new stream: zero history, hops realigned to the next sample, FIFO re-primed."""
        self.load()
        with self._lock:
            self._reset_stream()

    def stats(self) -> dict[str, Any]:
        """Hops behind the statistics (since the last reset or change of hop) and every hop run
        since the load (`hops_run`), compute time per hop (p50/p99 over the last hops), load, latency."""
        self.load()
        with self._stats_lock:
            hops, hops_run = self._hops, self._hops_run
            recent = self._compute_ms[:min(hops, STATS_WINDOW)].copy()
            sizes = self._batch_sizes[:min(hops, STATS_WINDOW)].copy()
            forwards = self._forward_ms[:min(hops, STATS_WINDOW)].copy()
        p50, p99 = (float(np.percentile(recent, 50)), float(np.percentile(recent, 99))) if len(recent) else (0.0, 0.0)
        hop_ms = 1000.0 * self._hop / self._model_rate
        return {
            "hops": hops,
            "hops_run": hops_run,
            "compute_ms_p50": p50,
            "compute_ms_p99": p99,
            "load_p50": p50 / hop_ms,
            "load_p99": p99 / hop_ms,
            "hop_ms": hop_ms,
            "window_ms": 1000.0 * self._window / self._model_rate,
            "latency_frames": self._latency_frames,
            "latency_ms": 1000.0 * self._latency_frames / self.sample_rate,
            "resampler_delay_frames": self.resampler_delay_frames,
            "device": str(self.device),
            "precision": self.precision,
            "hop_choice": self.hop_choice,
            "real_time_at_load": self.real_time_at_load,
            "backend": self.backend,
            "backend_choice": self.backend_choice,
            **self.load_timing(),
            **self._batch_stats(sizes, forwards),
        }

    def recent_compute_ms(self, count: int) -> list[float]:
        """The compute time of each of the last `count` windows (fewer when fewer ran since the
        last reset or hop change), oldest first."""
        with self._stats_lock:
            hops = self._hops
            indices = [i % STATS_WINDOW for i in range(max(0, hops - min(count, STATS_WINDOW)), hops)]
            return [float(self._compute_ms[i]) for i in indices]

    def _batch_stats(self, sizes: np.ndarray, forwards: np.ndarray) -> dict[str, Any]:
        """How this engine's recent hops were batched: off, or sizes, and the batched forwards' time."""
        batcher = self._batcher
        values, counts = np.unique(sizes, return_counts=True)
        return {
            "batching": batcher is not None,
            "batch_members": batcher.members if batcher is not None else 1,
            # Over the hops the percentiles cover: how many hops went in a batch of each size.
            "batch_sizes": {int(v): int(c) for v, c in zip(values, counts, strict=True)},
            "batch_size_mean": float(sizes.mean()) if len(sizes) else 0.0,
            "forward_ms_p50": float(np.percentile(forwards, 50)) if len(forwards) else 0.0,
        }

    @property
    def resampler_delay_frames(self) -> float:
        """Both resamplers' delay, in frames at `sample_rate` (0 when the device runs at the model's rate)."""
        self.load()
        if self._up is None:
            return 0.0
        return self._offset * self.sample_rate / self._model_rate + self._up.delay_frames

    def block_lead_frames(self, block_size: int) -> int:
        """For input fed in device blocks of `block_size` frames from a `reset` (at a block's
        start): the fewest frames of its block that come before the frame completing a window, over
        every window. A device block arrives whole, so a window's input is in with that block; a
        live caller may place every output frame this much earlier without giving any window less
        time (bridge/stream.py).

        At the model's rate each window ends on the 1024-frame grid counted from the first input
        frame (`_reset_stream`, `_frames`), and stays on it when the hop climbs (`change_hop`), so
        its last frame is at least gcd(1024, block) - 1 frames into its block: every frame but
        one of a 512-frame block. Through a resampler (a device at another rate) windows end at
        every place of a block over the pattern: 0.
        """
        self.load()
        return 0 if self._down is not None else math.gcd(MODEL_BLOCK, block_size) - 1

    def load_timing(self) -> dict[str, Any]:
        """The window compute measured at load (warm, at the final setting): p50, p99 and how many."""
        self.load()
        times = self._load_compute_ms
        return {
            "load_timing_windows": len(times),
            "compute_ms_p50_at_load": float(np.percentile(times, 50)) if times else 0.0,
            "compute_ms_p99_at_load": float(np.percentile(times, 99)) if times else 0.0,
        }

    def input_frames_to_window(self) -> int:
        """How many more input frames (at `sample_rate`) complete the next window: the `process`
        call that brings the last of them runs the model; one that stops short of it does not.

        A live caller feeds the frames before that one separately, so that their output (already
        in the FIFO) does not wait for the model.
        """
        self.load()
        with self._lock:
            needed = self._skip + self._window - self._fill  # model-rate samples still missing
            if self._down is None:
                return needed
            return self._down.inputs_needed(self._down.next_output + needed) - self._down.received

    # ---- Engine hooks ---------------------------------------------------------------------

    def _load(self) -> None:
        import torch

        if self.threads is not None:
            torch.set_num_threads(self.threads)  # process-wide: torch has one intra-op pool
        bag = load_model(self.model_name, self.repo, self.spleeter_dir)
        self._configure(bag)
        self._load_compute_ms = []
        if self._auto_hop and self._requested[0] is None:
            # A context that fills the window (Spleeter): its length stays at every hop that fits
            # in it, so the backend chosen at the first setting stays, and sets the default hop.
            hop = stream_defaults(self.model_name, self.device.type, self.backend)[1]
            if hop != self._requested[1]:
                self._requested = (self._requested[0], hop, self._requested[2])
                self._configure(bag)
        if self._auto_hop:
            self._choose_hop(bag)
        # Enough windows for a p99 at the setting taken (the hop ladder's last timing counts too).
        self._load_compute_ms += self._time_windows_ms(LOAD_TIMING_WINDOWS - len(self._load_compute_ms),
                                                       budget_seconds=LOAD_TIMING_SECONDS,
                                                       minimum=LOAD_TIMING_MIN_WINDOWS - len(self._load_compute_ms))
        if self._batching is not None:
            # Streams batch only with the same weights, device, precision and window length.
            key = (self.model_name, str(self.repo), str(self.spleeter_dir), str(self.device), self.precision,
                   self._window)
            self._batcher = self._batching.batcher(key)
            self._member = self._batcher.join(self._hop / self._model_rate)

    def _choose_hop(self, bag: BagOfModels) -> None:
        """Take the first hop of the ladder whose measured load leaves headroom (see AUTO_HOP_LOAD).

        A longer window never costs less, so a rung that the compute just measured would already
        overload (compute / its hop above the limit) is skipped without timing it. When even the
        top rung is over the limit, the stream runs there and says it is not real time
        (`real_time_at_load`, `hop_choice`, a warning)."""
        requested = self._requested[1]
        ladder = [h for h in HOP_LADDER if h > requested + 1e-9 and self._rung_fits(h)]
        limit, kind = self._auto_hop_load, self.device.type
        measured: list[str] = []
        while True:
            hop_ms = 1000.0 * self._hop / self._model_rate
            self._load_compute_ms = self._time_windows_ms(3)
            compute_ms = float(np.median(self._load_compute_ms))
            load = compute_ms / hop_ms
            measured.append(f"{load:.2f} at a {hop_ms:.0f} ms hop")
            loads = f"measured load {', '.join(measured)} (limit {limit:.2f})"
            if load <= limit:
                self.real_time_at_load = True
                on = "" if self.backend == "torch" else f" on {self.backend}"
                self.hop_choice = (f"the {kind} default{on}: {loads}" if len(measured) == 1 else
                                   f"{hop_ms:.0f} ms, the least hop that keeps real time on this {kind}{on}: {loads}")
                log.info("%s: hop %.0f ms, %s", self.name, hop_ms, loads)
                return
            while len(ladder) > 1 and compute_ms / (1000.0 * ladder[0]) > limit:
                ladder.pop(0)  # this window's compute alone overloads that hop: no need to time it
            if not ladder:
                self.real_time_at_load = False
                self.hop_choice = (f"{hop_ms:.0f} ms, NOT real time on this {kind}: the longest hop's window "
                                   f"takes {compute_ms:.0f} ms; {loads}; expect late hops (a faster device, "
                                   f"fewer other processes, or a lighter model such as spleeter:2stems)")
                log.warning("%s: %s", self.name, self.hop_choice)
                return
            bigger = ladder.pop(0)
            log.warning("%s: a %.0f ms hop measured load %.2f on %s (limit %.2f): trying a %.0f ms hop for real "
                        "time; set stream.hop_seconds to choose yourself", self.name, hop_ms, load, self.device,
                        limit, 1000 * bigger)
            self._requested = (self._requested[0], bigger, self._requested[2])
            self._configure(bag)

    def _choose_backend(self) -> None:
        """Eager torch or OpenVINO for the windows of the setting taken (engines/inference.py)."""
        import torch

        self.backend, self._runners, self.backend_choice = choose_backend(
            self.backend_requested, self._models, self._window_dev, device_type=self.device.type,
            precision=self.precision, threads=torch.get_num_threads(),
            batched=self._batching is not None,
            origin=f"the default for {self.model_name}" if self._backend_default else "set in config",
            cache=self._conversion_cache)
        self._backend_window = self._window
        log.info("%s: inference backend %s (%s)", self.name, self.backend, self.backend_choice)

    def _time_windows_ms(self, repeats: int, budget_seconds: float = math.inf, minimum: int = 0) -> list[float]:
        """The time of each of `repeats` full windows through every model of the bag, warm; past
        `budget_seconds`, stop once `minimum` are timed.

        With batching, each is a batch of as many windows as can share a forward
        (`WindowBatchers.max_streams`), plus the gather period: what a hop may cost when every
        stream batches, so that a stream's compute budget covers it."""
        import torch

        times: list[float] = []
        deadline = time.perf_counter() + budget_seconds
        size = self._batching.max_streams if self._batching is not None else 1
        extra_ms = 1000.0 * self._batching.gather_seconds if self._batching is not None else 0.0
        batch = self._window_dev if size == 1 else self._window_dev.repeat(size, 1, 1)

        def time_them() -> None:  # where the live windows will run (the device's thread on CUDA)
            with torch.inference_mode(), self._autocast():
                for _ in range(repeats):
                    if len(times) >= minimum and time.perf_counter() > deadline:
                        break
                    started = time.perf_counter()
                    for run in self._runners:
                        run(batch)
                    synchronize(self.device)  # CUDA and MPS queue the work: time it done
                    times.append(1000.0 * (time.perf_counter() - started) + extra_ms)

        self._on_device(time_them)
        return times

    def _configure(self, bag: BagOfModels) -> None:
        """Windows, buffers, resamplers and the (frozen) models for the requested seconds."""
        import torch

        rate = int(bag.samplerate)
        _, hop_seconds, lookahead_seconds = self._requested
        hop, lookahead = self._frames(hop_seconds, rate, 1), self._frames(lookahead_seconds, rate, 1)
        context = self._context_frames(bag.models, hop, lookahead, rate)
        crossfade = 2 * round(self._crossfade_ms * rate / 2000.0)
        if crossfade > min(hop, lookahead):
            limit = 1000.0 * min(hop, lookahead) / rate
            raise BadRequest(f"crossfade_ms: expected at most {limit:.1f} ms (the hop and the lookahead, "
                             f"{1000 * hop / rate:.1f} and {1000 * lookahead / rate:.1f} ms), "
                             f"got {self._crossfade_ms!r}")
        longest = htdemucs_longest_frames(bag.models, conv_size_limit(self.device))
        if longest is not None and context + hop + lookahead > longest:
            raise BadRequest(f"a window of {(context + hop + lookahead) / rate:.2f} s (context, hop and lookahead) is "
                             f"longer than HTDemucs takes on {self.device} before macOS 15.1 "
                             f"({longest / rate:.2f} s: MPS's convolutions refuse longer ones); shorten "
                             "context_seconds, hop_seconds or lookahead_seconds, update macOS, or set "
                             "stream.engine_device: cpu")
        if int(bag.audio_channels) != 2:
            raise BadRequest(f"model {self.model_name!r}: expected a stereo model, "
                             f"it has {bag.audio_channels} channels")
        device = self.device
        self._models = [sub.to(device) for sub in bag.models]
        weights = torch.tensor(bag.weights, dtype=torch.float32)  # (models, sources)
        totals = weights.sum(dim=0)
        if bool((totals <= 0).any()):
            raise BadRequest(f"model {self.model_name!r}: every source needs a positive total bag weight, "
                             f"got {bag.weights}")
        # Like demucs's apply_model: each model's estimate of source s weighted by w[m, s] / sum_m w[m, s].
        self._weights = None if len(self._models) == 1 else (weights / totals)[:, :, None, None].to(device)
        self._stems = tuple(bag.sources)
        self._model_rate = rate
        self._context, self._hop, self._lookahead, self._crossfade = context, hop, lookahead, crossfade
        self._window = context + hop + lookahead
        self._cuda = device.type == "cuda"
        self._device_thread: DeviceThread | None = device_thread(device)
        num_stems = len(self._stems)
        self._hop_buffers()
        autocast_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(self.precision)
        self._autocast = (lambda: torch.autocast(device.type, dtype=autocast_dtype)) if autocast_dtype \
            else contextlib.nullcontext

        # Resamplers with whole-sample delays. The input one delays the model-rate stream by
        # `_offset` frames; the window grid moves by as much, so windows start on multiples of
        # 1024 frames counted from the first input sample, as they would offline.
        rows_out = num_stems * self.channels
        if self.sample_rate != rate:
            self._down: StreamingResampler | None = StreamingResampler(
                self.sample_rate, rate, self.channels, whole_delay=True, max_terms=self.max_ratio_terms)
            self._up: StreamingResampler | None = StreamingResampler(
                rate, self.sample_rate, rows_out, max_input=hop, whole_delay=True, max_terms=self.max_ratio_terms)
            self._offset = round(self._down.delay_frames)
            resampler_frames = round(self._up.delay_frames)
        else:
            self._down = self._up = None
            self._offset = resampler_frames = 0
        self._fifo_frames = self._alignment_frames(hop)
        self._latency_frames = resampler_frames + self._fifo_frames
        self._fifo = FrameFifo(rows_out, self._fifo_capacity())
        self._reset_stream()
        self._warm_up()
        if self._window != self._backend_window:
            # What runs a window (the models, or their OpenVINO builds, which serve one window
            # length) is chosen for each window length set, so the hop ladder times what will run.
            self._choose_backend()
        log.info("%s: %s on %s, stems %s, window %.3f s (context %.3f, hop %.3f, lookahead %.3f), latency %.1f ms",
                 self.name, self.model_name, device, ",".join(self._stems), self._window / rate, context / rate,
                 hop / rate, lookahead / rate, 1000.0 * self._latency_frames / self.sample_rate)

    def _context_frames(self, models: Iterable[Any], hop: int, lookahead: int, rate: int) -> int:
        """The context (model frames) of a window around `hop` and `lookahead`: the one set, or,
        left out (Spleeter), what fills the model's live window (`stream_window`)."""
        requested = self._requested[0]
        if requested is not None:
            return self._frames(requested, rate, 0)
        return min(model.stream_window(hop + lookahead) for model in models) - hop - lookahead

    def _hop_buffers(self) -> None:
        """The buffers sized by the window and the hop: the window (host, pinned on CUDA, with a
        numpy view), the overlap-add accumulator for [k*hop, (k+1)*hop + crossfade), its fades and
        the finished hop's chunk."""
        import torch

        device, hop, crossfade, num_stems = self.device, self._hop, self._crossfade, len(self._stems)
        self._window_host = torch.zeros((1, 2, self._window), dtype=torch.float32, pin_memory=self._cuda)
        self._window_np = self._window_host.numpy()[0]
        self._window_dev = (torch.zeros((1, 2, self._window), dtype=torch.float32, device=device)
                            if device.type != "cpu" else self._window_host)
        self._acc = torch.zeros((num_stems, 2, hop + crossfade), dtype=torch.float32, device=device)
        ramp = (torch.arange(crossfade, dtype=torch.float32) + 0.5) / max(crossfade, 1)
        fade = torch.ones(hop + crossfade, dtype=torch.float32)
        fade[:crossfade] = ramp
        fade[hop:] = 1.0 - ramp  # fade-in of window k+1 plus fade-out of window k sums to one
        first = fade.clone()
        first[:crossfade] = 1.0  # nothing before the first window to fade from
        self._fade, self._fade_first = fade.to(device), first.to(device)
        self._chunk_host = torch.zeros((num_stems, self.channels, hop), dtype=torch.float32, pin_memory=self._cuda)
        self._chunk_np = self._chunk_host.numpy()

    def _fifo_capacity(self) -> int:
        hop_device = -(-self._hop * self.sample_rate // self._model_rate)
        return self._fifo_frames + 2 * (hop_device + PIECE_FRAMES) + 4096

    # ---- a longer hop while streaming -------------------------------------------------------

    @property
    def auto_hop_load(self) -> float:
        """The most load (window compute / hop) the hop ladder accepts."""
        return self._auto_hop_load

    @property
    def hop_may_change(self) -> bool:
        """Whether the hop may grow while streaming: it was left to the engine (the ladder), and the
        windows run on their own (a batch shares one shape). On OpenVINO, a climb to a window of
        another length runs on a build for it (`prepare_hop`, `change_hop`)."""
        self.load()
        return self._auto_hop and self._batcher is None

    @property
    def can_change_hop(self) -> bool:
        """Whether `change_hop` may run now: `hop_may_change`, a window of this stream has run, and
        no OpenVINO build is being made while torch runs the windows (their times are not the
        stream's: climbing on them took a 0.74 s hop to 4 s in a live run)."""
        return self.hop_may_change and self._stream_hops > 0 and not self._awaiting_build

    def prepare_hop(self, hop_seconds: float) -> float | None:
        """The hop to climb to now when `hop_seconds` is wanted: that one where what runs the
        windows runs its window too (torch, a window of the same length); the hop an OpenVINO build
        is ready for (or was found impossible for), whatever the hop wanted now (a longer hop,
        even a shorter one than wanted, is a step up: the next late windows climb again from there
        with the new build). Otherwise None, having started a build for `hop_seconds`'s window in
        the background if none is being made: the stream stays at its hop, on OpenVINO, for the
        1-2 s the build takes, where eager torch at the new hop would be slower still."""
        self.load()
        if self.backend == "torch":
            return hop_seconds
        window = self._window_for(self._frames(hop_seconds, self._model_rate, 1))
        if window == self._window:
            return hop_seconds
        with self._build_lock:
            built = self._built
        if built is not None and built[0] > self._window:
            return built[1]
        self._start_build(window, hop_seconds)
        return None

    def _start_build(self, window: int, hop_seconds: float) -> None:
        """Build OpenVINO for windows of `window` frames in a thread, unless a build is being made;
        the result waits in `_built`. No probe window: that costs a torch window beside the live
        ones, and the conversion matched at load (every window length of it matched in the tests
        and the bench)."""
        import torch

        with self._build_lock:
            if self._building:
                return
            self._building = window
        generation, models = self._builds, list(self._models)
        example = self._window_dev.new_zeros((*self._window_dev.shape[:-1], window))
        threads, started = torch.get_num_threads(), time.perf_counter()

        def build() -> None:
            runners, problem = openvino_builds(models, example, threads, self._conversion_cache, probe=False)
            with self._build_lock:
                self._building = 0
                if generation == self._builds:
                    self._built = (window, hop_seconds, runners, problem, time.perf_counter() - started)

        log.info("%s: building OpenVINO for a %.0f ms hop's window", self.name, 1000.0 * hop_seconds)
        threading.Thread(target=build, name="flowstate-openvino-build", daemon=True).start()

    def longer_hop(self, compute_ms: float, most_seconds: float) -> float | None:
        """The hop (seconds) to climb to when windows now cost `compute_ms`: the first rung of the
        ladder above this hop, up to `most_seconds`, whose window (its compute scaled by window
        length) would run under the engine's load limit; else the longest rung up to
        `most_seconds`; None when there is none above this hop. (On OpenVINO, the climb to a rung
        whose window has another length waits for a build of it, `prepare_hop`: its estimate is
        OpenVINO's.)"""
        self.load()
        rate = self._model_rate
        rungs = [h for h in HOP_LADDER
                 if self._frames(h, rate, 1) > self._hop and h <= most_seconds + 1e-9 and self._rung_fits(h)]
        for rung in rungs:
            hop = self._frames(rung, rate, 1)
            estimate = compute_ms * self._window_for(hop) / self._window
            if estimate <= self._auto_hop_load * 1000.0 * hop / rate:
                return rung
        return rungs[-1] if rungs else None

    def _rung_fits(self, hop_seconds: float) -> bool:
        """Whether the window at this hop is one the device takes (Apple silicon before macOS 15.1:
        `htdemucs_longest_frames`); the ladder stops below a rung that is not."""
        longest = htdemucs_longest_frames(self._models, conv_size_limit(self.device))
        return longest is None or self._window_for(self._frames(hop_seconds, self._model_rate, 1)) <= longest

    def _window_for(self, hop: int) -> int:
        """The window (model frames) at this hop, the lookahead as it is."""
        return self._context_frames(self._models, hop, self._lookahead, self._model_rate) + hop + self._lookahead

    def change_hop(self, hop_seconds: float, reason: str) -> tuple[int, int]:
        """Go on with a longer hop from the next window, keeping the stream's history; call
        between `process` calls, once `can_change_hop`.

        The next window covers [B - context, B + hop + lookahead) where B is where the last one's
        hop ended: its output joins the last window's over the usual crossfade, so the separated
        signal stays continuous. A longer hop needs a longer head start, so the latency grows by
        `inserted` frames: the output stream gets that many frames of silence after the next
        `ahead` frames (what is already computed), and every frame after them comes `inserted`
        frames later than before. Returns (ahead, inserted), in frames at `sample_rate`. A caller
        that drops the silence and plays the rest `inserted` frames later (bridge/stream.py) has
        a continuous signal at the new latency. The compute statistics restart at the new hop.
        An OpenVINO build serves one window length: where the new window has another, the stream
        goes on in eager torch while OpenVINO builds for it in the background (a reshape and a
        compile of the model's conversion, a second or two), then on the new build.
        """
        self.load()
        with self._lock:
            if not self.can_change_hop:
                raise BadRequest("hop_seconds: this stream's hop cannot change while it runs (it was set in config, "
                                 "batches its windows with other streams', or no window has run yet)")
            rate = self._model_rate
            hop = self._frames(hop_seconds, rate, 1)
            if hop <= self._hop:
                raise BadRequest(f"hop_seconds: expected more than the hop now, {self._hop / rate:.3f} s, "
                                 f"got {hop_seconds!r}")
            old_hop, old_context, old_window = self._hop, self._context, self._window
            old_window_np, fill, old_acc = self._window_np.copy(), self._fill, self._acc
            context = self._context_frames(self._models, hop, self._lookahead, rate)
            start = self._hop_start  # model frame where the next window's hop begins
            self._requested = (self._requested[0], hop_seconds, self._requested[2])
            self._hop, self._context, self._window = hop, context, context + hop + self._lookahead
            build = self._window != self._backend_window and self.backend != "torch"
            if build:  # the OpenVINO build serves one window length
                with self._build_lock:
                    built, self._built = self._built, None
                if built is not None and built[0] == self._window:
                    build = False
                    self._use_build(built, f"openvino, built for the {1000 * hop / rate:.0f} ms hop's window in "
                                           f"{built[4]:.1f} s before the hop climbed to it while running")
                else:  # go on in eager torch, which takes any window, until it is built
                    self.backend_choice = (f"torch since the hop climbed to {1000 * hop / rate:.0f} ms while running, "
                                           f"until {self.backend} has built for the new window (the build serves one "
                                           f"window length); before: {self.backend_choice}")
                    self._runners, self._backend_window, self.backend = self._models, 0, "torch"
                    self._awaiting_build = True
            self._hop_buffers()
            if build:
                self._start_build(self._window, hop_seconds)
            # The window holds [start - old context, start - old context + fill): keep what the
            # new context reaches (with less history than it reaches, zeros before it).
            cut = old_context - context
            if cut >= 0:
                self._window_np[:, :fill - cut] = old_window_np[:, cut:fill]
            else:
                self._window_np[:, -cut:fill - cut] = old_window_np[:, :fill]
            self._fill = fill - cut
            self._acc[:, :, :self._crossfade] = old_acc[:, :, :self._crossfade]  # the last window's fade-out
            # The head start the new grid needs from here on, and from a reset (which keeps it).
            needed = max(self._fifo_frames, self._alignment_frames(hop, start), self._alignment_frames(hop))
            inserted = needed - self._fifo_frames
            ahead = self._fifo.size
            rows = len(self._stems) * self.channels
            queued = np.empty((rows, ahead), np.float32)
            self._fifo.read(queued)
            self._fifo_frames = needed
            self._latency_frames += inserted
            fifo = FrameFifo(rows, self._fifo_capacity())
            fifo.write(queued)
            fifo.write(np.zeros((rows, inserted), np.float32))
            self._fifo = fifo
            self._reset_stats()
            self.climbed_while_running = True
            self.hop_choice = (f"{1000 * hop / rate:.0f} ms, climbed from {1000 * old_hop / rate:.0f} ms while "
                               f"running: {reason}")
            log.warning("%s: hop %.0f -> %.0f ms (window %.3f -> %.3f s), latency +%.1f ms: %s", self.name,
                        1000 * old_hop / rate, 1000 * hop / rate, old_window / rate, self._window / rate,
                        1000.0 * inserted / self.sample_rate, reason)
            return ahead, inserted

    def _take_build(self) -> None:
        """At a window boundary, torch running the windows since a climb: go on on the OpenVINO
        build made for them (one made for an earlier climb's window: build for this one)."""
        with self._build_lock:
            built, self._built = self._built, None
        if built is None:
            return
        if built[0] != self._window:
            self._start_build(self._window, self._hop / self._model_rate)
            return
        self._awaiting_build = False
        self._reset_stats()  # torch's windows: not what the stream costs from here
        self._use_build(built, f"openvino again {built[4]:.1f} s after the hop climbed to "
                               f"{1000.0 * self._hop / self._model_rate:.0f} ms while running (built for the new "
                               f"window; torch ran the windows meanwhile)")

    def _use_build(self, built: tuple[int, float, list[Any], str | None, float], choice: str) -> None:
        """Run the windows on `built` (saying `choice`), or in torch where it could not be made."""
        _, _, runners, problem, _ = built
        if problem is not None:
            self._runners, self._backend_window, self.backend = self._models, 0, "torch"
            self.backend_choice = (f"torch since the hop climbed to {1000.0 * self._hop / self._model_rate:.0f} ms "
                                   f"while running: {problem}")
            log.warning("%s: %s", self.name, self.backend_choice)
            return
        self._runners, self._backend_window, self.backend = runners, self._window, "openvino"
        self.backend_choice = choice
        log.info("%s: %s", self.name, choice)

    def _close(self) -> None:
        self._builds += 1  # a build still in the background is for this engine no more
        self._awaiting_build, self._built = False, None
        if self._batcher is not None:
            self._batcher.leave(self._member)
            self._batcher = None
        self._models, self._runners, self._backend_window = [], [], 0
        self._weights = None  # the device's cached memory goes back in Engine.close

    def process_ahead(self, block: np.ndarray) -> np.ndarray:
        """Like `process`, but returns every output frame that exists once `block` is in, float32
        `(num_stems, channels, k)`: this block's and those of the input still to come before the next
        window (computed already; after a `reset`, the alignment silence too). Over a stream these are
        `process`'s frames in the same order, only sooner: a remote client (`/v1/stream`) plays its
        next blocks from them while the server waits for the frame that runs the next window."""
        self.load()
        with self._lock:
            block = self._checked(block)
            rows = len(self._stems) * self.channels
            parts = []
            for start in range(0, max(block.shape[1], 1), PIECE_FRAMES):
                piece = block[:, start:start + PIECE_FRAMES]
                if piece.shape[1]:
                    self._push_model_rate(self._down.process(piece) if self._down is not None else piece)
                ready = np.empty((rows, self._fifo.size), np.float32)
                self._fifo.read(ready)
                parts.append(ready)
            return np.concatenate(parts, axis=1).reshape(len(self._stems), self.channels, -1)

    def _checked(self, block: np.ndarray) -> np.ndarray:
        if not isinstance(block, np.ndarray) or block.ndim != 2 or block.shape[0] != self.channels:
            shape = getattr(block, "shape", type(block).__name__)
            raise BadRequest(f"block: expected a float32 array shaped (channels={self.channels}, frames), got {shape}")
        return block if block.dtype == np.float32 else block.astype(np.float32)

    def _process(self, block: np.ndarray) -> np.ndarray:
        block = self._checked(block)
        total = block.shape[1]
        out = np.empty((len(self._stems), self.channels, total), np.float32)
        flat = out.reshape(len(self._stems) * self.channels, total)
        for start in range(0, total, PIECE_FRAMES):
            piece = block[:, start:start + PIECE_FRAMES]
            self._push_model_rate(self._down.process(piece) if self._down is not None else piece)
            self._fifo.read(flat[:, start:start + piece.shape[1]])
        return out

    # ---- internals ------------------------------------------------------------------------

    @staticmethod
    def _frames(seconds: float, rate: int, minimum_blocks: int) -> int:
        return max(minimum_blocks, round(seconds * rate / MODEL_BLOCK)) * MODEL_BLOCK

    def _alignment_frames(self, hop: int, start: int = 0) -> int:
        """Silence the FIFO starts with so that every output frame exists when it is due, for
        windows of `hop` whose hops start at model frame `start` (0: from a reset).

        After N input frames the chain has produced P(N) output frames; output frame N-1 is due
        then, so the FIFO needs max_N (N - P(N)) frames of head start. P only grows when a window
        completes, so the worst N is just before each completion; the pattern repeats after
        lcm(hop, period of the input resampler) model frames.
        """
        down, up = self._down, self._up
        period = down.up if down is not None else 1
        windows = period // math.gcd(period, hop)
        worst = 0
        finished = start  # model-rate output frames final before window k
        for k in range(windows + 1):
            needed = start + (k + 1) * hop + self._lookahead + self._offset  # model-rate input completing window k
            count = down.inputs_needed(needed) if down is not None else needed
            produced = up.produced(finished) if up is not None else finished
            worst = max(worst, count - 1 - produced)
            finished = start + (k + 1) * hop
        return worst

    def _reset_stream(self) -> None:
        self._window_np.fill(0.0)
        # Window k reads model-rate input [k*hop - context + offset, (k+1)*hop + lookahead + offset);
        # what lies before input 0 is silence, and input before window 0 is skipped.
        self._fill = max(0, self._context - self._offset)
        self._skip = max(0, self._offset - self._context)
        self._acc.zero_()
        self._stream_hops = 0
        self._hop_start = 0
        if self._down is not None:
            self._down.reset()
        if self._up is not None:
            self._up.reset()
        self._fifo.clear(self._fifo_frames)
        self._reset_stats()

    def _reset_stats(self) -> None:
        """Forget the hops' compute times (a new stream, or a new hop)."""
        with self._stats_lock:
            self._hops = 0
            self._compute_ms.fill(0.0)
            self._batch_sizes.fill(0)
            self._forward_ms.fill(0.0)

    def _push_model_rate(self, samples: np.ndarray) -> None:
        """Append model-rate input; run the model for each window it completes."""
        window, hop = self._window, self._hop
        n = samples.shape[1]
        done = min(n, self._skip)
        self._skip -= done
        while done < n:
            take = min(n - done, window - self._fill)
            self._window_np[:, self._fill:self._fill + take] = samples[:, done:done + take]  # mono broadcasts
            self._fill += take
            done += take
            if self._fill == window:
                chunk = self._run_window()
                if self._up is not None:
                    chunk = self._up.process(chunk.reshape(-1, hop))
                self._fifo.write(chunk.reshape(len(self._stems) * self.channels, -1))
                self._window_np[:, :window - hop] = self._window_np[:, hop:]
                self._fill = window - hop

    def _warm_up(self) -> None:
        """Two forwards on a silent window at load: the first call builds kernels and buffers and
        is several times slower, and it must not land on the first hop of a live stream. With
        batching, one more per batch size a hop may meet (each shape's first call is as slow).
        On CUDA they run on the device's thread, where the live windows will (cuDNN's plans are
        cached per thread: engines/device_thread.py)."""
        import torch

        sizes = range(2, self._batching.max_streams + 1) if self._batching is not None else range(0)

        def warm_up() -> None:
            with torch.inference_mode(), self._autocast():
                for _ in range(2):
                    for model in self._models:
                        model(self._window_dev)
                for size in sizes:
                    for model in self._models:
                        model(self._window_dev.repeat(size, 1, 1))
            synchronize(self.device)

        self._on_device(warm_up)

    def _on_device(self, fn: Callable[[], T]) -> T:
        """`fn()` on the device's thread (CUDA: engines/device_thread.py), else on this one."""
        return fn() if self._device_thread is None else self._device_thread.call(fn)

    def _run_window(self) -> np.ndarray:
        """Separate the full window; overlap-add its hop; return the finished hop (host view)."""
        import torch

        if self._awaiting_build and self._built is not None:
            self._take_build()
        started = time.perf_counter()
        context, hop, crossfade = self._context, self._hop, self._crossfade
        with torch.inference_mode(), self._autocast():
            if self._window_dev is not self._window_host:
                self._window_dev.copy_(self._window_host, non_blocking=True)
            acc = self._acc
            fade = self._fade_first if self._stream_hops == 0 else self._fade
            batcher = self._batcher
            if batcher is not None:
                # Every stream's window is copied into the batch before the batch's forward
                # starts, so this engine's buffers are free again when `run` returns.
                batched = batcher.run(self._member, self._window_dev, self._forward)
                outputs, batch_size, forward_ms = batched.outputs, batched.batch_size, batched.forward_ms
            else:
                outputs, batch_size, forward_ms = self._forward(self._window_dev), 1, 0.0
            for index, whole in enumerate(outputs):
                part = whole[0, :, :, context:context + hop + crossfade].float()
                if self._weights is not None:
                    part = part * self._weights[index]
                acc.addcmul_(part, fade)
            finished = acc[:, :, :hop]
            if self.channels == 1:
                finished = finished.mean(dim=1, keepdim=True)
            self._chunk_host.copy_(finished, non_blocking=self._cuda)
            if crossfade:
                acc[:, :, :crossfade].copy_(acc[:, :, hop:hop + crossfade])
            acc[:, :, crossfade:].zero_()
            if self._cuda:
                torch.cuda.current_stream(self.device).synchronize()
        self._stream_hops += 1
        self._hop_start += hop
        elapsed_ms = 1000.0 * (time.perf_counter() - started)
        with self._stats_lock:
            at = self._hops % STATS_WINDOW
            self._compute_ms[at] = elapsed_ms
            self._batch_sizes[at] = batch_size
            self._forward_ms[at] = forward_ms if batcher is not None else elapsed_ms
            self._hops += 1
            self._hops_run += 1
        return self._chunk_np

    def _forward(self, batch: Any) -> list[Any]:
        """Every model of the bag, as the windows run (`_runners`: the models, or their OpenVINO
        builds), on a batch of windows: this stream's one, or every stream's in a batch (its leader
        calls this). On CUDA on the device's thread; the outputs stay on the device."""
        import torch

        def forward() -> list[Any]:
            with torch.inference_mode(), self._autocast():
                outputs = [run(batch) for run in self._runners]
                if self._cuda:
                    torch.cuda.current_stream(self.device).synchronize()
            return outputs

        return self._on_device(forward)
