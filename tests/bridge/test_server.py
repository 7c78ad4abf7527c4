"""The self-hosted tier for real: `bridge.server.serve` in a subprocess on a loopback port with a
small HTDemucs, driven over HTTP and through `SelfHostedTier` as the router would use it."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile
import yaml
from starlette.testclient import TestClient

from bridge.config import Config
from bridge.errors import ERROR_CODES, BadRequest, Forbidden, NotFound, StartupError, Unavailable
from bridge.job_store import FINISHED_STATES, JOB_STATES
from bridge.separate import SeparateJob
from bridge.server import create_app, serve
from bridge.server_tasks import PARAMS, TaskHandler
from bridge.testing import SLOW_SECONDS, free_port, start_on_free_ports, tiny_htdemucs_repo
from engines.cloud import selfhosted_wire as wire
from engines.cloud.base import TierJob
from engines.cloud.selfhosted import SelfHostedTier, request_id, server_params

TOKEN = f"test-token-{secrets.token_hex(12)}"
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
STEMS = {"drums", "bass", "other", "vocals"}
# `python -c` entry point: the config comes from a YAML file plus the environment (the token).
ENTRY = (
    "import logging, sys; from pathlib import Path; from bridge.config import load_config; "
    "from bridge.server import serve; "
    "logging.basicConfig(level='INFO', format='%(asctime)s %(levelname)s %(name)s: %(message)s'); "
    "serve(load_config(sys.argv[1]), '127.0.0.1', int(sys.argv[2]), Path(sys.argv[3]), "
    "max_upload_bytes=int(sys.argv[4]), instance_id=sys.argv[5])"
)
INSTANCE = "machine-0123"
# A name the test server is configured to answer to (server.allowed_hosts), as a deployment's would be.
SERVED_NAME = "stems.example.test"


class ServerProcess:
    def __init__(self, workdir: Path, repo: Path, daemon: dict[str, Any] | None = None,
                 settings: dict[str, Any] | None = None, env: dict[str, str] | None = None, entry: str = ENTRY) -> None:
        self.workdir = workdir
        self.entry = entry
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = workdir / "data"
        self.log_path = workdir / "server.log"
        config = {
            "daemon": {"log_level": "INFO", **(daemon or {})},
            "jobs": {"database": str(workdir / "unused.sqlite3"), "workers": 1},
            "models": {"demucs_repo": str(repo)},
            # Short segments: the tiny model's attention grows with the window (see bridge.testing).
            "separate": {"model": "tiny", "engine_device": "cpu", "threads": 1, "segment_seconds": 0.5},
            "server": {"allowed_hosts": [SERVED_NAME]},
            **(settings or {}),
        }
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.answered = False  # once it has, a restart keeps its port (the URL its clients know)

    def start(self, timeout_seconds: float = SLOW_SECONDS, attempts: int = 3) -> ServerProcess:
        """Start the server and wait until /v1/health answers. A first start that exits saying the
        port `free_port` picked is in use starts again on a newly picked one (`start_on_free_ports`)."""

        def repick() -> None:
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"

        start_on_free_ports(lambda: self._start_once(timeout_seconds), self.log, repick,
                            1 if self.answered else attempts)
        self.answered = True
        return self

    def _start_once(self, timeout_seconds: float) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
        env.update({**self.env, "FLOWSTATE_SERVER_TOKEN": TOKEN})
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", self.entry, str(self.config_path), str(self.port), str(self.data_dir),
                 str(MAX_UPLOAD_BYTES), INSTANCE],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
            )
        deadline = time.monotonic() + timeout_seconds
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not answer within {timeout_seconds} s:\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_htdemucs_repo(tmp_path_factory.mktemp("models"), depth=3)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, repo: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("server"), repo).start()
    try:
        yield process
    finally:
        code = process.stop()
        log = process.log()
        assert code == 0, f"server exited with {code} after SIGTERM:\n{log}"
        assert TOKEN not in log, "the token appeared in the server log"


@pytest.fixture
def tier(server: ServerProcess) -> Iterator[SelfHostedTier]:
    client = SelfHostedTier(server.url, TOKEN, poll_seconds=0.1, usd_per_second=0.001)
    yield client
    client.close()


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def write_audio(path: Path, seconds: float, sample_rate: int = 44100, channels: int = 2, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.shape[0])
    data = np.stack([tone * (0.8 + 0.2 * c) for c in range(channels)], axis=1).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), data, sample_rate, subtype="PCM_16")
    return path


def submit(server: ServerProcess, path: Path, params: dict[str, Any] | None = None,
           rid: str | None = None) -> httpx.Response:
    data = {"task": "stems", "params": json.dumps(params or {})}
    if rid is not None:
        data["request_id"] = rid
    with path.open("rb") as upload:
        return httpx.post(f"{server.url}/v1/jobs", headers=auth(), data=data,
                          files={"file": (path.name, upload, "audio/wav")}, timeout=30)


def wait_finished(server: ServerProcess, job_id: str, timeout_seconds: float = SLOW_SECONDS) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_seconds
    while True:
        job = httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=auth(), timeout=10).json()
        if job["state"] in ("done", "failed", "canceled"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']}"
        time.sleep(0.1)


def sse_frames(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """The (event name, data) frames of a job's event stream (`GET /v1/jobs/{id}/events`), as they arrive."""
    name = ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            yield name, json.loads(line[len("data: "):])


