"""Pure planner: tar headers in, filesystem operations out.  No I/O at all.

The planner keeps a model of the tree built so far (names, types, symlink targets and
which layer last touched each node) and turns every tar member into a short list of
operations on *resolved* paths.  A resolved path is a tuple of names in which every
prefix is, in the model, a real directory: never a symlink.  The executor can therefore
walk it with O_NOFOLLOW and must fail if the disk disagrees; it never has to interpret a
symlink itself.

Semantics follow ``umoci unpack`` (OCI image-spec "applying changesets"):

* names are cleaned lexically under the root, like Go's ``filepath.Clean("/" + name)``:
  ``/a/../../b`` becomes ``b``; nothing can name a path above the root;
* the *parent* of a member is resolved like filepath-securejoin: symlinks are followed,
  but inside the image tree only (an absolute target restarts at the image root, ``..``
  stops at the root), at most 255 hops.  So ``evil -> /etc`` then ``evil/x`` writes the
  image's own ``etc/x``, exactly as umoci and Docker do, and never the host's;
* the member's own name is never followed: whatever is there (file, symlink, directory
  tree) is removed first, except a directory that is replaced by a directory (merged);
* ``.wh.NAME`` removes NAME and ``.wh..wh..opq`` empties its directory, but only of what
  *lower* layers put there: anything this layer already wrote (or created as a parent)
  survives, as the spec requires;
* device nodes and FIFOs clobber what was there and then are dropped (policy).

Besides operations, the model can describe the *final* tree (:meth:`Planner.final_entries`):
every path with its type, final mode and mtime, and for files and symlinks the
:class:`Inode` it names, which records the member (layer, ordinal) that supplies the
content.  Hard links share one Inode, exactly as they share one inode on disk.  The
streaming converter (``shifter.convert.stream``) builds a squashfs from that without ever
writing the tree to disk.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from shifter.unpack.policy import FlattenPolicy
from shifter.unpack.report import FlattenReport

RelPath = tuple[bytes, ...]

WH_PREFIX = b".wh."
WH_OPAQUE = b".wh..wh..opq"
WH_META = b".wh..wh."  # other aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): ignored
MAX_SYMLINK_HOPS = 255  # filepath-securejoin's limit: same answers as umoci on chains
NAME_MAX = 255


class MemberKind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    DEVICE = "device"
    FIFO = "fifo"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Header:
    """The parts of a tar header the planner needs (names are raw bytes)."""

    name: bytes
    kind: MemberKind
    mode: int = 0o644
    mtime_ns: int | None = None
    size: int = 0
    linkname: bytes = b""
    has_xattrs: bool = False


# --------------------------------------------------------------------------- operations
@dataclass(frozen=True, slots=True)
class MakeDir:
    path: RelPath


@dataclass(frozen=True, slots=True)
class Remove:
    path: RelPath


@dataclass(frozen=True, slots=True)
class WriteFile:
    """Create ``path`` (it does not exist) from the current member's data."""

    path: RelPath
    mode: int
    mtime_ns: int | None
    size: int


@dataclass(frozen=True, slots=True)
class MakeSymlink:
    path: RelPath
    target: bytes
    mtime_ns: int | None


@dataclass(frozen=True, slots=True)
class MakeLink:
    path: RelPath
    target: RelPath


@dataclass(frozen=True, slots=True)
class SetDirMeta:
    path: RelPath
    mode: int
    mtime_ns: int | None


Op = MakeDir | Remove | WriteFile | MakeSymlink | MakeLink | SetDirMeta


# --------------------------------------------------------------------------- final tree
@dataclass(slots=True, eq=False)
class Inode:
    """The inode a file or symlink path names: every hard link to it shares this object.

    ``layer``/``member``: the member (0-based ordinal within its layer's tar stream, as
    counted by :meth:`Planner.plan` calls) that created it and, for a file, supplies its
    content.  ``mode`` is final (policy applied); a write never reuses an inode, so none
    of this changes after creation.
    """

    layer: int
    member: int
    mode: int
    mtime_ns: int | None
    size: int = 0


@dataclass(frozen=True, slots=True)
class FinalEntry:
    """One path of the final tree (see :meth:`Planner.final_entries`).

    ``kind`` is DIR, FILE or SYMLINK; ``mode`` is final for directories and files
    (``0o777`` for symlinks); ``inode`` is None for directories; ``target`` is the symlink
    target.
    """

    path: RelPath
    kind: MemberKind
    mode: int
    mtime_ns: int | None
    target: bytes = b""
    inode: Inode | None = None


