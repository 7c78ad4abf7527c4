"""`generate` as a job: MusicGen or Stable Audio Open makes a loop at the DAW's tempo, written as a
WAV the DAW imports.

`check_request` runs when the command arrives: it resolves the preset, the length (bars at a tempo
from the request, else the DAW's last report or MIDI clock, else the default; or seconds), the
seed (a random one is chosen and recorded when none is given), the melody clip and the output
path, so a bad request is answered at once and the job's args say exactly what will be made.
`GenerateJob` runs on a job worker, locally (the model kept warm) or on a cloud tier the router
picks, then resamples to the project's rate, trims to the exact bar length with short fades,
normalises the loudness and writes the file atomically.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from bridge.config import Config
from bridge.daw import DawState, bars_to_seconds
from bridge.engine_job import EngineJob
from bridge.errors import BadRequest
from bridge.files import audio_writer, check_name
from bridge.jobs import JobContext
from bridge.paths import PathPolicy, looks_like_path
from bridge.router import LOCAL, deadline_class
from engines.cloud.base import CheckCancelled, Progress, TierJob, TierResult
from engines.generation import (
    MUSICGEN_MELODY,
    GenerationRequest,
    MusicGenEngine,
    fit_length,
    local_model_type,
    normalise_loudness,
)
from engines.resample import resample
from engines.stable_audio import STABLE_AUDIO_OPEN, StableAudioEngine, is_stable_audio, max_seconds

if TYPE_CHECKING:
    from engines.generation import MusicGenEngine
    from engines.stable_audio import StableAudioEngine

log = logging.getLogger(__name__)

KIND = "generate"
TASK = "generate"  # the router's name for the task (router.order.generate)
REQUEST = "request"  # tempo_source when the request named the tempo
ENCODINGS = {"pcm16": "PCM_16", "pcm24": "PCM_24", "float": "FLOAT"}
MAX_SEED = 2**31 - 1
# Longest label part of a file name: with the tempo, bars and seed it stays far below any name limit.
SLUG_CHARACTERS = 80
# Share of the job's progress: loading, generating (per decoder step), then finishing.
LOADED, GENERATED = 0.05, 0.9
# Request options a preset may also set (the request's own value wins).
PRESET_KEYS = ("prompt", "bars", "seconds", "seed", "guidance_scale", "temperature", "top_k")
MUSICGEN = "musicgen"  # the job's `family`: which engine makes it
# token sampling and melody: MusicGen's options
MUSICGEN_ONLY: tuple[str, ...] = ("temperature", "top_k", "melody_path")
STABLE_AUDIO_ONLY: tuple[str, ...] = ("steps", "negative_prompt")  # diffusion options
# Models no local engine runs (AudioCraft and Riffusion pin other torch versions): on Replicate only.
# Name -> (longest clip in seconds, what sets it, the options it does not take).
CLOUD_FAMILIES: dict[str, tuple[float, str, tuple[str, ...]]] = {
    # sepal/audiogen's duration is at most 10 s.
    "audiogen": (10.0, "AudioGen's longest sound on Replicate", ("melody_path", "steps", "negative_prompt")),
    # One spectrogram image, about 5.1 s, is all Riffusion makes: a longer request is refused rather
    # than looped (a loop of a clip that does not follow the tempo would drift off the grid).
    "riffusion": (5.0, "Riffusion's one clip of about 5 s, which it does not loop",
                  ("melody_path", "negative_prompt", "temperature", "top_k", "guidance_scale")),
}


def check_request(args: dict[str, Any], paths: PathPolicy, config: Config, daw: DawState) -> dict[str, Any]:
    """Validate a `generate` request; returns the job's args with every default filled in."""
    settings = config.generate
    merged = _with_preset(args, config)
    prompt = (merged.get("prompt") or "").strip()
    if not prompt:
        raise BadRequest(f"{KIND}: argument 'prompt' expected a description of the music (e.g. 'lofi drums, "
                         f"dusty, 90 bpm'), got {args.get('prompt')!r}; or name a preset ({_preset_names(config)})")
    tempo, tempo_source = (float(args["tempo"]), REQUEST) if args.get("tempo") is not None else daw.tempo()
    numerator, denominator = daw.time_signature()
    # A model named by path is read only inside the model folders or the roots.
    model = paths.model_ref(args.get("model") or settings.model, "model", KIND, configured=settings.model,
                            is_path=looks_like_path)
    family, limit, limit_name = _family(model, merged, config)
    bars, seconds = _length(merged, args, tempo, numerator, denominator, settings.default_bars, limit, limit_name)
    melody_path = _melody(args.get("melody_path") or "", paths, model, config)
    out_dir = paths.output_dir(args.get("out_dir") or str(_default_out_dir(config, paths)), "out_dir", KIND)
    seed = merged.get("seed")
    seed = secrets.randbelow(MAX_SEED) if seed is None else int(seed)
    sample_rate = int(args.get("sample_rate") or settings.sample_rate)
    label = args.get("name") or args.get("preset") or prompt
    length = f"{_number(tempo)}bpm_{_number(bars)}bars" if bars is not None else f"{_number(seconds)}s"
    path = out_dir / check_name(f"{_slug(label)}_{length}_s{seed}.wav", f"{KIND}: the file name", paths.max_name_bytes)
    return {
        "prompt": prompt,
        "preset": args.get("preset") or "",
        "bars": bars,
        "seconds": seconds,
        "frames": round(seconds * sample_rate),
        "tempo": tempo,
        "tempo_source": tempo_source,
        "numerator": numerator,
        "denominator": denominator,
        "seed": seed,
        "melody_path": str(melody_path) if melody_path else "",
        "model": model,
        "out_dir": str(out_dir),
        "path": str(path),
        "track_name": _track_name(label, tempo, bars, seconds),
        "sample_rate": sample_rate,
        "encoding": settings.encoding,
        "guidance_scale": merged.get("guidance_scale"),
        "temperature": merged.get("temperature"),
        "top_k": merged.get("top_k"),
        "family": family,
        "steps": args.get("steps"),
        "negative_prompt": args.get("negative_prompt") or "",
        "loudness_lufs": settings.loudness_lufs,
        "peak_ceiling_dbfs": settings.peak_ceiling_dbfs,
        "fade_in_ms": settings.fade_in_ms,
        "fade_out_ms": settings.fade_out_ms,
        "deadline_seconds": args.get("deadline_seconds"),
        "deadline_class": deadline_class(args, KIND),
    }


