"""Read an image from a tarball for ``shifterimg import``: ``docker save`` archives and OCI layouts.

Two formats are accepted, optionally gzip/bzip2/xz compressed:

* **docker-archive** (``docker save``, ``skopeo copy ... docker-archive:``): ``manifest.json`` lists
  ``{"Config": "<file>.json", "RepoTags": [...], "Layers": ["<file>.tar", ...]}``.  There is no
  registry manifest, so one is synthesised (an OCI image manifest, serialised deterministically):
  the same archive always yields the same image id.
* **OCI image layout** (``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``): the manifest is read
  as is, so the image id equals the registry's manifest digest for the same image.  An archive with
  both (Docker >= 25 writes both) is read as an OCI layout.

The tarball is treated as hostile.  Member names are only ever used as *keys* to look members up,
never as paths to write: blobs land in the content-addressed blob cache under their digest.
Names are normalised (``./`` stripped, ``..`` refused), duplicates are ambiguous and refused when
referenced, links are resolved inside the archive with a depth limit, metadata files are size
capped before parsing, and every blob is hashed while it is copied (digest and size of OCI blobs,
``rootfs.diff_ids`` of docker-archive layers).  Nothing is published until everything verified.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

import zstandard

from shifter.convert.metadata import ImageContent, LayerBlob
from shifter.errors import (
    ArchiveError,
    DigestMismatchError,
    DiskFullError,
    ManifestError,
    ShifterError,
    StoreError,
)
from shifter.oci import mediatypes as mt
from shifter.oci.digest import Digest
from shifter.oci.manifest import Descriptor, ImageIndex, ImageManifest, parse_config, parse_manifest
from shifter.oci.platform import Platform, host_platform
from shifter.oci.tarsafe import BoundedTarInfo
from shifter.registry.progress import NullProgress

MAX_METADATA_BYTES = 8 * 1024 * 1024  # manifest.json, index.json, manifests, configs
MAX_MEMBERS = 250_000
MAX_LINK_DEPTH = 16
MAX_NESTING = 4  # index -> index -> ... -> manifest
CHUNK = 1024 * 1024
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
_HINT = "check the file: it should come from 'docker save', 'skopeo copy ... docker-archive:' or " \
        "'skopeo copy ... oci-archive:' (or a tar of an OCI layout directory)"


# --------------------------------------------------------------------------- hooks
class ArchiveProgress(Protocol):
    """The part of the gateway's ``ProgressSink`` that the importer reports to."""

    def layer_start(self, digest: str, total: int) -> None: ...

    def layer_advance(self, digest: str, nbytes: int) -> None: ...

    def layer_done(self, digest: str) -> None: ...


class BlobSink(Protocol):
    """Where verified blobs go: ``shifter.store.blobcache.BlobCache`` implements this."""

    def get(self, digest: str) -> Path | None:
        """The path of a blob already in the cache (the copy is skipped), or None."""
        ...

    def commit(self, digest: str, partial: Path, size: int | None = None) -> Path:
        """Atomically move the verified file ``partial`` into the cache; return the blob's path."""
        ...


@dataclass(frozen=True)
class ArchiveLayer:
    """One layer blob, verified and in the blob cache."""

    digest: str
    size: int
    media_type: str
    path: Path


@dataclass(frozen=True)
class ArchiveImage:
    """What the importer hands to the gateway: everything a pull would have resolved and fetched."""

    format: str  # "docker-archive" | "oci-layout"
    manifest_digest: str
    manifest_bytes: bytes
    config_digest: str
    config_bytes: bytes
    config: dict[str, object]
    layers: tuple[ArchiveLayer, ...]
    platform: Platform
    names: tuple[str, ...] = ()  # the image names found in the archive (RepoTags / ref.name)

    @property
    def image_id(self) -> str:
        return self.manifest_digest.split(":", 1)[1]

    @property
    def layer_paths(self) -> list[Path]:
        return [layer.path for layer in self.layers]

    def to_content(self) -> ImageContent:
        """What the conversion consumes, exactly as for a registry pull."""
        plat = {"os": self.platform.os, "architecture": self.platform.architecture,
                "variant": self.platform.variant}
        return ImageContent(self.manifest_digest, self.config, self.config_digest,
                            [LayerBlob(x.digest, x.size, x.media_type, x.path) for x in self.layers], plat)