def read_events(server: ServerProcess, job_id: str, events: list[tuple[str, dict[str, Any]]]) -> None:
    with httpx.stream("GET", f"{server.url}/v1/jobs/{job_id}/events", headers=auth(), timeout=120) as response:
        events.extend(sse_frames(response))


def wait_for(server: ServerProcess, job_id: str, condition: Any,
             timeout_seconds: float = SLOW_SECONDS) -> dict[str, Any]:
    """Follow the job's SSE stream until a frame satisfies `condition`; that frame's job."""
    with httpx.stream("GET", f"{server.url}/v1/jobs/{job_id}/events", headers=auth(),
                      timeout=timeout_seconds) as response:
        for _, job in sse_frames(response):
            if condition(job):
                return job
            assert job.get("state") not in ("done", "failed", "canceled"), f"the job ended first: {job}"
    raise AssertionError(f"job {job_id}: the event stream ended before the condition held")


def no_cancel() -> None:
    pass


# -- health and auth -----------------------------------------------------------------------------


def test_health_needs_no_token(server: ServerProcess) -> None:
    response = httpx.get(f"{server.url}/v1/health", timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True and body["device"] == "cpu"
    assert body["tasks"] == ["stems", "generate", "transcribe", "tts"]
    # The model each task runs, by name (the test's config names none but separate.model).
    assert body["models"] == {"stems": "tiny", "generate": "musicgen-small", "transcribe": "small",
                              "tts": "en_US-lessac-medium"}
    assert isinstance(body["version"], str) and body["queued"] >= 0 and body["running"] >= 0


JOB_ROUTES = [
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs/0123456789ab"),
    ("GET", "/v1/jobs/0123456789ab/events"),
    ("POST", "/v1/jobs/0123456789ab/cancel"),
    ("GET", "/v1/jobs/0123456789ab/outputs/vocals"),
]


@pytest.mark.parametrize(("method", "path"), JOB_ROUTES)
@pytest.mark.parametrize("headers", [{}, auth("wrong-token"), {"Authorization": f"Token {TOKEN}"},
                                     {"Authorization": TOKEN}], ids=["none", "wrong", "scheme", "bare"])
def test_job_routes_refuse_a_missing_or_wrong_token(server: ServerProcess, method: str, path: str,
                                                    headers: dict[str, str]) -> None:
    response = httpx.request(method, f"{server.url}{path}", headers=headers, timeout=5)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "forbidden"
    assert response.headers["www-authenticate"] == "Bearer"
    assert TOKEN not in response.text


def test_a_wrong_token_is_forbidden_through_the_tier(server: ServerProcess, tmp_path: Path) -> None:
    wrong = f"wrong-{secrets.token_hex(8)}"
    client = SelfHostedTier(server.url, wrong, max_retries=0)
    job = TierJob("stems", {}, tmp_path / "work", write_audio(tmp_path / "a.wav", 0.5))
    try:
        with pytest.raises(Forbidden) as caught:
            client.run(job, lambda f: None, no_cancel)
    finally:
        client.close()
    assert "401" in caught.value.message and server.url in caught.value.message
    assert wrong not in caught.value.message and TOKEN not in caught.value.message


# -- uploads -------------------------------------------------------------------------------------


def upload_folders(server: ServerProcess) -> set[Path]:
    uploads = server.data_dir / "uploads"
    return set(uploads.iterdir()) if uploads.exists() else set()


def open_uploads(server: ServerProcess, besides: set[Path]) -> list[str]:
    """Files the server process holds open under `uploads/`, outside the folders in `besides`."""
    assert server.process is not None
    links = []
    for fd in Path(f"/proc/{server.process.pid}/fd").iterdir():
        try:
            links.append(os.readlink(fd))
        except OSError:  # closed since the listing
            continue
    uploads = str(server.data_dir / "uploads") + "/"
    return [link for link in links if link.startswith(uploads)
            and not any(link.startswith(f"{folder}/") for folder in besides)]


def test_an_upload_over_the_limit_is_413_from_its_content_length(server: ServerProcess, tmp_path: Path) -> None:
    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * (MAX_UPLOAD_BYTES + 1024 * 1024))
    response = submit(server, big)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "bad_request" and str(MAX_UPLOAD_BYTES) in error["message"]


