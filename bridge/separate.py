"""`stems.separate` as a job: check the request, read the file, separate, write stems atomically.

`check_request` runs when the command arrives, so a forbidden path, a missing file or a file that
is not audio is answered at once; `SeparateJob` runs on a job worker with the model kept warm.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Collection
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from bridge.config import Config
from bridge.engine_job import EngineJob
from bridge.errors import BadRequest, Unavailable
from bridge.files import MAX_NAME_BYTES, audio_writer, safe_name
from bridge.jobs import JobContext
from bridge.paths import PathPolicy
from bridge.router import LOCAL, deadline_class
from engines import openunmix, spleeter
from engines.cloud.base import CheckCancelled, Progress, TierJob, TierResult
from engines.resample import check_file_rate, resample, resample_tensor
from engines.separation.files import FileSeparator

log = logging.getLogger(__name__)

KIND = "stems.separate"
TASK = "stems"  # its name among the tiers' tasks
FORMATS = ("wav", "flac")
ENCODINGS = {"pcm16": "PCM_16", "pcm24": "PCM_24", "float": "FLOAT"}
# Shorter than this, a file holds no sound to separate (and a frame or two is less than the model's
# normalisation and resampling take).
MIN_SECONDS = 0.01


def check_length(path: Path, frames: int, sample_rate: int) -> None:
    """BadRequest for a file too short to separate: no frames, or under MIN_SECONDS."""
    if frames <= 0:
        raise BadRequest(f"{KIND}: {path} holds no audio (0 frames)")
    if frames < MIN_SECONDS * sample_rate:
        raise BadRequest(f"{KIND}: {path} is {frames} frame(s) long ({1000.0 * frames / sample_rate:.2f} ms): too "
                         f"short to separate (at least {1000.0 * MIN_SECONDS:g} ms)")


def check_request(args: dict[str, Any], paths: PathPolicy, config: Config) -> dict[str, Any]:
    """Validate a `stems.separate` request; returns the job's args with every default filled in."""
    path, info = paths.audio_file(args["path"], "path", KIND)
    check_length(path, int(info.frames), int(info.samplerate))
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


def _folder_key(path: Path | str) -> str:
    return os.path.normcase(os.path.abspath(path))


def free_track_folder(out_root: Path, name: str, file_names: list[str], own: Collection[Path],
                      busy: Collection[str] = ()) -> str:
    """The folder below `out_root` the stems go to: `name`, else `name (2)`, `name (3)` ... the first
    where no stem's file name is taken by a file this job did not write (`own`: its outputs, over
    every attempt; a folder an earlier attempt wrote into comes first, so a retry finishes its own
    set) and no other job is writing now (`busy`, as `_folder_key`s). A stem never replaces another
    job's or the user's file: a Live set may play it, and a failed or canceled job deletes what it
    wrote, which must never be someone else's file."""
    mine = {_folder_key(path) for path in own}
    root = _folder_key(out_root)
    candidates = []
    number = 1
    while True:
        suffix = "" if number == 1 else f" ({number})"
        base = name.encode("utf-8")[: MAX_NAME_BYTES - 1 - len(suffix)].decode("utf-8", "ignore").rstrip(" .")
        candidates.append((base or "track") + suffix)
        number += 1
        last = out_root / candidates[-1]
        if number > 2 and not os.path.lexists(last) and _folder_key(last) not in busy:
            break  # past every folder that is there or being written: the last candidate is free
    earlier = [c for c in candidates if any(_folder_key(Path(path).parent) == _folder_key(out_root / c)
                                            for path in mine)]
    for candidate in [*earlier, *candidates]:
        folder = out_root / candidate
        if _folder_key(folder) in busy:
            continue  # another job's stems are going there now
        if os.path.islink(folder):
            return candidate  # never looked through: opening it refuses it (forbidden), naming the link
        if os.path.lexists(folder) and not os.path.isdir(folder):
            continue  # a file where the folder would go
        if not any(os.path.lexists(folder / file) and _folder_key(folder / file) not in mine for file in file_names):
            return candidate
    raise AssertionError(f"{root}: no free track folder among {candidates}")  # the last one does not exist


_WRITING: set[str] = set()  # the track folders this daemon's jobs are writing stems into now
_WRITING_LOCK = threading.Lock()


def claim_track_folder(out_root: Path, name: str, file_names: list[str], own: Collection[Path],
                       at_end: Callable[[Callable[[], None]], None]) -> str:
    """`free_track_folder`, held for this job until `at_end` releases it (`JobContext.at_end`: once
    the job's outcome is recorded, a failed one's stems deleted): two separations of one clip at
    once (`jobs.workers` > 1) go to two folders, not both into the first free one, and one that
    fails never deletes a folder the other has just taken."""
    with _WRITING_LOCK:
        track = free_track_folder(out_root, name, file_names, own, _WRITING)
        key = _folder_key(out_root / track)
        _WRITING.add(key)
    at_end(partial(_release_track_folder, key))
    return track


def _release_track_folder(key: str) -> None:
    with _WRITING_LOCK:
        _WRITING.discard(key)


