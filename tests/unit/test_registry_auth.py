"""The auth flow: WWW-Authenticate parsing, Basic, Bearer challenge, token caching and expiry."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from shifter.config.site import SiteConfig
from shifter.errors import AuthenticationError
from shifter.oci.reference import parse_reference
from shifter.registry.auth import RegistryAuth, basic_header, parse_www_authenticate, scope_for_path
from shifter.registry.client import RegistryClient
from shifter.registry.credentials import Credential, CredentialStore
from shifter.registry.session import RetryPolicy
from tests.fixtures.fake_registry import FakeRegistry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_client(fake: FakeRegistry, tmp_path: Path, creds: tuple[str, str] | None = None,
                clock: Clock | None = None, config: SiteConfig | None = None) -> RegistryClient:
    store = CredentialStore(tmp_path / "auth.json", tmp_path / "docker.json")
    if creds:
        store.store(fake.host, *creds)
    return RegistryClient(config or SiteConfig(), store, fake.transport, retry=RetryPolicy(attempts=2),
                          sleep=lambda _s: None, clock=clock or Clock())


# ------------------------------------------------------------------ parsing
def test_parse_bearer_challenge() -> None:
    [chal] = parse_www_authenticate(
        ['Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
         'scope="repository:library/ubuntu:pull"'])
    assert (chal.scheme, chal.realm, chal.service, chal.scope) == (
        "bearer", "https://auth.docker.io/token", "registry.docker.io", "repository:library/ubuntu:pull")


def test_parse_several_challenges_and_escapes() -> None:
    chals = parse_www_authenticate(['Basic realm="a \\"quoted\\" realm", charset="UTF-8"',
                                    'Bearer realm=https://t.example/token, error=insufficient_scope'])
    assert [c.scheme for c in chals] == ["basic", "bearer"]
    assert chals[0].realm == 'a "quoted" realm' and chals[0].params["charset"] == "UTF-8"
    assert chals[1].realm == "https://t.example/token" and chals[1].params["error"] == "insufficient_scope"
    assert parse_www_authenticate(["", "   "]) == []


def test_scope_for_path() -> None:
    assert scope_for_path("/v2/team/app/manifests/1") == "repository:team/app:pull"
    assert scope_for_path("/v2/a/blobs/sha256:00") == "repository:a:pull"
    assert scope_for_path("/v2/") == ""


# ---------------------------------------------- the generator, without a network
def test_bearer_flow_as_a_state_machine() -> None:
    auth = RegistryAuth(lambda host: Credential("u", "p"), lambda host: False)
    request = httpx.Request("GET", "https://reg.example/v2/a/manifests/1")
    flow = auth.auth_flow(request)
    first = next(flow)
    assert "authorization" not in first.headers
    challenge = httpx.Response(401, headers={"WWW-Authenticate":
                                             'Bearer realm="https://auth.example/t",service="svc"'})
    token_request = flow.send(challenge)
    assert token_request.url.host == "auth.example"
    assert dict(token_request.url.params) == {"service": "svc", "scope": "repository:a:pull"}
    assert token_request.headers["authorization"] == basic_header(Credential("u", "p"))
    retried = flow.send(httpx.Response(200, json={"access_token": "T1", "expires_in": 300}))
    assert retried.headers["authorization"] == "Bearer T1"
    with pytest.raises(StopIteration):
        flow.send(httpx.Response(200))
    # the next request to this host carries the token before any challenge
    second = next(auth.auth_flow(httpx.Request("GET", "https://reg.example/v2/a/blobs/sha256:1")))
    assert second.headers["authorization"] == "Bearer T1"


def test_credentials_never_go_to_a_plain_http_realm() -> None:
    auth = RegistryAuth(lambda host: Credential("u", "p"), lambda host: False)
    flow = auth.auth_flow(httpx.Request("GET", "https://reg.example/v2/a/manifests/1"))
    next(flow)
    token_request = flow.send(httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="http://evil.example/t"'}))
    assert "authorization" not in token_request.headers


def test_basic_credentials_never_go_over_plain_http_to_a_remote_host() -> None:
    auth = RegistryAuth(lambda host: Credential("u", "p"), lambda host: False)
    flow = auth.auth_flow(httpx.Request("GET", "http://reg.example/v2/a/manifests/1"))
    next(flow)
    with pytest.raises(StopIteration):
        flow.send(httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'}))


# ------------------------------------------------- through the client (MockTransport)
def test_anonymous_registry_needs_no_auth(tmp_path: Path) -> None:
    fake = FakeRegistry()
    fake.add_image("team/app", "1", [b"layer"])
    client = make_client(fake, tmp_path)
    client.resolve(parse_reference("reg.example/team/app:1"))
    assert all("authorization" not in r.headers for r in fake.requests)


def test_basic_auth(tmp_path: Path) -> None:
    fake = FakeRegistry(auth="basic")
    fake.add_image("team/app", "1", [b"layer"])
    client = make_client(fake, tmp_path, creds=("alice", "s3cret"))
    client.resolve(parse_reference("reg.example/team/app:1"))
    statuses = [r.headers.get("authorization", "") for r in fake.requests]
    assert statuses[0] == ""  # the first request learns the scheme from the 401
    assert all(s == basic_header(Credential("alice", "s3cret")) for s in statuses[1:])
    assert len(fake.requests) == 3  # 401, manifest, config: Basic is sent up front once known


def test_basic_auth_wrong_password_says_login(tmp_path: Path) -> None:
    fake = FakeRegistry(auth="basic")
    fake.add_image("team/app", "1", [b"layer"])
    client = make_client(fake, tmp_path, creds=("alice", "wrong"))
    with pytest.raises(AuthenticationError) as err:
        client.resolve(parse_reference("reg.example/team/app:1"))
    assert "shifterimg login reg.example" in err.value.hint


def test_missing_credentials_say_login(tmp_path: Path) -> None:
    fake = FakeRegistry(auth="basic")
    fake.add_image("team/app", "1", [b"layer"])
    with pytest.raises(AuthenticationError) as err:
        make_client(fake, tmp_path).resolve(parse_reference("reg.example/team/app:1"))
    assert "shifterimg login" in err.value.hint


def test_bearer_flow_with_token_caching(tmp_path: Path) -> None:
    fake = FakeRegistry(auth="bearer")
    fake.add_image("team/app", "1", [b"layer-a", b"layer-b"])
    client = make_client(fake, tmp_path, creds=("alice", "s3cret"))
    ref = parse_reference("reg.example/team/app:1")
    image = client.resolve(ref)
    assert client.head_digest(ref) == image.digest
    for layer in image.layers:
        client.fetch_blob(ref, layer, tmp_path / layer.digest.split(":")[1])
    assert fake.tokens_issued == 1
    token_requests = [r for r in fake.requests if r.url.host == "auth.example"]
    assert token_requests[0].headers["authorization"] == basic_header(Credential("alice", "s3cret"))
    assert dict(token_requests[0].url.params) == {"service": "reg.example",
                                                  "scope": "repository:team/app:pull"}
    unauthorised = [r for r in fake.requests
                    if r.url.host == "reg.example" and "authorization" not in r.headers]
    assert len(unauthorised) == 1  # only the very first request was challenged


def test_bearer_token_expires(tmp_path: Path) -> None:
    fake = FakeRegistry(auth="bearer", token_lifetime=60)
    fake.add_image("team/app", "1", [b"layer"])
    clock = Clock()
    client = make_client(fake, tmp_path, creds=("alice", "s3cret"), clock=clock)
    ref = parse_reference("reg.example/team/app:1")
    client.head_digest(ref)
    clock.now += 30
    client.head_digest(ref)
    assert fake.tokens_issued == 1
    clock.now += 60
    client.head_digest(ref)
    assert fake.tokens_issued == 2


def test_refused_token_is_dropped_and_renewed(tmp_path: Path) -> None:
    fake = FakeRegistry(auth="bearer")
    fake.add_image("team/app", "1", [b"layer"])
    client = make_client(fake, tmp_path, creds=("alice", "s3cret"))
    ref = parse_reference("reg.example/team/app:1")
    client.head_digest(ref)
    fake.valid_tokens.clear()  # the registry revokes every token
    client.head_digest(ref)
    assert fake.tokens_issued == 2


def test_token_service_refusing_credentials(tmp_path: Path) -> None:
    fake = FakeRegistry(auth="bearer")
    fake.add_image("team/app", "1", [b"layer"])
    client = make_client(fake, tmp_path, creds=("alice", "wrong"))
    with pytest.raises(AuthenticationError) as err:
        client.resolve(parse_reference("reg.example/team/app:1"))
    assert "token service" in err.value.message and "shifterimg login" in err.value.hint


def test_anonymous_token_for_a_private_repository(tmp_path: Path) -> None:
    fake = FakeRegistry(auth="bearer")  # anonymous tokens do not open this registry
    fake.add_image("team/app", "1", [b"layer"])
    client = make_client(fake, tmp_path)
    with pytest.raises(AuthenticationError) as err:
        client.resolve(parse_reference("reg.example/team/app:1"))
    assert "shifterimg login reg.example" in err.value.hint
    token_requests = [r for r in fake.requests if r.url.host == "auth.example"]
    assert token_requests and "authorization" not in token_requests[0].headers


def test_anonymous_bearer_token(tmp_path: Path) -> None:
    fake = FakeRegistry(auth="bearer", user="")  # like Docker Hub for public images
    fake.add_image("library/ubuntu", "22.04", [b"layer"])
    fake.host = "reg.example"
    client = make_client(fake, tmp_path)
    image = client.resolve(parse_reference("reg.example/library/ubuntu:22.04"))
    assert image.ref.tag == "22.04" and fake.tokens_issued == 1
