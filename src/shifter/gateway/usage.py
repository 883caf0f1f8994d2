"""When each image was last used (looked up or pulled): the clock of image expiry.

A table of its own (``gateway_usage``: system, image id, last use as epoch seconds) in the
gateway's database, created if missing.  Lookups come by the thousand per second, so a use is
noted in memory only, and written by :meth:`UsageTable.flush`: every ``heartbeat`` seconds by the
gateway's sweeper, before an autoexpire, and at shutdown (a crash loses at most one heartbeat's
worth of uses: the image then looks a little older to the expiry).
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import Column, Engine, Float, MetaData, String, Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from shifter.errors import StoreError

_META = MetaData()
USAGE = Table("gateway_usage", _META,
              Column("system", String(255), primary_key=True),
              Column("image_id", String(128), primary_key=True),
              Column("last_used", Float, nullable=False))


class UsageTable:
    """Last-use times of one system's images."""

    def __init__(self, engine: Engine, system: str) -> None:
        self.engine = engine
        self.system = system
        self._pending: dict[str, float] = {}
        self._lock = threading.Lock()
        try:
            _META.create_all(engine, checkfirst=True)
        except SQLAlchemyError as err:
            if "already exists" not in str(err):  # another gateway created it at the same moment
                raise StoreError(f"cannot create the usage table: {err.__class__.__name__}",
                                 hint="check databaseUrl and the database's permissions") from None

    def touch(self, image_id: str) -> None:
        """Note a use, in memory only: the sweeper (and autoexpire, and shutdown) writes them."""
        with self._lock:
            self._pending[image_id] = time.time()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        rows = [{"system": self.system, "image_id": i, "last_used": t} for i, t in pending.items()]
        insert = (postgresql.insert(USAGE) if self.engine.dialect.name == "postgresql" else sqlite.insert(USAGE))
        stmt = insert.on_conflict_do_update(index_elements=["system", "image_id"],
                                            set_={"last_used": insert.excluded.last_used})
        try:
            with self.engine.begin() as conn:
                conn.execute(stmt, rows)
        except SQLAlchemyError as err:
            raise StoreError(f"cannot record image use: {err.__class__.__name__}", hint="check the database") from None

    def last_used(self, image_id: str) -> float | None:
        with self._lock:
            if image_id in self._pending:
                return self._pending[image_id]
        with self.engine.connect() as conn:
            value = conn.execute(select(USAGE.c.last_used).where(USAGE.c.system == self.system,
                                                                 USAGE.c.image_id == image_id)).scalar()
        return float(value) if value is not None else None

    def set(self, image_id: str, when: float) -> None:
        """Record a use at ``when`` (tests and imports of old stores)."""
        with self._lock:
            self._pending[image_id] = when
        self.flush()

    def forget(self, image_id: str) -> None:
        with self._lock:
            self._pending.pop(image_id, None)
        with self.engine.begin() as conn:
            conn.execute(delete(USAGE).where(USAGE.c.system == self.system, USAGE.c.image_id == image_id))


__all__ = ["USAGE", "UsageTable"]
