"""MusicGen through transformers: a text prompt (and, with a melody model, a clip) becomes audio.

The engine loads a MusicGen checkpoint once and keeps it warm: `MusicgenForConditionalGeneration`
with its `AutoProcessor`, or `MusicgenMelodyForConditionalGeneration` when the checkpoint's
config says `musicgen_melody`. Where the weights come from, in order: the configured model (a hub
name, resolved through the Hugging Face cache, or a folder saved with `save_pretrained`), then
`generate.local_dir`. No weight package ships MusicGen, so a machine without either gets a
`not_found` naming each place that was tried.

Generation is sampled token by token (one step = one EnCodec frame, 50 per second at 32 kHz); a
`StoppingCriteria` called once per step reports `steps / max_new_tokens` and lets the caller
cancel within a step (its callback raises). The same seed and prompt give the same samples.

The helpers after the engine turn the model's audio into what a DAW wants (resampling is
`engines.resample.resample`): `fit_length` (exact frames, short fades),
`integrated_loudness` (ITU-R BS.1770-4: K-weighting, 400 ms blocks, absolute and relative gates)
and `normalise_loudness` (to a target in LUFS, then scaled down if the sample peak would pass a
ceiling; no limiter, so a very peaky clip may end below the target, and the result says so).

Nothing heavy happens at import: torch and transformers are imported when a model is loaded.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bridge.errors import BadRequest, NotFound, Unavailable
from engines.base import Engine
from engines.embeddings import looks_like_path
from engines.resample import resample_tensor

log = logging.getLogger(__name__)

DEFAULT_MODEL = "facebook/musicgen-small"
MUSICGEN = "musicgen"
MUSICGEN_MELODY = "musicgen_melody"
MODEL_TYPES = (MUSICGEN, MUSICGEN_MELODY)

# A step callback: gets the fraction of steps done; raising from it stops generation.
OnStep = Callable[[float], None]


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate. `melody` is `(channels, frames)` float32 at `melody_sample_rate`."""

    prompt: str
    seconds: float
    seed: int
    melody: np.ndarray | None = None
    melody_sample_rate: int = 0
    guidance_scale: float | None = None
    temperature: float | None = None
    top_k: int | None = None
    steps: int | None = None  # diffusion steps (Stable Audio Open); None: the engine's default
    negative_prompt: str = ""  # what to steer away from (Stable Audio Open)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise BadRequest(f"prompt: expected a non-empty description of the music, got {self.prompt!r}")
        if not math.isfinite(self.seconds) or self.seconds <= 0:
            raise BadRequest(f"seconds: expected a length in seconds > 0, got {self.seconds!r}")
        melody = self.melody
        if melody is not None and (melody.ndim != 2 or melody.shape[1] == 0 or self.melody_sample_rate <= 0):
            raise BadRequest(f"melody: expected (channels, frames) audio with a sample rate, got shape "
                             f"{melody.shape} at {self.melody_sample_rate} Hz")
        if self.steps is not None and not 1 <= self.steps <= 1000:
            raise BadRequest(f"steps: expected 1..1000 diffusion steps, got {self.steps!r}")


@dataclass(frozen=True)
class Generated:
    """The model's output: `(channels, frames)` float32 at the model's own sample rate."""

    audio: np.ndarray
    sample_rate: int
    steps: int


# --------------------------------------------------------------------------------------------
# Loading


def _is_path(model: str) -> bool:
    """A folder spelled as a path (absolute, Windows' C:\\… and .\\… too, ~, ./ or ../, or a folder
    that exists), not a hub name: a missing configured folder is said to be missing, not a failed download."""
    return looks_like_path(model)  # which also takes any path that exists here, a folder too


def model_sources(model: str, local_dir: Path | None) -> list[tuple[str, str]]:
    """The places to try, in order, as (what it is, where): the configured model, then local_dir."""
    if not isinstance(model, str) or not model.strip():
        raise BadRequest(f"model: expected a MusicGen hub name such as {DEFAULT_MODEL!r} or a folder, got {model!r}")
    sources = [("configured folder" if _is_path(model) else "hub name", model)]
    if local_dir is not None and str(local_dir) != model:
        sources.append(("generate.local_dir", str(local_dir)))
    return sources


