"""The self-hosted tier on Ray Serve: `flowstate serve --ray` (`server.backend: ray`).

The HTTP side is bridge/server.py unchanged: the same FastAPI app (routes, token, Host guard, SSE,
uploads, ranged downloads, error codes), the same durable job queue in `data_dir` and the same
daemon job handlers. Only where a job's work runs differs: `RayBackend` hands each job to a Ray
Serve deployment of its task (`flowstate-stems`, `-generate`, `-transcribe`, `-tts`), whose replicas
each keep their model warm (`TaskReplica`). On one machine the server starts a local Ray instance
by itself; with `server.ray.address` (`--address`) it joins an existing cluster, whose nodes may
hold GPUs the server's machine lacks.

What a job carries: its args (paths relative to data_dir) and the bytes of its upload go to the
replica, which lays them out in its own scratch folder under the same relative paths, runs the
daemon's handler there and streams back, over a Serve streaming response, first who it is (the
replica id, recorded as the job's route), then progress, then the result with the bytes of every
output. The server writes the outputs into its own `outputs/`. So no folder is shared between
nodes, outputs reach the client whichever replica ran the job, and job state never lives in a
replica: the queue stays in the server's SQLite store, which a restarted server requeues from.

A replica that dies mid-job (killed, out of memory, node lost) ends its stream with a Ray actor
error; the job is then sent again, to another replica (Serve replaces the dead one), up to
`server.ray.max_retries` times, and recorded once, by the server's runner, from the one stream
that finished. The result names the replica that ran it and the tries it took (`result.ray`).

Batching: in a stems replica, every HTDemucs segment of every job it runs goes through one
`@serve.batch` method; segments of one shape (one model, the configured segment length) that
arrive within `batch_wait_seconds` of each other go through the model as one batch of up to
`max_batch_size` (HTDemucs treats each row on its own, so the stems are what they would be alone).
`result.ray.batch_sizes` lists the batch each of the job's segments went through.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import ReplicaUnavailableError

from bridge.config import Config, RayDeploymentConfig, RayServerConfig
from bridge.errors import BadRequest, BridgeError, Busy, Forbidden, Internal, NotFound, StartupError, Unavailable
from bridge.jobs import JobCanceled, JobContext, JobStore
from bridge.paths import PathPolicy
from bridge.protocol import Origin
from bridge.separate import SeparateJob
from bridge.server import serve as serve_plain
from bridge.server_tasks import JOB_HANDLERS, Handler, TaskHandler
from engines.separation.files import FileSeparator

log = logging.getLogger(__name__)

APP_PREFIX = "flowstate-"
# The args of a job that name an upload (relative to data_dir), by task.
_INPUT_ARGS = ("path", "melody_path")
_ERRORS: dict[str, type[BridgeError]] = {cls.code: cls for cls in (BadRequest, NotFound, Busy, Unavailable, Forbidden,
                                                                   Internal)}
# What a dead or vanishing replica looks like to the caller of its stream.
_REPLICA_LOST = (RayActorError, ReplicaUnavailableError)


_SCRATCH_PREFIX = "flowstate-replica-"


def _sweep_scratch() -> None:
    """Remove the scratch folders of replicas on this machine whose process is gone: a replica that
    was killed never ran its cleanup (its pid is in the folder's name)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_SCRATCH_PREFIX}*-*"):
        pid = folder.name[len(_SCRATCH_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def app_name(task: str) -> str:
    """The Serve application (and deployment) that runs `task`."""
    return f"{APP_PREFIX}{task}"


# -- the replica ---------------------------------------------------------------------------------


class _BatchedSeparateJob(SeparateJob):
    """The daemon's stems handler whose engines send each segment through `batched` (the replica's
    `@serve.batch` method) instead of straight into the model."""

    def __init__(self, config: Config, paths: PathPolicy,
                 batched: Callable[[Callable[[Any], Any], Any], Any]) -> None:
        super().__init__(config, paths)
        self._batched = batched

    def engine(self, model: str, shifts: int) -> FileSeparator:
        engine = super().engine(model, shifts)

        def wrap() -> bool:
            return bool(engine.wrap_forward(lambda forward: lambda mix: self._batched(forward, mix)))

        self.warm(("batched", model, shifts), wrap)
        return engine


class TaskReplica:
    """One replica of a task's deployment: the daemon's job handler for the task, its model warm
    across jobs, working in a scratch folder of its own (see the module's docstring)."""

    def __init__(self, config: Config, task: str, max_batch_size: int, batch_wait_seconds: float) -> None:
        import torch  # deferred: only a replica runs models

        self._torch = torch
        self._task = task
        _sweep_scratch()
        self._scratch = Path(tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{os.getpid()}-"))
        config = config.model_copy(update={"paths": config.paths.model_copy(update={"roots": [self._scratch]})})
        paths = PathPolicy([self._scratch])
        self._max_batch_size = max_batch_size
        self._batch_wait_seconds = batch_wait_seconds
        self._active = 0  # jobs running on this replica now
        self._active_lock = threading.Lock()
        self._last_forward_seconds = 0.0
        job: Callable[[JobContext], dict[str, Any]]
        if task == "stems" and max_batch_size > 1:
            job = _BatchedSeparateJob(config, paths, self._submit_segment)
        else:
            job = JOB_HANDLERS[task](config, paths)
        self._handler = TaskHandler(task, job, self._scratch)
        self._store = JobStore(self._scratch / "replica.sqlite3")
        self._store_lock = threading.Lock()
        self._current = threading.local()  # the running job's batch sizes, per job thread
        self._loop: asyncio.AbstractEventLoop | None = None
        context = serve.get_replica_context()
        self.replica_id = context.replica_id.unique_id
        self.actor_name = ray.get_runtime_context().get_actor_name() or ""
        if isinstance(job, SeparateJob):  # warm before the first request (and wrapped for batching)
            job.engine(config.separate.model, config.separate.shifts).load()
        log.info("replica %s of %s ready in %s", self.replica_id, task, self._scratch)

    def __del__(self) -> None:
        store = getattr(self, "_store", None)
        if store is not None:
            store.close()
        shutil.rmtree(getattr(self, "_scratch", ""), ignore_errors=True)

    async def run(self, job: dict[str, Any], inputs: dict[str, bytes]) -> AsyncIterator[dict[str, Any]]:
        """Run one job: yields `{"replica", "actor"}`, then `{"fraction"}` as it goes, then one of
        `{"result", "files", "batch_sizes"}`, `{"error": {"code", "message"}}` or `{"canceled": True}`."""
        self._loop = asyncio.get_running_loop()
        yield {"replica": self.replica_id, "actor": self.actor_name}
        updates: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def publish(event: str, job_id: str, origin: Origin | None, /, **data: Any) -> None:
            if event == "job.progress" and self._loop is not None:
                self._loop.call_soon_threadsafe(updates.put_nowait, {"fraction": data["fraction"]})

        context = await asyncio.to_thread(self._open, job, inputs, publish)
        work = asyncio.ensure_future(asyncio.to_thread(self._work, context))
        try:
            while not work.done():
                getter = asyncio.ensure_future(updates.get())
                await asyncio.wait({getter, work}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            while not updates.empty():
                yield updates.get_nowait()
            yield await work
        except (asyncio.CancelledError, GeneratorExit):
            context.request_cancel()  # the caller left: the job stops at its next segment
            raise

    def _open(self, job: dict[str, Any], inputs: dict[str, bytes], publish: Any) -> JobContext:
        for relative, data in inputs.items():
            path = self._scratch / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        with self._store_lock:  # the job claimed is the one just submitted
            self._store.submit(job["kind"], job["args"])
            claimed = self._store.claim_next()
        if claimed is None:
            raise Internal(f"replica {self.replica_id}: the job it was handed vanished from its own store")
        return JobContext(claimed, self._store, publish)

    def _work(self, context: JobContext) -> dict[str, Any]:
        self._current.batch_sizes = []
        args = context.job.args
        with self._active_lock:
            self._active += 1
        try:
            result = self._handler(context)
            files = {relative: (self._scratch / relative).read_bytes() for relative in result["files"].values()}
            return {"result": result, "files": files, "batch_sizes": self._current.batch_sizes}
        except JobCanceled:
            return {"canceled": True}
        except BridgeError as err:
            return {"error": {"code": err.code, "message": err.message}}
        except Exception as err:
            log.exception("job %s (%s) failed on replica %s", context.job.id, context.job.kind, self.replica_id)
            return {"error": {"code": "internal", "message": f"{context.job.kind} failed on replica {self.replica_id} "
                              f"({type(err).__name__}: {err}); the replica's log has the traceback"}}
        finally:
            context.run_at_end()  # what the handler held (a separation's track folder) is let go
            with self._active_lock:
                self._active -= 1
            for name in ("out_dir", *_INPUT_ARGS):
                if args.get(name):  # outputs/<key>, uploads/<key>/<file>: the key's folder goes
                    parts = Path(args[name]).parts
                    shutil.rmtree(self._scratch.joinpath(*parts[:2]), ignore_errors=True)

    # -- batching ----------------------------------------------------------------------------------

    def _submit_segment(self, forward: Callable[[Any], Any], mix: Any) -> Any:
        """From a job's thread: one segment through the batcher on the replica's loop."""
        if self._loop is None:  # run() sets it before any job thread starts
            raise Internal(f"replica {self.replica_id}: a segment arrived before any job")
        future = asyncio.run_coroutine_threadsafe(self._segment(forward, mix), self._loop)
        out, size = future.result()
        self._current.batch_sizes.append(size)
        return out

    async def _segment(self, forward: Callable[[Any], Any], mix: Any) -> tuple[Any, int]:
        # A batch goes as soon as every job running here has handed in a segment (so a lone job
        # never waits), else after the wait: the configured one plus the last forward's time,
        # because a job whose segment is in that forward hands in its next only once it returns.
        with self._active_lock:
            active = self._active
        batcher: Any = self._forward_batch  # serve.batch's wrapper: its setters are not in its type
        batcher.set_max_batch_size(max(1, min(self._max_batch_size, active)))
        batcher.set_batch_wait_timeout_s(self._batch_wait_seconds + self._last_forward_seconds if active > 1 else 0.0)
        result: tuple[Any, int] = await self._forward_batch((forward, mix))
        return result

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def _forward_batch(self, items: list[tuple[Callable[[Any], Any], Any]]) -> list[tuple[Any, int]]:
        """Segments of one model and shape go through it as one batch (set by config at start)."""
        groups: dict[tuple[int, tuple[int, ...]], list[int]] = {}
        for index, (forward, mix) in enumerate(items):
            groups.setdefault((id(forward), tuple(mix.shape)), []).append(index)
        results: list[tuple[Any, int]] = [(None, 0)] * len(items)
        for indices in groups.values():
            forward = items[indices[0]][0]
            batch = self._torch.cat([items[i][1] for i in indices])
            out = await asyncio.to_thread(self._forward, forward, batch)
            for row, i in enumerate(indices):
                results[i] = (out[row:row + 1], len(indices))
        return results

    def _forward(self, forward: Callable[[Any], Any], batch: Any) -> Any:
        started = time.monotonic()
        with self._torch.inference_mode():  # thread-local: the job thread's mode does not reach here
            out = forward(batch)
        self._last_forward_seconds = time.monotonic() - started
        return out


# -- the server's side ---------------------------------------------------------------------------


class _RemoteTask:
    """The server's handler for a task: ships each job to the task's deployment and writes back
    what it returns. Retries on another replica when the one running it dies."""

    def __init__(self, task: str, handle: Any, data_dir: Path, max_retries: int) -> None:
        self._task = task
        self._handle = handle.options(stream=True)
        self._data_dir = data_dir
        self._max_retries = max_retries

    def __call__(self, ctx: JobContext) -> dict[str, Any]:
        args = ctx.job.args
        inputs = {str(args[name]): (self._data_dir / args[name]).read_bytes()
                  for name in _INPUT_ARGS if args.get(name)}
        job = {"id": ctx.job.id, "kind": ctx.job.kind, "args": args}
        lost: list[str] = []
        for tries in range(1, self._max_retries + 2):
            replica: dict[str, str] = {}
            try:
                return self._once(ctx, job, inputs, replica, tries)
            except _REPLICA_LOST as err:
                what = replica.get("replica", "a replica")
                lost.append(f"{what}: {type(err).__name__}")
                log.warning("job %s: %s of %s was lost mid-job (%s); %s", ctx.job.id, what, app_name(self._task),
                            type(err).__name__, "trying another" if tries <= self._max_retries else "giving up")
                ctx.check_cancelled()
        raise Unavailable(f"{self._task}: the replica running the job was lost {len(lost)} time(s) "
                          f"({'; '.join(lost)}); server.ray.max_retries is {self._max_retries}")

    def _once(self, ctx: JobContext, job: dict[str, Any], inputs: dict[str, bytes], replica: dict[str, str],
              tries: int) -> dict[str, Any]:
        stream = self._handle.run.remote(job, inputs)
        try:
            for item in stream:
                ctx.check_cancelled()
                if "replica" in item:
                    replica.update(item)
                    ctx.set_route({"tier": "ray", "deployment": app_name(self._task), "replica": item["replica"],
                                   "actor": item["actor"], "try": tries})
                elif "fraction" in item:
                    ctx.progress(item["fraction"])
                elif "error" in item:
                    raise _ERRORS.get(item["error"]["code"], Internal)(item["error"]["message"])
                elif "canceled" in item:
                    raise JobCanceled(f"job {ctx.job.id} was canceled")
                else:
                    return self._finish(ctx, item, replica, tries)
        except JobCanceled:
            stream.cancel()
            raise
        raise Internal(f"{self._task}: replica {replica.get('replica', '?')} ended the job's stream without a result")

    def _finish(self, ctx: JobContext, item: dict[str, Any], replica: dict[str, str], tries: int) -> dict[str, Any]:
        for relative, data in item["files"].items():
            target = self._data_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            ctx.register_output(target.parent)
            partial = target.with_name(f".{target.name}.partial")
            ctx.register_output(partial)
            partial.write_bytes(data)
            os.replace(partial, ctx.register_output(target))
        ray_info = {"replica": replica.get("replica"), "tries": tries, "batch_sizes": item["batch_sizes"]}
        return {**item["result"], "ray": ray_info}


class RayBackend:
    """Jobs on Ray Serve: one deployment per task, started with the server and deleted with it."""

    name = "ray"

    def __init__(self, settings: RayServerConfig) -> None:
        self.settings = settings
        self._apps: list[str] = []
        self._started_ray = False
        self._connected = False  # this backend called ray.init (a caller's own Ray session is left alone)
        self._tasks: tuple[str, ...] = ()

    def start(self, config: Config, paths: PathPolicy, data_dir: Path, tasks: Sequence[str]) -> dict[str, Handler]:
        settings = self.settings
        started = time.monotonic()
        try:
            if not ray.is_initialized():
                self._connected = True
                if settings.address:
                    ray.init(address=settings.address, log_to_driver=False)
                else:
                    ray.init(num_cpus=settings.num_cpus, object_store_memory=settings.object_store_bytes,
                             include_dashboard=False, log_to_driver=False)
                    self._started_ray = True
            serve.start(proxy_location="Disabled")  # HTTP is the server's own; replicas take handles
        except (ConnectionError, RuntimeError, ValueError) as err:
            where = f"the Ray cluster at {settings.address}" if settings.address else "a local Ray instance"
            raise StartupError(f"server.backend ray: cannot reach {where} ({type(err).__name__}: {err})") from err
        handlers: dict[str, Handler] = {}
        self._tasks = tuple(tasks)
        for task in tasks:
            deployment = serve.deployment(name=app_name(task))(TaskReplica).options(**_options(getattr(settings, task)))
            app = deployment.bind(config, task, settings.max_batch_size, settings.batch_wait_seconds)
            self._apps.append(app_name(task))
            try:
                handle = serve.run(app, name=app_name(task), route_prefix=None)
            except (RuntimeError, ray.exceptions.RayError) as err:  # e.g. a replica that cannot load its model
                raise StartupError(f"server.backend ray: the {app_name(task)} deployment did not start: {err}") from err
            handlers[task] = _RemoteTask(task, handle, data_dir, settings.max_retries)
        log.info("Ray Serve: %s ready in %.1f s (%s)", ", ".join(self._apps) or "no deployments",
                 time.monotonic() - started, settings.address or "a local Ray instance")
        return handlers

    def workers(self, config: Config) -> int:
        # As many jobs in flight as the deployments at their largest take at once.
        capacity = [getattr(self.settings, task).max_replicas * getattr(self.settings, task).max_ongoing_requests
                    for task in self._tasks]
        return max(1, sum(capacity))

    def device(self, config: Config) -> str:
        # The replicas' (each checks it when it starts: a deployment asking for cuda on nodes without
        # it fails to start, and so does the server); the server's own machine may have no GPU.
        return config.separate.engine_device

    def health(self) -> dict[str, Any]:
        deployments = {task: _options(getattr(self.settings, task)) for task in self._tasks}
        return {"name": self.name, "address": self.settings.address or "local",
                "max_batch_size": self.settings.max_batch_size, "deployments": deployments}

    def stop(self) -> None:
        if not ray.is_initialized():
            return
        for name in self._apps:
            try:
                serve.delete(name)
            except (RuntimeError, ray.exceptions.RayError) as err:
                log.warning("Ray Serve: could not delete %s: %s", name, err)
        self._apps = []
        if self._started_ray:
            serve.shutdown()
        if self._connected:
            ray.shutdown()  # the local instance ends; on a cluster, only this server's connection
            self._connected = self._started_ray = False


def _options(deployment: RayDeploymentConfig) -> dict[str, Any]:
    """Ray Serve's deployment options for one task's settings."""
    options: dict[str, Any] = {
        "max_ongoing_requests": deployment.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": deployment.num_cpus, "num_gpus": deployment.num_gpus},
    }
    if deployment.min_replicas == deployment.max_replicas:
        options["num_replicas"] = deployment.max_replicas
    else:
        options["autoscaling_config"] = {"min_replicas": deployment.min_replicas,
                                         "max_replicas": deployment.max_replicas,
                                         "target_ongoing_requests": deployment.target_ongoing_requests,
                                         "upscale_delay_s": deployment.upscale_delay_seconds,
                                         "downscale_delay_s": deployment.downscale_delay_seconds}
    return options


def serve_ray(config: Config, host: str, port: int, data_dir: Path | None = None, **kwargs: Any) -> None:
    """`bridge.server.serve` with the jobs on Ray Serve (the same arguments)."""
    serve_plain(config, host, port, data_dir, backend=RayBackend(config.server.ray), **kwargs)