# --------------------------------------------------------------------------- model
class _Node:
    """One entry of the model.  ``layer``: last layer that wrote it or created a child
    below it (umoci's "upper paths"), which is what whiteouts must spare."""

    __slots__ = ("children", "inode", "kind", "layer", "mode", "mtime_ns", "target")

    def __init__(self, kind: MemberKind, layer: int, mode: int = 0o755,
                 mtime_ns: int | None = None, target: bytes = b"", *, inode: Inode | None = None) -> None:
        self.kind = kind
        self.layer = layer
        self.mode = mode
        self.mtime_ns = mtime_ns
        self.target = target
        self.inode = inode  # files and symlinks: shared by hard links
        self.children: dict[bytes, _Node] | None = {} if kind is MemberKind.DIR else None


def clean_name(raw: bytes) -> tuple[RelPath, bool]:
    """Lexically clean ``raw`` under the root; True when it was absolute or used '..'."""
    parts: list[bytes] = []
    neutralised = raw.startswith(b"/")
    for comp in raw.split(b"/"):
        if comp in (b"", b"."):
            continue
        if comp == b"..":
            neutralised = True
            if parts:
                parts.pop()  # '..' at the root stays at the root: no escape
            continue
        parts.append(comp)
    return tuple(parts), neutralised


def show(path: bytes | RelPath) -> str:
    """Printable form of a raw name (non-UTF-8 bytes escaped)."""
    raw = path if isinstance(path, bytes) else b"/".join(path)
    return raw.decode("utf-8", "backslashreplace")


