"""What a job is on `flowstate serve` (bridge/server.py): the params each task takes, checked by the
daemon command's own arguments; the daemon's job handler that runs each task; and where the jobs run
(a `Backend`: this process, or Ray Serve in bridge/server_ray.py).

The wire names of tasks and params are the contract's (engines/cloud/selfhosted_wire.py); a test
keeps the params models naming exactly `TASK_PARAMS` (tests/bridge/test_server.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from bridge.commands import JOBS, lookup
from bridge.config import Config
from bridge.daw import DawState
from bridge.engine_job import JobDeps
from bridge.errors import BadRequest, BridgeError, StartupError
from bridge.generate import KIND as GENERATE
from bridge.generate import check_request as check_generate
from bridge.generate import model_family as check_family
from bridge.jobs import JobContext
from bridge.paths import PathPolicy
from bridge.separate import KIND as SEPARATE
from bridge.separate import check_request
from bridge.speech import KIND as TTS
from bridge.speech import check_request as check_speech
from bridge.transcribe import check_request as check_transcribe
from engines.base import pick_device
from engines.cloud.selfhosted_wire import TASKS, model_name

# -- params --------------------------------------------------------------------------------------


def _as_declared(command: str, name: str, wire: str | None = None) -> AfterValidator:
    """A param checked by the daemon's own argument `name` (its choices and range are declared once,
    with the command in bridge/commands.py), named `wire` on this server's wire when that differs;
    None: the server's config decides."""
    declared = next(arg for arg in lookup(command).args if arg.name == name)
    arg = declared if wire is None else replace(declared, name=wire)

    def check(value: object) -> object:
        if value is None:
            return None
        try:
            return arg.coerce(value, command)
        except BridgeError as err:
            raise ValueError(err.message) from None

    return AfterValidator(check)


class StemsParams(BaseModel):
    """The `params` of a stems job. Anything not given takes the server's `separate` config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # A demucs name, or a family and its model: `openunmix:umxl` (the daemon's stems.separate names).
    model: str | None = Field(default=None, min_length=1, max_length=64,
                              pattern=r"^[A-Za-z0-9_.\-]+(:[A-Za-z0-9_.\-]+)?$")
    stems: list[Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_\-]+$")]] = []
    two_stems: str = Field(default="", max_length=32, pattern=r"^[A-Za-z0-9_\-]*$")
    format: Annotated[str | None, _as_declared(SEPARATE, "format")] = None
    encoding: Annotated[str | None, _as_declared(SEPARATE, "encoding")] = None
    shifts: Annotated[int | None, _as_declared(SEPARATE, "shifts")] = None


class GenerateParams(BaseModel):
    """The `params` of a generate job: the server's generate.model makes `duration_seconds` of audio."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(min_length=1, max_length=2000)
    # The numbers are the generate command's own arguments (`seconds` is duration_seconds here).
    duration_seconds: Annotated[float, _as_declared(GENERATE, "seconds", "duration_seconds")]
    seed: Annotated[int | None, _as_declared(GENERATE, "seed")] = None
    temperature: Annotated[float | None, _as_declared(GENERATE, "temperature")] = None
    top_k: Annotated[int | None, _as_declared(GENERATE, "top_k")] = None
    guidance_scale: Annotated[float | None, _as_declared(GENERATE, "guidance_scale")] = None
    # Stable Audio Open (when this server's generate.model is it); model_family says which family
    # the client asked for: the server's model must be of it.
    steps: Annotated[int | None, _as_declared(GENERATE, "steps")] = None
    negative_prompt: str | None = Field(default=None, max_length=2000)
    model_family: Literal["stable-audio-open"] | None = None

    def job_args(self) -> dict[str, Any]:
        out = self.model_dump(exclude_none=True, exclude={"duration_seconds", "model_family"})
        return {**out, "seconds": self.duration_seconds}


class TranscribeParams(BaseModel):
    """The `params` of a transcribe job: the uploaded audio, in the server's transcribe.model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    language: str | None = Field(default=None, max_length=16, pattern=r"^[A-Za-z_\-]*$")

    def job_args(self) -> dict[str, Any]:
        return {"language": self.language or "", "formats": []}


class SpeechParams(BaseModel):
    """The `params` of a tts job: `text` in the server's tts.voice (`lang` is accepted for the
    cloud tiers' sake; the voice decides the language)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = Field(min_length=1, max_length=10_000)
    lang: str | None = Field(default=None, max_length=16)
    speed: Annotated[float | None, _as_declared(TTS, "speed")] = None

    def job_args(self) -> dict[str, Any]:
        return {"text": self.text, "speed": self.speed, "name": "speech"}


# Each names exactly the params of its task in the wire contract (TASK_PARAMS; a test says so).
PARAMS: dict[str, type[BaseModel]] = {"stems": StemsParams, "generate": GenerateParams,
                                       "transcribe": TranscribeParams, "tts": SpeechParams}


Handler = Callable[[JobContext], dict[str, Any]]


