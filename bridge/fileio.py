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
from collections.abc import Callable
from pathlib import Path

from bridge.errors import Unavailable

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
        return False  # os.kill(pid, 0) would terminate the process on Windows
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


# -- atomic writes -------------------------------------------------------------------------------


def partial_path(path: Path) -> Path:
    """The temporary name `atomic_write` writes to before renaming onto `path`."""
    return path.with_name(partial_name(path.name))


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
        os.replace(tmp, path)
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
        log.info("removed partial file %s (its writer, pid %s, is gone)", candidate, match["pid"])
        removed.append(candidate)
    return removed
