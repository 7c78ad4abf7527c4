"""Contained file operations: what the daemon creates, writes, renames or deletes below a root.

Checking a path and then using it by name leaves a gap: a folder on the way can be swapped for a
symbolic link between the check and the write, and the write lands wherever the link points. So
nothing here re-resolves a name after it was checked. `open_folder` walks from the root one
component at a time, opening each folder relative to the previous one's handle without following
links (`O_DIRECTORY | O_NOFOLLOW`, `dir_fd=`), and every later operation (`os.open` of a new file
with `O_CREAT | O_EXCL | O_NOFOLLOW`, `os.replace`, `os.unlink`, `os.rmdir`, `os.mkdir`) is
relative to the handle of the folder that was checked. The data goes to a file descriptor opened
that way, so even a writer such as libsndfile never sees a name.

Where the platform has no `dir_fd` operations (Windows), `Folder` falls back to checking the chain
of folders from the root with `lstat` (links, junctions and other reparse points refused)
immediately before each operation and again before the rename, and compares the file it wrote
with what the name resolves to. The fallback can also be chosen on any platform
(`open_folder(..., dir_fd=False)`), so the tests run it everywhere.

Names are checked here too, the same way on every OS: Windows refuses `CON`, `nul.wav`, `a:b`,
`x.` and friends, and the daemon runs there, so a request may not name them anywhere.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import sys
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from bridge.errors import BadRequest, Forbidden
from bridge.fileio import MAX_NAME_BYTES, PARTIAL, partial_name, process_alive, replace

log = logging.getLogger(__name__)

# Whether this platform can do everything below relative to a folder handle.
DIR_FD_SUPPORTED: bool = (
    hasattr(os, "O_DIRECTORY")
    and hasattr(os, "O_NOFOLLOW")
    and {os.open, os.mkdir, os.unlink, os.rmdir, os.rename, os.stat} <= os.supports_dir_fd
    and os.listdir in os.supports_fd
)

_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_FILE_ATTRIBUTE_REPARSE_POINT = getattr(stat, "FILE_ATTRIBUTE_REPARSE_POINT", 0x400)
# Reparse tags with this bit (symbolic links, junctions, mount points) name another file or folder.
_REPARSE_TAG_NAME_SURROGATE = 0x20000000

# Default of paths.max_path_chars (bridge/config.py), for callers without a config; paths.max_name_bytes's
# is bridge.fileio.MAX_NAME_BYTES.
MAX_PATH_CHARS = 1024

# Windows device names, reserved in any folder and with any extension ("nul.wav" is the device).
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{p}{n}" for p in ("COM", "LPT") for n in (*"0123456789", "\u00b9", "\u00b2", "\u00b3")}
)
_BAD_CHARACTERS = re.compile(r'[<>:"/\\|?*\x00-\x1f]')


# -- names ---------------------------------------------------------------------------------------


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a file or folder name on every OS the daemon runs on; None when it can."""
    if name in ("", ".", ".."):
        return "it is empty or a relative folder reference"
    bad = _BAD_CHARACTERS.search(name)
    if bad is not None:
        return f"it contains {bad.group()!r} (Windows refuses < > : \" / \\ | ? * and control characters)"
    if name[-1] in ". ":
        return "it ends with a dot or a space (Windows drops them, so it would name another file)"
    if name.split(".")[0].rstrip(" ").upper() in _RESERVED:
        return "it is a Windows device name (CON, PRN, AUX, NUL, COM0-9, LPT0-9, with any extension)"
    return None


def check_name(name: str, what: str, max_name_bytes: int = MAX_NAME_BYTES) -> str:
    """`name` when it is a valid name on every OS and not longer than `max_name_bytes`; else BadRequest.

    `what` says where the name came from, e.g. "tts: argument 'name'".
    """
    problem = name_problem(name)
    if problem is not None:
        raise BadRequest(f"{what}: {name!r} cannot be a file or folder name: {problem}")
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > max_name_bytes:
        raise BadRequest(
            f"{what}: the name {_short(name)} is {size} bytes long, over the limit of {max_name_bytes} bytes "
            "per name (paths.max_name_bytes; most file systems allow 255)"
        )
    return name