def local_model_type(model: str, local_dir: Path | None) -> str | None:
    """The model type from the first local `config.json` among the sources, without loading
    anything heavy; None when no source is a local folder with one (a hub name)."""
    for kind, where in model_sources(model, local_dir):
        if kind == "hub name":
            return None  # the hub name comes first; only loading it says what it is
        config = Path(where).expanduser() / "config.json"
        if config.is_file():
            try:
                return str(json.loads(config.read_text(encoding="utf-8")).get("model_type") or "")
            except (OSError, ValueError):
                return None
    return None


def available_source(model: str, local_dir: Path | None) -> tuple[str, str, str] | None:
    """(what, where, model type) of the first source already on this machine (a folder with a
    config.json, or a hub name in the Hugging Face cache); None when none is. Reads no weights
    and never goes online: for `flowstate doctor`."""
    for kind, where in model_sources(model, local_dir):
        if kind == "hub name":
            from huggingface_hub import try_to_load_from_cache
            from huggingface_hub.errors import HFValidationError

            try:
                cached = try_to_load_from_cache(where, "config.json")
            except HFValidationError:
                continue  # not a valid repo id, so it cannot be cached
            config = Path(cached) if isinstance(cached, str) else None
        else:
            config = Path(where).expanduser() / "config.json"
        if config is not None and config.is_file():
            try:
                model_type = str(json.loads(config.read_text(encoding="utf-8")).get("model_type") or "?")
            except (OSError, ValueError):
                model_type = "unreadable config.json"
            return kind, where, model_type
    return None


@dataclass
class _Loaded:
    model: Any
    processor: Any  # MusicgenProcessor (plain) or a tokenizer (melody)
    model_type: str
    source: str
    chroma: dict[str, Any] | None  # melody: n_fft, hop_length, num_chroma, sampling_rate, chunk_length


def load_musicgen(model: str, local_dir: Path | None, device: Any) -> _Loaded:
    """Load the first source that holds a MusicGen checkpoint; NotFound lists every attempt.

    What is on this machine first (the hub's cache for a hub name, then the folders), the hub's
    download last (engines/hub.py: offline, asking the hub first costs its client's retries)."""
    tried: list[str] = []
    sources = model_sources(model, local_dir)
    for kind, where in sources:
        source = str(Path(where).expanduser()) if kind != "hub name" else where
        if kind != "hub name" and not Path(source).is_dir():
            tried.append(f"{kind} {where!r}: no such folder")
            continue
        try:
            return _load_source(source, device, local_files_only=True)
        except (OSError, ValueError) as err:  # not in the cache, no config.json ...
            if kind != "hub name" or not isinstance(err, OSError):  # a hub name not cached is downloaded next
                tried.append(f"{kind} {where!r}: {_first_line(err)}")
    for kind, where in sources:
        if kind != "hub name":
            continue
        try:
            return _load_source(where, device, local_files_only=False)
        except (OSError, ValueError) as err:  # offline, no such model, gated ...
            tried.append(f"{kind} {where!r}: {_first_line(err)}")
    tried.append("weight package: none ships MusicGen weights")
    raise NotFound(
        f"generate: no MusicGen model could be loaded; tried {'; '.join(tried)}. Fix: run once with internet "
        f"access so {model!r} lands in the Hugging Face cache, or save a model with save_pretrained into a "
        "folder and set generate.model (or generate.local_dir) to it"
    )


def _load_source(source: str, device: Any, local_files_only: bool) -> _Loaded:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
    model_type = getattr(config, "model_type", "")
    if model_type not in MODEL_TYPES:
        raise BadRequest(f"generate: model {source!r} is a {model_type!r} model; expected MusicGen "
                         f"({', '.join(MODEL_TYPES)})")
    try:
        if model_type == MUSICGEN_MELODY:
            loaded = _load_melody(source, local_files_only)
        else:
            from transformers import AutoProcessor, MusicgenForConditionalGeneration

            local = {"local_files_only": local_files_only}
            loaded = _Loaded(MusicgenForConditionalGeneration.from_pretrained(source, **local),
                             AutoProcessor.from_pretrained(source, **local), model_type, source, None)
    except (OSError, ValueError):
        raise
    except Exception as err:  # a corrupt safetensors file, a config this transformers cannot build
        raise Unavailable(f"generate: loading {source!r} failed: {_first_line(err)}") from err
    loaded.model.to(device)
    loaded.model.eval()
    loaded.model.requires_grad_(False)
    return loaded


