"""Atomic publication, tags, removal and crash recovery of the image store."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from shifter.errors import DiskFullError, StoreError
from shifter.store import publish
from shifter.store.layout import ImageStore

ID = "b" * 64


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    store = ImageStore(tmp_path / "images")
    publish.ensure_layout(store)
    return store


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "d" / "f.json"
    publish.atomic_write_json(target, {"a": 1})
    publish.atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert os.listdir(target.parent) == ["f.json"]


def test_publish_makes_image_ready_and_moves_the_squashfs(store: ImageStore) -> None:
    partial = publish.work_path(store, ID, ".squashfs.partial")
    partial.write_bytes(b"hsqs...")
    publish.publish_image(store, ID, partial, {"status": "READY", "id": ID})
    assert store.is_ready(ID)
    assert not partial.exists()
    assert store.squashfs_path(ID).stat().st_mode & 0o777 == 0o644


def test_publish_failure_before_json_leaves_image_not_ready(store: ImageStore,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    partial = publish.work_path(store, ID, ".squashfs.partial")
    partial.write_bytes(b"hsqs...")

    def full(*_a: object, **_k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(publish, "atomic_write_json", full)
    with pytest.raises(OSError):
        publish.publish_image(store, ID, partial, {"status": "READY"})
    assert not store.is_ready(ID)


def test_enospc_maps_to_disk_full() -> None:
    err = publish.storage_error(OSError(errno.ENOSPC, "No space left"), "writing x")
    assert isinstance(err, DiskFullError) and err.hint
    other = publish.storage_error(OSError(errno.EACCES, "Permission denied"), "writing x")
    assert type(other) is StoreError


def test_tags_point_and_move(store: ImageStore) -> None:
    publish.set_tag(store, "docker", "r.io/a:1", ID)
    assert store.resolve_tag("docker", "r.io/a:1") == ID
    publish.set_tag(store, "docker", "r.io/a:1", "c" * 64)
    assert store.resolve_tag("docker", "r.io/a:1") == "c" * 64
    publish.remove_tag(store, "docker", "r.io/a:1")
    assert store.resolve_tag("docker", "r.io/a:1") is None
    publish.remove_tag(store, "docker", "r.io/a:1")  # idempotent


def test_remove_image_drops_both_files(store: ImageStore) -> None:
    partial = publish.work_path(store, ID, ".squashfs.partial")
    partial.write_bytes(b"x")
    publish.publish_image(store, ID, partial, {"status": "READY"})
    publish.remove_image(store, ID)
    assert not store.squashfs_path(ID).exists() and not store.metadata_path(ID).exists()


def test_remove_path_handles_read_only_directories(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "ro" / "deep").mkdir(parents=True)
    (tree / "ro" / "deep" / "f").write_text("x")
    (tree / "link").symlink_to("/etc")
    os.chmod(tree / "ro" / "deep", 0o555)
    os.chmod(tree / "ro", 0o000)
    publish.remove_path(tree)
    assert not tree.exists()
    assert Path("/etc").is_dir()


def test_stale_work_of_dead_puller_is_recovered_live_work_kept(store: ImageStore) -> None:
    dead, live = "d" * 64, "e" * 64
    for image_id in (dead, live):
        publish.work_path(store, image_id, ".tree").mkdir()
        publish.work_path(store, image_id, ".squashfs.partial").write_bytes(b"x")
    holder = publish.image_lock(store, live)
    assert holder.acquire(blocking=False)
    try:
        assert publish.recover_stale_work(store) == [dead]
    finally:
        holder.release()
    assert sorted(p.name[:64] for p in store.tmp_dir.iterdir()) == [live, live]
