"""HTTP pieces of the self-hosted server that know nothing of jobs: the streaming multipart form of
an upload, byte ranges of a download, the Host check against DNS rebinding, and the error shape.

`bridge/server.py` builds its app from them (and the Ray-backed server shares that app).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from fastapi.responses import JSONResponse
from python_multipart.exceptions import FileError, FormParserError
from python_multipart.multipart import Field as FormField
from python_multipart.multipart import File, FormParser, parse_options_header

from bridge.errors import BadRequest
from engines.cloud.selfhosted_wire import FILE_FIELD, FORM_FIELDS

log = logging.getLogger(__name__)

# The form fields besides the file are small; a body larger than the file limit plus this is refused
# from its Content-Length before a byte of it is read.
FORM_OVERHEAD_BYTES = 64 * 1024
_MAX_FIELD_BYTES = 16 * 1024
# A part's headers (Content-Disposition with its file name, Content-Type): python-multipart enforces
# these (a header line's bytes, headers per part); set here so that the error can name them.
_MAX_PART_HEADER_BYTES = 4096
_MAX_PART_HEADERS = 8
# Byte ranges of an output in one request: a stem is fetched whole or resumed, never in pieces.
_MAX_RANGES = 16
_RANGE_SPEC = re.compile(r"^(\d{0,18})-(\d{0,18})$")


class PayloadTooLarge(BadRequest):
    """An upload over the server's limit (HTTP 413)."""


def error_body(code: str, message: str) -> dict[str, Any]:
    """The project's error shape, as every route answers it."""
    return {"ok": False, "error": {"code": code, "message": message}}


