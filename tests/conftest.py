"""Shared pytest fixtures: real registries on 127.0.0.1 and a pushed busybox image.

Integration tests use these; unit tests must not.  Images are built in Python
(``tests.fixtures.images``) and pushed with skopeo.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.images import Layer, OCILayout, busybox_entries, directory, file, layer_tar, push
from tests.fixtures.postgres import PostgresServer, PostgresUnavailable, start_postgres
from tests.fixtures.registry import Registry, start_registry

AUTH_USER, AUTH_PASSWORD = "alice", "s3cret-pass"


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A plain (anonymous, HTTP) docker-registry on 127.0.0.1."""
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A docker-registry with htpasswd basic auth (user alice / s3cret-pass)."""
    reg = start_registry(tmp_path_factory.mktemp("auth-registry"), AUTH_USER, AUTH_PASSWORD)
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (Debian's server, started once per session).

    Fails (never skips) when the server binaries are missing: CI installs them.
    """
    try:
        server = start_postgres()
    except PostgresUnavailable as err:
        problem = str(err)
    else:
        yield server
        server.stop()
        return
    pytest.fail(f"PostgreSQL tests need the server: {problem}", pytrace=False)


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    """The SQLAlchemy URL of a fresh, empty database on the session's PostgreSQL cluster."""
    return postgres.create_database()


@pytest.fixture(scope="session")
def busybox_layer() -> Layer:
    return layer_tar(busybox_entries())


@dataclass
class PushedImage:
    ref: str  # e.g. 127.0.0.1:5000/test/busybox:1
    digest: str  # manifest digest
    layout: Path  # the OCI layout it was pushed from (tag "t")


@pytest.fixture(scope="session")
def busybox_image(registry: Registry, busybox_layer: Layer, tmp_path_factory: pytest.TempPathFactory) -> PushedImage:
    """busybox-static + one small layer, pushed as ``<registry>/test/busybox:1``."""
    layout = OCILayout(tmp_path_factory.mktemp("busybox-layout"))
    top = _app_layer()
    digest = layout.add_image("t", [busybox_layer, top],
                              config={"Env": ["PATH=/usr/bin:/bin", "IMAGE_VAR=from-image"],
                                      "Cmd": ["/bin/sh"], "WorkingDir": "/app"},
                              labels={"org.example.test": "yes"})
    ref = f"{registry.host}/test/busybox:1"
    push(layout.root, "t", ref)
    return PushedImage(ref, digest, layout.root)


def _app_layer() -> Layer:
    return layer_tar([directory("app"), file("app/hello.txt", b"hello from the image\n")], "zstd")


@pytest.fixture
def site_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A udiRoot.conf pointing every path into ``tmp_path``; exported as SHIFTER_CONFIG."""
    images = tmp_path / "images"
    images.mkdir()
    conf = tmp_path / "udiRoot.conf"
    conf.write_text(
        f"imagePath={images}\nudiMount={tmp_path / 'udiMount'}\nloopMount={tmp_path / 'loopMount'}\n"
        f"userImagePath={tmp_path / 'user-images'}\nsystem=testsys\n"
    )
    monkeypatch.setenv("SHIFTER_CONFIG", str(conf))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    os.chmod(tmp_path, 0o755)
    return conf
