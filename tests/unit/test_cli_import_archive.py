"""``shifterimg import``'s archive reader (shifter.convert.archive), on tarballs built in Python.

Hostile archives are named after the attack they try.  No external tools: the docker-archive
layout is written by hand exactly as ``skopeo copy ... docker-archive:`` writes it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from shifter.convert.archive import MAX_METADATA_BYTES, read_archive, synthesize_manifest
from shifter.errors import ArchiveError, DigestMismatchError, LayerError, PlatformMismatchError
from shifter.oci.platform import Platform
from shifter.store.blobcache import BlobCache
from tests.fixtures.images import Layer, OCILayout, file, layer_tar, tar_bytes

AMD64 = Platform("linux", "amd64")


def _layers() -> list[Layer]:
    return [layer_tar([file("etc/os-release", b"ID=test\n")]), layer_tar([file("app/x", b"hi")], "zstd")]


def _tar_dir(src: Path, dest: Path, compress: bool = False) -> Path:
    with tarfile.open(dest, "w:gz" if compress else "w") as tar:
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(src)), recursive=False)
    return dest


def _members(dest: Path, members: list[tuple[str, bytes | None, str]]) -> Path:
    """A tarball of (name, data, symlink target) entries, in order (duplicates allowed)."""
    with tarfile.open(dest, "w") as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                info.size = len(data or b"")
                tar.addfile(info, io.BytesIO(data or b""))
    return dest


def _docker_archive_members(raw_layers: list[bytes], repo_tags: list[str] | None = None,
                            diff_ids: list[str] | None = None) -> list[tuple[str, bytes | None, str]]:
    """What skopeo writes: <diffid>.tar blobs, <config>.json, <id>/layer.tar symlinks, manifest.json."""
    ids = diff_ids or ["sha256:" + hashlib.sha256(raw).hexdigest() for raw in raw_layers]
    config = json.dumps({"architecture": "amd64", "os": "linux", "created": "2024-01-02T03:04:05Z",
                         "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": ids}}).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    members: list[tuple[str, bytes | None, str]] = []
    layer_paths = []
    for number, raw in enumerate(raw_layers):
        blob_name = hashlib.sha256(raw).hexdigest() + ".tar"
        members.append((blob_name, raw, ""))
        members.append((f"dir{number}/layer.tar", None, f"../{blob_name}"))
        layer_paths.append(f"dir{number}/layer.tar")
    members.append((config_name, config, ""))
    manifest = [{"Config": config_name, "RepoTags": repo_tags or ["docker.io/library/app:1"],
                 "Layers": layer_paths}]
    members.append(("manifest.json", json.dumps(manifest).encode(), ""))
    return members


@pytest.fixture
def cache(tmp_path: Path) -> BlobCache:
    return BlobCache(tmp_path / "cache")


def _read(path: Path, cache: BlobCache, **kw: object) -> object:
    return read_archive(path, cache, cache.partial_dir, platform=AMD64, **kw)  # type: ignore[arg-type]


def _leftovers(cache: BlobCache) -> list[Path]:
    return list(cache.partial_dir.iterdir()) if cache.partial_dir.is_dir() else []


# --------------------------------------------------------------------------- good archives
def test_oci_layout_tarball_keeps_the_manifest_digest(tmp_path: Path, cache: BlobCache) -> None:
    layout = OCILayout(tmp_path / "layout")
    layers = _layers()
    digest = layout.add_image("v1", layers, config={"WorkingDir": "/app"})
    image = _read(_tar_dir(layout.root, tmp_path / "oci.tar"), cache)
    assert image.format == "oci-layout"  # type: ignore[attr-defined]
    assert image.manifest_digest == digest  # type: ignore[attr-defined]
    assert [x.digest for x in image.layers] == [x.digest for x in layers]  # type: ignore[attr-defined]
    for layer, blob in zip(image.layers, layers, strict=True):  # type: ignore[attr-defined]
        assert layer.path.read_bytes() == blob.blob
        assert layer.path.parent == cache.blobs_dir
    assert image.config["config"]["WorkingDir"] == "/app"  # type: ignore[attr-defined]
    content = image.to_content()  # type: ignore[attr-defined]
    assert content.image_id == digest.split(":")[1]
    assert _leftovers(cache) == []


def test_gzip_compressed_oci_tarball(tmp_path: Path, cache: BlobCache) -> None:
    layout = OCILayout(tmp_path / "layout")
    digest = layout.add_image("v1", _layers())
    image = _read(_tar_dir(layout.root, tmp_path / "oci.tar.gz", compress=True), cache)
    assert image.manifest_digest == digest  # type: ignore[attr-defined]


def test_oci_index_picks_the_host_platform(tmp_path: Path, cache: BlobCache) -> None:
    layout = OCILayout(tmp_path / "layout")
    arm, amd = layer_tar([file("arch", b"arm64")]), layer_tar([file("arch", b"amd64")])
    layout.add_index("multi", [([arm], ("linux", "arm64", "v8")), ([amd], ("linux", "amd64", ""))])
    image = _read(_tar_dir(layout.root, tmp_path / "oci.tar"), cache)
    assert [x.digest for x in image.layers] == [amd.digest]  # type: ignore[attr-defined]
    with pytest.raises(PlatformMismatchError):
        read_archive(tmp_path / "oci.tar", cache, cache.partial_dir, platform=Platform("linux", "s390x"))


def test_docker_archive_gets_a_reproducible_synthetic_manifest(tmp_path: Path, cache: BlobCache) -> None:
    raws = [tar_bytes([file("a", b"1")]), tar_bytes([file("b", b"2")])]
    path = _members(tmp_path / "d.tar", _docker_archive_members(raws))
    first = _read(path, cache)
    again = _read(path, BlobCache(tmp_path / "other-cache"))
    assert first.format == "docker-archive"  # type: ignore[attr-defined]
    assert first.manifest_digest == again.manifest_digest  # type: ignore[attr-defined]
    assert first.names == ("docker.io/library/app:1",)  # type: ignore[attr-defined]
    manifest = json.loads(first.manifest_bytes)  # type: ignore[attr-defined]
    assert [x["mediaType"] for x in manifest["layers"]] == ["application/vnd.oci.image.layer.v1.tar"] * 2
    assert first.manifest_bytes == synthesize_manifest(  # type: ignore[attr-defined]
        first.config_digest, len(first.config_bytes), first.layers)  # type: ignore[attr-defined]
    assert first.layers[0].path.read_bytes() == raws[0]  # type: ignore[attr-defined]


def test_docker_archive_gzip_layer_checks_uncompressed_diff_id(tmp_path: Path, cache: BlobCache) -> None:
    raw = tar_bytes([file("a", b"1" * 1000)])
    member = _docker_archive_members([gzip.compress(raw)],
                                     diff_ids=["sha256:" + hashlib.sha256(raw).hexdigest()])
    image = _read(_members(tmp_path / "d.tar", member), cache)
    assert image.layers[0].media_type.endswith("+gzip")  # type: ignore[attr-defined]


def test_multi_image_archive_is_picked_by_target_name(tmp_path: Path, cache: BlobCache) -> None:
    layout = OCILayout(tmp_path / "layout")
    one = layout.add_image("one", [layer_tar([file("x", b"1")])])
    two = layout.add_image("two", [layer_tar([file("x", b"2")])])
    path = _tar_dir(layout.root, tmp_path / "oci.tar")
    assert _read(path, cache, names=["app:two", "two"]).manifest_digest == two  # type: ignore[attr-defined]
    assert _read(path, cache, names=["one"]).manifest_digest == one  # type: ignore[attr-defined]
    with pytest.raises(ArchiveError, match="holds 2 images"):
        _read(path, cache, names=["three"])


# --------------------------------------------------------------------------- hostile archives
def test_layer_path_traversal_in_manifest_json(tmp_path: Path, cache: BlobCache) -> None:
    members = _docker_archive_members([tar_bytes([file("a")])])
    manifest = json.loads(members[-1][1] or b"")
    manifest[0]["Layers"] = ["../../../../etc/passwd"]
    members[-1] = ("manifest.json", json.dumps(manifest).encode(), "")
    with pytest.raises(ArchiveError, match="outside the archive"):
        _read(_members(tmp_path / "d.tar", members), cache)


def test_layer_symlink_to_absolute_host_path(tmp_path: Path, cache: BlobCache) -> None:
    members = _docker_archive_members([tar_bytes([file("a")])])
    members[1] = ("dir0/layer.tar", None, "/etc/shadow")
    with pytest.raises(ArchiveError, match="links outside"):
        _read(_members(tmp_path / "d.tar", members), cache)


def test_layer_symlink_climbing_out_of_the_archive(tmp_path: Path, cache: BlobCache) -> None:
    members = _docker_archive_members([tar_bytes([file("a")])])
    members[1] = ("dir0/layer.tar", None, "../../../etc/shadow")
    with pytest.raises(ArchiveError):
        _read(_members(tmp_path / "d.tar", members), cache)


def test_symlink_loop_between_members(tmp_path: Path, cache: BlobCache) -> None:
    members = _docker_archive_members([tar_bytes([file("a")])])
    members[1] = ("dir0/layer.tar", None, "../dir1/layer.tar")
    members.append(("dir1/layer.tar", None, "../dir0/layer.tar"))
    with pytest.raises(ArchiveError, match="too many links"):
        _read(_members(tmp_path / "d.tar", members), cache)


def test_duplicate_member_shadowing_a_verified_blob(tmp_path: Path, cache: BlobCache) -> None:
    members = _docker_archive_members([tar_bytes([file("a")])])
    members.append((members[0][0], tar_bytes([file("evil")]), ""))  # same name, different content
    with pytest.raises(ArchiveError, match="more than once"):
        _read(_members(tmp_path / "d.tar", members), cache)


def test_tampered_oci_blob_is_refused_and_not_cached(tmp_path: Path, cache: BlobCache) -> None:
    layout = OCILayout(tmp_path / "layout")
    layers = _layers()
    layout.add_image("v1", layers)
    blob = layout.root / "blobs" / "sha256" / layers[1].digest.split(":")[1]
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(DigestMismatchError):
        _read(_tar_dir(layout.root, tmp_path / "oci.tar"), cache)
    assert cache.get(layers[1].digest) is None
    assert _leftovers(cache) == []


def test_blob_size_lie_in_descriptor(tmp_path: Path, cache: BlobCache) -> None:
    layout = OCILayout(tmp_path / "layout")
    layers = _layers()
    layout.add_image("v1", layers)
    blob = layout.root / "blobs" / "sha256" / layers[0].digest.split(":")[1]
    blob.write_bytes(blob.read_bytes() + b"\0" * 10)
    with pytest.raises(DigestMismatchError, match="descriptor says"):
        _read(_tar_dir(layout.root, tmp_path / "oci.tar"), cache)


def test_docker_layer_not_matching_its_diff_id(tmp_path: Path, cache: BlobCache) -> None:
    members = _docker_archive_members([tar_bytes([file("a")])], diff_ids=["sha256:" + "0" * 64])
    with pytest.raises(DigestMismatchError, match="the config says"):
        _read(_members(tmp_path / "d.tar", members), cache)
    assert _leftovers(cache) == []


def test_oversized_manifest_json_is_not_parsed(tmp_path: Path, cache: BlobCache) -> None:
    members = [("manifest.json", b" " * (MAX_METADATA_BYTES + 1), "")]
    with pytest.raises(ArchiveError, match="allowed for metadata"):
        _read(_members(tmp_path / "d.tar", members), cache)


def test_truncated_archive(tmp_path: Path, cache: BlobCache) -> None:
    raw = tar_bytes([file("a", b"x" * 200_000)])
    path = _members(tmp_path / "d.tar", _docker_archive_members([raw]))
    data = path.read_bytes()
    path.write_bytes(data[:100_000])
    with pytest.raises(LayerError):
        _read(path, cache)
    assert _leftovers(cache) == []


def test_not_an_image_archive(tmp_path: Path, cache: BlobCache) -> None:
    with pytest.raises(ArchiveError, match="neither"):
        _read(_members(tmp_path / "x.tar", [("hello.txt", b"hi", "")]), cache)
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file at all" * 100)
    with pytest.raises(ArchiveError, match="not a readable tar"):
        _read(tmp_path / "junk.tar", cache)


def test_missing_archive(tmp_path: Path, cache: BlobCache) -> None:
    with pytest.raises(ArchiveError, match="does not exist"):
        _read(tmp_path / "nope.tar", cache)
