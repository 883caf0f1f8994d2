"""flatten() against the reference: ``umoci unpack`` of the same OCI image.

Apart from the documented policy (docs/layer-policy.md: ownership, permission bits,
dropped device nodes/FIFOs) the two trees must be identical: same paths, types, symlink
targets, file contents, hard-link groups and file/symlink mtimes.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from shifter.unpack import FlattenPolicy, flatten
from tests.fixtures.images import (
    Entry,
    Layer,
    OCILayout,
    busybox_entries,
    chardev,
    directory,
    fifo,
    file,
    hardlink,
    layer_tar,
    opaque,
    symlink,
    umoci_unpack,
    whiteout,
)
from tests.fixtures.trees import walk_lstat

pytestmark = [
    pytest.mark.integration,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="umoci unpack needs root"),
    pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci not installed"),
]

LONG = "long-" + "n" * 150 + "/" + "deeper-" + "m" * 200 + "/" + "f" * 240


def image_layers() -> list[list[Entry]]:
    """Five layers exercising every rule (umoci 0.4.7 reads gzip and plain tar only)."""
    base = [
        *busybox_entries(),
        directory("a"), file("a/x", b"x1"), file("a/y", b"y1"), directory("a/sub"), file("a/sub/z", b"z"),
        directory("d"), file("d/old", b"old"), directory("d/keepdir"), file("d/keepdir/k", b"k"),
        file("f2d", b"becomes a dir"), directory("d2f"), file("d2f/c", b"c"),
        file("shared", b"shared inode"), hardlink("shared-link", "shared"),
        symlink("usrbin", "usr/bin"), file("setuid", b"s", mode=0o4755), file("private", b"p", mode=0o600),
        directory("privdir", mode=0o700), file("privdir/p", b"p", mode=0o640),
        chardev("dev/null"), fifo("tmp/fifo"), file("replaced-by-dev", b"gone"),
    ]
    second = [
        whiteout("a/x"), directory("d"), opaque("d"), file("d/new", b"new"),
        file("d2f", b"now a file"), directory("f2d"), file("f2d/inner", b"inner"),
        hardlink("lower-link", "shared"), file("usrbin/via-symlink", b"written through usr/bin"),
        file(LONG, b"long name"), file(b"caf\xe9-latin1", b"non-utf8"), file(b"dir\xff/x", b"bytes dir"),
        symlink("abs-link", "/etc/passwd"), symlink("dangling", "nowhere/at/all"),
        chardev("replaced-by-dev", 1, 5),
    ]
    third = [
        file("shared", b"overwritten: the links keep the old inode"),
        file("a/sub/z2", b"z2"), whiteout("a"),  # same-layer content survives its whiteout
        symlink("a-link", "a/sub"), file("a-link/through", b"t"),
        directory("f2d", mode=0o750), file("f2d/more", b"m"),
    ]
    fourth = [
        file("same-layer-dup", b"first"), file("same-layer-dup", b"second"),
        file("e", b"e"), whiteout("e"),  # whiteout after the file, same layer: file stays
        hardlink("link-to-long", LONG), hardlink(b"link-to-bytes", "caf\xe9-latin1".encode("latin-1").decode(
            "utf-8", "surrogateescape")),
    ]
    fifth = [
        opaque("f2d"), file("f2d/only", b"only"), whiteout("usrbin"), symlink("usrbin", "bin"),
        whiteout("lower-link"), whiteout("nonexistent"),
    ]
    return [base, second, third, fourth, fifth]


def build(tmp_path: Path) -> tuple[Path, list[Path]]:
    compressions = ["gzip", "none", "gzip", "none", "gzip"]
    layers: list[Layer] = [layer_tar(entries, comp)
                           for entries, comp in zip(image_layers(), compressions, strict=True)]
    layout = OCILayout(tmp_path / "layout")
    layout.add_image("t", layers)
    blobs = [layout.root / "blobs" / "sha256" / layer.digest.split(":", 1)[1] for layer in layers]
    return layout.root, blobs


def snapshot(root: Path, policy: FlattenPolicy | None) -> dict[bytes, tuple[object, ...]]:
    """path -> (type, content or target, mode after policy, mtime) with hard-link groups.

    With ``policy`` the reference tree's modes are mapped through it and its device
    nodes and FIFOs left out: exactly the documented differences.
    """
    tree: dict[bytes, tuple[object, ...]] = {}
    inodes: dict[int, bytes] = {}
    for full, rel, st in walk_lstat(root):
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            perm = policy.dir_mode(mode)[0] if policy else mode
            tree[rel] = ("dir", perm)
        elif stat.S_ISLNK(st.st_mode):
            tree[rel] = ("symlink", os.readlink(full), st.st_mtime_ns)
        elif stat.S_ISREG(st.st_mode):
            perm = policy.file_mode(mode)[0] if policy else mode
            first = inodes.setdefault(st.st_ino, rel)
            with open(full, "rb") as fh:
                tree[rel] = ("file", fh.read(), perm, st.st_mtime_ns, first if first != rel else None)
        elif policy is None:
            tree[rel] = ("special", stat.S_IFMT(st.st_mode))
    return tree


def canonical_links(tree: dict[bytes, tuple[object, ...]]) -> dict[bytes, tuple[object, ...]]:
    """Hard-link groups as sets of paths (which member is 'first' depends on walk order)."""
    groups: dict[bytes, set[bytes]] = {}
    for path, entry in tree.items():
        if entry[0] == "file":
            groups.setdefault(entry[4] or path, set()).add(path)  # type: ignore[arg-type]
    out = {}
    for path, entry in tree.items():
        if entry[0] == "file":
            group = next(g for g in groups.values() if path in g)
            out[path] = (*entry[:4], frozenset(group))
        else:
            out[path] = entry
    return out


def test_flatten_matches_umoci_unpack(tmp_path: Path) -> None:
    layout, blobs = build(tmp_path)
    reference = umoci_unpack(layout, "t", tmp_path / "bundle")
    ours = tmp_path / "ours"
    ours.mkdir()
    policy = FlattenPolicy()
    report = flatten(blobs, ours, policy)

    expected = canonical_links(snapshot(reference, policy))
    actual = canonical_links(snapshot(ours, None))
    assert sorted(actual) == sorted(expected)
    for path in expected:
        assert actual[path] == expected[path], path
    # The documented differences, and only those.
    assert report.dropped_devices == 2 and report.dropped_fifos == 1
    assert report.stripped_setuid == 1
    assert os.path.exists(reference / "dev" / "null") and not os.path.lexists(ours / "dev" / "null")


def test_busybox_image_runs_after_flatten(tmp_path: Path) -> None:
    _layout, blobs = build(tmp_path)
    ours = tmp_path / "ours"
    ours.mkdir()
    flatten(blobs, ours, FlattenPolicy())
    assert os.access(ours / "bin" / "busybox", os.X_OK)
    assert os.readlink(ours / "bin" / "sh") == "busybox"