# --------------------------------------------------------------------------- member index
def normalize_member_name(name: str) -> str | None:
    """A member name as a clean relative key; None for names that try to leave the archive root."""
    if "\x00" in name:
        return None
    clean = posixpath.normpath("/" + name.replace("\\", "/")).lstrip("/")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts or clean in ("", "."):
        return None
    return clean


@dataclass
class _Index:
    """Members of the tarball by normalised name (duplicates remembered as ambiguous)."""

    members: dict[str, tarfile.TarInfo] = field(default_factory=dict)
    duplicates: set[str] = field(default_factory=set)

    def add(self, info: tarfile.TarInfo) -> None:
        key = normalize_member_name(info.name)
        if key is None or info.isdir():
            return
        if key in self.members:
            self.duplicates.add(key)
        self.members[key] = info

    def resolve(self, name: str, what: str) -> tarfile.TarInfo:
        """The regular-file member ``name`` refers to, following in-archive links."""
        key = normalize_member_name(name)
        if key is None:
            raise ArchiveError(f"archive refers to {name!r} for {what}, which is outside the archive",
                               hint="the archive is malformed or hostile; do not use it")
        for _ in range(MAX_LINK_DEPTH):
            if key in self.duplicates:
                raise ArchiveError(f"archive contains {key!r} ({what}) more than once",
                                   hint="the archive is ambiguous (possibly hostile); rebuild it")
            info = self.members.get(key)
            if info is None:
                raise ArchiveError(f"archive has no {key!r} ({what})", hint=_HINT)
            if info.isreg():
                return info
            if info.issym():
                target = posixpath.join(posixpath.dirname(key), info.linkname)
            elif info.islnk():
                target = info.linkname
            else:
                raise ArchiveError(f"{key!r} ({what}) in the archive is not a regular file", hint=_HINT)
            next_key = normalize_member_name(posixpath.normpath(target))
            if next_key is None or target.startswith("/"):
                raise ArchiveError(f"{key!r} ({what}) links outside the archive",
                                   hint="the archive is malformed or hostile; do not use it")
            key = next_key
        raise ArchiveError(f"too many links while resolving {name!r} ({what})",
                           hint="the archive is malformed or hostile; do not use it")


def _index_members(tar: tarfile.TarFile) -> _Index:
    index = _Index()
    for count, info in enumerate(tar, 1):
        if count > MAX_MEMBERS:
            raise ArchiveError(f"archive has more than {MAX_MEMBERS} members", hint=_HINT)
        index.add(info)
    return index


# --------------------------------------------------------------------------- reading members
def _read_small(tar: tarfile.TarFile, info: tarfile.TarInfo, what: str) -> bytes:
    if info.size > MAX_METADATA_BYTES:
        raise ArchiveError(f"{what} in the archive is {info.size} bytes, more than the "
                           f"{MAX_METADATA_BYTES} allowed for metadata", hint=_HINT)
    handle = tar.extractfile(info)
    if handle is None:
        raise ArchiveError(f"cannot read {what} from the archive", hint=_HINT)
    data = handle.read(MAX_METADATA_BYTES + 1)
    if len(data) != info.size:
        raise ArchiveError(f"{what} is truncated in the archive", hint=_HINT)
    return data


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _json(data: bytes, what: str) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as err:
        raise ArchiveError(f"{what} in the archive is not valid JSON: {err}", hint=_HINT) from None


