"""End to end through ImageService: real registry, real flattening, real mksquashfs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from shifter.config.site import SiteConfig, load_config
from shifter.convert.squashfs import SquashfsOptions, build_squashfs
from shifter.errors import ImageNotFoundError
from shifter.gateway.models import Status
from shifter.gateway.service import ImageService
from shifter.gateway.stores import Caller
from shifter.oci.reference import ImageRef
from shifter.registry.client import RegistryClient
from shifter.registry.credentials import CredentialStore
from tests.conftest import PushedImage
from tests.fixtures.registry import Registry

pytestmark = pytest.mark.integration


def _listing(squashfs: Path) -> str:
    out = subprocess.run(["unsquashfs", "-lls", "-d", "", str(squashfs)], check=True, capture_output=True)
    return out.stdout.decode()


def test_pull_builds_a_ready_squashfs_and_repull_does_nothing(site_config: Path, busybox_image: PushedImage,
                                                                tmp_path: Path) -> None:
    config = load_config()
    builds: list[Path] = []

    def build(tree: Path, dest: Path) -> int:
        builds.append(tree)
        return build_squashfs(tree, dest, SquashfsOptions(config.squashfs_compression,
                                                          config.squashfs_compression_level))

    service = ImageService.embedded(config, Caller.current(), build=build)
    assert service.choice.kind == "site"
    record = service.pull(f"docker:{busybox_image.ref}", Caller.current())
    assert record.status is Status.READY
    assert record.id == busybox_image.digest.split(":")[1]
    store = service.store
    assert store.is_ready(record.id)
    listing = _listing(store.squashfs_path(record.id))
    assert "/app/hello.txt" in listing and "/bin/busybox" in listing
    assert " root/root " in listing  # -all-root
    meta = json.loads(store.metadata_path(record.id).read_text())
    assert meta["workdir"] == "/app" and "IMAGE_VAR=from-image" in meta["env"]
    assert meta["compression"] == "zstd" and meta["labels"] == {"org.example.test": "yes"}
    assert list(store.tmp_dir.iterdir()) == []
    mtime = store.squashfs_path(record.id).stat().st_mtime_ns

    service = ImageService.embedded(config, Caller.current(), build=build)
    again = service.pull(busybox_image.ref, Caller.current())
    assert again.id == record.id and len(builds) == 1
    assert store.squashfs_path(record.id).stat().st_mtime_ns == mtime
    assert ImageService.embedded(config).lookup(busybox_image.ref) == record.id


class _HeadOnly:
    """A registry client that may only answer HEAD (proves a re-pull does nothing else)."""

    def __init__(self, config: SiteConfig) -> None:
        self.client = RegistryClient(config, CredentialStore())
        self.heads = 0

    def head_digest(self, ref: ImageRef) -> str | None:
        self.heads += 1
        return self.client.head_digest(ref)

    def resolve(self, *_a: object) -> None:
        raise AssertionError("an unchanged tag must not be resolved again")

    def fetch_blobs(self, *_a: object) -> None:
        raise AssertionError("an unchanged tag must not be downloaded again")


def test_repull_of_unchanged_tag_is_one_head_request(site_config: Path, busybox_image: PushedImage) -> None:
    config = load_config()
    first = ImageService.embedded(config).pull(busybox_image.ref, Caller.current())
    registry = _HeadOnly(config)
    again = ImageService.embedded(config, registry=registry).pull(busybox_image.ref, Caller.current())
    assert again.id == first.id and registry.heads == 1


def test_unknown_tag_fails_and_leaves_store_unchanged(site_config: Path, registry: Registry) -> None:
    service = ImageService.embedded(load_config())
    with pytest.raises(ImageNotFoundError):
        service.pull(f"{registry.host}/test/does-not-exist:1", Caller.current())
    assert service.images() == []
    assert list(service.store.root.glob("*.json")) == []
