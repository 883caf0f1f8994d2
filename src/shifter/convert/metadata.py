"""The image metadata JSON (``<id>.json``, schema 1, see ``docs/internals.md``).

Built from the OCI image config (``config.Env``, ``Entrypoint``, ``Cmd``, ...) and the
manifest's layer descriptors.  Pure: no I/O.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = 1


@dataclass(frozen=True)
class LayerBlob:
    """One layer: its descriptor and, once fetched, where the blob lies in the cache."""

    digest: str
    size: int
    media_type: str = ""
    path: Path | None = None


@dataclass(frozen=True)
class ImageContent:
    """Everything the conversion needs, whatever the source (registry pull or archive import).

    ``digest`` is the manifest digest (``sha256:<hex>``); its hex is the image id.
    ``config`` is the parsed OCI image config JSON.
    """

    digest: str
    config: Mapping[str, Any]
    config_digest: str
    layers: Sequence[LayerBlob]
    platform: Mapping[str, str] = field(default_factory=dict)

    @property
    def image_id(self) -> str:
        return self.digest.split(":", 1)[1]

    @property
    def compressed_size(self) -> int:
        return sum(layer.size for layer in self.layers)


def utc_now() -> str:
    """Now as ``2026-01-02T03:04:05Z``."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _str_list(value: object) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value]
    return None


def _platform(content: ImageContent) -> dict[str, str]:
    cfg = content.config
    plat = dict(content.platform)
    return {"os": str(plat.get("os") or cfg.get("os") or "linux"),
            "architecture": str(plat.get("architecture") or cfg.get("architecture") or ""),
            "variant": str(plat.get("variant") or cfg.get("variant") or "")}


def runtime_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The run-relevant part of an OCI image config (``config.config``), normalised."""
    inner = config.get("config") or {}
    if not isinstance(inner, Mapping):
        inner = {}
    labels = inner.get("Labels") or {}
    return {
        "env": _str_list(inner.get("Env")) or [],
        "entrypoint": _str_list(inner.get("Entrypoint")),
        "cmd": _str_list(inner.get("Cmd")),
        "workdir": str(inner.get("WorkingDir") or ""),
        "user": str(inner.get("User") or ""),
        "labels": {str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {},
    }


def build_metadata(content: ImageContent, *, image_type: str, source: str, squashfs_size: int,
                   compression: str, pulled_at: str | None = None,
                   acl: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The metadata JSON of a READY image."""
    image_id = content.image_id
    meta: dict[str, Any] = {
        "schema": SCHEMA,
        "status": "READY",
        "id": image_id,
        "digest": content.digest,
        "type": image_type,
        "source": source,
        "config_digest": content.config_digest,
    }
    meta.update(runtime_config(content.config))
    meta.update({
        "platform": _platform(content),
        "layers": [{"digest": layer.digest, "size": layer.size, "media_type": layer.media_type}
                   for layer in content.layers],
        "size": squashfs_size,
        "compressed_size": content.compressed_size,
        "squashfs": f"{image_id}.squashfs",
        "compression": compression,
        "created": str(content.config.get("created") or ""),
        "pulled_at": pulled_at or utc_now(),
        "acl": dict(acl) if acl else {"private": False, "users": [], "groups": []},
    })
    return meta


__all__ = ["SCHEMA", "ImageContent", "LayerBlob", "build_metadata", "runtime_config", "utc_now"]
