"""Race-free path handling for the executor: everything by file descriptor.

Why fds: a path checked and then used by name can be swapped for a symlink in between (the
user owns volume sources and, in a local chroot, the image).  We open each object once with
``O_PATH`` and hand the kernel ``/proc/self/fd/N`` as the mount source or target, so the
object we checked is the object we mount.  Container paths are resolved with
``openat2(RESOLVE_IN_ROOT)``: the kernel follows symlinks as if the container root were
``/``, so no link in an image can lead a mount outside the container.
"""

from __future__ import annotations

import errno
import os
import stat

from shifter.runtime.linux import syscalls as sc
from shifter.runtime.paths import container_path_parts

PATH_FLAGS = sc.O_PATH | os.O_CLOEXEC
_IN_ROOT = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS


def fd_path(fd: int) -> str:
    """The magic-link path the kernel resolves to exactly the object behind ``fd``."""
    return f"/proc/self/fd/{fd}"


def bind_entry(src_dir: int, name: str, dst_dir: int, *, special_files: bool = True) -> None:
    """Re-create entry ``name`` of ``src_dir`` in ``dst_dir``: a link as a link, anything else as
    a recursive bind of the original onto an empty placeholder created with ``O_EXCL``.

    A link is copied as a link: it is resolved later inside the container.  With
    ``special_files=False`` devices, fifos and sockets are not carried over.
    """
    src = os.open(name, PATH_FLAGS | os.O_NOFOLLOW, dir_fd=src_dir)
    try:
        mode = os.fstat(src).st_mode
        if stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=src_dir), name, dir_fd=dst_dir)
            return
        if stat.S_ISDIR(mode):
            os.mkdir(name, 0o755, dir_fd=dst_dir)
        elif stat.S_ISREG(mode) or special_files:
            os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                             dir_fd=dst_dir))
        else:
            return
        dst = os.open(name, PATH_FLAGS | os.O_NOFOLLOW, dir_fd=dst_dir)
        try:
            sc.mount(fd_path(src), fd_path(dst), None, sc.MS_BIND | sc.MS_REC)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def open_in_root(root_fd: int, path: str, flags: int = PATH_FLAGS) -> int:
    """Open container ``path`` below ``root_fd``; symlinks never leave the root.

    Uses ``openat2(RESOLVE_IN_ROOT)``; on kernels without it (< 5.6) walks the components
    itself with ``O_NOFOLLOW``, re-rooting absolute links and clamping ``..`` at the root.
    """
    rel = "/".join(container_path_parts(path)) or "."
    try:
        return sc.openat2(root_fd, rel, flags, _IN_ROOT)
    except OSError as err:
        if err.errno != errno.ENOSYS:
            raise
    return _walk_in_root(root_fd, container_path_parts(path), flags)


def _walk_in_root(root_fd: int, parts: list[str], flags: int) -> int:
    stack = [os.dup(root_fd)]
    links = 0
    try:
        while parts:
            part = parts.pop(0)
            if part == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            fd = os.open(part, PATH_FLAGS | os.O_NOFOLLOW, dir_fd=stack[-1])
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                target = os.readlink(part, dir_fd=stack[-1])
                os.close(fd)
                links += 1
                if links > 40:
                    raise OSError(errno.ELOOP, "too many symbolic links", part)
                if target.startswith("/"):
                    for extra in stack[1:]:
                        os.close(extra)
                    del stack[1:]
                parts = container_path_parts(target) + parts
                continue
            stack.append(fd)
        final = os.open(".", flags, dir_fd=stack[-1]) if flags != PATH_FLAGS else os.dup(stack[-1])
        return final
    finally:
        for fd in stack:
            os.close(fd)


def open_chain(parent: int, names: list[str], what: str) -> int:
    """An ``O_PATH`` fd of ``names`` below directory fd ``parent``, one component at a time,
    following no symlink: ``ELOOP`` (naming ``what``) for a symlink, ``EXDEV`` for ``.``/``..``.
    The walk for kernels without ``openat2`` (< 5.6) and for trees we just made."""
    current = os.dup(parent)
    try:
        for name in names:
            if name in (".", ".."):
                raise OSError(errno.EXDEV, f"unexpected component in {what}", name)
            nxt = os.open(name, PATH_FLAGS | os.O_NOFOLLOW, dir_fd=current)
            os.close(current)
            current = nxt
            if stat.S_ISLNK(os.fstat(current).st_mode):
                raise OSError(errno.ELOOP, f"{what} is a symlink", name)
        found, current = current, -1
        return found
    finally:
        if current >= 0:
            os.close(current)


def real_path(fd: int) -> str:
    """Where ``fd`` really is (the kernel's view, for checks and messages)."""
    return os.readlink(fd_path(fd))
