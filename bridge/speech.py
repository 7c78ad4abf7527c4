"""`tts` as a job: check the request, speak the text with a Piper voice, write a WAV atomically.

`check_request` runs when the command arrives (empty text, a voice path that does not exist, an
output folder outside the roots are answered at once); `SpeechJob` runs on a job worker with each
voice kept warm. The WAV is at the project's rate (`tts.sample_rate`, or the request's), resampled
from the voice's own. The router may send the job to MeloTTS on Workers AI when a deadline asks.

`voice=chatterbox` speaks with Chatterbox (expressive, and like a `voice_prompt` clip when one is
given) on Replicate only: its package pins another torch, so no local engine runs it.
"""

from __future__ import annotations

import logging
import re
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bridge.config import Config
from bridge.engine_job import EngineJob
from bridge.errors import BadRequest
from bridge.files import audio_writer, check_name
from bridge.jobs import JobContext
from bridge.licences import describe
from bridge.paths import PathPolicy
from bridge.router import LOCAL, Router, deadline_class
from engines.cloud.base import CheckCancelled, Progress, Tier, TierJob, TierResult
from engines.resample import resample
from engines.speech import Speaker, VoiceLibrary, is_voice_path, speech_file_name

if TYPE_CHECKING:
    from engines.speech import Speaker, VoiceLibrary

log = logging.getLogger(__name__)

KIND = "tts"
TASK = "tts"  # the router's name for the task (router.order.tts)
MAX_CHARACTERS = 10_000
# For the router's estimates before anything is spoken: about 15 characters a second of speech.
CHARACTERS_PER_SECOND = 15.0
NAME = re.compile(r"^[\w\-. ()]{1,120}$")
CHATTERBOX = "chatterbox"
CHATTERBOX_ONLY = ("voice_prompt", "exaggeration", "cfg_weight")  # options only Chatterbox takes


def voice_library(config: Config) -> VoiceLibrary:
    settings = config.tts
    return VoiceLibrary(settings.voices_dir, download=settings.download, package_fallback=settings.package_fallback)


def check_request(args: dict[str, Any], paths: PathPolicy, config: Config) -> dict[str, Any]:
    """Validate a `tts` request; returns the job's args with every default filled in."""
    text = " ".join(str(args["text"]).split())
    if not text:
        raise BadRequest(f"{KIND}: argument 'text' expected something to say, got {args['text']!r}")
    if len(text) > MAX_CHARACTERS:
        raise BadRequest(f"{KIND}: argument 'text' expected at most {MAX_CHARACTERS} characters, got {len(text)}")
    # A voice named by path is read only inside the model folders or the roots.
    voice = paths.model_ref(args.get("voice") or config.tts.voice, "voice", KIND, configured=config.tts.voice,
                            is_path=is_voice_path)
    voice_prompt = ""
    if voice == CHATTERBOX:
        if args.get("speed") is not None:
            raise BadRequest(f"{KIND}: argument 'speed' does not apply to voice 'chatterbox' "
                             "(cfg_weight sets its pace)")
        if args.get("voice_prompt"):
            voice_prompt = str(paths.audio_file(str(args["voice_prompt"]), "voice_prompt", KIND)[0])
    else:
        given = [key for key in CHATTERBOX_ONLY if args.get(key) not in (None, "")]
        if given:
            raise BadRequest(f"{KIND}: argument {given[0]!r} applies to voice 'chatterbox' only, not {voice!r}")
        if is_voice_path(voice) or not config.tts.download:
            voice_library(config).resolve(voice)  # no network involved: answer a missing voice at once
    sample_rate = int(args.get("sample_rate") or config.tts.sample_rate)
    speed = 1.0 if args.get("speed") is None else float(args["speed"])
    out_dir = paths.output_dir(args.get("out_dir") or str(_default_out_dir(config, paths)), "out_dir", KIND)
    name = args.get("name") or speech_file_name(text, f"{voice}|{sample_rate}|{speed}|{text}")
    if not NAME.match(name) or name.startswith("."):
        raise BadRequest(f"{KIND}: argument 'name' expected a file name without folders (letters, digits, "
                         f"spaces, - _ . ( )), got {name!r}")
    file_name = f"{name.removesuffix('.wav')}.wav"
    check_name(name, f"{KIND}: argument 'name'", paths.max_name_bytes)
    check_name(file_name, f"{KIND}: argument 'name'", paths.max_name_bytes)
    return {
        "text": text,
        "voice": voice,
        "sample_rate": sample_rate,
        "speed": speed,
        "out_dir": str(out_dir),
        "path": str(out_dir / file_name),
        "voice_prompt": voice_prompt,
        "exaggeration": args.get("exaggeration"),
        "cfg_weight": args.get("cfg_weight"),
        "deadline_seconds": args.get("deadline_seconds"),
        "deadline_class": deadline_class(args, KIND),
    }


def _default_out_dir(config: Config, paths: PathPolicy) -> Path:
    if config.tts.out_dir is not None:
        return config.tts.out_dir
    if not paths.roots:
        raise BadRequest(f"{KIND}: no paths.roots are configured, so there is nowhere to write; set tts.out_dir")
    return paths.roots[0] / "Flowstate" / "Speech"


