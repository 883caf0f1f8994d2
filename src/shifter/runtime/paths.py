"""Path helpers for joining container paths under a root without ever escaping it.

``resolve_in_root`` has the semantics of Go's ``filepath-securejoin`` (``SecureJoin``) and of
``openat2(RESOLVE_IN_ROOT)``: every symlink met on the way is resolved *as if* ``root`` were
``/``, and ``..`` never climbs above ``root``.  The result is a host path under ``root``.

These helpers are pure lookups and therefore racy by nature (a component can be swapped for a
symlink after we looked).  They are used to *plan*; the privileged edge must re-check at the
moment it acts (open the final component with ``O_NOFOLLOW``/``O_PATH`` and verify the
``/proc/self/fd`` path is still under the root) — see ``shifter.runtime.linux``.

Stdlib only: this module is on the launch path.
"""

from __future__ import annotations

import errno
import os
import stat

from shifter.errors import ContainerError, VolumeError

MAX_SYMLINKS = 255  # the same limit the kernel's path walk uses (MAXSYMLINKS is 40; 255 for openat2)

TYPE_CHECKING = False  # typing, collections: not on the launch path
if TYPE_CHECKING:
    from collections.abc import Callable

    # What a symlink leads to: the components resolved so far, and the target's components to walk next.
    _Step = tuple[list[str], list[str]]
    _Follow = Callable[[list[str], str, str], _Step | str]


def container_path_parts(path: str) -> list[str]:
    """Split an absolute-or-relative container path into components, dropping ``""`` and ``"."``.

    ``..`` components are kept (callers decide what they mean).  NUL bytes are refused.
    """
    if "\0" in path:
        raise ContainerError(f"path {path!r} contains a NUL byte")
    return [part for part in path.split("/") if part not in ("", ".")]


def normalize_container_path(path: str) -> str:
    """Return the canonical absolute form of a container path, refusing ``..`` and relative paths."""
    if not path.startswith("/"):
        raise ContainerError(f"container path {path!r} is not absolute")
    parts = container_path_parts(path)
    if ".." in parts:
        raise ContainerError(f"container path {path!r} contains a '..' component")
    return "/" + "/".join(parts)


def resolve_in_root(root: str | os.PathLike[str], path: str) -> str:
    """Resolve ``path`` inside ``root`` as if ``root`` were ``/``; never leaves ``root``.

    Symlinks are followed with the link target re-interpreted inside ``root`` (an absolute
    target restarts at ``root``; ``..`` stops at ``root``).  Components that do not exist are
    appended literally, so the result may name a path that does not exist yet.  Raises
    :class:`ContainerError` on a symlink loop.
    """
    root_str = os.path.abspath(os.fspath(root))

    def follow(resolved: list[str], part: str, target: str) -> _Step:
        return ([] if target.startswith("/") else resolved), container_path_parts(target)

    walked = _walk(root_str, path, follow, loop_hint="the image contains a symlink loop")
    assert not isinstance(walked, str)  # ``follow`` never stops the walk
    return _join(root_str, walked)


def find_escaping_symlink(root: str | os.PathLike[str], path: str) -> str | None:
    """Return the first symlink on ``path`` whose target, read the way the host kernel would
    follow it (before any chroot), points outside ``root``; ``None`` if there is none.

    An absolute link target is a host path when a mount is made from outside the container,
    so it counts as escaping unless it textually lies under ``root``; a relative target
    escapes when its ``..`` components climb above ``root``.  The returned string names the
    link as a container path, for error messages.
    """
    root_str = os.path.abspath(os.fspath(root))

    def follow(resolved: list[str], part: str, target: str) -> _Step | str:
        link_name = "/" + "/".join([*resolved, part])
        if target.startswith("/"):
            if not _is_under(os.path.normpath(target), root_str):
                return link_name
            return [], container_path_parts(os.path.relpath(os.path.normpath(target), root_str))
        if _climbs_out(resolved, container_path_parts(target)):
            return link_name
        return resolved, container_path_parts(target)

    walked = _walk(root_str, path, follow, climb_out="/")  # a path that itself climbs out escapes
    return walked if isinstance(walked, str) else None


def check_no_escaping_symlink(root: str | os.PathLike[str], path: str) -> None:
    """Raise :class:`VolumeError` if a symlink on ``path`` inside ``root`` points outside it."""
    link = find_escaping_symlink(root, path)
    if link is not None:
        raise VolumeError(f"{path} in the image goes through symlink {link}, which points outside "
                          "the container", hint="choose a mount target that is not (behind) such a symlink")


def is_under(path: str, root: str) -> bool:
    """True if the absolute host ``path`` equals ``root`` or lies below it (lexically)."""
    return _is_under(os.path.normpath(path), os.path.normpath(root))


def _is_under(path: str, root: str) -> bool:
    if root == "/":
        return path.startswith("/")
    return path == root or path.startswith(root + "/")


def _climbs_out(resolved: list[str], target_parts: list[str]) -> bool:
    depth = len(resolved)
    for part in target_parts:
        depth = depth - 1 if part == ".." else depth + 1
        if depth < 0:
            return True
    return False


def _walk(root_str: str, path: str, follow: _Follow, *, climb_out: str | None = None,
          loop_hint: str = "") -> list[str] | str:
    """Walk ``path`` inside ``root_str`` component by component; return the components reached.

    At each symlink, ``follow(resolved, part, target)`` returns either the components resolved
    so far and the target's components to walk next, or a string that stops the walk and is
    returned.  ``..`` stops at ``root_str``, or returns ``climb_out`` there when it is given.
    Raises :class:`ContainerError` after :data:`MAX_SYMLINKS` links (a loop).
    """
    pending = container_path_parts(path)
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if not resolved and climb_out is not None:
                return climb_out
            if resolved:
                resolved.pop()
            continue
        target = _readlink_or_none(_join(root_str, [*resolved, part]))
        if target is None:
            resolved.append(part)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise ContainerError(f"too many levels of symbolic links resolving {path!r} in {root_str}",
                                 hint=loop_hint)
        step = follow(resolved, part, target)
        if isinstance(step, str):
            return step
        resolved, more = step
        pending = more + pending
    return resolved


def _join(root: str, parts: list[str]) -> str:
    if not parts:
        return root
    return root.rstrip("/") + "/" + "/".join(parts)


def _readlink_or_none(path: str) -> str | None:
    """The link target if ``path`` is a symlink; ``None`` if it is anything else or missing."""
    try:
        st = os.lstat(path)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise ContainerError(f"cannot inspect {path}: {err.strerror}") from None
    if not stat.S_ISLNK(st.st_mode):
        return None
    return os.readlink(path)


__all__ = ["MAX_SYMLINKS", "check_no_escaping_symlink", "container_path_parts", "find_escaping_symlink",
           "is_under", "normalize_container_path", "resolve_in_root"]
