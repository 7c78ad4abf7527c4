"""Partial files and atomic writes: the file helpers of the shared kernel `engines/` may import.

A file is written under a hidden partial name (`.<stem>.partial-<pid>-<hex8><suffix>`), flushed,
fsynced and renamed onto its final name, so a reader sees it absent, old or complete, never
half-written; a crash leaves only a partial file, which `remove_partials` (or
`bridge.files.Folder.remove_partials`) deletes once its writer is gone.

`atomic_write` is for folders no request chooses (a tier's scratch folder, the voices folder, the
self-hosted server's job folders). Job outputs below `paths.roots` are written through
`bridge.files.Folder` (folder handles, no links followed), which names its partial files here too.

Kernel: this module imports nothing of the project but `bridge.errors` (tests/test_layers.py).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import sys
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

from bridge.errors import BadRequest, Forbidden, Unavailable

log = logging.getLogger(__name__)

# Default of paths.max_name_bytes (bridge/config.py), for callers without a config.
MAX_NAME_BYTES = 255

# `.song.partial-4242-1a2b3c4d.wav`: hidden (a leading dot keeps it out of Finder and DAW browsers),
# unmistakable, and ending in the final name's suffix so a reader can infer the format.
PARTIAL = re.compile(r"^\.(?P<stem>.+)\.partial-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})(?P<suffix>\.[^.]*)?$")
_PARTIAL_EXTRA = len(".") + len(".partial-") + 10 + 1 + 8  # around the stem, with a pid of up to 10 digits


# -- partial files -------------------------------------------------------------------------------


def partial_name(name: str) -> str:
    """The hidden temporary name a write goes to before it is renamed onto `name` (same suffix)."""
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        stem, suffix = name, ""
    else:
        suffix = f".{suffix}"
    room = MAX_NAME_BYTES - _PARTIAL_EXTRA - len(suffix.encode("utf-8"))
    stem = stem.encode("utf-8")[: max(room, 1)].decode("utf-8", "ignore") or "x"
    return f".{stem}.partial-{os.getpid()}-{secrets.token_hex(4)}{suffix}"


def process_alive(pid: int) -> bool:
    """Whether a writer may still be busy with its partial file."""
    if pid == os.getpid():
        return True
    if os.name != "posix":
        # os.kill(pid, 0) would terminate the process on Windows. There a file still open cannot be
        # deleted anyway: the removal is refused, and the file left.
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def disk_full(err: OSError, what: str) -> Unavailable | None:
    """`unavailable` naming the file and what to free when `err` is a full disk or quota; else None."""
    if err.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return None
    where = err.filename if err.filename is not None else "its output folder"
    return Unavailable(
        f"{what}: no space left on the disk while writing {where} ({err.strerror}); free space on that disk "
        "(or choose an output folder on another disk) and submit the job again"
    )


def not_permitted(err: OSError, what: str, platform: str | None = None) -> Forbidden | None:
    """`forbidden` naming the file and who may allow it when the OS refused the daemon a file or folder
    (EACCES, EPERM); else None. On macOS an EPERM on a file the daemon's own user owns is usually the
    privacy setting that keeps Documents, Desktop and Downloads from an app not allowed them (a
    daemon started at login, or from a terminal that was refused)."""
    if not isinstance(err, PermissionError):
        return None
    where = err.filename if err.filename is not None else "a file or folder"
    why = ("the folder's permissions, or another program holding it, may be why"
           if (platform or sys.platform) != "darwin" else
           "macOS keeps Documents, Desktop and Downloads from an app it was not told to allow: allow the app "
           f"that runs the daemon (your terminal, or {sys.executable} for the login service) in System Settings "
           "> Privacy & Security > Files and Folders, or Full Disk Access, then start the daemon again")
    return Forbidden(f"{what}: the system did not let the daemon use {where} ({err.strerror}): {why}")


# -- where a path is -----------------------------------------------------------------------------


def below(path: Path, base: Path) -> tuple[str, ...] | None:
    """The names of `path` below `base` (`()` for `base` itself), or None when it is not there.

    Compared as the OS compares names (Windows: in any case), and else as the file system does: on
    macOS, whose volumes ignore case (the default), `~/music` is `~/Music`, and a name in NFD (as HFS+
    drives store every name, and as Finder and Live hand them over) is the same name typed in NFC;
    `os.path.realpath` there keeps the spelling it is given. So where the names differ only so, and
    the folder of `path` at `base`'s depth is `base` on disk, the names below it are `path`'s.
    On a volume that tells them apart they are two folders, and `path` is not below `base`.
    """
    try:
        return path.relative_to(base).parts
    except ValueError:
        pass
    depth = len(base.parts)
    if len(path.parts) < depth:
        return None
    at = type(path)(*path.parts[:depth])
    if _folded(str(at)) != _folded(str(base)):
        return None
    try:
        if not os.path.samestat(os.stat(at), os.stat(base)):
            return None
    except (OSError, ValueError):
        return None
    return path.parts[depth:]


def _folded(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


# -- atomic writes -------------------------------------------------------------------------------


def partial_path(path: Path) -> Path:
    """The temporary name `atomic_write` writes to before renaming onto `path`."""
    return path.with_name(partial_name(path.name))


# Windows will not replace a file another program has open (MoveFileEx: access denied or sharing
# violation, a PermissionError). A virus scanner reading the new file lets go within moments, so the
# rename is tried again for this long; a program that keeps the file open (Live playing the stem it
# was given last time) does not, and the refusal then says so.
REPLACE_PATIENCE_SECONDS = 1.0


def replace(src: str | Path, dst: str | Path, shown: str | Path, *, command: str = "",
            src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
    """`os.replace(src, dst)`, patient with a file held open elsewhere; BadRequest naming `shown` (the
    whole path of `dst`), after `command: `, when it stays refused. The old `dst` is then as it was."""
    deadline = time.monotonic() + REPLACE_PATIENCE_SECONDS
    while True:
        try:
            os.replace(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
            return
        except PermissionError as err:
            if time.monotonic() >= deadline:
                prefix = f"{command}: " if command else ""
                raise BadRequest(
                    f"{prefix}cannot replace {shown} ({err.strerror}): another program has it open (Live or REAPER "
                    "playing it?) or this folder may not be changed; close it there, or write somewhere else "
                    "(out_dir)") from err
            time.sleep(0.05)


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Write a file so that `path` is either absent/old or complete, never half-written.

    `write(tmp)` must create the file `tmp` (same folder, same suffix). It is flushed to disk and
    renamed onto `path`. If anything raises, `tmp` is removed and the exception propagates.
    """
    path = Path(path)
    tmp = partial_path(path)
    try:
        write(tmp)
        # fsync before the rename: otherwise a power cut can leave `path` naming an empty file.
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        replace(tmp, path, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable. POSIX only; some filesystems refuse, and the file is safe anyway."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as err:
        log.debug("cannot open %s to fsync it: %s", folder, err)
        return
    try:
        os.fsync(fd)
    except OSError as err:
        log.debug("fsync of folder %s refused: %s", folder, err)
    finally:
        os.close(fd)


def remove_partials(folder: Path, recursive: bool = False) -> list[Path]:
    """Delete `atomic_write` leftovers (`.<name>.partial-<pid>-<hex8><suffix>`) in `folder`.

    Only regular files whose name matches that pattern exactly are touched, and only when the
    process that wrote them is gone, so a writer still at work keeps its file. Returns what was
    removed. A missing folder is fine (nothing to do).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    candidates = folder.rglob(".*.partial-*") if recursive else folder.glob(".*.partial-*")
    removed: list[Path] = []
    for candidate in candidates:
        match = PARTIAL.match(candidate.name)
        if match is None or candidate.is_symlink() or not candidate.is_file():
            continue
        if process_alive(int(match["pid"])):
            continue
        try:
            candidate.unlink()
        except FileNotFoundError:
            continue  # another cleaner got there first
        except OSError as err:  # Windows: still open (a writer process_alive cannot see there), in use
            log.info("left partial file %s: %s", candidate, err)
            continue
        log.info("removed partial file %s (its writer, pid %s, is gone)", candidate, match["pid"])
        removed.append(candidate)
    return removed