class Form:
    """A multipart/form-data body parsed as it arrives by python-multipart's `FormParser`: a file part
    goes straight to a file in the upload's folder, the other parts (the few small fields) stay in
    memory. The body is counted against the limit as it arrives, so a part never outgrows it; each part
    is checked (name, size, text) when it ends."""

    _FIELDS = FORM_FIELDS

    def __init__(self, content_type: str, folder: Path, max_file_bytes: int,
                 too_large: Callable[[str], PayloadTooLarge]) -> None:
        kind, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise BadRequest("expected a multipart/form-data body with a boundary, got Content-Type "
                             f"{clip(content_type)!r}")
        self.fields: dict[str, str] = {}
        self.path: Path | None = None
        self.file_bytes = 0
        self._folder = folder
        self._max_file_bytes = max_file_bytes
        self._max_body_bytes = max_file_bytes + FORM_OVERHEAD_BYTES
        self._too_large = too_large
        self._ended = False
        config = {
            # A file part is on disk from its first byte, under a temporary name until it ends.
            "UPLOAD_DIR": str(folder), "UPLOAD_DELETE_TMP": False, "MAX_MEMORY_FILE_SIZE": 0,
            "MAX_HEADER_COUNT": _MAX_PART_HEADERS, "MAX_HEADER_SIZE": _MAX_PART_HEADER_BYTES,
        }
        try:
            self._parser = FormParser("multipart/form-data", self._on_field, self._on_file, self._on_end,
                                      boundary=boundary, config=config)
        except FormParserError as err:  # e.g. a boundary longer than the parser takes
            raise BadRequest(f"Content-Type: unusable multipart boundary ({err})") from None

    def write(self, data: bytes) -> None:
        """Parse the next bytes. The parser's own errors (a malformed body or a part's headers over
        its limits) become 400/413 naming the problem: they are the client's, not the server's."""
        if self._parser.bytes_received + len(data) > self._max_body_bytes:
            raise self._too_large(f"the request body passed {self._max_body_bytes} bytes")
        try:
            self._parser.write(data)
        except FileError:  # the server could not write the upload: its own failure, not the client's
            raise
        except FormParserError as err:
            raise self._malformed(err) from None

    def finish(self, data: bytes) -> None:
        """Parse the last bytes; the body must have ended with the closing boundary."""
        self.write(data)
        try:
            self._parser.finalize()
        except FormParserError as err:
            raise self._malformed(err) from None
        if not self._ended:
            raise BadRequest("the multipart body ended early (no closing boundary); was the upload cut off?")

    def close(self) -> None:
        """Close a file part cut off mid-way now: the parser's callbacks hold it in a reference cycle
        that only the garbage collector would break, keeping its descriptor and disk space until then."""
        if self._parser.parser is not None:
            self._parser.parser.callbacks = {}

    def _malformed(self, err: Exception) -> BadRequest:
        if "header" in str(err).lower() and "maximum" in str(err).lower():
            return _headers_too_large()
        return BadRequest(f"the multipart body is malformed ({clip(str(err), 200)}); send it as a "
                          "multipart/form-data form with the fields file, task, params and request_id")

    def _on_field(self, field: FormField) -> None:
        name, value = (field.field_name or b"").decode("utf-8", "replace"), field.value or b""
        if name == FILE_FIELD:  # a file part without a file name arrives as a field: it is still the upload
            self._claim_file(b"", len(value)).write_bytes(value)
        else:
            self._add_field(name, value)

    def _on_file(self, file: File) -> None:
        name = (file.field_name or b"").decode("utf-8", "replace")
        if file.in_memory:  # an empty part never reached the disk
            file.flush_to_disk()
        temporary = os.fsdecode(file.actual_file_name or b"")
        try:
            if name != FILE_FIELD:  # a field sent with a file name: read it as the field it names
                file.file_object.seek(0)
                self._add_field(name, file.file_object.read(_MAX_FIELD_BYTES + 1))
                return
            path = self._claim_file(file.file_name or b"", file.size)
            # Durable before the job that reads it is: a crash then reruns the job on a whole file.
            os.fsync(file.file_object.fileno())
        finally:
            file.close()
            if name != FILE_FIELD:
                os.unlink(temporary)
        os.replace(temporary, path)

    def _claim_file(self, filename: bytes, size: int) -> Path:
        if self.path is not None:
            raise BadRequest("file: send one file per job; the upload has more than one 'file' part")
        if size > self._max_file_bytes:
            raise self._too_large(f"the file is {size} bytes")
        self.path, self.file_bytes = self._folder / safe_filename(filename.decode("utf-8", "replace")), size
        return self.path

    def _add_field(self, name: str, value: bytes) -> None:
        if name not in self._FIELDS:
            raise BadRequest(f"unknown form field {clip(name)!r}; expected {', '.join((FILE_FIELD, *self._FIELDS))}")
        if name in self.fields:
            raise BadRequest(f"{name}: sent twice; send each form field once")
        if len(value) > _MAX_FIELD_BYTES:
            raise BadRequest(f"{name}: longer than {_MAX_FIELD_BYTES} bytes")
        try:
            self.fields[name] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"{name}: not UTF-8 text") from None

    def _on_end(self) -> None:
        self._ended = True


def _headers_too_large() -> PayloadTooLarge:
    return PayloadTooLarge(
        f"a part of the multipart body has a header line over {_MAX_PART_HEADER_BYTES} bytes or more than "
        f"{_MAX_PART_HEADERS} headers (the server's limits for a part's headers); send a shorter file name"
    )


# Names Windows reserves in every folder (with any suffix): a server on Windows must not open them.
_RESERVED_NAMES = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)


def safe_filename(raw: str) -> str:
    """The client's file name, reduced to a harmless base name (the suffix helps libsndfile)."""
    name = re.sub(r"[^\w\-. ]+", "_", raw.replace("\\", "/").rsplit("/", 1)[-1]).strip(" .")[:100]
    if _RESERVED_NAMES.match(name):
        name = f"_{name}"
    return name or "input"


def clip(text: str, limit: int = 80) -> str:
    """A client's string as an error message may quote it: bounded, so an answer stays small."""
    return text if len(text) <= limit else f"{text[:limit]}…"