def test_an_upload_over_the_limit_is_413_while_it_streams(server: ServerProcess) -> None:
    """No Content-Length (chunked): the limit is counted as the file arrives."""
    boundary = "flowstate-test-boundary"

    def body() -> Iterator[bytes]:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"task\"\r\n\r\nstems\r\n"
               f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.wav\"\r\n"
               "Content-Type: audio/wav\r\n\r\n").encode()
        chunk = b"\0" * 65536
        for _ in range(MAX_UPLOAD_BYTES // len(chunk) + 16):
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    before = upload_folders(server)
    response = httpx.post(f"{server.url}/v1/jobs", content=body(), timeout=30,
                          headers={**auth(), "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413
    assert str(MAX_UPLOAD_BYTES) in response.json()["error"]["message"]
    assert upload_folders(server) <= before and open_uploads(server, besides=before) == []


def test_an_upload_over_the_limit_is_bad_request_through_the_tier(tier: SelfHostedTier, tmp_path: Path) -> None:
    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * (MAX_UPLOAD_BYTES + 1024 * 1024))
    with pytest.raises(BadRequest) as caught:
        tier.run(TierJob("stems", {}, tmp_path / "work", big), lambda f: None, no_cancel)
    assert "413" in caught.value.message and str(MAX_UPLOAD_BYTES) in caught.value.message


@pytest.mark.parametrize(
    ("data", "content", "expected"),
    [
        ({"task": "stems", "params": '{"format": "mp3"}'}, b"RIFF", "params: format"),
        ({"task": "stems", "params": '{"volume": 11}'}, b"RIFF", "params: volume"),
        ({"task": "stems", "params": "[1, 2"}, b"RIFF", "params"),
        ({"task": "karaoke"}, b"RIFF", "task: 'karaoke'"),
        ({"task": "stems", "params": '{"format": "flac", "encoding": "float"}'}, None, "FLAC"),
        ({"task": "stems"}, b"this is not audio at all", "not an audio file"),
        ({"task": "stems"}, b"", "empty"),
    ],
    ids=["format", "unknown-param", "not-json", "task", "flac-float", "not-audio", "empty"],
)
def test_bad_uploads_are_400_naming_what_is_wrong(server: ServerProcess, tmp_path: Path, data: dict[str, str],
                                                  content: bytes | None, expected: str) -> None:
    if content is None:
        content = write_audio(tmp_path / "a.wav", 0.2).read_bytes()
    response = httpx.post(f"{server.url}/v1/jobs", headers=auth(), data=data,
                          files={"file": ("a.wav", content, "audio/wav")}, timeout=10)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["ok"] is False and body["error"]["code"] == "bad_request"
    assert expected in body["error"]["message"]


def multipart(*parts: tuple[bytes, bytes], boundary: str = "flowstate-test-boundary", end: bool = True) -> bytes:
    """A multipart/form-data body from (headers, content) pairs, written by hand so that it can be wrong."""
    body = b"".join(f"--{boundary}\r\n".encode() + headers + b"\r\n\r\n" + content + b"\r\n"
                    for headers, content in parts)
    return body + (f"--{boundary}--\r\n".encode() if end else b"")


def disposition(name: str, filename: str | None = None) -> bytes:
    filename_part = f'; filename="{filename}"' if filename else ""
    return f'Content-Disposition: form-data; name="{name}"{filename_part}'.encode()


TASK = (disposition("task"), b"stems")
RIFF = b"RIFF" + b"\0" * 64


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        (multipart((disposition("task") + b"\r\nX-Padding: " + b"a" * 200_000, b"stems")), 413, "4096 bytes"),
        (multipart(TASK, (disposition("file", "a" * 5000 + ".wav"), RIFF)), 413, "4096 bytes"),
        (multipart((disposition("task") + b"".join(b"\r\nX-%d: v" % i for i in range(50)), b"stems")), 413,
         "more than 8 headers"),
        (multipart((b"garbage-without-a-colon", b"stems")), 400, "multipart body is malformed"),
        (b"\x00\x01\x02" * 100, 400, "multipart body is malformed"),
        (multipart(TASK, TASK, (disposition("file", "a.wav"), RIFF)), 400, "task: sent twice"),
        (multipart((disposition("x" * 3000), b"1")), 400, "unknown form field"),
        (multipart((disposition("x" * 3000, "a.wav"), RIFF)), 400, "unknown form field"),
        (multipart(TASK, (disposition("file", "a.wav"), RIFF), (disposition("file", "b.wav"), RIFF)), 400,
         "one file per job"),
        (multipart((disposition("params"), b"{" * 20_000)), 400, "params: longer than 16384 bytes"),
        (multipart((disposition("task"), b"\xff\xfe")), 400, "task: not UTF-8"),
        (multipart((b"Content-Type: text/plain", b"stems")), 400, "multipart body is malformed"),
    ],
    ids=["huge-part-header", "long-file-name", "many-part-headers", "bad-header-line", "garbage", "field-twice",
         "long-field-name", "unknown-file-field", "two-files", "long-field", "field-not-utf8", "part-without-name"],
)
def test_malformed_multipart_is_4xx_naming_the_problem(server: ServerProcess, body: bytes, status: int,
                                                       expected: str) -> None:
    response = httpx.post(f"{server.url}/v1/jobs", content=body, timeout=30, headers={
        **auth(), "Content-Type": "multipart/form-data; boundary=flowstate-test-boundary"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_request" and expected in error["message"], error
    assert len(response.content) < 2048  # what the client sent is quoted briefly, not echoed back
    assert httpx.get(f"{server.url}/v1/health", timeout=5).json()["ok"] is True


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (b"multipart/form-data; boundary=" + b"b" * 300, "boundary"),
        (b"multipart/form-data; boundary=\xe9\xff", "multipart body is malformed"),
        (b"application/json", "expected a multipart/form-data body"),
    ],
    ids=["boundary-too-long", "boundary-not-ascii", "not-multipart"],
)
def test_an_unusable_content_type_is_400(server: ServerProcess, content_type: bytes, expected: str) -> None:
    response = httpx.post(f"{server.url}/v1/jobs", content=multipart(TASK), timeout=30,
                          headers={**auth(), "Content-Type": content_type})  # type: ignore[dict-item]
    assert response.status_code == 400, response.text
    assert expected in response.json()["error"]["message"]


