"""Small ZeroMQ clients of the running daemon: one request, one reply, with a timeout.

`Client` blocks (the CLI, scripts, tests); `AsyncClient` awaits (`flowstate mcp`'s event loop).
Both speak through a DEALER socket, which also receives the events of the jobs it started.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio

from bridge.config import Config
from bridge.errors import BridgeError, Unavailable

_ids = itertools.count(1)
_NOT_YET = object()
FINAL_EVENTS = ("job.done", "job.failed", "job.canceled")


def _request(prefix: str, cmd: str, args: dict[str, Any] | None) -> tuple[str, bytes]:
    request_id = f"{prefix}{next(_ids)}"
    return request_id, json.dumps({"id": request_id, "cmd": cmd, "args": args or {}}).encode()


def _reply(message: dict[str, Any], request_id: str, backlog: list[dict[str, Any]]) -> Any:
    """The result `message` carries for `request_id`, RemoteError, or _NOT_YET (kept for later)."""
    if "event" in message:
        backlog.append(message)  # an event of one of our jobs: wait_jobs wants it
        return _NOT_YET
    if message.get("id") != request_id:
        return _NOT_YET  # a late reply to an earlier request that timed out
    if message.get("ok"):
        return message["result"]
    error = message.get("error") or {}
    raise RemoteError(error.get("code", "internal"), error.get("message", "no message"))


def _job_event(
    message: dict[str, Any], pending: set[str], final: dict[str, dict[str, Any]]
) -> tuple[str, dict[str, Any]] | None:
    """(name, data) when `message` is an event of a pending job; a job's last event moves it to `final`."""
    name, data = message.get("event"), message.get("data") or {}
    if name is None or data.get("id") not in pending:
        return None
    if name in FINAL_EVENTS:
        final[data["id"]] = {"event": name, **data}
        pending.discard(data["id"])
    return name, data


def no_daemon(endpoint: str, timeout_ms: int) -> Unavailable:
    return Unavailable(
        f"no daemon answered at {endpoint} within {timeout_ms / 1000:g} s; start one with `make run` or `flowstate up`"
    )


def no_news(pending: set[str], idle_timeout_seconds: float) -> Unavailable:
    return Unavailable(f"no news of jobs {sorted(pending)} for {idle_timeout_seconds:g} s")


def request_endpoint(config: Config) -> str:
    """Where to reach the daemon: its bind address, with 0.0.0.0 read as this machine."""
    host = config.zmq.host
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"tcp://{host}:{config.zmq.request_port}"


class RemoteError(BridgeError):
    """An error reply from the daemon, carrying its Protocol v1 code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Client:
    """Request/reply over a DEALER socket, so a timed-out request never wedges the socket."""

    def __init__(self, endpoint: str, timeout_seconds: float = 5.0) -> None:
        self.endpoint = endpoint
        self.timeout_ms = int(timeout_seconds * 1000)
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(endpoint)
        self._prefix = f"{os.getpid()}-"
        self._backlog: list[dict[str, Any]] = []

    def call(self, cmd: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one command; return its result or raise RemoteError / Unavailable."""
        request_id, body = _request(self._prefix, cmd, args)
        self._socket.send(body)
        while True:
            if not self._socket.poll(self.timeout_ms):
                raise no_daemon(self.endpoint, self.timeout_ms)
            result = _reply(json.loads(self._socket.recv()), request_id, self._backlog)
            if result is not _NOT_YET:
                return result

    def wait_jobs(
        self, job_ids: list[str], on_event: Callable[[str, dict[str, Any]], None], idle_timeout_seconds: float = 600.0
    ) -> dict[str, dict[str, Any]]:
        """Follow jobs through the events a DEALER receives for its own requests until each ends.

        Returns {job id: final event data}; `on_event(name, data)` sees every event on the way.
        """
        pending = set(job_ids)
        final: dict[str, dict[str, Any]] = {}
        while pending:
            if self._backlog:
                message = self._backlog.pop(0)
            elif self._socket.poll(int(idle_timeout_seconds * 1000)):
                message = json.loads(self._socket.recv())
            else:
                raise no_news(pending, idle_timeout_seconds)
            event = _job_event(message, pending, final)
            if event is not None:
                on_event(*event)
        return final

    def close(self) -> None:
        self._socket.close(linger=0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """`Client` for an asyncio event loop: the same requests, replies and job events, awaited.

    Cancelling a wait leaves the job running in the daemon (`job.cancel` stops it).
    """

    def __init__(self, endpoint: str, timeout_seconds: float = 5.0) -> None:
        self.endpoint = endpoint
        self.timeout_ms = int(timeout_seconds * 1000)
        self._socket = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(endpoint)
        self._prefix = f"{os.getpid()}-a"
        self._backlog: list[dict[str, Any]] = []

    async def _receive(self, timeout_ms: int) -> dict[str, Any] | None:
        if not await self._socket.poll(timeout_ms):
            return None
        return json.loads(await self._socket.recv())

    async def call(self, cmd: str, args: dict[str, Any] | None = None, timeout_seconds: float | None = None) -> Any:
        """Send one command; return its result or raise RemoteError / Unavailable."""
        timeout_ms = self.timeout_ms if timeout_seconds is None else int(timeout_seconds * 1000)
        request_id, body = _request(self._prefix, cmd, args)
        await self._socket.send(body)
        while True:
            message = await self._receive(timeout_ms)
            if message is None:
                raise no_daemon(self.endpoint, timeout_ms)
            result = _reply(message, request_id, self._backlog)
            if result is not _NOT_YET:
                return result

    async def wait_jobs(
        self, job_ids: list[str], on_event: Callable[[str, dict[str, Any]], Awaitable[None]],
        idle_timeout_seconds: float = 600.0,
    ) -> dict[str, dict[str, Any]]:
        """`Client.wait_jobs`, awaiting `on_event(name, data)` for every event of these jobs."""
        pending = set(job_ids)
        final: dict[str, dict[str, Any]] = {}
        while pending:
            message = self._backlog.pop(0) if self._backlog else await self._receive(int(idle_timeout_seconds * 1000))
            if message is None:
                raise no_news(pending, idle_timeout_seconds)
            event = _job_event(message, pending, final)
            if event is not None:
                await on_event(*event)
        return final

    def close(self) -> None:
        self._socket.close(linger=0)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
