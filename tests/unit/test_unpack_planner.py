"""The pure planner: headers in, operations out (no file system)."""

from __future__ import annotations

import pytest

from shifter.unpack.planner import (
    Header,
    MakeDir,
    MakeLink,
    MakeSymlink,
    MemberKind,
    Planner,
    Remove,
    SetDirMeta,
    WriteFile,
    clean_name,
)
from shifter.unpack.policy import FlattenPolicy

F, D, L, H = MemberKind.FILE, MemberKind.DIR, MemberKind.SYMLINK, MemberKind.HARDLINK


def hdr(name: str | bytes, kind: MemberKind = F, link: str = "", mode: int = 0o644) -> Header:
    raw = name if isinstance(name, bytes) else name.encode()
    return Header(raw, kind, mode=mode, mtime_ns=1, linkname=link.encode())


def run(*layers: list[Header], policy: FlattenPolicy | None = None) -> tuple[Planner, list[object]]:
    planner = Planner(policy or FlattenPolicy())
    ops: list[object] = []
    for i, members in enumerate(layers):
        planner.begin_layer(i)
        for member in members:
            ops += planner.plan(member)
    return planner, ops


def written(ops: list[object]) -> list[bytes]:
    return [b"/".join(op.path) for op in ops if isinstance(op, WriteFile)]


@pytest.mark.parametrize(("raw", "parts", "flag"), [
    (b"a/b", (b"a", b"b"), False),
    (b"./a//b/", (b"a", b"b"), False),
    (b"/etc/passwd", (b"etc", b"passwd"), True),
    (b"/a/../../b", (b"b",), True),
    (b"../../../x", (b"x",), True),
    (b"..", (), True),
])
def test_clean_name(raw: bytes, parts: tuple[bytes, ...], flag: bool) -> None:
    assert clean_name(raw) == (parts, flag)


def test_missing_parents_are_created_once() -> None:
    _, ops = run([hdr("a/b/c"), hdr("a/b/d")])
    assert ops[:2] == [MakeDir((b"a",)), MakeDir((b"a", b"b"))]
    assert written(ops) == [b"a/b/c", b"a/b/d"]


def test_symlink_parent_resolves_inside_root() -> None:
    _, ops = run([hdr("evil", L, "/etc"), hdr("evil/x")])
    assert isinstance(ops[0], MakeSymlink)
    assert written(ops) == [b"etc/x"]


def test_relative_symlink_cannot_climb_above_root() -> None:
    _, ops = run([hdr("a/b/evil", L, "../../../../.."), hdr("a/b/evil/x")])
    assert written(ops) == [b"x"]


def test_symlink_loop_is_dropped() -> None:
    planner, ops = run([hdr("a", L, "b"), hdr("b", L, "a"), hdr("a/x")])
    assert written(ops) == []
    assert planner.report.dropped_other == 1


def test_leaf_symlink_is_replaced_not_followed() -> None:
    _, ops = run([hdr("etc", D), hdr("evil", L, "/etc")], [hdr("evil")])
    assert ops[-2:] == [Remove((b"evil",)), WriteFile((b"evil",), 0o644, 1, 0)]


def test_whiteout_spares_same_layer_entries() -> None:
    _, ops = run([hdr("a")], [hdr("b"), hdr(".wh.b"), hdr(".wh.a")])
    assert Remove((b"b",)) not in ops
    assert Remove((b"a",)) in ops


def test_opaque_keeps_same_layer_children() -> None:
    _, ops = run([hdr("d", D), hdr("d/old"), hdr("d/sub/deep")],
                 [hdr("d", D), hdr("d/new"), hdr("d/.wh..wh..opq")])
    removed = {op.path for op in ops if isinstance(op, Remove)}
    assert removed == {(b"d", b"old"), (b"d", b"sub")}


def test_whiteout_of_dir_touched_in_same_layer_keeps_new_children() -> None:
    _, ops = run([hdr("d/old")], [hdr("d/new"), hdr(".wh.d")])
    removed = {op.path for op in ops if isinstance(op, Remove)}
    assert removed == {(b"d", b"old")}


@pytest.mark.parametrize("name", [".wh..", ".wh...", "a/.wh..", ".wh."])
def test_invalid_whiteout_names_are_dropped(name: str) -> None:
    planner, ops = run([hdr("a/x")], [hdr(name)])
    assert not any(isinstance(op, Remove) for op in ops)
    assert planner.report.dropped_other == 1


def test_file_replaces_dir_and_back() -> None:
    _, ops = run([hdr("t/c")], [hdr("t")], [hdr("t", D), hdr("t/n")])
    assert Remove((b"t",)) in ops
    assert written(ops) == [b"t/c", b"t", b"t/n"]


def test_hardlink_to_lower_layer_and_bad_targets() -> None:
    planner, ops = run([hdr("f"), hdr("d", D)],
                       [hdr("h", H, "f"), hdr("h2", H, "d"), hdr("h3", H, "missing"), hdr("h4", H, "/../f")])
    links = [op for op in ops if isinstance(op, MakeLink)]
    assert links == [MakeLink((b"h",), (b"f",)), MakeLink((b"h4",), (b"f",))]
    assert planner.report.dropped_other == 2


def test_hardlink_target_parent_resolves_inside_root() -> None:
    _, ops = run([hdr("etc/passwd"), hdr("s", L, "/etc")], [hdr("h", H, "s/passwd")])
    assert MakeLink((b"h",), (b"etc", b"passwd")) in ops


def test_device_clobbers_then_drops() -> None:
    planner, ops = run([hdr("dev/null")], [hdr("dev/null", MemberKind.DEVICE), hdr("p", MemberKind.FIFO)])
    assert Remove((b"dev", b"null")) in ops
    assert written(ops) == [b"dev/null"]
    assert (planner.report.dropped_devices, planner.report.dropped_fifos) == (1, 1)


def test_depth_and_name_length_limits() -> None:
    policy = FlattenPolicy(max_depth=4)
    planner, ops = run([hdr("a/b/c/d"), hdr("a/b/c/d/e"), hdr("x" * 256)], policy=policy)
    assert written(ops) == [b"a/b/c/d"]
    assert planner.report.dropped_other == 2


def test_modes_follow_policy() -> None:
    planner, ops = run([hdr("s", mode=0o4755), hdr("p", mode=0o600), hdr("w", mode=0o777),
                        hdr("d", D, mode=0o700)])
    modes = {op.path: op.mode for op in ops if isinstance(op, WriteFile)}
    assert modes == {(b"s",): 0o755, (b"p",): 0o644, (b"w",): 0o755}
    assert planner.report.stripped_setuid == 1
    final = {op.path: op.mode for op in planner.finish() if isinstance(op, SetDirMeta)}
    assert final == {(b"d",): 0o755, (): 0o755}


def test_keep_setuid_policy() -> None:
    _, ops = run([hdr("s", mode=0o6755)], policy=FlattenPolicy(keep_setuid=True))
    assert written(ops) and next(op.mode for op in ops if isinstance(op, WriteFile)) == 0o6755


def test_finish_lists_children_before_parents_and_counts() -> None:
    planner, _ = run([hdr("a/b/f"), hdr("a/l", L, "b")])
    dirs = [op.path for op in planner.finish() if isinstance(op, SetDirMeta)]
    assert dirs == [(b"a", b"b"), (b"a",), ()]
    assert (planner.report.files, planner.report.symlinks, planner.report.directories) == (1, 1, 2)
