"""Replicate's prediction protocol: create a prediction (and never two for one job), follow it to the
end, cancel it, upload its input and download its outputs. What each model takes and gives is
`replicate_models.py`; the tier that composes both is `replicate.py`.

Wire protocol (`shared/reference/cloud-tiers.md`, section 1, from replicate-python, the Stainless
beta client and Replicate's HTTP reference):

- `Authorization: Bearer <token>`, sent only to the API's own origin (never to output hosts).
- Create: `POST /v1/models/{owner}/{name}/predictions` `{"input"}` for official models, or
  `POST /v1/predictions` `{"version": "<64-hex>", "input"}`; both answer 201 with the prediction.
  `Prefer: wait=N` (1-60) holds the request up to N s and echoes `Preference-Applied`; we send it
  when the job should finish within `wait_seconds`. `Cancel-After: 1m30s` (minimum 5 s) is the
  server-side deadline: past it a prediction that has not started is `aborted` (not billed), a
  running one `canceled`.
- Status: `starting` -> `processing` -> `succeeded` | `failed` | `canceled` | `aborted`. We poll
  `urls.get` with exponential backoff (`poll_initial_seconds` -> `poll_max_seconds`).
- Inputs over `inline_limit_bytes` go up first through `POST /v1/files` (multipart `content`);
  smaller ones travel inline as `data:` URIs. Outputs come back as https URLs or `data:` URIs.
- Errors are RFC 7807 problems (`detail`, 422 adds `invalid_fields`). 429 honours `Retry-After`
  (seconds or HTTP date, up to 60 s); 429, 5xx, timeouts and malformed bodies are retried at most
  `max_retries` times.
- Create has no idempotency key, so a create whose answer is lost (timeout, 5xx, a malformed
  201) is never simply sent again: we list `GET /v1/predictions?created_after=<just before the
  POST>` and adopt our own prediction if it is there. Ours carries a marker the reference
  recommends, a unique query parameter on its `webhook` URL; the documented prediction object does
  not echo `webhook` (⚠), so when the listing lacks it we match on model/version plus the exact
  input we sent (an uploaded file's URL is unique per job).
- API data is deleted an hour after a run (`data_removed: true`, `output: null`): NotFound.
"""

from __future__ import annotations

import base64
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes, urlencode, urlsplit

import httpx

