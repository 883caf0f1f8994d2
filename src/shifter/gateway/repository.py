"""The gateway's database access: the only module that speaks SQL (through SQLAlchemy).

SQLite is the embedded default (``sqlite:///<store>/shifter.db``, WAL mode, busy
timeout so that concurrent ``shifterimg`` processes wait instead of failing); any other
SQLAlchemy URL (``postgresql+psycopg://...``) works the same way.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, delete, event, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from shifter.errors import StoreError
from shifter.gateway.models import Base, ImageRecord, ImageRow, MetaRow, Status, TagRecord, TagRow

SCHEMA_VERSION = "1"
BUSY_TIMEOUT_MS = 60_000


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys."""
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
    except (SQLAlchemyError, ImportError) as err:
        raise StoreError(f"cannot use database {url!r}: {err}",
                         hint="check databaseUrl in the site configuration") from None
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class ImageRepository:
    """Images and tags in the database.  Every method is one short transaction."""

    def __init__(self, engine: Engine, create: bool = True) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        if create:
            self._create_schema()

    @classmethod
    def from_url(cls, url: str) -> ImageRepository:
        return cls(make_engine(url))

    def _create_schema(self) -> None:
        for attempt in range(3):
            try:
                Base.metadata.create_all(self.engine)
                break
            except SQLAlchemyError as err:
                if attempt == 2:  # else: another process created a table at the same moment; retry
                    raise StoreError(f"cannot open the image database: {err.__class__.__name__}: {err}",
                                     hint="check databaseUrl and the image store's permissions") from None
        try:
            with self._session() as session:
                if session.get(MetaRow, "schema") is None:
                    session.add(MetaRow(key="schema", value=SCHEMA_VERSION))
        except StoreError:
            pass  # inserted by a concurrent process

    @contextmanager
    def _session(self) -> Iterator[Session]:
        try:
            with self._sessions.begin() as session:
                yield session
        except SQLAlchemyError as err:
            raise StoreError(f"image database error: {err.__class__.__name__}: {err}",
                             hint="retry; if it persists check databaseUrl and disk space") from None

    # --- images ------------------------------------------------------------------------
    def get(self, image_id: str) -> ImageRecord | None:
        with self._session() as session:
            row = session.get(ImageRow, image_id)
            return self._record(session, row) if row else None

    def set_status(self, image_id: str, status: Status, message: str, **fields: Any) -> ImageRecord:
        """Create or update an image row with a new status (and any other columns in ``fields``)."""
        for attempt in range(2):
            values = dict(fields)
            try:
                with self._session() as session:
                    row = session.get(ImageRow, image_id)
                    if row is None:
                        row = ImageRow(id=image_id, digest=values.pop("digest", f"sha256:{image_id}"),
                                       acl={"private": False, "users": [], "groups": []})
                        session.add(row)
                    row.status = status.value
                    row.status_message = message
                    row.updated_at = _now()
                    for name, value in values.items():
                        setattr(row, name, value)
                    session.flush()
                    return self._record(session, row)
            except StoreError:
                if attempt:
                    raise  # a concurrent insert of the same id wins the first attempt
        raise AssertionError("unreachable")

    def delete_image(self, image_id: str) -> None:
        with self._session() as session:
            session.execute(delete(TagRow).where(TagRow.image_id == image_id))
            session.execute(delete(ImageRow).where(ImageRow.id == image_id))

    def list_images(self) -> list[ImageRecord]:
        with self._session() as session:
            rows = session.scalars(select(ImageRow).order_by(ImageRow.updated_at.desc())).all()
            tags = self._tags_by_image(session)
            return [self._record(session, r, tags.get(r.id, ())) for r in rows]

    # --- tags --------------------------------------------------------------------------
    def find_tag(self, image_type: str, ref: str) -> TagRecord | None:
        with self._session() as session:
            row = session.get(TagRow, (image_type, ref))
            return TagRecord(row.type, row.ref, row.image_id, row.owner, row.top_digest) if row else None

    def set_tag(self, image_type: str, ref: str, image_id: str, owner: str,
                top_digest: str | None = None) -> str | None:
        """Point a tag at ``image_id``; returns the image it pointed at before (or None).

        ``top_digest`` is what the tag resolved to in the registry (kept when None).
        """
        for attempt in range(2):
            try:
                with self._session() as session:
                    row = session.get(TagRow, (image_type, ref))
                    if row is None:
                        session.add(TagRow(type=image_type, ref=ref, image_id=image_id, owner=owner,
                                           top_digest=top_digest, updated_at=_now()))
                        return None
                    previous = row.image_id
                    row.image_id, row.updated_at = image_id, _now()
                    if top_digest is not None or previous != image_id:
                        row.top_digest = top_digest
                    if previous != image_id:
                        row.owner = owner
                    return previous
            except StoreError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def remove_tag(self, image_type: str, ref: str) -> None:
        with self._session() as session:
            session.execute(delete(TagRow).where(TagRow.type == image_type, TagRow.ref == ref))

    def tags_of(self, image_id: str) -> list[TagRecord]:
        with self._session() as session:
            rows = session.scalars(select(TagRow).where(TagRow.image_id == image_id)).all()
            return [TagRecord(r.type, r.ref, r.image_id, r.owner, r.top_digest) for r in rows]

    # --- helpers -----------------------------------------------------------------------
    @staticmethod
    def _tags_by_image(session: Session) -> dict[str, list[TagRecord]]:
        out: dict[str, list[TagRecord]] = {}
        for r in session.scalars(select(TagRow).order_by(TagRow.type, TagRow.ref)).all():
            out.setdefault(r.image_id, []).append(TagRecord(r.type, r.ref, r.image_id, r.owner, r.top_digest))
        return out

    @staticmethod
    def _record(session: Session, row: ImageRow, tags: Any = None) -> ImageRecord:
        if tags is None:
            tags = [TagRecord(t.type, t.ref, t.image_id, t.owner, t.top_digest) for t in
                    session.scalars(select(TagRow).where(TagRow.image_id == row.id)).all()]
        return ImageRecord(
            id=row.id, digest=row.digest, type=row.type, status=Status(row.status),
            status_message=row.status_message or "", source=row.source or "", owner=row.owner or "",
            worker=row.worker or "", compressed_size=row.compressed_size or 0, size=row.size or 0,
            created=row.created or "", pulled_at=row.pulled_at, updated_at=row.updated_at,
            acl=dict(row.acl or {}), tags=tuple(tags))


__all__ = ["ImageRepository", "make_engine"]
