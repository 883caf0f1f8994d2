"""NERSC Shifter's wire formats: the image record of its REST API and the ``<id>.meta`` file.

The record (``create_response`` in NERSC's ``imagemngr``) has exactly these keys, ``"MISSING"``
(a string) where a value is absent, and ``last_pull`` a JSON float (NERSC's C client reads it as a
double; an integer shows as 1970).  Our states map onto NERSC's: CONVERTING is CONVERSION and
FAILED is FAILURE, because NERSC's client stops polling on any status it does not know.

The ``.meta`` file lets NERSC's own runtime use this gateway's store during a migration
(``<imagePath>/<id>.meta`` next to ``<id>.squashfs``).
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shifter.store import publish

MISSING = "MISSING"
STATUS = {"PENDING": "PENDING", "PULLING": "PULLING", "CONVERTING": "CONVERSION", "READY": "READY",
          "FAILED": "FAILURE"}
BUSY = ("MISSING", "INIT", "PENDING", "PULLING", "EXAMINATION", "CONVERSION", "TRANSFER")
RECORD_KEYS = ("id", "system", "itype", "tag", "status", "userACL", "groupACL", "ENV", "ENTRY", "WORKDIR",
               "LABELS", "last_pull", "status_message")


def nersc_status(status: str) -> str:
    return STATUS.get(status, status)


def epoch(value: object) -> float | None:
    """A timestamp (datetime, or ISO 8601 UTC text) as float epoch seconds."""
    if isinstance(value, dt.datetime):
        return float(calendar.timegm(value.utctimetuple()))
    if isinstance(value, str) and value:
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return float(calendar.timegm(parsed.utctimetuple()))
    return None


def familiar(ref: str) -> str:
    """``docker.io/library/alpine:latest`` -> ``alpine:latest`` (as NERSC's gateway names Hub images)."""
    for prefix in ("docker.io/library/", "docker.io/"):
        if ref.startswith(prefix):
            return ref[len(prefix):]
    return ref


def record(*, system: str, itype: str, tags: list[str], status: str, image_id: str | None = None,
           metadata: Mapping[str, Any] | None = None, last_pull: float | None = None,
           message: str = "") -> dict[str, Any]:
    """One NERSC image record.  ``metadata``: our ``<id>.json`` (for a READY image)."""
    meta = metadata or {}
    acl = meta.get("acl") if isinstance(meta.get("acl"), Mapping) else None
    entry = meta.get("entrypoint")
    out: dict[str, Any] = {
        "id": image_id or MISSING, "system": system, "itype": itype, "tag": [familiar(t) for t in tags],
        "status": nersc_status(status),
        "userACL": list(acl.get("users", [])) if acl and acl.get("private") else MISSING,
        "groupACL": list(acl.get("groups", [])) if acl and acl.get("private") else MISSING,
        "ENV": list(meta["env"]) if meta.get("env") else MISSING,
        "ENTRY": " ".join(entry) if isinstance(entry, list) and entry else MISSING,
        "WORKDIR": str(meta["workdir"]) if meta.get("workdir") else MISSING,
        "LABELS": dict(meta["labels"]) if isinstance(meta.get("labels"), Mapping) else MISSING,
        "last_pull": float(last_pull) if last_pull is not None else (epoch(meta.get("pulled_at")) or MISSING),
        "status_message": message or MISSING,
    }
    return out


def meta_text(metadata: Mapping[str, Any]) -> str:
    """``<id>.meta`` as NERSC's ``converters.writemeta`` writes it."""
    lines = ["FORMAT: squashfs"]
    entry, cmd = metadata.get("entrypoint"), metadata.get("cmd")
    if isinstance(entry, list) and entry:
        lines.append(f"ENTRY: {' '.join(entry)}")
    if isinstance(cmd, list) and cmd:
        lines.append(f"CMD: {' '.join(cmd)}")
    if metadata.get("workdir"):
        lines.append(f"WORKDIR: {metadata['workdir']}")
    acl = metadata.get("acl")
    if isinstance(acl, Mapping) and acl.get("private"):
        # A private image with nobody listed must stay private for NERSC's runtime too: root only (uid 0).
        users = [str(u) for u in acl.get("users", [])] or ["0"]
        lines.append(f"USERACL: {','.join(users)}")
        if acl.get("groups"):
            lines.append(f"GROUPACL: {','.join(str(g) for g in acl['groups'])}")
    env = metadata.get("env")
    lines += [f"ENV: {item}" for item in env if "\n" not in item] if isinstance(env, list) else []
    if metadata.get("user"):
        lines.append(f"USER: {metadata['user']}")
    return "\n".join(line for line in lines if "\n" not in line.rstrip("\n")) + "\n"


def meta_path(image_path: Path, image_id: str) -> Path:
    return image_path / f"{image_id}.meta"


def write_meta(image_path: Path, image_id: str, metadata: Mapping[str, Any]) -> Path:
    """Write ``<image_path>/<id>.meta`` atomically (temp + rename), with the image's modes and ACL."""
    path = meta_path(image_path, image_id)
    acl = metadata.get("acl")
    publish.atomic_write_bytes(path, meta_text(metadata).encode(),
                               image_acl=dict(acl) if isinstance(acl, Mapping) else {"private": True})
    return path


__all__ = ["BUSY", "MISSING", "RECORD_KEYS", "epoch", "familiar", "meta_text", "nersc_status", "record", "write_meta"]
