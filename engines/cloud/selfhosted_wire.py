"""The self-hosted tier's wire contract: what `flowstate serve` (bridge/server.py) and its client
(engines/cloud/selfhosted.py) must agree on, declared once and imported by both.

Routes, the tasks and the params each takes, which tasks upload a file, the multipart form's
fields, the job states a reply may show, the table between Protocol v1 error codes and HTTP
statuses, the output formats and the version the client announces. The server's own checks
(pydantic params models, limits) and the client's retries stay with each side; a test keeps the
server's params models naming exactly `TASK_PARAMS` (tests/bridge/test_server.py).

It lives under engines/ so the client needs nothing of bridge/ beyond the shared kernel
(bridge.errors and the package's version; see tests/test_layers.py).
"""

from __future__ import annotations

from typing import Literal

from bridge import __version__
from bridge.errors import BadRequest, BridgeError, Forbidden, Internal, NotFound, Unavailable

# -- routes --------------------------------------------------------------------------------------

HEALTH_ROUTE = "/v1/health"
JOBS_ROUTE = "/v1/jobs"
# Live stems: a WebSocket (bridge/server_stream.py; the client is engines/cloud/selfhosted_stream.py).
STREAM_ROUTE = "/v1/stream"
# The first message of a live stream names this version; the server refuses another.
STREAM_VERSION = 1
# What the client's first message may set (its stream.* settings); the server's config decides the rest.
STREAM_SETTINGS = ("model", "sample_rate", "channels", "context_seconds", "hop_seconds", "lookahead_seconds",
                   "crossfade_ms")
# Below JOBS_ROUTE, as path templates (FastAPI's syntax); `job_route` fills them in.
JOB = "/{job_id}"
JOB_EVENTS = "/{job_id}/events"
JOB_CANCEL = "/{job_id}/cancel"
JOB_OUTPUT = "/{job_id}/outputs/{name}"


def job_route(template: str, **values: str) -> str:
    """The path of a job route: `job_route(JOB_OUTPUT, job_id="ab12", name="drums")`."""
    return JOBS_ROUTE + template.format(**values)


# -- requests ------------------------------------------------------------------------------------

TASKS = ("stems", "generate", "transcribe", "tts")
# The params each task takes (the names the daemon's job code uses for every tier).
TASK_PARAMS: dict[str, tuple[str, ...]] = {
    "stems": ("model", "stems", "two_stems", "format", "encoding", "shifts"),
    "generate": ("prompt", "duration_seconds", "seed", "temperature", "top_k", "guidance_scale", "steps",
                 "negative_prompt", "model_family"),
    "transcribe": ("language",),
    "tts": ("text", "lang", "speed"),
}
FilePart = Literal["required", "optional", "none"]
# Which tasks upload a file: the audio (stems, transcribe), an optional melody (generate), none (tts).
FILE_PART: dict[str, FilePart] = {"stems": "required", "generate": "optional", "transcribe": "required",
                                  "tts": "none"}
# The multipart form of `POST JOBS_ROUTE`: the file part, then the text fields (params is JSON text).
FILE_FIELD = "file"
FORM_FIELDS = ("task", "params", "request_id")

# -- replies -------------------------------------------------------------------------------------

JOB_STATES = ("queued", "running", "done", "failed", "canceled")
FINISHED_STATES: frozenset[str] = frozenset({"done", "failed", "canceled"})
# The output formats and the media type each is served with.
MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac"}
# Sent by the client and answered by the server's health route (`version`).
USER_AGENT = f"flowstate/{__version__}"
# Fly's proxy routes a request carrying this header to the machine it names (the job's `instance`).
INSTANCE_HEADER = "fly-force-instance-id"

# -- errors --------------------------------------------------------------------------------------

# The HTTP status the server answers a Protocol v1 error code with ...
STATUS_FOR_CODE = {
    "bad_request": 400,
    "unknown_command": 404,
    "not_found": 404,
    "busy": 409,
    "unavailable": 503,
    "forbidden": 403,
    "internal": 500,
}
# ... the code it gives an HTTP error raised by the framework (401 a missing token, 413 an upload too large) ...
CODE_FOR_STATUS = {400: "bad_request", 401: "forbidden", 403: "forbidden", 404: "not_found", 409: "busy",
                   413: "bad_request", 422: "bad_request", 503: "unavailable"}
# ... and what the client raises for a job that failed on the server with a code: `busy` there is
# `unavailable` here (another tier, or a later try, may serve).
ERROR_FOR_CODE: dict[str, type[BridgeError]] = {
    "bad_request": BadRequest,
    "unknown_command": BadRequest,
    "not_found": NotFound,
    "forbidden": Forbidden,
    "busy": Unavailable,
    "unavailable": Unavailable,
    "internal": Internal,
}


def model_name(ref: str) -> str:
    """A model as the server names it in its health route, and as the client compares it: the last
    part of a path or hub id (no server paths; a local copy of `facebook/musicgen-small` matches the
    hub name)."""
    return ref.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
