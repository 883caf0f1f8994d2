"""Build one squashfs file from a flattened image tree with ``mksquashfs``.

Options and why:

* ``-comp <c> -Xcompression-level <n>``: site-configurable; default zstd level 3, which is
  about 20x faster than mksquashfs's gzip default at a similar size.
* ``-processors <cores>``: use every core (compression is the expensive part).
* ``-mem <cap>``: mksquashfs otherwise sizes its caches from physical memory (~800 MB
  seen on big trees); the cap keeps a pull's memory bounded whatever the image size.
* ``-noappend``: always a fresh file, never append to a leftover.
* ``-all-root``: ownership is normalised to root (the flattening policy); an
  unprivileged pull cannot chown its tree, so this makes both kinds of store identical.
* ``-no-xattrs``: layer xattrs are not carried by the flattener, and the host's own
  labels on the work tree (SELinux etc.) must not leak into the image.
* ``-no-progress -quiet``: the pipeline reports its own progress.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from shifter.errors import DISK_FULL_HINT, ConversionError, DiskFullError

COMPRESSORS = ("gzip", "lz4", "lzo", "xz", "zstd", "lzma")
_LEVELLED = {"gzip": (1, 9), "zstd": (1, 22), "lz4": None, "lzo": (1, 9), "xz": None, "lzma": None}
_FULL_MARKERS = ("no space left", "disk quota exceeded", "file too large")


@dataclass(frozen=True)
class RunResult:
    """What a :data:`Runner` reports back."""

    returncode: int
    stderr: str


Runner = Callable[[Sequence[str]], RunResult]


def run_subprocess(argv: Sequence[str]) -> RunResult:
    """The real runner: ``subprocess.run`` with stdout discarded and stderr captured."""
    try:
        proc = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, check=False)
    except FileNotFoundError:
        raise ConversionError(f"{argv[0]} is not installed",
                              hint="install squashfs-tools (apt-get install squashfs-tools)") from None
    return RunResult(proc.returncode, proc.stderr.decode("utf-8", "replace"))


@dataclass(frozen=True)
class SquashfsOptions:
    """How to call mksquashfs."""

    compression: str = "zstd"
    level: int = 3
    processors: int = 0  # 0: every available core
    mem: str = "128M"
    block_size: str = ""  # "" = mksquashfs default (128K)
    mksquashfs: str = "mksquashfs"


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def mksquashfs_argv(tree: Path, dest: Path, options: SquashfsOptions) -> list[str]:
    """The full mksquashfs command line for ``tree`` -> ``dest``."""
    if options.compression not in COMPRESSORS:
        raise ConversionError(f"unsupported squashfs compression {options.compression!r}",
                              hint="set squashfsCompression to zstd, lz4, gzip, xz or lzo")
    argv = [options.mksquashfs, str(tree), str(dest), "-noappend", "-comp", options.compression]
    bounds = _LEVELLED.get(options.compression)
    if bounds is not None:
        low, high = bounds
        argv += ["-Xcompression-level", str(min(max(options.level, low), high))]
    if options.block_size:
        argv += ["-b", options.block_size]
    argv += ["-processors", str(options.processors or available_cores())]
    if options.mem:
        argv += ["-mem", options.mem]
    argv += ["-all-root", "-no-xattrs", "-no-progress", "-quiet"]
    return argv


def build_squashfs(tree: Path, dest: Path, options: SquashfsOptions | None = None,
                   runner: Runner = run_subprocess) -> int:
    """Build ``dest`` from ``tree``; returns the size of ``dest`` in bytes.

    On failure ``dest`` is removed and :class:`DiskFullError` (no space / quota) or
    :class:`ConversionError` is raised with mksquashfs's last message.
    """
    options = options or SquashfsOptions()
    argv = mksquashfs_argv(tree, dest, options)
    if runner is run_subprocess and shutil.which(options.mksquashfs) is None:
        raise ConversionError(f"{options.mksquashfs} is not installed",
                              hint="install squashfs-tools (apt-get install squashfs-tools)")
    result = runner(argv)
    if result.returncode != 0:
        dest.unlink(missing_ok=True)
        raise _failure(result, dest)
    try:
        return dest.stat().st_size
    except FileNotFoundError:
        raise ConversionError("mksquashfs reported success but wrote no file",
                              hint=f"check {dest.parent}") from None


def disk_full(detail: str, dest: Path) -> DiskFullError:
    """The store filled up while ``dest`` was written: one error, whichever builder ran."""
    return DiskFullError(f"no space left while writing the squashfs image in {dest.parent.parent} ({detail})",
                         hint=DISK_FULL_HINT)


def _failure(result: RunResult, dest: Path) -> ConversionError | DiskFullError:
    lines = [ln.strip() for ln in result.stderr.splitlines() if ln.strip()]
    detail = lines[-1] if lines else f"exit status {result.returncode}"
    if any(marker in result.stderr.lower() for marker in _FULL_MARKERS):
        return disk_full(detail, dest)
    return ConversionError(f"mksquashfs failed: {detail}",
                           hint="check the free space and the mksquashfs version (squashfs-tools >= 4.4)")


__all__ = ["COMPRESSORS", "RunResult", "Runner", "SquashfsOptions", "available_cores", "build_squashfs", "disk_full",
           "mksquashfs_argv", "run_subprocess"]