def _family(model: str, merged: dict[str, Any], config: Config) -> tuple[str, float, str]:
    """(engine family, longest clip in seconds, what sets that limit) for `model`; options of the
    other family are refused, naming the argument."""
    if model in CLOUD_FAMILIES:
        limit, limit_name, foreign = CLOUD_FAMILIES[model]
        for key in foreign:
            if merged.get(key) not in (None, ""):
                raise BadRequest(f"{KIND}: argument {key!r} does not apply to model {model!r}")
        return model, limit, limit_name
    if is_stable_audio(model):
        family, foreign = STABLE_AUDIO_OPEN, MUSICGEN_ONLY
        limit = max_seconds(stable_audio_source(model, config))
        limit_name = f"the longest clip {model} can make"
    else:
        family, foreign = MUSICGEN, STABLE_AUDIO_ONLY
        limit, limit_name = config.generate.max_seconds, "generate.max_seconds"
    for key in foreign:
        if merged.get(key) not in (None, ""):
            raise BadRequest(f"{KIND}: argument {key!r} does not apply to model {model!r} ({family}); "
                             f"{'MusicGen' if family == STABLE_AUDIO_OPEN else 'Stable Audio Open'} takes it")
    return family, limit, limit_name


def model_family(model: str) -> str:
    """The engine family that runs `model`: stable-audio-open, musicgen, or a cloud-only one (audiogen, riffusion)."""
    if model in CLOUD_FAMILIES:
        return model
    return STABLE_AUDIO_OPEN if is_stable_audio(model) else MUSICGEN


