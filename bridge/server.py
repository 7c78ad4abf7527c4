"""The self-hosted tier: an HTTP server that runs this project's engines for other machines.

`flowstate serve --host H --port P` runs `serve`; `create_app` builds the FastAPI app (tests and
other ASGI servers use it directly). The wire protocol, all JSON except uploads and outputs (its
routes, tasks, params, states and error table are declared in engines/cloud/selfhosted_wire.py,
which the client imports too):

    GET  /v1/health                        no auth: {"ok", "version", "device", "tasks", "models", "queued",
                                           "running", ...}; `tasks` lists what this server runs
                                           (server.tasks), `models` the model each runs (a name, never a path)
    POST /v1/jobs                          multipart: task, params (JSON object text), file (stems and
                                           transcribe: the audio; generate: an optional melody; tts: none),
                                           request_id (optional; the same id returns the same job)
                                           -> 201 (created) or 200 (an existing job) with the job
    GET  /v1/jobs/{id}                     the job: id, state, progress, error, result (outputs; transcribe:
                                           text, segments, language)
    GET  /v1/jobs/{id}/events              Server-Sent Events: progress ..., then done|failed|canceled
    POST /v1/jobs/{id}/cancel              the job (a running job ends `canceled` at its next segment)
    GET  /v1/jobs/{id}/outputs/{name}      an output file (a stem; "audio" for generate and tts); 404
                                           once it has expired
    WS   /v1/stream                        live stems: blocks in, stems out (bridge/server_stream.py)

Tasks run the daemon's own job handlers (bridge.separate, bridge.generate, bridge.transcribe,
bridge.speech), local only, with the request checked by the same `check_request` the daemon uses;
their params, handlers and backends are bridge/server_tasks.py's. params: stems {model, stems,
two_stems, format, encoding, shifts}; generate {prompt, duration_seconds, seed, temperature, top_k,
guidance_scale, steps, negative_prompt, model_family}; transcribe {language}; tts {text, lang,
speed}. generate, transcribe and tts run the model this server's config names.

Every `/v1/jobs` route wants `Authorization: Bearer <token>` (FLOWSTATE_SERVER_TOKEN) and answers
401 otherwise. Every route, health included, answers 400 to a request whose Host header names a
host this server does not serve (DNS rebinding: a web page on evil.example whose name resolves to
127.0.0.1 must not read it): IP addresses, `localhost` and `server.allowed_hosts` are served.
Errors are the project's shape, `{"ok": false, "error": {"code", "message"}}`, with the HTTP status
that matches the code (bad_request 400/413/416/422, forbidden 401/403, not_found 404, busy 409,
unavailable 503, internal 500); malformed input of any kind is a 4xx, never `internal`.

State: the only state is on disk under `data_dir` — the job queue `jobs.sqlite3` (bridge.job_store's
durable `JobStore`: a restarted server requeues the jobs it was running), `uploads/<key>/` and
`outputs/<key>/`, where `<key>` is a fresh name per accepted upload, recorded in the job's args.
The key cannot be the job id: the store assigns that id inside `submit`, and a worker may claim
the job at once, so the file must already lie where the job's args say. Uploads are deleted once
their job ends; outputs (and any orphan) `retention_seconds` after they were written.

Where the jobs run is the `Backend`'s business: `LocalBackend` (the default) runs them on this
process's worker threads; `bridge.server_ray.RayBackend` (`flowstate serve --ray`) on Ray Serve
deployments, one per task, on this machine or a cluster. The routes, the store and the folders
above are the same either way.

Scaling out: with `server.store` set to a PostgreSQL DSN, several instances (on several machines)
share one queue and one `data_dir` (a shared volume: the uploads a retry needs and the outputs any
instance serves lie there). Any instance takes uploads and answers status, SSE, cancel and downloads
for every job; each claims queued jobs for itself under a lease it renews (bridge/job_store.py), and
a job whose instance dies is run again by another once the lease runs out, recorded once (its
`attempts` count the runs; `runner` names the instance that claimed it last). Without it, the store
is the SQLite file in `data_dir`, whose WAL needs every process on one host: each instance keeps its
own `data_dir` and queue, and everything about a job goes back to the instance that created it. Each
job reply carries `instance` (the `instance_id` given here, e.g. Fly's machine id); `SelfHostedTier`
sends it back as `fly-force-instance-id`, which Fly's proxy routes on.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from bridge import __version__
from bridge.config import Config, user_data_dir
from bridge.database import redact_dsn
from bridge.errors import BadRequest, BridgeError, Busy, NotFound, StartupError, Unavailable
from bridge.job_queue import JobQueue
from bridge.job_store import FINISHED_STATES, Job, JobStore, default_owner
from bridge.jobs import JobRunner
from bridge.paths import PathPolicy
from bridge.protocol import Origin
from bridge.server_http import (
    FORM_OVERHEAD_BYTES,
    Form,
    HostCheck,
    PayloadTooLarge,
    RangeNotSatisfiable,
    clip,
    error_body,
    is_ip,
    parse_range,
    read_range,
)
from bridge.server_stream import StreamSessions, add_stream_route
from bridge.server_tasks import PARAMS, Backend, LocalBackend, check_task_request, explain
from engines.cloud.selfhosted_wire import (
    CODE_FOR_STATUS,
    FILE_FIELD,
    FILE_PART,
    FORM_FIELDS,
    HEALTH_ROUTE,
    JOB,
    JOB_CANCEL,
    JOB_EVENTS,
    JOB_OUTPUT,
    JOBS_ROUTE,
    MEDIA_TYPES,
    STATUS_FOR_CODE,
    TASK_PARAMS,
    TASKS,
    job_route,
    model_name,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 512 * 1024 * 1024  # a 10-minute 96 kHz/24-bit stereo WAV is 346 MB
DEFAULT_RETENTION_SECONDS = 24 * 3600.0
EVENTS_POLL_SECONDS = 0.2
# Idle proxies (Fly's among them) close a silent connection after about a minute.
EVENTS_KEEPALIVE_SECONDS = 15.0
# The names a local client reaches this server by; IP literals are always served (see HostCheck).
LOOPBACK_NAMES = ("localhost",)
# Parse the body in pieces of about this size on a worker thread, so file writes never run on the loop.
_PARSE_BATCH_BYTES = 1024 * 1024
_COUNT_LIMIT = 100_000
# After the drain, how long canceled jobs get to reach their next cancel check.
_CANCEL_WAIT_SECONDS = 2.0
_KEY = re.compile(r"^[0-9a-f]{16}$")



# -- the app -------------------------------------------------------------------------------------


class _Server:
    """What the routes share: the store, the runner and the folders. Created per app."""

    def __init__(self, config: Config, data_dir: Path, token: str, max_upload_bytes: int,
                 retention_seconds: float, instance_id: str | None, backend: Backend) -> None:
        self.data_dir = Path(os.path.realpath(data_dir))
        self.uploads = self.data_dir / "uploads"
        self.outputs = self.data_dir / "outputs"
        # The stems handler may read and write inside data_dir and nowhere else.
        self.config = config.model_copy(update={"paths": config.paths.model_copy(update={"roots": [self.data_dir]})})
        self.paths = PathPolicy([self.data_dir])
        self._token = token.encode()
        self.max_upload_bytes = max_upload_bytes
        self.retention_seconds = retention_seconds
        self.instance_id = instance_id
        self.tasks = tuple(task for task in TASKS if task in config.server.tasks)
        self.device = ""
        self.backend = backend
        self.stopping = threading.Event()  # set on SIGINT/SIGTERM: event streams end, so shutdown is quick
        self.queue: JobQueue | None = None  # store, handlers and runner; None until `start` and after `stop`
        self.store: JobStore | None = None  # the queue's
        self.runner: JobRunner | None = None  # the queue's
        self._janitor: _Janitor | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the store and start the workers; a second call does nothing."""
        if self.runner is not None:
            return
        self.device = self.backend.device(self.config)
        for folder in (self.uploads, self.outputs):
            folder.mkdir(parents=True, exist_ok=True)
        self.store = open_store(self.config, self.data_dir, self.instance_id)
        # The daemon's own handlers, local only (no router, no tiers), here or on the backend's replicas.
        handlers = self.backend.start(self.config, self.paths, self.data_dir, self.tasks)
        workers = self.backend.workers(self.config)
        self.queue = JobQueue(self.store, handlers, workers, _log_event, max_attempts=self.config.jobs.max_attempts)
        self.runner = self.queue.runner
        requeued = self.queue.start()
        self._janitor = _Janitor(self.store, self.data_dir, self.retention_seconds)
        self._janitor.start()
        log.info("self-hosted tier: tasks %s, data in %s, device %s, %s backend, %d worker(s), uploads up to %d "
                 "bytes%s", ", ".join(self.tasks) or "none", self.data_dir, self.device, self.backend.name, workers,
                 self.max_upload_bytes, f", {len(requeued)} job(s) requeued" if requeued else "")

    def stop(self) -> None:
        """Stop claiming jobs, let running ones finish within daemon.shutdown_timeout_seconds, cancel
        what is left, release the handlers' warm engines, close the store. A second call does nothing."""
        self.stopping.set()
        if self._janitor is not None:
            self._janitor.stop()
            self._janitor = None
        if self.runner is not None:
            left = self.runner.stop(self.config.daemon.shutdown_timeout_seconds)
            if left and self.store is not None and self.store.is_shared:
                # Other instances share the queue: the jobs go back to it (their attempt not
                # counted: a stop is not a crash) and one of those instances runs them now.
                handed = self.runner.hand_back()
                log.warning("handing %d job(s) still running at shutdown to the other instances: %s", len(handed),
                            ", ".join(handed))
                # Their workers stop at the next segment, recording nothing: a worker thread still in
                # native code when the interpreter exits would abort the process.
                self.runner.stop(_CANCEL_WAIT_SECONDS, cancel_running=True)
            elif left:
                # Drained, now cancel (they end at their next segment): a client following one learns
                # at once and can try another tier, where a job requeued on a machine that may stay
                # stopped would run later for nobody. A crash still leaves jobs to requeue.
                log.warning("canceling %d job(s) still running at shutdown: %s", len(left), ", ".join(left))
                self.runner.stop(_CANCEL_WAIT_SECONDS, cancel_running=True)
            self.runner = None
        if self.queue is not None:
            self.queue.close_engines()
            self.queue = None
        self.backend.stop()
        if self.store is not None:
            self.store.close()
            self.store = None

    def get_store(self) -> JobStore:
        if self.store is None:
            raise Unavailable("the job store is not open (the server is starting or stopping); try again")
        return self.store

    def job(self, job_id: str) -> Job:
        try:
            return self.get_store().get(job_id)
        except NotFound:
            if self.get_store().is_shared:
                raise NotFound(f"job {clip(job_id)!r} is not known to this server's shared job store") from None
            where = f" (instance {self.instance_id})" if self.instance_id else ""
            raise NotFound(f"job {clip(job_id)!r} is not known on this server{where}; a job lives on the instance "
                           "that created it") from None

    def models(self) -> dict[str, str]:
        """The model each offered task runs, as a name (a path's last part: no server paths)."""
        config = self.config
        refs = {"stems": config.separate.model, "generate": config.generate.model,
                "transcribe": config.transcribe.model, "tts": config.tts.voice}
        return {task: model_name(refs[task]) for task in self.tasks}

    def get_runner(self) -> JobRunner:
        if self.runner is None:
            raise Unavailable("the job runner is not running (the server is starting or stopping); try again")
        return self.runner

    # -- auth --------------------------------------------------------------------------------------

    def token_ok(self, authorization: str) -> bool:
        """Whether an Authorization header carries this server's token."""
        scheme, _, given = authorization.partition(" ")
        # Constant-time: the comparison must not tell an attacker how much of the token was right.
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token)

    def authorize(self, request: Request) -> None:
        if not self.token_ok(request.headers.get("authorization", "")):
            raise HTTPException(
                401, "missing or wrong token: send 'Authorization: Bearer <FLOWSTATE_SERVER_TOKEN>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    # -- views -------------------------------------------------------------------------------------

    def view(self, job: Job) -> dict[str, Any]:
        """A job as the API shows it: no server paths, outputs as URLs."""
        error = None if job.error_code is None else {"code": job.error_code, "message": job.error_message or ""}
        result = None
        if job.result is not None:
            result = {k: v for k, v in job.result.items() if k != "files"}
            result["outputs"] = {name: job_route(JOB_OUTPUT, job_id=job.id, name=name)
                                 for name in job.result.get("files", {})}
        return {
            "id": job.id,
            "task": job.kind,
            "state": job.state,
            "progress": job.progress,
            "error": error,
            "result": result,
            "request_id": job.request_id,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "attempts": job.attempts,
            "instance": self.instance_id,
            # Which instance claimed it last (a shared store: it may be another than this one).
            "runner": _instance_of(job.owner),
        }

    def output_file(self, job_id: str, name: str) -> tuple[BinaryIO, str]:
        """The output, open for reading, and its format; NotFound once the janitor removed it.
        Open, because the janitor may remove it at any moment: an open file is still read whole."""
        job = self.job(job_id)
        if job.state != "done":
            raise Busy(f"job {job_id} is {job.state}; its outputs can be fetched once it is done")
        files: dict[str, str] = (job.result or {}).get("files", {})
        if name not in files:
            raise NotFound(f"job {job_id} has no output {clip(name)!r}; it has {', '.join(sorted(files)) or 'none'}")
        path = Path(os.path.realpath(self.data_dir / files[name]))
        if self.outputs not in path.parents:  # a tampered database must not serve the whole disk
            raise NotFound(f"job {job_id}: output {name!r} lies outside this server's outputs folder")
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise NotFound(
                f"job {job_id}: output {name!r} has expired (outputs are kept "
                f"{self.retention_seconds / 3600:g} h after they are written); submit the job again"
            ) from None
        return handle, (job.result or {}).get("format", path.suffix.lstrip("."))

    # -- uploads -----------------------------------------------------------------------------------

    async def create_job(self, request: Request) -> tuple[Job, bool]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_upload_bytes + FORM_OVERHEAD_BYTES:
            raise self._too_large(f"the request body is {int(declared)} bytes")
        key = secrets.token_hex(8)
        folder = self.uploads / key
        folder.mkdir(parents=True)
        try:
            form = await self._receive(request, folder)
            return await anyio.to_thread.run_sync(self._submit, form, key)
        except BaseException:
            await anyio.to_thread.run_sync(shutil.rmtree, folder, True)
            raise

    def _too_large(self, got: str) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"file: the upload is larger than this server's limit of {self.max_upload_bytes} bytes "
            f"({self.max_upload_bytes / 1048576:.1f} MiB; {got}); raise server.max_upload_bytes on the "
            "server, or send a shorter or compressed (FLAC) file"
        )

    async def _receive(self, request: Request, folder: Path) -> Form:
        form = Form(request.headers.get("content-type", ""), folder, self.max_upload_bytes, self._too_large)
        pending: list[bytes] = []
        size = 0
        try:
            async for chunk in _stream(request):
                pending.append(chunk)
                size += len(chunk)
                if size >= _PARSE_BATCH_BYTES:
                    await anyio.to_thread.run_sync(form.write, b"".join(pending))
                    pending, size = [], 0
            await anyio.to_thread.run_sync(form.finish, b"".join(pending))
        finally:
            form.close()
        return form

    def _submit(self, form: Form, key: str) -> tuple[Job, bool]:
        task = form.fields.get("task", "")
        if task not in self.tasks:
            offered = ", ".join(self.tasks) or "none (server.tasks is empty)"
            raise BadRequest(f"task: {clip(task)!r} is not offered here; expected one of {offered}")
        text = form.fields.get("params", "") or "{}"
        try:
            params = PARAMS[task].model_validate_json(text)
        except ValidationError as err:
            raise BadRequest(f"params: {explain(err)}") from None
        if form.path is None and FILE_PART[task] == "required":
            raise BadRequest(f"file: no file part in the upload; a {task} job needs the audio as the multipart "
                             "field 'file'")
        if form.path is not None and FILE_PART[task] == "none":
            raise BadRequest(f"file: a {task} job takes no file; send only task and params")
        if form.path is not None and form.file_bytes == 0:
            raise BadRequest(f"file: {form.path.name!r} is empty (0 bytes)")
        request_id = form.fields.get("request_id", "") or None
        if request_id is not None and (len(request_id) > 128 or not request_id.isprintable()):
            raise BadRequest(f"request_id: expected at most 128 printable characters, got {request_id[:40]!r}…")
        # Paths relative to data_dir (the policy's only root), so a moved data folder still works.
        upload = str(form.path.relative_to(self.data_dir)) if form.path is not None else ""
        try:
            args = check_task_request(task, params, upload, f"outputs/{key}", self.paths, self.config)
        except BridgeError as err:  # the client needs what is wrong, not where this server keeps files
            message = err.message.replace(f"{self.uploads / key}/", "").replace(f"{self.data_dir}/", "")
            raise type(err)(message) from None
        for name in ("path", "out_dir", "melody_path"):
            if args.get(name) and Path(args[name]).is_absolute():
                args[name] = str(Path(args[name]).relative_to(self.data_dir))
        job, created = self.get_runner().submit(task, args, request_id)
        if created:
            what = f"{form.path.name} ({form.file_bytes} bytes)" if form.path is not None else "no upload"
            log.info("job %s: %s of %s queued", job.id, task, what)
        else:
            shutil.rmtree(self.uploads / key, ignore_errors=True)  # a retry: the first upload serves
            log.info("job %s: request id seen before; the upload was a retry", job.id)
        return job, created

    # -- events ------------------------------------------------------------------------------------

    async def events(self, job_id: str) -> AsyncIterator[str]:
        """SSE frames for one job until it ends (or the server stops). Polls the store: the runner
        may be in another process sharing the data folder, so the store is what is true."""
        last: tuple[str, float] | None = None
        quiet_since = time.monotonic()
        while True:
            try:
                job = await anyio.to_thread.run_sync(self.get_store().get, job_id)
            except BridgeError as err:
                yield _frame("error", error_body(err.code, err.message))
                return
            if job.finished:
                yield _frame(job.state, self.view(job))
                return
            if (job.state, job.progress) != last:
                last = (job.state, job.progress)
                quiet_since = time.monotonic()
                yield _frame("progress", self.view(job))
            elif time.monotonic() - quiet_since >= EVENTS_KEEPALIVE_SECONDS:
                quiet_since = time.monotonic()
                yield ": keepalive\n\n"
            if self.stopping.is_set():
                yield _frame("error", error_body("unavailable", "the server is shutting down; poll the job again"))
                return
            await asyncio.sleep(EVENTS_POLL_SECONDS)


