"""Flatten layers into ONE tar stream instead of a tree on disk (see docs/layer-policy.md).

Two streaming passes over the layer blobs::

    pass 1  headers only (data skipped) -> the pure planner
            -> the final tree: every path's type, final mode, mtime, symlink target, and
               for files the Inode naming the (layer, member) that supplies the content
    pass 2  one PAX tar: the root and every directory first (parents before children),
            then symlinks, then, reading the layers again in order, each winning file
            member followed by its other hard links

Semantics and policy are the planner's, so the stream describes exactly the tree that
``flatten()`` writes (tests/integration/test_convert_stream.py checks that on the hostile
layer sets).  Names in the stream are the planner's resolved paths: no '..', no absolute
names, no symlink in any parent, so a consumer (tar2sqfs) has nothing to resolve.  Pass 2
stops reading a layer after its last winning member and skips layers with none.  Memory:
the planner's model of paths, one member header and a 1 MiB copy buffer; never file data.
"""

from __future__ import annotations

import contextlib
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from shifter.errors import LayerError
from shifter.unpack.compression import CHUNK
from shifter.unpack.flatten import PhaseSink, header_of, iter_members, layer_error, layer_label
from shifter.unpack.planner import FinalEntry, Inode, MemberKind, Planner, RelPath
from shifter.unpack.policy import FlattenPolicy, ImageBudget
from shifter.unpack.report import FlattenReport

#: squashfs stores 32-bit unsigned seconds: mtimes are clamped to that range.
MTIME_MAX = 2**32 - 1


@dataclass
class StreamPlan:
    """The final tree of an image (pass 1), ready to be streamed (pass 2)."""

    planner: Planner
    report: FlattenReport
    #: (layer, member ordinal) -> (the inode it supplies, its paths; the first gets the data)
    sources: dict[tuple[int, int], tuple[Inode, list[RelPath]]] = field(default_factory=dict)
    #: per layer, the ordinal of its last winning member (-1: nothing to read)
    last_member: list[int] = field(default_factory=list)
    max_dir_entries: int = 0


# --------------------------------------------------------------------------- reading layers
# --------------------------------------------------------------------------- pass 1
def plan_stream(layers: Sequence[Path], policy: FlattenPolicy | None = None,
                progress: PhaseSink | None = None) -> StreamPlan:
    """Pass 1: read every layer's headers (data skipped) and compute the final tree."""
    planner = Planner(policy or FlattenPolicy())
    budget = ImageBudget(planner.policy)  # pass 1 enforces the limits: pass 2 writes nothing before
    for index, layer in enumerate(layers):
        label = layer_label(index, layers)
        if progress is not None:
            progress.phase("plan", f"reading the headers of {label}")
        planner.begin_layer(index, label)
        with contextlib.closing(iter_members(Path(layer), label, planner.report, budget)) as members:
            for _tar, info in members:
                planner.plan(header_of(info))
    planner.finish()  # the counts (and setuid stripped from directories) in the report
    plan = StreamPlan(planner, planner.report, last_member=[-1] * len(layers))
    _index_sources(plan)
    return plan


def _index_sources(plan: StreamPlan) -> None:
    """Group file paths by inode, note each layer's last winning member, size directories."""
    entries_per_dir: dict[RelPath, int] = {}
    for entry in plan.planner.final_entries():
        if entry.path:
            parent = entry.path[:-1]
            entries_per_dir[parent] = entries_per_dir.get(parent, 0) + 1
        if entry.kind is not MemberKind.FILE or entry.inode is None:
            continue
        key = (entry.inode.layer, entry.inode.member)
        if key in plan.sources:
            plan.sources[key][1].append(entry.path)
        else:
            plan.sources[key] = (entry.inode, [entry.path])
            plan.last_member[entry.inode.layer] = max(plan.last_member[entry.inode.layer], entry.inode.member)
    plan.max_dir_entries = max(entries_per_dir.values(), default=0)


# --------------------------------------------------------------------------- pass 2
def _name(path: RelPath) -> str:
    return b"/".join(path).decode("utf-8", "surrogateescape") if path else "."


def _info(path: RelPath, kind: bytes, mode: int, mtime: int, *, size: int = 0,
          link: bytes | RelPath = b"") -> tarfile.TarInfo:
    info = tarfile.TarInfo(_name(path))
    info.type, info.mode, info.mtime, info.size = kind, mode, mtime, size
    info.uid = info.gid = 0  # the policy: everything owned by root
    info.uname = info.gname = ""
    raw = link if isinstance(link, bytes) else b"/".join(link)
    info.linkname = raw.decode("utf-8", "surrogateescape")
    return info


