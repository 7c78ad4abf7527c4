"""`voice.convert` as a job: a vocal clip sung again in another voice (RVC-style conversion).

`check_request` runs when the command arrives: the clip must be readable audio inside the roots,
the voice an https URL of an RVC v2 voice model or a plain voice name, the output folder inside the
roots; the WAV is named after the clip and the voice. `VoiceJob` sends the clip to a cloud tier the
router plans (Replicate's RVC model: no local engine, since RVC's packages pin their own torch and
audio stacks) and writes the converted vocal at the clip's own sample rate, atomically.

The voice model decides what the output may be used for: the result names it and its licence
(a URL of your own is not in the catalogue: `unknown`, see project.unknown_licences).
"""

from __future__ import annotations

import logging
import re
import time
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import soundfile

from bridge.config import Config
from bridge.engine_job import EngineJob
from bridge.errors import BadRequest
from bridge.files import audio_writer, check_name, safe_name
from bridge.jobs import JobContext
from bridge.paths import PathPolicy
from bridge.router import deadline_class
from engines.cloud.base import TierJob
from engines.resample import resample

log = logging.getLogger(__name__)

KIND = "voice.convert"
TASK = "voice"  # the router's name for the task (router.order.voice)
MODELS_KEY = "rvc"  # its entry in cloud.replicate_models
VOICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")
MAX_URL_CHARACTERS = 2000
# Share of the job's progress: converting on the tier, then writing.
CONVERTED = 0.9


def check_request(args: dict[str, Any], paths: PathPolicy, config: Config) -> dict[str, Any]:
    """Validate a `voice.convert` request; returns the job's args with every default filled in."""
    path, info = paths.audio_file(str(args["path"]), "path", KIND)
    voice = str(args.get("voice") or "").strip()
    label = voice_label(voice)
    pitch = float(args.get("pitch") or 0.0)
    out_dir = paths.output_dir(args.get("out_dir") or str(path.parent), "out_dir", KIND)
    name = safe_name(f"{path.stem} - {label}", "converted", paths.max_name_bytes - len(".wav"))
    file_name = check_name(f"{name}.wav", f"{KIND}: the file name", paths.max_name_bytes)
    return {
        "path": str(path),
        "voice": voice,
        "voice_label": label,
        "pitch": pitch,
        "seconds": float(info.duration),
        "out_dir": str(out_dir),
        "output": str(out_dir / file_name),
        "deadline_seconds": args.get("deadline_seconds"),
        "deadline_class": deadline_class(args, KIND),
    }


def voice_label(voice: str) -> str:
    """How the file and the track name a voice: its name, or a URL's file name without `.zip`;
    BadRequest for anything that is neither an https URL nor a plain name."""
    if voice.startswith(("https://", "http://")):
        parts = urlsplit(voice)
        if parts.scheme != "https" or not parts.hostname or len(voice) > MAX_URL_CHARACTERS or re.search(r"\s", voice):
            raise BadRequest(f"{KIND}: argument 'voice' expected an https URL "
                             f"(at most {MAX_URL_CHARACTERS} characters, "
                             f"no spaces) of an RVC v2 voice model, got {voice[:80]!r}")
        stem = PurePosixPath(unquote(parts.path)).name.removesuffix(".zip")
        return stem or parts.hostname
    if not VOICE_NAME.match(voice):
        raise BadRequest(f"{KIND}: argument 'voice' expected an https URL of an RVC v2 voice model (.zip) or a voice "
                         f"name (letters, digits, - and _), got {voice[:80]!r}")
    return voice


class VoiceJob(EngineJob):
    """The job handler: no engine of its own; every conversion runs on a tier the router plans."""

    def __call__(self, ctx: JobContext) -> dict[str, Any]:
        args = ctx.job.args
        started = time.monotonic()
        # Re-checked: the roots may have changed since the job was queued (before a crash).
        source = self.paths.input_file(args["path"], "path", KIND)
        out_dir = self.paths.output_dir(args["out_dir"], "out_dir", KIND)
        file_name = check_name(Path(args["output"]).name, f"{KIND}: the file name", self.paths.max_name_bytes)
        ctx.progress(0.0, stage="converting")
        (audio, rate), where = self._convert_routed(ctx, source)
        ctx.check_cancelled()
        ctx.progress(CONVERTED, stage="writing")
        sample_rate = int(soundfile.info(str(source)).samplerate)  # back at the clip's own rate
        audio = np.clip(resample(audio, rate, sample_rate), -1.0, 1.0)
        # Opened now, from the root, without following links: the folder checked when the job
        # started may have been swapped for a link since; the file goes through this handle only.
        with self.paths.open_dir(out_dir, "out_dir", KIND, register=ctx.register_output) as folder:
            folder.remove_partials()  # leftovers of an attempt that crashed mid-write
            target = ctx.register_output(folder.path / file_name, folder.anchor)
            folder.write_atomic(file_name, audio_writer(np.ascontiguousarray(audio.T), sample_rate, "PCM_24", "wav"))
        ctx.progress(1.0, stage="written")
        return {
            "kind": KIND,
            "path": str(target),
            "source": str(source),
            "track_name": Path(file_name).stem,
            "voice": args["voice"],
            "pitch": args["pitch"],
            "duration_seconds": round(audio.shape[-1] / sample_rate, 3),
            "sample_rate": sample_rate,
            "channels": int(audio.shape[0]),
            "elapsed_seconds": round(time.monotonic() - started, 3),
            **where,
        }

    def _convert_routed(self, ctx: JobContext, source: Path) -> tuple[tuple[np.ndarray, int], dict[str, Any]]:
        """Convert on the tiers the router plans (there is no local engine), falling through its plan."""
        args = ctx.job.args

        def job_for(tier: str, scratch: Path) -> TierJob:
            return TierJob(task=TASK, params={"voice": args["voice"], "pitch": args["pitch"]}, work_dir=scratch,
                           input_path=source, audio_seconds=float(args["seconds"]),
                           deadline_seconds=args.get("deadline_seconds"))

        def progress(tier: str, fraction: float) -> None:
            ctx.progress(CONVERTED * fraction, stage=f"converting on {tier}")

        route = self.route(ctx, TASK, args["voice"], float(args["seconds"]), cloud=("RVC voice conversion", MODELS_KEY))
        for attempt in route:
            with attempt:
                result = attempt.tier.run(job_for(attempt.name, attempt.scratch), partial(progress, attempt.name),
                                          ctx.check_cancelled)
                return result.read_audio("audio", KIND), attempt.ran(result)
        raise route.failure()
