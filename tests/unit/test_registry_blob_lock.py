"""One downloader per blob across processes: the registry client takes the cache's blob lock.

Another process is played by a second lock object on the same lock file (``flock`` locks
belong to open files, so this conflicts exactly as another process would).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from shifter.config.site import SiteConfig
from shifter.errors import DigestMismatchError
from shifter.oci.manifest import Descriptor
from shifter.oci.reference import parse_reference
from shifter.registry.client import RegistryClient
from shifter.registry.credentials import CredentialStore
from shifter.registry.session import RetryPolicy
from shifter.store.blobcache import BlobCache
from tests.fixtures.fake_registry import OCI_LAYER, FakeRegistry, sha256

REF = parse_reference("reg.example/team/app:1")
SHARED = os.urandom(200_000)


class Phases:
    """A ProgressSink that records phases and the layers it was told about."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, str]] = []
        self.advanced: dict[str, list[int]] = {}
        self.lock = threading.Lock()

    def phase(self, name: str, message: str) -> None:
        with self.lock:
            self.phases.append((name, message))

    def layer_start(self, digest: str, total: int) -> None:
        return None

    def layer_advance(self, digest: str, nbytes: int) -> None:
        with self.lock:
            self.advanced.setdefault(digest, []).append(nbytes)

    def layer_done(self, digest: str) -> None:
        return None


def client(transport: httpx.BaseTransport, concurrency: int = 2) -> RegistryClient:
    return RegistryClient(SiteConfig(download_concurrency=concurrency),
                          CredentialStore("/nonexistent/a", "/nonexistent/d"), transport,
                          retry=RetryPolicy(attempts=2, base_delay=0.01), sleep=lambda _s: None)


def blob_gets(fake: FakeRegistry, digest: str) -> int:
    return sum(1 for r in fake.requests if r.url.path.endswith(f"/blobs/{digest}"))


def wait_until(predicate: object, what: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_second_puller_waits_for_the_blob_lock_then_reuses_the_committed_blob(tmp_path: Path) -> None:
    fake = FakeRegistry()
    desc = Descriptor(OCI_LAYER, sha256(SHARED), len(SHARED))
    fake.add_blob(SHARED)
    cache = BlobCache(tmp_path / "cache")
    other = cache.lock(desc.digest)  # another process, downloading the same layer for another image
    assert other.acquire(blocking=False)
    sink = Phases()
    result: list[Path] = []
    worker = threading.Thread(target=lambda: result.extend(client(fake.transport).fetch_blobs(
        REF, [desc], cache, sink)))
    worker.start()
    wait_until(lambda: any(name == "wait" for name, _ in sink.phases), "the wait phase")
    assert blob_gets(fake, desc.digest) == 0  # it does not touch the partial file the holder writes
    partial = cache.partial_path(desc.digest)  # the other process finishes its download
    partial.write_bytes(SHARED)
    cache.commit(desc.digest, partial)
    other.release()
    worker.join(10)
    assert result == [cache.blob_path(desc.digest)] and result[0].read_bytes() == SHARED
    assert blob_gets(fake, desc.digest) == 0
    assert sink.advanced[desc.digest] == [len(SHARED)]  # reported as found in the cache


def test_the_download_holds_the_blob_lock(tmp_path: Path) -> None:
    fake = FakeRegistry()
    fake.add_blob(SHARED)
    desc = Descriptor(OCI_LAYER, sha256(SHARED), len(SHARED))
    cache = BlobCache(tmp_path / "cache")
    held_during_get: list[bool] = []

    def route(request: httpx.Request) -> httpx.Response:
        if "/blobs/" in request.url.path:
            probe = cache.lock(desc.digest)
            free = probe.acquire(blocking=False)
            if free:
                probe.release()
            held_during_get.append(not free)
        return fake.handle(request)
    client(httpx.MockTransport(route)).fetch_blobs(REF, [desc], cache)
    assert held_during_get == [True]
    lock = cache.lock(desc.digest)
    assert lock.acquire(blocking=False)  # released afterwards
    lock.release()


def test_waiting_for_a_blob_lock_stops_when_another_layer_fails(tmp_path: Path) -> None:
    fake = FakeRegistry()
    fake.add_blob(SHARED)
    shared = Descriptor(OCI_LAYER, sha256(SHARED), len(SHARED))
    bad = Descriptor(OCI_LAYER, sha256(b"bad"), 3)
    fake.blobs[bad.digest] = b"BAD"
    cache = BlobCache(tmp_path / "cache")
    other = cache.lock(shared.digest)
    assert other.acquire(blocking=False)
    try:
        with pytest.raises(DigestMismatchError):
            client(fake.transport).fetch_blobs(REF, [shared, bad], cache)
    finally:
        other.release()
    assert blob_gets(fake, shared.digest) == 0 and not cache.blob_path(shared.digest).exists()
