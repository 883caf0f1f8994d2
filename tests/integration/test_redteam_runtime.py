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

from tests.fixtures.runtime import USER, needs_root, run_scenario, shared_base, swap_scenario  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


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
real_mount, real_move_mount = sc.mount, sc.move_mount

def swap():
    os.rename(os.path.join(root, "data/sub"), os.path.join(root, "data/sub.old"))
    os.symlink("/", os.path.join(root, "data/sub"))

def swapping_mount(source, target, fstype, flags, data=None):
    real_mount(source, target, fstype, flags, data)
    if fstype == "ext4" or (fstype == "tmpfs" and "size=" in (data or "")):
        swap()

def swapping_move_mount(mount_fd, target_fd):  # the tmpfs is made detached, then attached
    real_move_mount(mount_fd, target_fd)
    swap()

sc.mount, sc.move_mount = swapping_mount, swapping_move_mount
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


# The remount race.  Volumes, bound in plan order: the user's writable ``/data`` (host ``vol``),
# a site volume ``/other`` (the victim), and ``/data/sub`` read-only (its mount point lies in
# ``vol``, which the user writes).  Right after the kernel mounted ``/data/sub``, the user renames
# ``vol/sub`` away and plants ``vol/sub -> /other``.  A remount that looked ``/data/sub`` up again
# would make ``/other`` read-only and leave the real ``/data/sub`` writable and without nosuid.
_REMOUNT_SCENARIO = swap_scenario("sub", """
def swapping_mount(*args, **kw):
    real_mount(*args, **kw)
    swap_as_user()

def swapping_move_mount(*args):
    real_move_mount(*args)
    swap_as_user()

sc.mount, sc.move_mount = swapping_mount, swapping_move_mount
@NO_FSMOUNT@
user = dict(as_user=privileged, check_target=True)
binds = [p.Bind("user", vol, "/data", **user), p.Bind("site", os.path.join(base, "other"), "/other"),
         p.Bind("user", os.path.join(base, "ro-src"), "/data/sub", read_only=True, **user)]
try:
    for op in binds:
        armed[:] = [True] if op.target == "/data/sub" else []
        executor.bind(op, ctx)
    for op in (p.Remount("/data", False), p.Remount("/other", False), p.Remount("/data/sub", True)):
        executor.remount(op, ctx)
    outcome = "remounted"
except ShifterError as err:
    outcome = "refused"
assert not armed and os.path.islink(os.path.join(root, "data/sub")), "the swap did not happen"
real = os.statvfs(os.path.join(root, "data/sub.old")).f_flag
other = os.statvfs(os.path.join(root, "other")).f_flag
print(outcome, int(bool(real & os.ST_RDONLY)), int(bool(real & os.ST_NOSUID)), int(bool(real & os.ST_NODEV)),
      int(bool(other & os.ST_RDONLY)))
""", argc=4)


def _remount_scenario(base: Path, mode: str, *extra: str) -> list[str]:
    for name in ("root", "vol/sub", "other", "ro-src"):
        (base / name).mkdir(parents=True)
    os.chown(base / "vol", USER, USER)
    os.chown(base / "vol/sub", USER, USER)
    (base / "ro-src/data.txt").write_text("read me, do not write me\n")
    for path in (base / "root", base / "other", base / "ro-src"):
        os.chmod(path, 0o755)
    return run_scenario(base, _REMOUNT_SCENARIO, mode, *extra)


@needs_root
@pytest.mark.parametrize(("mode", "kernel"), [("privileged", ()), ("unprivileged", ()),
                                              ("privileged", ("no-open-tree",))],
                         ids=["privileged", "unprivileged", "privileged-kernel-without-open-tree"])
def test_symlink_swap_in_volume_between_bind_and_remount_cannot_redirect_the_remount(
        shared_base: Path, mode: str, kernel: tuple[str, ...]) -> None:  # noqa: F811
    # (Without open_tree, Linux < 5.2, the new mount is re-opened at once by the symlink-free
    # path of its mount point, which follows the rename, and checked to show the source.)
    outcome, ro, nosuid, nodev, other_ro = _remount_scenario(shared_base, mode, *kernel)
    # The site volume the swapped path now names is left alone...
    assert other_ro == "0"
    # ...and the read-only volume got its own remount: read-only, nosuid, nodev (or, at
    # worst, the container is refused).
    assert outcome == "refused" or (outcome, ro, nosuid, nodev) == ("remounted", "1", "1", "1")

