"""Generated /etc/passwd, /etc/group and nsswitch.conf (shifter.runtime.etc)."""

from __future__ import annotations

from shifter.runtime.etc import filter_groups, generate_etc_files, passwd_text, read_site_etc
from shifter.runtime.spec import Identity

ALICE = Identity(uid=2001, gid=2001, groups=(2001, 0, 3000, 3000, 3001), user="alice", home="/home/alice")


def test_groups_never_contain_gid_0_and_are_deduplicated() -> None:
    assert filter_groups(2001, (2001, 0, 3000, 3000, 3001), 31) == (2001, 3000, 3001)


def test_groups_cut_to_max_group_count_primary_first() -> None:
    assert filter_groups(5, range(100, 200), 3) == (5, 100, 101)


def test_primary_gid_0_is_dropped_too() -> None:
    assert filter_groups(0, (0, 7), 31) == (7,)


def test_passwd_has_root_user_and_nobody() -> None:
    lines = passwd_text(ALICE).splitlines()
    assert lines[0].startswith("root:x:0:0:")
    assert "alice:x:2001:2001:alice:/home/alice:/bin/sh" in lines
    assert any(line.startswith("nobody:x:65534:") for line in lines)


def test_hostile_user_name_cannot_add_fields_or_lines() -> None:
    evil = Identity(uid=2002, gid=2002, groups=(), user="x:0:0::/:/bin/sh\nroot2", home="/h")
    text = passwd_text(evil)
    assert len(text.splitlines()) == 3
    user_line = text.splitlines()[1]
    assert user_line.split(":")[2] == "2002"
    assert user_line.count(":") == 6


def test_group_file_lists_user_as_member_with_names() -> None:
    files = generate_etc_files(ALICE, (2001, 3000), {2001: "alice", 3000: "proj"})
    assert "alice:x:2001:alice" in files["group"].splitlines()
    assert "proj:x:3000:alice" in files["group"].splitlines()
    assert files["group"].splitlines()[0] == "root:x:0:"


def test_unknown_group_gets_a_synthetic_name() -> None:
    files = generate_etc_files(ALICE, (4242,), {})
    assert "group4242:x:4242:alice" in files["group"]


def test_nsswitch_uses_files() -> None:
    assert "passwd: files" in generate_etc_files(ALICE, (), {})["nsswitch.conf"]


def test_site_passwd_replaces_generated_and_user_is_appended_when_missing() -> None:
    site = {"passwd": "root:x:0:0::/root:/bin/bash\nsite:x:500:500::/:/bin/false"}
    files = generate_etc_files(ALICE, (2001,), {2001: "alice"}, site)
    lines = files["passwd"].splitlines()
    assert lines[:2] == ["root:x:0:0::/root:/bin/bash", "site:x:500:500::/:/bin/false"]
    assert lines[2].startswith("alice:x:2001:")


def test_site_passwd_already_naming_user_is_kept_as_is() -> None:
    site = {"passwd": "alice:x:2001:2001::/site/home:/bin/zsh\n"}
    assert generate_etc_files(ALICE, (), {}, site)["passwd"] == site["passwd"]


def test_root_container_passwd_has_no_duplicate_root() -> None:
    root = Identity(uid=0, gid=0, groups=(0,), user="root", home="/root")
    assert passwd_text(root).count(":x:0:") == 1


def test_read_site_etc_reads_present_files_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "group").write_text("g:x:1:\n")
    assert read_site_etc(str(tmp_path)) == {"group": "g:x:1:\n"}
    assert read_site_etc("") == {}
