"""Inference backends for the streaming engine's windows: eager torch, or OpenVINO on CPU.

A separation model's forward starts with an STFT and ends with its inverse (after a mask),
complex-valued ops that model exporters do not take. `network_split` names the real-valued network
between them: for HTDemucs, `HTDemucsCore`, written against the model's own submodules: (mix,
magnitude spectrogram) -> (frequency-branch output, time-branch output), both already scaled back
by the input's statistics; for Spleeter, its two U-Nets (engines/spleeter.py). `OpenVinoModel`
keeps the STFT, the mask and the iSTFT in torch and runs that network through OpenVINO, compiled
for one window shape (a stream's windows all have the same shape). Called with a window it returns
what `model(window)` returns.

The conversion (a trace, the slow part: 11-14 s for the released HTDemucs on 2 cores) leaves the
window's axes open, so one conversion per model serves every window length: a build for another
length is a reshape and a compile (1-2 s), for the hop ladder's rungs and a climb while running.
A `ConversionCache` keeps conversions on disk, keyed by everything they depend on (the network's
weights, structure and input shapes, the openvino and torch versions), so a later start of the
same model converts nothing; the process keeps its last few too, for the same weights loaded again.

`choose_backend` decides per stream: `torch` always runs eager torch; `openvino` runs OpenVINO or
says why it cannot; `auto` takes OpenVINO only on a CPU where it is installed, converts, matches
torch within `MATCH_TOLERANCE` on a probe window and measures faster; otherwise torch, with the
reason. Nothing here is imported before a model is loaded, and openvino only when asked for.
"""

from __future__ import annotations

import collections
import hashlib
import importlib
import logging
import os
import shutil
import sys
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.errors import BadRequest, Unavailable

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "openvino")
MATCH_TOLERANCE = 1e-4  # max abs difference from eager torch on the probe window
# `auto` takes OpenVINO only when its window costs at most this share of torch's (median of the
# interleaved timings): a smaller gain is within the noise of a shared machine.
AUTO_FASTER = 0.95
AUTO_TIMING_ROUNDS = 3
CACHE_FORMAT = "1"  # part of every cache key: bump when what a conversion holds changes


