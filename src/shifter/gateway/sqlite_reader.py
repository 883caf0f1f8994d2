"""Read the gateway's SQLite database without SQLAlchemy: ``shifterimg images`` in milliseconds.

Importing SQLAlchemy costs ~0.2 s, more than everything else ``images`` does.  Listing needs
only :meth:`ImageRepository.list_images`, so this module reads the same two tables with the
standard library's ``sqlite3``, read-only, and builds the same :class:`ImageRecord` values
(``tests/unit/test_gateway_sqlite_reader.py`` holds it to the repository's answer).  It reads
only what :mod:`shifter.gateway.models` writes: timestamps as SQLAlchemy's SQLite ``DateTime``
text (naive UTC), the ACL as JSON text.  Anything else (a schema it does not know, a locked or
damaged file) raises :class:`ReaderError` and the caller takes the full path.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import urllib.parse

from shifter.gateway.records import ImageRecord, Status, TagRecord

_IMAGES = ("SELECT id, digest, type, source, status, status_message, owner, worker, compressed_size, size, "
           "created, pulled_at, updated_at, acl FROM images ORDER BY updated_at DESC")
_TAGS = "SELECT type, ref, image_id, owner, top_digest FROM tags ORDER BY type, ref"


class ReaderError(Exception):
    """The database could not be read this way; use the repository instead."""


def sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite:///<absolute path>`` URL (``sqlite:////var/...``); None for any other."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or "?" in url:
        return None
    path = urllib.parse.unquote(url[len(prefix):])
    return path if path.startswith("/") else None


def list_images(path: str) -> list[ImageRecord]:
    """Every image record with its tags, newest first (as ``ImageRepository.list_images``)."""
    uri = f"file:{urllib.parse.quote(path)}?mode=ro"
    try:
        with sqlite3.connect(uri, uri=True, timeout=5.0) as connection:
            tags: dict[str, list[TagRecord]] = {}
            for t_type, ref, image_id, owner, top in connection.execute(_TAGS):
                tags.setdefault(image_id, []).append(TagRecord(t_type, ref, image_id, owner or "", top))
            return [_record(row, tags.get(row[0], ())) for row in connection.execute(_IMAGES)]
    except (sqlite3.Error, ValueError, TypeError) as err:
        raise ReaderError(str(err)) from None


def _record(row: tuple[object, ...], tags: object) -> ImageRecord:
    (image_id, digest, image_type, source, status, message, owner, worker, compressed, size, created,
     pulled_at, updated_at, acl) = row
    return ImageRecord(
        id=str(image_id), digest=str(digest), type=str(image_type), status=Status(str(status)),
        status_message=str(message or ""), source=str(source or ""), owner=str(owner or ""),
        worker=str(worker or ""), compressed_size=int(compressed or 0), size=int(size or 0),  # type: ignore[call-overload]
        created=str(created or ""), pulled_at=_when(pulled_at), updated_at=_when(updated_at),
        acl=_acl(acl), tags=tuple(tags))  # type: ignore[arg-type]


def _when(value: object) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ReaderError(f"unexpected timestamp {value!r}")
    return dt.datetime.fromisoformat(value)


def _acl(value: object) -> dict[str, object]:
    if value is None:
        return {}
    data = json.loads(str(value))
    if not isinstance(data, dict):
        raise ReaderError("unexpected acl")
    return data


__all__ = ["ReaderError", "list_images", "sqlite_path"]
