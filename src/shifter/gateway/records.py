"""The plain records the gateway hands out (no SQLAlchemy: ``shifterimg lookup``/``images`` read
them without the ORM, :mod:`shifter.gateway.sqlite_reader`)."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any


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


__all__ = ["ImageRecord", "Status", "TagRecord"]
