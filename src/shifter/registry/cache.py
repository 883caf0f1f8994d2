"""What the registry client needs from a blob cache (``shifter.store.blobcache`` implements it)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class BlobCache(Protocol):
    """A content-addressed store of verified blobs, keyed by digest string (``sha256:<hex>``).

    The client only ever writes to :meth:`partial_path` and hands the verified file to
    :meth:`commit`; it never writes under :meth:`blob_path` itself.
    """

    def blob_path(self, digest: str) -> Path:
        """Where the complete blob lives (it may not exist).  The client reuses it when it exists."""
        ...

    def partial_path(self, digest: str) -> Path:
        """Where an in-progress download of ``digest`` lives, on the cache's filesystem.

        Stable across runs (so an interrupted download can resume); its parent must exist.
        The caller serialises downloads of one digest (one pull at a time per image).
        """
        ...

    def commit(self, digest: str, partial: Path) -> Path:
        """Move the verified ``partial`` into the cache atomically (fsync + rename); return blob_path."""
        ...


__all__ = ["BlobCache"]
