"""The pure parts of the squashfuse helper: finding a FUSE connection in mountinfo, the deadline key."""

from __future__ import annotations

import pytest

from shifter.config.site import parse_config
from shifter.errors import ConfigError
from shifter.runtime.linux.fusehelper import SQUASHFUSE_OPTIONS, helper_argv, parse_mountinfo

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
90 22 0:61 / /var/lib/shifter/loop\\040dir/image ro,nosuid,nodev shared:2 - fuse.squashfuse squashfuse rw,user_id=0
91 22 0:62 / /mnt/other rw - fuse.sshfs host:/x rw,user_id=2001
92 22 259:3 / /var/lib/shifter/udi/bin ro - fuse.squashfuse squashfuse rw,user_id=0
"""


def test_mountinfo_gives_the_connection_of_each_squashfuse_mount() -> None:
    # fusectl names a connection by the kernel's dev_t: MKDEV(major, minor) = major << 20 | minor;
    # escaped blanks in mount points are decoded.
    assert parse_mountinfo(MOUNTINFO, "fuse.squashfuse") == [
        (61, "/var/lib/shifter/loop dir/image"), ((259 << 20) | 3, "/var/lib/shifter/udi/bin")]
    assert parse_mountinfo(MOUNTINFO, "fuse.sshfs") == [(62, "/mnt/other")]


def test_fuse_timeout_is_a_positive_number_of_seconds() -> None:
    assert parse_config("").fuse_timeout == 30.0
    assert parse_config("fuseTimeout=2.5\n").fuse_timeout == 2.5
    for bad in ("0", "-1", "abc", "nan", "inf", "100000"):
        with pytest.raises(ConfigError, match="fuseTimeout"):
            parse_config(f"fuseTimeout={bad}\n")


def test_squashfuse_gets_the_kernel_cache_options_of_an_immutable_image() -> None:
    argv = helper_argv("/usr/bin/squashfuse", "/store/a.squashfs", 7)
    assert argv == ["/usr/bin/squashfuse", "-o", SQUASHFUSE_OPTIONS, "/store/a.squashfs", "/dev/fd/7"]
    assert "kernel_cache" in SQUASHFUSE_OPTIONS.split(",")
    assert not {"allow_other", "default_permissions"} & set(SQUASHFUSE_OPTIONS.split(","))  # mount options are ours
    assert helper_argv("squashfuse_ll", "/s", 3) == ["squashfuse_ll", "/s", "/dev/fd/3"]