def safe_name(text: str, fallback: str, max_name_bytes: int = MAX_NAME_BYTES) -> str:
    """A valid name made from `text` (a generated one: a track's title): characters Windows refuses
    become `_`, trailing dots and spaces go, a device name gets a `_`, and it is cut to fit. Accents
    come composed (NFC) first: a name from macOS's Finder or Live arrives decomposed (`E` and a
    combining accent), and the accent on its own is not a word character."""
    name = re.sub(r"[^\w\-. ]+", "_", unicodedata.normalize("NFC", text)).strip(" .")
    name = _BAD_CHARACTERS.sub("_", name)
    if not name:
        name = fallback
    encoded = name.encode("utf-8")[: max_name_bytes - 1]  # room for the `_` below
    name = encoded.decode("utf-8", "ignore").rstrip(" .") or fallback
    base, dot, rest = name.partition(".")
    if base.rstrip(" ").upper() in _RESERVED:
        name = f"{base.rstrip(' ')}_{dot}{rest}"  # `aux.mix` -> `aux_.mix`: no longer the device
    return name


def _short(name: str) -> str:
    return repr(name) if len(name) <= 60 else repr(name[:40] + "…" + name[-12:])


# Windows takes a path of MAX_PATH (260) characters or more only where long paths are enabled (the
# LongPathsEnabled policy, off unless set; Python's documentation, "Removing the MAX_PATH limitation"),
# and otherwise answers as if a folder on the way did not exist (ERROR_PATH_NOT_FOUND) or the name were
# invalid, not with ENAMETOOLONG.
WINDOWS_MAX_PATH = 260
LONG_PATHS_HINT = ("Windows takes paths of 260 characters or more only where long paths are enabled (Group "
                   "Policy, Enable Win32 long paths, or the LongPathsEnabled registry value; then restart the daemon)")


def windows_long_paths() -> bool:
    """Whether this Windows takes paths of MAX_PATH characters or more (False elsewhere: not asked)."""
    if sys.platform != "win32":
        return False
    import winreg

    try:
        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"SYSTEM\CurrentControlSet\Control\FileSystem") as key:
            return bool(winreg.QueryValueEx(key, "LongPathsEnabled")[0] == 1)
    except OSError:
        return False


LONG_PATHS = windows_long_paths()


def past_max_path(path: object, platform: str | None = None, long_paths: bool | None = None) -> bool:
    """Whether `path` is too long for this Windows (never elsewhere)."""
    return ((platform or sys.platform) == "win32" and not (LONG_PATHS if long_paths is None else long_paths)
            and len(str(path)) >= WINDOWS_MAX_PATH)


def too_long(err: OSError, platform: str | None = None, long_paths: bool | None = None) -> bool:
    """Whether the OS refused a name or path as too long (POSIX ENAMETOOLONG, Windows error 206, or a
    path past MAX_PATH on a Windows without long paths, which says not found or invalid)."""
    if err.errno == errno.ENAMETOOLONG or getattr(err, "winerror", None) == 206:
        return True
    return err.errno in (errno.ENOENT, errno.EINVAL) and err.filename is not None and past_max_path(
        err.filename, platform, long_paths)


def _name_too_long(command: str, where: str, err: OSError) -> BadRequest:
    hint = f"; {LONG_PATHS_HINT}" if past_max_path(err.filename or where) else ""
    return BadRequest(f"{command}: {where}: a name or path is too long for this file system ({err.strerror}); "
                      f"use shorter names (paths.max_name_bytes, paths.max_path_chars){hint}")


def audio_writer(frames: Any, sample_rate: int, subtype: str, fmt: str) -> Callable[[BinaryIO], None]:
    """A `Folder.write_atomic` writer of audio `(frames, channels)` (or mono `(frames,)`) with libsndfile.

    libsndfile gets the descriptor itself (`sf_open_fd`), not a Python file object: no name is
    resolved, and it writes as fast as to a path (a file object's callbacks cost about 20 %).
    """

    def write(file: BinaryIO) -> None:
        import soundfile

        channels = 1 if frames.ndim == 1 else int(frames.shape[1])
        try:
            with soundfile.SoundFile(file.fileno(), "w", sample_rate, channels, subtype, format=fmt.upper(),
                                     closefd=False) as out:
                out.write(frames)
        except soundfile.LibsndfileError as err:
            # libsndfile says only "System error." and keeps errno to itself: a full disk (the usual
            # cause) is asked of the OS by writing on, so the job says what to free, not "internal".
            full = _out_of_space(file)
            if full is not None:
                raise full from err
            raise

    return write