@pytest.mark.parametrize("piece_bytes", [1, 7, 4099])
def test_a_body_in_tiny_pieces_is_parsed_whole(server: ServerProcess, tmp_path: Path, piece_bytes: int) -> None:
    """Chunked, in awkward pieces: boundaries, headers and the file straddle the server's stream reads."""
    source = write_audio(tmp_path / "tiny-pieces.wav", 0.1, channels=1, seed=piece_bytes)
    rid = f"pieces-{secrets.token_hex(6)}"
    body = multipart(TASK, (disposition("params"), b'{"format": "wav"}'), (disposition("request_id"), rid.encode()),
                     (disposition("file", source.name) + b"\r\nContent-Type: audio/wav", source.read_bytes()))
    pieces = (body[i:i + piece_bytes] for i in range(0, len(body), piece_bytes))
    response = httpx.post(f"{server.url}/v1/jobs", content=pieces, timeout=60, headers={
        **auth(), "Content-Type": "multipart/form-data; boundary=flowstate-test-boundary"})
    assert response.status_code == 201, response.text
    job = wait_finished(server, response.json()["id"])
    assert job["state"] == "done" and job["request_id"] == rid, job
    vocals = httpx.get(f"{server.url}{job['result']['outputs']['vocals']}", headers=auth(), timeout=10)
    (tmp_path / "vocals.wav").write_bytes(vocals.content)
    assert soundfile.info(str(tmp_path / "vocals.wav")).frames == soundfile.info(str(source)).frames


@pytest.mark.parametrize(
    ("filename", "stored"),
    [("../../escape.wav", "escape.wav"), ("/etc/escape.wav", "escape.wav"), ("C:\\Users\\me\\escape.wav", "escape.wav"),
     ("..", "input"), ("sub/..", "input"), ("a/b/con.wav", "_con.wav"), (None, "input")],
    ids=["parent-dirs", "absolute", "windows", "dot-dot", "ends-in-dot-dot", "reserved-name", "no-file-name"],
)
def test_a_file_name_with_path_separators_stays_in_its_upload_folder(server: ServerProcess, filename: str | None,
                                                                      stored: str) -> None:
    """The upload is kept under its base name inside its own folder; the error shows the name it got."""
    before = upload_folders(server)
    body = multipart(TASK, (disposition("file", filename), b"this is not audio at all"))
    response = httpx.post(f"{server.url}/v1/jobs", content=body, timeout=10, headers={
        **auth(), "Content-Type": "multipart/form-data; boundary=flowstate-test-boundary"})
    assert response.status_code == 400, response.text
    assert f" {stored} is not an audio file" in response.json()["error"]["message"]
    assert upload_folders(server) <= before  # the refused upload's folder is gone
    assert not list(server.workdir.rglob("*escape.wav"))


