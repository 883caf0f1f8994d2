"""The flattened image as one tar stream (shifter.unpack.stream), read back with tarfile.

No external tools here: tests/integration/test_convert_stream.py feeds the stream to a
real tar2sqfs and compares the result with flatten()'s tree.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from shifter.convert.squashfs import SquashfsOptions
from shifter.convert.tar2sqfs import tar2sqfs_argv
from shifter.errors import ConversionError, LayerError
from shifter.unpack import FlattenPolicy
from shifter.unpack.planner import Header, MemberKind, Planner
from shifter.unpack.stream import MTIME_MAX, plan_stream, write_tar
from tests.fixtures.images import Entry, compress, directory, file, hardlink, symlink, tar_bytes, whiteout


def blobs_of(tmp_path: Path, *layers: list[Entry]) -> list[Path]:
    out = []
    for i, entries in enumerate(layers):
        blob = tmp_path / f"layer{i}"
        blob.write_bytes(compress(tar_bytes(entries), "gzip"))
        out.append(blob)
    return out


def stream(blobs: list[Path], policy: FlattenPolicy | None = None) -> list[tuple[tarfile.TarInfo, bytes]]:
    plan = plan_stream(blobs, policy)
    sink = io.BytesIO()
    write_tar(plan, blobs, sink)
    sink.seek(0)
    with tarfile.open(fileobj=sink, mode="r:", encoding="utf-8", errors="surrogateescape") as tar:
        return [(info, tar.extractfile(info).read() if info.isreg() else b"")  # type: ignore[union-attr]
                for info in tar]


def test_final_tree_order_modes_and_ownership(tmp_path: Path) -> None:
    members = stream(blobs_of(tmp_path, [directory("d", mode=0o700), file("d/f", b"data", mode=0o4700),
                                         symlink("d/s", "f"), file("top", b"t")]))
    names = [info.name for info, _ in members]
    assert names[0] == "."
    assert names.index("d") < names.index("d/f") and names.index("d") < names.index("d/s")
    by_name = {info.name: (info, data) for info, data in members}
    assert by_name["d"][0].mode == 0o755 and by_name["d/f"][0].mode == 0o755  # setuid stripped, a+rx
    assert by_name["d/f"][1] == b"data" and by_name["d/s"][0].linkname == "f"
    assert all(info.uid == 0 and info.gid == 0 for info, _ in members)


def test_overwritten_and_whited_out_files_are_not_streamed(tmp_path: Path) -> None:
    members = stream(blobs_of(tmp_path, [file("a", b"old"), file("gone", b"x"), file("dup", b"1"), file("dup", b"2")],
                              [file("a", b"new"), whiteout("gone")]))
    files = {info.name: data for info, data in members if info.isreg()}
    assert files == {"a": b"new", "dup": b"2"}


def test_hardlink_to_lower_layer_keeps_old_inode(tmp_path: Path) -> None:
    members = stream(blobs_of(tmp_path, [file("orig", b"old")], [hardlink("link", "orig")], [file("orig", b"new")]))
    by_name = {info.name: (info, data) for info, data in members}
    assert by_name["orig"][1] == b"new"
    assert by_name["link"][0].isreg() and by_name["link"][1] == b"old"  # the only path left of the old inode
    assert len(members) == 3  # '.', orig, link


def test_hardlinks_come_after_their_target(tmp_path: Path) -> None:
    members = stream(blobs_of(tmp_path, [file("a", b"same"), hardlink("b", "a"), hardlink("c", "b")]))
    order = [info.name for info, _ in members]
    first = next(info for info, _ in members if info.isreg())
    links = [info for info, _ in members if info.islnk()]
    assert {first.name, *(i.name for i in links)} == {"a", "b", "c"}
    assert all(link.linkname == first.name and order.index(link.name) > order.index(first.name) for link in links)


def test_non_utf8_and_long_names_survive(tmp_path: Path) -> None:
    long_name = "d" * 120 + "/" + "e" * 200 + "/" + "f" * 250
    members = stream(blobs_of(tmp_path, [file(long_name, b"long"), file(b"caf\xe9/\xff", b"raw")]))
    files = {info.name.encode("utf-8", "surrogateescape"): data for info, data in members if info.isreg()}
    assert files == {long_name.encode(): b"long", b"caf\xe9/\xff": b"raw"}


def test_mtimes_clamped_to_squashfs_range(tmp_path: Path) -> None:
    members = stream(blobs_of(tmp_path, [file("old", b"o", mtime=-100), file("future", b"f", mtime=2**40)]))
    mtimes = {info.name: info.mtime for info, _ in members}
    assert mtimes["old"] == 0 and mtimes["future"] == MTIME_MAX


def test_layer_with_no_winner_is_never_read(tmp_path: Path) -> None:
    blobs = blobs_of(tmp_path, [file("a", b"lower")], [file("a", b"upper")])
    plan = plan_stream(blobs)
    blobs[0].write_bytes(os.urandom(1000))  # would be a LayerError if pass 2 opened it
    sink = io.BytesIO()
    write_tar(plan, blobs, sink)
    assert b"upper" in sink.getvalue()


def test_layer_changed_between_passes(tmp_path: Path) -> None:
    blobs = blobs_of(tmp_path, [file("a", b"12345")])
    plan = plan_stream(blobs)
    blobs[0].write_bytes(compress(tar_bytes([file("a", b"1234567")]), "gzip"))
    with pytest.raises(LayerError) as info:
        write_tar(plan, blobs, io.BytesIO())
    assert "first pass" in info.value.message


def test_truncated_layer_is_a_layer_error(tmp_path: Path) -> None:
    blobs = blobs_of(tmp_path, [file("a", os.urandom(100_000))])
    blobs[0].write_bytes(blobs[0].read_bytes()[:3000])
    with pytest.raises(LayerError):
        plan_stream(blobs)


def test_planner_final_entries_share_inodes_and_name_members() -> None:
    planner = Planner(FlattenPolicy())
    planner.begin_layer(0)
    planner.plan(Header(b"dir", MemberKind.DIR, mode=0o700))
    planner.plan(Header(b"dir/f", MemberKind.FILE, mode=0o600, size=3))
    planner.begin_layer(1)
    planner.plan(Header(b"g", MemberKind.HARDLINK, linkname=b"dir/f"))
    planner.plan(Header(b"s", MemberKind.SYMLINK, linkname=b"dir"))
    entries = {e.path: e for e in planner.final_entries()}
    assert entries[()].kind is MemberKind.DIR and entries[(b"dir",)].mode == 0o755
    f, g = entries[(b"dir", b"f")], entries[(b"g",)]
    assert f.inode is g.inode and f.inode is not None
    assert (f.inode.layer, f.inode.member, f.inode.mode, f.inode.size) == (0, 1, 0o644, 3)
    assert entries[(b"s",)].target == b"dir" and entries[(b"s",)].inode is not None


# --------------------------------------------------------------------------- tar2sqfs command line
def test_tar2sqfs_argv_defaults() -> None:
    argv = tar2sqfs_argv(Path("/s/out.partial"), SquashfsOptions(processors=2))
    assert argv[0] == "tar2sqfs" and argv[-1] == "/s/out.partial"
    for flag in ("--no-skip", "--no-xattr", "--quiet", "--force"):
        assert flag in argv
    assert argv[argv.index("--compressor") + 1] == "zstd"
    assert argv[argv.index("--comp-extra") + 1] == "level=3"
    assert argv[argv.index("--num-jobs") + 1] == "2"


@pytest.mark.parametrize(("compression", "level", "extra"), [("gzip", 30, "level=9"), ("lz4", 3, None),
                                                             ("xz", 3, None), ("zstd", 0, "level=1")])
def test_tar2sqfs_argv_levels(compression: str, level: int, extra: str | None) -> None:
    argv = tar2sqfs_argv(Path("o"), SquashfsOptions(compression=compression, level=level, block_size="1M"))
    assert (argv[argv.index("--comp-extra") + 1] if "--comp-extra" in argv else None) == extra
    assert argv[argv.index("--block-size") + 1] == str(1 << 20)


def test_tar2sqfs_argv_refuses_unknown_compressor() -> None:
    with pytest.raises(ConversionError):
        tar2sqfs_argv(Path("o"), SquashfsOptions(compression="brotli"))
