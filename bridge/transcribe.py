"""`transcribe` as a job: check the request, (separate a stem,) transcribe, write SRT/VTT atomically.

`check_request` runs when the command arrives, so a forbidden path, a missing file, a file that is
not audio or an unknown language is answered at once; `TranscribeJob` runs on a job worker with
the Whisper model kept warm. With `stem` (e.g. vocals: lyrics), the file is first separated by the
same warm engine `stems.separate` uses, and that stem is transcribed. The router may send the
transcription to a cloud tier (Workers AI or Replicate Whisper) when a deadline asks for it.
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
from bridge.engine_job import EngineJob, JobDeps
from bridge.errors import BadRequest, Unavailable
from bridge.jobs import JobContext
from bridge.paths import PathPolicy, looks_like_path
from bridge.router import LOCAL, Router, deadline_class
from bridge.separate import KIND as SEPARATE
from bridge.separate import SeparateJob, track_name
from engines.cloud.base import CheckCancelled, Progress, Tier, TierJob, TierResult
from engines.resample import resample_tensor
from engines.transcription import SAMPLE_RATE, Segment, Transcriber, Transcript, check_language, to_srt, to_vtt

if TYPE_CHECKING:
    from engines.transcription import Transcriber, Transcript

log = logging.getLogger(__name__)

KIND = "transcribe"
TASK = "transcribe"  # the router's name for the task (router.order.transcribe)
FORMATS = ("srt", "vtt")
STEM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def check_request(args: dict[str, Any], paths: PathPolicy, config: Config) -> dict[str, Any]:
    """Validate a `transcribe` request; returns the job's args with every default filled in."""
    path, _ = paths.audio_file(args["path"], "path", KIND)
    language = check_language(args.get("language") or config.transcribe.language, KIND)
    formats = list(config.transcribe.formats) if args.get("formats") is None else list(args["formats"])
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise BadRequest(f"{KIND}: argument 'formats' expected a list of {', '.join(FORMATS)}, got {unknown}")
    stem = args.get("stem") or ""
    if stem and not STEM_NAME.match(stem):
        raise BadRequest(f"{KIND}: argument 'stem' expected a stem name such as vocals, got {stem!r}")
    out_dir = paths.output_dir(args.get("out_dir") or str(path.parent), "out_dir", KIND)
    # A model named by path is read only inside the model folders or the roots.
    model = paths.model_ref(args.get("model") or config.transcribe.model, "model", KIND,
                            configured=config.transcribe.model, is_path=looks_like_path)
    return {
        "path": str(path),
        "model": model,
        "language": language,
        "formats": list(dict.fromkeys(formats)),
        "stem": stem,
        "out_dir": str(out_dir),
        "deadline_seconds": args.get("deadline_seconds"),
        "deadline_class": deadline_class(args, KIND),
    }


