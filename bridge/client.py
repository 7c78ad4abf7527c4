"""A small ZeroMQ client for the CLI and scripts: one request, one reply, with a timeout."""

from __future__ import annotations

import itertools
import json
import os
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
        self._context = zmq.Context.instance()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(endpoint)
        self._prefix = f"{os.getpid()}-"

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
            if message.get("id") != request_id:
                continue  # an event for one of our jobs, or a late reply to an earlier request
            if message.get("ok"):
                return message["result"]
            error = message.get("error") or {}
            raise RemoteError(error.get("code", "internal"), error.get("message", "no message"))

    def close(self) -> None:
        self._socket.close(linger=0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
