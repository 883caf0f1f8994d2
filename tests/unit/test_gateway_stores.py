"""Choosing the site store or the per-user store."""

from __future__ import annotations

from pathlib import Path

from shifter.config.site import SiteConfig
from shifter.gateway.stores import Caller, can_write, choose_store

ALICE = Caller(uid=4242, gid=4242, username="alice", home="/home/alice")


def test_writable_site_store_is_used(tmp_path: Path) -> None:
    config = SiteConfig(image_path=str(tmp_path / "site"))
    choice = choose_store(config, ALICE)
    assert choice.kind == "site" and choice.store.root == tmp_path / "site"
    assert choice.database_url == f"sqlite:///{tmp_path / 'site' / 'shifter.db'}"
    assert choice.cache.root == tmp_path / "site" / "cache"


def test_site_database_url_and_cache_dir_are_honoured(tmp_path: Path) -> None:
    config = SiteConfig(image_path=str(tmp_path), database_url="postgresql://db/shifter",
                        cache_dir=str(tmp_path / "c"))
    choice = choose_store(config, ALICE)
    assert choice.database_url == "postgresql://db/shifter" and choice.cache.root == tmp_path / "c"


def test_unwritable_site_gives_per_user_store_under_home(tmp_path: Path) -> None:
    config = SiteConfig(image_path=str(tmp_path / "site"), database_url="postgresql://db/shifter")
    choice = choose_store(config, ALICE, site_writable=False)
    root = Path("/home/alice/.local/share/shifter/images")
    assert choice.kind == "user" and choice.store.root == root
    assert choice.database_url == f"sqlite:///{root / 'shifter.db'}"
    assert [s.root for s in choice.also_search] == [tmp_path / "site"]


def test_can_write_walks_up_to_an_existing_parent(tmp_path: Path) -> None:
    assert can_write(tmp_path / "a" / "b")


def test_admins_by_name_or_root(tmp_path: Path) -> None:
    config = SiteConfig(gateway_admins=("root", "bob"))
    assert not ALICE.is_admin(config)
    assert Caller(0, 0, "root", "/root").is_admin(config)
    assert Caller(5, 5, "bob", "/home/bob").is_admin(config)
