"""Thin executor: carries out the planner's operations under one root directory.

Security model.  The planner hands over paths in which every prefix is, by its model, a
plain directory.  We still never trust that: every directory is opened *relative to its
parent's file descriptor* with O_NOFOLLOW|O_DIRECTORY (the openat-style walk that
umoci's SecureJoin, Charliecloud and crun's RESOLVE_IN_ROOT approximate).  So:

* a symlink anywhere on the way (planted by a layer, or by a planner bug) makes the open
  fail with ELOOP instead of being followed out of the tree;
* '..' or '/' can never appear in a name (checked again here, cheaply);
* the last component is created with O_CREAT|O_EXCL|O_NOFOLLOW / mkdirat / symlinkat /
  linkat without AT_SYMLINK_FOLLOW, none of which follow a symlink at the leaf, and an
  existing leaf is an error (the planner removes it first: we never write into an
  existing inode, which also keeps hard links from lower layers intact);
* removal of a tree is fd-based and does not follow symlinks (shutil.rmtree with dir_fd).

A disagreement between model and disk is a bug or tampering: it raises, never guesses.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path
from typing import IO

from shifter.errors import DISK_FULL_HINT, DiskFullError, LayerError, StoreError
from shifter.unpack.planner import (
    MakeDir,
    MakeLink,
    MakeSymlink,
    Op,
    RelPath,
    Remove,
    SetDirMeta,
    WriteFile,
    show,
)

CHUNK = 1 << 20
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: Directories stay private and writable while we fill them; final modes come at the end.
WORK_DIR_MODE = 0o700
FD_CACHE = 64


def _check_name(name: bytes) -> bytes:
    # Defence in depth: the planner never produces these, and the fd walk would refuse a
    # symlink anyway, but a name with '/' or '..' would let openat() leave the parent.
    if not name or b"/" in name or name in (b".", b"..") or b"\0" in name:
        raise LayerError(f"refusing unsafe path component {name!r}",
                         hint="this is a bug in shifter's layer planner; please report it")
    return name


class Executor:
    """Applies operations under ``root`` (an existing, empty directory)."""

    def __init__(self, root: Path) -> None:
        self._root = root
        try:
            self._root_fd = os.open(root, DIR_FLAGS)
        except OSError as exc:
            raise StoreError(f"cannot open flatten destination {root}: {exc.strerror}",
                             hint="the destination must be an existing directory, not a symlink") from exc
        # Small cache of open parent directories: tar members come grouped by directory,
        # so this saves most of the per-component openat() calls.  Cleared whenever a
        # directory is removed (a cached fd could otherwise point into a deleted tree).
        self._dirs: dict[RelPath, int] = {}

    def close(self) -> None:
        """Close every descriptor this executor holds."""
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- dispatch
    def apply(self, op: Op, data: IO[bytes] | None = None) -> None:
        """Carry out one operation; ``data`` is the member's content for WriteFile."""
        try:
            self._apply(op, data)
        except OSError as exc:
            raise _write_error(op, exc) from exc

    def _apply(self, op: Op, data: IO[bytes] | None) -> None:
        if isinstance(op, WriteFile):
            self._write_file(op, data)
        elif isinstance(op, MakeDir):
            parent, name = self._parent(op.path)
            os.mkdir(name, WORK_DIR_MODE, dir_fd=parent)
        elif isinstance(op, Remove):
            self._remove(op.path)
        elif isinstance(op, MakeSymlink):
            parent, name = self._parent(op.path)
            os.symlink(op.target, name, dir_fd=parent)
            if op.mtime_ns is not None:
                os.utime(name, ns=(op.mtime_ns, op.mtime_ns), dir_fd=parent, follow_symlinks=False)
        elif isinstance(op, MakeLink):
            src_parent, src_name = self._parent(op.target)
            parent, name = self._parent(op.path)
            # follow_symlinks=False: linkat() without AT_SYMLINK_FOLLOW links the entry itself.
            try:
                os.link(src_name, name, src_dir_fd=src_parent, dst_dir_fd=parent, follow_symlinks=False)
            except OSError as exc:
                if exc.errno != errno.EMLINK:
                    raise
                self._copy_entry(src_parent, src_name, parent, name)
        else:
            self._set_dir_meta(op)

    # ----------------------------------------------------------------- operations
    @staticmethod
    def _copy_entry(src_parent: int, src_name: bytes, parent: int, name: bytes) -> None:
        """A hard link past the file system's limit (EMLINK: 65,000 on ext4): write a copy instead.
        The image's content is the same (squashfs deduplicates the data); only the link count
        differs.  The source is opened without following a symlink at its leaf; a symlink is
        copied as a symlink."""
        st = os.stat(src_name, dir_fd=src_parent, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src_name, dir_fd=src_parent), name, dir_fd=parent)
            os.utime(name, ns=(st.st_mtime_ns, st.st_mtime_ns), dir_fd=parent, follow_symlinks=False)
            return
        src = os.open(src_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_parent)
        try:
            fd = os.open(name, FILE_FLAGS, 0o600, dir_fd=parent)
            try:
                with os.fdopen(os.dup(src), "rb") as reader:
                    _copy(reader, fd)
                os.fchmod(fd, stat.S_IMODE(st.st_mode))
                os.utime(fd, ns=(st.st_mtime_ns, st.st_mtime_ns))
            finally:
                os.close(fd)
        finally:
            os.close(src)

    def _write_file(self, op: WriteFile, data: IO[bytes] | None) -> None:
        parent, name = self._parent(op.path)
        # O_EXCL|O_NOFOLLOW: a file, symlink or anything else at the leaf is an error, so
        # content can only ever land in a brand-new inode inside the tree.
        fd = os.open(name, FILE_FLAGS, 0o600, dir_fd=parent)
        try:
            if op.size and data is not None:
                _copy(data, fd)
            # Mode after the data (a write by a non-root owner would clear setuid anyway),
            # times last (writes bump mtime).
            os.fchmod(fd, op.mode)
            if op.mtime_ns is not None:
                os.utime(fd, ns=(op.mtime_ns, op.mtime_ns))
        finally:
            os.close(fd)

    def _remove(self, path: RelPath) -> None:
        parent, name = self._parent(path)
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=parent)
            return
        self._drop_cache(path)
        # fd-based, never follows symlinks; depth is bounded by the policy (max_depth).
        shutil.rmtree(name, dir_fd=parent)

    def _set_dir_meta(self, op: SetDirMeta) -> None:
        fd = self._dir(op.path)
        os.fchmod(fd, op.mode)
        if op.mtime_ns is not None:
            os.utime(fd, ns=(op.mtime_ns, op.mtime_ns))

    # ----------------------------------------------------------------- the safe walk
    def _parent(self, path: RelPath) -> tuple[int, bytes]:
        if not path:
            raise LayerError("operation on the image root itself",
                             hint="this is a bug in shifter's layer planner; please report it")
        return self._dir(path[:-1]), _check_name(path[-1])

    def _dir(self, path: RelPath) -> int:
        """fd of directory ``path``, walked one O_NOFOLLOW openat() at a time."""
        if not path:
            return self._root_fd
        fd = self._dirs.get(path)
        if fd is not None:
            return fd
        parent = self._dir(path[:-1])  # depth bounded by policy.max_depth
        fd = os.open(_check_name(path[-1]), DIR_FLAGS, dir_fd=parent)
        if len(self._dirs) >= FD_CACHE:
            self._evict()
        self._dirs[path] = fd
        return fd

    def _evict(self) -> None:
        # Drop the oldest half; parents are re-opened on demand.
        for key in list(self._dirs)[: FD_CACHE // 2]:
            os.close(self._dirs.pop(key))

    def _drop_cache(self, path: RelPath) -> None:
        n = len(path)
        for key in [k for k in self._dirs if k[:n] == path]:
            os.close(self._dirs.pop(key))


def _copy(src: IO[bytes], fd: int) -> None:
    """Stream ``src`` into ``fd`` in 1 MiB steps, handling short writes."""
    while chunk := src.read(CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]


def _write_error(op: Op, exc: OSError) -> Exception:
    where = show(op.path)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"no space left while writing '/{where}' of the flattened image",
                             hint=DISK_FULL_HINT)
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST, errno.ENOENT):
        # The disk does not look like the plan: never resolve that by following a link.
        return LayerError(f"refusing to write '/{where}': the tree on disk does not match the plan "
                          f"({exc.strerror})",
                          hint="the destination was modified while flattening; pull again")
    return StoreError(f"cannot write '/{where}' of the flattened image: {exc.strerror}",
                      hint="check the image store's file system and permissions")