class Planner:
    """Turns the members of layers (lowest first) into operations; see module docstring."""

    def __init__(self, policy: FlattenPolicy, report: FlattenReport | None = None) -> None:
        self.policy = policy
        self.report = report if report is not None else FlattenReport()
        self._root = _Node(MemberKind.DIR, -1)
        self._layer = -1
        self._member = -1
        self._label = ""

    def begin_layer(self, index: int, label: str = "") -> None:
        """Start applying layer ``index`` (strictly increasing)."""
        self._layer = index
        self._member = -1
        self._label = label or f"layer {index + 1}"
        self.report.layers += 1

    # ----------------------------------------------------------------- members
    def plan(self, header: Header) -> list[Op]:
        """Operations that apply one member of the current layer.

        Call it exactly once per tar member, in stream order: the calls number the
        members (see :class:`Inode`)."""
        self._member += 1
        parts, neutralised = clean_name(header.name)
        if neutralised:
            self.report.neutralised_names += 1
            self._warn(header.name, f"name neutralised to '/{show(parts)}'")
        if header.has_xattrs:
            self.report.ignored_xattrs += 1
        if not parts:
            return self._plan_root(header)
        if parts[-1].startswith(WH_PREFIX):
            return self._plan_whiteout(header.name, parts[:-1], parts[-1])
        ops: list[Op] = []
        placed = self._prepare_parent(header.name, parts, ops)
        if placed is None:
            return ops
        parent, path = placed
        name = path[-1]
        assert parent.children is not None
        existing = parent.children.get(name)
        if header.kind is MemberKind.DIR and existing is not None and existing.kind is MemberKind.DIR:
            # Directory over directory: merge; the newest entry's metadata wins.
            existing.mode, existing.mtime_ns, existing.layer = header.mode, header.mtime_ns, self._layer
            return ops
        if existing is not None:
            # Clobber: never write *through* what is there (a symlink above all).
            del parent.children[name]
            ops.append(Remove(path))
        self._create(header, parent, path, ops)
        return ops

    def _create(self, header: Header, parent: _Node, path: RelPath, ops: list[Op]) -> None:
        assert parent.children is not None
        kind, layer, name = header.kind, self._layer, path[-1]
        if kind is MemberKind.DIR:
            parent.children[name] = _Node(kind, layer, header.mode, header.mtime_ns)
            ops.append(MakeDir(path))
        elif kind is MemberKind.FILE:
            mode, stripped = self.policy.file_mode(header.mode)
            self.report.stripped_setuid += stripped
            self.report.bytes_written += header.size
            inode = Inode(layer, self._member, mode, header.mtime_ns, header.size)
            parent.children[name] = _Node(kind, layer, inode=inode)
            ops.append(WriteFile(path, mode, header.mtime_ns, header.size))
        elif kind is MemberKind.SYMLINK:
            if not header.linkname:
                self._drop(header.name, "symlink with an empty target")
                return
            inode = Inode(layer, self._member, 0o777, header.mtime_ns)
            parent.children[name] = _Node(kind, layer, target=header.linkname, inode=inode)
            ops.append(MakeSymlink(path, header.linkname, header.mtime_ns))
        elif kind is MemberKind.HARDLINK:
            self._link(header, parent, path, ops)
        elif kind is MemberKind.DEVICE:
            self.report.dropped_devices += 1  # what it replaced is gone, as in umoci
        elif kind is MemberKind.FIFO:
            self.report.dropped_fifos += 1
        else:
            self._drop(header.name, "unsupported tar member type")

    def _link(self, header: Header, parent: _Node, path: RelPath, ops: list[Op]) -> None:
        """Hard link: the target's parent resolves inside the tree, its last component is
        never followed (a link to a symlink links the symlink), and it must be a file or
        symlink already in the tree: never a directory, never anything outside."""
        assert parent.children is not None
        tparts, neutralised = clean_name(header.linkname)
        self.report.neutralised_names += neutralised
        target = self._lookup(tparts)
        if target is None:
            self._drop(header.name, f"hard link to '/{show(tparts)}', which is not in the image")
            return
        tpath, tnode = target
        if tnode.kind not in (MemberKind.FILE, MemberKind.SYMLINK):
            self._drop(header.name, f"hard link to '/{show(tparts)}', which is not a file")
            return
        parent.children[path[-1]] = _Node(tnode.kind, self._layer, target=tnode.target, inode=tnode.inode)
        self.report.hardlinks += 1
        ops.append(MakeLink(path, tpath))

    def _lookup(self, parts: RelPath) -> tuple[RelPath, _Node] | None:
        """An existing entry by name (parent resolved inside the tree, leaf not followed)."""
        if not parts:
            return None
        resolved = self._resolve(parts[:-1])
        if resolved is None:
            return None
        path, nodes = resolved
        parent = nodes[-1] if nodes else self._root
        if parent is None or parent.children is None:
            return None
        node = parent.children.get(parts[-1])
        return ((*path, parts[-1]), node) if node is not None else None

    def _plan_root(self, header: Header) -> list[Op]:
        if header.kind is MemberKind.DIR:
            self._root.mode, self._root.mtime_ns = header.mode, header.mtime_ns
        else:
            # umoci refuses too: turning the root into a symlink would redirect everything.
            self._drop(header.name, "entry for the image root that is not a directory")
        return []

    # ----------------------------------------------------------------- whiteouts
    def _plan_whiteout(self, raw: bytes, dir_parts: RelPath, base: bytes) -> list[Op]:
        ops: list[Op] = []
        if base != WH_OPAQUE and base.startswith(WH_META):
            return ops  # aufs bookkeeping, not a whiteout of anything
        target = base[len(WH_PREFIX):]
        if base != WH_OPAQUE and target in (b"", b".", b".."):
            # '.wh...' would otherwise name the parent directory (or worse, the root's).
            self._drop(raw, "whiteout of an invalid name")
            return ops
        resolved = self._resolve(dir_parts)
        if resolved is None:
            self._drop(raw, "whiteout under a symlink loop")
            return ops
        path, nodes = resolved
        directory = nodes[-1] if nodes else self._root
        if directory is None or directory.children is None:
            return ops  # nothing there to hide (whiteouts never create parents)
        if base == WH_OPAQUE:
            self._purge_lower(directory, tuple(path), ops)
            return ops
        node = directory.children.get(target)
        if node is None:
            return ops
        if node.layer != self._layer:
            del directory.children[target]
            ops.append(Remove((*path, target)))
        elif node.children is not None:
            self._purge_lower(node, (*path, target), ops)
        return ops

    def _purge_lower(self, directory: _Node, path: RelPath, ops: list[Op]) -> None:
        """Remove everything under ``directory`` that the current layer did not touch.
        Iterative: a hostile layer must not be able to exhaust Python's recursion."""
        stack = [(directory, path)]
        while stack:
            node, where = stack.pop()
            assert node.children is not None
            for name, child in list(node.children.items()):
                if child.layer != self._layer:
                    del node.children[name]
                    ops.append(Remove((*where, name)))
                elif child.children is not None:
                    stack.append((child, (*where, name)))

    # ----------------------------------------------------------------- parents
    def _resolve(self, parts: RelPath) -> tuple[list[bytes], list[_Node | None]] | None:
        """Resolve ``parts`` like filepath-securejoin against the model.

        Returns the symlink-free path and, per component, its node (None where it does
        not exist yet).  None on a symlink loop.  Every symlink is followed *inside* the
        tree: an absolute target restarts at the image root, '..' stops at the root.
        """
        pending = list(reversed(parts))
        path: list[bytes] = []
        nodes: list[_Node | None] = []
        hops = 0
        while pending:
            comp = pending.pop()
            if comp in (b"", b"."):
                continue
            if comp == b"..":
                if path:
                    path.pop()
                    nodes.pop()
                continue
            cur = nodes[-1] if nodes else self._root
            child = cur.children.get(comp) if cur is not None and cur.children is not None else None
            if child is not None and child.kind is MemberKind.SYMLINK:
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    return None
                if child.target.startswith(b"/"):
                    path.clear()
                    nodes.clear()
                pending.extend(reversed(child.target.split(b"/")))
                continue
            path.append(comp)
            nodes.append(child)
        return path, nodes

    def _prepare_parent(self, raw: bytes, parts: RelPath, ops: list[Op]) -> tuple[_Node, RelPath] | None:
        """Resolve the parent of ``parts``, create missing directories, mark them touched.
        Returns (parent node, resolved path of the member) or None (member dropped)."""
        resolved = self._resolve(parts[:-1])
        if resolved is None:
            self._drop(raw, "path goes through a symlink loop")
            return None
        dirs, nodes = resolved
        path = (*dirs, parts[-1])
        problem = self._check_path(path, nodes)
        if problem:
            self._drop(raw, problem)
            return None
        node = self._root
        for i, name in enumerate(dirs):
            assert node.children is not None
            child = nodes[i]
            if child is None:
                child = node.children[name] = _Node(MemberKind.DIR, self._layer)
                ops.append(MakeDir(path[: i + 1]))
            child.layer = self._layer
            node = child
        return node, path

    def _check_path(self, path: RelPath, nodes: list[_Node | None]) -> str:
        if any(n is not None and n.kind is not MemberKind.DIR for n in nodes):
            return "a parent directory is a file in the image"
        if len(path) > self.policy.max_depth:
            return f"deeper than {self.policy.max_depth} directories"
        if sum(len(p) + 1 for p in path) > self.policy.max_path_bytes:
            return f"path longer than {self.policy.max_path_bytes} bytes"
        if any(len(p) > NAME_MAX for p in path):
            return f"a name is longer than {NAME_MAX} bytes"
        return ""

    # ----------------------------------------------------------------- the end
    def finish(self) -> list[Op]:
        """Directory metadata (after all writes, so mtimes stick) and the final counts.
        Children come before parents: a directory made read-only last stays writable
        while its children are fixed up."""
        pre_order: list[tuple[RelPath, _Node]] = []
        stack: list[tuple[RelPath, _Node]] = [((), self._root)]
        report = self.report
        while stack:
            path, node = stack.pop()
            pre_order.append((path, node))
            assert node.children is not None
            for name, child in node.children.items():
                if child.children is not None:
                    stack.append(((*path, name), child))
                elif child.kind is MemberKind.SYMLINK:
                    report.symlinks += 1
                else:
                    report.files += 1
        report.directories = len(pre_order) - 1
        ops: list[Op] = []
        for path, node in reversed(pre_order):
            mode, stripped = self.policy.dir_mode(node.mode)
            report.stripped_setuid += stripped
            ops.append(SetDirMeta(path, mode, node.mtime_ns))
        return ops

    def final_entries(self) -> Iterator[FinalEntry]:
        """The final tree, root first, every directory before its children.

        Pure and repeatable (it does not touch the report; :meth:`finish` does).  Memory:
        one stack of pending directories, never a copy of the tree.
        """
        root = self._root
        yield FinalEntry((), MemberKind.DIR, self.policy.dir_mode(root.mode)[0], root.mtime_ns)
        stack: list[tuple[RelPath, _Node]] = [((), root)]
        while stack:
            path, node = stack.pop()
            assert node.children is not None
            for name, child in node.children.items():
                where = (*path, name)
                if child.children is not None:
                    yield FinalEntry(where, MemberKind.DIR, self.policy.dir_mode(child.mode)[0],
                                     child.mtime_ns)
                    stack.append((where, child))
                else:
                    assert child.inode is not None
                    yield FinalEntry(where, child.kind, child.inode.mode, child.inode.mtime_ns,
                                     child.target, child.inode)

    def _drop(self, raw: bytes, why: str) -> None:
        self.report.dropped_other += 1
        self._warn(raw, f"dropped: {why}")

    def _warn(self, raw: bytes, message: str) -> None:
        self.report.warn(f"{self._label}: {show(raw)}: {message}")