def _load_melody(source: str, local_files_only: bool) -> _Loaded:
    """The melody model with its tokenizer; its chroma settings are read from the feature
    extractor's config, because transformers' own extractor needs torchaudio, which has no
    build for the torch this project pins (`melody_chroma` computes the same features)."""
    from transformers import AutoTokenizer, MusicgenMelodyForConditionalGeneration
    from transformers.feature_extraction_utils import FeatureExtractionMixin

    settings, _ = FeatureExtractionMixin.get_feature_extractor_dict(source, local_files_only=local_files_only)
    chroma = {
        "n_fft": int(settings.get("n_fft", 16384)),
        "hop_length": int(settings.get("hop_length", 4096)),
        "num_chroma": int(settings.get("num_chroma", 12)),
        "sampling_rate": int(settings.get("sampling_rate", 32000)),
        "chunk_length": float(settings.get("chunk_length", 30)),
    }
    model = MusicgenMelodyForConditionalGeneration.from_pretrained(source, local_files_only=local_files_only)
    return _Loaded(model, AutoTokenizer.from_pretrained(source, local_files_only=local_files_only), MUSICGEN_MELODY,
                   source, chroma)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".strip()


# --------------------------------------------------------------------------------------------
# The engine


class MusicGenEngine(Engine):
    """MusicGen kept warm: `process(request, on_step)` returns `Generated` at the model's rate."""

    name = "musicgen"

    def __init__(self, model: str = DEFAULT_MODEL, local_dir: Path | None = None, device: str = "auto") -> None:
        model_sources(model, local_dir)  # a bad name fails here, before anything loads
        super().__init__(device)
        self.model_name = model
        self.local_dir = local_dir
        self._loaded_model: _Loaded | None = None

    # -- what the loaded model is ----------------------------------------------------------------

    @property
    def _state(self) -> _Loaded:
        if self._loaded_model is None:
            raise Unavailable("generate: the MusicGen engine is not loaded")
        return self._loaded_model

    @property
    def sample_rate(self) -> int:
        return int(self._state.model.config.audio_encoder.sampling_rate)

    @property
    def frame_rate(self) -> float:
        audio = self._state.model.config.audio_encoder
        return float(audio.sampling_rate) / math.prod(audio.upsampling_ratios)

    @property
    def num_codebooks(self) -> int:
        return int(self._state.model.config.decoder.num_codebooks)

    @property
    def supports_melody(self) -> bool:
        return self._state.model_type == MUSICGEN_MELODY

    @property
    def max_seconds(self) -> float:
        """The longest clip the decoder's positions allow."""
        positions = int(self._state.model.config.decoder.max_position_embeddings)
        return (positions - self.num_codebooks - 1) / self.frame_rate

    @property
    def source(self) -> str:
        return self._state.source

    def steps_for(self, seconds: float) -> int:
        """Decoder steps for at least `seconds` of audio: one frame per step, less the codebook
        delay pattern (frames = steps - codebooks + 1), plus one frame of margin."""
        return math.ceil(seconds * self.frame_rate) + self.num_codebooks

    # -- Engine ------------------------------------------------------------------------------------

    def _load(self) -> None:
        self._loaded_model = load_musicgen(self.model_name, self.local_dir, self.device)
        log.info("musicgen: %s (%s) on %s, %d Hz", self._loaded_model.source, self._loaded_model.model_type,
                 self.device, self.sample_rate)

    def _close(self) -> None:
        self._loaded_model = None

    def _process(self, request: GenerationRequest, on_step: OnStep | None = None) -> Generated:
        import torch

        state = self._state
        if request.melody is not None and not self.supports_melody:
            raise BadRequest(f"generate: melody_path needs a melody model (model type {MUSICGEN_MELODY!r}, e.g. "
                             f"facebook/musicgen-melody); {state.source!r} is {state.model_type!r}")
        if request.seconds > self.max_seconds:
            raise BadRequest(f"generate: {request.seconds:.2f} s is longer than {state.source!r} can make "
                             f"({self.max_seconds:.1f} s)")
        steps = self.steps_for(request.seconds)
        inputs = self._inputs(request)
        options: dict[str, Any] = {"max_new_tokens": steps, "do_sample": True}
        for key in ("guidance_scale", "temperature", "top_k"):
            if getattr(request, key) is not None:
                options[key] = getattr(request, key)
        hook = _StepHook(steps, on_step)
        torch.manual_seed(request.seed)  # under the engine's lock: nothing else draws meanwhile
        with torch.inference_mode():
            values = state.model.generate(**inputs, **options, stopping_criteria=_criteria(hook))
        audio = values[0].detach().to("cpu", torch.float32).numpy()
        return Generated(np.ascontiguousarray(audio), self.sample_rate, hook.steps)

    def _inputs(self, request: GenerationRequest) -> dict[str, Any]:
        import torch

        state = self._state
        if state.model_type == MUSICGEN_MELODY:
            inputs = dict(state.processor([request.prompt], padding=True, return_tensors="pt"))
            if request.melody is not None:
                assert state.chroma is not None  # set whenever the type is melody
                inputs["input_features"] = melody_chroma(request.melody, request.melody_sample_rate, **state.chroma)
        else:
            inputs = dict(state.processor(text=[request.prompt], padding=True, return_tensors="pt"))
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