class SeparateJob(EngineJob):
    """The job handler: one warm `FileSeparator` per (model, shifts), reused across jobs."""

    LOCAL_TASK = TASK

    def engine(self, model: str, shifts: int) -> FileSeparator:
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
            info = soundfile.info(str(source))
        except (RuntimeError, soundfile.LibsndfileError) as err:
            raise BadRequest(f"{KIND}: {source} cannot be decoded ({err}); is it truncated?") from None
        check_length(source, int(info.frames), int(info.samplerate))
        sample_rate, shape = int(info.samplerate), (int(info.frames), int(info.channels))
        audio_seconds = shape[0] / sample_rate
        separated, stems, where = self._separate_routed(ctx, source, sample_rate, shape, audio_seconds)
        wanted = self._wanted(args, stems)
        outputs = self._select(separated, stems, wanted, args["two_stems"])

        written: dict[str, str] = {}
        subtype = ENCODINGS[args["encoding"]]
        track = claim_track_folder(out_root, track_name(source), [f"{name}.{args['format']}" for name in outputs],
                                   ctx.outputs, ctx.at_end)
        # One handle on the track folder, reached from the root without links, for every stem:
        # a folder swapped for a link meanwhile is never written (or later deleted) through.
        with self.paths.open_dir(out_root / track, "out_dir", KIND, register=ctx.register_output) as folder:
            folder.remove_partials()  # leftovers of an attempt that crashed mid-write
            for index, (name, data) in enumerate(outputs.items()):
                ctx.check_cancelled()
                file_name = f"{name}.{args['format']}"
                target = ctx.register_output(folder.path / file_name, folder.anchor)
                folder.write_atomic(file_name, _writer(data, sample_rate, args["format"], subtype))
                written[name] = str(target)
                ctx.progress(0.95 + 0.05 * (index + 1) / len(outputs), stage="writing")
        return {
            "track": track,
            "paths": written,
            "duration_seconds": round(audio_seconds, 3),
            "sample_rate": sample_rate,
            "channels": 1 if shape[1] == 1 else 2,
            "model": args["model"],
            "seconds": round(time.monotonic() - started, 3),
            **where,
        }

    def _separate_routed(
        self, ctx: JobContext, source: Path, sample_rate: int, shape: tuple[int, int], audio_seconds: float
    ) -> tuple[np.ndarray, tuple[str, ...], dict[str, Any]]:
        """Separate on the tier the router picks (this machine's engine is one), falling through the
        plan when a tier fails; the stems come back at the file's rate, length and channels."""
        args = ctx.job.args

        def job_for(tier: str, scratch: Path) -> TierJob:
            params: dict[str, Any] = {"model": args["model"]}
            if tier == LOCAL:
                params["shifts"] = int(args["shifts"])  # the cloud tiers run their own default
            return TierJob(task=TASK, params=params, work_dir=scratch, input_path=source, audio_seconds=audio_seconds,
                           deadline_seconds=args.get("deadline_seconds"))

        def read(result: TierResult) -> tuple[np.ndarray, tuple[str, ...]]:
            names = result.audio_names()
            if not result.audio:  # files from a tier: in the usual stem order
                names.sort(key=lambda n: (STEM_ORDER.index(n) if n in STEM_ORDER else 99, n))
            stems = []
            for name in names:
                stem, rate = result.read_audio(name, KIND)
                if rate != sample_rate:
                    stem = resample(stem, rate, sample_rate)
                stems.append(_fit(stem[None], shape)[0])
            if not stems:
                raise Unavailable(f"{KIND}: {result.tier} returned no stems")
            return np.stack(stems), tuple(names)

        def progress(tier: str, fraction: float) -> None:
            ctx.progress(0.05 + 0.9 * fraction, stage="separating" if tier == LOCAL else f"separating on {tier}")

        route = self.route(ctx, TASK, args["model"], audio_seconds)
        for attempt in route:
            with attempt:
                result = attempt.tier.run(job_for(attempt.name, attempt.scratch), partial(progress, attempt.name),
                                          ctx.check_cancelled)
                return (*read(result), attempt.ran(result))
        raise route.failure()

    def run(self, job: TierJob, progress: Progress, check_cancelled: CheckCancelled) -> TierResult:
        """The local tier's stems: the file through the warm engine, stems at the engine's rate."""
        import soundfile
        import torch
        from demucs.audio import convert_audio_channels

        assert job.input_path is not None  # a stems TierJob always names its file
        engine = self.engine(job.params["model"], int(job.params.get("shifts", self.config.separate.shifts)))
        engine.load()
        try:
            audio, sample_rate = soundfile.read(str(job.input_path), dtype="float32", always_2d=True)
        except (RuntimeError, soundfile.LibsndfileError) as err:
            raise BadRequest(f"{KIND}: {job.input_path} cannot be decoded ({err}); is it truncated?") from None
        if not np.isfinite(audio).all():
            raise BadRequest(f"{KIND}: {job.input_path} holds samples that are not numbers (NaN or infinity; a float "
                             "file rendered while a plugin blew up?): render it again")
        mix = convert_audio_channels(torch.from_numpy(audio.T.copy()), 2)  # mono doubled; >2: the first two
        if sample_rate != engine.sample_rate:
            mix = resample_tensor(mix, sample_rate, engine.sample_rate)
        check_cancelled()

        def on_segment(fraction: float) -> None:
            check_cancelled()
            progress(fraction)

        separated = engine.process(mix.numpy(), on_segment)
        stems = {name: (separated[index], engine.sample_rate) for index, name in enumerate(engine.stems)}
        return TierResult(tier=LOCAL, details={"device": str(engine.device)}, audio=stems)

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


def _fit(separated: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Stems `(n, channels, frames)` trimmed or padded to the input's `(frames, channels)`, mono for mono input."""
    frames, channels = shape
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
