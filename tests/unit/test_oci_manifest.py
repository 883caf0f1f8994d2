"""Manifest, index and config parsing; digests; platforms and platform selection."""

from __future__ import annotations

import json

import pytest

from shifter.errors import ConfigError, DigestMismatchError, ManifestError, PlatformMismatchError
from shifter.oci import mediatypes as mt
from shifter.oci.digest import Digest, is_digest
from shifter.oci.manifest import ImageIndex, ImageManifest, parse_config, parse_manifest
from shifter.oci.platform import Platform, best_match, host_platform, match_rank

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def manifest(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST,
        "config": {"mediaType": mt.DOCKER_CONFIG, "digest": D1, "size": 10},
        "layers": [{"mediaType": mt.DOCKER_LAYER_GZIP, "digest": D2, "size": 20}],
    }
    base.update(over)
    return base


def dumps(obj: object) -> bytes:
    return json.dumps(obj).encode()


# --------------------------------------------------------------------- digests
def test_digest_parse_and_verify() -> None:
    data = b"hello"
    digest = Digest.of(data)
    assert Digest.parse(str(digest)) == digest
    digest.verify(data)
    with pytest.raises(DigestMismatchError):
        digest.verify(b"hellO")
    sha512 = Digest.of(data, "sha512")
    assert is_digest(str(sha512)) and len(sha512.hex) == 128


@pytest.mark.parametrize("text", ["sha256", "sha256:", "md5:" + "a" * 32, "sha256:" + "A" * 64,
                                  "sha256:" + "a" * 63, "sha512:" + "a" * 64, "sha256:" + "g" * 64])
def test_bad_digests(text: str) -> None:
    assert not is_digest(text)
    with pytest.raises(ManifestError):
        Digest.parse(text)


# ------------------------------------------------------------------- manifests
def test_docker_manifest() -> None:
    parsed = parse_manifest(dumps(manifest()))
    assert isinstance(parsed, ImageManifest)
    assert parsed.media_type == mt.DOCKER_MANIFEST
    assert parsed.config.digest == D1
    assert [(layer.digest, layer.size) for layer in parsed.layers] == [(D2, 20)]
    assert mt.layer_compression(parsed.layers[0].media_type) is mt.Compression.GZIP


def test_oci_manifest_without_media_type_field_uses_content_type_or_shape() -> None:
    obj = manifest(config={"mediaType": mt.OCI_CONFIG, "digest": D1, "size": 1},
                   layers=[{"mediaType": mt.OCI_LAYER_ZSTD, "digest": D2, "size": 2}])
    del obj["mediaType"]
    assert parse_manifest(dumps(obj), mt.OCI_MANIFEST + "; charset=utf-8").media_type == mt.OCI_MANIFEST
    assert parse_manifest(dumps(obj)).media_type == mt.OCI_MANIFEST


def test_index_and_platform_selection() -> None:
    entries = [
        {"mediaType": mt.OCI_MANIFEST, "digest": D1, "size": 1,
         "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": mt.OCI_MANIFEST, "digest": D2, "size": 2,
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"mediaType": mt.OCI_MANIFEST, "digest": "sha256:" + "3" * 64, "size": 3,
         "platform": {"os": "unknown", "architecture": "unknown"}},
    ]
    index = parse_manifest(dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}))
    assert isinstance(index, ImageIndex)
    assert index.select(Platform("linux", "amd64")).digest == D1
    assert index.select(Platform("linux", "arm64")).digest == D2
    with pytest.raises(PlatformMismatchError) as err:
        index.select(Platform("linux", "ppc64le"))
    assert "linux/amd64" in err.value.message and "linux/arm64/v8" in err.value.message
    assert "unknown" not in err.value.message
    assert err.value.hint


