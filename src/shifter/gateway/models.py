"""Database tables of the gateway (SQLAlchemy 2.0 ORM), and the plain records handed out.

Only :mod:`shifter.gateway.repository` touches these classes; the service layer sees
the frozen :class:`ImageRecord` / :class:`TagRecord` values.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Status(enum.StrEnum):
    """Life cycle of an image: PENDING -> PULLING -> CONVERTING -> READY, or FAILED."""

    PENDING = "PENDING"
    PULLING = "PULLING"
    CONVERTING = "CONVERTING"
    READY = "READY"
    FAILED = "FAILED"

    @property
    def busy(self) -> bool:
        return self in (Status.PENDING, Status.PULLING, Status.CONVERTING)


class Base(DeclarativeBase):
    pass


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class ImageRow(Base):
    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # hex of the manifest digest
    digest: Mapped[str] = mapped_column(String(80))
    type: Mapped[str] = mapped_column(String(32), default="docker")
    source: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default=Status.PENDING.value)
    status_message: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str] = mapped_column(String(255), default="")
    worker: Mapped[str] = mapped_column(String(255), default="")  # host:pid doing the work
    compressed_size: Mapped[int] = mapped_column(BigInteger, default=0)
    size: Mapped[int] = mapped_column(BigInteger, default=0)  # squashfs bytes
    created: Mapped[str] = mapped_column(String(64), default="")  # image creation (from its config)
    pulled_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_now)
    acl: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class TagRow(Base):
    __tablename__ = "tags"

    type: Mapped[str] = mapped_column(String(32), primary_key=True)
    ref: Mapped[str] = mapped_column(String(1024), primary_key=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), index=True)
    owner: Mapped[str] = mapped_column(String(255), default="")
    # What the tag pointed at in the registry (an index digest for multi-platform images):
    # a HEAD request that returns the same digest proves the tag is unchanged.
    top_digest: Mapped[str | None] = mapped_column(String(80), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_now)


class MetaRow(Base):
    """Key/value facts about the database itself (schema version)."""

    __tablename__ = "shifter_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


@dataclass(frozen=True)
class TagRecord:
    type: str
    ref: str
    image_id: str
    owner: str = ""
    top_digest: str | None = None


@dataclass(frozen=True)
class ImageRecord:
    """An image as the service layer sees it."""

    id: str
    digest: str
    type: str
    status: Status
    status_message: str = ""
    source: str = ""
    owner: str = ""
    worker: str = ""
    compressed_size: int = 0
    size: int = 0
    created: str = ""
    pulled_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    acl: dict[str, Any] = field(default_factory=dict)
    tags: tuple[TagRecord, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (timestamps as ISO 8601 UTC)."""
        return {
            "id": self.id, "digest": self.digest, "type": self.type, "status": self.status.value,
            "status_message": self.status_message, "source": self.source, "owner": self.owner,
            "compressed_size": self.compressed_size, "size": self.size, "created": self.created,
            "pulled_at": _iso(self.pulled_at), "updated_at": _iso(self.updated_at), "acl": self.acl,
            "tags": [f"{t.type}:{t.ref}" for t in self.tags],
        }


def _iso(when: dt.datetime | None) -> str | None:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ") if when else None


__all__ = ["Base", "ImageRecord", "ImageRow", "MetaRow", "Status", "TagRecord", "TagRow"]