async def _stream(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise BadRequest("the client disconnected during the upload") from None


def _frame(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _log_event(event: str, job_id: str, origin: Origin | None, /, **data: Any) -> None:
    # Clients read the store (GET or SSE); the runner's events only go to the debug log.
    log.debug("%s %s %s", event, job_id, data)


class _Janitor:
    """Deletes uploads whose job has ended, and outputs (or orphans) older than the retention."""

    def __init__(self, store: JobStore, data_dir: Path, retention_seconds: float) -> None:
        self._store = store
        self._folders = (data_dir / "uploads", data_dir / "outputs")
        self._retention = retention_seconds
        self._interval = min(300.0, max(1.0, retention_seconds / 10))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flowstate-server-janitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except (OSError, BridgeError) as err:
                log.warning("cleaning %s failed: %s", self._folders[0].parent, err)
            self._stop.wait(self._interval)

    def sweep(self) -> None:
        active = {_key(job) for state in ("queued", "running") for job in self._store.list(state, _COUNT_LIMIT)}
        for state in FINISHED_STATES:
            for job in self._store.list(state, 200):  # the newest; older ones were swept before
                upload = self._folders[0] / _key(job)
                if _key(job) not in active and upload.is_dir():
                    shutil.rmtree(upload, ignore_errors=True)
        cutoff = time.time() - self._retention
        for parent in self._folders:
            for folder in parent.iterdir():
                if folder.name in active or not _KEY.match(folder.name):
                    continue
                if _newest_mtime(folder) < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
                    log.info("removed %s (older than %g h)", folder, self._retention / 3600)


def open_store(config: Config, data_dir: Path, instance_id: str | None) -> JobStore:
    """The server's job queue: `server.store`'s PostgreSQL, shared with other instances, or the
    embedded SQLite file in data_dir. Its claims name this instance (`instance_id` or the host)."""
    settings = config.server
    owner = default_owner(instance_id)
    if settings.store is None:
        return JobStore(data_dir / "jobs.sqlite3", owner=owner, lease_seconds=settings.lease_seconds)
    password = settings.store_password.get_secret_value() if settings.store_password is not None else None
    store = JobStore.shared(settings.store, password, owner=owner, lease_seconds=settings.lease_seconds)
    log.info("job store: %s, shared (claims held %g s, as %s)", redact_dsn(settings.store), settings.lease_seconds,
             owner)
    return store


def _instance_of(owner: str | None) -> str | None:
    """The instance part of a claim's owner (`default_owner`: instance, pid, a random part)."""
    return None if owner is None else owner.rsplit(":", 2)[0]


def _key(job: Job) -> str:
    return Path(str(job.args.get("out_dir", ""))).name


def _newest_mtime(folder: Path) -> float:
    newest = folder.stat().st_mtime
    for path in folder.rglob("*"):
        try:
            newest = max(newest, path.stat().st_mtime)
        except FileNotFoundError:
            continue
    return newest


def create_app(config: Config, data_dir: Path, token: str, max_upload_bytes: int, *,
               retention_seconds: float = DEFAULT_RETENTION_SECONDS, instance_id: str | None = None,
               allowed_hosts: Sequence[str] | None = None, backend: Backend | None = None) -> FastAPI:
    """The self-hosted tier as an ASGI app. The job store opens and the workers start when the app
    starts (its lifespan), and stop when it stops; nothing happens before that.

    `allowed_hosts`: the host names served besides IP addresses and `localhost` (None: the config's
    `server.allowed_hosts`); any other Host header is answered 400 (see `HostCheck`). `backend`:
    where the jobs run (None: `LocalBackend`, this process)."""
    if not token or not token.strip():
        raise StartupError("the self-hosted server needs a token: set FLOWSTATE_SERVER_TOKEN")
    if max_upload_bytes < 1:
        raise StartupError(f"max_upload_bytes: expected at least 1 byte, got {max_upload_bytes}")
    if retention_seconds <= 0:
        raise StartupError(f"retention_seconds: expected more than 0 s, got {retention_seconds}")
    server = _Server(config, data_dir, token.strip(), max_upload_bytes, retention_seconds, instance_id,
                     backend or LocalBackend())
    streams = StreamSessions(config, config.server.max_streams)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(server.start)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(server.stop)
            await anyio.to_thread.run_sync(streams.close)

    app = FastAPI(title="Flowstate self-hosted tier", version=__version__, lifespan=lifespan)
    app.state.server = server
    names = [*LOOPBACK_NAMES, *(config.server.allowed_hosts if allowed_hosts is None else allowed_hosts)]
    app.add_middleware(HostCheck, names=names)
    if "*" in names:
        log.warning("server.allowed_hosts has '*': any Host header is served (no DNS rebinding guard)")
    _add_error_handlers(app)

    @app.get(HEALTH_ROUTE)
    def health() -> dict[str, Any]:
        store = server.get_store()
        return {
            "ok": True,
            "version": __version__,
            "device": server.device,
            "tasks": list(server.tasks),
            "models": server.models(),
            "queued": len(store.list("queued", _COUNT_LIMIT)),
            "running": len(store.list("running", _COUNT_LIMIT)),
            "max_upload_bytes": server.max_upload_bytes,
            "instance": server.instance_id,
            "backend": server.backend.health(),
        }

    jobs = APIRouter(prefix=JOBS_ROUTE, dependencies=[Depends(server.authorize)])

    task_field, params_field, request_id_field = FORM_FIELDS
    params_help = "; ".join(f"{task}: {', '.join(names)}" for task, names in TASK_PARAMS.items())

    @jobs.post("", openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
        "type": "object", "required": [FILE_FIELD, task_field],
        "properties": {FILE_FIELD: {"type": "string", "format": "binary"},
                       task_field: {"type": "string", "enum": list(TASKS)},
                       params_field: {"type": "string", "description": f"JSON object; {params_help}"},
                       request_id_field: {"type": "string"}}}}}}})
    async def create_job(request: Request) -> JSONResponse:
        job, created = await server.create_job(request)
        return JSONResponse(server.view(job), status_code=201 if created else 200)

    @jobs.get(JOB)
    def get_job(job_id: str) -> dict[str, Any]:
        return server.view(server.job(job_id))

    @jobs.get(JOB_EVENTS)
    def job_events(job_id: str) -> StreamingResponse:
        server.job(job_id)  # 404 before the stream starts
        return StreamingResponse(server.events(job_id), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @jobs.post(JOB_CANCEL)
    def cancel_job(job_id: str) -> dict[str, Any]:
        server.job(job_id)
        return server.view(server.get_runner().cancel(job_id))

    @jobs.get(JOB_OUTPUT)
    def get_output(job_id: str, name: str, request: Request) -> StreamingResponse:
        handle, fmt = server.output_file(job_id, name)
        try:
            size = os.fstat(handle.fileno()).st_size
            ranges = parse_range(request.headers.get("range"), size)
        except BaseException:
            handle.close()
            raise
        headers = {"Accept-Ranges": "bytes", "Content-Disposition": f'attachment; filename="{name}.{fmt}"'}
        start, end, status = 0, size, 200
        if len(ranges) == 1:  # several ranges: the whole file (RFC 9110 lets a server ignore Range)
            (start, end), status = ranges[0], 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        headers["Content-Length"] = str(end - start)
        return StreamingResponse(read_range(handle, start, end), status_code=status, headers=headers,
                                 media_type=MEDIA_TYPES.get(fmt, "application/octet-stream"))

    app.include_router(jobs)
    add_stream_route(app, server.token_ok, streams)  # live stems (bridge/server_stream.py)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BridgeError)
    async def bridge_error(request: Request, err: BridgeError) -> JSONResponse:
        status = 413 if isinstance(err, PayloadTooLarge) else STATUS_FOR_CODE.get(err.code, 500)
        extra = {}
        if isinstance(err, RangeNotSatisfiable):
            status, extra = 416, {"Content-Range": f"bytes */{err.size}"}
        if status >= 500:
            log.error("%s %s: %s: %s", request.method, request.url.path, err.code, err.message)
        else:
            log.warning("%s %s: %s: %s", request.method, request.url.path, err.code, err.message)
        # Connection: close after a refused upload: the rest of its body is not read.
        refused_upload = status == 413 or (request.method == "POST" and request.url.path == JOBS_ROUTE)
        headers = {"Connection": "close", **extra} if refused_upload else extra
        return JSONResponse(error_body(err.code, err.message), status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        log.warning("%s %s: bad_request: %s", request.method, request.url.path, message)
        return JSONResponse(error_body("bad_request", message), status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        code = CODE_FOR_STATUS.get(err.status_code, "internal" if err.status_code >= 500 else "bad_request")
        if err.status_code == 401:
            log.warning("%s %s: 401 (no valid token) from %s", request.method, request.url.path,
                        request.client.host if request.client else "?")
        return JSONResponse(error_body(code, str(err.detail)), status_code=err.status_code, headers=err.headers)

    @app.exception_handler(Exception)
    async def crashed(request: Request, err: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=err)
        message = f"the server failed ({type(err).__name__}: {err}); its log has the traceback"
        return JSONResponse(error_body("internal", message), status_code=500)


# -- running it ----------------------------------------------------------------------------------


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, with a signal meaning "stop" rather than "die": after the graceful
    shutdown the process exits 0 instead of re-raising the signal (uvicorn's default), so a
    supervisor sees a clean stop. A second SIGINT still forces the exit."""

    def __init__(self, config: uvicorn.Config, stopping: threading.Event) -> None:
        super().__init__(config)
        self._stopping = stopping

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._stopping.set()  # event streams end now, so connections can drain
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, reuse_port=False)
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise StartupError(f"cannot listen on {host}:{port}: {reason} (another server on that port?)") from err
    # Accepted connections inherit it: a live stream's reply is two WebSocket messages (header, stems),
    # and Nagle's algorithm would hold the second until the client's delayed ACK, about 40 ms.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def default_data_dir(config: Config) -> Path:
    """Beside the job database: `<data folder>/server`."""
    database = config.jobs.database
    return (database.parent if database is not None else user_data_dir()) / "server"


def serve(config: Config, host: str, port: int, data_dir: Path | None = None, *,
          max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, retention_seconds: float = DEFAULT_RETENTION_SECONDS,
          instance_id: str | None = None, backend: Backend | None = None) -> None:
    """Run the self-hosted tier until SIGINT or SIGTERM, then shut down gracefully (blocking).
    `backend`: where the jobs run (None: this process; bridge.server_ray.serve_ray passes Ray's).

    The token is `cloud.server_token` (FLOWSTATE_SERVER_TOKEN); without one the server refuses
    to start. Raises StartupError when it cannot start (no token, port taken, no such device).
    """
    secret = config.cloud.server_token
    token = secret.get_secret_value().strip() if secret is not None else ""
    if not token:
        raise StartupError(
            "flowstate serve: no token: set FLOWSTATE_SERVER_TOKEN (or cloud.server_token) to a long random "
            "string, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`; clients send it "
            "as 'Authorization: Bearer <token>'"
        )
    if len(token) < 16:
        log.warning("FLOWSTATE_SERVER_TOKEN is only %d characters; use 32 or more on a public address", len(token))
    # The bind host is a name this server is reached by (when it is a name, e.g. a LAN host name).
    names = [*config.server.allowed_hosts, *([] if is_ip(host) else [host])]
    app = create_app(config, data_dir or default_data_dir(config), token, max_upload_bytes,
                     retention_seconds=retention_seconds, instance_id=instance_id, allowed_hosts=names,
                     backend=backend)
    sock = _listen(host, port)
    state: _Server = app.state.server
    try:
        # Before uvicorn: a failure here is a StartupError with its reason, not uvicorn's exit(3).
        state.start()
    except BridgeError as err:
        sock.close()
        state.stop()
        raise StartupError(f"the self-hosted server cannot start: {err.message}") from err
    server = _Uvicorn(
        uvicorn.Config(
            app, log_config=None, lifespan="on", server_header=False,
            # The parsers the contract was tested on: uvicorn's "auto" would switch to httptools and
            # uvloop wherever they are installed (Ray Serve brings both).
            http="h11", loop="asyncio",
            # Live stems (/v1/stream): float32 audio does not compress; deflate would only cost time.
            ws="websockets-sansio", ws_per_message_deflate=False,
            # Streams and uploads in flight get this long after a signal; then they are cut.
            timeout_graceful_shutdown=max(1, round(config.daemon.shutdown_timeout_seconds)),
        ),
        state.stopping,
    )
    log.info("self-hosted tier listening on http://%s:%d", host, sock.getsockname()[1])
    try:
        server.run(sockets=[sock])
    except SystemExit as err:  # uvicorn exits this way when it cannot start
        raise StartupError(f"the self-hosted server did not start (uvicorn exit {err.code}); "
                           "the log above says why") from None
    finally:
        sock.close()
        state.stop()  # the lifespan normally did this already; a second call does nothing
    if not server.started:
        raise StartupError("the self-hosted server did not start; the log above says why")
