"""File access policy: file jobs read and write only inside the configured roots.

Paths are resolved before they are checked (`~` expanded, relative paths taken against the first
root, `..` collapsed, symlinks followed), so neither `..` nor a symlink can lead outside.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from bridge.errors import BadRequest, Forbidden, NotFound


class PathPolicy:
    """The roots from `paths.roots`, and checks that name the argument and the path."""

    def __init__(self, roots: Sequence[Path]) -> None:
        self.roots = [Path(os.path.realpath(root)) for root in roots]

    def _resolve(self, raw: str, arg: str, command: str) -> Path:
        if not raw or "\0" in raw:
            raise BadRequest(f"{command}: argument '{arg}' expected a file path, got {raw!r}")
        path = Path(raw).expanduser()
        if not path.is_absolute():
            if not self.roots:
                raise Forbidden(f"{command}: no paths.roots are configured, so {arg} {raw!r} cannot be read")
            path = self.roots[0] / path
        resolved = Path(os.path.realpath(path))
        if not any(resolved == root or root in resolved.parents for root in self.roots):
            allowed = ", ".join(str(root) for root in self.roots) or "none configured"
            raise Forbidden(
                f"{command}: {arg} {raw!r} resolves to {resolved}, outside the allowed folders "
                f"({allowed}); add a folder to paths.roots in config.yaml"
            )
        return resolved

    def input_file(self, raw: str, arg: str, command: str) -> Path:
        """An existing regular file inside the roots."""
        path = self._resolve(raw, arg, command)
        if not path.exists():
            raise NotFound(f"{command}: {arg} {raw!r}: no such file")
        if not path.is_file():
            raise BadRequest(f"{command}: {arg} {raw!r} is not a file")
        return path

    def output_dir(self, raw: str, arg: str, command: str) -> Path:
        """A folder inside the roots (it may not exist yet; it is created when written)."""
        path = self._resolve(raw, arg, command)
        if path.exists() and not path.is_dir():
            raise BadRequest(f"{command}: {arg} {raw!r} exists and is not a folder")
        return path
