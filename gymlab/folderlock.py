"""The writer lock of a folder (a run folder, a sweep folder): one process writes it at a time.

An exclusive ``flock`` on the folder's ``.lock`` file, which holds the writer's pid for the message a
second writer gets. The kernel drops the lock when the process dies, so a killed run never leaves a
stale lock. The file is opened without following links and must be a plain file: a ``.lock`` linked
elsewhere would have the pid written into whatever it points to.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from gymlab.errors import GymlabError

LOCK_FILE = ".lock"


class FolderLock:
    """An exclusive ``flock`` on a folder's ``.lock`` file, held while one process writes the folder."""

    def __init__(self, folder: Path, fd: int) -> None:
        self.folder, self._fd = folder, fd

    def release(self) -> None:
        """Drop the lock (closing the file releases it; the lock file itself stays, harmless)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_folder(folder: Path, what: str = "run folder", until: str = "before resuming") -> FolderLock:
    """Take a folder's writer lock, or refuse in one line if another process holds it.

    ``what`` names the folder in the message (a run folder, a sweep folder), ``until`` says when
    to try again.
    """
    path = folder / LOCK_FILE
    not_a_file = GymlabError(
        f"cannot lock {what} {folder}: its {LOCK_FILE} is not a plain file (a link, FIFO or folder); "
        f"remove {path}, then try again"
    )
    try:  # never through a link (it would empty the file it points to), never blocking on a FIFO
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR):
            raise not_a_file from None
        raise GymlabError(f"cannot lock {what} {folder}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise not_a_file
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise GymlabError(
            f"{what} {folder} is being written by another gymlab process (pid {holder}); "
            f"wait for it to end, or stop it, {until}"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return FolderLock(folder, fd)
