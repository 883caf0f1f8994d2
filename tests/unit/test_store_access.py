"""A private image's files carry its access list (``shifter.store.access``): 0600 plus POSIX ACL
entries for the listed ids; public ones 0644 without an ACL."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest

from shifter.store import access


def _entries(path: Path) -> list[tuple[int, int, int]]:
    data = os.getxattr(path, access.XATTR)
    assert struct.unpack_from("<I", data)[0] == 2
    return [struct.unpack_from("<HHI", data, 4 + 8 * i) for i in range((len(data) - 4) // 8)]


def test_private_file_gets_one_read_entry_per_listed_id_and_nothing_for_others(tmp_path: Path) -> None:
    target = tmp_path / "image.squashfs"
    target.write_bytes(b"hsqs")
    assert access.apply_access(str(target), {"private": True, "users": [4242, 17], "groups": [300]})
    assert target.stat().st_mode & 0o777 == 0o640  # group bits show the mask (read); others nothing
    entries = _entries(target)
    assert (access.ACL_USER, 4, 17) in entries and (access.ACL_USER, 4, 4242) in entries
    assert (access.ACL_GROUP, 4, 300) in entries
    assert (access.ACL_GROUP_OBJ, 0, access.NO_ID) in entries and (access.ACL_OTHER, 0, access.NO_ID) in entries
    assert entries == sorted(entries)  # the kernel wants them sorted by tag, then id


def test_public_again_removes_the_acl(tmp_path: Path) -> None:
    target = tmp_path / "image.json"
    target.write_text("{}")
    access.apply_access(str(target), {"private": True, "users": [5], "groups": []})
    assert access.apply_access(str(target), {"private": False})
    assert target.stat().st_mode & 0o777 == 0o644
    with pytest.raises(OSError):
        os.getxattr(target, access.XATTR)


@pytest.mark.parametrize("acl", [{"private": True}, {"private": True, "users": ["x", True, -1]}, "garbage"])
def test_private_with_nobody_listed_or_malformed_is_owner_only(tmp_path: Path, acl: object) -> None:
    target = tmp_path / "f"
    target.write_text("x")
    assert access.apply_access(str(target), acl)  # type: ignore[arg-type]
    assert target.stat().st_mode & 0o777 == 0o600


def test_a_file_system_without_acls_leaves_the_file_owner_only(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def no_acls(*_args: object) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(access.os, "setxattr", no_acls)
    target = tmp_path / "f"
    target.write_text("x")
    assert access.apply_access(str(target), {"private": True, "users": [5], "groups": []}) is False
    assert target.stat().st_mode & 0o777 == 0o600


def test_an_fd_works_like_a_path(tmp_path: Path) -> None:
    target = tmp_path / "f"
    fd = os.open(target, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        assert access.apply_access(fd, {"private": True, "users": [9], "groups": []})
    finally:
        os.close(fd)
    assert (access.ACL_USER, 4, 9) in _entries(target)