def _obj(value: object, what: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise ArchiveError(f"{what} in the archive is not a JSON object", hint=_HINT)
    return value


class _Hasher:
    """sha256 of the bytes as stored and, optionally, of their decompressed form (diff_id)."""

    def __init__(self, diff: bool) -> None:
        self.stored = hashlib.sha256()
        self.diff = hashlib.sha256() if diff else None
        self.compression: str | None = None
        self._decomp: Callable[[bytes], bytes] | None = None
        self._zlib: zlib._Decompress | None = None

    def update(self, chunk: bytes) -> None:
        self.stored.update(chunk)
        if self.diff is None:
            return
        if self.compression is None:
            self._start(chunk)
        if self._decomp is None:
            self.diff.update(chunk)
        else:
            self.diff.update(self._decomp(chunk))

    def _start(self, head: bytes) -> None:
        if head.startswith(b"\x1f\x8b"):
            self.compression = "gzip"
            self._zlib = zlib.decompressobj(wbits=31)
            self._decomp = self._gunzip
        elif head.startswith(b"\x28\xb5\x2f\xfd"):
            self.compression = "zstd"
            self._decomp = zstandard.ZstdDecompressor().decompressobj().decompress
        else:
            self.compression = "none"

    def _gunzip(self, chunk: bytes) -> bytes:
        assert self._zlib is not None
        out = self._zlib.decompress(chunk)
        # concatenated gzip members: start a new decompressor on the rest
        while self._zlib.eof and self._zlib.unused_data:
            rest = self._zlib.unused_data
            self._zlib = zlib.decompressobj(wbits=31)
            out += self._zlib.decompress(rest)
        return out


def _copy_blob(tar: tarfile.TarFile, info: tarfile.TarInfo, tmp_dir: Path, hasher: _Hasher,
               progress: tuple[ArchiveProgress, str]) -> Path:
    """Copy one member to a temp file in ``tmp_dir`` while hashing it; return the temp path."""
    source = tar.extractfile(info)
    if source is None:
        raise ArchiveError(f"cannot read {info.name!r} from the archive", hint=_HINT)
    fd, name = tempfile.mkstemp(prefix="import-", suffix=".blob", dir=tmp_dir)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            copied = _pump(source, out, hasher, *progress)
        if copied != info.size:
            raise ArchiveError(f"{info.name!r} is truncated in the archive", hint=_HINT)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp


def _pump(source: IO[bytes], out: IO[bytes], hasher: _Hasher, progress: ArchiveProgress, label: str) -> int:
    copied = 0
    try:
        while chunk := source.read(CHUNK):
            hasher.update(chunk)
            out.write(chunk)
            copied += len(chunk)
            progress.layer_advance(label, len(chunk))
    except (tarfile.TarError, EOFError, zlib.error, zstandard.ZstdError) as err:
        raise ArchiveError(f"archive is corrupt or truncated: {err}", hint=_HINT) from None
    except OSError as err:
        if err.errno in (28, 122):  # ENOSPC, EDQUOT
            raise DiskFullError("no space left while importing the archive",
                                hint="free space in the image store or its blob cache") from None
        raise StoreError(f"failed while importing the archive: {err.strerror or err}",
                         hint="check permissions and free space of the image store") from None
    return copied


# --------------------------------------------------------------------------- the reader
class _Reader:
    """One import: the open tarball, its member index and where blobs go."""

    def __init__(self, tar: tarfile.TarFile, index: _Index, sink: BlobSink, tmp_dir: Path,
                 progress: ArchiveProgress, *, max_bytes: int = 0) -> None:
        self.tar = tar
        self.index = index
        self.sink = sink
        self.tmp_dir = tmp_dir
        self.progress = progress
        self.max_bytes = max_bytes  # all blobs together (site maxImageSize); 0: no limit
        self.blob_bytes = 0

    def admit(self, info: tarfile.TarInfo, what: str) -> None:
        """Count a blob's declared size before any of it is copied; refuse past ``max_bytes``."""
        if self.max_bytes and info.size > self.max_bytes - self.blob_bytes:
            raise ArchiveError(f"{what} is {info.size} bytes, which takes the image past {self.max_bytes} "
                               "bytes, the site's limit (maxImageSize)",
                               hint="the image is too large for this site; an admin can raise maxImageSize "
                                    "in udiRoot.conf (0: no limit)")
        self.blob_bytes += info.size

    def small(self, name: str, what: str) -> bytes:
        return _read_small(self.tar, self.index.resolve(name, what), what)

    def verified_blob(self, name: str, digest: str, size: int | None, what: str, label: str) -> Path:
        """Copy the member ``name`` into the cache, checking its sha256 (and size) on the way."""
        info = self.index.resolve(name, what)
        if size is not None and info.size != size:
            raise DigestMismatchError(f"{what} is {info.size} bytes in the archive, its descriptor "
                                      f"says {size}",
                                      hint="the archive is corrupt or was tampered with")
        self.admit(info, what)
        if (found := self.sink.get(digest)) is not None:
            self.progress.layer_advance(label, info.size)
            return found
        hasher = _Hasher(diff=False)
        tmp = _copy_blob(self.tar, info, self.tmp_dir, hasher, (self.progress, label))
        return self._adopt(tmp, digest, "sha256:" + hasher.stored.hexdigest(), what)

    def _adopt(self, tmp: Path, digest: str, actual: str, what: str) -> Path:
        if actual != digest:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise DigestMismatchError(f"{what} has digest {actual}, expected {digest}",
                                      hint="the archive is corrupt or was tampered with")
        try:
            return self.sink.commit(digest, tmp)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()


# --------------------------------------------------------------------------- OCI layout
def _blob_name(digest: str) -> str:
    parsed = Digest.parse(digest)
    if parsed.algorithm != "sha256":
        raise ManifestError(f"blob {digest} is not sha256; only sha256 blobs can be imported", hint=_HINT)
    return f"blobs/{parsed.algorithm}/{parsed.hex}"


def _oci_small_blob(reader: _Reader, desc: Descriptor, what: str) -> bytes:
    if desc.size > MAX_METADATA_BYTES:
        raise ArchiveError(f"{what} is {desc.size} bytes, more than {MAX_METADATA_BYTES} allowed", hint=_HINT)
    data = reader.small(_blob_name(desc.digest), what)
    if len(data) != desc.size:
        raise DigestMismatchError(f"{what} is {len(data)} bytes, its descriptor says {desc.size}",
                                  hint="the archive is corrupt or was tampered with")
    Digest.parse(desc.digest).verify(data, what)
    return data


def _ref_names(desc: Descriptor) -> list[str]:
    return [desc.annotations[k] for k in (CONTAINERD_NAME, REF_NAME) if k in desc.annotations]


def _matches(names: Sequence[str], want: Sequence[str]) -> bool:
    return any(n in want or n.rsplit(":", 1)[-1] in want for n in names)


def _choose(entries: Sequence[object], names: list[list[str]], want: Sequence[str],
            what: str) -> int:
    """Which image of the archive to import: the only one, or the one whose name matches ``want``."""
    if not entries:
        raise ArchiveError(f"{what} lists no images", hint=_HINT)
    if len(entries) == 1:
        return 0
    hits = [i for i, n in enumerate(names) if _matches(n, want)]
    if len(hits) == 1:
        return hits[0]
    found = sorted({n for group in names for n in group})
    offered = ", ".join(found) or "unnamed images"
    bare = next((n for n in found if ":" not in n and "/" not in n), None)
    # An OCI ref.name is usually a bare tag: it matches the target's tag, not its name.
    extra = f" (a bare name is a tag: e.g. docker:app:{bare})" if bare else ""
    raise ArchiveError(f"the archive holds {len(entries)} images and the target name does not pick one",
                       hint=f"name the target like one of: {offered}{extra}")


def _oci_manifest(reader: _Reader, desc: Descriptor, want_platform: Platform,
                  depth: int = 0) -> tuple[Descriptor, bytes, ImageManifest]:
    """Follow indexes down to one image manifest: (its descriptor, verified bytes, parsed)."""
    if depth > MAX_NESTING:
        raise ManifestError("image indexes are nested too deeply", hint=_HINT)
    what = f"manifest {desc.digest}"
    data = _oci_small_blob(reader, desc, what)
    parsed = parse_manifest(data, desc.media_type, what)
    if isinstance(parsed, ImageIndex):
        return _oci_manifest(reader, parsed.select(want_platform), want_platform, depth + 1)
    return desc, data, parsed


def _read_oci(reader: _Reader, want: Sequence[str], want_platform: Platform) -> ArchiveImage:
    layout = _obj(_json(reader.small("oci-layout", "oci-layout"), "oci-layout"), "oci-layout")
    if not str(layout.get("imageLayoutVersion", "")).startswith("1."):
        raise ArchiveError(f"unsupported OCI layout version {layout.get('imageLayoutVersion')!r}", hint=_HINT)
    index = parse_manifest(reader.small("index.json", "index.json"), mt.OCI_INDEX, "index.json")
    if not isinstance(index, ImageIndex):
        raise ArchiveError("index.json is not an image index", hint=_HINT)
    names = [_ref_names(d) for d in index.manifests]
    pick = _choose(index.manifests, names, want, "index.json")
    desc, manifest_bytes, manifest = _oci_manifest(reader, index.manifests[pick], want_platform)
    config_bytes = _oci_small_blob(reader, manifest.config, "image config")
    config = parse_config(config_bytes)
    layers = _oci_layers(reader, manifest)
    return ArchiveImage("oci-layout", desc.digest, manifest_bytes, manifest.config.digest, config_bytes,
                        config.raw, layers, config.platform, tuple(names[pick]))


def _oci_layers(reader: _Reader, manifest: ImageManifest) -> tuple[ArchiveLayer, ...]:
    layers = []
    for number, desc in enumerate(manifest.layers, 1):
        reader.progress.layer_start(desc.digest, desc.size)
        path = reader.verified_blob(_blob_name(desc.digest), desc.digest, desc.size,
                                    f"layer {number} ({desc.digest})", desc.digest)
        reader.progress.layer_done(desc.digest)
        layers.append(ArchiveLayer(desc.digest, desc.size, desc.media_type, path))
    return tuple(layers)


# --------------------------------------------------------------------------- docker-archive
_LAYER_TYPE = {"none": mt.OCI_LAYER_TAR, "gzip": mt.OCI_LAYER_GZIP, "zstd": mt.OCI_LAYER_ZSTD}


def _str_list(value: object, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ArchiveError(f"{what} in manifest.json is not a list of strings", hint=_HINT)
    return list(value)


def _read_docker(reader: _Reader, want: Sequence[str]) -> ArchiveImage:
    doc = _json(reader.small("manifest.json", "manifest.json"), "manifest.json")
    if not isinstance(doc, list):
        raise ArchiveError("manifest.json is not a list", hint=_HINT)
    entries = [_obj(e, "manifest.json entry") for e in doc]
    names = [_str_list(e.get("RepoTags"), "RepoTags") for e in entries]
    pick = _choose(entries, names, want, "manifest.json")
    entry = entries[pick]
    config_name = entry.get("Config")
    if not isinstance(config_name, str):
        raise ArchiveError("manifest.json entry has no Config", hint=_HINT)
    config_bytes = reader.small(config_name, "image config")
    config = parse_config(config_bytes)
    diff_ids = config.diff_ids
    layer_names = _str_list(entry.get("Layers"), "Layers")
    if len(layer_names) != len(diff_ids):
        raise ArchiveError(f"manifest.json lists {len(layer_names)} layers but the config has "
                           f"{len(diff_ids)} diff_ids", hint=_HINT)
    layers = tuple(_docker_layer(reader, name, diff_id, n)
                   for n, (name, diff_id) in enumerate(zip(layer_names, diff_ids, strict=True), 1))
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    manifest_bytes = synthesize_manifest(config_digest, len(config_bytes), layers)
    return ArchiveImage("docker-archive", "sha256:" + hashlib.sha256(manifest_bytes).hexdigest(),
                        manifest_bytes, config_digest, config_bytes, config.raw, layers,
                        config.platform, tuple(names[pick]))


def _docker_layer(reader: _Reader, name: str, diff_id: str, number: int) -> ArchiveLayer:
    """Copy one docker-archive layer into the cache, checking its uncompressed digest (diff_id)."""
    info = reader.index.resolve(name, f"layer {number}")
    label = f"layer {number}"
    reader.admit(info, f"layer {number} ({name})")
    reader.progress.layer_start(label, info.size)
    hasher = _Hasher(diff=True)
    tmp = _copy_blob(reader.tar, info, reader.tmp_dir, hasher, (reader.progress, label))
    assert hasher.diff is not None
    actual_diff = f"sha256:{hasher.diff.hexdigest()}"
    if actual_diff != diff_id:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise DigestMismatchError(f"layer {number} ({name}) has content {actual_diff}, "
                                  f"the config says {diff_id}",
                                  hint="the archive is corrupt or was tampered with")
    digest = "sha256:" + hasher.stored.hexdigest()
    path = reader._adopt(tmp, digest, digest, f"layer {number}")
    reader.progress.layer_done(label)
    return ArchiveLayer(digest, info.size, _LAYER_TYPE[hasher.compression or "none"], path)


def synthesize_manifest(config_digest: str, config_size: int, layers: Sequence[ArchiveLayer]) -> bytes:
    """The OCI image manifest of a docker-archive image (compact, key-sorted: reproducible ids)."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
                   for layer in layers],
    }
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode("utf-8")


# --------------------------------------------------------------------------- entry point
def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r:*", tarinfo=BoundedTarInfo)
    except FileNotFoundError:
        raise ArchiveError(f"{path} does not exist", hint="give the path of a tarball to import") from None
    except IsADirectoryError:
        raise ArchiveError(f"{path} is a directory",
                           hint="pack it first: tar -C DIR -cf image.tar . (an OCI layout)") from None
    except tarfile.ReadError:  # its message lists every decompressor tried, on several lines
        raise ArchiveError(f"{path} is not a readable tar archive (plain, gzip, bzip2 or xz)", hint=_HINT) from None
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise ArchiveError(f"{path} is not a readable tar archive: {_one_line(err)}", hint=_HINT) from None
    except OSError as err:
        raise ArchiveError(f"cannot read {path}: {err.strerror or err}",
                           hint="check that the file exists and is readable") from None


def read_archive(path: str | os.PathLike[str], sink: BlobSink, tmp_dir: str | os.PathLike[str], *,
                 names: Sequence[str] = (), platform: Platform | None = None,
                 progress: ArchiveProgress | None = None, max_bytes: int = 0) -> ArchiveImage:
    """Read the image in the tarball ``path``; its blobs are verified and handed to ``sink``.

    ``names`` (e.g. ``["app:1", "docker.io/library/app:1", "1"]``) pick one image when the archive
    holds several; ``platform`` picks an entry of a multi-platform OCI index (default: the host's).
    ``tmp_dir`` must be on the cache's filesystem (the store's ``.tmp``) so adopting is a rename.
    ``max_bytes`` (site ``maxImageSize``; 0: no limit) caps the blobs' sizes together, checked from
    each member's header before it is copied.
    Raises :class:`ArchiveError` (exit code 11), :class:`DigestMismatchError`, :class:`ManifestError`
    or :class:`DiskFullError`; on any error no blob of this archive is left behind in ``tmp_dir``.
    """
    progress = progress or NullProgress()
    want_platform = platform or host_platform()
    with _open_tar(Path(path)) as tar:
        try:
            index = _index_members(tar)
        except (tarfile.TarError, EOFError, zlib.error) as err:
            raise ArchiveError(f"{path} is not a readable tar archive: {_one_line(err)}", hint=_HINT) from None
        work = Path(tmp_dir)
        try:
            work.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create {work}: {err.strerror or err}",
                             hint="check permissions of the image store") from None
        reader = _Reader(tar, index, sink, work, progress, max_bytes=max_bytes)
        try:
            if "oci-layout" in index.members and "index.json" in index.members:
                return _read_oci(reader, names, want_platform)
            if "manifest.json" in index.members:
                return _read_docker(reader, names)
        except ShifterError:
            raise
        except (tarfile.TarError, EOFError, zlib.error) as err:
            raise ArchiveError(f"archive is corrupt or truncated: {err}", hint=_HINT) from None
    raise ArchiveError(f"{path} is neither a docker-archive (manifest.json) nor an OCI layout "
                       "(oci-layout + index.json)", hint=_HINT)


__all__ = [
    "MAX_METADATA_BYTES",
    "ArchiveError",
    "ArchiveImage",
    "ArchiveLayer",
    "ArchiveProgress",
    "BlobSink",
    "normalize_member_name",
    "read_archive",
    "synthesize_manifest",
]
