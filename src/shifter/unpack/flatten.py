"""flatten(): apply layer blobs, lowest first, into one directory tree.

One streaming pass per layer: each member is planned from its header (pure planner) and
carried out at once by the executor (safe joins), while the layer's bytes flow through.
Decompressing dominates the cost, so we read every layer exactly once rather than
planning from a first pass over all headers (see docs/layer-policy.md, "Performance").
Memory stays small: one member's header and a 1 MiB copy buffer, plus the planner's
model of the tree (a few hundred bytes per path).
"""

from __future__ import annotations

import contextlib
import math
import tarfile
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Protocol

from shifter.errors import LayerError
from shifter.oci.tarsafe import BoundedTarInfo
from shifter.unpack.compression import CHUNK, open_layer
from shifter.unpack.executor import Executor
from shifter.unpack.planner import Header, MemberKind, Planner, WriteFile
from shifter.unpack.policy import FlattenPolicy, ImageBudget
from shifter.unpack.report import FlattenReport

XATTR_PAX_PREFIXES = ("SCHILY.xattr.", "LIBARCHIVE.xattr.")
MTIME_LIMIT_NS = 2**62  # well inside what utimensat() accepts


class PhaseSink(Protocol):
    """The part of shifter.gateway.progress.ProgressSink that flatten() uses."""

    def phase(self, name: str, message: str) -> None: ...


def flatten(layers: Sequence[Path], dest: Path, policy: FlattenPolicy | None = None,
            progress: PhaseSink | None = None) -> FlattenReport:
    """Flatten layer blobs (lowest first; gzip, zstd or plain tar) into ``dest``.

    ``dest`` must be an existing, empty directory.  Raises LayerError for a malformed or
    unreadable layer (the partial contents of ``dest`` are then the caller's to discard),
    DiskFullError / StoreError when writing fails.
    """
    policy = policy or FlattenPolicy()
    planner = Planner(policy)
    budget = ImageBudget(policy)
    with Executor(dest) as executor:
        for index, layer in enumerate(layers):
            label = layer_label(index, layers)
            if progress is not None:
                progress.phase("flatten", f"applying {label}")
            planner.begin_layer(index, label)
            _apply_layer(Path(layer), label, planner, executor, budget)
        for op in planner.finish():
            executor.apply(op)
    return planner.report


def _apply_layer(layer: Path, label: str, planner: Planner, executor: Executor, budget: ImageBudget) -> None:
    with contextlib.closing(iter_members(layer, label, planner.report, budget)) as members:
        try:
            for tar, info in members:
                for op in planner.plan(header_of(info)):
                    data = tar.extractfile(info) if isinstance(op, WriteFile) else None
                    executor.apply(op, data)
        except tarfile.TarError as exc:  # a member's data ends early
            raise layer_error(label, exc) from exc


def iter_members(layer: Path, label: str, report: FlattenReport,
                 budget: ImageBudget | None = None) -> Generator[tuple[tarfile.TarFile, tarfile.TarInfo], None, None]:
    """Every member of one layer blob, in stream order (close the generator to stop early).

    With a ``budget``, each member is counted from its header before it is yielded (so
    before its data is read or anything is written): LayerError past the image's limits."""
    with open_layer(layer) as (stream, _kind):
        if stream.is_empty():
            report.warn(f"{label}: empty blob, treated as an empty layer")
            return
        try:
            tar = tarfile.open(fileobj=stream, mode="r:", bufsize=CHUNK, tarinfo=BoundedTarInfo,  # noqa: SIM115
                               encoding="utf-8", errors="surrogateescape")
        except tarfile.TarError as exc:
            raise layer_error(label, exc) from exc
        with tar:
            info = None
            while True:
                try:
                    info = tar.next()
                except tarfile.TarError as exc:
                    if info is not None and _ends_after(stream.tell(), info):
                        return  # ends cleanly after its last member, without the padding (umoci 0.4.7)
                    raise layer_error(label, exc) from exc
                if info is None:
                    return
                tar.members.clear()  # type: ignore[attr-defined]  # else O(members) memory
                if budget is not None:
                    budget.admit(label, info.name, info.size)
                yield tar, info


def _ends_after(length: int, last: tarfile.TarInfo) -> bool:
    """Did the stream hold all of ``last``'s data?  Then only the zero padding after it (to the
    next 512-byte block, and the two end-of-archive blocks) is missing, which tar readers such
    as skopeo's, umoci's and podman's accept; a stream cut inside the data stays an error."""
    return length >= last.offset_data + (last.size if last.isreg() else 0)


def layer_label(index: int, layers: Sequence[Path]) -> str:
    """How a layer is named in messages: its position and the start of its blob name."""
    return f"layer {index + 1}/{len(layers)} ({Path(layers[index]).name[:19]})"


def layer_error(label: str, exc: Exception) -> LayerError:
    return LayerError(f"{label} is not a valid tar archive: {exc}",
                      hint="the layer's digest matched, so the image was built this way: rebuild it "
                           "(e.g. with 'tar' and 'umoci raw add-layer') and push it again")


def header_of(info: tarfile.TarInfo) -> Header:
    """The planner's view of a tar header (names back to raw bytes)."""
    return Header(
        name=info.name.encode("utf-8", "surrogateescape"),
        kind=_kind_of(info),
        mode=info.mode & 0o7777,
        mtime_ns=_mtime_ns(info.mtime),
        size=info.size if info.isreg() else 0,
        linkname=info.linkname.encode("utf-8", "surrogateescape"),
        has_xattrs=any(key.startswith(XATTR_PAX_PREFIXES) for key in info.pax_headers),
    )


def _kind_of(info: tarfile.TarInfo) -> MemberKind:
    if info.isreg():  # regular, old-style regular, contiguous, GNU/PAX sparse
        return MemberKind.FILE
    if info.isdir():
        return MemberKind.DIR
    if info.issym():
        return MemberKind.SYMLINK
    if info.islnk():
        return MemberKind.HARDLINK
    if info.ischr() or info.isblk():
        return MemberKind.DEVICE
    if info.isfifo():
        return MemberKind.FIFO
    return MemberKind.OTHER


def _mtime_ns(mtime: float) -> int | None:
    # PAX mtimes are decimal strings: NaN, infinities and absurd values are possible.
    if not math.isfinite(mtime):
        return None
    ns = int(mtime * 1_000_000_000) if isinstance(mtime, float) else int(mtime) * 1_000_000_000
    return max(-MTIME_LIMIT_NS, min(MTIME_LIMIT_NS, ns))