@pytest.mark.parametrize("cut", ["mid-file", "mid-headers", "before-closing-boundary", "no-parts"])
def test_a_body_cut_off_is_400_and_leaves_no_upload(server: ServerProcess, cut: str) -> None:
    body = multipart(TASK, (disposition("file", "cut.wav"), RIFF * 64))
    ends = {"mid-file": body.index(RIFF) + 100, "mid-headers": body.index(b"filename") + 3,
            "before-closing-boundary": body.rindex(b"--flowstate-test-boundary--"), "no-parts": 0}
    before = upload_folders(server)
    response = httpx.post(f"{server.url}/v1/jobs", content=body[:ends[cut]], timeout=30, headers={
        **auth(), "Content-Type": "multipart/form-data; boundary=flowstate-test-boundary"})
    assert response.status_code == 400, response.text
    assert "ended early" in response.json()["error"]["message"]
    assert upload_folders(server) <= before
    assert open_uploads(server, besides=before) == []  # a part cut off mid-way is closed, not left to the GC
    assert httpx.get(f"{server.url}/v1/health", timeout=5).json()["ok"] is True


def test_a_file_just_over_the_limit_is_413_when_its_part_ends(server: ServerProcess) -> None:
    """Within the body's allowance for the form fields, so only the file's own size can refuse it."""
    before = upload_folders(server)
    response = httpx.post(f"{server.url}/v1/jobs", headers=auth(), data={"task": "stems"},
                          files={"file": ("over.wav", b"\0" * (MAX_UPLOAD_BYTES + 1), "audio/wav")}, timeout=30)
    assert response.status_code == 413, response.text
    message = response.json()["error"]["message"]
    assert str(MAX_UPLOAD_BYTES) in message and f"the file is {MAX_UPLOAD_BYTES + 1} bytes" in message
    assert upload_folders(server) <= before


def test_a_long_job_id_is_404_quoted_briefly(server: ServerProcess) -> None:
    response = httpx.get(f"{server.url}/v1/jobs/{'a' * 5000}", headers=auth(), timeout=5)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert len(response.content) < 1024


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil.example",
             "\xff\xfe"],
    ids=["name", "name-and-port", "ip-prefix", "localhost-prefix", "not-ascii"],
)
@pytest.mark.parametrize("path", ["/v1/health", "/v1/jobs/0123456789ab"], ids=["health", "job"])
def test_a_host_header_the_server_does_not_serve_is_400(server: ServerProcess, host: str, path: str) -> None:
    """DNS rebinding: a page on evil.example resolved to 127.0.0.1 sends `Host: evil.example`."""
    host = host.format(port=server.port)
    response = httpx.get(f"{server.url}{path}", headers={**auth(), "Host": host.encode("latin-1")}, timeout=5)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_request"
    assert "server.allowed_hosts" in error["message"] and SERVED_NAME in error["message"]
    assert "version" not in response.text and "instance" not in response.text  # nothing of the server leaks


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LocalHost", "[::1]:{port}", "10.1.2.3",
                                  SERVED_NAME, f"{SERVED_NAME.upper()}:{{port}}"])
def test_ip_addresses_localhost_and_allowed_names_are_served(server: ServerProcess, host: str) -> None:
    response = httpx.get(f"{server.url}/v1/health", headers={"Host": host.format(port=server.port)}, timeout=5)
    assert response.status_code == 200, response.text


