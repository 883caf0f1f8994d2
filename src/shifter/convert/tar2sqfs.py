"""Build one squashfs file from a tar stream with ``tar2sqfs`` (squashfs-tools-ng).

The pull pipeline uses it with ``shifter.unpack.stream``: the flattened image goes from
the layers straight into the squashfs, never onto the disk as a tree.  The caller passes
a ``write(sink)`` function that writes the whole tar to ``sink`` (tar2sqfs's stdin).

Options and why: ``--compressor/--comp-extra level=N`` the site's compressor and level
(the same bounds as mksquashfs); ``--num-jobs`` every core; ``--no-skip`` abort on any
tar record it cannot read (never a silently incomplete image); ``--no-xattr`` (the
policy drops xattrs); ``--defaults uid=0,gid=0,mode=0755`` for directories the stream
does not list (it lists them all); ``--force`` replace a leftover partial file;
``--quiet``.  tar2sqfs keeps a small node per path and a bounded queue of blocks.

Known limit: tar2sqfs looks names up in a linked list per directory, so adding N entries
to one directory costs O(N^2) (measured here: 20,000 entries 1.6 s, 40,000 5.7 s, 70,000
17 s).  :data:`MAX_DIR_ENTRIES` is where ``squashfsBuilder=auto`` prefers mksquashfs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO

from shifter.convert.squashfs import COMPRESSORS, SquashfsOptions, available_cores, disk_full
from shifter.errors import ConversionError, DiskFullError

TAR2SQFS = "tar2sqfs"
#: Compressors whose level tar2sqfs takes as ``--comp-extra level=N``.
_LEVELLED = {"gzip": (1, 9), "zstd": (1, 22), "lzo": (1, 9)}
MAX_DIR_ENTRIES = 20_000
_FULL_MARKERS = ("no space left", "disk quota exceeded", "file too large")
_STDERR_TAIL = 4096
#: Less free space than this after a failure: call it a full disk.
FULL_SLACK = 8 << 20
_PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

#: ``write(sink)``: write one complete tar stream to ``sink``.
TarWriter = Callable[[IO[bytes]], None]


def tar2sqfs_argv(dest: Path, options: SquashfsOptions, tar2sqfs: str = TAR2SQFS) -> list[str]:
    """The full tar2sqfs command line that reads a tar on stdin and writes ``dest``."""
    if options.compression not in COMPRESSORS:
        raise ConversionError(f"unsupported squashfs compression {options.compression!r}",
                              hint="set squashfsCompression to zstd, lz4, gzip, xz or lzo")
    argv = [tar2sqfs, "--quiet", "--no-skip", "--no-xattr", "--force",
            "--compressor", options.compression,
            "--num-jobs", str(options.processors or available_cores()),
            "--defaults", "uid=0,gid=0,mode=0755"]
    bounds = _LEVELLED.get(options.compression)
    if bounds is not None:
        argv += ["--comp-extra", f"level={min(max(options.level, bounds[0]), bounds[1])}"]
    if options.block_size:
        argv += ["--block-size", str(_block_bytes(options.block_size))]
    argv.append(str(dest))
    return argv


def _block_bytes(size: str) -> int:
    """mksquashfs-style ``128K`` / ``1M`` / ``131072`` to bytes (tar2sqfs wants bytes)."""
    text = size.strip().upper()
    unit = {"K": 1024, "M": 1024**2}.get(text[-1:], 1)
    digits = text[:-1] if unit != 1 else text
    if not digits.isdigit():
        raise ConversionError(f"invalid squashfs block size {size!r}", hint="write e.g. 128K or 1M")
    return int(digits) * unit


def tar2sqfs_available(tar2sqfs: str = TAR2SQFS) -> bool:
    """True when the tar2sqfs command (Debian package squashfs-tools-ng) is installed."""
    return shutil.which(tar2sqfs) is not None


def build_from_tar(write: TarWriter, dest: Path, options: SquashfsOptions | None = None,
                   tar2sqfs: str = TAR2SQFS) -> int:
    """Build ``dest`` from the tar that ``write`` produces; returns the size of ``dest``.

    On failure ``dest`` is removed; ``write``'s own errors propagate unchanged (tar2sqfs is
    stopped first), tar2sqfs's become DiskFullError (no space / quota) or ConversionError.
    """
    options = options or SquashfsOptions()
    argv = tar2sqfs_argv(dest, options, tar2sqfs)
    if not tar2sqfs_available(tar2sqfs):
        raise ConversionError(f"{tar2sqfs} is not installed",
                              hint="install squashfs-tools-ng (apt-get install squashfs-tools-ng), "
                                   "or set squashfsBuilder=mksquashfs")
    try:
        _run(argv, write, dest)
        return dest.stat().st_size
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def _run(argv: list[str], write: TarWriter, dest: Path) -> None:
    # tar2sqfs (--force: it truncates and writes this very file) unlinks its output when it fails,
    # and reports a full disk as "I/O error".  Holding the file open keeps its blocks allocated
    # until the failure is judged, so the space left still shows that the disk filled up.
    try:
        hold = os.open(dest, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(exc.strerror or str(exc), dest) from None
        raise ConversionError(f"tar2sqfs failed: cannot create {dest}: {exc.strerror or exc}",
                              hint="check the permissions of the image store") from None
    try:
        _run_holding(argv, write, dest)
    finally:
        os.close(hold)


def _run_holding(argv: list[str], write: TarWriter, dest: Path) -> None:
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors,
                                bufsize=0)
        assert proc.stdin is not None
        _grow_pipe(proc.stdin.fileno())
        broken = False
        try:
            with proc.stdin:
                write(proc.stdin)
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                _stop(proc)
                raise
            broken = True  # tar2sqfs stopped reading: its own message says why
        except BaseException:
            _stop(proc)
            raise
        code = proc.wait()
        if code != 0 or broken:
            raise _failure(code, _tail(errors), dest)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()


def _grow_pipe(fd: int) -> None:
    """A 1 MiB pipe instead of 64 KiB: we and tar2sqfs run on different cores, and the
    small default makes each wait for the other after every few blocks."""
    with contextlib.suppress(OSError):  # best effort: the limit is pipe-max-size
        fcntl.fcntl(fd, F_SETPIPE_SZ, _PIPE_SIZE)


def _tail(handle: BinaryIO) -> str:
    handle.seek(0, io.SEEK_END)
    handle.seek(max(0, handle.tell() - _STDERR_TAIL))
    return handle.read().decode("utf-8", "replace")


def _nearly_full(directory: Path) -> bool:
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < FULL_SLACK


def _failure(code: int, stderr: str, dest: Path) -> ConversionError | DiskFullError:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    detail = lines[-1] if lines else f"exit status {code}"
    # tar2sqfs 1.2 reports a full disk as "I/O error" (errno lost): also look at the space left.
    if any(marker in stderr.lower() for marker in _FULL_MARKERS) or _nearly_full(dest.parent):
        return disk_full(detail, dest)
    return ConversionError(f"tar2sqfs failed: {detail}",
                           hint="check the free space and the squashfs-tools-ng version (>= 1.1), "
                                "or set squashfsBuilder=mksquashfs")


__all__ = ["MAX_DIR_ENTRIES", "TAR2SQFS", "TarWriter", "build_from_tar", "tar2sqfs_argv", "tar2sqfs_available"]
