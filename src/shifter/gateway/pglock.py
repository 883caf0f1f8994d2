"""One pull of a tag at a time across gateway instances that share a PostgreSQL database.

Each instance has its own job table; two instances asked for the same new tag would both start.
The pull therefore runs under a PostgreSQL session advisory lock keyed by (system, tag): the
second instance waits on it, then finds the image READY (one HEAD request, no download).  The
lock belongs to the database session: a gateway killed mid-pull releases it with its
connection.  Two tags of one digest still meet at the store's per-image lock.  With SQLite (one
instance) this is a no-op.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, text


def lock_key(system: str, ref: str) -> int:
    """A signed 64-bit key (PostgreSQL's ``bigint``) for the tag."""
    return int.from_bytes(hashlib.sha256(f"shifter-pull\0{system}\0{ref}".encode()).digest()[:8], "big",
                          signed=True)


@contextmanager
def pull_lock(engine: Engine, system: str, ref: str, on_wait: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Hold the tag's advisory lock; ``on_wait`` is called first when another session holds it."""
    if engine.dialect.name != "postgresql":
        yield
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
