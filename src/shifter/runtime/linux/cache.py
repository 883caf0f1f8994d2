"""perNodeCache in privileged mode: a fresh file system on an anonymous, sparse backing file.

The backing file is created in the site's node-local ``perNodeCachePath`` with ``O_TMPFILE``
(it never has a name; on file systems without ``O_TMPFILE`` it gets a random ``O_EXCL`` name
and is unlinked at once), sized with ``ftruncate`` (sparse: the size is a cap, not a
reservation), attached to a read-write loop device with ``LO_FLAGS_AUTOCLEAR`` and formatted.
The caller mounts the device and closes the loop fd: from then on the mount is the only user,
so when the container's mount namespace goes (exit or SIGKILL) the device detaches and the
file's blocks are freed.  Nothing is left on the node.

``mkfs`` runs with a fixed environment (``PRIVILEGED_ENV``), never the caller's: a caller's
``LD_PRELOAD``/``LD_LIBRARY_PATH`` must not reach a root process.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile

from shifter.errors import ContainerError
from shifter.runtime.environment import PRIVILEGED_ENV
from shifter.runtime.linux import syscalls as sc

XFS_MIN_SIZE = 300 * 1024 * 1024  # mkfs.xfs refuses smaller file systems
_ENV = dict(PRIVILEGED_ENV)
_MKFS = {
    "xfs": ("mkfs.xfs", "-q", "-f", "-K"),
    "ext4": ("mkfs.ext4", "-q", "-F", "-E", "nodiscard"),
}


def choose_fs(fs: str, size: int) -> str:
    """``auto`` -> ``xfs`` when ``mkfs.xfs`` is installed and ``size`` allows it, else ``ext4``."""
    if fs != "auto":
        return fs
    if size >= XFS_MIN_SIZE and shutil.which("mkfs.xfs", path=_ENV["PATH"]):
        return "xfs"
    return "ext4"


def anonymous_file(directory: str) -> int:
    """A read-write fd of a new file in ``directory`` that has no name."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    fd, name = tempfile.mkstemp(prefix=".shifter-cache-", dir=directory)
    os.unlink(name)
    return fd


def make_device(directory: str, size: int, fs: str) -> tuple[int, str, str]:
    """Backing file + loop device + file system.  Returns ``(loop_fd, device, fstype)``; the
    caller mounts ``device`` and then closes ``loop_fd``."""
    try:
        backing = anonymous_file(directory)
    except OSError as err:
        raise ContainerError(f"cannot create the perNodeCache backing file in {directory}: {err.strerror}",
                             hint="the site's perNodeCachePath must be an existing node-local directory") from None
    try:
        try:
            os.ftruncate(backing, size)
        except OSError as err:
            raise ContainerError(f"cannot size the perNodeCache backing file to {size} bytes: {err.strerror}",
                                 hint="ask for a smaller size=") from None
        loop_fd, device = sc.loop_attach(backing, "shifter-perNodeCache", read_only=False)
    finally:
        os.close(backing)
    try:
        fstype = choose_fs(fs, size)
        format_device(device, fstype)
    except BaseException:
        os.close(loop_fd)
        raise
    return loop_fd, device, fstype


def format_device(device: str, fstype: str) -> None:
    """Run ``mkfs.<fstype>`` on ``device`` with the fixed privileged environment."""
    import subprocess  # noqa: PLC0415  (only when a cache is asked for)

    tool, *args = _MKFS[fstype]
    path = shutil.which(tool, path=_ENV["PATH"])
    if path is None:
        package = "xfsprogs" if fstype == "xfs" else "e2fsprogs"
        raise ContainerError(f"perNodeCache needs {tool}, which is not installed",
                             hint=f"install {package}, or ask for another fs= in the perNodeCache flag")
    result = subprocess.run([path, *args, device], env=_ENV, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False, close_fds=True,
                            timeout=600)
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        raise ContainerError(f"cannot create the perNodeCache {fstype} file system: "
                             f"{detail[0] if detail else f'{tool} exit status {result.returncode}'}",
                             hint="xfs needs size=300M or more; use fs=ext4 for smaller caches")


__all__ = ["XFS_MIN_SIZE", "anonymous_file", "choose_fs", "format_device", "make_device"]
