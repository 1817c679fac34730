"""Atomic file replacement for mirror files: a reader sees the old file or the new one.

The new content goes to a temporary file in the same directory, is fsynced, renamed over
the target (``os.replace`` is atomic on POSIX), and the directory is fsynced so the rename
itself survives a power cut. A process killed at any instant leaves the target intact and at
worst a temporary file, which :func:`remove_stale_temps` clears later.

Imports only the mirrors' errors; knows nothing about replicas or fields.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import time
from pathlib import Path

from crdtstate.mirrors.errors import MirrorWriteError

TEMP_MARK = ".crdtstate-"
"""Temporary files are named ``.<target name>.crdtstate-<random>.tmp``."""

READ_BYTES_MAX = 16 << 20
"""Largest mirror file read back (16 MiB); a bigger one is reported, never loaded."""


def temp_name(target: Path) -> Path:
    """A fresh temporary path next to ``target``."""
    return target.with_name(f".{target.name}{TEMP_MARK}{secrets.token_hex(6)}.tmp")


def write_atomic(target: Path, data: bytes) -> None:
    """Replace ``target`` with ``data`` atomically and durably.

    A symlink is followed (its target file is replaced, the link kept); an existing file's
    permission bits are kept, a new file gets the process umask's default.

    Raises:
        MirrorWriteError: the directory is missing or not writable, the disk is full, ...
            The old file is left as it was and no temporary file remains.
    """
    path = Path(os.path.realpath(target))
    tmp = temp_name(path)
    try:
        mode: int | None = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise MirrorWriteError(f"cannot write {target}: {exc.strerror or exc}") from exc
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise MirrorWriteError(f"cannot write {target}: {exc.strerror or exc}") from exc
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """fsync a directory so a rename in it is durable (best effort where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories; the rename still happened
    finally:
        os.close(fd)


def read_limited(path: Path) -> bytes | None:
    """The bytes of ``path``, or ``None`` when it does not exist.

    Raises:
        OSError: unreadable (permissions, a directory, ...).
        ValueError: larger than :data:`READ_BYTES_MAX`.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(READ_BYTES_MAX + 1)
    except FileNotFoundError:
        return None
    if len(data) > READ_BYTES_MAX:
        raise ValueError(f"larger than {READ_BYTES_MAX} bytes")
    return data


def remove_stale_temps(target: Path, older_than_s: float = 60.0) -> int:
    """Delete temporary files a killed writer left next to ``target``; returns how many.

    Only files older than ``older_than_s`` go, so a write in progress elsewhere is not hit.
    """
    path = Path(os.path.realpath(target))
    prefix = f".{path.name}{TEMP_MARK}"
    removed = 0
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return 0
    cutoff = time.time() - older_than_s
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(".tmp")):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            continue
    return removed
