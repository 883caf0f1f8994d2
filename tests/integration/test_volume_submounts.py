"""A volume shows what the host shows below its source: never the files a host mount hides.

``--volume=DIR:/data`` where a file system is mounted on ``DIR/covered`` (over a directory holding a
secret file) must show the mount, not the directory under it: the privileged path binds the whole
tree (the kernel refuses anything else in a user namespace) and gives every mount of it the
volume's flags.  A volume of ``/`` (``/proc/self/root``) holds the container's own tree and is
refused, as is any source holding ``udiMount`` or ``loopMount`` (also behind a symlink), and a site
configuration putting them under a tree every container binds.  A read-only volume is read-only
from the moment it is bound: a missing target in it is made in an exploded tmpfs, never in the
host's directory, and a writable volume nested in it stays writable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.runtime import TEST_UID, needs_tools, run_scenario, scratch_dir
from tests.integration import test_runtime_security as security
from tests.integration.test_runtime_security import MODES, Site

pytestmark = pytest.mark.integration
site = security.site  # the same module-scoped site fixture (busybox image, both modes)
SECRET = "hidden-by-a-mount"


@pytest.fixture(scope="module")
def covered() -> Iterator[Path]:
    """``parent/covered/secret.txt`` (world-readable) with a tmpfs mounted over ``covered`` in the
    host's mount namespace, holding ``visible.txt``."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    base = scratch_dir("shifter-covered-")
    parent = base / "parent"
    (parent / "covered").mkdir(parents=True)
    (parent / "covered/secret.txt").write_text(SECRET + "\n")
    (parent / "plain.txt").write_text("plain\n")
    for path in (parent, parent / "covered"):
        os.chmod(path, 0o755)
    os.chmod(parent / "covered/secret.txt", 0o644)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755", "cover", str(parent / "covered")], check=True)
    (parent / "covered/visible.txt").write_text("visible\n")
    os.chmod(parent / "covered/visible.txt", 0o644)
    yield parent
    subprocess.run(["umount", "-l", str(parent / "covered")], check=False)
    shutil.rmtree(base, ignore_errors=True)


def _listing(res: subprocess.CompletedProcess[str]) -> list[str]:
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


@needs_tools
@MODES
@pytest.mark.parametrize("prefix", ["", "/proc/self/root"], ids=["path", "proc-self-root"])
def test_volume_does_not_reveal_files_a_host_mount_hides(site: Site, runner, covered: Path,  # type: ignore[no-untyped-def]
                                                         prefix: str) -> None:
    res = runner(site, f"--volume={prefix}{covered}:/data", "sh", "-c",
                 "ls /data/covered; cat /data/covered/secret.txt 2>/dev/null; true")
    assert _listing(res) == ["visible.txt"]
    assert SECRET not in res.stdout


@needs_tools
@MODES
def test_read_only_volume_is_read_only_on_the_mounts_below_it_too(site: Site, runner,  # type: ignore[no-untyped-def]
                                                                   covered: Path) -> None:
    res = runner(site, f"--volume={covered}:/data:ro", "sh", "-c",
                 "touch /data/covered/new 2>/dev/null && echo WROTE; grep ' /data/covered ' /proc/self/mountinfo")
    assert res.returncode == 0, res.stderr
    assert "WROTE" not in res.stdout and not (covered / "covered/new").exists()
    options = res.stdout.split()[5].split(",")
    assert {"ro", "nosuid", "nodev"} <= set(options)


@needs_tools
@MODES
@pytest.mark.parametrize("source", ["/", "/proc/self/root", "/var/lib"])
def test_volume_holding_the_container_tree_is_refused(site: Site, runner, covered: Path,  # type: ignore[no-untyped-def]
                                                      source: str) -> None:
    res = runner(site, f"--volume={source}:/data", "sh", "-c", f"ls /data{covered}/covered; true")
    assert res.returncode == 15, (res.stdout, res.stderr)
    assert "where the container is built" in res.stderr and SECRET not in res.stdout


@needs_tools
@MODES
def test_volume_source_symlinked_to_the_udimount_parent_is_refused(site: Site, runner) -> None:  # type: ignore[no-untyped-def]
    home = scratch_dir("shifter-link-")
    os.chown(home, TEST_UID, TEST_UID)
    link = home / "innocent"
    link.symlink_to(site.udi.parent)
    try:
        res = runner(site, f"--volume={link}:/data", "ls", "/data")
        assert res.returncode == 15, (res.stdout, res.stderr)
        assert "where the container is built" in res.stderr
    finally:
        shutil.rmtree(home, ignore_errors=True)