class TranscribeJob(EngineJob):
    """The job handler: one warm `Transcriber` per model, reused across jobs.

    `separator` is the daemon's `stems.separate` handler; its warm separation engine serves `stem`.
    """

    LOCAL_TASK = TASK

    def __init__(self, config: Config, paths: PathPolicy, router: Router | None = None,
                 tiers: dict[str, Tier] | None = None,
                 separator: SeparateJob | None = None) -> None:
        super().__init__(config, paths, router, tiers)
        self.separator = separator

    @classmethod
    def build(cls, deps: JobDeps) -> TranscribeJob:
        """The lyrics chain (stem=vocals) reuses the warm separation engine of stems.separate."""
        separator = deps.handlers.get(SEPARATE)
        return cls(deps.config, deps.paths, deps.router, deps.tiers,
                   separator=separator if isinstance(separator, SeparateJob) else None)

    def engine(self, model: str) -> Transcriber:
        settings = self.config.transcribe
        return self.warm(model, lambda: Transcriber(
            model, device=settings.engine_device, compute_type=settings.compute_type,
            local_dir=settings.local_dir, package_fallback=settings.package_fallback,
            threads=settings.threads, beam_size=settings.beam_size, vad_filter=settings.vad_filter,
        ))

    def __call__(self, ctx: JobContext) -> dict[str, Any]:
        import soundfile

        args = ctx.job.args
        started = time.monotonic()
        # Re-check: the config (roots) may have changed since the job was queued, before a crash.
        source = self.paths.input_file(args["path"], "path", KIND)
        out_root = self.paths.output_dir(args["out_dir"], "out_dir", KIND)
        ctx.progress(0.0, stage="reading")
        try:
            duration = float(soundfile.info(str(source)).duration)
        except (RuntimeError, soundfile.LibsndfileError) as err:
            raise BadRequest(f"{KIND}: {source} cannot be read ({err})") from None
        stem_audio = self._separate(ctx, source, args["stem"]) if args["stem"] else None
        transcript, where = self._transcribe_routed(ctx, source, stem_audio, duration)
        written = self._write(ctx, source, out_root, transcript)
        return {
            **transcript.to_dict(),
            "paths": written,
            "stem": args["stem"] or None,
            "model": args["model"],
            # Which weights answered: the hub name, transcribe.local_dir or the package fallback.
            "model_source": self.engine(args["model"]).describe() if where["tier"] == "local" else where["tier"],
            "seconds": round(time.monotonic() - started, 3),
            **where,
        }

    # -- the lyrics chain ---------------------------------------------------------------------

    def _separate(self, ctx: JobContext, source: Path, stem: str) -> np.ndarray:
        """The `stem` of the file, mono at Whisper's 16 kHz, from the warm `stems.separate` engine."""
        import soundfile
        import torch
        from demucs.audio import convert_audio_channels

        if self.separator is None:
            raise Unavailable(f"{KIND}: stem {stem!r} needs the separation engine, which this daemon has not set up")
        settings = self.config.separate
        ctx.progress(0.0, stage="loading the separation model")
        engine = self.separator.engine(settings.model, settings.shifts)
        engine.load()
        if stem not in engine.stems:
            raise BadRequest(f"{KIND}: stem {stem!r} is not a stem of {settings.model} ({', '.join(engine.stems)})")
        audio, sample_rate = soundfile.read(str(source), dtype="float32", always_2d=True)
        mix = convert_audio_channels(torch.from_numpy(audio.T.copy()), 2)  # mono doubled; >2: the first two
        if sample_rate != engine.sample_rate:
            mix = resample_tensor(mix, sample_rate, engine.sample_rate)
        ctx.check_cancelled()

        def on_segment(fraction: float) -> None:
            ctx.check_cancelled()
            ctx.progress(0.5 * fraction, stage=f"separating {stem}")

        separated = engine.process(mix.numpy(), on_segment)
        voice = torch.from_numpy(np.ascontiguousarray(separated[engine.stems.index(stem)].mean(axis=0)))
        return resample_tensor(voice[None], engine.sample_rate, SAMPLE_RATE)[0].numpy()

    # -- transcription, on the tier the router picks --------------------------------------------

    def _transcribe_routed(
        self, ctx: JobContext, source: Path, stem_audio: np.ndarray | None, duration: float
    ) -> tuple[Transcript, dict[str, Any]]:
        """Transcribe on the tier the router picks (this machine's engine is one), falling through its plan."""
        args = ctx.job.args
        low = 0.5 if stem_audio is not None else 0.05

        def job_for(tier: str, scratch: Path) -> TierJob:
            import soundfile

            upload = source
            if stem_audio is not None:  # the separated stem, not the mix, is transcribed
                upload = scratch / f"{track_name(source)}.{args['stem']}.wav"
                soundfile.write(str(upload), stem_audio, SAMPLE_RATE, subtype="FLOAT" if tier == LOCAL else "PCM_16")
            params: dict[str, Any] = {"language": args["language"] or None}
            if tier == LOCAL:
                params["model"] = args["model"]
            return TierJob(task=TASK, params=params, work_dir=scratch, input_path=upload, audio_seconds=duration,
                           deadline_seconds=args.get("deadline_seconds"))

        def read(result: TierResult) -> Transcript:
            return transcript_from_tier(result.data, duration, args["language"])

        def progress(tier: str, fraction: float) -> None:
            ctx.progress(low + (0.95 - low) * fraction,
                         stage="transcribing" if tier == LOCAL else f"transcribing on {tier}")

        route = self.route(ctx, TASK, args["model"], duration)
        for attempt in route:
            with attempt:
                result = attempt.tier.run(job_for(attempt.name, attempt.scratch), partial(progress, attempt.name),
                                          ctx.check_cancelled)
                return read(result), attempt.ran(result)
        raise route.failure()

    def run(self, job: TierJob, progress: Progress, check_cancelled: CheckCancelled) -> TierResult:
        """The local tier's transcription: the file through faster-whisper's own decoder, exactly as
        the library would read it."""
        assert job.input_path is not None  # a transcribe TierJob always names its audio
        engine = self.engine(job.params["model"])
        engine.load()
        check_cancelled()

        def on_segment(fraction: float) -> None:
            check_cancelled()
            progress(fraction)

        transcript = engine.process(str(job.input_path), job.params["language"] or "", on_segment)
        return TierResult(tier=LOCAL, data=transcript.to_dict(), details={"device": engine.ct2_device})

    # -- outputs ------------------------------------------------------------------------------

    def _write(self, ctx: JobContext, source: Path, out_root: Path, transcript: Transcript) -> dict[str, str]:
        args = ctx.job.args
        if not args["formats"]:
            return {}
        base = track_name(source) + (f".{args['stem']}" if args["stem"] else "")
        render = {"srt": to_srt, "vtt": to_vtt}
        written: dict[str, str] = {}
        # Opened now, from the root, without following links: the folder checked when the job
        # started may have been swapped for a link since; the files go through this handle only.
        with self.paths.open_dir(out_root, "out_dir", KIND, register=ctx.register_output) as folder:
            folder.remove_partials()  # leftovers of an attempt that crashed mid-write
            for fmt in args["formats"]:
                ctx.check_cancelled()
                target = ctx.register_output(folder.path / f"{base}.{fmt}", folder.anchor)
                data = render[fmt](transcript.segments).encode("utf-8")
                folder.write_atomic(f"{base}.{fmt}", lambda file: file.write(data))  # noqa: B023 (called at once)
                written[fmt] = str(target)
        ctx.progress(1.0, stage="writing")
        return written


