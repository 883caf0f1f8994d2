"""What the registry client needs from a blob cache (``shifter.store.blobcache`` implements it)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class BlobLock(Protocol):
    """An exclusive lock on one blob, shared by every process that uses the cache (an ``flock``)."""

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the lock; False when not blocking (or timed out) and another holder has it."""
        ...

    def release(self) -> None:
        """Drop the lock."""
        ...


class BlobCache(Protocol):
    """A content-addressed store of verified blobs, keyed by digest string (``sha256:<hex>``).

    The client only ever writes to :meth:`partial_path`, and only while it holds
    :meth:`lock` for that digest; it hands the verified file to :meth:`commit` (still
    holding the lock) and never writes under :meth:`blob_path` itself.  So two processes
    that pull different images sharing a layer never write one partial file at once: the
    second waits, then finds the committed blob.
    """

    def blob_path(self, digest: str) -> Path:
        """Where the complete blob lives (it may not exist).  The client reuses it when it exists."""
        ...

    def partial_path(self, digest: str) -> Path:
        """Where an in-progress download of ``digest`` lives, on the cache's filesystem.

        Stable across runs (so an interrupted download can resume); its parent must exist.
        Written only under :meth:`lock`.
        """
        ...

    def lock(self, digest: str) -> BlobLock:
        """The per-blob lock (a new, not yet acquired lock object on each call)."""
        ...

    def commit(self, digest: str, partial: Path) -> Path:
        """Move the verified ``partial`` into the cache atomically (fsync + rename); return blob_path."""
        ...


__all__ = ["BlobCache", "BlobLock"]
