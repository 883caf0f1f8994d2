"""Advisory locks that the kernel releases when their holder dies.

``fcntl.flock`` on a file under ``<store>/.locks/``: a process killed with ``kill -9`` in
the middle of a pull drops its lock automatically, so a lock that can be taken means
"nobody is working on this", and any half-done work found under it is stale.  Lock files
are never deleted (deleting one while another process waits on it would let two
holders in at once).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from shifter.errors import StoreError


class FileLock:
    """An exclusive (or, with ``shared=True``, a shared) ``flock`` on one file; a context manager.

    Not reentrant.  Shared holders exclude exclusive ones and vice versa (readers/writer).
    """

    def __init__(self, path: str | os.PathLike[str], *, shared: bool = False) -> None:
        self.path = Path(path)
        self.shared = shared
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the lock; returns False when not blocking (or timed out) and it is held elsewhere."""
        if self._fd is not None:
            raise StoreError(f"lock {self.path} is already held by this object")
        fd = self._open()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                flags = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
                if not blocking or deadline is not None:
                    flags |= fcntl.LOCK_NB
                try:
                    fcntl.flock(fd, flags)
                    break
                except BlockingIOError:
                    if not blocking or (deadline is not None and time.monotonic() >= deadline):
                        os.close(fd)
                        return False
                    time.sleep(0.05)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        if not self.shared:  # shared holders would overwrite each other's note
            self._note_holder(fd)
        return True

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases it)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def holder(self) -> str:
        """``host:pid`` of the last holder (informational only; the flock is the truth)."""
        try:
            return self.path.read_text(encoding="utf-8").strip()
        except OSError:
            return ""

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as err:
            raise StoreError(f"cannot open lock file {self.path}: {err.strerror}",
                             hint="check that the image store is writable by you") from None

    @staticmethod
    def _note_holder(fd: int) -> None:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{socket.gethostname()}:{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the note is informational


__all__ = ["FileLock"]