class RangeNotSatisfiable(BadRequest):
    """A Range past the end of the file (HTTP 416, with `Content-Range: bytes */size`)."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


def parse_range(header: str | None, size: int) -> list[tuple[int, int]]:
    """The (start, end) byte spans a Range header asks of a file of `size` bytes; [] without one.
    BadRequest (400) when malformed, RangeNotSatisfiable (416) when it starts past the end."""
    if header is None:
        return []
    expected = "expected 'bytes=START-END', 'bytes=START-' or 'bytes=-SUFFIX_LENGTH'"
    units, equals, specs = header.partition("=")
    if not equals or units.strip().lower() != "bytes":
        raise BadRequest(f"Range: {clip(header)!r} is not a byte range; {expected}")
    parts = [part.strip() for part in specs.split(",")]
    if len(parts) > _MAX_RANGES:
        raise BadRequest(f"Range: {len(parts)} ranges; at most {_MAX_RANGES} in one request (fetch the whole "
                         "file, or one range at a time)")
    spans = []
    for part in parts:
        match = _RANGE_SPEC.match(part)
        if match is None or not any(match.groups()):
            raise BadRequest(f"Range: {clip(part)!r} is not a byte range; {expected}")
        first, last = match.groups()
        if first:
            start, end = int(first), min(int(last) + 1, size) if last else size
        else:
            start, end = max(size - int(last), 0), size
        if not 0 <= start < size:
            raise RangeNotSatisfiable(f"Range: {part!r} starts at or past the end of the file ({size} bytes)", size)
        if start >= end:
            raise BadRequest(f"Range: {part!r} ends before it starts; {expected}")
        spans.append((start, end))
    return spans


def read_range(handle: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    """Bytes [start, end) of an open file in pieces, closing it at the end (or when the client leaves)."""
    try:
        handle.seek(start)
        left = end - start
        while left > 0:
            chunk = handle.read(min(left, 256 * 1024))
            if not chunk:
                raise OSError(f"{handle.name}: ended {left} bytes early (changed while it was sent)")
            left -= len(chunk)
            yield chunk
    finally:
        handle.close()


class HostCheck:
    """ASGI middleware: answer 400 to a request whose Host header names a host this server does not
    serve, before any route runs.

    Why: DNS rebinding. A page on evil.example whose name is made to resolve to 127.0.0.1 (or to
    this machine's LAN address) is same-origin with this server for the browser, which sends
    `Host: evil.example`; without this check the page could read `/v1/health` (and, with a leaked
    token, the jobs). IP literals are always served: a browser sends one only for a page loaded
    from that very address, which is this server. A request without Host (HTTP/1.0, some health
    checkers) is served too: browsers always send one. Names: `localhost`, the bind host and
    `server.allowed_hosts` (exact, or `*.example.net` for subdomains, or `*` for any)."""

    def __init__(self, app: Any, names: Sequence[str]) -> None:
        self.app = app
        self._exact = {name.lower().rstrip(".") for name in names if not name.startswith("*")}
        self._suffixes = tuple(name.lower()[1:].rstrip(".") for name in names if name.startswith("*."))
        self._any = "*" in names
        self._names = sorted(self._exact) + [f"*{suffix}" for suffix in self._suffixes]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self._any:
            raw = next((value for key, value in scope["headers"] if key == b"host"), None)
            if raw is not None and not self.serves(raw.decode("latin-1")):
                host = clip(raw.decode("latin-1"), 100)
                message = (f"Host {host!r} is not a name this server answers to (a guard against DNS rebinding); it "
                           f"answers to IP addresses and {', '.join(self._names)}: add the name to "
                           "server.allowed_hosts "
                           "(FLOWSTATE_SERVER_ALLOWED_HOSTS) on the server")
                log.warning("%s %s: 400: refused Host %r", scope.get("method", "?"), scope.get("path", "?"), host)
                await JSONResponse(error_body("bad_request", message), status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def serves(self, host: str) -> bool:
        """Whether `host` (a Host header: name or IP, optional port, IPv6 in brackets) is served."""
        host = host.strip().lower()
        if host.startswith("["):
            literal, bracket, rest = host[1:].partition("]")
            return bool(bracket) and (not rest or rest.startswith(":")) and is_ip(literal)
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        if is_ip(name):
            return ":" not in name  # a bare IPv6 address without brackets is not a valid Host
        name = name.rstrip(".")
        return name in self._exact or any(name.endswith(suffix) for suffix in self._suffixes)


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
