"""The gateway's database access: the only module that speaks SQL (through SQLAlchemy).

Two backends, with the same tables and the same behaviour:

- SQLite, the embedded default (``sqlite:///<store>/shifter.db``): WAL mode and a busy
  timeout, so that concurrent ``shifterimg`` processes wait instead of failing.
- PostgreSQL (``postgresql+psycopg://user@host:5432/shifter``; a bare ``postgresql://``
  means the psycopg 3 driver, the ``postgres`` extra), for a gateway at scale.

Writes that may race with another process are single upserts (``INSERT ... ON CONFLICT``,
which both dialects have), and a read that decides a write locks its row first
(``SELECT ... FOR UPDATE``; SQLite holds the whole database for the writing transaction
anyway).  The schema is created from the models with ``CREATE TABLE/INDEX IF NOT EXISTS``
(idempotent; under an advisory lock on PostgreSQL so that processes starting together do not
collide).  There are no migrations yet: a changed model needs a migration tool (future work).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, delete, event, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.schema import CreateIndex, CreateTable

from shifter.errors import StoreError
from shifter.gateway.models import Base, ImageRecord, ImageRow, MetaRow, Status, TagRecord, TagRow

SCHEMA_VERSION = "1"
BUSY_TIMEOUT_MS = 60_000
CONNECT_TIMEOUT_S = 10
BACKENDS = ("sqlite", "postgresql")
SCHEMA_LOCK = 0x5348_4946_5445_5200  # PostgreSQL advisory lock key held while creating tables
_NEW_ACL: dict[str, Any] = {"private": False, "users": [], "groups": []}
_URL_HINT = "check databaseUrl in the site configuration (sqlite:///<path> or postgresql+psycopg://user@host/db)"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def database_url(text_url: str) -> URL:
    """Parse ``text_url``; a bare ``postgresql://`` gets the psycopg 3 driver (SQLAlchemy's default is psycopg2)."""
    try:
        url = make_url(text_url)
    except (SQLAlchemyError, ValueError) as err:
        raise StoreError(f"cannot parse databaseUrl: {err}", hint=_URL_HINT) from None
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in BACKENDS:
        raise StoreError(f"unsupported database {redact(text_url)!r}: the gateway supports SQLite and PostgreSQL",
                         hint=_URL_HINT)
    return url


