"""Image resolution against temp site and per-user stores laid out as docs/internals.md says."""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from shifter.config.site import SiteConfig
from shifter.errors import (
    AccessDeniedError,
    ImageNotFoundError,
    ImageNotReadyError,
    ImageReferenceError,
    StoreError,
)
from shifter.runtime.images import ImageNotInStoreError, check_access, resolve_image
from shifter.runtime.spec import Identity

Stores = tuple[SiteConfig, Path, Path]
ALICE = Identity(uid=5001, gid=5001, groups=(5001, 7000), user="alice", home="/home/alice")
BOB = Identity(uid=5002, gid=5002, groups=(5002,), user="bob", home="/home/bob")
ROOT = Identity(uid=0, gid=0, groups=(0,), user="root", home="/root")


def make_id(n: int) -> str:
    return f"{n:02x}" * 32


def add_image(root: Path, image_id: str, ref: str | None = None, *, status: str = "READY",
              acl: object = None, squashfs: bool = True, metadata: bool = True, **extra: object) -> None:
    root.mkdir(parents=True, exist_ok=True)
    if squashfs:
        (root / f"{image_id}.squashfs").write_bytes(b"hsqs")
    if metadata:
        meta: dict[str, object] = {"schema": 1, "status": status, "id": image_id, "env": ["PATH=/bin"],
                                   "cmd": ["/bin/sh"], "entrypoint": None, "workdir": ""}
        if acl is not None:
            meta["acl"] = acl
        meta.update(extra)
        (root / f"{image_id}.json").write_text(json.dumps(meta))
    if ref is not None:
        tag = root / "tags" / "docker" / urllib.parse.quote(ref, safe="")
        tag.parent.mkdir(parents=True, exist_ok=True)
        tag.write_text(image_id + "\n")


@pytest.fixture
def stores(tmp_path: Path) -> Stores:
    site = tmp_path / "site"
    home = tmp_path / "home" / "alice"
    site.mkdir()
    config = SiteConfig(image_path=str(site), user_image_path="~/.local/share/shifter/images")
    return config, site, home / ".local/share/shifter/images"


def alice(home_store: Path) -> Identity:
    return replace(ALICE, home=str(home_store.parents[3]))


def test_docker_tag_in_site_store(stores: Stores) -> None:
    config, site, _user = stores
    add_image(site, make_id(1), "docker.io/library/ubuntu:22.04")
    info = resolve_image("docker:ubuntu:22.04", config, ALICE)
    assert (info.kind, info.image_id) == ("docker", make_id(1))
    assert info.ref == "docker:docker.io/library/ubuntu:22.04"
    assert info.squashfs == str(site / f"{make_id(1)}.squashfs")
    assert info.metadata["cmd"] == ["/bin/sh"]
    assert info.store == str(site) and not info.user_store
    assert resolve_image("ubuntu:22.04", config, ALICE).image_id == make_id(1)


def test_user_store_wins_for_that_user_then_site_store(stores: Stores) -> None:
    config, site, user = stores
    add_image(site, make_id(1), "docker.io/library/ubuntu:22.04")
    add_image(user, make_id(2), "docker.io/library/ubuntu:22.04")
    add_image(user, make_id(3), "docker.io/library/mine:1")
    add_image(site, make_id(4), "docker.io/library/sitewide:1")
    me = alice(user)
    mine = resolve_image("ubuntu:22.04", config, me)
    assert mine.image_id == make_id(2) and mine.user_store  # the user's own pull of the tag wins
    assert resolve_image("ubuntu:22.04", config, BOB).image_id == make_id(1)  # not for anyone else
    info = resolve_image("mine:1", config, me)
    assert info.image_id == make_id(3) and info.user_store and info.store == str(user)
    other = resolve_image("sitewide:1", config, me)
    assert other.image_id == make_id(4) and not other.user_store and other.store == str(site)


def test_relative_user_image_path_is_ignored(stores: Stores, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    config, site, _user = stores
    add_image(site, make_id(1), "docker.io/library/ubuntu:22.04")
    add_image(tmp_path / "rel", make_id(2), "docker.io/library/ubuntu:22.04")
    monkeypatch.chdir(tmp_path)
    relative = replace(config, user_image_path="rel")
    assert resolve_image("ubuntu:22.04", relative, ALICE).image_id == make_id(1)


def test_unknown_image_is_pullable(stores: Stores) -> None:
    config, _site, _user = stores
    with pytest.raises(ImageNotInStoreError) as info:
        resolve_image("docker:nope:1", config, ALICE)
    assert info.value.request == "docker:docker.io/library/nope:1"
    assert "shifterimg pull docker:docker.io/library/nope:1" in info.value.hint
    assert isinstance(info.value, ImageNotFoundError) and info.value.exit_code == 3


def test_stale_tag_is_pullable(stores: Stores) -> None:
    config, site, _user = stores
    add_image(site, make_id(4), "docker.io/library/gone:1", squashfs=False, metadata=False)
    with pytest.raises(ImageNotInStoreError):
        resolve_image("gone:1", config, ALICE)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"status": "CONVERSION"}, "status CONVERSION"),
    ({"squashfs": False}, "squashfs file is missing"),
    ({"metadata": False}, "metadata is missing"),
])
def test_not_ready(stores: Stores, kwargs: dict[str, Any], words: str) -> None:
    config, site, _user = stores
    add_image(site, make_id(5), "docker.io/library/busy:1", **kwargs)
    with pytest.raises(ImageNotReadyError) as info:
        resolve_image("busy:1", config, ALICE)
    assert words in info.value.message and info.value.hint