def _out_of_space(file: BinaryIO) -> OSError | None:
    """The OS's ENOSPC (or EDQUOT) if 64 KiB more cannot be written at the end of `file`; else None."""
    try:
        file.seek(0, os.SEEK_END)
        file.write(bytes(65536))
        file.flush()
        os.fsync(file.fileno())
    except OSError as err:
        if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return err
    return None


# -- folders -------------------------------------------------------------------------------------


class Folder:
    """A folder below a root, reached without following any link, and what may be done in it.

    With `fd` (POSIX) every operation is relative to that handle, so the folder cannot be swapped
    under the daemon: renaming it away moves the daemon's writes with it, and a link put in its
    place is never followed. Without (Windows), the chain is checked again right before each step.
    Close it (or use it as a context manager) when done.
    """

    def __init__(self, root: Path, parts: tuple[str, ...], fd: int | None, command: str, opened_root: Path) -> None:
        self.root = root
        self.parts = parts
        self.fd = fd
        self.command = command
        self._opened_root = opened_root

    @property
    def path(self) -> Path:
        """The folder's path, spelled from the root as configured (for results and messages)."""
        return self.root.joinpath(*self.parts)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A handle a caller forgot must not stay open for the daemon's lifetime.
        fd = getattr(self, "fd", None)
        if fd is not None:
            os.close(fd)

    # -- checks ------------------------------------------------------------------------------------

    def _lstat(self, name: str) -> os.stat_result | None:
        try:
            if self.fd is not None:
                return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            return os.lstat(self.path / name)
        except FileNotFoundError:
            return None

    def _check_target(self, name: str) -> None:
        """Refuse to replace a link or a folder that sits where the file goes."""
        found = self._lstat(name)
        if found is None:
            return
        if _is_link(found):
            raise _link_forbidden(self.command, self.path / name, self.root)
        if stat.S_ISDIR(found.st_mode):
            raise BadRequest(f"{self.command}: {self.path / name} exists and is a folder, not a file; "
                             "move it away or choose another name or out_dir")

    def _verify(self) -> None:
        """Fallback only: the chain from the root to this folder is still real folders, no links."""
        _walk_checked(self.root, self._opened_root, self.parts, self.command, create=False, on_create=None)

    # -- operations --------------------------------------------------------------------------------

    def write_atomic(self, name: str, write: Callable[[BinaryIO], object]) -> Path:
        """Write the file `name` in this folder so it is either absent/old or complete, never half-written.

        `write(file)` gets a binary file object opened here (seekable); it is flushed, fsynced and
        renamed onto `name`. If anything raises, the partial file is removed and the error propagates.
        Returns the file's path.
        """
        tmp = partial_name(name)
        self._check_target(name)
        try:
            if self.fd is not None:
                self._write_at(tmp, name, write)
            else:
                self._write_checked(tmp, name, write)
        except BaseException as err:
            self._discard(tmp)
            if isinstance(err, OSError) and err.filename is None:
                err.filename = str(self.path / name)  # "no space left ... while writing <this file>"
            raise
        self._fsync()
        return self.path / name

    def _write_at(self, tmp: str, name: str, write: Callable[[BinaryIO], object]) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_BINARY | _O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o666, dir_fd=self.fd)
        except OSError as err:
            if too_long(err):
                raise _name_too_long(self.command, str(self.path / name), err) from err
            raise
        with os.fdopen(fd, "w+b") as file:
            write(file)
            file.flush()
            # Before the rename: otherwise a power cut can leave `name` naming an empty file.
            os.fsync(file.fileno())
        self._check_target(name)
        replace(tmp, name, self.path / name, command=self.command, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def _write_checked(self, tmp: str, name: str, write: Callable[[BinaryIO], object]) -> None:
        self._verify()
        tmp_path = self.path / tmp
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_BINARY | _O_CLOEXEC
        try:
            fd = os.open(tmp_path, flags, 0o666)
        except OSError as err:
            if too_long(err):
                raise _name_too_long(self.command, str(self.path / name), err) from err
            raise
        with os.fdopen(fd, "w+b") as file:
            opened = os.fstat(file.fileno())
            write(file)
            file.flush()
            os.fsync(file.fileno())
        # The name must still lead to the file written, through real folders only.
        self._verify()
        now = os.lstat(tmp_path)
        if _is_link(now) or (now.st_ino, now.st_dev) != (opened.st_ino, opened.st_dev):
            raise Forbidden(f"{self.command}: {tmp_path} changed while it was written; nothing was kept")
        self._check_target(name)
        replace(tmp_path, self.path / name, self.path / name, command=self.command)
        self._verify()

    def _discard(self, tmp: str) -> None:
        try:
            if self.fd is not None:
                os.unlink(tmp, dir_fd=self.fd)
            else:
                self._verify()
                os.unlink(self.path / tmp)
        except FileNotFoundError:
            pass
        except (OSError, Forbidden, BadRequest) as err:
            log.warning("%s: could not remove the partial file %s: %s", self.command, self.path / tmp, err)

    def _fsync(self) -> None:
        """Make the rename durable. POSIX only; some file systems refuse, and the file is safe anyway."""
        if self.fd is None or os.name != "posix":
            return
        try:
            os.fsync(self.fd)
        except OSError as err:
            log.debug("fsync of folder %s refused: %s", self.path, err)

    @property
    def anchor(self) -> tuple[Path, Path]:
        """(root as spelled, real root): what `JobContext.register_output` needs to delete safely later."""
        return (self.root, self._opened_root)

    def remove(self, name: str) -> bool:
        """Delete `name` here if it is a regular file or an empty real folder; a link is left alone."""
        found = self._lstat(name)
        if found is None:
            return False
        if stat.S_ISDIR(found.st_mode) and not _is_link(found):
            return self.remove_empty_folder(name)
        return self.remove_file(name)

    def remove_file(self, name: str) -> bool:
        """Delete the regular file `name` here (never a link's target, never a folder); True if deleted."""
        found = self._lstat(name)
        if found is None:
            return False
        if _is_link(found) or not stat.S_ISREG(found.st_mode):
            log.warning("%s: not removing %s: it is not a regular file (a link or a folder took its place)",
                        self.command, self.path / name)
            return False
        if self.fd is not None:
            os.unlink(name, dir_fd=self.fd)
        else:
            self._verify()
            os.unlink(self.path / name)
        return True

    def remove_empty_folder(self, name: str) -> bool:
        """Delete the sub-folder `name` if it is empty (never a tree, never through a link); True if deleted."""
        found = self._lstat(name)
        if found is None or _is_link(found) or not stat.S_ISDIR(found.st_mode):
            return False
        try:
            if self.fd is not None:
                os.rmdir(name, dir_fd=self.fd)
            else:
                self._verify()
                os.rmdir(self.path / name)
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST) or getattr(err, "winerror", None) == 145:
                return False  # something else lives there now: keep it
            raise
        return True

    def names(self) -> list[str]:
        """The names in this folder."""
        if self.fd is not None:
            return os.listdir(self.fd)
        self._verify()
        return os.listdir(self.path)

    def remove_partials(self) -> list[Path]:
        """Delete leftover partial files of writers that are gone (a crash mid-write); returns them."""
        removed: list[Path] = []
        for name in self.names():
            match = PARTIAL.match(name)
            if match is None or process_alive(int(match["pid"])):
                continue
            try:
                if self.remove_file(name):
                    log.info("removed partial file %s (its writer, pid %s, is gone)", self.path / name, match["pid"])
                    removed.append(self.path / name)
            except FileNotFoundError:
                continue  # another cleaner got there first
            except OSError as err:  # Windows: still open (its writer at work, or a virus scanner)
                log.info("left partial file %s: %s", self.path / name, err)
        return removed