# -- jobs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sample_rate", "channels"), [(44100, 2), (48000, 1)])
def test_stems_end_to_end_through_the_tier(server: ServerProcess, tier: SelfHostedTier, tmp_path: Path,
                                           sample_rate: int, channels: int) -> None:
    source = write_audio(tmp_path / "song.wav", 1.5, sample_rate, channels)
    work = tmp_path / "work"
    work.mkdir()
    fractions: list[float] = []
    result = tier.run(TierJob("stems", {"model": "tiny"}, work, source, audio_seconds=1.5), fractions.append, no_cancel)

    assert result.tier == "selfhosted"
    assert set(result.outputs) == STEMS
    for name, path in result.outputs.items():
        assert path == work / f"{name}.flac"
        info = soundfile.info(str(path))
        assert (info.frames, info.samplerate, info.channels) == (int(1.5 * sample_rate), sample_rate, channels)
    assert sorted(p.name for p in work.iterdir()) == sorted(f"{s}.flac" for s in STEMS)  # no partial files left
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) >= 3
    assert result.details["reused"] is False and result.cost_usd is not None and result.cost_usd >= 0
    assert result.details["instance"] == INSTANCE  # what the tier sends back as fly-force-instance-id
    job = httpx.get(f"{server.url}/v1/jobs/{result.details['job_id']}", headers=auth(), timeout=5).json()
    assert job["state"] == "done" and job["progress"] == 1.0
    assert job["result"]["outputs"]["vocals"] == f"/v1/jobs/{job['id']}/outputs/vocals"
    assert "paths" not in job["result"] and "files" not in job["result"]  # no server paths leak


def test_a_resubmitted_job_is_the_same_job(server: ServerProcess, tier: SelfHostedTier, tmp_path: Path) -> None:
    source = write_audio(tmp_path / "again.wav", 0.5, seed=3)
    first = tier.run(TierJob("stems", {}, tmp_path / "w1", source), lambda f: None, no_cancel)
    second = tier.run(TierJob("stems", {}, tmp_path / "w2", source), lambda f: None, no_cancel)
    assert second.details["job_id"] == first.details["job_id"] and second.details["reused"] is True
    assert second.cost_usd == 0.0
    assert (tmp_path / "w2" / "vocals.flac").read_bytes() == (tmp_path / "w1" / "vocals.flac").read_bytes()

    rid = f"raw-{secrets.token_hex(6)}"
    created, again = submit(server, source, rid=rid), submit(server, source, rid=rid)
    assert (created.status_code, again.status_code) == (201, 200)
    assert created.json()["id"] == again.json()["id"]
    assert submit(server, source, rid=f"{rid}-other").json()["id"] != created.json()["id"]


class Stop(Exception):
    """What a canceled job's check_cancelled raises."""


def test_cancel_mid_job_cancels_the_remote_job(server: ServerProcess, tier: SelfHostedTier, tmp_path: Path) -> None:
    source = write_audio(tmp_path / "long.wav", 30.0, seed=5)
    cancel = False

    def progress(fraction: float) -> None:
        nonlocal cancel
        cancel = cancel or fraction > 0.1  # separating on the server: stop now

    def check_cancelled() -> None:
        if cancel:
            raise Stop("the user canceled")

    with pytest.raises(Stop):
        tier.run(TierJob("stems", {}, tmp_path / "work", source), progress, check_cancelled)
    # The same request id finds the job the tier made.
    rid = request_id(source, "stems", server_params({}), no_cancel)
    found = submit(server, source, params=server_params({}), rid=rid)
    assert found.status_code == 200
    job = wait_finished(server, found.json()["id"])
    assert job["state"] == "canceled", job
    work = tmp_path / "work"
    assert not work.exists() or not any(work.iterdir())  # nothing downloaded, nothing half-written


def test_a_job_that_fails_remotely_raises_its_error_and_is_not_reused(tier: SelfHostedTier, tmp_path: Path) -> None:
    source = write_audio(tmp_path / "s.wav", 0.3, seed=7)
    job = TierJob("stems", {"two_stems": "kazoo"}, tmp_path / "work", source)
    ids = []
    for _ in range(2):
        with pytest.raises(BadRequest) as caught:
            tier.run(job, lambda f: None, no_cancel)
        assert "kazoo" in caught.value.message
        ids.append(re.search(r"job (\w+) failed on the server", caught.value.message).group(1))
    assert ids[0] != ids[1]  # the second run submitted afresh instead of returning the old failure


def test_an_unknown_job_is_not_found(server: ServerProcess, tier: SelfHostedTier) -> None:
    with pytest.raises(NotFound):
        tier.job("0123456789ab")
    response = httpx.get(f"{server.url}/v1/jobs/0123456789ab", headers=auth(), timeout=5)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_outputs_download_and_unknown_outputs_are_404(server: ServerProcess, tmp_path: Path) -> None:
    created = submit(server, write_audio(tmp_path / "o.wav", 0.3, seed=9), {"format": "wav", "encoding": "float"})
    job = wait_finished(server, created.json()["id"])
    response = httpx.get(f"{server.url}{job['result']['outputs']['bass']}", headers=auth(), timeout=10)
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
    (tmp_path / "bass.wav").write_bytes(response.content)
    assert soundfile.info(str(tmp_path / "bass.wav")).subtype == "FLOAT"
    missing = httpx.get(f"{server.url}/v1/jobs/{job['id']}/outputs/kazoo", headers=auth(), timeout=5)
    assert missing.status_code == 404 and "kazoo" in missing.json()["error"]["message"]


