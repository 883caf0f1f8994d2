"""Blob downloads: verified while streaming, resumed with Range, retried, concurrent, cached."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import httpx
import pytest

from shifter.config.site import SiteConfig
from shifter.errors import DigestMismatchError, RegistryError, RegistryUnavailableError, StoreError
from shifter.oci.manifest import Descriptor
from shifter.oci.reference import parse_reference
from shifter.registry.cache import BlobCache
from shifter.registry.client import RegistryClient
from shifter.registry.credentials import CredentialStore
from shifter.registry.session import RetryPolicy
from shifter.store.locks import FileLock
from tests.fixtures.fake_registry import OCI_LAYER, Body, FakeRegistry, sha256

REF = parse_reference("reg.example/team/app:1")
BLOB = os.urandom(300_000)


class Events:
    """A ProgressSink that records what it is told."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: dict[str, int] = {}
        self.advanced: dict[str, int] = {}
        self.done: list[str] = []

    def phase(self, name: str, message: str) -> None:
        pass

    def layer_start(self, digest: str, total: int) -> None:
        with self.lock:
            self.started[digest] = total

    def layer_advance(self, digest: str, nbytes: int) -> None:
        with self.lock:
            self.advanced[digest] = self.advanced.get(digest, 0) + nbytes

    def layer_done(self, digest: str) -> None:
        with self.lock:
            self.done.append(digest)


