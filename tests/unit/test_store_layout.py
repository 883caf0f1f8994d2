"""The read side of the image store (what the runtime trusts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shifter.errors import StoreError
from shifter.store.layout import ImageStore, check_id, quote_ref, search_roots

ID = "a" * 64


def _write_image(store: ImageStore, image_id: str = ID, status: str = "READY") -> None:
    store.root.mkdir(parents=True, exist_ok=True)
    store.squashfs_path(image_id).write_bytes(b"sqsh")
    store.metadata_path(image_id).write_text(json.dumps({"status": status, "id": image_id}))


def test_paths_follow_the_documented_layout(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    assert store.squashfs_path(ID) == tmp_path / f"{ID}.squashfs"
    assert store.metadata_path(ID) == tmp_path / f"{ID}.json"
    assert store.tag_path("docker", "docker.io/library/ubuntu:22.04") == \
        tmp_path / "tags" / "docker" / "docker.io%2Flibrary%2Fubuntu%3A22.04"
    assert store.cache_dir == tmp_path / "cache"


@pytest.mark.parametrize("bad", ["../../etc/passwd", "A" * 64, "a" * 63, "", "a" * 64 + "/x"])
def test_path_traversal_through_image_id_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(StoreError):
        ImageStore(tmp_path).squashfs_path(bad)
    with pytest.raises(StoreError):
        check_id(bad)


@pytest.mark.parametrize("bad", ["..", ".", ".hidden", ""])
def test_tag_name_cannot_be_a_dot_entry(bad: str) -> None:
    with pytest.raises(StoreError):
        quote_ref(bad)


def test_path_traversal_through_image_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        ImageStore(tmp_path).tag_path("../x", "r")


def test_ready_needs_squashfs_and_json_with_ready_status(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    assert not store.is_ready(ID)
    store.metadata_path(ID).write_text(json.dumps({"status": "READY"}))
    assert not store.is_ready(ID)  # json without squashfs: never ready
    _write_image(store, status="PULLING")
    assert not store.is_ready(ID)
    _write_image(store)
    assert store.is_ready(ID)
    store.metadata_path(ID).write_text("{not json")
    assert not store.is_ready(ID)


def test_resolve_tag_and_list_tags(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    assert store.resolve_tag("docker", "x.io/a:1") is None
    path = store.tag_path("docker", "x.io/a:1")
    path.parent.mkdir(parents=True)
    path.write_text(ID + "\n")
    store.tag_path("docker", "x.io/b:1").write_text("garbage\n")
    assert store.resolve_tag("docker", "x.io/a:1") == ID
    assert store.resolve_tag("docker", "x.io/b:1") is None
    assert list(store.tags()) == [("docker", "x.io/a:1", ID)]


def test_image_ids_lists_metadata_files_only(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    _write_image(store)
    (tmp_path / "notes.json").write_text("{}")
    assert store.image_ids() == [ID]


def test_search_roots_user_store_first_then_site(tmp_path: Path) -> None:
    site = tmp_path / "site"
    home = tmp_path / "home"
    user = home / ".local/share/shifter/images"
    assert search_roots(str(site), "~/.local/share/shifter/images", str(home)) == []
    site.mkdir()
    user.mkdir(parents=True)
    assert search_roots(str(site), "~/.local/share/shifter/images", str(home)) == [user, site]
