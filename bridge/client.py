"""A small ZeroMQ client for the CLI and scripts: one request, one reply, with a timeout."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from typing import Any

import zmq

from bridge.config import Config
from bridge.errors import BridgeError, Unavailable

_ids = itertools.count(1)


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
        request_id = f"{self._prefix}{next(_ids)}"
        self._socket.send(json.dumps({"id": request_id, "cmd": cmd, "args": args or {}}).encode())
        while True:
            if not self._socket.poll(self.timeout_ms):
                raise Unavailable(
                    f"no daemon answered at {self.endpoint} within {self.timeout_ms / 1000:g} s; "
                    "start one with `make run` or `flowstate up`"
                )
            message = json.loads(self._socket.recv())
            if "event" in message:
                self._backlog.append(message)  # an event of one of our jobs: wait_jobs wants it
                continue
            if message.get("id") != request_id:
                continue  # a late reply to an earlier request that timed out
            if message.get("ok"):
                return message["result"]
            error = message.get("error") or {}
            raise RemoteError(error.get("code", "internal"), error.get("message", "no message"))

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
                raise Unavailable(f"no news of jobs {sorted(pending)} for {idle_timeout_seconds:g} s")
            name, data = message.get("event"), message.get("data") or {}
            if name is None or data.get("id") not in pending:
                continue
            on_event(name, data)
            if name in ("job.done", "job.failed", "job.canceled"):
                final[data["id"]] = {"event": name, **data}
                pending.discard(data["id"])
        return final

    def close(self) -> None:
        self._socket.close(linger=0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
