"""The metadata JSON built from an OCI config and manifest."""

from __future__ import annotations

from shifter.convert.metadata import ImageContent, LayerBlob, build_metadata

HEX = "f" * 64
LAYER_MT = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = {
    "created": "2024-01-01T00:00:00Z", "architecture": "amd64", "os": "linux",
    "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"], "Entrypoint": None,
               "WorkingDir": "/app", "User": "1000", "Labels": {"a": "b"}},
}


def test_metadata_has_every_documented_field() -> None:
    content = ImageContent(f"sha256:{HEX}", CONFIG, "sha256:" + "c" * 64,
                           [LayerBlob("sha256:" + "1" * 64, 10, LAYER_MT)])
    meta = build_metadata(content, image_type="docker", source="r.io/a:1", squashfs_size=4096,
                          compression="zstd", pulled_at="2026-01-01T00:00:00Z")
    assert meta == {
        "schema": 1, "status": "READY", "id": HEX, "digest": f"sha256:{HEX}", "type": "docker",
        "source": "r.io/a:1", "config_digest": "sha256:" + "c" * 64, "env": ["PATH=/usr/bin:/bin"],
        "entrypoint": None, "cmd": ["/bin/sh"], "workdir": "/app", "user": "1000", "labels": {"a": "b"},
        "platform": {"os": "linux", "architecture": "amd64", "variant": ""},
        "layers": [{"digest": "sha256:" + "1" * 64, "size": 10,
                    "media_type": "application/vnd.oci.image.layer.v1.tar+gzip"}],
        "size": 4096, "compressed_size": 10, "squashfs": f"{HEX}.squashfs", "compression": "zstd",
        "created": "2024-01-01T00:00:00Z", "pulled_at": "2026-01-01T00:00:00Z",
        "acl": {"private": False, "users": [], "groups": []},
    }


def test_missing_or_odd_config_fields_get_defaults() -> None:
    content = ImageContent(f"sha256:{HEX}", {"config": {"Cmd": "/bin/true", "Labels": None}}, "", [])
    meta = build_metadata(content, image_type="docker", source="s", squashfs_size=0, compression="lz4")
    assert meta["env"] == [] and meta["cmd"] == ["/bin/true"] and meta["entrypoint"] is None
    assert meta["labels"] == {} and meta["workdir"] == "" and meta["created"] == ""
    assert meta["pulled_at"].endswith("Z")