def write_tar(plan: StreamPlan, layers: Sequence[Path], sink: IO[bytes],
              progress: PhaseSink | None = None) -> None:
    """Pass 2: write the final tree of ``plan`` as one PAX tar stream to ``sink``."""
    # Mode "w" over a counting writer, not the stream mode "w|": tarfile's stream mode
    # concatenates every chunk into its own buffer (a second copy of all the data).
    with tarfile.TarFile(fileobj=_Counting(sink), mode="w", format=tarfile.PAX_FORMAT,  # type: ignore[arg-type]
                         encoding="utf-8", errors="surrogateescape", copybufsize=CHUNK) as tar:
        out = _TarOut(tar, int(time.time()))
        for entry in plan.planner.final_entries():
            out.skeleton(entry)
        for index, layer in enumerate(layers):
            if plan.last_member[index] < 0:
                continue  # nothing of this layer survives: do not even open it
            label = layer_label(index, layers)
            if progress is not None:
                progress.phase("stream", f"streaming the files of {label}")
            _copy_layer(plan, index, Path(layer), label, out)


class _Counting:
    """A forward-only writer with ``tell()``: all tarfile's "w" mode needs of a pipe."""

    def __init__(self, sink: IO[bytes]) -> None:
        self._sink = sink
        self._pos = 0

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:  # an unbuffered pipe may take less than it was given
            view = view[self._sink.write(view) or 0:]
        self._pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self._pos


class _TarOut:
    """The output side: TarInfo records for the final tree, root-owned, clamped mtimes."""

    def __init__(self, tar: tarfile.TarFile, now: int) -> None:
        self.tar = tar
        self.now = now
        self._first_symlink: dict[int, RelPath] = {}  # id(inode) -> its first path

    def skeleton(self, entry: FinalEntry) -> None:
        """Directories and symlinks (no layer data needed); files come from the layers."""
        mtime = self._seconds(entry.mtime_ns)
        if entry.kind is MemberKind.DIR:
            self.add(_info(entry.path, tarfile.DIRTYPE, entry.mode, mtime))
        elif entry.kind is MemberKind.SYMLINK:
            assert entry.inode is not None
            first = self._first_symlink.setdefault(id(entry.inode), entry.path)
            if first != entry.path:  # a hard link to a symlink links the symlink
                self.add(_info(entry.path, tarfile.LNKTYPE, 0o777, mtime, link=first))
            else:
                self.add(_info(entry.path, tarfile.SYMTYPE, 0o777, mtime, link=entry.target))

    def file(self, inode: Inode, paths: list[RelPath], data: IO[bytes] | None) -> None:
        """One file's content under its first path, then its other hard links."""
        mtime = self._seconds(inode.mtime_ns)
        self.add(_info(paths[0], tarfile.REGTYPE, inode.mode, mtime, size=inode.size), data)
        for other in paths[1:]:
            self.add(_info(other, tarfile.LNKTYPE, inode.mode, mtime, link=paths[0]))

    def add(self, info: tarfile.TarInfo, data: IO[bytes] | None = None) -> None:
        self.tar.addfile(info, data)
        self.tar.members.clear()  # type: ignore[attr-defined]  # the writer keeps every TarInfo otherwise

    def _seconds(self, mtime_ns: int | None) -> int:
        # None: the layer gave no usable mtime; the tree path leaves "now" there too.
        if mtime_ns is None:
            return self.now
        return max(0, min(MTIME_MAX, mtime_ns // 1_000_000_000))


def _copy_layer(plan: StreamPlan, index: int, layer: Path, label: str, out: _TarOut) -> None:
    """Copy this layer's winning members (and their hard links) into ``out``."""
    last = plan.last_member[index]
    with contextlib.closing(iter_members(layer, label, plan.report)) as members:
        for ordinal, (tar, info) in enumerate(members):
            found = plan.sources.get((index, ordinal))
            if found is not None:
                inode, paths = found
                # The blob is content-addressed and read-only; still, never stream a
                # different member than the one planned.
                if not info.isreg() or info.size != inode.size:
                    raise LayerError(f"{label}: member '{info.name}' differs from the first pass",
                                     hint="the layer blob changed during the conversion; pull again")
                try:
                    out.file(inode, paths, tar.extractfile(info))
                except (tarfile.TarError, EOFError) as exc:  # truncated member data
                    raise layer_error(label, exc) from exc
            if ordinal >= last:
                return
    raise LayerError(f"{label} ended before member {last + 1}, which it had in the first pass",
                     hint="the layer blob changed during the conversion; pull again")


__all__ = ["MTIME_MAX", "StreamPlan", "plan_stream", "write_tar"]
