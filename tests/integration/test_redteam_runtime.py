"""Red-team attacks on the privileged edge, each named after the attack.

The races are made deterministic through the syscall seam (``shifter.runtime.linux.syscalls``):
the test's ``mount`` wrapper performs the user's swap at the worst moment, right after the
kernel mounted.  Each scenario runs in a child process with its own mount namespace, so
nothing it mounts reaches the host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (mount namespaces, loop devices)")
USER = 2001

# The scenario: a container root (tmpfs) holding a directory root owns (``/c``, standing in for
# a host directory reachable in the container: /dev/shm, a site volume, ...) and a directory
# the user controls (``/data``, standing in for a user volume).  The perNodeCache target is
# ``/data/sub/c``.  Right after the cache is mounted, the user renames ``/data/sub`` away and
# plants ``/data/sub -> /``: a second lookup of ``/data/sub/c`` now names ``/c``.
_SCENARIO = """
import os, sys
from shifter.runtime import plan as p
from shifter.runtime.linux import executor, syscalls as sc
from shifter.errors import ShifterError

base, method, uid = sys.argv[1], sys.argv[2], int(sys.argv[3])
sc.unshare(sc.CLONE_NEWNS)
sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
root = os.path.join(base, "root")
os.mkdir(root)
sc.mount("tmpfs", root, "tmpfs", 0, "mode=755")
os.makedirs(os.path.join(root, "c"), mode=0o755)
os.makedirs(os.path.join(root, "data/sub/c"))
real_mount = sc.mount

def swapping_mount(source, target, fstype, flags, data=None):
    real_mount(source, target, fstype, flags, data)
    if fstype == "ext4" or (fstype == "tmpfs" and "size=" in (data or "")):
        os.rename(os.path.join(root, "data/sub"), os.path.join(root, "data/sub.old"))
        os.symlink("/", os.path.join(root, "data/sub"))

sc.mount = swapping_mount
ctx = executor.Context(lambda m: None, (uid, uid, ()))
ctx.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
op = p.MountCache("user", "/data/sub/c", 64 * 1024 * 1024, method, fs="ext4", backing_dir=base,
                  uid=uid, gid=uid)
try:
    executor.mount_cache(op, ctx)
    outcome = "mounted"
except ShifterError:
    outcome = "refused"
st = os.stat(os.path.join(root, "c"))
cache = os.stat(os.path.join(root, "data/sub.old/c"))
print(outcome, st.st_uid, st.st_gid, oct(st.st_mode & 0o7777), cache.st_uid)
"""


def _run_scenario(tmp_path: Path, method: str) -> list[str]:
    script = tmp_path / "scenario.py"
    script.write_text(textwrap.dedent(_SCENARIO))
    res = subprocess.run([sys.executable, str(script), str(tmp_path), method, str(USER)],
                         capture_output=True,
                         text=True, check=False, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


@needs_root
@pytest.mark.parametrize("method", ["tmpfs", "loop"])
def test_per_node_cache_symlink_swap_after_mount_cannot_chown_a_host_directory(
        tmp_path: Path, method: str) -> None:
    if method == "loop" and not shutil.which("mkfs.ext4", path="/usr/sbin:/usr/bin:/sbin:/bin"):
        pytest.skip("needs mkfs.ext4")
    outcome, uid, gid, mode, cache_uid = _run_scenario(tmp_path, method)
    # Root never chowns what the swapped path names now...
    assert (uid, gid, mode) == ("0", "0", "0o755")
    if method == "tmpfs":
        # ...a tmpfs is the user's from its mount options, nothing is looked up again...
        assert (outcome, cache_uid) == ("mounted", str(USER))
    else:
        # ...and a loop file system whose path changed is refused.
        assert outcome == "refused"
