"""Manifests, indexes and image configs: parsed from bytes, validated, as frozen dataclasses.

Every parser takes the exact bytes a registry served and raises :class:`ManifestError`
with a hint on anything malformed: wrong JSON types, missing fields, bad digests,
negative sizes, unknown layer types, or Docker's retired schema 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shifter._fastjson import loads as _json_loads
from shifter.errors import ManifestError, PlatformMismatchError
from shifter.oci import mediatypes as mt
from shifter.oci.digest import Digest
from shifter.oci.platform import Platform, best_match

_HINT = "the registry served a malformed manifest; check the image (or the mirror) and push it again"


def _fail(what: str, why: str, hint: str = _HINT) -> ManifestError:
    return ManifestError(f"{what}: {why}", hint=hint)


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = _json_loads(data)
    except (UnicodeDecodeError, ValueError) as err:
        raise _fail(what, f"not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise _fail(what, f"expected a JSON object, got {type(value).__name__}")
    return value


def _get(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str,
         default: Any = ...) -> Any:
    """``obj[key]`` checked to be of ``kind`` (``bool`` never passes for ``int``)."""
    if key not in obj or obj[key] is None:
        if default is ...:
            raise _fail(what, f"missing field {key!r}")
        return default
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise _fail(what, f"field {key!r} must be {names}, got {type(value).__name__}")
    return value


def _string_map(obj: Mapping[str, Any], key: str, what: str) -> dict[str, str]:
    value = _get(obj, key, dict, what, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _fail(what, f"field {key!r} must map strings to strings")
    return dict(value)


def _string_list(obj: Mapping[str, Any], key: str, what: str, default: Any = ()) -> tuple[str, ...] | None:
    value = _get(obj, key, list, what, default)
    if value is None:
        return None
    if not all(isinstance(item, str) for item in value):
        raise _fail(what, f"field {key!r} must be a list of strings")
    return tuple(value)


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor: what a manifest says about a blob or a child manifest."""

    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def parsed_digest(self) -> Digest:
        return Digest.parse(self.digest)

    @classmethod
    def from_json(cls, obj: object, what: str) -> Descriptor:
        """Validate one descriptor object."""
        if not isinstance(obj, dict):
            raise _fail(what, f"expected a descriptor object, got {type(obj).__name__}")
        media_type = _get(obj, "mediaType", str, what, "")
        digest = _get(obj, "digest", str, what)
        Digest.parse(digest, what=f"{what} digest")
        size = _get(obj, "size", int, what)
        if size < 0:
            raise _fail(what, f"negative size {size}")
        urls = _string_list(obj, "urls", what) or ()
        platform = None
        if obj.get("platform") is not None:
            raw = _get(obj, "platform", dict, what)
            _get(raw, "os", str, f"{what} platform")
            _get(raw, "architecture", str, f"{what} platform")
            _get(raw, "variant", str, f"{what} platform", "")
            platform = Platform.from_json(raw)
        return cls(media_type, digest, size, urls, platform, _string_map(obj, "annotations", what))


@dataclass(frozen=True)
class ImageManifest:
    """A Docker schema 2 or OCI image manifest."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class ImageIndex:
    """A Docker manifest list or OCI image index."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def platforms(self) -> list[Platform]:
        """The platforms the index offers (entries without one are left out)."""
        return [d.platform for d in self.manifests if d.platform is not None]

    def select(self, want: Platform) -> Descriptor:
        """The best entry for ``want``; raise :class:`PlatformMismatchError` listing the offer."""
        entries = [d for d in self.manifests if d.platform is not None]
        index = best_match(want, [d.platform for d in entries if d.platform is not None])
        if index is not None:
            return entries[index]
        if not entries and len(self.manifests) == 1:
            return self.manifests[0]  # a one-entry index that does not say: take it
        offered = sorted({str(p) for p in self.platforms() if p.os != "unknown"})
        raise PlatformMismatchError(
            f"the image has no manifest for platform {want}; it offers: {', '.join(offered) or 'none'}",
            hint="pick an image built for this platform, or set 'platform' in the site configuration")


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image config Shifter uses; ``raw`` keeps the whole object."""

    os: str
    architecture: str
    variant: str
    env: tuple[str, ...]
    entrypoint: tuple[str, ...] | None
    cmd: tuple[str, ...] | None
    workdir: str
    user: str
    labels: dict[str, str]
    created: str
    diff_ids: tuple[str, ...]
    raw: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant)


def detect_media_type(obj: Mapping[str, Any], content_type: str = "") -> str:
    """The manifest's media type: its ``mediaType`` field, the HTTP Content-Type, or its shape."""
    declared = obj.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    content_type = content_type.split(";", maxsplit=1)[0].strip()
    if content_type in mt.MANIFEST_TYPES | mt.INDEX_TYPES | mt.SCHEMA1_TYPES:
        return content_type
    if obj.get("schemaVersion") == 1:
        return mt.DOCKER_SCHEMA1
    if "manifests" in obj:
        return mt.OCI_INDEX
    if "config" in obj or "layers" in obj:
        return mt.OCI_MANIFEST
    return content_type


