"""File access policy: file jobs read and write only inside the configured roots.

Reads: a path is resolved before it is checked (`~` expanded, relative paths taken against the
first root, `..` collapsed, symlinks followed), so neither `..` nor a symlink can lead outside.

Writes and deletes: a resolved path says where a link led when it was checked, not where the
write will go a moment later. So an output folder is located below its root by name (lexically)
and opened through `bridge.files.open_folder`, one folder at a time without following links;
a link below a root is refused with `forbidden` naming the link and the root. `output_dir` checks
the same chain at once for an early answer; the write checks it again, through handles.

Every name a request supplies below a root must be valid on every OS the daemon runs on
(`bridge.files.check_name`: no `CON`, `nul.wav`, `a:b`, `x.`, `..\\x`), and no longer than
`paths.max_name_bytes`; the whole path no longer than `paths.max_path_chars`.

Models and voices named by path in a request are read only inside the configured model folders
(`models.dirs`, `models.demucs_repo`, the sections' `local_dir`/`voices_dir`/`model_dir`) or the
roots; anywhere else is `forbidden`, with a message that does not say whether the path exists.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.errors import BadRequest, Forbidden, NotFound
from bridge.fileio import MAX_NAME_BYTES, below, not_permitted
from bridge.files import LONG_PATHS_HINT, MAX_PATH_CHARS, Folder, check_chain, check_name, open_folder, past_max_path

if TYPE_CHECKING:
    from bridge.config import Config


@dataclass(frozen=True)
class Location:
    """A path below a root: the root as spelled, what is opened for it (its real path), the names below."""

    root: Path
    real_root: Path
    parts: tuple[str, ...]

    @property
    def path(self) -> Path:
        return self.root.joinpath(*self.parts)


def looks_like_path(raw: str) -> bool:
    """A model spelled as a path (on any OS), not a plain name or hub id such as `org/model`."""
    if raw.startswith(("~", ".", "/", "\\")) or "\\" in raw or ":" in raw:
        return True
    return ".." in raw.split("/")


class PathPolicy:
    """The roots from `paths.roots`, and checks that name the argument and the path."""

    def __init__(
        self,
        roots: Sequence[Path],
        *,
        max_name_bytes: int = MAX_NAME_BYTES,
        max_path_chars: int = MAX_PATH_CHARS,
        model_dirs: Sequence[Path] = (),
    ) -> None:
        self.roots = [Path(os.path.realpath(root)) for root in roots]
        # Each root as configured (what requests spell) and its real path (what is opened).
        self._anchors = [
            (Path(os.path.abspath(os.path.expanduser(root))), real)
            for root, real in zip(roots, self.roots, strict=True)
        ]
        self.max_name_bytes = max_name_bytes
        self.max_path_chars = max_path_chars
        self.model_dirs = [Path(os.path.realpath(os.path.expanduser(folder))) for folder in model_dirs]

    @classmethod
    def from_config(cls, config: Config) -> PathPolicy:
        """The policy of a config: its roots, name and path bounds, and every configured model folder."""
        folders = [
            *config.models.dirs, config.models.demucs_repo, config.generate.local_dir,
            config.transcribe.local_dir, config.tts.voices_dir, config.samples.model_dir,
        ]
        return cls(
            # None only in a hand-built config that load_config did not resolve: no roots (all forbidden).
            config.paths.roots or (),
            max_name_bytes=config.paths.max_name_bytes,
            max_path_chars=config.paths.max_path_chars,
            model_dirs=[folder for folder in folders if folder is not None],
        )

    def _check_raw(self, raw: str, arg: str, command: str) -> None:
        if not isinstance(raw, str) or not raw or "\0" in raw:
            raise BadRequest(f"{command}: argument '{arg}' expected a file path, got {raw!r}")
        if len(raw) > self.max_path_chars:
            raise BadRequest(
                f"{command}: {arg} is {len(raw)} characters long, over the limit of {self.max_path_chars} "
                "(paths.max_path_chars)"
            )

    def locate(self, raw: str, arg: str, command: str) -> Location:
        """Where `raw` is below a root, by name: `..` collapsed, links below the root not followed.

        A path that reaches a root only through a link outside the roots is taken at its real path.
        Every name below the root is checked with `check_name`. Forbidden outside the roots.
        """
        self._check_raw(raw, arg, command)
        path = Path(raw).expanduser()
        if not path.is_absolute():
            if not self.roots:
                raise Forbidden(f"{command}: no paths.roots are configured, so {arg} {raw!r} cannot be used")
            path = self._anchors[0][0] / path
        lexical = Path(os.path.normpath(path))
        location = self._under_a_root(lexical)
        if location is None:
            resolved = Path(os.path.realpath(lexical))
            location = next(
                (Location(real, real, parts) for _, real in self._anchors
                 if (parts := below(resolved, real)) is not None),
                None,
            )
            if location is None:
                allowed = ", ".join(str(root) for root in self.roots) or "none configured"
                raise Forbidden(
                    f"{command}: {arg} {raw!r} resolves to {resolved}, outside the allowed folders "
                    f"({allowed}); add a folder to paths.roots in config.yaml"
                )
        for part in location.parts:
            check_name(part, f"{command}: {arg}", self.max_name_bytes)
        return location

    def _under_a_root(self, lexical: Path) -> Location | None:
        for spelled, real in self._anchors:
            for base in (spelled, real):
                parts = below(lexical, base)
                if parts is not None:
                    return Location(base, real, parts)
        return None

    def _inside(self, resolved: Path, folders: Sequence[Path]) -> bool:
        return any(below(resolved, folder) is not None for folder in folders)

    def holds(self, real: Path) -> bool:
        """Whether a real path (links followed) is inside `paths.roots`."""
        return self._inside(real, self.roots)

    def _real_inside(self, raw: str, arg: str, command: str) -> Path:
        """The real path of a request's path (links followed), refused unless it is inside the roots."""
        location = self.locate(raw, arg, command)
        path = Path(os.path.realpath(location.path))
        if not self._inside(path, self.roots):
            allowed = ", ".join(str(root) for root in self.roots)
            raise Forbidden(
                f"{command}: {arg} {raw!r} resolves to {path}, outside the allowed folders ({allowed}); "
                "add a folder to paths.roots in config.yaml"
            )
        return path

    def input_file(self, raw: str, arg: str, command: str) -> Path:
        """An existing regular file inside the roots (links followed, and where they lead checked)."""
        path = self._real_inside(raw, arg, command)
        try:
            exists, is_file = path.exists(), path.is_file()
        except OSError as err:
            raise not_permitted(err, command) or BadRequest(
                f"{command}: {arg} {raw!r} cannot be read: {err.strerror}") from None
        if not exists:
            # A relative path was looked for inside the first root, wherever the sender's own folder is
            # (`flowstate send` from a terminal in another folder): say where.
            where = "" if Path(raw).expanduser().is_absolute() else (
                f" ({path}: a relative path is taken inside {self._anchors[0][0]}, the first of paths.roots; give the "
                "whole path)")
            if past_max_path(path):  # Windows says "not found" for a path it will not take
                where += f" ({len(str(path))} characters: {LONG_PATHS_HINT})"
            raise NotFound(f"{command}: {arg} {raw!r}: no such file{where}")
        if not is_file:
            raise BadRequest(f"{command}: {arg} {raw!r} is not a file")
        return path

    def audio_file(self, raw: str, arg: str, command: str) -> tuple[Path, Any]:
        """An input file (as `input_file`) that libsndfile reads and that holds audio: (path, its
        `soundfile.info`); BadRequest naming the file otherwise."""
        import soundfile

        path = self.input_file(raw, arg, command)
        try:
            info = soundfile.info(str(path))
        except (RuntimeError, soundfile.LibsndfileError) as err:
            raise BadRequest(f"{command}: {arg} {path} is not an audio file libsndfile can read ({err})") from None
        if info.frames <= 0:
            raise BadRequest(f"{command}: {arg} {path} holds no audio (0 frames)")
        return path, info

    def input_dir(self, raw: str, arg: str, command: str) -> Path:
        """An existing folder inside the roots, to read (links followed, where they lead checked); real path."""
        path = self._real_inside(raw, arg, command)
        if not path.exists():
            raise NotFound(f"{command}: {arg} {raw!r}: no such folder")
        if not path.is_dir():
            raise BadRequest(f"{command}: {arg} {raw!r} exists and is not a folder")
        return path

    def output_dir(self, raw: str, arg: str, command: str) -> Path:
        """A folder inside the roots reached without links (it may not exist yet; it is made when written).

        Returns its path as spelled below its root. The write opens it again with `open_dir`.
        """
        location = self.locate(raw, arg, command)
        check_chain(location.root, location.real_root, location.parts, command)
        return location.path

    def output_file(self, folder: Path, name: str, arg: str, command: str) -> Path:
        """`folder/name` for a file a job will write: `name` checked, the folder reached without links."""
        check_name(name, f"{command}: {arg}", self.max_name_bytes)
        location = self.locate(str(Path(folder) / name), arg, command)
        check_chain(location.root, location.real_root, location.parts, command)
        return location.path

    def open_dir(
        self, path: Path | str, arg: str, command: str, *, create: bool = True,
        register: Callable[[Path, tuple[Path, Path]], object] | None = None,
    ) -> Folder:
        """Open an output folder below a root through handles, without following links (see module doc).

        With `create`, missing folders are made and `register(path, anchor)` hears of each
        (`JobContext.register_output`, so a failed job deletes them, safely, again).
        """
        location = self.locate(str(path), arg, command)
        anchor = (location.root, location.real_root)
        return open_folder(
            location.root, location.parts, command, create=create,
            on_create=None if register is None else (lambda made: register(made, anchor)),
            opened_root=location.real_root,
        )

    def model_ref(self, raw: str, arg: str, command: str, *, configured: str, is_path: Callable[[str], bool]) -> str:
        """A model or voice from a request: a plain name as given; a path only inside the model folders.

        `configured` (the config's own value) passes as it is: the user chose it. A path (`is_path`,
        or a name that is also a path relative to the daemon's working folder, which the engines
        would load) must resolve inside `paths.roots` or a configured model folder; it is returned
        resolved, so the engine loads exactly what was checked. The refusal never says whether the
        path exists.
        """
        if raw == configured:
            return raw
        if not isinstance(raw, str) or "\0" in raw or len(raw) > self.max_path_chars:
            raise BadRequest(f"{command}: argument '{arg}' expected a model name or a path of at most "
                             f"{self.max_path_chars} characters (paths.max_path_chars), got {raw[:80]!r}")
        path = Path(raw).expanduser()
        if is_path(raw):
            if not path.is_absolute() and self.roots:
                path = self._anchors[0][0] / path
        elif not os.path.lexists(raw):
            return raw  # a plain name: the engine looks it up in its own folders or the hub
        resolved = Path(os.path.realpath(path))
        allowed = [*self.roots, *self.model_dirs]
        if not self._inside(resolved, allowed):
            folders = ", ".join(str(folder) for folder in allowed) or "none configured"
            raise Forbidden(
                f"{command}: {arg} {raw!r} is a path outside the model folders and paths.roots ({folders}); "
                f"a {arg} named by path must be inside one of them: add its folder to models.dirs in "
                "config.yaml, or give a model name"
            )
        return str(resolved)
