"""Credentials: Shifter's auth.json (0600, atomic) and Docker's config.json as a fallback."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from shifter.errors import ConfigError
from shifter.registry.credentials import Credential, CredentialStore, normalize_registry


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def store(tmp_path: Path) -> CredentialStore:
    return CredentialStore(environ={"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
                                    "DOCKER_CONFIG": str(tmp_path / "docker")})


def test_default_paths(store: CredentialStore, tmp_path: Path) -> None:
    assert store.path == tmp_path / "xdg" / "shifter" / "auth.json"
    assert store.docker_config == tmp_path / "docker" / "config.json"


def test_store_then_lookup(store: CredentialStore) -> None:
    assert store.lookup("reg.example:5000") is None
    store.store("reg.example:5000", "alice", "pa:ss")
    assert store.lookup("reg.example:5000") == Credential("alice", "pa:ss")
    assert store.lookup("https://reg.example:5000/v2/") == Credential("alice", "pa:ss")
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    data = json.loads(store.path.read_text())
    assert data == {"auths": {"reg.example:5000": {"auth": b64("alice:pa:ss")}}}


def test_store_keeps_other_entries_and_leaves_no_temp_files(store: CredentialStore) -> None:
    store.store("a.example", "u1", "p1")
    store.store("b.example", "u2", "p2")
    store.store("a.example", "u3", "p3")
    assert store.lookup("a.example") == Credential("u3", "p3")
    assert store.lookup("b.example") == Credential("u2", "p2")
    assert [p.name for p in store.path.parent.iterdir()] == ["auth.json"]
    assert store.erase("a.example") is True
    assert store.lookup("a.example") is None
    assert store.erase("a.example") is False


def test_docker_hub_aliases(store: CredentialStore) -> None:
    store.store("https://index.docker.io/v1/", "hub", "pw")
    for name in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        assert store.lookup(name) == Credential("hub", "pw")
    assert normalize_registry("HTTPS://Index.Docker.IO/v1/") == "docker.io"


def test_docker_config_fallback(store: CredentialStore) -> None:
    store.docker_config.parent.mkdir(parents=True)
    store.docker_config.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": b64("dockeruser:dockerpw")},
        "ghcr.example": {"username": "u", "password": "p"},
        "empty.example": {},
    }, "credsStore": "desktop"}))
    assert store.lookup("docker.io") == Credential("dockeruser", "dockerpw")
    assert store.lookup("ghcr.example") == Credential("u", "p")
    assert store.lookup("empty.example") is None
    store.store("docker.io", "mine", "wins")
    assert store.lookup("docker.io") == Credential("mine", "wins")


def test_corrupt_files_raise_config_error(store: CredentialStore) -> None:
    store.path.parent.mkdir(parents=True)
    store.path.write_text("{not json")
    with pytest.raises(ConfigError) as err:
        store.lookup("x")
    assert err.value.hint
    store.path.write_text(json.dumps({"auths": {"x": {"auth": "!!notbase64"}}}))
    with pytest.raises(ConfigError):
        store.lookup("x")


def test_secret_not_in_repr() -> None:
    assert "hunter2" not in repr(Credential("u", "hunter2"))


def test_user_name_with_colon_is_refused(store: CredentialStore) -> None:
    with pytest.raises(ConfigError):
        store.store("x", "a:b", "pw")
