"""flock-based locks: exclusive, and released by the kernel when the holder dies."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from shifter.store.locks import FileLock


def test_lock_is_exclusive_between_holders(tmp_path: Path) -> None:
    first, second = FileLock(tmp_path / "x.lock"), FileLock(tmp_path / "x.lock")
    assert first.acquire(blocking=False)
    assert not second.acquire(blocking=False)
    assert not second.acquire(timeout=0.1)
    first.release()
    assert second.acquire(blocking=False)
    second.release()


def test_lock_records_its_holder(tmp_path: Path) -> None:
    with FileLock(tmp_path / "x.lock") as lock:
        assert lock.holder().endswith(f":{os.getpid()}")


def test_kill_9_of_holder_releases_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: take the lock, tell the parent, wait to be killed
        os.close(read_fd)
        FileLock(path).acquire()
        os.write(write_fd, b"1")
        time.sleep(60)
        os._exit(0)
    os.close(write_fd)
    assert os.read(read_fd, 1) == b"1"
    os.close(read_fd)
    assert not FileLock(path).acquire(blocking=False)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    lock = FileLock(path)
    assert lock.acquire(blocking=False)
    lock.release()
