"""Open a layer blob as a forward-only stream of tar bytes, whatever its compression.

The compression is detected from magic bytes, not from the media type: registries and
image builders get media types wrong often enough, and the bytes cannot lie.  Nothing is
ever read whole into memory: the stream decompresses in 1 MiB steps.

Every failure while *reading* the layer (truncated gzip, bad zstd frame, I/O error on the
blob) becomes a LayerError here, at the read boundary, so the caller can tell a broken
layer from a failure to *write* the tree.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

import zstandard

# ISA-L's gzip inflater is ~2x faster than zlib's, and a streamed conversion reads each layer twice.
from isal import igzip as _fast_gzip
from isal import isal_zlib

from shifter.errors import LayerError

_ISAL_ERROR: type[Exception] = isal_zlib.error  # type: ignore[assignment]  # its stubs call it an instance
_READ_ERRORS = (EOFError, OSError, zlib.error, _ISAL_ERROR, zstandard.ZstdError)

CHUNK = 1 << 20

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: Formats that are plausible but not OCI layer compressions: say so instead of "not a tar".
UNSUPPORTED_MAGIC = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x04\x22\x4d\x18": "lz4"}


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def detect_compression(head: bytes) -> str:
    """'gzip', 'zstd' or 'none' from the first bytes of a blob; LayerError for others."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    for magic, name in UNSUPPORTED_MAGIC.items():
        if head.startswith(magic):
            raise LayerError(f"layer is {name}-compressed, which OCI images do not use",
                             hint="OCI layers are gzip, zstd or plain tar; rebuild or re-push the image")
    return "none"


class ForwardReader(io.RawIOBase):
    """Decompressed bytes with exact-size reads, ``tell`` and forward-only ``seek``.

    tarfile's seekable mode ("r:") only ever seeks forward over a sequential read, and
    is much faster than its stream mode ("r|"), which copies its buffer for every header.
    """

    def __init__(self, inner: _Readable, what: str) -> None:
        super().__init__()
        self._inner = inner
        self._what = what
        self._pos = 0
        self._pending = b""  # bytes read ahead by is_empty(), served first

    def is_empty(self) -> bool:
        """True when the stream has no bytes at all (checked before anything is read)."""
        if self._pos == 0 and not self._pending:
            self._pending = self._inner_read(1)
        return self._pos == 0 and not self._pending

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def read(self, size: int | None = -1, /) -> bytes:
        if size is None or size < 0:
            return self._read_all()
        parts: list[bytes] = []
        want = size
        if self._pending and want > 0:
            parts.append(self._pending[:want])
            self._pending = self._pending[want:]
            want -= len(parts[0])
        while want > 0:
            chunk = self._inner_read(want)
            if not chunk:
                break
            parts.append(chunk)
            want -= len(chunk)
        data = parts[0] if len(parts) == 1 else b"".join(parts)  # no copy for the common case
        self._pos += len(data)
        return data

    def _read_all(self) -> bytes:
        parts = []
        while chunk := self.read(CHUNK):
            parts.append(chunk)
        return b"".join(parts)

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        target = offset if whence == io.SEEK_SET else self._pos + offset
        if whence not in (io.SEEK_SET, io.SEEK_CUR) or target < self._pos:
            # Never expected from tarfile over a sequential read; refuse rather than guess.
            raise LayerError(f"{self._what}: backward seek in a layer stream",
                             hint="this is a bug in shifter's layer reader; please report it")
        while self._pos < target:
            if not self.read(min(CHUNK, target - self._pos)):
                break  # EOF: tarfile notices the short read and reports the truncation
        return self._pos

    def _inner_read(self, size: int) -> bytes:
        try:
            return self._inner.read(size)
        except _READ_ERRORS as exc:
            raise LayerError(f"{self._what}: cannot decompress layer: {exc}",
                             hint="the blob is truncated or corrupt; delete it from the blob cache "
                                  "and pull again") from exc


@contextmanager
def open_layer(path: Path) -> Iterator[tuple[ForwardReader, str]]:
    """Yield (decompressed stream, compression name) for the layer blob at ``path``."""
    try:
        raw: BinaryIO = open(path, "rb", buffering=CHUNK)  # noqa: SIM115 - closed below
    except OSError as exc:
        raise LayerError(f"cannot open layer {path}: {exc.strerror}",
                         hint="the blob cache may have been cleaned concurrently; pull again") from exc
    with raw:
        try:
            head = raw.peek(8)[:8]  # type: ignore[attr-defined]
        except OSError as exc:
            raise LayerError(f"cannot read layer {path}: {exc.strerror}", hint="pull again") from exc
        kind = detect_compression(head)
        inner: _Readable
        if kind == "gzip":
            inner = _fast_gzip.GzipFile(fileobj=raw, mode="rb")
        elif kind == "zstd":
            # read_across_frames: zstd layers are often written as many frames (chunked).
            inner = zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK, read_across_frames=True)
        else:
            inner = raw
        yield ForwardReader(inner, str(path.name)), kind
