"""mksquashfs command line and error mapping (the subprocess runner is the seam)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from shifter.convert.squashfs import RunResult, SquashfsOptions, build_squashfs, mksquashfs_argv
from shifter.errors import ConversionError, DiskFullError


def test_default_is_zstd_level_3_all_cores_bounded_memory(tmp_path: Path) -> None:
    argv = mksquashfs_argv(tmp_path / "t", tmp_path / "o", SquashfsOptions(processors=2))
    joined = " ".join(argv)
    assert "-comp zstd -Xcompression-level 3" in joined
    assert "-processors 2" in joined and "-mem 128M" in joined
    for flag in ("-noappend", "-all-root", "-no-xattrs", "-no-progress"):
        assert flag in argv


def test_lz4_takes_no_level_and_levels_are_clamped(tmp_path: Path) -> None:
    assert "-Xcompression-level" not in mksquashfs_argv(tmp_path, tmp_path / "o", SquashfsOptions("lz4"))
    argv = mksquashfs_argv(tmp_path, tmp_path / "o", SquashfsOptions("gzip", level=40))
    assert argv[argv.index("-Xcompression-level") + 1] == "9"


def test_unknown_compression_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConversionError):
        mksquashfs_argv(tmp_path, tmp_path / "o", SquashfsOptions("brotli"))


def _runner(code: int, stderr: str, write: bool = False) -> tuple[list[list[str]], object]:
    calls: list[list[str]] = []

    def run(argv: Sequence[str]) -> RunResult:
        calls.append(list(argv))
        Path(argv[2]).write_bytes(b"x" * 7)
        return RunResult(code, stderr)
    return calls, run


def test_success_returns_size(tmp_path: Path) -> None:
    calls, run = _runner(0, "")
    assert build_squashfs(tmp_path, tmp_path / "o.sqfs", runner=run) == 7  # type: ignore[arg-type]
    assert calls[0][0] == "mksquashfs"


def test_enospc_maps_to_disk_full_and_removes_output(tmp_path: Path) -> None:
    _calls, run = _runner(1, "Write failed because No space left on device\nFATAL ERROR: failed\n")
    with pytest.raises(DiskFullError) as info:
        build_squashfs(tmp_path, tmp_path / "o.sqfs", runner=run)  # type: ignore[arg-type]
    assert info.value.hint
    assert not (tmp_path / "o.sqfs").exists()


def test_other_failure_is_conversion_error_with_last_line(tmp_path: Path) -> None:
    _calls, run = _runner(1, "something\nFATAL ERROR: cannot stat source\n")
    with pytest.raises(ConversionError, match="cannot stat source"):
        build_squashfs(tmp_path, tmp_path / "o.sqfs", runner=run)  # type: ignore[arg-type]