def _is_link(found: os.stat_result) -> bool:
    """A symbolic link, or (Windows) a junction, a mount point or another reparse point that names
    another place. Cloud-file placeholders (OneDrive's Documents) are reparse points too, but they
    do not lead anywhere else: only name surrogates (and reparse points of an unknown tag) count."""
    if stat.S_ISLNK(found.st_mode):
        return True
    if not getattr(found, "st_file_attributes", 0) & _FILE_ATTRIBUTE_REPARSE_POINT:
        return False
    tag = getattr(found, "st_reparse_tag", None)
    return tag is None or bool(tag & _REPARSE_TAG_NAME_SURROGATE)


def _link_forbidden(command: str, link: Path, root: Path) -> Forbidden:
    return Forbidden(
        f"{command}: {link} is a link (symbolic link or junction) inside the allowed folder {root}; "
        "links inside paths.roots are not followed when writing or deleting, so nothing was written "
        "there. Replace the link with a real folder, or choose another out_dir"
    )


def _not_a_folder(command: str, path: Path) -> BadRequest:
    return BadRequest(f"{command}: {path} exists and is not a folder")


def open_folder(
    root: Path,
    parts: Sequence[str],
    command: str,
    *,
    create: bool = False,
    on_create: Callable[[Path], object] | None = None,
    opened_root: Path | None = None,
    dir_fd: bool = DIR_FD_SUPPORTED,
) -> Folder:
    """Open `root/parts...` without following a link below `root`; Forbidden names the first link.

    `root` is one of `paths.roots` as the user spelled it (it may itself be a link: the user chose
    it); `opened_root` is what is opened for it (its real path; default `root`). With `create`,
    missing folders are made, and `on_create(path)` is told about each one (a job registers them
    to delete on failure). A missing folder without `create` is FileNotFoundError.
    """
    parts = tuple(parts)
    opened_root = opened_root or root
    if not dir_fd:
        _walk_checked(root, opened_root, parts, command, create=create, on_create=on_create)
        return Folder(root, parts, None, command, opened_root)
    flags = os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC
    try:
        fd = os.open(opened_root, flags)
    except OSError as err:
        if too_long(err):
            raise _name_too_long(command, str(root), err) from err
        raise
    try:
        here = root
        for part in parts:
            here = here / part
            parent, fd = fd, -1  # _open_child closes the parent, whatever happens
            fd = _open_child(parent, part, here, root, command, create, on_create)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    return Folder(root, parts, fd, command, opened_root)