class _StepHook:
    """Called by generate once per decoder step: progress, and a chance to cancel."""

    def __init__(self, max_steps: int, on_step: OnStep | None) -> None:
        self.max_steps = max_steps
        self.on_step = on_step
        self.steps = 0

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        self.steps += 1
        if self.on_step is not None:
            self.on_step(min(1.0, self.steps / self.max_steps))  # raises to cancel
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _criteria(hook: _StepHook) -> Any:
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StepCriteria(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return hook(input_ids, scores, **kwargs)

    return StoppingCriteriaList([StepCriteria()])


def melody_chroma(audio: np.ndarray, sample_rate: int, *, n_fft: int, hop_length: int, num_chroma: int,
                  sampling_rate: int, chunk_length: float) -> Any:
    """MusicGen Melody's conditioning: a one-hot chromagram `(1, frames, num_chroma)`.

    The clip is mixed to mono, resampled to the extractor's rate and cut to `chunk_length`
    seconds; a power spectrogram (Hann window, normalised, centred) is folded onto pitch classes
    with transformers' `chroma_filter_bank`; each frame keeps only its strongest class.
    """
    import torch
    from transformers.audio_utils import chroma_filter_bank

    mono = torch.from_numpy(np.ascontiguousarray(audio.mean(axis=0, keepdims=True), dtype=np.float32))
    mono = resample_tensor(mono, sample_rate, sampling_rate)[:, : int(chunk_length * sampling_rate)]
    if mono.shape[-1] < n_fft:  # too short for one window: centre it in silence
        pad = n_fft - mono.shape[-1]
        mono = torch.nn.functional.pad(mono, (pad // 2, pad - pad // 2))
    window = torch.hann_window(n_fft)
    spectrum = torch.stft(mono, n_fft, hop_length, n_fft, window, center=True, pad_mode="reflect",
                          normalized=True, return_complex=True).abs() ** 2
    filters = torch.from_numpy(chroma_filter_bank(num_frequency_bins=n_fft, num_chroma=num_chroma,
                                                  sampling_rate=sampling_rate, tuning=0)).float()
    chroma = torch.einsum("cf,bft->btc", filters, spectrum)
    onehot = torch.zeros_like(chroma)
    return onehot.scatter_(-1, chroma.argmax(-1, keepdim=True), 1.0)


# --------------------------------------------------------------------------------------------
# From the model's audio to the DAW's


def fit_length(audio: np.ndarray, frames: int, sample_rate: int, fade_in_ms: float, fade_out_ms: float) -> np.ndarray:
    """Exactly `frames` frames (cut, or padded with silence), with linear fades at both ends."""
    out = np.zeros((audio.shape[0], frames), dtype=np.float32)
    keep = min(frames, audio.shape[1])
    out[:, :keep] = audio[:, :keep]
    fade_in = min(frames, round(fade_in_ms * sample_rate / 1000.0))
    fade_out = min(frames, round(fade_out_ms * sample_rate / 1000.0))
    if fade_in > 0:
        out[:, :fade_in] *= np.linspace(0.0, 1.0, fade_in, endpoint=False, dtype=np.float32)
    if fade_out > 0:
        out[:, frames - fade_out :] *= np.linspace(1.0, 0.0, fade_out, dtype=np.float32)
    return out


# K-weighting (ITU-R BS.1770-4) as two biquads given by their analogue parameters and the
# bilinear transform, so every sample rate gets its own coefficients (at 48 kHz they are the
# standard's table): a high shelf (+4 dB above ~1.7 kHz, the head's effect) and a high-pass at
# ~38 Hz (the revised low-frequency B-weighting curve).
_SHELF = (1681.974450955533, 3.999843853973347, 0.7071752369554196)  # f0 Hz, gain dB, Q
_SHELF_MID_EXPONENT = 0.4996667741545416  # the shelf's mid-band gain is high-band gain ** this
_HIGHPASS = (38.13547087602444, 0.5003270373238773)  # f0 Hz, Q
BLOCK_SECONDS = 0.4
BLOCK_STEP = 0.25  # of a block: 75 % overlap
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0


def _k_weighting(sample_rate: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(b, a) of the two K-weighting stages at `sample_rate`."""
    f0, gain_db, q = _SHELF
    k = math.tan(math.pi * f0 / sample_rate)
    high = 10.0 ** (gain_db / 20.0)
    mid = high**_SHELF_MID_EXPONENT
    a0 = 1.0 + k / q + k * k
    shelf_b = np.array([high + mid * k / q + k * k, 2.0 * (k * k - high), high - mid * k / q + k * k]) / a0
    shelf_a = np.array([a0, 2.0 * (k * k - 1.0), 1.0 - k / q + k * k]) / a0
    f0, q = _HIGHPASS
    k = math.tan(math.pi * f0 / sample_rate)
    a0 = 1.0 + k / q + k * k
    high_b = np.array([1.0, -2.0, 1.0])
    high_a = np.array([a0, 2.0 * (k * k - 1.0), 1.0 - k / q + k * k]) / a0
    return [(shelf_b, shelf_a), (high_b, high_a)]


def integrated_loudness(audio: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness in LUFS of `(channels, frames)` audio (mono and stereo: every channel
    weighs 1); -inf for silence. A clip shorter than one 400 ms block is measured as one block."""
    from scipy.signal import lfilter

    weighted = np.asarray(audio, dtype=np.float64)
    for b, a in _k_weighting(sample_rate):
        weighted = lfilter(b, a, weighted, axis=-1)
    squares = weighted**2
    block = round(BLOCK_SECONDS * sample_rate)
    if squares.shape[-1] <= block:
        powers = np.array([squares.mean(axis=-1).sum()])
    else:
        step = round(block * BLOCK_STEP)
        starts = np.arange(0, squares.shape[-1] - block + 1, step)
        cumulative = np.concatenate([np.zeros((squares.shape[0], 1)), np.cumsum(squares, axis=-1)], axis=-1)
        powers = ((cumulative[:, starts + block] - cumulative[:, starts]) / block).sum(axis=0)
    with np.errstate(divide="ignore"):
        levels = -0.691 + 10.0 * np.log10(powers)
    gated = powers[levels > ABSOLUTE_GATE_LUFS]
    if gated.size == 0:
        return -math.inf
    relative = -0.691 + 10.0 * math.log10(gated.mean()) + RELATIVE_GATE_LU
    with np.errstate(divide="ignore"):
        kept = gated[-0.691 + 10.0 * np.log10(gated) > relative]
    return -0.691 + 10.0 * math.log10(kept.mean())


@dataclass(frozen=True)
class Normalised:
    audio: np.ndarray
    loudness_lufs: float  # after normalising (-inf: silence, left as it was)
    gain_db: float
    peak_dbfs: float
    limited_by_peak: bool


def normalise_loudness(audio: np.ndarray, sample_rate: int, target_lufs: float, ceiling_dbfs: float) -> Normalised:
    """Gain to `target_lufs` integrated loudness, reduced so the sample peak stays at or under
    `ceiling_dbfs`. Silence is returned unchanged."""
    measured = integrated_loudness(audio, sample_rate)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if not math.isfinite(measured) or peak == 0.0:
        return Normalised(audio, -math.inf, 0.0, -math.inf, False)
    gain_db = target_lufs - measured
    ceiling_gain_db = ceiling_dbfs - 20.0 * math.log10(peak)
    limited = gain_db > ceiling_gain_db
    gain_db = min(gain_db, ceiling_gain_db)
    out = (audio * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32)
    return Normalised(out, measured + gain_db, gain_db, 20.0 * math.log10(peak) + gain_db, limited)
