"""The content-addressed blob cache: atomic commit, verification, LRU clean-up."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from shifter.errors import DigestMismatchError, StoreError
from shifter.store.blobcache import BlobCache


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _put(cache: BlobCache, data: bytes) -> str:
    digest = _digest(data)
    with cache.writer(digest) as partial:
        partial.write_bytes(data)
        cache.commit(digest, partial, size=len(data))
    return digest


def test_commit_makes_blob_visible(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path)
    digest = _digest(b"layer")
    assert cache.get(digest) is None
    _put(cache, b"layer")
    path = cache.get(digest)
    assert path == cache.blob_path(digest) and path.read_bytes() == b"layer"
    assert not cache.partial_path(digest).exists()


def test_truncated_partial_is_refused_and_discarded(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path)
    digest = _digest(b"layer")
    partial = cache.partial_path(digest)
    partial.write_bytes(b"lay")
    with pytest.raises(DigestMismatchError):
        cache.commit(digest, partial, size=5)
    assert cache.get(digest) is None and not partial.exists()


def test_non_sha256_digest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        BlobCache(tmp_path).path("md5:abc")
    with pytest.raises(StoreError):
        BlobCache(tmp_path).path("sha256:../../etc/passwd")


def test_ingest_verifies_content(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache")
    src = tmp_path / "blob"
    src.write_bytes(b"content")
    digest, path = cache.ingest(src)
    assert digest == _digest(b"content") and path.read_bytes() == b"content"
    with pytest.raises(DigestMismatchError):
        cache.ingest(src, digest=_digest(b"other"))


def test_prune_evicts_least_recently_used_first(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, max_size=25)
    old, mid, new = (_put(cache, bytes([i]) * 10) for i in range(3))
    for age, digest in enumerate((old, mid, new)):
        os.utime(cache.path(digest), (1000 + age, 1000 + age))
    cache.get(old)  # use the oldest: it becomes the most recent
    assert cache.prune() == [mid]
    assert cache.total_size() == 20
    assert cache.prune(max_size=0, keep=[new]) == [old]
    assert cache.get(new) is not None


def test_prune_spares_blobs_being_written(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, max_size=0)
    digest = _put(cache, b"x" * 10)
    lock = cache.lock(digest)
    assert lock.acquire(blocking=False)
    try:
        assert cache.prune() == []
    finally:
        lock.release()
    assert cache.prune() == [digest]