def transcript_from_tier(data: dict[str, Any], duration: float, language: str) -> Transcript:
    """A tier's `TierResult.data` ({text, segments: [{start, end, text}], language?,
    language_probability?}) as a Transcript.

    Missing times are filled from the neighbours (Hugging Face leaves the last end open); no
    segments at all make one segment over the whole file.
    """
    text = str(data.get("text") or "").strip()
    segments: list[Segment] = []
    previous_end = 0.0
    raw = data.get("segments") or []
    for index, item in enumerate(raw):
        start = _seconds(item.get("start"), previous_end)
        following = raw[index + 1].get("start") if index + 1 < len(raw) else None
        end = _seconds(item.get("end"), _seconds(following, duration))
        words = str(item.get("text") or "").strip()
        segments.append(Segment(start, max(start, end), words))
        previous_end = end
    if not segments and text:
        segments.append(Segment(0.0, duration, text))
    detected = data.get("language")
    probability = data.get("language_probability")  # this machine's engine says; the cloud tiers do not
    return Transcript(
        text=text or " ".join(s.text for s in segments if s.text),
        segments=tuple(segments),
        language=str(detected) if detected else (language or "unknown"),
        language_probability=float(probability) if isinstance(probability, (int, float)) else None,
        duration_seconds=duration,
    )


def _seconds(value: Any, fallback: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float(fallback)

