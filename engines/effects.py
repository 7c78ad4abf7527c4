"""pedalboard effect chains: built from a spec list, streamed block by block, changed while they run.

A spec is a list of effects, in order (from `stream.effects` in config.yaml, or from a command):

    [{"name": "verb", "plugin": "Reverb", "params": {"room_size": 0.5}},
     {"name": "room", "vst3": "/usr/lib/vst3/DragonflyRoomReverb.vst3", "params": {"decay_s": 2.0}}]

`plugin` names a built-in pedalboard effect, resolved through `BUILTIN_EFFECTS` (never through
`getattr` on whatever name arrives); `vst3` is the path of a VST3 bundle, loaded with
`pedalboard.load_plugin`. `name` (letters, digits, `_`, `-`) is how commands address the effect; it
defaults to the lower-cased class name or bundle name. `params` is optional.

Threading: `process` runs on the realtime worker thread. `set_parameter` and `reset` may be called
from any other thread: they validate at once (raising `BadRequest`/`NotFound` with the effect,
parameter, value and allowed range), then leave the change in a small pending table that `process`
applies at the start of its next block. The only lock `process` takes guards a dict swap.

Nothing happens at import time: pedalboard is imported when a chain is built.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bridge.errors import BadRequest, Forbidden, NotFound, Unavailable
from bridge.fileio import below

log = logging.getLogger(__name__)

# pedalboard prepares every plugin for the largest block it has seen, and a JUCE effect that is
# prepared again for a larger block clears its state (a click mid-stream). Each chain is therefore
# prepared once for this many samples (see `EffectChain._prime`); larger blocks are processed in
# slices of this size by pedalboard itself.
MAX_BLOCK_SAMPLES = 8192

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SPEC_KEYS = ("name", "plugin", "vst3", "plugin_name", "params")


# -- parameters ----------------------------------------------------------------------------------


class _Nyquist:
    """Placeholder for `sample_rate / 2` in the built-in table; resolved when a chain is built."""

    def __repr__(self) -> str:
        return "NYQUIST"


NYQUIST = _Nyquist()

_TRUE_WORDS = ("true", "on", "yes", "1")
_FALSE_WORDS = ("false", "off", "no", "0")


@dataclass(frozen=True)
class ParamInfo:
    """One controllable parameter: its kind, allowed values and units."""

    name: str
    kind: str = "float"  # "float", "bool" or "choice"
    min_value: float | None = None
    max_value: float | _Nyquist | None = None
    choices: tuple[str, ...] = ()
    units: str = ""

    def expected(self) -> str:
        """What a valid value looks like, for error messages and `describe()`."""
        if self.kind == "bool":
            return "true or false"
        if self.kind == "choice":
            return f"one of {', '.join(self.choices)}"
        units = f" {self.units}" if self.units else ""
        low, high = self.min_value, self.max_value
        if low is not None and high is not None:
            return f"a number from {low} to {high}{units}"
        if low is not None:
            return f"a number of at least {low}{units}"
        if high is not None:
            return f"a number of at most {high}{units}"
        return f"a finite number{units}"

    def check(self, where: str, value: Any) -> float | bool | str:
        """The value converted to this parameter's type, or `BadRequest` naming what was expected."""
        problem = f"{where}: expected {self.expected()}, got {value!r}"
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, (int, float)) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS + _FALSE_WORDS:
                return value.strip().lower() in _TRUE_WORDS
            raise BadRequest(problem)
        if self.kind == "choice":
            if isinstance(value, str):
                for choice in self.choices:
                    if value.strip().casefold() == choice.casefold():
                        return choice
            raise BadRequest(problem)
        if isinstance(value, bool):
            raise BadRequest(problem)
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise BadRequest(problem) from None
        if not isinstance(value, (int, float)):
            raise BadRequest(problem)
        number = float(value)
        if not math.isfinite(number):
            raise BadRequest(problem)
        if self.min_value is not None and number < self.min_value:
            raise BadRequest(problem)
        if isinstance(self.max_value, float) and number > self.max_value:
            raise BadRequest(problem)
        return number

    def describe(self, value: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "type": self.kind, "value": value}
        if self.kind == "float":
            entry["min"] = self.min_value
            entry["max"] = self.max_value
            entry["units"] = self.units
        elif self.kind == "choice":
            entry["choices"] = list(self.choices)
        entry["expected"] = self.expected()
        return entry


