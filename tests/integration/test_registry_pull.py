"""The registry client against Debian's real docker-registry (plain, basic auth, bearer via a token front)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from shifter.config.site import SiteConfig
from shifter.errors import (
    AuthenticationError,
    ImageNotFoundError,
    PlatformMismatchError,
    RegistryUnavailableError,
)
from shifter.oci.platform import Platform
from shifter.oci.reference import parse_reference
from shifter.registry.client import RegistryClient
from shifter.registry.credentials import CredentialStore
from shifter.registry.session import RetryPolicy
from shifter.store.locks import FileLock
from tests.conftest import AUTH_PASSWORD, AUTH_USER, PushedImage
from tests.fixtures.images import Layer, OCILayout, file, layer_tar, push, push_image
from tests.fixtures.registry import Registry, free_port, have_tools
from tests.fixtures.token_server import TokenServer, start_token_server

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not have_tools("docker-registry", "skopeo"),
                                 reason="needs docker-registry and skopeo")]

AMD64 = SiteConfig(platform="linux/amd64")


class DirCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs").mkdir(parents=True, exist_ok=True)

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / digest.split(":")[1]

    def partial_path(self, digest: str) -> Path:
        return self.root / f"{digest.split(':')[1]}.partial"

    def lock(self, digest: str) -> FileLock:
        return FileLock(self.root / f"{digest.split(':')[1]}.lock")

    def commit(self, digest: str, partial: Path) -> Path:
        os.replace(partial, self.blob_path(digest))
        return self.blob_path(digest)


def client_for(tmp_path: Path, config: SiteConfig = AMD64, creds: tuple[str, str, str] | None = None,
               retry: RetryPolicy | None = None) -> RegistryClient:
    store = CredentialStore(tmp_path / "auth.json", tmp_path / "docker-config.json")
    if creds:
        store.store(*creds)
    return RegistryClient(config, store, retry=retry or RetryPolicy(attempts=2, base_delay=0.05))


@pytest.fixture(scope="module")
def token_front(registry: Registry) -> Iterator[TokenServer]:
    server = start_token_server(registry.host, AUTH_USER, AUTH_PASSWORD)
    yield server
    server.stop()


def test_pull_manifest_and_blobs(busybox_image: PushedImage, tmp_path: Path) -> None:
    ref = parse_reference(busybox_image.ref)
    with client_for(tmp_path) as client:
        image = client.resolve(ref)
        assert image.digest == busybox_image.digest
        assert client.head_digest(ref) == image.digest
        assert "IMAGE_VAR=from-image" in image.config.env
        assert image.config.workdir == "/app" and image.config.labels == {"org.example.test": "yes"}
        assert len(image.layers) == 2
        paths = client.fetch_blobs(ref, image.layers, DirCache(tmp_path / "cache"))
    for layer, path in zip(image.layers, paths, strict=True):
        data = path.read_bytes()
        assert len(data) == layer.size
        assert "sha256:" + hashlib.sha256(data).hexdigest() == layer.digest


def test_resume_against_the_real_registry(busybox_image: PushedImage, tmp_path: Path) -> None:
    """docker-registry answers Range with 206: a partial download is completed, not restarted."""
    ref = parse_reference(busybox_image.ref)
    with client_for(tmp_path) as client:
        layer = max(client.resolve(ref).layers, key=lambda d: d.size)
        whole = client.fetch_blob(ref, layer, tmp_path / "whole").read_bytes()
        (tmp_path / "resumed.partial").write_bytes(whole[: layer.size // 3])
        assert client.fetch_blob(ref, layer, tmp_path / "resumed").read_bytes() == whole


def test_unknown_tag(registry: Registry, busybox_image: PushedImage, tmp_path: Path) -> None:
    with pytest.raises(ImageNotFoundError) as err, client_for(tmp_path) as client:
        client.resolve(parse_reference(f"{registry.host}/test/busybox:no-such-tag"))
    assert "MANIFEST_UNKNOWN" in err.value.message


def _tiny_layer(text: str) -> Layer:
    return layer_tar([file("arch.txt", text.encode())])


def test_multi_platform_index(registry: Registry, tmp_path: Path) -> None:
    layout = OCILayout(tmp_path / "layout")
    layout.add_index("multi", [([_tiny_layer("amd64")], ("linux", "amd64", "")),
                               ([_tiny_layer("arm64")], ("linux", "arm64", "v8"))])
    ref_text = f"{registry.host}/test/multi:1"
    push(layout.root, "multi", ref_text, all_platforms=True)
    ref = parse_reference(ref_text)
    with client_for(tmp_path) as client:
        amd = client.resolve(ref)
        arm = client.resolve(ref, Platform("linux", "arm64", "v8"))
        assert amd.platform.architecture == "amd64" and arm.platform.architecture == "arm64"
        assert amd.index_digest == arm.index_digest == client.head_digest(ref)
        assert amd.digest != arm.digest
        with pytest.raises(PlatformMismatchError) as err:
            client.resolve(ref, Platform("linux", "s390x"))
    assert "linux/amd64" in err.value.message and "linux/arm64/v8" in err.value.message


def test_basic_auth(auth_registry: Registry, busybox_layer: Layer, tmp_path: Path) -> None:
    ref_text = f"{auth_registry.host}/private/app:1"
    digest = push_image(tmp_path / "layout", ref_text, [_tiny_layer("secret")], creds=auth_registry.creds)
    ref = parse_reference(ref_text)
    with client_for(tmp_path / "good", creds=(auth_registry.host, AUTH_USER, AUTH_PASSWORD)) as client:
        image = client.resolve(ref)
        assert image.digest == digest
        client.fetch_blobs(ref, image.layers, DirCache(tmp_path / "cache"))
    with pytest.raises(AuthenticationError) as err, client_for(tmp_path / "anon") as client:
        client.resolve(ref)
    assert f"shifterimg login {auth_registry.host}" in err.value.hint
    with pytest.raises(AuthenticationError), \
            client_for(tmp_path / "bad", creds=(auth_registry.host, AUTH_USER, "wrong")) as client:
        client.resolve(ref)


def test_basic_auth_from_docker_config(auth_registry: Registry, tmp_path: Path) -> None:
    ref_text = f"{auth_registry.host}/private/docker-cfg:1"
    push_image(tmp_path / "layout", ref_text, [_tiny_layer("x")], creds=auth_registry.creds)
    (tmp_path / "docker-config.json").write_text(json.dumps({"auths": {auth_registry.host: {
        "auth": base64.b64encode(f"{AUTH_USER}:{AUTH_PASSWORD}".encode()).decode()}}}))
    with client_for(tmp_path) as client:
        assert client.resolve(parse_reference(ref_text)).layers


def test_bearer_token_flow(token_front: TokenServer, busybox_image: PushedImage, tmp_path: Path) -> None:
    ref = parse_reference(f"{token_front.host}/test/busybox:1")
    before = len(token_front.token_requests)
    with client_for(tmp_path, creds=(token_front.host, AUTH_USER, AUTH_PASSWORD)) as client:
        image = client.resolve(ref)
        assert image.digest == busybox_image.digest
        client.fetch_blobs(ref, image.layers, DirCache(tmp_path / "cache"))
        assert client.head_digest(ref) == image.digest
    requests = token_front.token_requests[before:]
    assert len(requests) == 1  # one token, cached for manifest, config, layers and HEAD
    assert requests[0]["scopes"] == ["repository:test/busybox:pull"]
    assert str(requests[0]["authorization"]).startswith("Basic ")


def test_bearer_without_credentials_says_login(token_front: TokenServer, busybox_image: PushedImage,
                                              tmp_path: Path) -> None:
    with pytest.raises(AuthenticationError) as err, client_for(tmp_path) as client:
        client.resolve(parse_reference(f"{token_front.host}/test/busybox:1"))
    assert f"shifterimg login {token_front.host}" in err.value.hint


def test_bearer_with_wrong_password(token_front: TokenServer, busybox_image: PushedImage,
                                    tmp_path: Path) -> None:
    with pytest.raises(AuthenticationError) as err, \
            client_for(tmp_path, creds=(token_front.host, AUTH_USER, "nope")) as client:
        client.resolve(parse_reference(f"{token_front.host}/test/busybox:1"))
    assert "token service" in err.value.message


def _closed_port() -> int:
    port = free_port()
    with socket.socket() as probe:  # nothing listens there: the connection is refused
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return port


def test_dead_registry_is_unavailable(tmp_path: Path) -> None:
    ref = parse_reference(f"127.0.0.1:{_closed_port()}/test/busybox:1")
    with pytest.raises(RegistryUnavailableError) as err, client_for(tmp_path) as client:
        client.resolve(ref)
    assert "connection failed" in err.value.message
    assert "network" in err.value.hint


def test_dead_mirror_falls_through_to_the_registry(registry: Registry, busybox_image: PushedImage,
                                                   tmp_path: Path) -> None:
    config = SiteConfig(platform="linux/amd64",
                        registry_mirrors=((registry.host, f"http://127.0.0.1:{_closed_port()}"),))
    ref = parse_reference(busybox_image.ref)
    with client_for(tmp_path, config) as client:
        image = client.resolve(ref)
        client.fetch_blobs(ref, image.layers, DirCache(tmp_path / "cache"))
    assert image.digest == busybox_image.digest