def _check_schema(obj: Mapping[str, Any], media_type: str, what: str) -> None:
    if media_type in mt.SCHEMA1_TYPES or obj.get("schemaVersion") == 1:
        raise ManifestError(f"{what}: Docker schema 1 manifests are not supported",
                            hint="push the image again with a current Docker/skopeo (schema 2 or OCI)")
    version = _get(obj, "schemaVersion", int, what)
    if version != 2:
        raise _fail(what, f"unsupported schemaVersion {version}")


def _parse_manifest_obj(obj: Mapping[str, Any], media_type: str, what: str) -> ImageManifest:
    config = Descriptor.from_json(_get(obj, "config", dict, what), f"{what} config")
    config_type = config.media_type or mt.OCI_CONFIG
    if config_type not in mt.CONFIG_TYPES:
        raise ManifestError(f"{what}: config media type {config_type!r} is not a container image config",
                            hint="this artifact is not a container image")
    layers = []
    for number, raw in enumerate(_get(obj, "layers", list, what)):
        layer = Descriptor.from_json(raw, f"{what} layer {number}")
        if mt.layer_compression(layer.media_type) is None:
            raise ManifestError(f"{what}: layer {number} has unsupported media type {layer.media_type!r}",
                                hint="supported layers are tar, tar+gzip and tar+zstd")
        layers.append(layer)
    return ImageManifest(media_type, config, tuple(layers), _string_map(obj, "annotations", what))


def _parse_index_obj(obj: Mapping[str, Any], media_type: str, what: str) -> ImageIndex:
    entries = tuple(Descriptor.from_json(raw, f"{what} entry {number}")
                    for number, raw in enumerate(_get(obj, "manifests", list, what)))
    return ImageIndex(media_type, entries, _string_map(obj, "annotations", what))


def parse_manifest(data: bytes, content_type: str = "", what: str = "manifest") -> ImageManifest | ImageIndex:
    """Parse a manifest or an index from the exact bytes served (Content-Type as a fallback)."""
    obj = _load_json(data, what)
    media_type = detect_media_type(obj, content_type)
    _check_schema(obj, media_type, what)
    if media_type in mt.INDEX_TYPES:
        return _parse_index_obj(obj, media_type, what)
    if media_type in mt.MANIFEST_TYPES:
        return _parse_manifest_obj(obj, media_type, what)
    raise ManifestError(f"{what}: unsupported media type {media_type!r}",
                        hint="Shifter pulls Docker schema 2 and OCI images and indexes")


def _optional_list(obj: Mapping[str, Any], key: str, what: str) -> tuple[str, ...] | None:
    return _string_list(obj, key, what, None)


def parse_config(data: bytes, what: str = "image config") -> ImageConfig:
    """Parse an image config blob (Docker ``container.image.v1`` / OCI ``image.config.v1``)."""
    obj = _load_json(data, what)
    container = _get(obj, "config", dict, what, {})
    rootfs = _get(obj, "rootfs", dict, what, {})
    diff_ids = _string_list(rootfs, "diff_ids", f"{what} rootfs") or ()
    for diff_id in diff_ids:
        Digest.parse(diff_id, what=f"{what} diff_id")
    labels = _string_map(container, "Labels", f"{what} config")
    return ImageConfig(
        os=_get(obj, "os", str, what, ""), architecture=_get(obj, "architecture", str, what, ""),
        variant=_get(obj, "variant", str, what, ""),
        env=_string_list(container, "Env", f"{what} config") or (),
        entrypoint=_optional_list(container, "Entrypoint", f"{what} config"),
        cmd=_optional_list(container, "Cmd", f"{what} config"),
        workdir=_get(container, "WorkingDir", str, f"{what} config", ""),
        user=_get(container, "User", str, f"{what} config", ""), labels=labels,
        created=_get(obj, "created", str, what, ""), diff_ids=diff_ids, raw=dict(obj))


__all__ = ["Descriptor", "ImageConfig", "ImageIndex", "ImageManifest", "detect_media_type", "parse_config",
           "parse_manifest"]