def stable_audio_source(model: str, config: Config) -> str:
    """Where Stable Audio Open's weights come from: the family name means generate.stable_audio_model."""
    return config.generate.stable_audio_model if model == STABLE_AUDIO_OPEN else model


def _with_preset(args: dict[str, Any], config: Config) -> dict[str, Any]:
    """The request's options over its preset's (a request value of None or "" means: not given)."""
    name = args.get("preset") or ""
    if not name:
        return dict(args)
    preset = config.generate.presets.get(name)
    if preset is None:
        raise BadRequest(f"{KIND}: argument 'preset' expected one of generate.presets ({_preset_names(config)}), "
                         f"got {name!r}")
    merged = dict(args)
    for key in PRESET_KEYS:
        if merged.get(key) in (None, ""):
            merged[key] = getattr(preset, key)
    if args.get("seconds") is not None:
        merged["bars"] = None  # a length in the request replaces the preset's, whatever its unit
    elif args.get("bars") is not None:
        merged["seconds"] = None
    return merged


def _preset_names(config: Config) -> str:
    return ", ".join(sorted(config.generate.presets)) or "none configured"


def _length(merged: dict[str, Any], args: dict[str, Any], tempo: float, numerator: int, denominator: int,
            default_bars: float, max_seconds: float, limit_name: str) -> tuple[float | None, float]:
    """(bars or None, seconds): bars at the tempo and time signature, or seconds as asked."""
    bars, seconds = merged.get("bars"), merged.get("seconds")
    if bars is not None and seconds is not None:
        raise BadRequest(f"{KIND}: give bars or seconds, not both (got bars={bars!r}, seconds={seconds!r})")
    if seconds is None:
        bars = float(default_bars if bars is None else bars)
        seconds = bars_to_seconds(bars, tempo, numerator, denominator)
        if seconds > max_seconds:
            raise BadRequest(
                f"{KIND}: bars {_number(bars)} at {_number(tempo)} BPM in {numerator}/{denominator} last "
                f"{seconds:.2f} s, longer than {limit_name} ({_number(max_seconds)} s); ask for at most "
                f"{math.floor(max_seconds / bars_to_seconds(1, tempo, numerator, denominator) * 4) / 4:g} bars"
            )
        return bars, seconds
    seconds = float(seconds)
    if not 0 < seconds <= max_seconds:
        raise BadRequest(f"{KIND}: argument 'seconds' expected a length in (0, {_number(max_seconds)}] "
                         f"({limit_name}), got {seconds!r}")
    return None, seconds


def _melody(raw: str, paths: PathPolicy, model: str, config: Config) -> Path | None:
    """The melody clip, checked to be readable audio, for a model that can take one."""
    if not raw:
        return None
    path, _ = paths.audio_file(raw, "melody_path", KIND)
    kind = local_model_type(model, config.generate.local_dir)
    if kind is not None and kind != MUSICGEN_MELODY:
        raise BadRequest(f"{KIND}: melody_path needs a melody model ({MUSICGEN_MELODY!r}, e.g. "
                         f"facebook/musicgen-melody); model {model!r} is {kind!r}")
    return path


def _default_out_dir(config: Config, paths: PathPolicy) -> Path:
    if config.generate.out_dir is not None:
        return config.generate.out_dir
    if not paths.roots:
        raise BadRequest(f"{KIND}: no paths.roots are configured, so there is nowhere to write; set generate.out_dir")
    return paths.roots[0] / "Flowstate" / "Generated"