from bridge.errors import BadRequest, BridgeError, ConfigError, Forbidden, NotFound, Unavailable
from engines.cloud.base import CheckCancelled, Progress
from engines.cloud.http import (
    EXTENSION_TYPES,
    Deadline,
    TierClient,
    TransportFailed,
    audio_extension,
    error_for_status,
    malformed,
    never_cancelled,
    retry_after_seconds,
    safe_name,
    scrub,
    sniff_audio,
    wait,
    write_output,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.replicate.com"

TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
STATUSES = TERMINAL | {"starting", "processing"}
MIN_CANCEL_AFTER_SECONDS = 5
MAX_WAIT_SECONDS = 60
RUN_LIMIT_SECONDS = 35 * 60  # Replicate stops runs at 30 min; past that, stop polling
DEADLINE_GRACE_SECONDS = 30.0  # how long past Cancel-After we still wait for its verdict
PROGRESS_CAP = 0.95
# Listing from a little before the POST: the server's clock may run behind ours.
CLOCK_SKEW = timedelta(seconds=60)
RECONCILE_PAGES = 5
UPLOAD_BYTES_PER_SECOND = 256 * 1024  # the slowest uplink we plan for when sizing upload timeouts
# Where a webhook would go. `.invalid` never resolves (RFC 6761), so Replicate's deliveries fail
# at once; the URL exists only to carry our marker. ⚠ Whether the API refuses such a host is
# unconfirmed: point `webhook_url` at a real receiver, or pass None to match on input alone.
DEFAULT_WEBHOOK_URL = "https://flowstate.invalid/replicate/webhook"
MARKER_PARAM = "flowstate_marker"
AUDIO_PLACEHOLDER = "<the input audio>"  # where the audio's URI goes once it is known
_TQDM = re.compile(r"^\s*(\d+)%\s*\|.+?\|\s*(\d+)/(\d+)", re.MULTILINE)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SLUG = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


@dataclass(frozen=True)
class ModelRef:
    """A parsed model ref (see DEFAULT_MODELS in replicate_models.py for the forms)."""

    slug: str | None  # "owner/name"; None for a bare version id
    version: str | None  # 64-hex, "latest", or None: an official model

    @classmethod
    def parse(cls, ref: str, where: str) -> ModelRef:
        slug, _, version = ref.partition(":") if isinstance(ref, str) else ("", "", "")
        if _HEX64.match(slug) and not version:
            return cls(None, slug)
        if _SLUG.match(slug) and (not version or version == "latest" or _HEX64.match(version)):
            return cls(slug, version or None)
        raise ConfigError(
            f"{where} is {ref!r}; expected 'owner/name' (an official model), 'owner/name:<64-hex version>', "
            "'owner/name:latest' or a 64-hex version id"
        )


@dataclass
class Plan:
    """One create request, kept whole so that a lost answer can be matched against the listing."""

    ref: ModelRef
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    timeout_seconds: float
    cancel_after_seconds: int | None


class Transient(Exception):
    """A failure another try may fix (429, 5xx, timeout, malformed body). `applied`: the server
    may have acted on the request, so a create must be reconciled before it is sent again."""

    def __init__(self, error: Unavailable, *, retry_after: float | None = None, applied: bool = True) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after
        self.applied = applied


class Clock:
    """One run's deadline, cancel checks and progress. Replicate reports no fractions, so progress
    is time against the expected run time, or tqdm's percentage in the logs when that is further,
    capped below 1 until the outputs are in."""

    def __init__(self, progress: Progress, check_cancelled: CheckCancelled, expected_seconds: float,
                 deadline_seconds: float | None) -> None:
        self._progress = progress
        self._check = check_cancelled
        self._expected = max(expected_seconds, 1.0)
        self.started = time.monotonic()
        self.deadline = Deadline(deadline_seconds)
        limit = RUN_LIMIT_SECONDS if deadline_seconds is None else deadline_seconds + DEADLINE_GRACE_SECONDS
        self.give_up = Deadline(limit)
        self._created: float | None = None
        self._reported = 0.0
        self._from_logs = 0.0

    def creating(self) -> None:
        """The create is going out: progress starts at 0 and counts from now (a held create
        keeps reporting while the server holds it)."""
        self._created = time.monotonic()
        self._progress(0.0)

    def logs(self, text: Any) -> None:
        matches = _TQDM.findall(text) if isinstance(text, str) else []
        if matches:
            self._from_logs = int(matches[-1][0]) / 100.0

    def tick(self) -> None:
        """The check_cancelled every wait and request calls: raises on cancel, else reports."""
        self._check()
        if self._created is None:
            return
        fraction = min(PROGRESS_CAP, max((time.monotonic() - self._created) / self._expected, self._from_logs))
        if fraction >= self._reported + 0.01:
            self._reported = fraction
            self._progress(fraction)


class PredictionClient:
    """Replicate's HTTP API as one tier uses it: predictions, file uploads, outputs.

    The token goes only into the Authorization header to the API's own origin (never to output
    hosts); it is in no message, log line or repr. Settings are checked by the tier that owns it.
    """

    def __init__(
        self,
        name: str,
        token: str,
        *,
        base_url: str,
        timeout_seconds: float,
        wait_seconds: int,
        poll_initial_seconds: float,
        poll_max_seconds: float,
        inline_limit_bytes: int,
        max_retries: int,
        webhook_url: str | None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.timeout_seconds = float(timeout_seconds)
        self.wait_seconds = int(wait_seconds)
        self.poll_initial_seconds = float(poll_initial_seconds)
        self.poll_max_seconds = float(poll_max_seconds)
        self.inline_limit_bytes = int(inline_limit_bytes)
        self.max_retries = int(max_retries)
        self.webhook_url = webhook_url
        self._origin = origin(self.base_url)
        self._auth = {"Authorization": f"Bearer {token}"}
        # No client-wide headers: output URLs live on other hosts, which must never see the token.
        self._http = TierClient(name, {}, secrets=(token,))
        self._lock = threading.Lock()
        self._latest: dict[str, str] = {}  # "owner/name" -> the version "latest" resolved to
        self._claimed: set[str] = set()  # predictions runs of this tier own right now

    def __repr__(self) -> str:
        return f"PredictionClient(name={self.name!r}, base_url={self.base_url!r})"

    def close(self) -> None:
        self._http.close()

    def healthy(self) -> bool:
        """GET /v1/account: answers 200 when the API is up and accepts the token."""
        try:
            response = self._send("GET", "/v1/account", never_cancelled, timeout=min(self.timeout_seconds, 5.0))
        except Transient as transient:
            log.info("%s: health probe failed: %s", self.name, transient.error.message)
            return False
        if response.status_code != 200:
            log.info("%s: health probe answered HTTP %d", self.name, response.status_code)
        return response.status_code == 200

    # -- creating -----------------------------------------------------------------------------

    def plan(self, ref: ModelRef, model_input: dict[str, Any], expected_seconds: float, clock: Clock) -> Plan:
        """The create request for `model_input` on `ref`: held (`Prefer: wait`) when the run should
        end within wait_seconds, and cancelled server-side (`Cancel-After`) at the job's deadline."""
        body: dict[str, Any] = {"input": model_input}
        if ref.version is None:
            path = f"/v1/models/{ref.slug}/predictions"
        else:
            path = "/v1/predictions"
            body["version"] = self._version(ref, clock)
        if self.webhook_url:
            separator = "&" if "?" in self.webhook_url else "?"
            body["webhook"] = f"{self.webhook_url}{separator}{urlencode({MARKER_PARAM: uuid.uuid4().hex})}"
            body["webhook_events_filter"] = ["completed"]  # one delivery (plus retries), not one per log line
        headers: dict[str, str] = {}
        timeout = self.timeout_seconds
        if self.wait_seconds and expected_seconds <= self.wait_seconds:
            headers["Prefer"] = f"wait={self.wait_seconds}"
            timeout += self.wait_seconds  # the server holds the answer that long
        cancel_after = None
        remaining = clock.deadline.remaining()
        if remaining is not None:
            if remaining <= 0:
                raise Unavailable(f"{self.name}: the deadline passed before the prediction was created")
            cancel_after = max(MIN_CANCEL_AFTER_SECONDS, math.ceil(remaining))
            headers["Cancel-After"] = format_duration(cancel_after)
        return Plan(ref, path, body, headers, timeout, cancel_after)


    def create(self, plan: Plan, clock: Clock) -> tuple[dict[str, Any], str | None]:
        """The new prediction and its Preference-Applied header. A lost answer is reconciled
        against the listing before another POST, so one job never makes two predictions."""
        since = datetime.now(UTC)
        in_doubt = False  # a POST may have made a prediction we have not seen
        attempt = 0
        try:
            while True:
                try:
                    in_doubt = True
                    response = self._send("POST", plan.path, clock.tick, timeout=plan.timeout_seconds,
                                          json=plan.body, headers=plan.headers)
                    prediction = self._read_prediction(response, f"POST {plan.path}")
                    return prediction, response.headers.get("preference-applied")
                except Transient as transient:
                    in_doubt = transient.applied
                    last_try = attempt >= self.max_retries
                    if not last_try:
                        self._pause(transient, attempt, clock)
                    if transient.applied:
                        found = self._reconcile(plan, since, clock)
                        if found is not None:
                            return found, None
                    if last_try:
                        raise transient.error from None
                    attempt += 1
        except (BadRequest, Forbidden, NotFound):
            raise  # refused outright: that POST made nothing
        except BaseException:
            # Cancelled, out of tries or out of time while a create may have gone through: the
            # prediction would run (and bill) unwatched, so look for it and cancel it.
            if in_doubt:
                self._cancel_strays(plan, since)
            raise

    def _reconcile(self, plan: Plan, since: datetime, clock: Clock) -> dict[str, Any] | None:
        """Our prediction created since `since`, if the listing has it; extras carrying our
        marker (a second POST that also lost its answer) are cancelled."""
        url = f"{self.base_url}/v1/predictions"
        params: dict[str, str] | None = {"created_after": iso(since - CLOCK_SKEW)}
        ours: list[dict[str, Any]] = []
        for _ in range(RECONCILE_PAGES):
            page = self._call("GET", url, clock, self._read_page, params=params)
            ours += [p for p in page["results"] if self._is_ours(p, plan)]
            next_url, params = page.get("next"), None
            if not isinstance(next_url, str) or origin(next_url) != self._origin:
                break
            url = next_url
        if not ours:
            log.info("%s: no prediction from the lost create is listed", self.name)
            return None
        ours.sort(key=lambda p: str(p.get("created_at", "")))
        for extra in ours[1:]:
            if extra.get("webhook") == plan.body.get("webhook"):
                self._cancel_quietly(extra)
        log.warning("%s: the create's answer was lost; adopting prediction %s instead of creating another",
                    self.name, ours[0]["id"])
        return ours[0]

    def _is_ours(self, prediction: dict[str, Any], plan: Plan) -> bool:
        with self._lock:
            if prediction.get("id") in self._claimed:
                return False
        if "webhook" in prediction and "webhook" in plan.body:
            return prediction["webhook"] == plan.body["webhook"]
        if "version" in plan.body:
            if prediction.get("version") != plan.body["version"]:
                return False
        elif prediction.get("model") != plan.ref.slug:
            return False
        sent, seen = plan.body["input"], prediction.get("input")
        return isinstance(seen, dict) and all(seen.get(key) == value for key, value in sent.items())

    def _cancel_strays(self, plan: Plan, since: datetime) -> None:
        """Best effort, after a cancel during a create: find the prediction it made and cancel it."""
        quiet = Clock(lambda _: None, never_cancelled, 1.0, min(self.timeout_seconds, 10.0))
        try:
            found = self._reconcile(plan, since, quiet)
        except BridgeError as err:
            log.warning("%s: could not look for the prediction a cancelled create made: %s", self.name, err.message)
            return
        if found is not None:
            self._cancel_quietly(found)

    def _version(self, ref: ModelRef, clock: Clock) -> str:
        """The version id to send: pinned, or "latest" resolved once through GET /v1/models/{o}/{n}."""
        if ref.version != "latest":
            return str(ref.version)
        with self._lock:
            known = self._latest.get(str(ref.slug))
        if known:
            return known
        model = self._call("GET", f"{self.base_url}/v1/models/{ref.slug}", clock, self._read_object)
        latest = model.get("latest_version")
        version = latest.get("id") if isinstance(latest, dict) else None
        if not isinstance(version, str) or not _HEX64.match(version):
            raise Unavailable(f"{self.name}: GET /v1/models/{ref.slug} named no latest version (got {version!r})")
        log.info("%s: %s:latest is version %s; pin it in config to keep its input schema", self.name, ref.slug, version)
        with self._lock:
            self._latest[str(ref.slug)] = version
        return version

    # -- following ----------------------------------------------------------------------------

    def watch(self, prediction: dict[str, Any], clock: Clock) -> dict[str, Any]:
        """Follow a prediction this tier created to its end; cancel it when the run stops first."""
        with self._lock:
            self._claimed.add(prediction["id"])
        try:
            return self._follow(prediction, clock)
        except BaseException:
            self._cancel_quietly(prediction)
            raise
        finally:
            with self._lock:
                self._claimed.discard(prediction["id"])

    def _follow(self, prediction: dict[str, Any], clock: Clock) -> dict[str, Any]:
        """Poll until the prediction is terminal, backing off from poll_initial to poll_max."""
        delay = self.poll_initial_seconds
        while prediction["status"] not in TERMINAL:
            if clock.give_up.remaining() == 0:
                raise Unavailable(f"{self.name}: prediction {prediction['id']} is still {prediction['status']} "
                                  f"after {time.monotonic() - clock.started:.0f} s; giving up")
            clock.logs(prediction.get("logs"))
            wait(delay, clock.tick)
            url = self._get_url(prediction)
            # B023: _call runs the lambda before this iteration ends.
            prediction = self._call("GET", url, clock, lambda r: self._read_prediction(r, f"GET {url_path(url)}"))  # noqa: B023
            delay = min(delay * 2, self.poll_max_seconds)
        return prediction

    def _get_url(self, prediction: dict[str, Any]) -> str:
        urls = prediction.get("urls")
        url = urls.get("get") if isinstance(urls, dict) else None
        # Only our own origin gets the token: a urls.get elsewhere is not followed.
        if isinstance(url, str) and origin(url) == self._origin:
            return url
        return f"{self.base_url}/v1/predictions/{prediction['id']}"

    def _cancel_quietly(self, prediction: dict[str, Any]) -> None:
        """POST urls.cancel, best effort: a failure is logged, never raised."""
        if prediction.get("status") in TERMINAL:
            return
        url = f"{self.base_url}/v1/predictions/{prediction['id']}/cancel"
        try:
            response = self._send("POST", url, never_cancelled, timeout=min(self.timeout_seconds, 5.0))
        except Transient as transient:
            log.warning("%s: could not cancel prediction %s: %s", self.name, prediction["id"], transient.error.message)
            return
        if response.status_code >= 300:
            log.warning("%s: cancelling prediction %s answered HTTP %d", self.name, prediction["id"],
                        response.status_code)
        else:
            log.info("%s: cancelled prediction %s", self.name, prediction["id"])

    # -- finishing ----------------------------------------------------------------------------

    # -- finishing ----------------------------------------------------------------------------

    def output(self, prediction: dict[str, Any], plan: Plan) -> Any:
        """The `output` of a terminal prediction; its failure, abort, cancel or expiry as an error."""
        status, pid = prediction["status"], prediction["id"]
        if status == "failed":
            error = scrub(str(prediction.get("error")), self._http.secrets)
            raise Unavailable(f"{self.name}: prediction {pid} failed: {error}")
        if status == "aborted":
            raise Unavailable(f"{self.name}: prediction {pid} was aborted: its Cancel-After deadline "
                              f"({plan.cancel_after_seconds} s) passed before it started (not billed)")
        if status == "canceled":
            why = (f"its Cancel-After deadline ({plan.cancel_after_seconds} s) passed while it ran"
                   if plan.cancel_after_seconds is not None else "someone else cancelled it")
            raise Unavailable(f"{self.name}: prediction {pid} was canceled: {why}")
        output = prediction.get("output")
        if prediction.get("data_removed") or output is None:
            raise NotFound(f"{self.name}: the output of prediction {pid} has expired (Replicate deletes API data "
                           "an hour after a run)")
        return output

    def download(self, uri: Any, folder: Path, stem: str, pid: str, clock: Clock) -> Path:
        """Write one output (https URL or data: URI) to folder/stem.<ext>, atomically."""
        if not isinstance(uri, str):
            raise self.malformed(pid, f"an output is {type(uri).__name__}, expected a URI")
        if uri.startswith("data:"):
            try:
                data, content_type = decode_data_uri(uri)
            except ValueError as err:
                raise self.malformed(pid, f"output {stem!r} is {err}") from err
        elif urlsplit(uri).scheme in ("https", "http"):
            data, content_type = self._call("GET", uri, clock, lambda r: self._read_file(r, pid),
                                            follow_redirects=True)
        else:
            raise self.malformed(pid, f"an output is not an https URL or a data: URI ({uri[:40]!r})")
        extension = audio_extension(content_type, data) or PurePosixPath(urlsplit(uri).path).suffix.lstrip(".")
        if not extension:
            raise self.malformed(pid, f"output {stem!r} is not audio ({content_type!r})")
        return write_output(folder / f"{stem}.{safe_name(extension, 'bin')}", data)

    def malformed(self, pid: str, what: str) -> Unavailable:
        return malformed(self.name, f"prediction {pid}", what)

    # -- inputs -------------------------------------------------------------------------------

    def audio_uri(self, path: Path, data: bytes, clock: Clock) -> tuple[str, str]:
        """(URI for the model's audio input, "data_uri" | "upload"): a data: URI when the whole
        URI fits in inline_limit_bytes, else an upload through POST /v1/files."""
        mime = EXTENSION_TYPES.get(path.suffix.lower().lstrip(".")) or EXTENSION_TYPES.get(sniff_audio(data) or "")
        if mime is None:
            raise BadRequest(f"{self.name}: input_path {str(path)!r} is not an audio type we can name "
                             f"(expected one of {sorted(EXTENSION_TYPES)})")
        prefix = f"data:{mime};base64,"
        # The limit is on what the API receives: the whole URI, base64 and all (4 chars per 3 bytes).
        if len(prefix) + 4 * math.ceil(len(data) / 3) <= self.inline_limit_bytes:
            return prefix + base64.b64encode(data).decode("ascii"), "data_uri"
        uploaded = self._call(
            "POST", f"{self.base_url}/v1/files", clock, self._read_object,
            timeout=self.timeout_seconds + len(data) / UPLOAD_BYTES_PER_SECOND,
            files={"content": (path.name, data, mime)}, data={"filename": path.name, "type": mime},
        )
        urls = uploaded.get("urls")
        url = urls.get("get") if isinstance(urls, dict) else None
        if not isinstance(url, str):
            raise Unavailable(f"{self.name}: POST /v1/files answered no urls.get")
        log.info("%s: uploaded %s (%d bytes) as file %s", self.name, path.name, len(data), uploaded.get("id"))
        return url, "upload"

    # -- HTTP ---------------------------------------------------------------------------------

    def _send(self, method: str, url: str, tick: Callable[[], None], *, timeout: float | None = None,
              headers: Mapping[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        """One request; the token goes only to our own origin. Transport failures become Transient."""
        url = url if "://" in url else f"{self.base_url}{url}"
        merged = dict(headers or {})
        if origin(url) == self._origin:
            merged.update(self._auth)
        try:
            return self._http.send(method, url, timeout_seconds=timeout or self.timeout_seconds,
                                   check_cancelled=tick, headers=merged, **kwargs)
        except TransportFailed as err:
            raise Transient(err, applied=err.request_sent) from err

    def _call(self, method: str, url: str, clock: Clock, read: Callable[[httpx.Response], T], *,
              timeout: float | None = None, **kwargs: Any) -> T:
        """`read(response)` of a request that is safe to repeat, retried on Transient failures."""
        attempt = 0
        while True:
            try:
                return read(self._send(method, url, clock.tick, timeout=timeout, **kwargs))
            except Transient as transient:
                if attempt >= self.max_retries:
                    raise transient.error from None
                self._pause(transient, attempt, clock)
                attempt += 1

    def _pause(self, transient: Transient, attempt: int, clock: Clock) -> None:
        """Wait before another try: Retry-After when the server gave one, else the backoff."""
        if transient.retry_after is not None:
            delay = transient.retry_after
        else:
            delay = min(self.poll_max_seconds, self.poll_initial_seconds * 2**attempt)
        if not clock.deadline.allows(delay):
            raise Unavailable(f"{transient.error.message}; waiting {delay:.1f} s to try again would pass the "
                              f"deadline ({clock.deadline.remaining():.1f} s left)") from None
        log.info("%s: %s; trying again in %.2f s", self.name, transient.error.message, delay)
        wait(delay, clock.tick)

    def _raise_for_status(self, response: httpx.Response, what: str) -> None:
        status = response.status_code
        if status < 300:
            return
        message = self._describe(response)
        if status in (408, 429) or status >= 500:
            # A 429 was refused before any work; a 5xx or 408 may have been acted on.
            raise Transient(Unavailable(f"{self.name}: {what}: HTTP {status}: {message}"),
                             retry_after=retry_after_seconds(response.headers), applied=status != 429)
        raise error_for_status(self.name, status, f"{what}: {message}")

    def _json(self, response: httpx.Response, what: str) -> Any:
        self._raise_for_status(response, what)
        try:
            return response.json()
        except ValueError:
            raise Transient(Unavailable(f"{self.name}: {what}: HTTP {response.status_code} with a malformed "
                                         f"body ({response.headers.get('content-type', 'no content type')})")) from None

    def _read_object(self, response: httpx.Response) -> dict[str, Any]:
        what = f"{response.request.method} {url_path(str(response.request.url))}"
        body = self._json(response, what)
        if not isinstance(body, dict):
            raise Transient(Unavailable(f"{self.name}: {what}: expected a JSON object, got {type(body).__name__}"))
        return body

    def _read_prediction(self, response: httpx.Response, what: str) -> dict[str, Any]:
        body = self._read_object(response)
        if not isinstance(body.get("id"), str) or body.get("status") not in STATUSES:
            raise Transient(Unavailable(f"{self.name}: {what}: not a prediction (id {body.get('id')!r}, "
                                         f"status {body.get('status')!r})"))
        return body

    def _read_page(self, response: httpx.Response) -> dict[str, Any]:
        body = self._read_object(response)
        if not isinstance(body.get("results"), list):
            raise Transient(Unavailable(f"{self.name}: GET /v1/predictions: no results list"))
        return body

    def _read_file(self, response: httpx.Response, pid: str) -> tuple[bytes, str | None]:
        if response.status_code in (404, 410):
            raise NotFound(f"{self.name}: an output of prediction {pid} has expired (HTTP {response.status_code})")
        self._raise_for_status(response, f"GET output of {pid}")
        return response.content, response.headers.get("content-type")

    def _describe(self, response: httpx.Response) -> str:
        """An RFC 7807 problem as one line: title, detail and any invalid_fields, scrubbed."""
        message = self._http.message(response)
        try:
            body = response.json()
        except ValueError:
            return message
        if not isinstance(body, dict):
            return message
        title = body.get("title")
        if isinstance(title, str) and title and title not in message:
            message = f"{title}: {message}"
        fields = body.get("invalid_fields")
        described = [f"{f.get('field')}: {f.get('description')}" for f in fields or []
                     if isinstance(f, dict) and str(f.get("description")) not in message]  # not said twice
        if described:
            message = f"{message} (invalid: {'; '.join(described)})"
        return scrub(message, self._http.secrets)



# -- small helpers ------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """`Cancel-After`'s duration format: 5 -> "5s", 90 -> "1m30s", 5400 -> "1h30m" (whole
    seconds, rounded up, at least the API's minimum of 5 s)."""
    total = max(MIN_CANCEL_AFTER_SECONDS, math.ceil(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts)


def decode_data_uri(uri: str) -> tuple[bytes, str | None]:
    """(bytes, media type) of a data: URI; ValueError when it is not one."""
    header, comma, payload = uri[5:].partition(",")
    if not comma:
        raise ValueError("a data: URI without a comma")
    media_type, *flags = header.split(";")
    try:
        data = base64.b64decode(payload, validate=True) if "base64" in flags else unquote_to_bytes(payload)
    except ValueError as err:
        raise ValueError("a data: URI that is not valid base64") from err
    return data, media_type or None


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def url_path(url: str) -> str:
    return urlsplit(url).path or "/"


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
