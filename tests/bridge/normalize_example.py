"""The README's worked example ("Adding a job command"): a local job command is one declaration
plus its engine. tests/bridge/test_commands.py runs it on a real daemon and checks that the README
shows this file as it is."""

from __future__ import annotations

from typing import Any

import numpy as np
import soundfile

from bridge.commands import REQUEST_ID, job_command
from bridge.engine_job import EngineJob
from bridge.files import audio_writer
from bridge.jobs import JobContext
from bridge.protocol import Arg


class Normalizer:
    """The engine (its home would be engines/normalize.py): arrays in, arrays out."""

    def __init__(self, peak_dbfs: float) -> None:
        self.peak = 10.0 ** (peak_dbfs / 20.0)

    def process(self, audio: np.ndarray) -> np.ndarray:
        return audio * (self.peak / max(float(np.max(np.abs(audio))), 1e-9))


class NormalizeJob(EngineJob):
    """The job: read the file, run the warm engine, write `<name> (normalized).wav` beside it."""

    def __call__(self, ctx: JobContext) -> dict[str, Any]:
        args = ctx.job.args
        source = self.paths.input_file(args["path"], "path", "normalize")
        audio, rate = soundfile.read(str(source), dtype="float32", always_2d=True)
        engine = self.warm(args["peak_dbfs"], lambda: Normalizer(args["peak_dbfs"]))
        name = f"{source.stem} (normalized).wav"
        with self.paths.open_dir(source.parent, "path", "normalize", register=ctx.register_output) as folder:
            target = ctx.register_output(folder.path / name, folder.anchor)
            folder.write_atomic(name, audio_writer(engine.process(audio), rate, "PCM_24", "wav"))
        return {"path": str(target), "peak_dbfs": args["peak_dbfs"]}


job_command(
    "normalize",
    Arg("path", str, "The audio file (WAV, FLAC, AIFF, OGG, MP3 …) inside paths.roots."),
    Arg("peak_dbfs", float, "The peak to reach, in dBFS.", default=-1.0, min=-60.0, max=0.0),
    REQUEST_ID,
    examples=("normalize vocals.wav", "make take.wav as loud as it can be without clipping"),
    help="Normalize a file's peak as a background job; replies at once with the job id.",
    check=lambda args, services: {**args, "path": str(services.paths.audio_file(args["path"], "path", "normalize")[0])},
    job=NormalizeJob.build,
)