class SpeechJob(EngineJob):
    """The job handler: one warm `Speaker` per voice file, reused across jobs."""

    LOCAL_TASK = TASK

    def __init__(
        self, config: Config, paths: PathPolicy, router: Router | None = None, tiers: dict[str, Tier] | None = None
    ) -> None:
        super().__init__(config, paths, router, tiers)
        self.library = voice_library(config)

    def engine(self, voice: str) -> Speaker:
        """The warm engine for `voice`, resolved (and downloaded when allowed) on its first job only:
        a fallback found offline is kept, so later jobs do not wait on the network again."""
        def resolve() -> Speaker:
            files = self.library.resolve(voice)  # names that resolve to one file share its engine
            return self.warm(files.model, lambda: Speaker(files, device=self.config.tts.engine_device))

        return self.warm(("voice", voice), resolve)

    def __call__(self, ctx: JobContext) -> dict[str, Any]:
        args = ctx.job.args
        started = time.monotonic()
        out_dir = self.paths.output_dir(args["out_dir"], "out_dir", KIND)  # re-check: roots may have changed
        file_name = check_name(Path(args["path"]).name, f"{KIND}: the file name", self.paths.max_name_bytes)
        ctx.progress(0.0, stage="loading")
        estimate = len(args["text"]) / CHARACTERS_PER_SECOND
        (audio, rate, about), where = self._speak_routed(ctx, estimate)
        if where["tier"] == "local" and about.get("voice"):
            # The voice that spoke (a name's fallback may be the packaged voice), and its licence.
            where = {**where, **describe("tts", str(about["voice"]))}
        ctx.check_cancelled()
        ctx.progress(0.9, stage="resampling")
        audio = resample(audio, rate, args["sample_rate"])
        # Opened now, from the root, without following links: the folder checked when the job
        # started may have been swapped for a link since; the file goes through this handle only.
        with self.paths.open_dir(out_dir, "out_dir", KIND, register=ctx.register_output) as folder:
            folder.remove_partials()  # leftovers of an attempt that crashed mid-write
            target = ctx.register_output(folder.path / file_name, folder.anchor)
            # To the descriptor opened in the checked folder: libsndfile never resolves a name.
            folder.write_atomic(file_name,
                                audio_writer(np.clip(audio, -1.0, 1.0), args["sample_rate"], "PCM_24", "wav"))
        ctx.progress(1.0, stage="writing")
        return {
            "path": str(target),
            "duration_seconds": round(audio.shape[-1] / args["sample_rate"], 3),
            "sample_rate": args["sample_rate"],
            "voice_sample_rate": rate,
            "characters": len(args["text"]),
            **about,
            "seconds": round(time.monotonic() - started, 3),
            **where,
        }

    def _speak_routed(
        self, ctx: JobContext, estimate: float
    ) -> tuple[tuple[np.ndarray, int, dict[str, Any]], dict[str, Any]]:
        """Speak on the tier the router picks (this machine's engine is one; Chatterbox: tiers only),
        falling through its plan."""
        args = ctx.job.args

        def job_for(tier: str, scratch: Path) -> TierJob:
            params: dict[str, Any] = {"text": args["text"], "lang": self.config.tts.cloud_language}
            voice_prompt = None
            if tier == LOCAL:
                params = {"text": args["text"], "voice": args["voice"], "speed": args["speed"]}
            elif args["voice"] == CHATTERBOX:
                params = {"text": args["text"], "model_family": CHATTERBOX,
                          **{key: args[key] for key in ("exaggeration", "cfg_weight") if args.get(key) is not None}}
                if args.get("voice_prompt"):  # re-checked: the roots may have changed since the job was queued
                    voice_prompt = self.paths.input_file(args["voice_prompt"], "voice_prompt", KIND)
            # A voice prompt is uploaded like any input audio (inline, or the Files API past the limit).
            return TierJob(task=TASK, params=params, work_dir=scratch, input_path=voice_prompt,
                           audio_seconds=estimate, deadline_seconds=args.get("deadline_seconds"))

        def read(result: TierResult) -> tuple[np.ndarray, int, dict[str, Any]]:
            audio, rate = result.read_audio("audio", KIND)
            about = result.details.get("about")
            if about is None:  # MeloTTS and Chatterbox take no speed: the cloud tier speaks at its own pace
                about = {"voice": str(result.details.get("model") or result.tier), "voice_source": result.tier,
                         "speed": 1.0}
                if args.get("voice_prompt"):
                    about["voice_prompt"] = args["voice_prompt"]
            return audio.mean(axis=0), rate, about

        def progress(tier: str, fraction: float) -> None:
            ctx.progress(0.05 + 0.8 * fraction, stage="speaking" if tier == LOCAL else f"speaking on {tier}")

        route = self.route(ctx, TASK, args["voice"], estimate, cloud=("tts voice=chatterbox", CHATTERBOX))
        for attempt in route:
            with attempt:
                result = attempt.tier.run(job_for(attempt.name, attempt.scratch), partial(progress, attempt.name),
                                          ctx.check_cancelled)
                return read(result), attempt.ran(result)
        raise route.failure()

    def run(self, job: TierJob, progress: Progress, check_cancelled: CheckCancelled) -> TierResult:
        """The local tier's speech: a Piper voice, warm across jobs."""
        params = job.params
        engine = self.engine(params["voice"])
        engine.load()
        check_cancelled()

        def on_sentence(fraction: float) -> None:
            check_cancelled()
            progress(fraction)

        audio = engine.process(params["text"], params["speed"], on_sentence)
        device = "cuda" if engine.provider.startswith("CUDA") else "cpu"
        about = {**engine.describe(), "speed": params["speed"]}
        return TierResult(tier=LOCAL, details={"device": device, "about": about},
                          audio={"audio": (np.asarray(audio, dtype=np.float32)[None], engine.sample_rate)})
