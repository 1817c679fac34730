"""Exclusive advisory lock on ``<store path>.lock`` holding the holder's pid.

``flock`` locks belong to an open file description, so a second open in the same process
conflicts exactly like another process, and the kernel releases the lock when the holder
dies (kill -9 included): no stale lock to clean up. Imports only the error tree.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from crdtstate.errors import StoreError, StoreLockedError


class FileLock:
    """A held lock; :meth:`release` (idempotent) gives it up.

    Attributes:
        path: the lock file.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, store_path: Path) -> FileLock:
        """Take the lock of ``store_path`` without waiting.

        Raises:
            StoreLockedError: someone holds it; names the store and the holder's pid.
            StoreError: the lock file cannot be created or opened.
        """
        lock_path = store_path.with_name(store_path.name + ".lock")
        try:
            # O_CLOEXEC (Python's default): a child process must not inherit the lock.
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open lock file {lock_path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreLockedError(
                    f"store {store_path} is locked by pid {holder} "
                    f"(lock file {lock_path}); another replica has it open"
                ) from exc
            raise StoreError(f"cannot lock {lock_path}: {exc}") from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"cannot write lock file {lock_path}: {exc}") from exc
        return cls(lock_path, fd)

    def release(self) -> None:
        """Give up the lock (closing the descriptor releases it)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"
