"""One pull of a tag at a time across gateway processes and instances.

Each process has its own job table; two processes asked for the same new tag would both start.
The pull therefore runs under a lock keyed by (system, tag): the second waits on it, then finds
the image READY (one HEAD request, no download, not even of the image config).

* PostgreSQL: a session advisory lock (``pg_advisory_lock``): instances on several hosts share
  it through the database; a gateway killed mid-pull releases it with its connection.
* SQLite (one host; ``http_workers`` processes): an ``flock`` on ``<store>/.locks/tag-<key>.lock``,
  released by the kernel when its process dies.

Two tags of one digest still meet at the store's per-image lock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text

from shifter.store.locks import FileLock


def lock_key(system: str, ref: str) -> int:
    """A signed 64-bit key (PostgreSQL's ``bigint``) for the tag."""
    return int.from_bytes(hashlib.sha256(f"shifter-pull\0{system}\0{ref}".encode()).digest()[:8], "big",
                          signed=True)


@contextmanager
def pull_lock(engine: Engine, locks_dir: Path, system: str, ref: str,
              on_wait: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Hold the tag's lock; ``on_wait`` is called first when someone else holds it."""
    if engine.dialect.name != "postgresql":
        lock = FileLock(locks_dir / f"tag-{lock_key(system, ref) & 0xFFFF_FFFF_FFFF_FFFF:016x}.lock")
        if not lock.acquire(blocking=False):
            on_wait()
            lock.acquire()
        try:
            yield
        finally:
            lock.release()
        return
    key = lock_key(system, ref)
    with engine.connect() as conn:
        if not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
            on_wait()
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


__all__ = ["lock_key", "pull_lock"]