@pytest.fixture(scope="module")
def finished(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One job done on the module's server, for tests that fetch its outputs."""
    source = write_audio(tmp_path_factory.mktemp("finished") / "f.wav", 0.3, seed=17)
    job = wait_finished(server, submit(server, source, {"format": "wav"}).json()["id"])
    assert job["state"] == "done", job
    return job


@pytest.mark.parametrize(
    ("value", "status", "expected"),
    [
        ("bytes=abc", 400, "not a byte range"),
        ("items=0-1", 400, "not a byte range"),
        ("bytes=5-2", 400, "ends before it starts"),
        ("bytes=" + "9" * 5000 + "-", 400, "not a byte range"),
        ("bytes=" + ",".join(f"{i}-{i}" for i in range(100)), 400, "at most 16"),
        ("bytes=999999999-", 416, "past the end of the file"),
        ("bytes=-0", 416, "past the end of the file"),
    ],
    ids=["not-numbers", "not-bytes", "backwards", "huge-number", "too-many", "past-the-end", "empty-suffix"],
)
def test_a_bad_range_on_an_output_is_a_structured_4xx(server: ServerProcess, finished: dict[str, Any], value: str,
                                                      status: int, expected: str) -> None:
    url = f"{server.url}{finished['result']['outputs']['vocals']}"
    response = httpx.get(url, headers={**auth(), "Range": value}, timeout=10)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_request" and expected in error["message"], error
    size = len(httpx.get(url, headers=auth(), timeout=10).content)
    if status == 416:
        assert response.headers["content-range"] == f"bytes */{size}"


def test_a_good_range_on_an_output_is_served(server: ServerProcess, finished: dict[str, Any]) -> None:
    url = f"{server.url}{finished['result']['outputs']['vocals']}"
    whole = httpx.get(url, headers=auth(), timeout=10).content
    part = httpx.get(url, headers={**auth(), "Range": "bytes=4-11"}, timeout=10)
    assert part.status_code == 206 and part.content == whole[4:12]
    tail = httpx.get(url, headers={**auth(), "Range": "bytes=-4"}, timeout=10)
    assert tail.status_code == 206 and tail.content == whole[-4:]


def test_the_events_stream_ends_in_done(server: ServerProcess, tmp_path: Path) -> None:
    created = submit(server, write_audio(tmp_path / "e.wav", 1.0, seed=11))
    assert created.status_code == 201
    events: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream("GET", f"{server.url}/v1/jobs/{created.json()['id']}/events", headers=auth(),
                      timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events.extend(sse_frames(response))
    names = [name for name, _ in events]
    assert names[-1] == "done" and set(names[:-1]) <= {"progress"}
    progress = [data["progress"] for _, data in events]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert set(events[-1][1]["result"]["outputs"]) == STEMS


# -- failures of the tier itself -----------------------------------------------------------------


def test_a_server_that_is_down_is_unavailable_naming_the_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = SelfHostedTier(url, TOKEN, max_retries=1)
    try:
        assert client.health() is False
        with pytest.raises(Unavailable) as caught:
            client.run(TierJob("stems", {}, tmp_path, write_audio(tmp_path / "a.wav", 0.2)), lambda f: None, no_cancel)
    finally:
        client.close()
    assert url in caught.value.message and "selfhosted" in caught.value.message


def test_the_tier_reports_health(tier: SelfHostedTier) -> None:
    assert tier.health() is True


def test_serve_refuses_to_start_without_a_token() -> None:
    with pytest.raises(StartupError, match="FLOWSTATE_SERVER_TOKEN"):
        serve(Config(), "127.0.0.1", free_port())


def test_the_server_speaks_its_wire_contract() -> None:
    """What the contract declares once is what the server's own parts take: its params models name
    each task's params exactly, and the job states a reply shows are the job store's."""
    assert {task: tuple(model.model_fields) for task, model in PARAMS.items()} == wire.TASK_PARAMS
    assert wire.JOB_STATES == JOB_STATES
    assert wire.FINISHED_STATES == FINISHED_STATES
    assert set(wire.STATUS_FOR_CODE) == set(ERROR_CODES) == set(wire.ERROR_FOR_CODE)


def test_uploads_go_when_their_job_ends_and_outputs_expire(tmp_path: Path, repo: Path) -> None:
    """In-process (`create_app` under Starlette's TestClient) with a three-second retention (the
    output is fetched once in it, before it expires: not shorter, on a busy machine)."""
    from starlette.testclient import TestClient

    from bridge.server import create_app

    config = Config.model_validate({
        "models": {"demucs_repo": str(repo)},
        "separate": {"model": "tiny", "engine_device": "cpu", "threads": 1, "segment_seconds": 0.5},
    })
    data = tmp_path / "data"
    app = create_app(config, data, TOKEN, MAX_UPLOAD_BYTES, retention_seconds=3.0)
    source = write_audio(tmp_path / "x.wav", 0.3)
    with TestClient(app, base_url="http://localhost") as client:  # a name the server answers to
        created = client.post("/v1/jobs", headers=auth(), data={"task": "stems"},
                              files={"file": ("x.wav", source.read_bytes(), "audio/wav")})
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        deadline = time.monotonic() + 30
        while client.get(f"/v1/jobs/{job_id}", headers=auth()).json()["state"] != "done":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get(f"/v1/jobs/{job_id}/outputs/vocals", headers=auth()).status_code == 200
        deadline = time.monotonic() + 30
        while True:
            expired = client.get(f"/v1/jobs/{job_id}/outputs/vocals", headers=auth())
            if expired.status_code == 404:
                break
            assert time.monotonic() < deadline, "the output never expired"
            time.sleep(0.2)
        assert "expired" in expired.json()["error"]["message"]
        # The janitor removes a job's folder file by file: the stem can be gone before its folder.
        while list((data / "uploads").iterdir()) or list((data / "outputs").iterdir()):
            assert time.monotonic() < deadline, "the job's folders were never removed"
            time.sleep(0.05)
        assert client.get(f"/v1/jobs/{job_id}", headers=auth()).json()["state"] == "done"  # the job stays


def test_a_stopped_server_releases_the_models_its_jobs_kept_warm(tmp_path: Path, repo: Path) -> None:
    """In-process: the model a stems job loaded stays loaded for the next job, and is released when
    the server stops (its job queue closes the handlers' warm engines, as the daemon's does)."""
    config = Config.model_validate({
        "models": {"demucs_repo": str(repo)},
        "separate": {"model": "tiny", "engine_device": "cpu", "threads": 1, "segment_seconds": 0.5},
    })
    app = create_app(config, tmp_path / "data", TOKEN, MAX_UPLOAD_BYTES)
    source = write_audio(tmp_path / "x.wav", 0.3)
    with TestClient(app, base_url="http://localhost") as client:
        created = client.post("/v1/jobs", headers=auth(), data={"task": "stems"},
                              files={"file": ("x.wav", source.read_bytes(), "audio/wav")})
        assert created.status_code == 201, created.text
        with client.stream("GET", f"/v1/jobs/{created.json()['id']}/events", headers=auth()) as response:
            events = list(sse_frames(response))
        assert events[-1][0] == "done", events
        handler = app.state.server.queue.handlers["stems"]
        assert isinstance(handler, TaskHandler) and isinstance(handler.job, SeparateJob)
        engine = handler.job.engine(config.separate.model, config.separate.shifts)  # the job's, still warm
        assert engine.loaded
    assert not engine.loaded
    assert app.state.server.queue is None


def test_a_signal_mid_job_ends_streams_cancels_the_job_and_exits_0(tmp_path: Path, repo: Path) -> None:
    """SIGINT (Fly's default stop signal): stop accepting, drain briefly, cancel, exit 0."""
    import threading

    from bridge.job_store import JobStore

    process = ServerProcess(tmp_path, repo, daemon={"shutdown_timeout_seconds": 0.5}).start()
    try:
        job_id = submit(process, write_audio(tmp_path / "long.wav", 40.0, seed=13)).json()["id"]
        names: list[str] = []

        def follow() -> None:
            with httpx.stream("GET", f"{process.url}/v1/jobs/{job_id}/events", headers=auth(), timeout=30) as response:
                names.extend(name for name, _ in sse_frames(response))

        reader = threading.Thread(target=follow)
        reader.start()
        deadline = time.monotonic() + SLOW_SECONDS  # the server's first job: torch and the model load first
        while httpx.get(f"{process.url}/v1/jobs/{job_id}", headers=auth(), timeout=5).json()["progress"] <= 0.06:
            assert time.monotonic() < deadline, "the job never started separating"
            time.sleep(0.05)
    finally:
        code = process.stop(signal.SIGINT)
    reader.join(30)
    assert code == 0, process.log()
    assert names[-1] == "error" and "progress" in names  # the stream ended with the server, not hung
    with JobStore(process.data_dir / "jobs.sqlite3") as store:
        assert store.get(job_id).state == "canceled"
