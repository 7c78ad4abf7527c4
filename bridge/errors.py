"""The one exception hierarchy. Every error that crosses a boundary carries a Protocol v1 code.

A message names the argument (or key), the value and what was expected, so the person reading
it in Live's status bar or a terminal can fix the request without reading our source.
"""

from __future__ import annotations

from typing import Any


class BridgeError(Exception):
    """Base class: an error with a Protocol v1 code and a human message."""

    code: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


class BadRequest(BridgeError):
    """The request is malformed: wrong type, count, range, encoding or size."""

    code = "bad_request"


class UnknownCommand(BridgeError):
    """No command is registered under that name or address."""

    code = "unknown_command"


class NotFound(BridgeError):
    """A file, job or other named thing does not exist."""

    code = "not_found"


class Busy(BridgeError):
    """The resource is in use (a stream already running, a queue full)."""

    code = "busy"


class Unavailable(BridgeError):
    """A backend, device or tier cannot serve now."""

    code = "unavailable"


class Forbidden(BridgeError):
    """The request touches something outside what the user allowed (paths, tokens)."""

    code = "forbidden"


class Internal(BridgeError):
    """A bug or an unexpected failure inside the daemon."""

    code = "internal"


ERROR_CODES: tuple[str, ...] = (
    "bad_request",
    "unknown_command",
    "not_found",
    "busy",
    "unavailable",
    "forbidden",
    "internal",
)


class ConfigError(Exception):
    """The configuration is invalid; start-up stops with exit code 2."""

    exit_code = 2


class StartupError(Exception):
    """The daemon cannot start (a port in use, a socket that cannot bind)."""

    exit_code = 1
