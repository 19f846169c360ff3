"""One process per database: an exclusive ``flock`` on ``<path>.lock``, which holds our pid.

A second store on the same file fails at once with :class:`StoreLocked`. Only the owner numbers
outbox rows, so a tool that wants to change the database while the agent runs goes through
the agent's local API (``edge-agent outbox dead-letter replay`` does).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from edge_agent.store.base import StoreError, StoreLocked


def lock_database(path: Path) -> int:
    """Take the database's lock file and write our pid in it; returns the fd (close to unlock).

    Raises:
        StoreLocked: another process holds it.
        StoreError: the lock file cannot be created or locked.
    """
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StoreError(
            f"cannot create the lock file {lock_path}: {exc.strerror or exc}; the agent needs "
            "write access to the store's directory"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        if isinstance(exc, BlockingIOError):
            raise StoreLocked(path, holder) from None
        raise StoreError(f"cannot lock {lock_path}: {exc.strerror or exc}") from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
