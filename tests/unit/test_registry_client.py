"""RegistryClient.resolve / head_digest against an in-memory registry (httpx.MockTransport)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from shifter.config.site import SiteConfig
from shifter.errors import (
    DigestMismatchError,
    ImageNotFoundError,
    ManifestError,
    PlatformMismatchError,
    RegistryError,
    RegistryUnavailableError,
)
from shifter.oci import mediatypes as mt
from shifter.oci.platform import Platform
from shifter.oci.reference import parse_reference
from shifter.registry.client import RegistryClient
from shifter.registry.credentials import CredentialStore
from shifter.registry.endpoints import base_url, endpoints, is_loopback
from shifter.registry.session import RetryPolicy
from tests.fixtures.fake_registry import DOCKER_LIST, DOCKER_MANIFEST, OCI_MANIFEST, FakeRegistry, sha256

REF = parse_reference("reg.example/team/app:1")
AMD64 = Platform("linux", "amd64")


class Router(httpx.BaseTransport):
    """Several fake hosts behind one transport; unknown hosts refuse the connection."""

    def __init__(self, *fakes: FakeRegistry) -> None:
        self.fakes = {f.host: f for f in fakes}
        self.seen: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.netloc.decode()
        self.seen.append(f"{request.url.scheme}://{host}")
        fake = self.fakes.get(host) or next((f for f in self.fakes.values()
                                             if httpx.URL(f.realm).host == request.url.host), None)
        if fake is None:
            raise httpx.ConnectError(f"connection refused: {host}")
        return fake.handle(request)


def make_client(transport: httpx.BaseTransport, tmp_path: Path, config: SiteConfig | None = None,
                sleeps: list[float] | None = None) -> RegistryClient:
    record: Callable[[float], None] = (sleeps.append if sleeps is not None else lambda _s: None)
    return RegistryClient(config or SiteConfig(platform="linux/amd64"),
                          CredentialStore(tmp_path / "a.json", tmp_path / "d.json"), transport,
                          retry=RetryPolicy(attempts=3, base_delay=0.5), sleep=record)


@pytest.fixture
def fake() -> FakeRegistry:
    return FakeRegistry()


# --------------------------------------------------------------- resolving
@pytest.mark.parametrize("media_type", [OCI_MANIFEST, DOCKER_MANIFEST])
def test_resolve_single_manifest(fake: FakeRegistry, tmp_path: Path, media_type: str) -> None:
    digest, data = fake.add_image("team/app", "1", [b"one", b"two"], media_type=media_type,
                                  config={"Env": ["A=1"], "Cmd": ["/bin/sh"]})
    image = make_client(fake.transport, tmp_path).resolve(REF)
    assert image.digest == digest and image.manifest_bytes == data
    assert image.media_type == media_type
    assert [layer.digest for layer in image.layers] == [sha256(b"one"), sha256(b"two")]
    assert image.config.env == ("A=1",) and image.platform == AMD64
    assert image.index_digest is None and image.top_digest == digest
    sha256(image.config_bytes)  # the raw config is kept for the metadata


def test_every_manifest_request_sends_all_four_accept_types(fake: FakeRegistry, tmp_path: Path) -> None:
    amd = fake.add_image("team/app", "x", [b"a"], publish=False)[1]
    fake.add_index("team/app", "1", [(OCI_MANIFEST, amd, {"os": "linux", "architecture": "amd64"})])
    client = make_client(fake.transport, tmp_path)
    client.resolve(REF)
    client.head_digest(REF)
    manifest_requests = [r for r in fake.requests if "/manifests/" in r.url.path]
    assert len(manifest_requests) == 3
    for request in manifest_requests:
        accepted = {a.strip() for a in request.headers["accept"].split(",")}
        assert accepted == {mt.OCI_MANIFEST, mt.OCI_INDEX, mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST_LIST}


@pytest.mark.parametrize(("want", "expected_arch"), [
    (Platform("linux", "amd64"), "amd64"), (Platform("linux", "arm64", "v8"), "arm64"),
    (Platform("linux", "arm", "v7"), "arm"),
])
def test_index_picks_the_platform(fake: FakeRegistry, tmp_path: Path, want: Platform,
                                  expected_arch: str) -> None:
    entries = []
    digests = {}
    for arch, variant in (("amd64", ""), ("arm64", "v8"), ("arm", "v6")):
        digest, data = fake.add_image("team/app", "x", [arch.encode()], arch=arch, variant=variant,
                                      publish=False)
        plat = {"os": "linux", "architecture": arch, **({"variant": variant} if variant else {})}
        entries.append((DOCKER_MANIFEST, data, plat))
        digests[arch] = digest
    index_digest = fake.add_index("team/app", "1", entries, media_type=DOCKER_LIST)
    image = make_client(fake.transport, tmp_path).resolve(REF, want)
    assert image.digest == digests[expected_arch]
    assert image.index_digest == index_digest and image.top_digest == index_digest
    assert image.platform.architecture == expected_arch


def test_site_platform_override(fake: FakeRegistry, tmp_path: Path) -> None:
    amd = fake.add_image("team/app", "x", [b"a"], publish=False)
    arm = fake.add_image("team/app", "y", [b"b"], arch="arm64", publish=False)
    fake.add_index("team/app", "1", [(OCI_MANIFEST, amd[1], {"os": "linux", "architecture": "amd64"}),
                                     (OCI_MANIFEST, arm[1], {"os": "linux", "architecture": "arm64"})])
    client = make_client(fake.transport, tmp_path, SiteConfig(platform="linux/arm64/v8"))
    assert client.resolve(REF).digest == arm[0]


def test_no_matching_platform_lists_the_offer(fake: FakeRegistry, tmp_path: Path) -> None:
    arm = fake.add_image("team/app", "y", [b"b"], arch="arm64", publish=False)
    s390 = fake.add_image("team/app", "z", [b"c"], arch="s390x", publish=False)
    fake.add_index("team/app", "1", [(OCI_MANIFEST, arm[1], {"os": "linux", "architecture": "arm64"}),
                                     (OCI_MANIFEST, s390[1], {"os": "linux", "architecture": "s390x"})])
    with pytest.raises(PlatformMismatchError) as err:
        make_client(fake.transport, tmp_path).resolve(REF)
    assert "linux/amd64" in err.value.message
    assert "linux/arm64" in err.value.message and "linux/s390x" in err.value.message


def test_single_platform_image_for_another_architecture(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.add_image("team/app", "1", [b"b"], arch="arm64")
    with pytest.raises(PlatformMismatchError) as err:
        make_client(fake.transport, tmp_path).resolve(REF)
    assert "linux/arm64" in err.value.message


# ---------------------------------------------------------- verification
def test_by_digest_reference_is_verified(fake: FakeRegistry, tmp_path: Path) -> None:
    digest, data = fake.add_image("team/app", "1", [b"a"])
    client = make_client(fake.transport, tmp_path)
    pinned = parse_reference(f"reg.example/team/app@{digest}")
    assert client.resolve(pinned).digest == digest
    fake.manifests[("team/app", digest)] = (data.replace(b'"schemaVersion": 2', b'"schemaVersion":  2'),
                                           OCI_MANIFEST)
    with pytest.raises(DigestMismatchError):
        client.resolve(pinned)


def test_manifest_that_does_not_match_the_registry_header(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.add_image("team/app", "1", [b"a"])
    fake.fail_next.append(lambda r: httpx.Response(200, content=json.dumps({"schemaVersion": 2}).encode(),
                                                   headers={"Docker-Content-Digest": sha256(b"other")}))
    with pytest.raises(DigestMismatchError):
        make_client(fake.transport, tmp_path).resolve(REF)


def test_tampered_config_is_rejected(fake: FakeRegistry, tmp_path: Path) -> None:
    _, data = fake.add_image("team/app", "1", [b"a"])
    config_digest = json.loads(data)["config"]["digest"]
    original = fake.blobs[config_digest]
    fake.blobs[config_digest] = original.replace(b"amd64", b"arm64")
    with pytest.raises(DigestMismatchError):
        make_client(fake.transport, tmp_path).resolve(REF)
    fake.blobs[config_digest] = original + b" "
    with pytest.raises(DigestMismatchError):
        make_client(fake.transport, tmp_path).resolve(REF)


def test_malformed_manifest(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.put_manifest("team/app", "1", b'{"schemaVersion": 2, "mediaType": "%s", "layers": 3}'
                      % OCI_MANIFEST.encode(), OCI_MANIFEST)
    with pytest.raises(ManifestError) as err:
        make_client(fake.transport, tmp_path).resolve(REF)
    assert err.value.hint


def test_oversized_manifest(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.put_manifest("team/app", "1", b" " * (5 * 1024 * 1024), OCI_MANIFEST)
    with pytest.raises(ManifestError):
        make_client(fake.transport, tmp_path).resolve(REF)


# --------------------------------------------------------------- errors
def test_unknown_tag_is_image_not_found_with_the_registry_message(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.add_image("team/app", "1", [b"a"])
    with pytest.raises(ImageNotFoundError) as err:
        make_client(fake.transport, tmp_path).resolve(parse_reference("reg.example/team/app:2"))
    assert "MANIFEST_UNKNOWN" in err.value.message and "manifest unknown" in err.value.message
    assert "name and tag" in err.value.hint


def test_5xx_is_retried_with_backoff(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.add_image("team/app", "1", [b"a"])
    fake.fail_next += [lambda r: httpx.Response(503), lambda r: httpx.Response(502)]
    sleeps: list[float] = []
    make_client(fake.transport, tmp_path, sleeps=sleeps).resolve(REF)
    assert sleeps == [0.5, 1.0]


def test_5xx_after_retries_is_unavailable(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.fail_next += [lambda r: httpx.Response(500, json={"errors": [{"code": "X", "message": "boom"}]})] * 3
    with pytest.raises(RegistryUnavailableError) as err:
        make_client(fake.transport, tmp_path).resolve(REF)
    assert "boom" in err.value.message and "try again later" in err.value.hint


def test_rate_limit_honours_retry_after(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.add_image("team/app", "1", [b"a"])
    fake.fail_next.append(lambda r: httpx.Response(429, headers={"Retry-After": "3"}))
    sleeps: list[float] = []
    make_client(fake.transport, tmp_path, sleeps=sleeps).resolve(REF)
    assert sleeps == [3.0]


def test_connection_refused_is_unavailable(tmp_path: Path) -> None:
    sleeps: list[float] = []
    with pytest.raises(RegistryUnavailableError) as err:
        make_client(Router(), tmp_path, sleeps=sleeps).resolve(REF)
    assert "reg.example" in err.value.message and "network" in err.value.hint
    assert len(sleeps) == 2  # three attempts


def test_other_status_is_a_registry_error(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.fail_next.append(lambda r: httpx.Response(400, text="bad request"))
    with pytest.raises(RegistryError):
        make_client(fake.transport, tmp_path).resolve(REF)


def test_head_digest(fake: FakeRegistry, tmp_path: Path) -> None:
    digest, _ = fake.add_image("team/app", "1", [b"a"])
    client = make_client(fake.transport, tmp_path)
    assert client.head_digest(REF) == digest
    assert [r.method for r in fake.requests] == ["HEAD"]
    fake.fail_next.append(lambda r: httpx.Response(200))
    assert client.head_digest(REF) is None
    with pytest.raises(ImageNotFoundError):
        client.head_digest(parse_reference("reg.example/team/app:nope"))


# ------------------------------------------------------- schemes and mirrors
@pytest.mark.parametrize(("netloc", "scheme"), [
    ("127.0.0.1:5000", "http"), ("127.8.9.1", "http"), ("localhost:5000", "http"), ("[::1]:5000", "http"),
    ("reg.example", "https"), ("10.0.0.1:5000", "https"), ("insecure.example:5000", "http"),
    ("insecure2.example:443", "http"), ("localhost.evil.example", "https"),
])
def test_scheme_choice(netloc: str, scheme: str) -> None:
    config = SiteConfig(insecure_registries=("insecure.example:5000", "insecure2.example"))
    assert base_url(netloc, config) == f"{scheme}://{netloc}"
    assert is_loopback(netloc) == (scheme == "http" and "insecure" not in netloc)


def test_docker_hub_uses_its_api_host() -> None:
    points = endpoints(parse_reference("ubuntu"), SiteConfig())
    assert [p.base_url for p in points] == ["https://registry-1.docker.io"]


def test_mirrors_are_tried_first_and_a_failing_mirror_falls_through(tmp_path: Path) -> None:
    upstream = FakeRegistry()
    digest, _ = upstream.add_image("team/app", "1", [b"a"])
    stale = FakeRegistry(host="stale-mirror.example")  # answers, but lacks the image
    config = SiteConfig(platform="linux/amd64", registry_mirrors=(
        ("reg.example", "https://dead-mirror.example"), ("reg.example", "https://stale-mirror.example/"),
        ("other.example", "https://unrelated.example")))
    router = Router(upstream, stale)
    client = make_client(router, tmp_path, config)
    assert client.resolve(REF).digest == digest
    assert router.seen[0] == "https://dead-mirror.example"
    assert "https://stale-mirror.example" in router.seen and "https://unrelated.example" not in router.seen
    # a dead mirror is not retried for the rest of the session
    router.seen.clear()
    client.head_digest(REF)
    assert "https://dead-mirror.example" not in router.seen


def test_mirror_serving_the_image(tmp_path: Path) -> None:
    upstream = FakeRegistry()
    mirror = FakeRegistry(host="mirror.example")
    digest, _ = mirror.add_image("library/ubuntu", "22.04", [b"a"])
    config = SiteConfig(platform="linux/amd64", registry_mirrors=(("docker.io", "https://mirror.example"),))
    router = Router(upstream, mirror)
    image = make_client(router, tmp_path, config).resolve(parse_reference("ubuntu:22.04"))
    assert image.digest == digest
    assert all(s == "https://mirror.example" for s in router.seen)