# Linux < 5.12 (no mount_setattr), simulated through the syscall seam: a volume with mounts below it
# is refused, one without is remounted as before; /dev is walked mount by mount.
_OLD_KERNEL = """
import os, sys
from shifter.errors import VolumeError
from shifter.runtime import plan as p
from shifter.runtime.linux import executor, syscalls as sc

base, mode, uid, covered = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

def enosys(*args, **kwargs):
    raise OSError(38, "ENOSYS")

sc.mount_setattr = enosys
ctx = executor.Context(lambda m: None, (uid, uid, ()))
executor.enter_namespaces(p.EnterNamespaces(mode != "privileged", uid, uid), ctx)
root = os.path.join(base, "root")
sc.mount("tmpfs", root, "tmpfs", 0, "mode=755")
ctx.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
try:
    executor.bind(p.Bind("user", covered, "/data"), ctx)
    print("BOUND")
except VolumeError as err:
    print("REFUSED" if "mounted below it" in err.message else "OTHER")
executor.bind(p.Bind("user", os.path.join(base, "plain"), "/plain", read_only=True), ctx)
executor.remount(p.Remount("/plain", True), ctx)
executor.bind(p.Bind("system", "/dev", "/dev", flags=p.DEV_FLAGS, devices=True), ctx)
for line in open("/proc/self/mountinfo"):
    fields = line.split()
    if fields[4] in (root + "/dev", root + "/plain") or fields[4].startswith(root + "/dev/"):
        print(fields[4][len(root):] + "=" + fields[5] + "=" + fields[fields.index("-") + 1])
"""


@needs_tools
@pytest.mark.parametrize("mode", ["privileged", "unprivileged"])
def test_kernel_without_mount_setattr_refuses_a_volume_with_mounts_below(covered: Path, mode: str) -> None:
    base = scratch_dir("shifter-oldkernel-")
    (base / "root").mkdir(mode=0o755)
    (base / "plain").mkdir(mode=0o755)
    try:
        words = run_scenario(base, _OLD_KERNEL, mode, str(covered))
    finally:
        subprocess.run(["umount", "-l", str(base / "root")], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)
    assert words[0] == "REFUSED"
    last = {point: (set(opts.split(",")), fstype) for point, opts, fstype in (w.split("=") for w in words[1:])}
    assert {"ro", "nosuid", "nodev"} <= last.pop("/plain")[0]  # without mounts below: remounted as before
    dev_opts, _ = last["/dev"]
    assert {"nosuid", "noexec"} <= dev_opts and "nodev" not in dev_opts
    pts_opts, _ = last["/dev/pts"]  # the reachable (top) one
    assert "nodev" not in pts_opts and "nosuid" in pts_opts
    for point, (opts, fstype) in last.items():
        if fstype != "devpts" and point != "/dev":
            assert {"nosuid", "nodev", "noexec"} <= opts, point


@needs_tools
@MODES
def test_writable_volume_nested_in_a_read_only_one_stays_writable(site: Site, runner) -> None:  # type: ignore[no-untyped-def]
    outer, inner = scratch_dir("shifter-outer-"), scratch_dir("shifter-inner-")
    try:
        (outer / "f").write_text("outer\n")
        os.chmod(outer / "f", 0o644)
        os.chown(inner, TEST_UID, TEST_UID)
        res = runner(site, f"--volume={outer}:/x:ro", f"--volume={inner}:/x/new", "sh", "-c",
                     "cat /x/f; echo hi > /x/new/g && echo WROTE-INNER; "
                     "touch /x/h 2>/dev/null && echo WROTE-OUTER; true")
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == ["outer", "WROTE-INNER"]
        # The missing target was made in a tmpfs over /x (the read-only volume), not in the host's directory.
        assert sorted(os.listdir(outer)) == ["f"] and (inner / "g").read_text() == "hi\n"
    finally:
        shutil.rmtree(outer, ignore_errors=True)
        shutil.rmtree(inner, ignore_errors=True)


@needs_tools
@pytest.mark.parametrize(("where", "tree"), [("/tmp", "/tmp"), ("/var/tmp", "/var/tmp"), ("/dev/shm", "/dev")])
def test_site_config_with_the_container_tree_under_a_bound_tree_is_refused(site: Site, where: str, tree: str) -> None:
    config = site.root / f"bad-{where.strip('/').replace('/', '-')}.conf"
    config.write_text(site.config.read_text() + f"udiMount={where}/shifter-udi\n")
    os.chmod(config, 0o644)
    for cmd in ([security.SHIFTER, f"--user={security.TEST_USER}", f"--image={site.image}", "true"],
                [str(security.VENV_BIN / "shifter-setup"), f"--image={site.image}", f"--user={security.TEST_USER}"]):
        res = subprocess.run(cmd, cwd="/", env=security.shifter_env(config), capture_output=True, text=True,
                             timeout=60, check=False)
        assert res.returncode == 2, (cmd, res.stderr)
        assert f"udiMount {where}/shifter-udi overlaps {tree}, which every container binds" in res.stderr
        assert "(hint: put udiMount and loopMount where no container binds" in res.stderr
