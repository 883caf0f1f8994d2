"""The mounts below a mount, read from ``/proc/self/mountinfo``, and fds naming them.

Used where one flag must differ between the mounts of a bound tree (``/dev`` keeps device nodes
usable on its own mount and on ``devpts``, every other mount below it is ``nodev``), and on
kernels without ``mount_setattr`` (< 5.12), where flags can only be changed one mount at a time.

A submount is reached by its path relative to an fd of the tree's top mount, with no symlink
and no ``..`` leaving it (``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``), and the fd found must be
on the very mount ``mountinfo`` listed (its mount id): a path that changed in between is refused,
never acted on.  Only root-owned trees (``/dev``, ``/proc``, ``/sys``) are walked this way; a user
volume with submounts is never walked (see ``executor._seal_without_setattr``).
"""

from __future__ import annotations

import errno
import os

from shifter._record import Record
from shifter.runtime.linux import fsutil
from shifter.runtime.linux import syscalls as sc

_BENEATH = sc.RESOLVE_BENEATH | sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS


class MountEntry(Record):
    """One line of ``mountinfo``: ids, mount point (unescaped) and file system type."""

    mount_id: int
    parent_id: int
    mountpoint: str
    fstype: str


def _unescape(field: str) -> str:
    r"""``mountinfo`` writes space, tab, newline and backslash as ``\040``, ``\011``, ``\012``, ``\134``."""
    if "\\" not in field:
        return field
    out, index = [], 0
    while index < len(field):
        chunk = field[index:index + 4]
        if len(chunk) == 4 and chunk[0] == "\\" and chunk[1:].isdigit():
            out.append(chr(int(chunk[1:], 8)))
            index += 4
        else:
            out.append(field[index])
            index += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse ``/proc/self/mountinfo`` (``proc(5)``): the optional fields end at ``-``."""
    entries = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) < 10 or "-" not in fields[6:]:
            continue
        dash = fields.index("-", 6)
        entries.append(MountEntry(int(fields[0]), int(fields[1]), _unescape(fields[4]), _unescape(fields[dash + 1])))
    return entries


def descendants(entries: list[MountEntry], top: int) -> tuple[MountEntry | None, list[MountEntry]]:
    """The entry of mount ``top`` and every mount below it (children before grandchildren)."""
    by_parent: dict[int, list[MountEntry]] = {}
    found = None
    for entry in entries:
        if entry.mount_id == top:
            found = entry
        elif entry.parent_id != entry.mount_id:
            by_parent.setdefault(entry.parent_id, []).append(entry)
    below: list[MountEntry] = []
    queue = [top]
    while queue:
        children = by_parent.get(queue.pop(0), [])
        below += children
        queue += [child.mount_id for child in children]
    return found, below


def submounts(fd: int) -> list[tuple[int, str, str]]:
    """``(mount id, path relative to the top, fstype)`` of every mount below the one ``fd`` is on
    (which must be attached); empty when there are none."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
        entries = parse_mountinfo(handle.read())
    top, below = descendants(entries, sc.mount_id(fd))
    if top is None:
        raise OSError(errno.ENOENT, "the mount is not in /proc/self/mountinfo")
    base = top.mountpoint.rstrip("/") + "/"
    return [(entry.mount_id, entry.mountpoint[len(base):], entry.fstype) for entry in below
            if entry.mountpoint.startswith(base)]


def open_submount(top_fd: int, relative: str, mount_id: int) -> int:
    """An ``O_PATH`` fd on mount ``mount_id`` at ``relative`` below ``top_fd``, or ``-1`` when
    another mount listed below the top covers it there (it is then handled as that mount).
    Raises ``OSError(EXDEV)`` when the path leads to a mount not listed below the top."""
    fd = _open_beneath(top_fd, relative)
    found = sc.mount_id(fd)
    if found == mount_id:
        return fd
    os.close(fd)
    return -1 if found in {mid for mid, _rel, _fs in submounts(top_fd)} else _changed(relative)


def _changed(relative: str) -> int:
    raise OSError(errno.EXDEV, "a mount point changed while its flags were being set", relative)


def _open_beneath(top_fd: int, relative: str) -> int:
    try:
        return sc.openat2(top_fd, relative, sc.O_PATH, _BENEATH)
    except OSError as err:
        if err.errno != errno.ENOSYS:
            raise
    # Linux < 5.6: one component at a time, refusing any symlink.
    return fsutil.open_chain(top_fd, [part for part in relative.split("/") if part], "a mount point")


__all__ = ["MountEntry", "descendants", "open_submount", "parse_mountinfo", "submounts"]