def _f(name: str, low: float | None, high: float | _Nyquist | None, units: str = "") -> ParamInfo:
    return ParamInfo(name, "float", low, high, units=units)


def _cutoff(name: str = "cutoff_frequency_hz") -> ParamInfo:
    return _f(name, 1.0, NYQUIST, "Hz")


_UNIT = (0.0, 1.0)  # mixes, depths, levels

# The built-in effects a spec may name, with each controllable parameter. Where pedalboard or JUCE
# enforces a range, it is that range; where they accept anything (gains, thresholds), the range is
# ours: wide enough for any mix, narrow enough that a typo cannot send +200 dB to the speakers.
# Filter cutoffs stop at half the sample rate, where the filter designs stop making sense.
# Left out on purpose: PitchShift (with reset=False, pedalboard 0.9.26's returns only silence),
# Convolution (needs an impulse-response file), the MP3/GSM codecs and Resample (offline tools).
BUILTIN_EFFECTS: dict[str, tuple[ParamInfo, ...]] = {
    "Bitcrush": (_f("bit_depth", 0.0, 32.0, "bits"),),
    "BrickwallLimiter": (
        _f("ceiling_db", -60.0, 0.0, "dB"),
        _f("release_ms", 1.0, None, "ms"),
        _f("lookahead_ms", 0.1, 100.0, "ms"),
        ParamInfo("true_peak", "bool"),
    ),
    "Chorus": (
        _f("rate_hz", 0.0, 100.0, "Hz"),
        _f("depth", *_UNIT),
        _f("centre_delay_ms", 1.0, 100.0, "ms"),
        _f("feedback", -1.0, 1.0),
        _f("mix", *_UNIT),
    ),
    "Clipping": (_f("threshold_db", -100.0, 0.0, "dB"),),
    "Compressor": (
        _f("threshold_db", -100.0, 0.0, "dB"),
        _f("ratio", 1.0, None),
        _f("attack_ms", 0.0, None, "ms"),
        _f("release_ms", 1.0, None, "ms"),
    ),
    "Delay": (_f("delay_seconds", 0.0, 30.0, "s"), _f("feedback", *_UNIT), _f("mix", *_UNIT)),
    "Distortion": (_f("drive_db", 0.0, 100.0, "dB"),),
    "Gain": (_f("gain_db", -120.0, 60.0, "dB"),),
    "HighShelfFilter": (_cutoff(), _f("gain_db", -48.0, 48.0, "dB"), _f("q", 0.01, None)),
    "HighpassFilter": (_cutoff(),),
    "Invert": (),
    "LadderFilter": (
        ParamInfo("mode", "choice", choices=("LPF12", "HPF12", "BPF12", "LPF24", "HPF24", "BPF24")),
        _cutoff("cutoff_hz"),
        _f("resonance", *_UNIT),
        _f("drive", 1.0, None),
    ),
    "Limiter": (_f("threshold_db", -100.0, 0.0, "dB"), _f("release_ms", 1.0, None, "ms")),
    "LowShelfFilter": (_cutoff(), _f("gain_db", -48.0, 48.0, "dB"), _f("q", 0.01, None)),
    "LowpassFilter": (_cutoff(),),
    "NoiseGate": (
        _f("threshold_db", -120.0, 0.0, "dB"),
        _f("ratio", 1.0, None),
        _f("attack_ms", 0.0, None, "ms"),
        _f("release_ms", 1.0, None, "ms"),
    ),
    "PeakFilter": (_cutoff(), _f("gain_db", -48.0, 48.0, "dB"), _f("q", 0.01, None)),
    "Phaser": (
        _f("rate_hz", 0.0, 100.0, "Hz"),
        _f("depth", *_UNIT),
        _f("centre_frequency_hz", 1.0, NYQUIST, "Hz"),
        _f("feedback", -1.0, 1.0),
        _f("mix", *_UNIT),
    ),
    "Reverb": (
        _f("room_size", *_UNIT),
        _f("damping", *_UNIT),
        _f("wet_level", *_UNIT),
        _f("dry_level", *_UNIT),
        _f("width", *_UNIT),
        _f("freeze_mode", *_UNIT),
    ),
}


