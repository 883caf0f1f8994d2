"""The streamed squashfs (layers -> one tar -> tar2sqfs) equals the tree flatten() writes.

For the complex image of test_unpack_umoci and the hostile layer sets of
test_unpack_flatten: build both, extract the squashfs with ``unsquashfs -d`` and compare
paths, types, modes, symlink targets, contents, hard-link groups and mtimes (directory
mtimes where the layers set them).  Then the failure paths: no partial file is left.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from shifter.convert.squashfs import SquashfsOptions
from shifter.convert.tar2sqfs import build_from_tar
from shifter.errors import ConversionError, DiskFullError, LayerError
from shifter.unpack import FlattenPolicy, flatten
from shifter.unpack.stream import plan_stream, write_tar
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
from tests.fixtures.trees import walk_lstat
from tests.integration.test_unpack_umoci import image_layers

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("tar2sqfs") is None, reason="squashfs-tools-ng not installed"),
    pytest.mark.skipif(shutil.which("unsquashfs") is None, reason="squashfs-tools not installed"),
]

#: Directory mtimes at or above this are "now" (directories the layers never described).
NOW_ISH = 1_750_000_000

HOSTILE: dict[str, list[list[Entry]]] = {
    "symlink_then_write_through": [[symlink("evil", "/etc"), file("evil/x", b"pwned"), file("etc/y", b"y")]],
    "symlink_chain_then_write_through": [
        [symlink("one", "two/.."), symlink("two", "three"), symlink("three", "../../.."),
         symlink("hop", "/outside"), symlink("c1", "c2"), symlink("c2", "hop")],
        [file("one/outside/secret", b"pwned"), file("c1/secret", b"pwned")]],
    "symlink_dotdot_then_write_through": [[directory("a"), symlink("a/evil", "../../../.."),
                                           file("a/evil/outside/secret", b"pwned")]],
    "symlink_replaces_dir_then_write": [[directory("d"), file("d/f", b"1")], [symlink("d", "/outside")],
                                        [file("d/secret", b"pwned"), directory("d/newdir")]],
    "symlink_loop_then_write": [[symlink("a", "b"), symlink("b", "a"), file("a/x", b"1"),
                                 symlink("self", "self"), file("self/y", b"1")]],
    "absolute_and_dotdot_names": [[file("/abs", b"a"), file("../outside/secret", b"s"),
                                   file("a/../../../b", b"b")]],
    "hardlink_outside_root": [[hardlink("h1", "/etc/passwd"), hardlink("h2", "../outside/secret"),
                               file("f", b"f"), hardlink("h3", "f")]],
    "hardlink_to_lower_layer_survives_overwrite": [[file("orig", b"old", mode=0o4755)],
                                                   [hardlink("link", "orig"), hardlink("link2", "orig")],
                                                   [file("orig", b"new")]],
    "hardlink_to_symlink": [[symlink("s", "/outside/secret"), hardlink("h", "s"), hardlink("h2", "h")]],
    "whiteout_escape": [[file("x", b"x"), directory("a"), file("a/y", b"y")],
                        [file(".wh.../../x"), file(".wh..."), file("a/.wh..."), file("../.wh.outside")]],
    "whiteouts_and_opaque": [[file("a/x", b"1"), file("a/y", b"1"), file("d/old", b"1"), file("d/sub/deep", b"1")],
                             [whiteout("a/x"), directory("d", mtime=1_600_000_000), file("d/new", b"2"),
                              opaque("d"), file("keep", b"2"), whiteout("keep")]],
    "type_changes": [[file("t/c", b"c"), file("f", b"f"), directory("s"), file("s/in", b"i")],
                     [file("t", b"now a file"), directory("f"), file("f/inner", b"i"), symlink("s", "t")]],
    "root_replaced_by_symlink": [[directory(".", mode=0o700, mtime=1_500_000_000), symlink("/", "/outside"),
                                  file("f", b"ok")]],
    "devices_and_fifos": [[file("dev/null", b"placeholder"), fifo("p")], [chardev("dev/null"), chardev("dev/sda")]],
    "modes_and_setuid": [[directory("priv", mode=0o700), file("priv/key", b"k", mode=0o600),
                          file("tool", b"t", mode=0o700), file("shared", b"s", mode=0o666),
                          file("su", b"s", mode=0o4755), directory("sticky", mode=0o1777)]],
    "names_long_and_raw": [[file("d" * 120 + "/" + "e" * 200 + "/" + "f" * 250, b"long"),
                            file(b"caf\xe9/\xff\xfe", b"raw"), symlink(b"s\xff", "t" * 300),
                            file("nl\nname", b"newline")]],
    "big_file_and_empty": [[file("big", os.urandom(3_000_000) * 2), file("empty", b""), hardlink("e2", "empty")]],
}


def _blobs(tmp_path: Path, layers: list[list[Entry]]) -> list[Path]:
    blobs = []
    for i, entries in enumerate(layers):
        blob = tmp_path / f"layer{i}"
        blob.write_bytes(compress(tar_bytes(entries), ["gzip", "zstd", "none"][i % 3]))
        blobs.append(blob)
    return blobs


def _stream(blobs: list[Path], dest: Path, policy: FlattenPolicy) -> int:
    plan = plan_stream(blobs, policy)
    return build_from_tar(lambda sink: write_tar(plan, blobs, sink), dest, SquashfsOptions())


def snapshot(root: Path) -> dict[bytes, tuple[object, ...]]:
    """path -> (type, mode, mtime or None, content/target, hard-link group)."""
    base = bytes(root)
    tree: dict[bytes, tuple[object, ...]] = {}
    groups: dict[int, set[bytes]] = {}
    st = os.lstat(base)
    tree[b"."] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns if st.st_mtime < NOW_ISH else None)
    for full, rel, st in walk_lstat(root):
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            tree[rel] = ("dir", mode, st.st_mtime_ns if st.st_mtime < NOW_ISH else None)
            continue
        group = groups.setdefault(st.st_ino, set())
        group.add(rel)
        if stat.S_ISLNK(st.st_mode):
            tree[rel] = ("symlink", 0, st.st_mtime_ns, os.readlink(full), group)
        elif stat.S_ISREG(st.st_mode):
            with open(full, "rb") as fh:
                tree[rel] = ("file", mode, st.st_mtime_ns, fh.read(), group)
        else:
            tree[rel] = ("special", stat.S_IFMT(st.st_mode))
    return {path: tuple(frozenset(x) if isinstance(x, set) else x for x in entry) for path, entry in tree.items()}


def assert_same_image(tmp_path: Path, layers: list[list[Entry]], policy: FlattenPolicy | None = None) -> None:
    policy = policy or FlattenPolicy()
    blobs = _blobs(tmp_path, layers)
    tree = tmp_path / "tree"
    tree.mkdir()
    flatten(blobs, tree, policy)
    image = tmp_path / "image.sqfs"
    size = _stream(blobs, image, policy)
    assert size == image.stat().st_size > 0
    extracted = tmp_path / "extracted"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(extracted), str(image)], check=True,
                   stdout=subprocess.DEVNULL)
    expected, actual = snapshot(tree), snapshot(extracted)
    assert sorted(actual) == sorted(expected)
    for path, entry in expected.items():
        assert actual[path] == entry, path


def test_stream_equals_flatten_on_the_umoci_image(tmp_path: Path) -> None:
    assert_same_image(tmp_path, image_layers())


def test_stream_equals_flatten_with_setuid_kept(tmp_path: Path) -> None:
    assert_same_image(tmp_path, HOSTILE["modes_and_setuid"], FlattenPolicy(keep_setuid=True))


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_stream_equals_flatten_on_hostile_layers(tmp_path: Path, name: str) -> None:
    assert_same_image(tmp_path, HOSTILE[name])


def test_stream_is_root_owned(tmp_path: Path) -> None:
    blobs = _blobs(tmp_path, [[file("f", b"x"), directory("d")]])
    _stream(blobs, tmp_path / "image.sqfs", FlattenPolicy())
    listing = subprocess.run(["unsquashfs", "-lls", str(tmp_path / "image.sqfs")], check=True,
                             capture_output=True, text=True).stdout
    assert " root/root " in listing and "squashfs-root/f" in listing


# --------------------------------------------------------------------------- failures
def test_corrupt_layer_mid_stream_leaves_no_file(tmp_path: Path) -> None:
    blobs = _blobs(tmp_path, [[file("a", os.urandom(300_000))], [file("b", os.urandom(300_000))]])
    plan = plan_stream(blobs, FlattenPolicy())
    blobs[1].write_bytes(blobs[1].read_bytes()[:2000])  # truncated after the first pass
    dest = tmp_path / "image.sqfs.partial"
    with pytest.raises(LayerError) as info:
        build_from_tar(lambda sink: write_tar(plan, blobs, sink), dest, SquashfsOptions())
    assert info.value.hint and not dest.exists()


def test_tar2sqfs_failure_is_a_conversion_error(tmp_path: Path) -> None:
    dest = tmp_path / "missing-dir" / "image.sqfs"
    with pytest.raises(ConversionError) as info:
        build_from_tar(lambda sink: sink.write(b"\0" * 10240), dest, SquashfsOptions())
    assert "tar2sqfs failed" in info.value.message and info.value.hint
    assert not dest.exists()


def test_garbage_tar_is_refused_not_skipped(tmp_path: Path) -> None:
    dest = tmp_path / "image.sqfs"
    with pytest.raises(ConversionError):
        build_from_tar(lambda sink: sink.write(b"this is not a tar archive" * 1000), dest, SquashfsOptions())
    assert not dest.exists()


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_is_a_disk_full_error(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], check=True)
    try:
        blobs = _blobs(tmp_path, [[file("big", os.urandom(2_000_000))]])
        dest = small / "image.sqfs"
        with pytest.raises(DiskFullError) as info:
            _stream(blobs, dest, FlattenPolicy())
        assert info.value.hint and not dest.exists()
    finally:
        subprocess.run(["umount", str(small)], check=True)
