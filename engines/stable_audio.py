"""Stable Audio Open through diffusers: a text prompt becomes up to 47 s of stereo audio.

`StableAudioPipeline` (a T5 text encoder and its tokenizer, a projection of the text and the
length, a DiT that denoises latents, EDM DPM-Solver steps, and the Oobleck VAE that decodes them
to 44.1 kHz stereo) is loaded once with `from_pretrained` and kept warm. Where the weights come
from: the configured source, a hub name resolved through the Hugging Face cache (downloaded when
online; `stabilityai/stable-audio-open-1.0` is gated: accept its licence on the hub first) or a
folder saved with `save_pretrained`.

The model makes sound effects and loops as well as music; unlike MusicGen it is told the length
it should fill (`audio_end_in_s`), and its longest clip is a property of the checkpoint
(`transformer.sample_size * vae hop / sampling rate`: 47.55 s for stable-audio-open-1.0), which
`max_seconds` reads from a folder's configs without loading any weights.

One progress report per denoising step; the step callback raises to cancel. The same seed, prompt
and steps give the same audio. Nothing heavy happens at import.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from bridge.errors import BadRequest, NotFound, Unavailable
from engines.base import Engine
from engines.generation import Generated, GenerationRequest, OnStep, _first_line, _is_path
from engines.hub import cached_first

log = logging.getLogger(__name__)

STABLE_AUDIO_OPEN = "stable-audio-open"  # the name a request or config uses for the family
DEFAULT_SOURCE = "stabilityai/stable-audio-open-1.0"
PIPELINE_CLASS = "StableAudioPipeline"
# stable-audio-open-1.0: 1024 latents x 2048 samples at 44.1 kHz = 47.55 s; Replicate's SAO takes 47.
HUB_MAX_SECONDS = 47.0
DEFAULT_STEPS = 100  # diffusers' default for this pipeline


def is_stable_audio(model: str) -> bool:
    """Whether `model` names Stable Audio Open: the family name, a hub name of it, or a folder
    whose `model_index.json` is a StableAudioPipeline."""
    if not isinstance(model, str) or not model.strip():
        return False
    if model == STABLE_AUDIO_OPEN or model.rstrip("/").rsplit("/", 1)[-1].startswith("stable-audio-open"):
        return True
    return _pipeline_class(Path(model).expanduser()) == PIPELINE_CLASS


def _pipeline_class(folder: Path) -> str | None:
    index = folder / "model_index.json"
    try:
        return str(json.loads(index.read_text(encoding="utf-8")).get("_class_name") or "") if index.is_file() else None
    except (OSError, ValueError):
        return None


def max_seconds(source: str) -> float:
    """The longest clip `source` can make: read from a saved folder's configs (no weights), else
    stable-audio-open-1.0's."""
    folder = Path(source).expanduser()
    try:
        transformer = json.loads((folder / "transformer" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
        hop = math.prod(int(r) for r in vae["downsampling_ratios"])
        return float(transformer["sample_size"]) * hop / float(vae["sampling_rate"])
    except (OSError, ValueError, KeyError, TypeError):
        return HUB_MAX_SECONDS


def available_source(source: str) -> str | None:
    """The folder holding `source`'s pipeline on this machine (a saved folder, or the hub name's
    snapshot in the Hugging Face cache); None when it is not here. Reads no weights, never goes
    online: for `flowstate doctor`."""
    folder = Path(source).expanduser()
    if _is_path(source):
        return str(folder) if _pipeline_class(folder) == PIPELINE_CLASS else None
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(source, "model_index.json")
    except HFValidationError:
        return None  # not a valid repo id, so it cannot be cached
    return str(Path(cached).parent) if isinstance(cached, str) else None


class StableAudioEngine(Engine):
    """Stable Audio Open kept warm: `process(request, on_step)` returns `Generated` (stereo) at
    the model's rate. `request.steps` and `request.negative_prompt` apply; a melody does not."""

    name = "stable-audio-open"

    def __init__(self, source: str = DEFAULT_SOURCE, device: str = "auto", steps: int = DEFAULT_STEPS) -> None:
        if not isinstance(source, str) or not source.strip():
            raise BadRequest(f"model: expected a Stable Audio Open hub name such as {DEFAULT_SOURCE!r} or a folder, "
                             f"got {source!r}")
        super().__init__(device)
        self.source = source
        self.default_steps = steps
        self._pipeline: Any = None

    @property
    def _pipe(self) -> Any:
        if self._pipeline is None:
            raise Unavailable("generate: the Stable Audio Open engine is not loaded")
        return self._pipeline

    @property
    def sample_rate(self) -> int:
        return int(self._pipe.vae.config.sampling_rate)

    @property
    def max_seconds(self) -> float:
        pipe = self._pipe
        return float(pipe.transformer.config.sample_size) * pipe.vae.hop_length / self.sample_rate

    def _load(self) -> None:
        from diffusers import StableAudioPipeline

        source = str(Path(self.source).expanduser()) if _is_path(self.source) else self.source
        if _is_path(self.source) and not Path(source).is_dir():
            raise NotFound(f"generate: Stable Audio Open folder {self.source!r} does not exist; save a pipeline "
                           "there with save_pretrained or name a hub model")
        try:
            pipeline = cached_first(lambda local: StableAudioPipeline.from_pretrained(source, local_files_only=local),
                                    source)
        except (OSError, ValueError) as err:  # not in the cache and offline, gated, no model_index.json ...
            raise NotFound(
                f"generate: Stable Audio Open could not be loaded from {self.source!r} ({_first_line(err)}). Fix: "
                f"accept the licence of {DEFAULT_SOURCE} on the hub and run once online so it lands in the cache, or "
                "set generate.stable_audio_model to a folder saved with save_pretrained"
            ) from err
        except Exception as err:  # a corrupt weight file, a config this diffusers cannot build
            raise Unavailable(f"generate: loading {self.source!r} failed: {_first_line(err)}") from err
        pipeline.set_progress_bar_config(disable=True)
        pipeline.to(self.device)
        self._pipeline = pipeline
        log.info("stable-audio-open: %s on %s, %d Hz, up to %.2f s", self.source, self.device, self.sample_rate,
                 self.max_seconds)

    def _close(self) -> None:
        self._pipeline = None

    def _process(self, request: GenerationRequest, on_step: OnStep | None = None) -> Generated:
        import torch

        pipe = self._pipe
        if request.melody is not None:
            raise BadRequest("generate: melody_path needs a MusicGen melody model; Stable Audio Open takes none")
        if request.seconds > self.max_seconds + 1e-6:
            raise BadRequest(f"generate: {request.seconds:.2f} s is longer than {self.source!r} can make "
                             f"({self.max_seconds:.2f} s)")
        steps = int(request.steps or self.default_steps)
        done = 0

        def callback(step: int, timestep: Any, latents: Any) -> None:
            nonlocal done
            done += 1
            if on_step is not None:
                on_step(min(1.0, done / steps))  # raises to cancel

        options: dict[str, Any] = {}
        if request.guidance_scale is not None:
            options["guidance_scale"] = float(request.guidance_scale)
        if request.negative_prompt:
            options["negative_prompt"] = request.negative_prompt
        generator = torch.Generator(device="cpu").manual_seed(request.seed)
        with torch.inference_mode():
            out = pipe(request.prompt, audio_end_in_s=float(request.seconds), num_inference_steps=steps,
                       generator=generator, callback=callback, callback_steps=1, **options)
        audio = out.audios[0].detach().to("cpu", torch.float32).numpy()
        return Generated(np.ascontiguousarray(audio), self.sample_rate, done)