def _number(value: float) -> str:
    """12.0 -> '12', 92.5 -> '92.5' (for names and messages)."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _slug(text: str) -> str:
    """Up to six words of the label, letters and digits only, cut so the file name stays short."""
    words = re.findall(r"[A-Za-z0-9]+", text.lower())[:6]
    return "-".join(words)[:SLUG_CHARACTERS].rstrip("-") or "generated"


def _track_name(label: str, tempo: float, bars: float | None, seconds: float) -> str:
    """What the DAW names the new track, e.g. 'Lofi drums dusty (4 bars, 92 BPM)'."""
    words = re.sub(r"\s+", " ", re.sub(r"[^\w\- ]+", " ", label)).strip().split(" ")[:6]
    title = " ".join(words).capitalize() or "Generated"
    length = f"{_number(bars)} bars, {_number(tempo)} BPM" if bars is not None else f"{_number(seconds)} s"
    return f"{title} ({length})"


class GenerateJob(EngineJob):
    """The job handler: one warm engine (MusicGen or Stable Audio Open) per model, reused across jobs."""

    LOCAL_TASK = TASK

    def engine(self, model: str, family: str = MUSICGEN) -> MusicGenEngine | StableAudioEngine:
        settings = self.config.generate
        if family == STABLE_AUDIO_OPEN:
            source = stable_audio_source(model, self.config)
            return self.warm((family, source), lambda: StableAudioEngine(source, settings.engine_device,
                                                                         settings.stable_audio_steps))
        return self.warm(model, lambda: MusicGenEngine(model, settings.local_dir, settings.engine_device))

    def __call__(self, ctx: JobContext) -> dict[str, Any]:
        args = ctx.job.args
        started = time.monotonic()
        # Re-check: the config (roots) may have changed since the job was queued, before a crash.
        out_dir = self.paths.output_dir(args["out_dir"], "out_dir", KIND)
        file_name = check_name(Path(args["path"]).name, f"{KIND}: the file name", self.paths.max_name_bytes)
        melody = self.paths.input_file(args["melody_path"], "melody_path", KIND) if args["melody_path"] else None
        ctx.progress(0.0, stage="loading")
        (audio, rate), where = self._generate_routed(ctx, melody)

        ctx.progress(GENERATED, stage="finishing")
        audio = resample(audio, rate, args["sample_rate"])
        audio = fit_length(audio, args["frames"], args["sample_rate"], args["fade_in_ms"], args["fade_out_ms"])
        level = normalise_loudness(audio, args["sample_rate"], args["loudness_lufs"], args["peak_ceiling_dbfs"])
        ctx.check_cancelled()
        writer = _writer(level.audio, args["sample_rate"], ENCODINGS[args["encoding"]])
        # Opened now, from the root, without following links: the folder checked when the job
        # started may have been swapped for a link since; the file goes through this handle only.
        with self.paths.open_dir(out_dir, "out_dir", KIND, register=ctx.register_output) as folder:
            folder.remove_partials()  # leftovers of an attempt that crashed mid-write
            target = ctx.register_output(folder.path / file_name, folder.anchor)
            folder.write_atomic(file_name, writer)
        ctx.progress(1.0, stage="written")
        return {
            "kind": KIND,  # DAW scripts place a generated loop on a new track when they see this
            "path": str(target),
            "track_name": args["track_name"],
            "seconds": round(args["frames"] / args["sample_rate"], 6),
            "frames": args["frames"],
            "bars": args["bars"],
            "tempo": args["tempo"],
            "tempo_source": args["tempo_source"],
            "numerator": args["numerator"],
            "denominator": args["denominator"],
            "sample_rate": args["sample_rate"],
            "channels": int(level.audio.shape[0]),
            "prompt": args["prompt"],
            "seed": args["seed"],
            "model": args["model"],
            "loudness_lufs": _rounded(level.loudness_lufs),
            "peak_dbfs": _rounded(level.peak_dbfs),
            "limited_by_peak": level.limited_by_peak,
            "elapsed_seconds": round(time.monotonic() - started, 3),
            **where,
        }

    def _generate_routed(self, ctx: JobContext, melody: Path | None) -> tuple[tuple[np.ndarray, int], dict[str, Any]]:
        """Generate on the tier the router picks (this machine's engine is one; a cloud-only model
        has none), falling through its plan when a tier fails."""
        args = ctx.job.args
        seconds = float(args["seconds"])

        def job_for(tier: str, scratch: Path) -> TierJob:
            params = {key: args.get(key) for key in LOCAL_PARAMS} if tier == LOCAL else _tier_params(args)
            return TierJob(task=TASK, params=params, work_dir=scratch, input_path=melody, audio_seconds=seconds,
                           deadline_seconds=args.get("deadline_seconds"))

        def progress(tier: str, fraction: float) -> None:
            ctx.progress(LOADED + (GENERATED - LOADED) * fraction,
                         stage="generating" if tier == LOCAL else f"generating on {tier}")

        def read(result: TierResult) -> tuple[np.ndarray, int]:
            names = result.audio_names()
            return result.read_audio("audio" if "audio" in names else (names or ["audio"])[0], KIND)

        route = self.route(ctx, TASK, args["model"], seconds, cloud=(f"generate model={args['model']}", args["model"]))
        for attempt in route:
            with attempt:
                result = attempt.tier.run(job_for(attempt.name, attempt.scratch), partial(progress, attempt.name),
                                          ctx.check_cancelled)
                return read(result), attempt.ran(result)
        raise route.failure()

    def run(self, job: TierJob, progress: Progress, check_cancelled: CheckCancelled) -> TierResult:
        """The local tier's generate: MusicGen or Stable Audio Open, warm across jobs."""
        params = job.params
        engine = self.engine(params["model"], params.get("family") or MUSICGEN)
        engine.load()
        check_cancelled()
        progress(0.0)
        clip, clip_rate = _read_audio(job.input_path) if job.input_path is not None else (None, 0)
        request = GenerationRequest(
            prompt=params["prompt"], seconds=float(params["seconds"]), seed=int(params["seed"]), melody=clip,
            melody_sample_rate=clip_rate, guidance_scale=params["guidance_scale"], temperature=params["temperature"],
            top_k=params["top_k"], steps=params.get("steps"), negative_prompt=params.get("negative_prompt") or "",
        )

        def on_step(fraction: float) -> None:
            check_cancelled()  # raises JobCanceled out of generate, within one step
            progress(fraction)

        generated = engine.process(request, on_step)
        return TierResult(tier=LOCAL, details={"device": str(engine.device)},
                          audio={"audio": (generated.audio, generated.sample_rate)})