def _tidy(value: Any) -> Any:
    """pedalboard stores float32: show 0.4 rather than 0.4000000059604645."""
    if isinstance(value, float):
        return float(f"{value:.7g}")
    return value


def _unknown(what: str, name: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    listed = ", ".join(choices) if choices else "(none)"
    return f"unknown {what} {name!r}; {hint}expected one of: {listed}"


# -- effects -------------------------------------------------------------------------------------


class _Effect:
    """One plugin in a chain: its parameters and the values last asked for."""

    kind = ""

    def __init__(self, name: str, title: str, plugin: Any, params: Sequence[ParamInfo]) -> None:
        self.name = name
        self.title = title  # the class name, or the VST3 plugin's own name
        self.plugin = plugin
        self.params = {p.name: p for p in params}
        self.read_only: tuple[str, ...] = ()
        # What describe() shows: the last accepted value of each parameter (guarded by the chain's lock).
        self.values: dict[str, Any] = {}

    def where(self, parameter: str) -> str:
        return f"effect {self.name!r} ({self.title}) parameter {parameter!r}"

    def validate(self, parameter: str, value: Any) -> tuple[Any, Any]:
        """(the value as shown, what `apply` needs) or `BadRequest`. Runs on the caller's thread."""
        info = self.params.get(parameter)
        if info is None:
            if parameter in self.read_only:
                raise BadRequest(
                    f"effect {self.name!r} ({self.title}): parameter {parameter!r} is read-only "
                    "(the plugin does not allow it to be automated)"
                )
            raise BadRequest(f"effect {self.name!r} ({self.title}): " + _unknown("parameter", parameter, self.params))
        checked = info.check(self.where(parameter), value)
        return checked, self._prepare(parameter, checked)

    def _prepare(self, parameter: str, value: Any) -> Any:
        return value

    def apply(self, parameter: str, prepared: Any) -> None:
        """Set the plugin's parameter. Runs on the thread that runs `process`, between blocks."""
        raise NotImplementedError

    def describe(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "plugin": self.title,
            "parameters": [info.describe(values.get(name)) for name, info in self.params.items()],
        }


class _BuiltinEffect(_Effect):
    kind = "builtin"

    def __init__(self, name: str, class_name: str, plugin: Any, params: Sequence[ParamInfo]) -> None:
        super().__init__(name, class_name, plugin, params)
        self.values = {p: self._read(p) for p in self.params}

    def _read(self, parameter: str) -> Any:
        value = getattr(self.plugin, parameter)
        if self.params[parameter].kind == "choice":
            return value.name
        if self.params[parameter].kind == "bool":
            return bool(value)
        return _tidy(float(value))

    def _prepare(self, parameter: str, value: Any) -> Any:
        if self.params[parameter].kind == "choice":  # LadderFilter.mode: the enum member itself
            return getattr(type(self.plugin).Mode, value)
        return value

    def apply(self, parameter: str, prepared: Any) -> None:
        setattr(self.plugin, parameter, prepared)


class _Vst3Effect(_Effect):
    kind = "vst3"

    def __init__(self, name: str, path: Path, plugin: Any) -> None:
        # Building this dict makes pedalboard probe every parameter's range once (about 0.1 s for
        # Dragonfly); it happens here, on the thread that builds the chain, never in `process`.
        self._objects = dict(plugin.parameters)
        params: list[ParamInfo] = []
        read_only: list[str] = []
        for python_name, obj in self._objects.items():
            if not obj.is_automatable:
                read_only.append(python_name)  # e.g. a DPF plugin's host-reported buffer size
                continue
            params.append(self._info(python_name, obj))
        super().__init__(name, str(plugin.name), plugin, params)
        self.path = path
        self.read_only = tuple(read_only)
        self.values = {p: self._read(p) for p in self.params}

    @staticmethod
    def _info(python_name: str, obj: Any) -> ParamInfo:
        if obj.type is bool:
            return ParamInfo(python_name, "bool")
        if obj.type is str:
            return ParamInfo(python_name, "choice", choices=tuple(str(v) for v in obj.valid_values))
        low = None if obj.min_value is None else float(obj.min_value)
        high = None if obj.max_value is None else float(obj.max_value)
        return ParamInfo(python_name, "float", low, high, units=str(obj.label or ""))

    def _read(self, parameter: str) -> Any:
        value = getattr(self.plugin, parameter)
        kind = self.params[parameter].kind
        if kind == "bool":
            return bool(value)
        if kind == "choice":
            return str(value)
        return _tidy(float(value))

    def _prepare(self, parameter: str, value: Any) -> Any:
        # The plugin's own text-to-value conversion gives the normalised value it will receive.
        # VST3 puts this conversion on the controller side, which hosts call from a UI thread
        # while audio runs, so it is safe here; `apply` then only stores one float.
        try:
            return float(self._objects[parameter].get_raw_value_for(value))
        except ValueError as err:
            raise BadRequest(f"{self.where(parameter)}: {err}") from err

    def apply(self, parameter: str, prepared: Any) -> None:
        self._objects[parameter].raw_value = prepared

    def describe(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return {**super().describe(values), "path": str(self.path)}


# -- building ------------------------------------------------------------------------------------


def _resolve_builtin(where: str, plugin_name: Any) -> str:
    if not isinstance(plugin_name, str):
        raise BadRequest(f"{where}.plugin: expected a pedalboard effect name, got {plugin_name!r}")
    if plugin_name in BUILTIN_EFFECTS:
        return plugin_name
    for known in BUILTIN_EFFECTS:
        if known.casefold() == plugin_name.strip().casefold():
            return known
    raise BadRequest(f"{where}.plugin: " + _unknown("built-in effect", plugin_name, BUILTIN_EFFECTS))


def _build_builtin(where: str, name: str, class_name: str, sample_rate: int) -> _BuiltinEffect:
    import pedalboard

    cls = getattr(pedalboard, class_name, None)
    if cls is None:
        raise Unavailable(
            f"{where}.plugin: {class_name} is not in the installed pedalboard {pedalboard.__version__}; "
            "upgrade pedalboard to use it"
        )
    nyquist = sample_rate / 2
    params = [replace(p, max_value=nyquist) if p.max_value is NYQUIST else p for p in BUILTIN_EFFECTS[class_name]]
    return _BuiltinEffect(name, class_name, cls(), params)


def _build_vst3(
    where: str, name: str, path_value: Any, plugin_name: Any, allowed_dirs: Sequence[Path] | None
) -> _Vst3Effect:
    import pedalboard

    if not isinstance(path_value, (str, Path)) or not str(path_value).strip():
        raise BadRequest(f"{where}.vst3: expected the path of a .vst3 bundle, got {path_value!r}")
    path = Path(path_value).expanduser()
    if path.suffix.lower() != ".vst3":
        raise BadRequest(f"{where}.vst3: expected a path ending in .vst3, got {str(path)!r}")
    if allowed_dirs is not None:
        resolved = path.resolve()
        if not any(below(resolved, d) is not None for d in allowed_dirs):
            folders = ", ".join(str(d) for d in allowed_dirs) or "(none)"
            raise Forbidden(f"{where}.vst3: {str(path)!r} is outside the allowed VST3 folders: {folders}")
    if not path.exists():
        raise NotFound(f"{where}.vst3: no VST3 plugin at {str(path)!r} (the path does not exist)")
    if plugin_name is not None and not isinstance(plugin_name, str):
        raise BadRequest(f"{where}.plugin_name: expected the name of one plugin in the bundle, got {plugin_name!r}")
    try:
        plugin = pedalboard.load_plugin(str(path), plugin_name=plugin_name)
    except (ImportError, ValueError, RuntimeError) as err:
        raise Unavailable(f"{where}.vst3: {str(path)!r} could not be loaded: {err}") from err
    if not plugin.is_effect:
        # pedalboard's stub declares `name` on VST3Plugin and AudioUnitPlugin, not on their base ExternalPlugin.
        name_shown = plugin.name  # type: ignore[attr-defined]
        raise BadRequest(f"{where}.vst3: {name_shown!r} at {str(path)!r} is an instrument, not an audio effect")
    return _Vst3Effect(name, path, plugin)


def _build_effect(
    index: int, entry: Any, sample_rate: int, taken: set[str], allowed_dirs: Sequence[Path] | None
) -> _Effect:
    where = f"effects[{index}]"
    if not isinstance(entry, Mapping):
        raise BadRequest(f"{where}: expected a mapping such as {{name: verb, plugin: Reverb}}, got {entry!r}")
    extra = sorted(set(entry) - set(SPEC_KEYS))
    if extra:
        raise BadRequest(f"{where}: unknown key(s) {', '.join(map(str, extra))}; expected {', '.join(SPEC_KEYS)}")
    if ("plugin" in entry) == ("vst3" in entry):
        raise BadRequest(f"{where}: expected exactly one of 'plugin' (a pedalboard effect) or 'vst3' (a path)")
    if "plugin_name" in entry and "vst3" not in entry:
        raise BadRequest(f"{where}.plugin_name: only applies to a 'vst3' effect")
    class_name = _resolve_builtin(where, entry["plugin"]) if "plugin" in entry else ""
    default_name = class_name.lower() or re.sub(r"[^A-Za-z0-9_-]", "", Path(str(entry["vst3"])).stem).lower()
    name = entry.get("name", default_name)
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise BadRequest(f"{where}.name: expected 1 to 64 letters, digits, '_' or '-', got {name!r}")
    if name in taken:
        raise BadRequest(f"{where}.name: {name!r} is already used by an earlier effect; give each a unique name")
    params = entry.get("params") or {}
    if not isinstance(params, Mapping):
        raise BadRequest(f"{where}.params: expected a mapping of parameter names to values, got {params!r}")

    if "vst3" in entry:
        effect: _Effect = _build_vst3(where, name, entry["vst3"], entry.get("plugin_name"), allowed_dirs)
    else:
        effect = _build_builtin(where, name, class_name, sample_rate)
    for parameter, value in params.items():
        shown, prepared = effect.validate(str(parameter), value)
        effect.apply(str(parameter), prepared)
        effect.values[str(parameter)] = shown
    return effect


# -- the chain -----------------------------------------------------------------------------------


class EffectChain:
    """An ordered chain of pedalboard effects, processing `(num_channels, num_samples)` float32 blocks.

    Build one with `from_spec` (off the audio thread: it loads plugins). `process` streams: state
    carries over between calls, so a signal cut into blocks of any size comes out as it would in
    one piece. `set_parameter` and `reset` are safe to call from other threads while `process` runs.
    """

    def __init__(self, effects: Sequence[_Effect], sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._effects = tuple(effects)
        self._by_name = {e.name: e for e in self._effects}
        self._index = {e.name: i for i, e in enumerate(self._effects)}
        self._board: Any = None
        if self._effects:
            import pedalboard

            self._board = pedalboard.Pedalboard([e.plugin for e in self._effects])
        # `_lock` guards `_pending`, `_reset_pending` and each effect's `values`; `process` holds it
        # only to swap the pending dict. `_control_lock` serialises callers of `set_parameter`.
        self._lock = threading.Lock()
        self._control_lock = threading.Lock()
        self._pending: dict[tuple[int, str], Any] = {}
        self._reset_pending = False
        self._silence = np.zeros((0, MAX_BLOCK_SAMPLES), dtype=np.float32)

    @classmethod
    def from_spec(
        cls,
        spec: Sequence[Mapping[str, Any]] | None,
        sample_rate: int,
        *,
        num_channels: int = 2,
        allowed_vst3_dirs: Sequence[str | Path] | None = None,
    ) -> EffectChain:
        """Build a chain from a spec list (see the module docstring); `[]` or None is a pass-through.

        `num_channels` is the channel count the chain is prepared for now, so that the first block
        of that width does no preparation on the audio thread. `allowed_vst3_dirs`, when given,
        confines VST3 paths to those folders (`Forbidden` otherwise): a VST3 is native code.
        """
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or not 1 <= sample_rate <= 768_000:
            raise BadRequest(f"sample_rate: expected a whole number of Hz from 1 to 768000, got {sample_rate!r}")
        if isinstance(num_channels, bool) or not isinstance(num_channels, int) or not 1 <= num_channels <= 64:
            raise BadRequest(f"num_channels: expected a whole number from 1 to 64, got {num_channels!r}")
        if spec is None:
            spec = []
        if isinstance(spec, (str, bytes, Mapping)) or not isinstance(spec, Sequence):
            raise BadRequest(f"effects: expected a list of effects, got {spec!r}")
        allowed = None if allowed_vst3_dirs is None else [Path(d).expanduser().resolve() for d in allowed_vst3_dirs]
        effects: list[_Effect] = []
        for index, entry in enumerate(spec):
            effects.append(_build_effect(index, entry, sample_rate, {e.name for e in effects}, allowed))
        chain = cls(effects, sample_rate)
        if effects:
            chain._prime(num_channels)
            log.info(
                "effects: chain %s at %d Hz",
                ", ".join(f"{e.name} ({e.kind} {e.title})" for e in effects),
                sample_rate,
            )
        return chain

    @property
    def names(self) -> tuple[str, ...]:
        """The effects' names, in processing order."""
        return tuple(self._by_name)

    def __len__(self) -> int:
        return len(self._effects)

    # -- audio thread --------------------------------------------------------------------------------

    def process(self, audio: np.ndarray, reset: bool = False) -> np.ndarray:
        """Run one block through the chain and return the processed block (same shape).

        `audio` is float32 `(num_channels, num_samples)`, any number of samples. With `reset=False`
        (streaming), effect state continues from the previous call; `reset=True` clears it first.
        Parameter changes accepted since the last call are applied before this block. An empty
        chain returns `audio` itself. A plugin with latency delays its output by that latency.
        """
        if not isinstance(audio, np.ndarray) or audio.ndim != 2 or audio.dtype != np.float32:
            got = f"{audio.dtype} array of shape {audio.shape}" if isinstance(audio, np.ndarray) else repr(audio)
            raise BadRequest(f"audio: expected a float32 array shaped (num_channels, num_samples), got {got}")
        if not self._effects:
            return audio
        if self._pending or self._reset_pending:  # unlocked peek: a change landing now waits one block
            reset = self._take_pending() or reset
        num_channels, num_samples = audio.shape
        if num_channels == 0:
            raise BadRequest("audio: expected at least one channel, got shape (0, n)")
        if reset or num_channels != self._silence.shape[0]:
            self._prime(num_channels)
        if num_samples == 0:
            return audio
        out = self._board.process(audio, self.sample_rate, buffer_size=MAX_BLOCK_SAMPLES, reset=False)
        if out.shape[1] < num_samples:
            # A plugin with latency returned fewer samples than it was given: it is still filling
            # up. Silence stands in for the samples it owes, so every block keeps its length.
            padded = np.zeros_like(audio)
            padded[:, num_samples - out.shape[1] :] = out
            out = padded
        return out

    def _take_pending(self) -> bool:
        with self._lock:
            pending, self._pending = self._pending, {}
            reset, self._reset_pending = self._reset_pending, False
        for (index, parameter), prepared in pending.items():
            self._effects[index].apply(parameter, prepared)
        return reset

    def _prime(self, num_channels: int) -> None:
        """Clear every effect's state and prepare it for `num_channels` and MAX_BLOCK_SAMPLES.

        Running one full-size block of silence does two things the stream relies on: pedalboard
        learns the channel count, so later blocks of 1 or 2 samples are not taken for interleaved
        audio, and no later block is larger than the one the effects were prepared for, so they
        are never prepared again (which would clear their state) mid-stream.
        """
        silence = self._silence
        if silence.shape[0] != num_channels:
            silence = np.zeros((num_channels, MAX_BLOCK_SAMPLES), dtype=np.float32)
        # pedalboard reloads a VST3 on reset=True, which it only allows on the main thread; the
        # stream's worker (and the daemon's start-up thread) are not it, so there the state is
        # flushed with the block of silence instead of reloaded.
        on_main = threading.current_thread() is threading.main_thread()
        if not on_main:
            import pedalboard

            for plugin in self._board:
                if not isinstance(plugin, pedalboard.VST3Plugin):
                    plugin.reset()  # built-ins clear their state on any thread
        try:
            self._board.process(silence, self.sample_rate, buffer_size=MAX_BLOCK_SAMPLES, reset=on_main)
        except (ValueError, RuntimeError) as err:  # e.g. a stereo-only VST3 given mono audio
            raise BadRequest(
                f"audio: this chain ({', '.join(self.names)}) cannot process {num_channels}-channel audio: {err}"
            ) from err
        self._silence = silence  # only once it worked: a failed width is tried again next block

    # -- control (any thread) ------------------------------------------------------------------------

    def set_parameter(self, effect: str, parameter: str, value: Any) -> dict[str, Any]:
        """Validate now, apply at the start of the next `process` block. Thread-safe.

        Raises `NotFound` for an unknown effect and `BadRequest` for an unknown or read-only
        parameter or a value outside its range; the message names all three.
        """
        target = self._by_name.get(effect) if isinstance(effect, str) else None
        if target is None:
            raise NotFound("effects: " + _unknown("effect", str(effect), self._by_name) + " (in this chain)")
        if not isinstance(parameter, str):
            raise BadRequest(f"effect {effect!r}: expected a parameter name, got {parameter!r}")
        index = self._index[target.name]
        with self._control_lock:
            shown, prepared = target.validate(parameter, value)
            with self._lock:
                self._pending[(index, parameter)] = prepared  # a newer value for the same key wins
                target.values[parameter] = shown
        log.debug("effects: %s.%s = %r (next block)", effect, parameter, shown)
        return {"effect": effect, "parameter": parameter, "value": shown}

    def reset(self) -> None:
        """Clear every effect's state (reverb tails, delay lines) before the next block. Thread-safe."""
        with self._lock:
            self._reset_pending = True

    def describe(self) -> list[dict[str, Any]]:
        """Each effect's name, kind, plugin and parameters with their values and allowed ranges.

        Values are the last accepted ones, including changes waiting for the next block.
        """
        with self._lock:
            snapshots = [dict(e.values) for e in self._effects]
        return [e.describe(values) for e, values in zip(self._effects, snapshots, strict=True)]
