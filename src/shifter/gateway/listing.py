"""Rows for ``shifterimg images``: from the database records, and from a store's files alone.

No SQLAlchemy here: the fast ``images`` (:mod:`shifter.cli.imgfast`) uses it too."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shifter.errors import AccessDeniedError
from shifter.gateway.acl import ImageAcl
from shifter.gateway.records import ImageRecord
from shifter.store.layout import ImageStore


def image_row(info: dict[str, Any], kind: str, system: str) -> dict[str, Any]:
    """One listing row from an image's metadata (or database record); ``tag`` still None."""
    return {"system": system, "store": kind, "type": info.get("type", "docker"),
            "status": info.get("status", "READY"), "id": info.get("id", ""),
            "pulled_at": info.get("pulled_at"), "tag": None, "size": info.get("size", 0),
            "owner": info.get("owner", ""), "status_message": info.get("status_message", ""),
            "source": info.get("source", ""), "acl": ImageAcl.from_json(info.get("acl")).to_json(),
            "image_store": kind}


def store_rows(store: ImageStore, kind: str, system: str, skip: set[str] | None = None,
               elsewhere: Sequence[ImageStore] = ()) -> list[dict[str, Any]]:
    """Rows for a store read through its files only (no database access): one per tag, and one
    (``tag`` None) per READY image no tag points at (e.g. the old image of a moved tag).
    Images in ``skip`` are left out.  A tag whose image is not in ``store`` but READY in one of
    ``elsewhere`` (a per-user tag pointing at a site image) is listed with that image, its row's
    ``image_store`` saying where the files are."""
    rows: list[dict[str, Any]] = []
    tagged: set[str] = set()
    for image_type, ref, image_id in store.tags():
        tagged.add(image_id)
        if image_id in (skip or ()):
            continue
        holder = store if store.is_ready(image_id) else next(
            (other for other in elsewhere if not store.image_files_exist(image_id) and other.is_ready(image_id)),
            None)
        if holder is None:
            continue
        meta = _metadata(holder, image_id)
        row = {**image_row(meta, kind, system), "tag": ref, "type": image_type}
        if holder is not store:
            row["image_store"] = "site"
        rows.append(row)
    for image_id in store.image_ids():
        if image_id not in tagged and image_id not in (skip or ()) and store.is_ready(image_id):
            rows.append(image_row(_metadata(store, image_id), kind, system))
    return rows


def primary_rows(records: Sequence[ImageRecord], store: ImageStore, kind: str, system: str,
                 elsewhere: Sequence[ImageStore] = ()) -> list[dict[str, Any]]:
    """The rows of a store the caller works in: one per tag (and per untagged image) of its database
    ``records``, then what its files show that the database does not know (a tag may point at an
    image of a store in ``elsewhere``: see :func:`store_rows`)."""
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for record in records:
        base = image_row(record.to_json(), kind, system)
        for tag in record.tags:
            rows.append({**base, "tag": tag.ref, "type": tag.type})
            seen.add((tag.type, tag.ref))
        if not record.tags:
            rows.append(base)
    known = {record.id for record in records}
    for row in store_rows(store, kind, system, elsewhere=elsewhere):  # what the DB does not know
        if (row["type"], row["tag"]) not in seen and (row["tag"] is not None or row["id"] not in known):
            rows.append(row)
    return rows


def _metadata(store: ImageStore, image_id: str) -> dict[str, Any]:
    """An image's metadata; a private image whose files this user may not read shows as private."""
    try:
        return dict(store.read_metadata(image_id))
    except AccessDeniedError:
        return {"id": image_id, "status": "READY", "acl": {"private": True}}
