"""Reading the mounts below a mount from ``/proc/self/mountinfo`` (pure parts)."""

from __future__ import annotations

from shifter.runtime.linux.mounttree import MountEntry, descendants, parse_mountinfo

MOUNTINFO = """\
22 1 0:5 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:6 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw
31 30 0:7 / /dev/pts rw,nosuid,noexec,relatime shared:3 - devpts devpts rw,gid=5
32 30 0:8 / /dev/shm rw,nosuid,nodev shared:4 master:9 - tmpfs tmpfs rw
33 31 0:9 / /dev/pts rw,relatime - devpts devpts rw
40 22 0:10 / /srv/with\\040space rw - tmpfs x rw
41 22 0:11 / /srv/odd\\134name rw - tmpfs y rw
"""


def test_parse_mountinfo_reads_ids_mount_points_and_types() -> None:
    entries = parse_mountinfo(MOUNTINFO + "garbage line\n")
    assert entries[1] == MountEntry(30, 22, "/dev", "devtmpfs")
    assert entries[3] == MountEntry(32, 30, "/dev/shm", "tmpfs")  # optional fields skipped
    assert [e.mountpoint for e in entries[-2:]] == ["/srv/with space", "/srv/odd\\name"]
    assert len(entries) == 7


def test_descendants_are_the_whole_subtree_and_nothing_else() -> None:
    top, below = descendants(parse_mountinfo(MOUNTINFO), 30)
    assert top is not None and top.mountpoint == "/dev"
    assert [e.mount_id for e in below] == [31, 32, 33]  # the stacked /dev/pts too
    assert descendants(parse_mountinfo(MOUNTINFO), 99) == (None, [])
