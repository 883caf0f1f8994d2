"""flatten() on real layer blobs in a temporary directory: semantics, policy, attacks.

Attack tests plant a sibling ``outside`` directory (and absolute symlinks to it) and
check that nothing there is ever read, written, linked or removed.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard

from shifter.errors import LayerError
from shifter.unpack import FlattenPolicy, FlattenReport, flatten
from tests.fixtures.images import (
    Entry,
    chardev,
    compress,
    directory,
    fifo,
    file,
    hardlink,
    opaque,
    symlink,
    tar_bytes,
    whiteout,
)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret").write_bytes(b"host secret")
    return out


def run(tmp_path: Path, *layers: list[Entry], compression: str = "gzip",
        policy: FlattenPolicy | None = None) -> tuple[Path, FlattenReport]:
    blobs = []
    for i, entries in enumerate(layers):
        blob = tmp_path / f"layer{i}"
        blob.write_bytes(compress(tar_bytes(entries), compression))
        blobs.append(blob)
    dest = tmp_path / "rootfs"
    dest.mkdir()
    return dest, flatten(blobs, dest, policy or FlattenPolicy())


def assert_outside_untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_bytes() == b"host secret"
    assert (outside / "secret").stat().st_nlink == 1


def inside(dest: Path, path: Path) -> Path:
    """Where an absolute host path lands when a symlink is resolved inside the image."""
    return dest / str(path).lstrip("/")


# --------------------------------------------------------------------------- formats
@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_compressions(tmp_path: Path, compression: str) -> None:
    dest, report = run(tmp_path, [file("a/b", b"x" * 3_000_000)], compression=compression)
    assert (dest / "a" / "b").read_bytes() == b"x" * 3_000_000
    assert report.files == 1 and report.bytes_written == 3_000_000


def test_zstd_multiple_frames(tmp_path: Path) -> None:
    raw = tar_bytes([file("f", b"y" * 100_000)])
    cctx = zstandard.ZstdCompressor()
    blob = tmp_path / "layer"
    blob.write_bytes(cctx.compress(raw[:10240]) + cctx.compress(raw[10240:]))
    (tmp_path / "d").mkdir()
    flatten([blob], tmp_path / "d", FlattenPolicy())
    assert (tmp_path / "d" / "f").read_bytes() == b"y" * 100_000


def test_multi_member_gzip(tmp_path: Path) -> None:
    raw = tar_bytes([file("f", b"z" * 50_000)])
    blob = tmp_path / "layer"
    blob.write_bytes(gzip.compress(raw[:2048]) + gzip.compress(raw[2048:]))
    (tmp_path / "d").mkdir()
    flatten([blob], tmp_path / "d", FlattenPolicy())
    assert (tmp_path / "d" / "f").read_bytes() == b"z" * 50_000


def test_empty_blob_is_an_empty_layer(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "d").mkdir()
    report = flatten([tmp_path / "empty"], tmp_path / "d", FlattenPolicy())
    assert report.warnings and list((tmp_path / "d").iterdir()) == []


@pytest.mark.parametrize(("what", "blob"), [
    ("truncated_gzip", compress(tar_bytes([file("f", os.urandom(200_000))]))[:5000]),
    ("truncated_zstd", compress(tar_bytes([file("f", os.urandom(200_000))]), "zstd")[:5000]),
    ("truncated_tar", tar_bytes([file("f", b"q" * 100_000)])[:20_000]),
    ("garbage", os.urandom(4096)),
    ("gzip_of_garbage", gzip.compress(os.urandom(4096))),
    ("not_a_tar", b"hello, I am a text file\n" * 100),
    ("xz", b"\xfd7zXZ\x00" + b"\x00" * 100),
])
def test_malformed_layer_raises_layer_error(tmp_path: Path, what: str, blob: bytes) -> None:
    (tmp_path / "layer").write_bytes(blob)
    (tmp_path / "d").mkdir()
    with pytest.raises(LayerError) as info:
        flatten([tmp_path / "layer"], tmp_path / "d", FlattenPolicy())
    assert info.value.hint


# --------------------------------------------------------------------------- OCI semantics
def test_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    dest, _ = run(tmp_path,
                  [file("a/x", b"1"), file("a/y", b"1"), file("d/old", b"1"), file("d/sub/deep", b"1")],
                  [whiteout("a/x"), directory("d"), file("d/new", b"2"), opaque("d"), file("keep", b"2"),
                   whiteout("keep")])
    assert sorted(os.listdir(dest / "a")) == ["y"]
    assert sorted(os.listdir(dest / "d")) == ["new"]
    assert (dest / "keep").read_bytes() == b"2"  # whiteouts never hide their own layer


def test_type_changes(tmp_path: Path) -> None:
    dest, _ = run(tmp_path,
                  [file("t/c", b"c"), file("f", b"f"), directory("s"), file("s/in", b"i")],
                  [file("t", b"now a file"), directory("f"), file("f/inner", b"i"), symlink("s", "t")])
    assert (dest / "t").read_bytes() == b"now a file"
    assert (dest / "f" / "inner").is_file()
    assert os.readlink(dest / "s") == "t"


def test_hardlink_to_lower_layer_survives_overwrite(tmp_path: Path) -> None:
    dest, report = run(tmp_path, [file("orig", b"old")], [hardlink("link", "orig")], [file("orig", b"new")])
    assert (dest / "link").read_bytes() == b"old"
    assert (dest / "orig").read_bytes() == b"new"
    assert report.hardlinks == 1


def test_hardlink_shares_inode(tmp_path: Path) -> None:
    dest, _ = run(tmp_path, [file("a", b"same"), hardlink("b", "a")])
    assert (dest / "a").stat().st_ino == (dest / "b").stat().st_ino


def test_long_and_non_utf8_names_preserved(tmp_path: Path) -> None:
    long_name = "d" * 120 + "/" + "e" * 200 + "/" + "f" * 250
    dest, _ = run(tmp_path, [file(long_name, b"long"), file(b"caf\xe9/\xff\xfe", b"raw"),
                             symlink("sl", "l" * 300)])
    assert (dest / long_name).read_bytes() == b"long"
    assert Path(os.fsdecode(os.path.join(bytes(dest), b"caf\xe9", b"\xff\xfe"))).read_bytes() == b"raw"
    assert os.readlink(dest / "sl") == "l" * 300


def test_symlinks_kept_and_mtimes_preserved(tmp_path: Path) -> None:
    dest, _ = run(tmp_path, [directory("d", mtime=1_600_000_000), file("d/f", b"x", mtime=1_500_000_000),
                             symlink("abs", "/etc/passwd", mtime=1_400_000_000)])
    assert os.readlink(dest / "abs") == "/etc/passwd"
    assert os.lstat(dest / "abs").st_mtime == 1_400_000_000
    assert (dest / "d" / "f").stat().st_mtime == 1_500_000_000
    assert (dest / "d").stat().st_mtime == 1_600_000_000


def test_permissions_normalised(tmp_path: Path) -> None:
    dest, _ = run(tmp_path, [directory("priv", mode=0o700), file("priv/key", b"k", mode=0o600),
                             file("tool", b"t", mode=0o700), file("shared", b"s", mode=0o666)])
    mode = {p: stat.S_IMODE((dest / p).stat().st_mode) for p in ("priv", "priv/key", "tool", "shared")}
    assert mode == {"priv": 0o755, "priv/key": 0o644, "tool": 0o755, "shared": 0o644}


def test_setuid_stripped(tmp_path: Path) -> None:
    dest, report = run(tmp_path, [file("su", b"s", mode=0o4755), file("sg", b"s", mode=0o2755)])
    assert stat.S_IMODE((dest / "su").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "sg").stat().st_mode) == 0o755
    assert report.stripped_setuid == 2


def test_setuid_kept_by_policy(tmp_path: Path) -> None:
    dest, _ = run(tmp_path, [file("su", b"s", mode=0o4755)], policy=FlattenPolicy(keep_setuid=True))
    assert stat.S_IMODE((dest / "su").stat().st_mode) == 0o4755


def test_device_node_dropped(tmp_path: Path) -> None:
    dest, report = run(tmp_path, [file("dev/null", b"placeholder")],
                       [chardev("dev/null"), chardev("dev/sda", 8, 0)])
    assert os.listdir(dest / "dev") == []
    assert report.dropped_devices == 2


def test_fifo_dropped(tmp_path: Path) -> None:
    dest, report = run(tmp_path, [fifo("pipe")])
    assert not os.path.lexists(dest / "pipe") and report.dropped_fifos == 1


def test_xattrs_ignored_and_counted(tmp_path: Path) -> None:
    dest, report = run(tmp_path, [file("ping", b"p", pax={"SCHILY.xattr.security.capability": "x"})])
    assert (dest / "ping").exists() and report.ignored_xattrs == 1


# --------------------------------------------------------------------------- attacks
def test_symlink_then_write_through(tmp_path: Path, outside: Path) -> None:
    dest, _ = run(tmp_path, [symlink("evil", str(outside)), file("evil/x", b"pwned"),
                             file("evil/secret", b"pwned")])
    assert_outside_untouched(outside)
    assert (inside(dest, outside) / "x").read_bytes() == b"pwned"  # lands inside the image


def test_symlink_to_etc_then_write_through(tmp_path: Path) -> None:
    dest, _ = run(tmp_path, [symlink("evil", "/etc"), file("evil/shifter-test-x", b"pwned")])
    assert not os.path.exists("/etc/shifter-test-x")
    assert (dest / "etc" / "shifter-test-x").read_bytes() == b"pwned"


def test_symlink_dotdot_then_write_through(tmp_path: Path, outside: Path) -> None:
    dest, _ = run(tmp_path, [directory("a"), symlink("a/evil", "../../../../../../.."),
                             file("a/evil/outside/secret", b"pwned")])
    assert_outside_untouched(outside)
    assert (dest / "outside" / "secret").read_bytes() == b"pwned"


def test_symlink_chain_then_write_through(tmp_path: Path, outside: Path) -> None:
    dest, _ = run(tmp_path, [symlink("one", "two/.."), symlink("two", "three"), symlink("three", "../../.."),
                             symlink("hop", str(outside)), symlink("c1", "c2"), symlink("c2", "hop")],
                  [file("one/outside/secret", b"pwned"), file("c1/secret", b"pwned")])
    assert_outside_untouched(outside)
    assert (inside(dest, outside) / "secret").read_bytes() == b"pwned"


def test_symlink_in_lower_layer_then_write_through(tmp_path: Path, outside: Path) -> None:
    dest, _ = run(tmp_path, [symlink("evil", str(outside))], [file("evil/secret", b"pwned")])
    assert_outside_untouched(outside)
    assert os.path.islink(dest / "evil")


def test_symlink_replaces_dir_then_write(tmp_path: Path, outside: Path) -> None:
    dest, _ = run(tmp_path, [directory("d"), file("d/f", b"1")],
                  [symlink("d", str(outside))], [file("d/secret", b"pwned"), directory("d/newdir")])
    assert_outside_untouched(outside)
    assert os.path.islink(dest / "d")


def test_symlink_over_file_then_overwrite(tmp_path: Path, outside: Path) -> None:
    dest, _ = run(tmp_path, [symlink("f", str(outside / "secret"))], [file("f", b"pwned")])
    assert_outside_untouched(outside)
    assert (dest / "f").read_bytes() == b"pwned" and not os.path.islink(dest / "f")


def test_symlink_loop_then_write(tmp_path: Path) -> None:
    dest, report = run(tmp_path, [symlink("a", "b"), symlink("b", "a"), file("a/x", b"1"),
                                  symlink("self", "self"), file("self/y", b"1")])
    assert sorted(os.listdir(dest)) == ["a", "b", "self"]
    assert report.dropped_other == 2


def test_absolute_member_name(tmp_path: Path, outside: Path) -> None:
    dest, report = run(tmp_path, [file(str(outside / "secret"), b"pwned"), file("/abs", b"a")])
    assert_outside_untouched(outside)
    assert (dest / "abs").read_bytes() == b"a"
    assert (inside(dest, outside) / "secret").read_bytes() == b"pwned"
    assert report.neutralised_names == 2


def test_dotdot_member_name(tmp_path: Path, outside: Path) -> None:
    dest, report = run(tmp_path, [file("../outside/secret", b"pwned"), file("a/../../../b", b"b"),
                                  file("../../../../../../x", b"x")])
    assert_outside_untouched(outside)
    assert (dest / "outside" / "secret").read_bytes() == b"pwned"
    assert (dest / "b").read_bytes() == b"b" and (dest / "x").read_bytes() == b"x"
    assert report.neutralised_names == 3


def test_hardlink_outside_root(tmp_path: Path, outside: Path) -> None:
    dest, report = run(tmp_path, [hardlink("h1", str(outside / "secret")),
                                  hardlink("h2", "../outside/secret"), hardlink("h3", "/etc/passwd")])
    assert_outside_untouched(outside)
    assert os.listdir(dest) == []
    assert report.dropped_other == 3


def test_hardlink_through_symlink_dir(tmp_path: Path, outside: Path) -> None:
    dest, _ = run(tmp_path, [symlink("s", str(outside)), hardlink("h", "s/secret")])
    assert_outside_untouched(outside)
    assert not os.path.lexists(dest / "h")


def test_symlink_to_parent_then_hardlink_through(tmp_path: Path, outside: Path) -> None:
    dest, _ = run(tmp_path, [symlink("up", ".."), directory("d"), symlink("d/up2", "../.."),
                             hardlink("h1", "up/outside/secret"), hardlink("h2", "d/up2/up/outside/secret")])
    assert_outside_untouched(outside)
    assert not os.path.lexists(dest / "h1") and not os.path.lexists(dest / "h2")


def test_hardlink_to_symlink_links_the_symlink(tmp_path: Path, outside: Path) -> None:
    dest, _ = run(tmp_path, [symlink("s", str(outside / "secret")), hardlink("h", "s"), file("h2", b"x")],
                  [file("h", b"overwrite")])
    assert_outside_untouched(outside)
    assert os.readlink(dest / "s") == str(outside / "secret")


def test_hardlink_to_whited_out_file(tmp_path: Path) -> None:
    dest, report = run(tmp_path, [file("f", b"1")], [whiteout("f"), hardlink("h", "f")])
    assert os.listdir(dest) == [] and report.dropped_other == 1


def test_hardlink_to_directory_or_device(tmp_path: Path) -> None:
    dest, report = run(tmp_path, [directory("d"), chardev("c"), hardlink("h1", "d"), hardlink("h2", "c")])
    assert os.listdir(dest) == ["d"] and report.dropped_other == 2


def test_whiteout_escape(tmp_path: Path, outside: Path) -> None:
    dest, report = run(tmp_path, [file("x", b"x"), directory("a"), file("a/y", b"y")],
                       [file(".wh.../../x"), file(".wh..."), file("a/.wh..."), file("a/.wh.."),
                        file("../.wh.outside"), file("/.wh..wh..opq/../.wh.outside")])
    assert_outside_untouched(outside)
    assert (dest / "a" / "y").exists()
    assert report.dropped_other == 3


def test_whiteout_through_symlink_parent(tmp_path: Path, outside: Path) -> None:
    run(tmp_path, [symlink("evil", str(outside))], [file("evil/.wh.secret"), file("evil/.wh..wh..opq")])
    assert_outside_untouched(outside)


def test_root_replaced_by_symlink(tmp_path: Path, outside: Path) -> None:
    dest, report = run(tmp_path, [symlink(".", str(outside)), symlink("/", str(outside)), file("f", b"ok")])
    assert_outside_untouched(outside)
    assert (dest / "f").read_bytes() == b"ok" and report.dropped_other == 2


def test_deep_tree_is_bounded(tmp_path: Path) -> None:
    deep = "/".join(["d"] * 400)
    dest, report = run(tmp_path, [file(deep + "/f", b"x")], [whiteout("d")])
    assert report.dropped_other == 1 and os.listdir(dest) == []


def test_odd_tar_types(tmp_path: Path) -> None:
    blob = tmp_path / "layer"
    with tarfile.open(blob, "w") as tar:
        for name, kind, data in (("cont", tarfile.CONTTYPE, b"c"), ("weird", b"Z", b"")):
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "d").mkdir()
    report = flatten([blob], tmp_path / "d", FlattenPolicy())
    assert (tmp_path / "d" / "cont").read_bytes() == b"c"  # contiguous files are regular files
    assert report.dropped_other == 1 and not os.path.lexists(tmp_path / "d" / "weird")
