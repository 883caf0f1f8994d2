"""Content-addressed blob cache shared by all images of a store.

Layout under the cache directory (``cacheDir``, default ``<store>/cache``)::

    blobs/sha256/<hex>        complete, verified blobs (read-only once committed)
    partial/sha256/<hex>      a download in progress (kept across crashes, so it can resume)
    locks/<hex>.lock          held while one process writes that blob's partial file
    locks/imports.lock        held shared by running archive imports (their partial/sha256/import-*.blob)

Protocol for a downloader (the registry client)::

    path = cache.get(digest)                 # hit: done (also marks it recently used)
    with cache.writer(digest) as partial:    # flock: one writer per blob, across processes
        if (path := cache.get(digest)):      # someone else finished it while we waited
            ...
        # append to `partial` from offset partial.stat().st_size (HTTP Range), verify the
        # digest and size while streaming, then:
        path = cache.commit(digest, partial)

Least-recently-used clean-up: :meth:`prune` deletes the blobs with the oldest mtime
(``get`` refreshes it) until the total is at most ``max_size``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from shifter.errors import DigestMismatchError, StoreError
from shifter.store.locks import FileLock
from shifter.store.publish import fsync_dir, fsync_file, writing

_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_CHUNK = 1024 * 1024
IMPORT_TEMP_GLOB = "import-*.blob"  # what shifter.convert.archive names its temporary blob copies


def digest_hex(digest: str) -> str:
    """The hex part of a ``sha256:<hex>`` digest; :class:`StoreError` for anything else."""
    match = _DIGEST.match(digest)
    if not match:
        raise StoreError(f"unsupported blob digest {digest!r}", hint="only sha256 digests are supported")
    return match.group(1)


class BlobCache:
    """A directory of blobs named by their sha256 digest, with a size cap."""

    def __init__(self, root: str | os.PathLike[str], max_size: int = 20 * 1024**3) -> None:
        self.root = Path(root)
        self.max_size = max_size

    def __repr__(self) -> str:
        return f"BlobCache({str(self.root)!r})"

    @property
    def blobs_dir(self) -> Path:
        return self.root / "blobs" / "sha256"

    @property
    def partial_dir(self) -> Path:
        return self.root / "partial" / "sha256"

    def path(self, digest: str) -> Path:
        """Where the complete blob lives (whether or not it exists yet)."""
        return self.blobs_dir / digest_hex(digest)

    def blob_path(self, digest: str) -> Path:
        """Same as :meth:`path` (the name ``shifter.registry.cache.BlobCache`` uses)."""
        return self.path(digest)

    def partial_path(self, digest: str) -> Path:
        """Where a download of ``digest`` in progress lives (stable, so it can resume); parent exists."""
        hexd = digest_hex(digest)
        with writing(f"preparing the blob cache {self.root}"):
            self.partial_dir.mkdir(parents=True, exist_ok=True)
        return self.partial_dir / hexd

    def get(self, digest: str) -> Path | None:
        """The path of a cached blob (and mark it recently used), or None."""
        path = self.path(digest)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        except OSError:
            pass  # a read-only cache still serves hits
        return path if path.is_file() else None

    def touch(self, paths: Iterable[Path]) -> None:
        """Mark blobs as recently used (for :meth:`prune`)."""
        for path in paths:
            with contextlib.suppress(OSError):
                os.utime(path)

    def lock(self, digest: str) -> FileLock:
        return FileLock(self.root / "locks" / f"{digest_hex(digest)}.lock")

    @contextlib.contextmanager
    def writer(self, digest: str) -> Iterator[Path]:
        """Hold the blob's lock and yield its partial path (which may already hold a prefix)."""
        with writing(f"preparing the blob cache {self.root}"):
            self.partial_dir.mkdir(parents=True, exist_ok=True)
            self.blobs_dir.mkdir(parents=True, exist_ok=True)
        with self.lock(digest):
            yield self.partial_path(digest)

    def commit(self, digest: str, partial: Path, size: int | None = None) -> Path:
        """Atomically move a verified partial download into the cache; returns the blob path.

        The caller verified the digest while streaming; ``size``, when given, is re-checked
        here as a last line of defence against a truncated file.
        """
        final = self.path(digest)
        if size is not None and partial.stat().st_size != size:
            actual = partial.stat().st_size
            partial.unlink(missing_ok=True)
            raise DigestMismatchError(f"blob {digest[:19]} has {actual} bytes, expected {size}",
                                      hint="pull again; the partial download was discarded")
        with writing(f"storing blob {digest[:19]} in {self.root}"):
            final.parent.mkdir(parents=True, exist_ok=True)
            fsync_file(partial)
            os.chmod(partial, 0o444)
            os.replace(partial, final)
            fsync_dir(final.parent)
        return final

    def ingest(self, source: Path, digest: str | None = None) -> tuple[str, Path]:
        """Copy a local file into the cache (``shifterimg import``), verifying ``digest`` when given.

        Returns ``(digest, path)``.
        """
        hasher = hashlib.sha256()
        tmp = self.partial_dir / f".ingest-{os.getpid()}-{source.name[:40]}"
        with writing(f"copying {source} into the blob cache"):
            self.partial_dir.mkdir(parents=True, exist_ok=True)
            with open(source, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    hasher.update(chunk)
                    dst.write(chunk)
        actual = f"sha256:{hasher.hexdigest()}"
        if digest is not None and actual != digest:
            tmp.unlink(missing_ok=True)
            raise DigestMismatchError(f"{source} has digest {actual}, expected {digest}",
                                      hint="the archive is corrupt; export it again")
        with self.lock(actual):
            if (existing := self.get(actual)) is not None:
                tmp.unlink(missing_ok=True)
                return actual, existing
            return actual, self.commit(actual, tmp)

    def imports_lock(self, *, shared: bool) -> FileLock:
        """Held shared by every running archive import, exclusively by :meth:`clean_stale_imports`."""
        return FileLock(self.root / "locks" / "imports.lock", shared=shared)

    @contextlib.contextmanager
    def importing(self) -> Iterator[Path]:
        """Hold the shared imports lock for one archive import; yield the directory for its
        temporary ``import-*.blob`` files (:attr:`partial_dir`, on the cache's filesystem)."""
        with writing(f"preparing the blob cache {self.root}"):
            self.partial_dir.mkdir(parents=True, exist_ok=True)
        with self.imports_lock(shared=True):
            yield self.partial_dir

    def clean_stale_imports(self) -> list[Path]:
        """Delete the ``import-*.blob`` temp files of imports that died (``kill -9``); return them.

        Only when no import is running anywhere (the imports lock can be taken exclusively):
        live imports hold it shared, and the kernel drops a dead process's lock.
        """
        if not self.partial_dir.is_dir() or not any(self.partial_dir.glob(IMPORT_TEMP_GLOB)):
            return []
        lock = self.imports_lock(shared=False)
        if not lock.acquire(blocking=False):
            return []
        try:
            removed = sorted(self.partial_dir.glob(IMPORT_TEMP_GLOB))
            for path in removed:
                path.unlink(missing_ok=True)
        finally:
            lock.release()
        return removed

    def remove(self, digest: str) -> None:
        """Delete a complete blob and any partial download of it (under its lock)."""
        with self.lock(digest):
            self.path(digest).unlink(missing_ok=True)
            self.partial_path(digest).unlink(missing_ok=True)

    def partials(self) -> list[tuple[int, Path]]:
        """``(size, path)`` of every file under ``partial/`` (downloads in progress or left by a
        pull that died, temporary copies of imports)."""
        out: list[tuple[int, Path]] = []
        if not self.partial_dir.is_dir():
            return out
        for entry in os.scandir(self.partial_dir):
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    out.append((st.st_size, Path(entry.path)))
        return out

    def partial_size(self) -> int:
        return sum(size for size, _ in self.partials())

    def clean_partials(self) -> int:
        """Delete the partial files no live process is writing; return the bytes freed.

        A download holds its blob's lock while it writes ``partial/sha256/<hex>``; an ingest's
        ``.ingest-<pid>-*`` belongs to a process that may still run; ``import-*.blob`` files go
        with :meth:`clean_stale_imports`.  Everything else under ``partial/`` is dead weight.
        """
        freed = 0
        self.clean_stale_imports()
        for size, path in self.partials():
            if self._partial_in_use(path):
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                freed += size
        return freed

    def _partial_in_use(self, path: Path) -> bool:
        name = path.name
        if _DIGEST.match(f"sha256:{name}"):
            lock = self.lock(f"sha256:{name}")
            if not lock.acquire(blocking=False):
                return True
            lock.release()
            return False
        if name.startswith(".ingest-"):
            pid = name.split("-")[1]
            return pid.isdigit() and _alive(int(pid))
        return path.match(IMPORT_TEMP_GLOB)  # an import's: only clean_stale_imports may judge it

    def discard(self, digest: str) -> None:
        """Forget a partial download (e.g. after a digest mismatch)."""
        self.partial_path(digest).unlink(missing_ok=True)

    def entries(self) -> list[tuple[float, int, Path]]:
        """``(mtime, size, path)`` of every complete blob."""
        out: list[tuple[float, int, Path]] = []
        if not self.blobs_dir.is_dir():
            return out
        for entry in os.scandir(self.blobs_dir):
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                out.append((st.st_mtime, st.st_size, Path(entry.path)))
        return out

    def total_size(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def prune(self, keep: Iterable[str] = (), max_size: int | None = None) -> list[str]:
        """Delete least-recently-used blobs until the cache is at most ``max_size`` bytes.

        Blobs in ``keep`` (digests) and blobs being written by another process are spared.
        Returns the digests removed.
        """
        limit = self.max_size if max_size is None else max_size
        spared = {digest_hex(d) for d in keep}
        entries = sorted(self.entries())
        total = sum(size for _, size, _ in entries)
        removed: list[str] = []
        for _mtime, size, path in entries:
            if total <= limit:
                break
            if path.name in spared:
                continue
            digest = f"sha256:{path.name}"
            lock = self.lock(digest)
            if not lock.acquire(blocking=False):
                continue
            try:
                path.unlink(missing_ok=True)
            finally:
                lock.release()
            total -= size
            removed.append(digest)
        return removed

    def clear(self) -> None:
        """Delete everything (blobs and partial downloads)."""
        for sub in ("blobs", "partial"):
            shutil.rmtree(self.root / sub, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, belongs to someone else
    return True



class PrivateBlobCache(BlobCache):
    """The blobs of one private image, kept out of the shared cache (``docs/internals.md``).

    A private image's layers must not be readable on the host by users outside its list, and the
    shared cache's blobs are (``0444`` in a world-readable tree; anyone could convert them into an
    image of their own).  So a private pull or import downloads into a directory of its own,
    ``0700`` under the store's owner-only ``.tmp`` (``<store>/.tmp/<id>.blobs``), which goes with
    the image's other work files once the image is converted, or when a crashed pull is
    recovered.  A blob the shared cache already holds is used from there: it is already
    readable, so reading it reveals nothing.
    """

    def __init__(self, root: str | os.PathLike[str], shared: BlobCache) -> None:
        super().__init__(root, shared.max_size)
        self.shared = shared
        with writing(f"preparing the private blob directory {root}"):
            self.root.mkdir(mode=0o700, exist_ok=True)
            os.chmod(self.root, 0o700)

    def get(self, digest: str) -> Path | None:
        return self.shared.get(digest) or super().get(digest)

    def imports_lock(self, *, shared: bool) -> FileLock:
        return self.shared.imports_lock(shared=shared)

    def prune(self, keep: Iterable[str] = (), max_size: int | None = None) -> list[str]:
        return []  # everything here goes with the work files


__all__ = ["IMPORT_TEMP_GLOB", "BlobCache", "PrivateBlobCache", "digest_hex"]