def test_digest_reference_falls_back_to_id(stores: Stores) -> None:
    config, site, _user = stores
    add_image(site, make_id(6))
    info = resolve_image(f"docker:ubuntu@sha256:{make_id(6)}", config, ALICE)
    assert info.image_id == make_id(6)


def test_id_full_and_prefix(stores: Stores) -> None:
    config, site, user = stores
    add_image(site, make_id(7))
    add_image(user, "abcdef012345" + "0" * 52)
    me = alice(user)
    assert resolve_image(f"id:{make_id(7)}", config, me).image_id == make_id(7)
    assert resolve_image(f"id:{make_id(7)[:12]}", config, me).image_id == make_id(7)
    info = resolve_image("id:abcdef012345", config, me)
    assert info.kind == "id" and info.user_store and info.ref == "id:abcdef012345" + "0" * 52


def test_id_prefix_too_short_or_ambiguous(stores: Stores) -> None:
    config, site, _user = stores
    add_image(site, "ab" * 6 + "1" * 52)
    add_image(site, "ab" * 6 + "2" * 52)
    with pytest.raises(ImageReferenceError):
        resolve_image("id:abab", config, ALICE)
    with pytest.raises(ImageReferenceError, match="ambiguous"):
        resolve_image("id:" + "ab" * 6, config, ALICE)
    with pytest.raises(ImageNotFoundError):
        resolve_image("id:" + "cd" * 6, config, ALICE)


def test_default_type_id(stores: Stores) -> None:
    config, site, _user = stores
    add_image(site, make_id(8))
    assert resolve_image(make_id(8)[:16], config, ALICE, default_type="id").image_id == make_id(8)


def test_private_image_acl(stores: Stores) -> None:
    config, site, _user = stores
    add_image(site, make_id(9), "docker.io/team/secret:1",
              acl={"private": True, "users": [5001], "groups": []})
    add_image(site, make_id(10), "docker.io/team/group:1",
              acl={"private": True, "users": [], "groups": [7000]})
    assert resolve_image("team/secret:1", config, ALICE).image_id == make_id(9)
    assert resolve_image("team/group:1", config, ALICE).image_id == make_id(10)  # supplementary group
    assert resolve_image("team/secret:1", config, ROOT).image_id == make_id(9)
    with pytest.raises(AccessDeniedError) as info:
        resolve_image("team/secret:1", config, BOB)
    assert "bob" in info.value.message and info.value.exit_code == 4


@pytest.mark.parametrize(("acl", "allowed"), [
    (None, True),
    ({"private": False, "users": [], "groups": []}, True),
    ({"private": True, "users": [], "groups": []}, False),
    ({"private": True, "users": ["5002"], "groups": []}, False),  # strings are not uids
    ({"private": True, "users": [True], "groups": []}, False),
    ({"private": "yes"}, False),
    ("garbage", False),  # malformed ACL fails closed
    ({"private": True, "users": [5002]}, True),
    ({"private": True, "groups": [5002]}, True),
])
def test_check_access_table(acl: object, allowed: bool) -> None:
    meta: dict[str, object] = {} if acl is None else {"acl": acl}
    if allowed:
        check_access(meta, BOB)
    else:
        with pytest.raises(AccessDeniedError):
            check_access(meta, BOB)


def test_local_images(stores: Stores, tmp_path: Path) -> None:
    config, _site, _user = stores
    tree = tmp_path / "tree"
    tree.mkdir()
    with pytest.raises(AccessDeniedError, match="not allowed"):
        resolve_image(f"local:{tree}", config, ALICE)
    allowed = replace(config, allow_local_chroot=True)
    info = resolve_image(f"local:{tree}/", allowed, ALICE)
    assert (info.kind, info.local_root, info.squashfs, info.image_id) == ("local", str(tree), "", "")
    with pytest.raises(ImageReferenceError):
        resolve_image(f"local:{tree}/../tree", allowed, ALICE)
    with pytest.raises(ImageReferenceError):
        resolve_image("local:/", allowed, ALICE)
    with pytest.raises(ImageNotFoundError):
        resolve_image(f"local:{tmp_path}/missing", allowed, ALICE)
    with pytest.raises(ImageReferenceError):
        resolve_image("local:relative", allowed, ALICE)


def test_bad_reference(stores: Stores) -> None:
    config, _site, _user = stores
    with pytest.raises(ImageReferenceError):
        resolve_image("docker:UPPER/Case", config, ALICE)


def test_metadata_id_mismatch_is_a_store_error(stores: Stores) -> None:
    config, site, _user = stores
    add_image(site, make_id(11), "docker.io/library/liar:1", id=make_id(12))
    with pytest.raises(StoreError):
        resolve_image("liar:1", config, ALICE)