def redact(url: str | URL) -> str:
    """``url`` fit to show: the password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        return "<unparsable URL>"


def make_engine(url: str) -> Engine:
    """An engine for ``url``: SQLite gets WAL, a busy timeout and foreign keys; PostgreSQL a connect timeout."""
    parsed = database_url(url)
    try:
        if parsed.get_backend_name() == "sqlite":
            engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(parsed, pool_pre_ping=True, connect_args=_libpq_args(parsed))
    except ImportError as err:
        raise StoreError(f"cannot use database {redact(parsed)!r}: its driver is missing ({err})",
                         hint="install the PostgreSQL driver: pip install 'shifter[postgres]' (psycopg 3)") from None
    except SQLAlchemyError as err:
        raise StoreError(f"cannot use database {redact(parsed)!r}: {err}", hint=_URL_HINT) from None
    return engine


def _libpq_args(url: URL) -> dict[str, Any]:
    """Fail fast on an unreachable server and name ourselves, unless the URL says otherwise."""
    if url.get_driver_name() != "psycopg":
        return {}
    wanted = {"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "shifter"}
    return {key: value for key, value in wanted.items() if key not in url.query}


def _describe(err: SQLAlchemyError) -> str:
    """The driver's own words when there are some (not the SQL statement and its parameters)."""
    cause = err.orig if isinstance(err, DBAPIError) else None
    return f"{type(cause or err).__name__}: {' '.join(str(cause or err).split())}"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _insert(bind: Session | Connection, table: Any) -> Any:
    """The dialect's ``INSERT`` with ``ON CONFLICT`` support (SQLite and PostgreSQL spell it alike)."""
    dialect = bind.get_bind().dialect.name if isinstance(bind, Session) else bind.dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


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

    def close(self) -> None:
        """Close the pooled connections (a PostgreSQL server counts them)."""
        self.engine.dispose()

    def _create_schema(self) -> None:
        """Create missing tables and the schema version row; safe from many processes at once.

        ``CREATE ... IF NOT EXISTS`` makes it idempotent, and the whole creation holds a lock so
        that processes starting together take turns: SQLite's write lock (``BEGIN IMMEDIATE``,
        waiting up to the busy timeout), PostgreSQL's advisory lock (two ``IF NOT EXISTS``
        statements can still collide there).  SQLite can still answer "database is locked" at
        once, without waiting, while another process opens a new file or switches it to WAL;
        that is retried a few times.
        """
        sqlite_retries = 5 if self.engine.dialect.name == "sqlite" else 1
        for attempt in range(1, sqlite_retries + 1):
            try:
                with self.engine.begin() as conn:
                    self._create_tables(conn)
                return
            except OperationalError as err:
                if attempt < sqlite_retries and "locked" in str(err.orig):
                    time.sleep(0.05 * 2**attempt)
                    continue
                raise self._open_error(err) from None
            except SQLAlchemyError as err:
                raise self._open_error(err) from None

    @staticmethod
    def _create_tables(conn: Connection) -> None:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # waits (busy timeout) for the write lock
        else:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
        for table in Base.metadata.sorted_tables:
            conn.execute(CreateTable(table, if_not_exists=True))
            for index in sorted(table.indexes, key=lambda i: str(i.name)):
                conn.execute(CreateIndex(index, if_not_exists=True))
        conn.execute(_insert(conn, MetaRow).values(key="schema", value=SCHEMA_VERSION)
                     .on_conflict_do_nothing(index_elements=["key"]))

    def _open_error(self, err: SQLAlchemyError) -> StoreError:
        return StoreError(f"cannot open the image database {redact(self.engine.url)!r}: {_describe(err)}",
                          hint="check databaseUrl, that the database server runs, and the image store's "
                               "permissions")

    @contextmanager
    def _session(self) -> Iterator[Session]:
        try:
            with self._sessions.begin() as session:
                yield session
        except SQLAlchemyError as err:
            raise StoreError(f"image database error: {_describe(err)}",
                             hint="retry; if it persists check databaseUrl and disk space") from None

    # --- images ------------------------------------------------------------------------
    def get(self, image_id: str) -> ImageRecord | None:
        with self._session() as session:
            row = session.get(ImageRow, image_id)
            return self._record(session, row) if row else None

    def set_status(self, image_id: str, status: Status, message: str, **fields: Any) -> ImageRecord:
        """Create or update an image row with a new status (and any other columns in ``fields``).

        One upsert: a concurrent first write of the same id cannot fail it.
        """
        columns = ImageRow.__table__.c
        unknown = sorted(set(fields) - set(columns.keys()))
        if unknown:
            raise TypeError(f"set_status() got unknown image columns: {', '.join(unknown)}")
        changes = {"status": status.value, "status_message": message, "updated_at": _now(), **fields}
        with self._session() as session:
            values = {"id": image_id, "digest": f"sha256:{image_id}", "acl": dict(_NEW_ACL), **changes}
            stmt = _insert(session, ImageRow).values(values)
            session.execute(stmt.on_conflict_do_update(index_elements=["id"],
                                                       set_={columns[k]: v for k, v in changes.items()}))
            row = session.get(ImageRow, image_id)
            assert row is not None  # written above, in this transaction
            return self._record(session, row)

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

        ``top_digest`` is what the tag resolved to in the registry (kept when None).  The tag
        row is locked while it is read and changed, so of two concurrent callers each sees
        what the other left.
        """
        with self._session() as session:
            for _ in range(3):  # the row may vanish (remove_tag) between the two statements
                stmt = _insert(session, TagRow).values(type=image_type, ref=ref, image_id=image_id, owner=owner,
                                                       top_digest=top_digest, updated_at=_now())
                stmt = stmt.on_conflict_do_nothing(index_elements=["type", "ref"]).returning(TagRow.ref)
                if session.execute(stmt).first() is not None:
                    return None
                row = session.get(TagRow, (image_type, ref), with_for_update=True)
                if row is not None:
                    return self._retag(row, image_id, owner, top_digest)
        raise StoreError(f"tag {image_type}:{ref} keeps changing under this update", hint="retry")

    @staticmethod
    def _retag(row: TagRow, image_id: str, owner: str, top_digest: str | None) -> str:
        previous = row.image_id
        row.image_id, row.updated_at = image_id, _now()
        if top_digest is not None or previous != image_id:
            row.top_digest = top_digest
        if previous != image_id:
            row.owner = owner
        return previous

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


__all__ = ["BACKENDS", "ImageRepository", "database_url", "make_engine", "redact"]