def _open_child(
    parent: int, name: str, path: Path, root: Path, command: str, create: bool,
    on_create: Callable[[Path], object] | None,
) -> int:
    """The handle of `name` in the folder `parent` (closed here, even on failure)."""
    flags = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC
    try:
        for _ in range(3):  # a folder made or removed by someone else in between: look again
            try:
                return os.open(name, flags, dir_fd=parent)
            except FileNotFoundError:
                if not create:
                    raise
            try:
                os.mkdir(name, 0o777, dir_fd=parent)
            except FileExistsError:
                continue
            if on_create is not None:
                on_create(path)
        return os.open(name, flags, dir_fd=parent)
    except FileNotFoundError:
        raise
    except OSError as err:
        if too_long(err):
            raise _name_too_long(command, str(path), err) from err
        try:
            found = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except OSError:
            raise err from None
        _refuse_unless_real_folder(found, path, root, command)
        raise
    finally:
        os.close(parent)


def _walk_checked(
    root: Path, opened_root: Path, parts: tuple[str, ...], command: str, *, create: bool,
    on_create: Callable[[Path], object] | None,
) -> None:
    """Fallback without handles: each folder below the root must be a real folder, not a link."""
    shown, here = root, opened_root
    for part in parts:
        shown, here = shown / part, here / part
        try:
            found = os.lstat(here)
        except FileNotFoundError:
            if not create:
                raise
            try:
                os.mkdir(here)
            except FileExistsError:
                pass
            else:
                if on_create is not None:
                    on_create(shown)
            found = os.lstat(here)
        except OSError as err:
            if too_long(err):
                raise _name_too_long(command, str(shown), err) from err
            raise
        _refuse_unless_real_folder(found, shown, root, command)


def _refuse_unless_real_folder(found: os.stat_result, shown: Path, root: Path, command: str) -> None:
    """Forbidden for a link (or junction), BadRequest for anything else that is not a folder."""
    if _is_link(found):
        raise _link_forbidden(command, shown, root)
    if not stat.S_ISDIR(found.st_mode):
        raise _not_a_folder(command, shown)


def check_chain(root: Path, opened_root: Path, parts: Sequence[str], command: str) -> None:
    """Refuse now (Forbidden / BadRequest) when a folder that exists on the way is a link or a file.

    Missing folders are fine (they are made when written). For an early answer to a request; the
    write itself is checked again through `open_folder`.
    """
    shown, here = root, opened_root
    for part in parts:
        shown, here = shown / part, here / part
        try:
            found = os.lstat(here)
        except FileNotFoundError:
            return
        except OSError as err:
            if too_long(err):
                raise _name_too_long(command, str(shown), err) from err
            raise
        _refuse_unless_real_folder(found, shown, root, command)