# What the local engine takes from a job's args (its TierJob's params).
LOCAL_PARAMS = ("model", "family", "prompt", "seconds", "seed", "guidance_scale", "temperature", "top_k", "steps",
                "negative_prompt")


def _tier_params(args: dict[str, Any]) -> dict[str, Any]:
    """A generate job's params in the cloud tiers' vocabulary (engines/cloud/selfhosted_wire.py's
    TASK_PARAMS): `duration_seconds`, the options they take under our names, and the family."""
    params: dict[str, Any] = {"prompt": args["prompt"], "duration_seconds": float(args["seconds"]),
                              "seed": args["seed"]}
    for key in ("temperature", "top_k", "steps", "negative_prompt"):  # tiers take these under our names
        if args.get(key) not in (None, ""):
            params[key] = args[key]
    if args.get("family", MUSICGEN) != MUSICGEN:
        params["model_family"] = args["family"]  # which of a tier's generate models runs it
        if args["guidance_scale"] is not None:
            params["guidance_scale"] = args["guidance_scale"]
    return params


def _read_audio(path: Path) -> tuple[np.ndarray, int]:
    """A melody clip as `(channels, frames)` float32 and its sample rate; BadRequest when it cannot be decoded."""
    import soundfile

    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as err:
        raise BadRequest(f"{KIND}: {path} cannot be decoded ({err})") from None
    return np.ascontiguousarray(data.T), int(rate)


def _rounded(value: float) -> float | None:
    """JSON has no -inf: silence reports null."""
    return round(value, 2) if math.isfinite(value) else None


def _writer(audio: np.ndarray, sample_rate: int, subtype: str) -> Callable[[BinaryIO], None]:
    # To the descriptor opened in the checked folder: libsndfile never resolves a name.
    return audio_writer(np.ascontiguousarray(audio.T), sample_rate, subtype, "wav")
