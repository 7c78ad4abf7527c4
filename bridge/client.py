"""Small ZeroMQ clients of the running daemon: one request, one reply, with a timeout.

`Client` blocks (the CLI, scripts, tests); `AsyncClient` awaits (`flowstate mcp`'s event loop).
Both speak through a DEALER socket, which also receives the events of the jobs it started.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio

from bridge.config import Config
from bridge.errors import BridgeError, Unavailable

_ids = itertools.count(1)
_NOT_YET = object()
FINAL_EVENTS = ("job.done", "job.failed", "job.canceled")
# How long a daemon that is there takes at most to answer a quick request (a ping): the clients' timeout.
ANSWER_SECONDS = 5.0
# A patient call (below) asks the daemon whether it is there after this long without the reply, and
# as often again while it waits.
PROBE_AFTER_SECONDS = 1.0


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


class _ReplyWait:
    """One request's wait for its reply; with patience, a slow reply is waited for while the daemon is there.

    A command can take long: `stream.start` loads a model (seconds; minutes when its weights download
    first). Without patience, no reply within the timeout is "no daemon". With it, the wait asks the
    daemon with a ping on the same socket after PROBE_AFTER_SECONDS without the reply, and again as
    often while it waits: an answered ping means the daemon is working on the command, and the wait
    goes on up to `patience_seconds` in all; an unanswered one (within the timeout) means no daemon,
    or one that stopped answering.
    So a daemon that is not there is still said within seconds, and a busy one is not mistaken for it.
    """

    def __init__(self, client: Client | AsyncClient, cmd: str, args: dict[str, Any] | None, timeout_ms: int,
                 patience_seconds: float, on_busy: Callable[[str], None] | None) -> None:
        self.endpoint, self.prefix, self.backlog = client.endpoint, client._prefix, client._backlog
        self.cmd, self.timeout_ms, self.patience_seconds, self.on_busy = cmd, timeout_ms, patience_seconds, on_busy
        self.request_id, self.body = _request(self.prefix, cmd, args)
        self.started = time.monotonic()
        self.probe_id: str | None = None
        self.busy = False  # a ping has shown the daemon there while this command runs

    @property
    def wait_ms(self) -> int:
        """How long to wait for the next message before `silence`."""
        if self.patience_seconds <= 0 or self.probe_id is not None:
            return self.timeout_ms
        return min(self.timeout_ms, int(PROBE_AFTER_SECONDS * 1000))

    def silence(self) -> bytes:
        """Nothing came within `wait_ms`: the ping to send, or raise Unavailable."""
        if self.patience_seconds <= 0 or (self.probe_id is not None and not self.busy):
            raise no_daemon(self.endpoint, self.timeout_ms)
        if self.probe_id is not None:
            raise Unavailable(f"the daemon at {self.endpoint} stopped answering while it ran {self.cmd} "
                              f"(a ping unanswered for {self.timeout_ms / 1000:g} s)")
        waited = time.monotonic() - self.started
        if self.busy and waited >= self.patience_seconds:
            raise Unavailable(f"the daemon is running but has not answered {self.cmd} within {waited:.0f} s; it "
                              "goes on with it (`flowstate send stream.status`, `job.list` or its log tell)")
        self.probe_id, probe = _request(self.prefix, "ping", None)
        return probe

    def message(self, message: dict[str, Any]) -> Any:
        """The result this message carries for the request, RemoteError, or _NOT_YET."""
        if self.probe_id is not None and message.get("id") == self.probe_id:
            self.probe_id = None
            if not self.busy and self.on_busy is not None:
                self.on_busy(self.cmd)
            self.busy = True
            return _NOT_YET
        return _reply(message, self.request_id, self.backlog)


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

    def __init__(self, endpoint: str, timeout_seconds: float = ANSWER_SECONDS) -> None:
        self.endpoint = endpoint
        self.timeout_ms = int(timeout_seconds * 1000)
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(endpoint)
        self._prefix = f"{os.getpid()}-"
        self._backlog: list[dict[str, Any]] = []

    def call(self, cmd: str, args: dict[str, Any] | None = None, *, patience_seconds: float = 0.0,
             on_busy: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Send one command; return its result or raise RemoteError / Unavailable.

        `patience_seconds` > 0 waits for a slow reply that long in all while the daemon answers pings
        (`_ReplyWait`); `on_busy(cmd)` is called once, when a ping first shows it working on it.
        """
        wait = _ReplyWait(self, cmd, args, self.timeout_ms, patience_seconds, on_busy)
        self._socket.send(wait.body)
        while True:
            if not self._socket.poll(wait.wait_ms):
                self._socket.send(wait.silence())
                continue
            result = wait.message(json.loads(self._socket.recv()))
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

    def __init__(self, endpoint: str, timeout_seconds: float = ANSWER_SECONDS) -> None:
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

    async def call(self, cmd: str, args: dict[str, Any] | None = None, timeout_seconds: float | None = None, *,
                   patience_seconds: float = 0.0, on_busy: Callable[[str], None] | None = None) -> Any:
        """`Client.call`, awaited; `timeout_seconds` in place of the client's own for this call."""
        timeout_ms = self.timeout_ms if timeout_seconds is None else int(timeout_seconds * 1000)
        wait = _ReplyWait(self, cmd, args, timeout_ms, patience_seconds, on_busy)
        await self._socket.send(wait.body)
        while True:
            message = await self._receive(wait.wait_ms)
            if message is None:
                await self._socket.send(wait.silence())
                continue
            result = wait.message(message)
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