def _declared_handler(kind: str) -> Callable[[Config, PathPolicy], Handler]:
    """The handler `kind`'s declaration (bridge/commands.py) builds, local only (no router, no tiers)."""
    def build(config: Config, paths: PathPolicy) -> Handler:
        handler = JOBS[kind].job(JobDeps(config, paths))
        if handler is None:
            raise StartupError(f"{kind}: its job handler cannot run on this server")
        return handler

    return build


# The daemon's own job handlers, one per task its declaration names: the same code runs in the
# daemon and on this server.
JOB_HANDLERS: dict[str, Callable[[Config, PathPolicy], Handler]] = {
    declared.task: _declared_handler(declared.name) for declared in JOBS.values() if declared.task in TASKS}


class Backend(Protocol):
    """Where the server's jobs run: in its own process (`LocalBackend`) or elsewhere (Ray Serve's
    replicas, bridge/server_ray.py). The routes, the job queue and the folders stay with the server."""

    name: str

    def start(self, config: Config, paths: PathPolicy, data_dir: Path, tasks: Sequence[str]) -> dict[str, Handler]:
        """Make ready and return the handler for each task (a result's files relative to data_dir)."""

    def workers(self, config: Config) -> int:
        """How many jobs the server's runner hands to this backend at once."""

    def device(self, config: Config) -> str:
        """The device the jobs run on, as /v1/health names it; Unavailable when it is missing."""

    def health(self) -> dict[str, Any]:
        """What /v1/health adds under `backend`."""

    def stop(self) -> None:
        """Release what `start` took; a second call does nothing."""


class LocalBackend:
    """The jobs run on the server's own worker threads (jobs.workers of them), models warm in-process."""

    name = "plain"

    def start(self, config: Config, paths: PathPolicy, data_dir: Path, tasks: Sequence[str]) -> dict[str, Handler]:
        return {task: TaskHandler(task, JOB_HANDLERS[task](config, paths), data_dir) for task in tasks}

    def workers(self, config: Config) -> int:
        return config.jobs.workers

    def device(self, config: Config) -> str:
        # A server configured for cuda on a machine without it must not start and take jobs.
        return str(pick_device(config.separate.engine_device))

    def health(self) -> dict[str, Any]:
        return {"name": self.name}

    def stop(self) -> None:
        return None


def explain(err: ValidationError) -> str:
    """A pydantic error as one line: where, what, and the value given."""
    parts = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"])
        parts.append(f"{where + ': ' if where else ''}{item['msg']} (got {item.get('input')!r})")
    return "; ".join(parts)


def check_task_request(task: str, params: BaseModel, upload: str, out_dir: str, paths: PathPolicy,
                   config: Config) -> dict[str, Any]:
    """The job's args, checked by the daemon's own `check_request` for the task."""
    if task == "stems":
        return check_request({**params.model_dump(exclude_none=True), "path": upload, "out_dir": out_dir},
                             paths, config)
    job_args: dict[str, Any] = params.job_args()  # type: ignore[attr-defined]
    if task == "generate":
        family = getattr(params, "model_family", None)
        if family is not None and check_family(config.generate.model) != family:
            raise BadRequest(f"params.model_family is {family!r}, but this server's generate model is "
                             f"{model_name(config.generate.model)!r}")  # a name: no server paths
        # No DAW here: the length comes in seconds, so the tempo only names the file.
        return check_generate({**job_args, "melody_path": upload, "out_dir": out_dir}, paths, config, DawState())
    if task == "transcribe":
        return check_transcribe({**job_args, "path": upload, "out_dir": out_dir}, paths, config)

    return check_speech({**job_args, "out_dir": out_dir}, paths, config)


class TaskHandler:
    """A daemon job handler with the result's files made relative to data_dir (the client fetches
    them by name) and no server paths left in what the client sees."""

    def __init__(self, task: str, job: Callable[[JobContext], dict[str, Any]], data_dir: Path) -> None:
        self._task = task
        self.job = job  # the daemon's handler
        self._data_dir = data_dir

    def close(self) -> None:
        """Release the daemon handler's warm engines (at shutdown)."""
        close = getattr(self.job, "close", None)
        if close is not None:
            close()

    def __call__(self, ctx: JobContext) -> dict[str, Any]:
        result = dict(self.job(ctx))
        fmt: str | None = "wav"
        if self._task == "stems":
            paths: dict[str, str] = result.pop("paths")
            fmt = ctx.job.args["format"]
        elif self._task == "transcribe":  # the text is the result; no subtitle files are written
            result.pop("paths", None)
            result.pop("model_source", None)
            paths, fmt = {}, None
        else:  # generate, tts: one WAV
            paths = {"audio": result.pop("path")}
            result.pop("voice_source", None)
        files = {name: str(Path(os.path.realpath(path)).relative_to(self._data_dir)) for name, path in paths.items()}
        return {**result, "files": files, **({"format": fmt} if fmt else {})}
