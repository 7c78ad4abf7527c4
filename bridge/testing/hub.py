"""A loopback stand-in for the model hub's file endpoint, for tests of what downloads ask for."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class HubStandIn:
    url: str  # what HF_ENDPOINT is set to
    asked: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, user agent), in order


@contextlib.contextmanager
def hub_stand_in(files: dict[str, bytes]) -> Iterator[HubStandIn]:
    """Serve `files` (by path, e.g. "/adefossez/HTDemucs/resolve/main/htdemucs.yaml") as the hub's
    resolve endpoint does, with the headers huggingface_hub reads (the commit, and an ETag per file:
    the name its cache stores the file's blob under), 404 for anything else; every request is
    recorded. Stopped on the way out."""
    stand_in = HubStandIn(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, body: bool) -> None:
            stand_in.asked.append((self.command, self.path, self.headers.get("user-agent", "")))
            data = files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("X-Repo-Commit", "0" * 40)
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    stand_in.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield stand_in
    finally:
        server.shutdown()
        server.server_close()


def save_hub_cache(folder: Path, repo_id: str, hub_cache: Path, revision: str = "0" * 40) -> Path:
    """Put a model saved with `save_pretrained` in `folder` into a hub cache folder (`HF_HUB_CACHE`)
    as the hub's download leaves it, under `repo_id` ("org/name"): `models--org--name` with the
    files in `snapshots/<revision>` and `refs/main` naming that revision (the files themselves, where
    a download links them to its `blobs`: huggingface_hub reads either). Returns the snapshot."""
    cached = Path(hub_cache) / ("models--" + repo_id.replace("/", "--"))
    snapshot = cached / "snapshots" / revision
    shutil.copytree(folder, snapshot)
    (cached / "refs").mkdir(parents=True, exist_ok=True)
    (cached / "refs" / "main").write_text(revision)
    return snapshot