def check_backend(backend: Any) -> str:
    if backend not in BACKENDS:
        raise BadRequest(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def _core_class() -> type:
    import torch

    class HTDemucsCore(torch.nn.Module):
        """The part of `HTDemucs.forward` between `_magnitude` and `_mask` (see the module doc)."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, mix: Any, mag: Any) -> tuple[Any, Any]:
            m = self.model
            batch, _, bins, frames = mag.shape
            mean, std = mag.mean(dim=(1, 2, 3), keepdim=True), mag.std(dim=(1, 2, 3), keepdim=True)
            x = (mag - mean) / (1e-5 + std)
            meant, stdt = mix.mean(dim=(1, 2), keepdim=True), mix.std(dim=(1, 2), keepdim=True)
            xt = (mix - meant) / (1e-5 + stdt)
            saved, saved_t, lengths, lengths_t = [], [], [], []
            for idx, encode in enumerate(m.encoder):
                lengths.append(x.shape[-1])
                inject = None
                if idx < len(m.tencoder):
                    lengths_t.append(xt.shape[-1])
                    xt = m.tencoder[idx](xt)
                    if m.tencoder[idx].empty:
                        inject = xt  # the branches merge here
                    else:
                        saved_t.append(xt)
                x = encode(x, inject)
                if idx == 0 and m.freq_emb is not None:
                    emb = m.freq_emb(torch.arange(x.shape[-2], device=x.device)).t()[None, :, :, None]
                    x = x + m.freq_emb_scale * emb.expand_as(x)
                saved.append(x)
            if m.crosstransformer:
                if m.bottom_channels:
                    c, f, t = x.shape[1:]
                    x = m.channel_upsampler(x.reshape(batch, c, f * t))
                    x = x.reshape(batch, -1, f, t)
                    xt = m.channel_upsampler_t(xt)
                x, xt = m.crosstransformer(x, xt)
                if m.bottom_channels:
                    c, f, t = x.shape[1:]
                    x = m.channel_downsampler(x.reshape(batch, c, f * t)).reshape(batch, -1, f, t)
                    xt = m.channel_downsampler_t(xt)
            offset = m.depth - len(m.tdecoder)
            for idx, decode in enumerate(m.decoder):
                x, pre = decode(x, saved.pop(-1), lengths.pop(-1))
                if idx >= offset:
                    tdec = m.tdecoder[idx - offset]
                    length_t = lengths_t.pop(-1)
                    if tdec.empty:
                        xt, _ = tdec(pre[:, :, 0], None, length_t)
                    else:
                        xt, _ = tdec(xt, saved_t.pop(-1), length_t)
            sources = len(m.sources)
            x = x.view(batch, sources, -1, bins, frames) * std[:, None] + mean[:, None]
            xt = xt.view(batch, sources, -1, mix.shape[-1]) * stdt[:, None] + meant[:, None]
            return x, xt

    return HTDemucsCore


def htdemucs_core(model: Any) -> Any:
    """`HTDemucsCore` of an HTDemucs in eval mode with `use_train_segment = False`."""
    return _core_class()(model).eval()


def split_forward(model: Any, mix: Any, core: Callable[[Any, Any], tuple[Any, Any]]) -> Any:
    """`model(mix)` with the network between the STFT and its inverse run by `core`."""
    z = model._spec(mix)
    x, xt = core(mix, model._magnitude(z))
    return xt + model._ispec(model._mask(z, x), mix.shape[-1])


def network_split(model: Any) -> tuple[Any, Callable[[Any], tuple[Any, ...]], Callable[[Any, Any], Any]]:
    """(the model's network between its STFT and its inverse, as a module; the network's inputs
    for a window; `forward(window, network)`: the model's output with `network` run in its place).

    HTDemucs: `HTDemucsCore`. Spleeter (engines/spleeter.py): the two U-Nets, `model.network()`.
    """
    if hasattr(model, "network"):  # Spleeter
        return model.network(), model.network_inputs, model
    return (htdemucs_core(model), lambda window: (window, model._magnitude(model._spec(window))),
            lambda window, network: split_forward(model, window, network))


@dataclass(frozen=True)
class ConversionCache:
    """Where OpenVINO conversions are kept between starts, and how many MB of them at most (the
    least recently used go first; the released HTDemucs's is 169 MB)."""

    folder: Path
    max_mb: float = 1024.0


# The conversions made in this process, by model: a build for another window length reuses it.
_CONVERTED: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
# And the last few by cache key, for the same weights loaded again (another engine of the model).
RECENT_CONVERSIONS = 2
_RECENT: collections.OrderedDict[str, Any] = collections.OrderedDict()
_CONVERTING = threading.Lock()


def converted_network(model: Any, window: Any, cache: ConversionCache | None = None) -> Any:
    """The OpenVINO model of `model`'s network (`network_split`), its window axes left open: from
    this process's conversions, else from `cache`, else converted now (and put in `cache`)."""
    with _CONVERTING:
        converted = _CONVERTED.get(model)
        if converted is None:
            converted = _CONVERTED[model] = _convert(model, window, cache)
        return converted


def import_openvino() -> Any:
    """`openvino`, with its converter's usage telemetry left out of this process. OpenVINO's model
    converter (`openvino.tools.ovc`, imported with `openvino`; `convert_model` is it) starts
    `openvino_telemetry` with `enable_opt_in_dialog=False`, whose own documentation says telemetry
    "is sent without opt-in dialog, unless user explicitly turned it off with opt_in_out script":
    a daemon on a producer's machine would send usage events to Google Analytics. Where the package
    cannot be imported the converter takes its own stub (`telemetry_stub`, its `except ImportError`),
    so `openvino_telemetry` is made unimportable here before OpenVINO is first imported. Every
    import of OpenVINO in the daemon goes through this."""
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    return importlib.import_module("openvino")


def _convert(model: Any, window: Any, cache: ConversionCache | None) -> Any:
    import torch

    ov = import_openvino()
    network, inputs, _ = network_split(model)
    example = inputs(window)
    # The axes that follow the window's length: those that differ at twice the length.
    longer = inputs(torch.cat([window, window], dim=-1))
    shapes = [tuple(-1 if a != b else a for a, b in zip(part.shape, other.shape, strict=True))
              for part, other in zip(example, longer, strict=True)]
    key = _cache_key(network, shapes, ov.__version__)
    converted = _RECENT.get(key)
    if converted is not None:
        _RECENT.move_to_end(key)
        return converted
    path = None
    if cache is not None:
        path = cache.folder / key / "network.xml"
        converted = _read_cached(ov, path)
        if converted is not None:
            log.info("OpenVINO: the conversion of %s from %s", type(network).__name__, path.parent)
            return _remember(key, converted)
    started = time.perf_counter()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel does not convert
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # python branches on this shape
            converted = ov.convert_model(network, example_input=example, input=shapes)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    log.info("OpenVINO: converted %s in %.1f s (inputs %s)", type(network).__name__, time.perf_counter() - started,
             ", ".join(str(shape) for shape in shapes))
    if cache is not None and path is not None:
        _write_cached(ov, converted, path, cache)
    return _remember(key, converted)


def _remember(key: str, converted: Any) -> Any:
    _RECENT[key] = converted
    while len(_RECENT) > RECENT_CONVERSIONS:
        _RECENT.popitem(last=False)
    return converted


def _cache_key(network: Any, shapes: list[tuple[int, ...]], ov_version: str) -> str:
    """A digest of everything a conversion depends on: the versions, the network's class, its
    structure and settings (its repr and scalar attributes, its modules' too) and its weights."""
    import torch

    digest = hashlib.sha256()
    scalars = sorted((name, key, repr(value)) for name, module in network.named_modules()
                     for key, value in vars(module).items()
                     if not key.startswith("_") and isinstance(value, (bool, int, float, str, tuple)))
    digest.update(repr((CACHE_FORMAT, ov_version, torch.__version__, type(network).__qualname__, repr(network),
                        scalars, shapes)).encode())
    for name, tensor in network.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()[:40]


def _read_cached(ov: Any, path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        converted = ov.Core().read_model(str(path))
        os.utime(path.parent)  # recently used: pruned last
        return converted
    except Exception as err:  # noqa: BLE001 - a damaged entry is converted again
        log.warning("OpenVINO: cannot read the cached conversion %s (%s); converting again", path.parent, err)
        shutil.rmtree(path.parent, ignore_errors=True)
        return None


def _write_cached(ov: Any, converted: Any, path: Path, cache: ConversionCache) -> None:
    """Save into a folder of its own, then rename it into place (a crash leaves no half entry);
    then drop the least recently used entries over `cache.max_mb`."""
    if cache.max_mb <= 0:
        return
    scratch = cache.folder / f".partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        scratch.mkdir(parents=True)
        ov.save_model(converted, str(scratch / path.name), compress_to_fp16=False)  # f32 as converted
        try:
            scratch.rename(path.parent)
        except OSError:  # another process saved the same conversion first
            pass
    except OSError as err:
        log.warning("OpenVINO: cannot keep the conversion in %s (%s); the next start converts again",
                    cache.folder, err)
        return
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("OpenVINO: kept the conversion in %s", path.parent)
    _prune(cache, keep=path.parent)


def _prune(cache: ConversionCache, keep: Path) -> None:
    entries = []
    for entry in cache.folder.iterdir():
        if entry.is_dir() and not entry.name.startswith("."):
            size = sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
            entries.append((entry.stat().st_mtime, size, entry))
    total = sum(size for _, size, _ in entries)
    for _, size, entry in sorted(entries):
        if total <= cache.max_mb * 1e6:
            break
        if entry != keep and _remove_entry(entry):
            total -= size
            log.info("OpenVINO: removed the least recently used conversion %s (over %g MB)", entry, cache.max_mb)


def _remove_entry(entry: Path) -> bool:
    """Delete a kept conversion, its weights first; whether it went. OpenVINO maps the weights it
    reads, and Windows will not delete a mapped file (OpenVINO's win_mmap_object.cpp): a conversion
    this process has open stays whole then, not without its network.xml (which made every later
    start convert it again, the rename onto the half entry refused)."""
    try:
        for weights in entry.glob("*.bin"):
            weights.unlink()
    except OSError as err:
        log.info("OpenVINO: kept the conversion %s, in use (%s)", entry, err)
        return False
    shutil.rmtree(entry, ignore_errors=True)
    return True


class OpenVinoModel:
    """`model(window)` for windows of one shape, the network between the model's STFT and its
    inverse (`network_split`) compiled by OpenVINO for the CPU."""

    def __init__(self, model: Any, window: Any, threads: int, cache: ConversionCache | None = None) -> None:
        ov = import_openvino()
        self.shape = tuple(window.shape)
        _, inputs, self._forward = network_split(model)
        build = converted_network(model, window, cache).clone()
        build.reshape({port: ov.PartialShape(list(part.shape))  # static: the stream's windows all have it
                       for port, part in zip(build.inputs, inputs(window), strict=True)})
        # f32: on a CPU with bf16 units OpenVINO would otherwise compute in bf16 (3e-3 off here).
        self._compiled = ov.compile_model(build, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                         "INFERENCE_NUM_THREADS": int(threads),
                                                         "INFERENCE_PRECISION_HINT": "f32"})
        self._request = self._compiled.create_infer_request()
        self._outputs = len(self._compiled.outputs)

    def network(self, *inputs: Any) -> Any:
        """The compiled network on its inputs: one tensor, or a tuple of them where it has several."""
        import torch

        self._request.infer([part.contiguous().numpy() for part in inputs], share_inputs=True)
        outputs = tuple(torch.from_numpy(self._request.get_output_tensor(i).data) for i in range(self._outputs))
        return outputs[0] if self._outputs == 1 else outputs

    def __call__(self, window: Any) -> Any:
        if tuple(window.shape) != self.shape:
            raise BadRequest(f"OpenVINO backend: compiled for windows shaped {self.shape}, got {tuple(window.shape)}")
        return self._forward(window, self.network)


def choose_backend(backend: str, models: Sequence[Any], window: Any, *, device_type: str, precision: str,
                   threads: int, batched: bool = False, origin: str = "set in config",
                   cache: ConversionCache | None = None) -> tuple[str, list[Callable[[Any], Any]], str]:
    """(the backend taken, one callable per model, why) for this stream's window shape; `origin`
    says where `backend` came from.

    `backend='openvino'` raises `Unavailable` (with the reason) where OpenVINO cannot run it;
    `auto` falls back to torch, and the reason says why.
    """
    check_backend(backend)
    eager = list(models)
    if backend == "torch":
        return "torch", eager, origin
    problem = None
    if device_type != "cpu":
        problem = f"OpenVINO runs on the CPU here; this stream runs on {device_type}"
    elif precision != "float32":
        problem = f"OpenVINO runs float32 only; precision is {precision}"
    elif batched:
        problem = ("OpenVINO is compiled for one window; this stream batches its windows with others' "
                   "(stream.batch_streams)")
    if problem is None:
        try:
            import_openvino()
        except ImportError as err:
            problem = (f"openvino is not installed ({err}); it is one of the daemon's dependencies: run "
                       "scripts/install.sh (Windows: scripts\\install.ps1) again")
    runners: list[Callable[[Any], Any]] = []
    if problem is None:
        runners, problem = openvino_builds(models, window, threads, cache)
    if problem is not None:
        if backend == "openvino":
            raise Unavailable(f"backend: 'openvino' cannot run this stream: {problem}. Fix: set stream.backend "
                              "to auto or torch")
        log.info("inference backend: torch (%s)", problem)
        return "torch", eager, f"auto ({origin}): {problem}"
    if backend == "openvino":
        return "openvino", runners, f"{origin} (matches torch within {MATCH_TOLERANCE:g})"
    torch_ms, ov_ms = compare_ms(eager, runners, window, AUTO_TIMING_ROUNDS)
    share = ov_ms / torch_ms
    measured = f"a window took {ov_ms:.0f} ms with OpenVINO, {torch_ms:.0f} ms with torch (x{share:.2f})"
    if share <= AUTO_FASTER:
        return "openvino", runners, f"auto ({origin}): {measured}"
    return "torch", eager, f"auto ({origin}): {measured}; OpenVINO is taken at x{AUTO_FASTER:g} or less"


def openvino_builds(models: Sequence[Any], window: Any, threads: int, cache: ConversionCache | None = None,
                    probe: bool = True) -> tuple[list[Callable[[Any], Any]], str | None]:
    """(an OpenVINO build of each model for windows shaped like `window`, None), or ([], why not):
    it could not convert or compile, or (with `probe`) its output on a probe window is not
    torch's within `MATCH_TOLERANCE`."""
    import torch

    try:
        runners: list[Callable[[Any], Any]] = [OpenVinoModel(model, window, threads, cache) for model in models]
    except Exception as err:  # noqa: BLE001 - the converter raises many kinds
        return [], f"OpenVINO could not convert the model: {type(err).__name__}: {err}"
    if not probe:
        return runners, None
    sample = torch.randn(window.shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        worst = max(float((model(sample) - runner(sample)).abs().max())
                    for model, runner in zip(models, runners, strict=True))
    if not worst <= MATCH_TOLERANCE:
        return [], (f"OpenVINO's output differs from torch's by {worst:.2g} on a probe window "
                    f"(limit {MATCH_TOLERANCE:g})")
    return runners, None


def compare_ms(first: Sequence[Callable[[Any], Any]], second: Sequence[Callable[[Any], Any]], window: Any,
               rounds: int) -> tuple[float, float]:
    """Median ms of a window through every callable of `first`, then of `second`, taking turns
    (one window each, after one untimed round) so that load from elsewhere hits both alike."""
    import statistics

    import torch

    times: tuple[list[float], list[float]] = ([], [])
    with torch.inference_mode():
        for round_ in range(rounds + 1):
            for runners, out in zip((first, second), times, strict=True):
                started = time.perf_counter()
                for runner in runners:
                    runner(window)
                if round_:
                    out.append(1000.0 * (time.perf_counter() - started))
    return statistics.median(times[0]), statistics.median(times[1])
