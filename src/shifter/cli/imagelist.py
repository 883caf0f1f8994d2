"""The ``shifterimg images`` table (NERSC's layout); light: the fast ``images`` uses it too."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any


def _local_time(value: object) -> str:
    """``2026-01-02T03:04:05Z`` (UTC) -> local ``2026-01-02T04:04:05``; ``-`` when unknown."""
    if not value:
        return "-"
    text = str(value)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone().strftime("%Y-%m-%dT%H:%M:%S")


def familiar_name(ref: str) -> str:
    """``docker.io/library/ubuntu:22.04`` -> ``ubuntu:22.04``; other registries stay in full."""
    if ref.startswith("docker.io/library/"):
        return ref[len("docker.io/library/"):]
    if ref.startswith("docker.io/"):
        return ref[len("docker.io/"):]
    return ref


def _tag_column(row: dict[str, Any]) -> str:
    """The tag; ``<none> (from SOURCE)`` for an untagged image; `` [private]`` after a private one."""
    if row.get("tag"):
        text = familiar_name(str(row["tag"]))
    elif row.get("source"):
        text = f"<none> (from {familiar_name(str(row['source']))})"
    else:
        text = "<none>"
    acl = row.get("acl")
    if isinstance(acl, dict) and acl.get("private"):
        text += " [private]"
    return text


def _store_note(row: dict[str, Any]) -> str:
    """`` [user]``, `` [site]``, or `` [user tag -> site image]`` (a pull the site store already had)."""
    store, holder = str(row.get("store") or ""), str(row.get("image_store") or row.get("store") or "")
    if store == holder:
        return f" [{store}]" if store else ""
    return f" [{store} tag -> {holder} image]"


def format_image_rows(rows: Sequence[dict[str, Any]]) -> list[str]:
    """NERSC's layout: ``%-10s %-10s %-8s %-.10s   %s %s`` (system, type, status, id, pulled, tag).

    Untagged images (a moved tag's old image, a failed pull) sort last as ``<none> (from SOURCE)``.
    The status column widens for ``CONVERTING``.  When a per-user store is listed, each line ends
    with the store it comes from (``[user]``, ``[site]``).
    """
    width = max([8, *(len(str(row.get("status") or "")) for row in rows)])
    several = any(row.get("store") == "user" for row in rows)
    lines = []
    for row in sorted(rows, key=lambda r: (not r.get("tag"), familiar_name(str(r.get("tag") or "")),
                                           str(r.get("id")))):
        tag = _tag_column(row) + (_store_note(row) if several else "")
        system, kind, status = (str(row.get(k) or "") for k in ("system", "type", "status"))
        lines.append(f"{system:<10} {kind:<10} {status:<{width}} {str(row.get('id', ''))[:10]:<10}   "
                     f"{_local_time(row.get('pulled_at'))} {tag}")
    return lines


__all__ = ["familiar_name", "format_image_rows"]
