"""Our own GPU server (`flowstate serve`, bridge/server.py) as a tier. What this client and that
server must agree on (routes, tasks and params, states, the error table) is declared once in
`engines/cloud/selfhosted_wire.py`.

`run` uploads the input with its params, follows the remote job by polling (checking for a cancel
several times a second), downloads each stem into `job.work_dir/<stem>.<ext>` atomically and
returns a `TierResult`. A cancel, or any failure after the upload, cancels the remote job.

Idempotency: the upload carries a request id derived from the input's bytes and the params, so a
create retried after a timeout (here, or by the router after an `Unavailable`) finds the job the
first try made instead of starting a second one. A job found that way which failed or was
canceled is not an answer to a new request: the next run moves on to `<id>.1`, `<id>.2`, ...
(still deterministic, so a retry of *that* create dedupes too). A finished job found that way is
reused, unless its outputs have expired.

What it offers: the server lists its tasks and the model each runs in `/v1/health`; the tier offers
a task (to the router, through `offers_model`) only while the server lists it, and generate,
transcribe and tts only for the model the server runs. That answer is cached for
`offers_ttl_seconds`; an unreachable server offers nothing until it answers again.

Sticky instances: when the server names its `instance` (Fly's machine id), every later request
about that job carries `fly-force-instance-id`, so Fly's proxy sends it to the machine that has
the job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bridge.errors import BadRequest, BridgeError, Internal, NotFound, Unavailable
from bridge.fileio import atomic_write
from engines.cloud.base import CheckCancelled, Progress, Tier, TierJob, TierResult
from engines.cloud.http import TierClient, TransportFailed, backoff_seconds, retry_after_seconds, wait
from engines.cloud.selfhosted_wire import (
    ERROR_FOR_CODE,
    FILE_FIELD,
    FILE_PART,
    FINISHED_STATES,
    FORM_FIELDS,
    HEALTH_ROUTE,
    INSTANCE_HEADER,
    JOB,
    JOB_CANCEL,
    JOB_OUTPUT,
    JOB_STATES,
    JOBS_ROUTE,
    MEDIA_TYPES,
    TASK_PARAMS,
    USER_AGENT,
    job_route,
    model_name,
)

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_SECONDS = 3.0
# Status codes another try may fix (the server restarting, a proxy in between, a brief overload).
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# How many earlier jobs for the same input and params (failed or canceled) a run steps past.
_MAX_RESUBMITS = 20
_STEM_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


def _never_cancelled() -> None:
    """For requests that must run even while a job is being cancelled (the cancel itself)."""


class SelfHostedTier(Tier):
    """A `flowstate serve` server at `base_url` (e.g. https://stems.example.net), used as a tier.

    It runs the daemon's own job code, so Stable Audio Open too, where the server's generate.model
    is the one the job asks for (`offers_model` compares the names).

    `usd_per_second` prices the remote run time (a GPU machine's price per second); without it
    `cost_usd` is None. `max_retries` bounds retries of one request after a connection error,
    a timeout, a 408/429 or a 5xx (all our requests are idempotent). Thread-safe.
    """

    tasks = frozenset(TASK_PARAMS)
    offers_stable_audio = True  # the server's own generate.model decides, and offers_model checks it

    def __init__(self, base_url: str, token: str, *, timeout_seconds: float = 30.0, poll_seconds: float = 0.5,
                 name: str = "selfhosted", usd_per_second: float | None = None, max_retries: int = 3,
                 offers_ttl_seconds: float = 30.0) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"{name}: base_url {base_url!r} is not an http(s) URL such as https://stems.example.net")
        if not token:
            raise ValueError(f"{name}: token is empty; set the server's FLOWSTATE_SERVER_TOKEN here too")
        for label, value, low in (("timeout_seconds", timeout_seconds, 0.1), ("poll_seconds", poll_seconds, 0.05)):
            if not value >= low:
                raise ValueError(f"{name}: {label} {value!r} must be at least {low}")
        if usd_per_second is not None and not usd_per_second >= 0:
            raise ValueError(f"{name}: usd_per_second {usd_per_second!r} must be >= 0")
        if max_retries < 0:
            raise ValueError(f"{name}: max_retries {max_retries} must be >= 0")
        self.name = name
        self.base_url = str(url).rstrip("/")
        self.timeout_seconds = float(timeout_seconds)
        self.poll_seconds = float(poll_seconds)
        self.usd_per_second = usd_per_second
        self.max_retries = max_retries
        self.offers_ttl_seconds = float(offers_ttl_seconds)
        self._offers: dict[str, str] | None = None  # {task: model name} when the server last answered
        self._checked: float | None = None  # when the health route was last asked
        self._offers_lock = threading.Lock()
        # Every message this client builds starts with the tier and its URL (never the token).
        self._http = TierClient(
            f"{name} ({self.base_url})",
            {"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT},
            secrets=[token],
        )

    # -- the Tier interface ------------------------------------------------------------------------

    def run(self, job: TierJob, progress: Progress, check_cancelled: CheckCancelled) -> TierResult:
        if not self.supports(job.task):
            raise BadRequest(f"{self.name}: task {job.task!r} is not offered; tasks: {', '.join(sorted(self.tasks))}")
        needs_input = FILE_PART[job.task] == "required"
        if (job.input_path is not None or needs_input) and not Path(job.input_path or "").is_file():
            raise BadRequest(f"{self.name}: input_path {job.input_path!s} is not a file")
        params = server_params(job.params, self.name, job.task)
        started = time.monotonic()
        report = _Monotonic(progress)
        base_id = request_id(None if job.input_path is None else Path(job.input_path), job.task, params,
                             check_cancelled)
        for attempt in range(_MAX_RESUBMITS):
            rid = base_id if attempt == 0 else f"{base_id}.{attempt}"
            remote, created = self._create(job, params, rid, check_cancelled)
            if not created and remote["state"] in ("failed", "canceled"):
                log.info("%s: job %s for this input ended %s earlier; submitting it afresh", self.name,
                         remote["id"], remote["state"])
                continue
            report(0.02)
            try:
                remote = self._follow(remote, report, check_cancelled)
                outputs = self._download(remote, Path(job.work_dir), report, check_cancelled)
            except NotFound:
                if created:
                    raise
                log.info("%s: the outputs of job %s have expired; submitting it afresh", self.name, remote["id"])
                continue
            return self._result(remote, rid, outputs, created, time.monotonic() - started)
        raise Unavailable(f"{self.name} ({self.base_url}): {_MAX_RESUBMITS} earlier jobs for this input and "
                          "params failed or were canceled; not submitting it again")

    def health(self) -> bool:
        return self._refresh()

    def offered(self) -> dict[str, str]:
        """{task: model name} the server runs, from its health route (cached for offers_ttl_seconds).
        While it cannot be reached: what it offered when it last answered; stems only if it never
        has (every version of the server runs stems; the router's circuit deals with a server that
        is down)."""
        with self._offers_lock:
            fresh = self._checked is not None and time.monotonic() - self._checked < self.offers_ttl_seconds
        if not fresh:
            self._refresh()
        with self._offers_lock:
            return dict(self._offers if self._offers is not None else {"stems": ""})

    def offers_model(self, task: str, model: str) -> bool:
        """Whether the server lists `task`, and (generate, transcribe, tts) runs `model`: those run
        the server's configured model, so a job asking for another stays off this tier."""
        if not super().offers_model(task, model):
            return False
        offered = self.offered()
        if task not in offered:
            log.info("%s: not planned for %s: the server offers %s", self.name, task,
                     ", ".join(sorted(offered)) or "none")
            return False
        if task != "stems" and model and offered[task] and model_name(model) != offered[task]:
            log.info("%s: not planned for %s: the server runs model %r, not %r", self.name, task, offered[task],
                     model_name(model))
            return False
        return True

    def _refresh(self) -> bool:
        """Ask the server's health route; True when it answered ok (and what it offers is noted)."""
        try:
            response = self._http.send("GET", f"{self.base_url}{HEALTH_ROUTE}", timeout_seconds=HEALTH_TIMEOUT_SECONDS,
                                       check_cancelled=_never_cancelled)
            body = response.json() if response.status_code == 200 else None
        except (BridgeError, ValueError) as err:
            log.debug("%s: health check failed: %s", self.name, err)
            body = None
        ok = isinstance(body, dict) and body.get("ok") is True and isinstance(body.get("tasks"), list)
        with self._offers_lock:
            self._checked = time.monotonic()
            if ok:
                assert isinstance(body, dict)
                offered = body.get("models")
                models = offered if isinstance(offered, dict) else {}
                self._offers = {task: str(models.get(task) or "") for task in body["tasks"] if task in self.tasks}
        return ok

    def close(self) -> None:
        self._http.close()

    # -- the remote job ----------------------------------------------------------------------------

    def job(self, job_id: str, instance: str | None = None,
            check_cancelled: CheckCancelled = _never_cancelled) -> dict[str, Any]:
        """The remote job as the server shows it (NotFound when it does not know the id)."""
        response = self._request("GET", job_route(JOB, job_id=_quote(job_id)), check_cancelled, instance=instance)
        return self._job_body(response)

    def cancel(self, job_id: str, instance: str | None = None) -> dict[str, Any]:
        """Ask the server to cancel a job; returns the job (still `running` until it stops)."""
        response = self._request("POST", job_route(JOB_CANCEL, job_id=_quote(job_id)), _never_cancelled,
                                 instance=instance)
        return self._job_body(response)

    def _create(self, job: TierJob, params: dict[str, Any], rid: str,
                check_cancelled: CheckCancelled) -> tuple[dict[str, Any], bool]:
        path = Path(job.input_path or os.devnull)
        with path.open("rb") as upload:
            def body() -> dict[str, Any]:
                data = dict(zip(FORM_FIELDS, (job.task, json.dumps(params), rid), strict=True))
                if job.input_path is None:  # tts, generate without a melody: still multipart, no file part
                    return {"files": {name: (None, value) for name, value in data.items()}}
                upload.seek(0)  # each try sends the whole file again
                return {"data": data, "files": {FILE_FIELD: (path.name, upload, "application/octet-stream")}}

            response = self._request("POST", JOBS_ROUTE, check_cancelled, body=body)
        remote = self._job_body(response)
        log.info("%s: job %s %s (request id %s)", self.name, remote["id"],
                 "created" if response.status_code == 201 else "found", rid)
        return remote, response.status_code == 201

    def _follow(self, remote: dict[str, Any], report: _Monotonic, check_cancelled: CheckCancelled) -> dict[str, Any]:
        """Poll until the job ends; cancel it remotely if we stop following for any reason."""
        try:
            while remote["state"] not in FINISHED_STATES:
                report(0.02 + 0.88 * _fraction(remote.get("progress")))
                wait(self.poll_seconds, check_cancelled)
                remote = self.job(remote["id"], remote.get("instance"), check_cancelled)
        except BaseException:
            self._cancel_quietly(remote)
            raise
        if remote["state"] == "failed":
            error = remote.get("error") or {}
            kind = ERROR_FOR_CODE.get(str(error.get("code")), Internal)
            raise kind(f"{self.name} ({self.base_url}): job {remote['id']} failed on the server: "
                       f"{error.get('message') or 'no message'}")
        if remote["state"] == "canceled":
            raise Unavailable(f"{self.name} ({self.base_url}): job {remote['id']} was canceled on the server")
        return remote

    def _cancel_quietly(self, remote: dict[str, Any]) -> None:
        try:
            self.cancel(remote["id"], remote.get("instance"))
            log.info("%s: asked the server to cancel job %s", self.name, remote["id"])
        except BridgeError as err:  # best effort: the caller's own error is the one that matters
            log.warning("%s: could not cancel job %s: %s", self.name, remote["id"], err.message)

    def _download(self, remote: dict[str, Any], work_dir: Path, report: _Monotonic,
                  check_cancelled: CheckCancelled) -> dict[str, Path]:
        result = remote.get("result") or {}
        names = result.get("outputs")
        fmt = result.get("format")
        if remote.get("task") == "transcribe" and isinstance(names, dict) and not names:
            return {}  # the text is the result
        if not isinstance(names, dict) or not names or fmt not in MEDIA_TYPES \
                or not all(isinstance(n, str) and _STEM_NAME.match(n) for n in names):
            raise Unavailable(f"{self.name} ({self.base_url}): job {remote['id']} is done but its result names no "
                              f"usable outputs (outputs {names!r}, format {fmt!r})")
        work_dir.mkdir(parents=True, exist_ok=True)
        outputs: dict[str, Path] = {}
        for index, name in enumerate(sorted(names)):
            # Built from our base URL (which may carry a path prefix), never a URL the server sent.
            route = job_route(JOB_OUTPUT, job_id=_quote(remote["id"]), name=name)
            response = self._request("GET", route, check_cancelled, instance=remote.get("instance"))
            content = response.content
            # B023: atomic_write calls the lambda before this iteration ends.
            outputs[name] = atomic_write(work_dir / f"{name}.{fmt}", lambda tmp: tmp.write_bytes(content))  # noqa: B023
            report(0.9 + 0.1 * (index + 1) / len(names))
        return outputs

    def _result(self, remote: dict[str, Any], rid: str, outputs: dict[str, Path], created: bool,
                seconds: float) -> TierResult:
        result = remote.get("result") or {}
        started, finished = remote.get("started_at"), remote.get("finished_at")
        remote_seconds = (finished - started
                          if isinstance(started, (int, float)) and isinstance(finished, (int, float)) else seconds)
        cost = None
        if self.usd_per_second is not None:
            cost = round(self.usd_per_second * remote_seconds, 6) if created else 0.0  # a reused job was paid for
        data = {}
        if remote.get("task") == "transcribe":
            data = {key: result.get(key) for key in ("text", "segments", "language") if key in result}
        return TierResult(
            tier=self.name, outputs=outputs, data=data, seconds=seconds, cost_usd=cost,
            details={"job_id": remote["id"], "request_id": rid, "instance": remote.get("instance"),
                     "reused": not created, "remote_seconds": round(remote_seconds, 3),
                     "device": result.get("device"), "model": result.get("model") or result.get("voice")},
        )

    # -- HTTP --------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, check_cancelled: CheckCancelled, *,
                 instance: str | None = None, body: Any = None) -> httpx.Response:
        """One request with retries; a 2xx response, or the project error its status means."""
        headers = {INSTANCE_HEADER: instance} if instance else {}
        url = f"{self.base_url}{path}"
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = self._http.send(method, url, timeout_seconds=self.timeout_seconds,
                                           check_cancelled=check_cancelled, headers=headers,
                                           **(body() if body is not None else {}))
            except TransportFailed as err:
                if last:
                    raise
                log.info("%s: %s %s: %s; retrying", self.name, method, path, err.message)
                wait(backoff_seconds(attempt), check_cancelled)
                continue
            if response.is_success:
                return response
            if response.status_code in _RETRY_STATUSES and not last:
                delay = retry_after_seconds(response.headers)
                log.info("%s: %s %s: HTTP %d; retrying", self.name, method, path, response.status_code)
                wait(backoff_seconds(attempt) if delay is None else delay, check_cancelled)
                continue
            raise self._http.error(response)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _job_body(self, response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("id"), str) or body.get("state") not in JOB_STATES:
            raise Unavailable(f"{self.name} ({self.base_url}): malformed job reply (HTTP {response.status_code}): "
                              f"{response.text[:200]!r}")
        return body


class _Monotonic:
    """Passes progress on, never backwards and within [0, 1]."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._last = 0.0

    def __call__(self, fraction: float) -> None:
        fraction = min(1.0, max(self._last, fraction))
        if fraction > self._last or self._last == 0.0:
            self._last = fraction
            self._progress(fraction)


def _fraction(value: Any) -> float:
    return min(1.0, max(0.0, float(value))) if isinstance(value, (int, float)) else 0.0


def _quote(job_id: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_\-]{1,64}", job_id):
        raise Unavailable(f"malformed job id from the server: {job_id[:80]!r}")
    return job_id


def server_params(params: dict[str, Any], tier: str = "selfhosted", task: str = "stems") -> dict[str, Any]:
    """The params the server takes for `task`, from a `TierJob`'s: empty values left out. Stems: by
    default FLAC in 24-bit PCM (lossless at the local default's precision, half the bytes of a
    WAV), or WAV when the encoding is float (FLAC has no float samples)."""
    keys = TASK_PARAMS.get(task, ())
    unknown = sorted(set(params) - set(keys))
    if unknown:
        raise BadRequest(f"{tier}: params {unknown} are not {task} options; expected some of {', '.join(keys)}")
    chosen = {k: v for k, v in params.items() if v not in (None, "", [])}
    if task != "stems":
        return chosen
    chosen.setdefault("encoding", "pcm24")
    chosen.setdefault("format", "wav" if chosen["encoding"] == "float" else "flac")
    return chosen


def request_id(path: Path | None, task: str, params: dict[str, Any], check_cancelled: CheckCancelled) -> str:
    """A stable id for (task, params, the input's bytes): the same request always gets the same id."""
    digest = hashlib.sha256(f"flowstate-{task}-v1\0{json.dumps(params, sort_keys=True)}\0".encode())
    if path is None:
        return digest.hexdigest()[:32]
    with path.open("rb") as source:
        for index, chunk in enumerate(iter(lambda: source.read(1 << 20), b"")):
            digest.update(chunk)
            if index % 64 == 63:
                check_cancelled()
    return digest.hexdigest()[:32]
