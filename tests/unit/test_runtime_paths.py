"""resolve_in_root (SecureJoin semantics) and the escaping-symlink check, on real temp trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shifter.errors import ContainerError, VolumeError
from shifter.runtime.paths import (
    check_no_escaping_symlink,
    find_escaping_symlink,
    is_under,
    normalize_container_path,
    resolve_in_root,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "usr" / "lib").mkdir(parents=True)
    (r / "etc").mkdir()
    (r / "data").mkdir()
    (r / "lib").symlink_to("usr/lib")  # relative, inside
    (r / "abs").symlink_to("/usr/lib")  # absolute: inside the container, outside on the host
    (r / "up").symlink_to("../../../../../etc")  # climbs out
    (r / "loop1").symlink_to("loop2")
    (r / "loop2").symlink_to("loop1")
    (r / "data" / "self").symlink_to(".")
    return r


@pytest.mark.parametrize(("path", "expected"), [
    ("/", ""),
    ("/usr/lib", "usr/lib"),
    ("usr//lib/.", "usr/lib"),
    ("/lib/x.so", "usr/lib/x.so"),
    ("/abs/x.so", "usr/lib/x.so"),
    ("/up/shadow", "etc/shadow"),
    ("/../../etc/passwd", "etc/passwd"),
    ("/data/self/self/new", "data/new"),
    ("/missing/deeper", "missing/deeper"),
])
def test_resolve_in_root_stays_inside(root: Path, path: str, expected: str) -> None:
    result = resolve_in_root(root, path)
    assert result == str(root / expected) if expected else result == str(root)
    assert is_under(result, str(root))


def test_symlink_loop_is_refused(root: Path) -> None:
    with pytest.raises(ContainerError, match="too many levels"):
        resolve_in_root(root, "/loop1/x")


def test_file_component_then_more(root: Path) -> None:
    (root / "etc" / "hosts").write_text("x")
    assert resolve_in_root(root, "/etc/hosts/x") == str(root / "etc/hosts/x")


@pytest.mark.parametrize(("path", "escaping"), [
    ("/usr/lib", None),
    ("/lib/x", None),
    ("/abs/x", "/abs"),
    ("/up/shadow", "/up"),
    ("/data/self/x", None),
    ("/missing", None),
])
def test_find_escaping_symlink(root: Path, path: str, escaping: str | None) -> None:
    assert find_escaping_symlink(root, path) == escaping


def test_absolute_link_textually_under_root_is_followed(root: Path) -> None:
    (root / "inroot").symlink_to(str(root / "usr"))
    assert find_escaping_symlink(root, "/inroot/lib") is None


def test_symlinked_target_pointing_out_is_refused(root: Path) -> None:
    (root / "data" / "out").symlink_to("/etc")
    with pytest.raises(VolumeError, match="/data/out"):
        check_no_escaping_symlink(root, "/data/out/passwd")


def test_relative_link_climbing_out_through_nested_dir(root: Path) -> None:
    (root / "data" / "sneaky").symlink_to("../../outside")
    assert find_escaping_symlink(root, "/data/sneaky") == "/data/sneaky"
    assert resolve_in_root(root, "/data/sneaky") == str(root / "outside")


@pytest.mark.parametrize(("path", "ok"), [
    ("/a/b", "/a/b"), ("/a//b/./", "/a/b"), ("/", "/"),
])
def test_normalize_container_path(path: str, ok: str) -> None:
    assert normalize_container_path(path) == ok


@pytest.mark.parametrize("path", ["a/b", "/a/../b", "/a/\0"])
def test_normalize_container_path_refuses(path: str) -> None:
    with pytest.raises(ContainerError):
        normalize_container_path(path)


def test_is_under() -> None:
    assert is_under("/a/b", "/a")
    assert is_under("/a", "/a")
    assert not is_under("/ab", "/a")
    assert is_under("/x", "/")
    assert os.sep == "/"
