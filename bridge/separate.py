"""`stems.separate` as a job: check the request, read the file, separate, write stems atomically.

`check_request` runs when the command arrives, so a forbidden path, a missing file or a file that
is not audio is answered at once; `SeparateJob` runs on a job worker with the model kept warm.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from bridge.config import Config
from bridge.engine_job import EngineJob
from bridge.errors import BadRequest
from bridge.files import audio_writer, safe_name
from bridge.jobs import JobContext
from bridge.paths import PathPolicy
from bridge.router import Route, deadline_class
from engines import openunmix, spleeter
from engines.cloud.base import TierJob
from engines.resample import check_file_rate, resample_tensor
from engines.separation.files import FileSeparator

log = logging.getLogger(__name__)

KIND = "stems.separate"
FORMATS = ("wav", "flac")
ENCODINGS = {"pcm16": "PCM_16", "pcm24": "PCM_24", "float": "FLOAT"}


def check_request(args: dict[str, Any], paths: PathPolicy, config: Config) -> dict[str, Any]:
    """Validate a `stems.separate` request; returns the job's args with every default filled in."""
    path, info = paths.audio_file(args["path"], "path", KIND)
    check_file_rate(info.samplerate, config.separate.min_sample_rate, config.separate.max_sample_rate,
                    what=f"{KIND}: {path}", keys="separate.min_sample_rate, separate.max_sample_rate")
    out_dir = paths.output_dir(args.get("out_dir") or str(path.parent / "stems"), "out_dir", KIND)
    # The stems go to <out_dir>/<track>: a link there is refused now, and again when written.
    paths.output_dir(str(out_dir / track_name(path)), "out_dir", KIND)
    fmt = args.get("format") or config.separate.format
    encoding = args.get("encoding") or config.separate.encoding
    if fmt == "flac" and encoding == "float":
        raise BadRequest(f"{KIND}: FLAC stores integer samples only; use encoding pcm16 or pcm24, or format wav")
    model = args.get("model") or config.separate.model
    for family in (spleeter, openunmix):
        if getattr(family, f"is_{family.FAMILY}")(model):
            family.check_name(model)  # an unknown variant is refused now, not when the job loads it
    return {
        "path": str(path),
        "model": model,
        "stems": list(args.get("stems") or []),
        "format": fmt,
        "encoding": encoding,
        "out_dir": str(out_dir),
        "two_stems": args.get("two_stems") or "",
        "shifts": config.separate.shifts if args.get("shifts") is None else int(args["shifts"]),
        "deadline_seconds": args.get("deadline_seconds"),
        "deadline_class": deadline_class(args, KIND),
    }


def track_name(path: Path) -> str:
    """A folder name for the track: the file's stem with characters any OS refuses replaced, a
    Windows device name (`CON`, `nul`) suffixed with `_`, cut to a length every file system takes."""
    return safe_name(path.stem, "track")


