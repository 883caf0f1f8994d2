"""Verified, resumable blob downloads.

A blob streams into a partial file while its digest and size are checked; nothing is
trusted until EOF matches both (a larger-than-declared stream is cut off at once).  A
download that breaks keeps its partial file and resumes with ``Range: bytes=N-``: a ``206``
appends, a ``200`` starts over, a ``416`` discards the partial.  Failures are retried
with exponential backoff, a bounded number of times.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx

from shifter.errors import (
    DISK_FULL_HINT,
    DigestMismatchError,
    DiskFullError,
    ImageNotFoundError,
    RegistryError,
    RegistryUnavailableError,
    StoreError,
)
from shifter.oci.digest import Digest
from shifter.oci.manifest import Descriptor
from shifter.registry.progress import ProgressSink
from shifter.registry.responses import (
    RETRYABLE_STATUS,
    check_response,
    request_failure,
    transport_failure,
    unavailable,
)
from shifter.registry.session import Session

CHUNK_SIZE = 256 * 1024
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadCancelled(Exception):
    """Another download of the same batch failed; stop this one, keep its partial file."""


class _Retry(Exception):
    """This attempt failed in a way worth retrying (resume from the partial file)."""

    def __init__(self, error: Exception, backoff: bool = True) -> None:
        super().__init__(str(error))
        self.error = error
        self.backoff = backoff


@dataclass(frozen=True)
class _Target:
    digest: Digest
    size: int
    partial: Path
    offset: int  # where the response body starts in the blob


@dataclass
class _Progress:
    """Reports each byte once, even when a download restarts from zero."""

    sink: ProgressSink
    digest: str
    reported: int = 0

    def at(self, total: int) -> None:
        if total > self.reported:
            self.sink.layer_advance(self.digest, total - self.reported)
            self.reported = total


def _storage_error(path: Path, err: OSError) -> StoreError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"no space left writing {path}", hint=DISK_FULL_HINT)
    return StoreError(f"cannot write {path}: {err.strerror}", hint="check the cache directory's permissions")


def _discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _hash_prefix(path: Path, digest: Digest, length: int) -> hashlib._Hash:
    """A hasher fed with the first ``length`` bytes of an existing partial file."""
    hasher = digest.hasher()
    with open(path, "rb") as handle:
        remaining = length
        while remaining:
            chunk = handle.read(min(CHUNK_SIZE * 4, remaining))
            if not chunk:
                break
            hasher.update(chunk)
            remaining -= len(chunk)
    return hasher


def _existing_length(partial: Path, size: int) -> int:
    try:
        length = partial.stat().st_size
    except FileNotFoundError:
        return 0
    if length > size:
        _discard(partial)
        return 0
    return length


def _resume_offset(response: httpx.Response, offset: int) -> int:
    """Where the response body starts in the blob: ``offset`` for a matching 206, else 0."""
    if response.status_code != 206:
        return 0
    match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
    if not match or int(match.group(1)) != offset:
        where = response.url.netloc.decode("ascii")
        raise _Retry(unavailable(where, "bad Content-Range on a resumed download"))
    return offset


class BlobDownloader:
    """Downloads one blob from a list of candidate URLs into a partial file."""

    def __init__(self, session: Session, registry: str, cancel: threading.Event | None = None) -> None:
        self.session = session
        self.registry = registry
        self.cancel = cancel or threading.Event()
        self._deadline = float("inf")

    def download(self, urls: list[str], descriptor: Descriptor, partial: Path, sink: ProgressSink) -> None:
        """Leave the verified blob in ``partial``; try ``urls`` in order (mirrors first)."""
        digest = Digest.parse(descriptor.digest)
        progress = _Progress(sink, descriptor.digest)
        sink.layer_start(descriptor.digest, descriptor.size)
        self._deadline = self.session.clock() + self.session.blob_timeout
        for number, url in enumerate(urls):
            try:
                self._download_from(url, digest, descriptor.size, partial, progress)
                break
            except (StoreError, DownloadCancelled):
                raise
            except (RegistryError, ImageNotFoundError):
                if number == len(urls) - 1:
                    raise  # a mirror that fails falls through; the registry's own error is final
        sink.layer_done(descriptor.digest)

    def _download_from(self, url: str, digest: Digest, size: int, partial: Path, progress: _Progress) -> None:
        attempts = self.session.retry.attempts
        failures = 0
        furthest = _existing_length(partial, size)
        while True:
            try:
                self._attempt(url, digest, size, partial, progress)
                return
            except _Retry as retry:
                # a download that gets further than ever before does not use up the retry
                # budget (bounded: it cannot get further than the blob's size)
                reached = _existing_length(partial, size)
                failures = 1 if reached > furthest else failures + 1
                furthest = max(furthest, reached)
                if failures >= attempts:
                    raise retry.error from None
                self._check_deadline(url, digest)
                if retry.backoff:
                    self.session.sleep(self.session.retry.delay(failures))

    def _attempt(self, url: str, digest: Digest, size: int, partial: Path, progress: _Progress) -> None:
        offset = _existing_length(partial, size)
        progress.at(offset)
        if offset == size:
            if self._complete(partial, digest, size):
                return
            offset = 0
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        where = httpx.URL(url).netloc.decode("ascii")
        try:
            response = self.session.http.send(self.session.http.build_request("GET", url, headers=headers),
                                              stream=True)
        except httpx.TransportError as err:
            raise _Retry(transport_failure(where, err)) from None
        except httpx.RequestError as err:  # a redirect loop: retrying will not help
            raise request_failure(where, err) from None
        try:
            if response.status_code == 416:
                _discard(partial)
                raise _Retry(unavailable(where, "the registry refused to resume the download"), backoff=False)
            if response.status_code in RETRYABLE_STATUS:
                raise _Retry(unavailable(where, f"HTTP {response.status_code} for blob {digest}"))
            check_response(response, what=f"blob {digest}", registry=self.registry, blob=True)
            start = _resume_offset(response, offset)
            self._stream(response, _Target(digest, size, partial, start), progress)
        finally:
            response.close()

    def _check_deadline(self, where: str, digest: Digest) -> None:
        """registryTimeout's TOTAL: a registry that trickles bytes (or keeps failing) cannot keep
        a pull alive forever.  The partial file stays: a later pull resumes it."""
        if self.session.clock() > self._deadline:
            host = httpx.URL(where).netloc.decode("ascii") if "://" in where else where
            raise RegistryUnavailableError(
                f"registry {host} did not deliver blob {digest} within {self.session.blob_timeout:.0f} s",
                hint="the registry is too slow or stalled: try again later, or raise registryTimeout's "
                     "TOTAL in udiRoot.conf")

    def _complete(self, partial: Path, digest: Digest, size: int) -> bool:
        """Is a full-length partial file already the right blob?  Discard it if not."""
        hasher = _hash_prefix(partial, digest, size)
        if hasher.hexdigest() == digest.hex:
            return True
        _discard(partial)
        return False

    def _stream(self, response: httpx.Response, target: _Target, progress: _Progress) -> None:
        digest, size, partial, offset = target.digest, target.size, target.partial, target.offset
        hasher = _hash_prefix(partial, digest, offset) if offset else digest.hasher()
        where = response.url.netloc.decode("ascii")
        written = offset
        try:
            with open(partial, "r+b" if offset else "wb") as handle:
                handle.seek(offset)
                handle.truncate()
                try:
                    for chunk in response.iter_raw():
                        if self.cancel.is_set():
                            raise DownloadCancelled(str(digest))
                        self._check_deadline(where, digest)
                        written += len(chunk)
                        if written > size:
                            raise _too_long(digest, size)
                        handle.write(chunk)
                        hasher.update(chunk)
                        progress.at(written)
                except httpx.TransportError as err:
                    raise _Retry(transport_failure(where, err)) from None
        except DigestMismatchError:
            _discard(partial)
            raise
        except OSError as err:
            error = _storage_error(partial, err)
            if isinstance(error, DiskFullError):
                _discard(partial)  # kept, it would hold the disk full for every other user and pull
            raise error from None
        if written < size:
            raise _Retry(unavailable(where, f"blob {digest} ended after {written} of {size} bytes"))
        if hasher.hexdigest() != digest.hex:
            _discard(partial)
            if offset:  # the kept prefix may be what was wrong (another source wrote it): start over once
                raise _Retry(DigestMismatchError(f"resumed blob {digest} does not match its digest"),
                             backoff=False)
            raise DigestMismatchError(f"blob from {where} does not match its digest {digest}",
                                      hint="the registry or a mirror served corrupted or tampered data; "
                                           "try again, or check the registry")


def _too_long(digest: Digest, size: int) -> DigestMismatchError:
    return DigestMismatchError(f"blob {digest} is longer than the {size} bytes its manifest declares",
                               hint="the registry or a mirror served corrupted or tampered data")


__all__ = ["CHUNK_SIZE", "BlobDownloader", "DownloadCancelled"]