def test_index_single_entry_without_platform_is_taken() -> None:
    index = parse_manifest(dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": mt.OCI_MANIFEST, "digest": D1, "size": 1}]}))
    assert isinstance(index, ImageIndex)
    assert index.select(Platform("linux", "s390x")).digest == D1


@pytest.mark.parametrize(("obj", "needle"), [
    (manifest(schemaVersion=1), "schema 1"),
    ({"schemaVersion": 1, "name": "x", "fsLayers": []}, "schema 1"),
    (manifest(mediaType=mt.DOCKER_SCHEMA1_SIGNED), "schema 1"),
    (manifest(schemaVersion="2"), "schemaVersion"),
    (manifest(schemaVersion=3), "schemaVersion"),
    (manifest(layers={"a": 1}), "'layers' must be list"),
    (manifest(layers=[{"mediaType": mt.OCI_LAYER_GZIP, "digest": "sha256:zz", "size": 1}]), "digest"),
    (manifest(layers=[{"mediaType": mt.OCI_LAYER_GZIP, "digest": D2, "size": -1}]), "negative size"),
    (manifest(layers=[{"mediaType": mt.OCI_LAYER_GZIP, "digest": D2, "size": True}]), "'size' must be int"),
    (manifest(layers=[{"mediaType": mt.OCI_LAYER_GZIP, "digest": D2}]), "missing field 'size'"),
    (manifest(layers=[{"mediaType": "application/x-helm", "digest": D2, "size": 1}]),
     "unsupported media type"),
    (manifest(config={"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": D1, "size": 1}),
     "not a container image"),
    ({"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST, "layers": []}, "missing field 'config'"),
    ({"schemaVersion": 2, "mediaType": "text/plain"}, "unsupported media type"),
    ({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [1]}, "descriptor object"),
])
def test_malformed_manifests(obj: object, needle: str) -> None:
    with pytest.raises(ManifestError) as err:
        parse_manifest(dumps(obj))
    assert needle in err.value.message
    assert err.value.hint


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b"\xff\xfe", b"null"])
def test_not_json_objects(data: bytes) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(data)


# --------------------------------------------------------------------- configs
def test_parse_config() -> None:
    cfg = parse_config(dumps({
        "architecture": "arm64", "os": "linux", "variant": "v8", "created": "2024-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/bin"], "Entrypoint": ["/init"], "Cmd": None, "WorkingDir": "/w",
                   "User": "1000:1000", "Labels": {"a": "b"}},
        "rootfs": {"type": "layers", "diff_ids": [D1]}}))
    assert cfg.platform == Platform("linux", "arm64", "v8")
    assert cfg.env == ("PATH=/bin",) and cfg.entrypoint == ("/init",) and cfg.cmd is None
    assert (cfg.workdir, cfg.user, cfg.labels, cfg.diff_ids) == ("/w", "1000:1000", {"a": "b"}, (D1,))


def test_parse_minimal_config() -> None:
    cfg = parse_config(b'{"architecture": "amd64", "os": "linux", "config": null}')
    assert cfg.env == () and cfg.entrypoint is None and cfg.labels == {}


@pytest.mark.parametrize("obj", [{"config": {"Env": "PATH=/bin"}}, {"config": {"Cmd": [1]}},
                                 {"config": {"Labels": {"a": 1}}}, {"rootfs": {"diff_ids": ["nope"]}},
                                 {"architecture": 5}])
def test_malformed_config(obj: object) -> None:
    with pytest.raises(ManifestError):
        parse_config(dumps(obj))


# ------------------------------------------------------------------- platforms
@pytest.mark.parametrize(("machine", "expected"), [
    ("x86_64", "linux/amd64"), ("aarch64", "linux/arm64/v8"), ("armv7l", "linux/arm/v7"),
    ("armv6l", "linux/arm/v6"), ("ppc64le", "linux/ppc64le"), ("s390x", "linux/s390x"), ("i686", "linux/386"),
])
def test_host_platform(machine: str, expected: str) -> None:
    assert str(host_platform(machine, "linux")) == expected


def test_platform_parse() -> None:
    assert Platform.parse("linux/arm64/v8") == Platform("linux", "arm64", "v8")
    assert Platform.parse("linux/amd64") == Platform("linux", "amd64")
    assert Platform.parse("linux/aarch64") == Platform("linux", "arm64", "v8")
    for bad in ("linux", "linux/", "a/b/c/d"):
        with pytest.raises(ConfigError):
            Platform.parse(bad)


def test_variant_matching() -> None:
    arm64 = Platform("linux", "arm64", "v8")
    assert match_rank(arm64, Platform("linux", "arm64")) == 0  # unspecified arm64 variant means v8
    armv7 = Platform("linux", "arm", "v7")
    assert match_rank(armv7, Platform("linux", "arm", "v6")) == 1
    assert match_rank(Platform("linux", "arm", "v6"), armv7) is None  # v6 host cannot run v7 code
    assert match_rank(Platform("linux", "amd64"), Platform("linux", "amd64", "v3")) is None
    offered = [Platform("linux", "arm", "v5"), Platform("linux", "arm", "v7"), Platform("linux", "arm", "v6")]
    assert best_match(armv7, offered) == 1
    assert best_match(Platform("windows", "amd64"), [Platform("linux", "amd64")]) is None
