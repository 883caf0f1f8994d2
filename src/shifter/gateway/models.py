"""Database tables of the gateway (SQLAlchemy 2.0 ORM).

Only :mod:`shifter.gateway.repository` touches these classes; the service layer sees the frozen
:class:`ImageRecord` / :class:`TagRecord` values of :mod:`shifter.gateway.records` (re-exported
here).

The same tables serve SQLite and PostgreSQL.  PostgreSQL enforces ``String(n)`` lengths
(SQLite does not), so every length fits the largest value the code accepts (sha512 ids and
digests), and values taken from an image (``created``) are ``Text``.  Timestamps are naive
UTC in both (:class:`UtcDateTime`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Dialect, ForeignKey, String, Text, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shifter.gateway.records import ImageRecord, Status, TagRecord

ID_LENGTH = 128  # hex of a sha512 digest (sha256: 64)
DIGEST_LENGTH = 160  # "sha512:" + 128 hex, with room to spare


class Base(DeclarativeBase):
    pass


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored as naive UTC (``timestamp without time zone``) in every backend.

    An aware value is converted to UTC first; a naive one is taken to be UTC already.  So
    neither the server's ``TimeZone`` setting nor the driver's time-zone handling can shift
    a value between SQLite and PostgreSQL.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is not None and value.tzinfo is not None:
            return value.astimezone(dt.UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is not None and value.tzinfo is not None:
            return value.astimezone(dt.UTC).replace(tzinfo=None)
        return value


class ImageRow(Base):
    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)  # hex of the manifest digest
    digest: Mapped[str] = mapped_column(String(DIGEST_LENGTH))
    type: Mapped[str] = mapped_column(String(32), default="docker")
    source: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default=Status.PENDING.value)
    status_message: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str] = mapped_column(String(255), default="")
    worker: Mapped[str] = mapped_column(String(255), default="")  # host:pid doing the work
    compressed_size: Mapped[int] = mapped_column(BigInteger, default=0)
    size: Mapped[int] = mapped_column(BigInteger, default=0)  # squashfs bytes
    created: Mapped[str] = mapped_column(Text, default="")  # image creation (from its config: any length)
    pulled_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=_now)
    acl: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class TagRow(Base):
    __tablename__ = "tags"

    type: Mapped[str] = mapped_column(String(32), primary_key=True)
    ref: Mapped[str] = mapped_column(String(1024), primary_key=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), index=True)
    owner: Mapped[str] = mapped_column(String(255), default="")
    # What the tag pointed at in the registry (an index digest for multi-platform images):
    # a HEAD request that returns the same digest proves the tag is unchanged.
    top_digest: Mapped[str | None] = mapped_column(String(DIGEST_LENGTH), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=_now)


class MetaRow(Base):
    """Key/value facts about the database itself (schema version)."""

    __tablename__ = "shifter_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


__all__ = ["Base", "ImageRecord", "ImageRow", "MetaRow", "Status", "TagRecord", "TagRow", "UtcDateTime"]