class DirCache:
    """The smallest BlobCache: <root>/blobs/<hex>, <root>/partial/<hex>."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs").mkdir(parents=True)
        (root / "partial").mkdir()
        self.commits: list[str] = []

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / digest.split(":")[1]

    def partial_path(self, digest: str) -> Path:
        return self.root / "partial" / digest.split(":")[1]

    def lock(self, digest: str) -> FileLock:
        return FileLock(self.root / f"{digest.split(':')[1]}.lock")

    def commit(self, digest: str, partial: Path) -> Path:
        self.commits.append(digest)
        os.replace(partial, self.blob_path(digest))
        return self.blob_path(digest)


def descriptor(data: bytes, digest: str | None = None, size: int | None = None) -> Descriptor:
    return Descriptor(OCI_LAYER, digest or sha256(data), len(data) if size is None else size)


def stored(fake: FakeRegistry, data: bytes) -> Descriptor:
    fake.add_blob(data)
    return descriptor(data)


def make_client(fake: FakeRegistry | httpx.BaseTransport, config: SiteConfig | None = None,
                sleeps: list[float] | None = None, attempts: int = 3) -> RegistryClient:
    transport = fake.transport if isinstance(fake, FakeRegistry) else fake
    store = CredentialStore("/nonexistent/a", "/nonexistent/d")
    return RegistryClient(config or SiteConfig(), store, transport,
                          retry=RetryPolicy(attempts=attempts, base_delay=0.25),
                          sleep=(sleeps.append if sleeps is not None else lambda _s: None))


@pytest.fixture
def fake() -> FakeRegistry:
    reg = FakeRegistry()
    reg.add_blob(BLOB)
    return reg


def test_fetch_blob_verifies_and_reports_progress(fake: FakeRegistry, tmp_path: Path) -> None:
    events = Events()
    dest = make_client(fake).fetch_blob(REF, descriptor(BLOB), tmp_path / "blob", events)
    assert dest.read_bytes() == BLOB
    assert not (tmp_path / "blob.partial").exists()
    digest = sha256(BLOB)
    assert events.started == {digest: len(BLOB)} and events.advanced == {digest: len(BLOB)}
    assert events.done == [digest]
    assert fake.requests[0].headers["accept-encoding"] == "identity"


def test_digest_mismatch_deletes_the_partial(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.blobs[sha256(BLOB)] = BLOB[:-1] + b"X"  # same size, wrong content
    with pytest.raises(DigestMismatchError) as err:
        make_client(fake).fetch_blob(REF, descriptor(BLOB), tmp_path / "blob")
    assert err.value.hint
    assert list(tmp_path.iterdir()) == []


def test_blob_longer_than_declared_is_cut_off(fake: FakeRegistry, tmp_path: Path) -> None:
    with pytest.raises(DigestMismatchError) as err:
        make_client(fake).fetch_blob(REF, descriptor(BLOB, size=1000), tmp_path / "blob")
    assert "longer than" in err.value.message
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_resumes_with_range(fake: FakeRegistry, tmp_path: Path) -> None:
    digest = sha256(BLOB)
    fake.break_blob_after[digest] = 100_000
    events = Events()
    sleeps: list[float] = []
    make_client(fake, sleeps=sleeps).fetch_blob(REF, descriptor(BLOB), tmp_path / "blob", events)
    assert (tmp_path / "blob").read_bytes() == BLOB
    blob_requests = [r for r in fake.requests if "/blobs/" in r.url.path]
    assert "range" not in blob_requests[0].headers
    assert blob_requests[1].headers["range"] == "bytes=100000-"
    assert sleeps == [0.25]
    assert events.advanced[digest] == len(BLOB)  # every byte reported once


def test_resume_from_a_partial_left_by_an_earlier_run(fake: FakeRegistry, tmp_path: Path) -> None:
    (tmp_path / "blob.partial").write_bytes(BLOB[:12345])
    make_client(fake).fetch_blob(REF, descriptor(BLOB), tmp_path / "blob")
    assert (tmp_path / "blob").read_bytes() == BLOB
    assert fake.requests[0].headers["range"] == "bytes=12345-"


def test_server_ignoring_range_restarts_from_zero(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.ignore_range = True
    (tmp_path / "blob.partial").write_bytes(BLOB[:5000])
    make_client(fake).fetch_blob(REF, descriptor(BLOB), tmp_path / "blob")
    assert (tmp_path / "blob").read_bytes() == BLOB


def test_poisoned_partial_is_caught_by_the_digest(fake: FakeRegistry, tmp_path: Path) -> None:
    """A partial file with wrong bytes never ends up in a 'verified' blob: the download starts over."""
    (tmp_path / "blob.partial").write_bytes(b"\0" * 5000)
    make_client(fake).fetch_blob(REF, descriptor(BLOB), tmp_path / "blob")
    assert (tmp_path / "blob").read_bytes() == BLOB
    assert [r.headers.get("range") for r in fake.requests] == ["bytes=5000-", None]


def test_complete_partial_is_not_downloaded_again(fake: FakeRegistry, tmp_path: Path) -> None:
    (tmp_path / "blob.partial").write_bytes(BLOB)
    make_client(fake).fetch_blob(REF, descriptor(BLOB), tmp_path / "blob")
    assert fake.requests == []


def test_range_not_satisfiable_discards_the_partial(fake: FakeRegistry, tmp_path: Path) -> None:
    (tmp_path / "blob.partial").write_bytes(BLOB[:100])
    fake.fail_next.append(lambda r: httpx.Response(416))
    make_client(fake).fetch_blob(REF, descriptor(BLOB), tmp_path / "blob")
    assert (tmp_path / "blob").read_bytes() == BLOB


def test_retries_are_bounded_and_keep_the_partial(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.fail_next += [lambda r: httpx.Response(503)] * 5
    sleeps: list[float] = []
    with pytest.raises(RegistryUnavailableError):
        make_client(fake, sleeps=sleeps, attempts=3).fetch_blob(REF, descriptor(BLOB), tmp_path / "blob")
    assert sleeps == [0.25, 0.5]
    assert len(fake.requests) == 3


def test_connection_errors_mid_stream_are_retried_and_resumed(fake: FakeRegistry, tmp_path: Path) -> None:
    digest = sha256(BLOB)

    def drop(request: httpx.Request) -> httpx.Response | None:
        fake.break_blob_after[digest] = 50_000
        return None
    fake.fail_next += [drop, drop, drop, drop]  # every attempt makes progress, so the budget is not used up
    make_client(fake, attempts=2).fetch_blob(REF, descriptor(BLOB), tmp_path / "blob")
    assert (tmp_path / "blob").read_bytes() == BLOB


def test_unwritable_destination_is_a_store_error(fake: FakeRegistry, tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        make_client(fake).fetch_blob(REF, descriptor(BLOB), tmp_path / "no-such-dir" / "blob")


def test_missing_blob(fake: FakeRegistry, tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as err:
        make_client(fake).fetch_blob(REF, descriptor(b"absent"), tmp_path / "blob")
    assert "BLOB_UNKNOWN" in err.value.message


def test_mirror_with_a_bad_blob_falls_through(fake: FakeRegistry, tmp_path: Path) -> None:
    mirror = FakeRegistry(host="mirror.example")
    mirror.blobs[sha256(BLOB)] = b"e" * len(BLOB)  # right size, wrong content

    def route(request: httpx.Request) -> httpx.Response:
        return (mirror if request.url.host == "mirror.example" else fake).handle(request)
    config = SiteConfig(registry_mirrors=(("reg.example", "https://mirror.example"),))
    make_client(httpx.MockTransport(route), config).fetch_blob(REF, descriptor(BLOB), tmp_path / "blob")
    assert (tmp_path / "blob").read_bytes() == BLOB
    assert [r.url.host for r in mirror.requests + fake.requests] == ["mirror.example", "reg.example"]


# ----------------------------------------------------------------- fetch_blobs
def test_fetch_blobs_concurrently_into_the_cache(tmp_path: Path) -> None:
    fake = FakeRegistry()
    blobs = [os.urandom(50_000 + i) for i in range(6)]
    descs = [stored(fake, b) for b in blobs]
    descs.append(descs[0])  # the same layer twice is fetched once
    cache = DirCache(tmp_path / "cache")
    events = Events()
    client = make_client(fake, SiteConfig(download_concurrency=3))
    paths = client.fetch_blobs(REF, descs, cache, events)
    assert [p.read_bytes() for p in paths] == [*blobs, blobs[0]]
    assert sorted(cache.commits) == sorted({d.digest for d in descs})
    assert len([r for r in fake.requests if "/blobs/" in r.url.path]) == 6
    assert sorted(events.done) == sorted({d.digest for d in descs})
    # everything is cached now: a second call downloads nothing
    fake.requests.clear()
    assert client.fetch_blobs(REF, descs, cache, events) == paths
    assert fake.requests == []


def test_fetch_blobs_raises_the_first_failure(tmp_path: Path) -> None:
    fake = FakeRegistry()
    good = stored(fake, b"good")
    bad = Descriptor(OCI_LAYER, sha256(b"bad"), 3)
    fake.blobs[bad.digest] = b"BAD"
    cache: BlobCache = DirCache(tmp_path / "cache")
    with pytest.raises(DigestMismatchError):
        make_client(fake, SiteConfig(download_concurrency=2)).fetch_blobs(REF, [good, bad], cache)
    assert not cache.blob_path(bad.digest).exists()


def test_foreign_layer_urls_are_a_fallback_over_https_only(tmp_path: Path) -> None:
    fake = FakeRegistry()
    seen: list[str] = []

    def route(request: httpx.Request) -> httpx.Response:
        if request.url.host == "cdn.example":
            seen.append(str(request.url))
            return httpx.Response(200, stream=Body(b"foreign"))
        return fake.handle(request)
    desc = Descriptor("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", sha256(b"foreign"), 7,
                      urls=("http://cdn.example/insecure", "https://cdn.example/layer"))
    make_client(httpx.MockTransport(route)).fetch_blob(REF, desc, tmp_path / "blob")
    assert (tmp_path / "blob").read_bytes() == b"foreign"
    assert seen == ["https://cdn.example/layer"]