class SeparateJob(EngineJob):
    """The job handler: one warm `FileSeparator` per (model, shifts), reused across jobs."""

    def engine(self, model: str, shifts: int) -> Any:
        settings = self.config.separate
        return self.warm((model, shifts), lambda: FileSeparator(
            model, repo=self.config.models.demucs_repo, spleeter_dir=self.config.models.spleeter_dir,
            openunmix_dir=self.config.models.openunmix_dir,
            device=settings.engine_device, shifts=shifts,
            overlap=settings.overlap, segment_seconds=settings.segment_seconds, threads=settings.threads,
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
            audio, sample_rate = soundfile.read(str(source), dtype="float32", always_2d=True)
        except (RuntimeError, soundfile.LibsndfileError) as err:
            raise BadRequest(f"{KIND}: {source} cannot be decoded ({err}); is it truncated?") from None
        if audio.shape[0] == 0:
            raise BadRequest(f"{KIND}: {source} holds no audio (0 frames)")
        audio_seconds = audio.shape[0] / sample_rate
        separated, stems, where = self._separate_routed(ctx, source, audio, sample_rate, audio_seconds)
        wanted = self._wanted(args, stems)
        outputs = self._select(separated, stems, wanted, args["two_stems"])

        written: dict[str, str] = {}
        subtype = ENCODINGS[args["encoding"]]
        # One handle on the track folder, reached from the root without links, for every stem:
        # a folder swapped for a link meanwhile is never written (or later deleted) through.
        with self.paths.open_dir(out_root / track_name(source), "out_dir", KIND,
                                 register=ctx.register_output) as folder:
            folder.remove_partials()  # leftovers of an attempt that crashed mid-write
            for index, (name, data) in enumerate(outputs.items()):
                ctx.check_cancelled()
                file_name = f"{name}.{args['format']}"
                target = ctx.register_output(folder.path / file_name, folder.anchor)
                folder.write_atomic(file_name, _writer(data, sample_rate, args["format"], subtype))
                written[name] = str(target)
                ctx.progress(0.95 + 0.05 * (index + 1) / len(outputs), stage="writing")
        return {
            "track": track_name(source),
            "paths": written,
            "duration_seconds": round(audio_seconds, 3),
            "sample_rate": sample_rate,
            "channels": 1 if audio.shape[1] == 1 else 2,
            "model": args["model"],
            "seconds": round(time.monotonic() - started, 3),
            **where,
        }

    def _separate_routed(
        self, ctx: JobContext, source: Path, audio: np.ndarray, sample_rate: int, audio_seconds: float
    ) -> tuple[np.ndarray, tuple[str, ...], dict[str, Any]]:
        """Separate on the tier the router picks, falling through the plan when a tier fails."""
        route = Route(ctx, self.router, "stems", ctx.job.args["model"], audio_seconds)
        for attempt in route:
            with attempt:
                if attempt.local:
                    separated, stems, device = self._separate_local(ctx, audio, sample_rate)
                    return separated, stems, attempt.ran_locally(device)
                separated, stems, cost = self._separate_remote(ctx, attempt.tier, source, audio, sample_rate,
                                                               audio_seconds)
                return separated, stems, attempt.ran_remotely(cost)
        raise route.failure()

    def _separate_local(self, ctx: JobContext, audio: np.ndarray,
                        sample_rate: int) -> tuple[np.ndarray, tuple[str, ...], str]:
        import torch
        from demucs.audio import convert_audio_channels

        args = ctx.job.args
        ctx.progress(0.0, stage="loading")
        engine = self.engine(args["model"], int(args["shifts"]))
        engine.load()
        mix = convert_audio_channels(torch.from_numpy(audio.T.copy()), 2)  # mono doubled; >2: the first two
        if sample_rate != engine.sample_rate:
            mix = resample_tensor(mix, sample_rate, engine.sample_rate)
        ctx.check_cancelled()

        def on_segment(fraction: float) -> None:
            ctx.check_cancelled()
            ctx.progress(0.05 + 0.9 * fraction, stage="separating")

        separated = torch.from_numpy(engine.process(mix.numpy(), on_segment))
        if sample_rate != engine.sample_rate:
            separated = resample_tensor(separated, engine.sample_rate, sample_rate)
        return _fit(separated.numpy(), audio), tuple(engine.stems), str(engine.device)

    def _separate_remote(
        self, ctx: JobContext, tier_name: str, source: Path, audio: np.ndarray, sample_rate: int, audio_seconds: float
    ) -> tuple[np.ndarray, tuple[str, ...], float | None]:
        import shutil
        import tempfile

        import soundfile
        import torch

        args = ctx.job.args
        tier = self.tiers[tier_name]
        deadline = args.get("deadline_seconds")
        with tempfile.TemporaryDirectory(prefix=f".flowstate-{tier_name}-") as scratch:
            job = TierJob(
                task="stems",
                params={"model": args["model"]},
                work_dir=Path(scratch),
                input_path=source,
                audio_seconds=audio_seconds,
                deadline_seconds=deadline,
            )

            def progress(fraction: float) -> None:
                ctx.progress(0.05 + 0.9 * fraction, stage=f"separating on {tier_name}")

            result = tier.run(job, progress, ctx.check_cancelled)
            names = sorted(result.outputs, key=lambda n: (STEM_ORDER.index(n) if n in STEM_ORDER else 99, n))
            arrays = []
            for name in names:
                data, rate = soundfile.read(str(result.outputs[name]), dtype="float32", always_2d=True)
                stem = torch.from_numpy(data.T.copy())
                if rate != sample_rate:
                    stem = resample_tensor(stem, rate, sample_rate)
                arrays.append(_fit(stem.numpy()[None], audio)[0])
            shutil.rmtree(scratch, ignore_errors=True)
        return np.stack(arrays), tuple(names), result.cost_usd

    @staticmethod
    def _wanted(args: dict[str, Any], stems: tuple[str, ...]) -> list[str]:
        two_stems = args["two_stems"]
        if two_stems and two_stems not in stems:
            raise BadRequest(f"{KIND}: two_stems {two_stems!r} is not a stem of {args['model']} ({', '.join(stems)})")
        wanted = args["stems"] or list(stems)
        unknown = [s for s in wanted if s not in stems]
        if unknown:
            raise BadRequest(f"{KIND}: stems {unknown} are not stems of {args['model']} ({', '.join(stems)})")
        return wanted

    @staticmethod
    def _select(separated: np.ndarray, stems: tuple[str, ...], wanted: list[str],
                two_stems: str) -> dict[str, np.ndarray]:
        if two_stems:
            index = stems.index(two_stems)
            rest = np.delete(separated, index, axis=0).sum(axis=0)
            return {two_stems: separated[index], f"no_{two_stems}": rest}
        return {name: separated[stems.index(name)] for name in wanted}


STEM_ORDER = ("drums", "bass", "other", "vocals", "guitar", "piano")


def _fit(separated: np.ndarray, audio: np.ndarray) -> np.ndarray:
    """Stems `(n, channels, frames)` trimmed or padded to the input's length, mono for mono input."""
    frames, channels = audio.shape
    out = separated[..., :frames]
    if out.shape[-1] < frames:
        out = np.pad(out, [(0, 0), (0, 0), (0, frames - out.shape[-1])])
    if channels == 1 and out.shape[1] != 1:
        out = out.mean(axis=1, keepdims=True)
    elif channels > 1 and out.shape[1] == 1:
        out = np.repeat(out, 2, axis=1)
    elif channels > 2:
        out = out[:, :2]
    return np.ascontiguousarray(out, dtype=np.float32)


def _writer(data: np.ndarray, sample_rate: int, fmt: str, subtype: str) -> Callable[[BinaryIO], None]:
    # To the descriptor opened in the checked folder: libsndfile never resolves a name.
    return audio_writer(data.T, sample_rate, subtype, fmt)
