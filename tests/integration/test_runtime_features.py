"""Real containers, both modes: perNodeCache, volume targets created under read-only image
directories, per-user-store images in privileged mode (squashfuse as the user), the caller's
loader variables never reaching a privileged helper, ``slave`` propagation, and group names.

Privileged: ``shifter --user=shiftertest`` as root.  Unprivileged: ``shifter`` as that user.
The image store layout and the test user come from ``test_runtime_security``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.runtime import (
    IS_ROOT,
    SHIFTER,
    TEST_UID,
    TEST_USER,
    build_rootfs,
    container_site,
    ensure_user,
    loop_devices,
    needs_tools,
    publish,
    shifter_env,
)

pytestmark = pytest.mark.integration

GROUP, GROUP_GID = "shiftergrp", 2101
Runner = Callable[..., subprocess.CompletedProcess[str]]


@dataclass
class Site:
    root: Path
    config: Path
    image: str  # in the site store
    user_image: str  # only in the per-user store (written by the test user)
    user_image_id: str
    cache_dir: Path
    shared: Path  # a shared mount on the host (slave propagation)


def _ensure_group() -> None:
    if subprocess.run(["getent", "group", GROUP], capture_output=True, check=False).returncode != 0:
        subprocess.run(["groupadd", "-g", str(GROUP_GID), GROUP], check=True)
    subprocess.run(["usermod", "-a", "-G", GROUP, TEST_USER], check=True)


def _write_config(path: Path, base: Path, extra: str = "") -> None:
    path.write_text(f"imagePath={base / 'store'}\nudiMount={base / 'udi'}\nloopMount={base / 'loop'}\n"
                    f"autoPull=0\nuserImagePath={base / 'userstore'}\nmaxGroupCount=8\n"
                    f"perNodeCachePath={base / 'cache'}\n{extra}")
    os.chmod(path, 0o644)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    if not IS_ROOT:
        pytest.skip("needs root")
    ensure_user()
    _ensure_group()
    base = container_site("shifter-feat-", "store/tags/docker", "userstore/tags/docker", "udi", "loop", "cache",
                          "shared/sub")
    rootfs = base / "rootfs"
    build_rootfs(rootfs)
    (rootfs / "app").mkdir()
    (rootfs / "app/hello.txt").write_text("hello from the image\n")
    (rootfs / "lnk").symlink_to("usr")  # a link that stays inside the image
    image_id, user_id = "3" * 64, "4" * 64
    publish(base / "store", rootfs, "docker.io/library/busybox:feat", image_id)
    publish(base / "userstore", rootfs, "docker.io/library/mine:1", user_id)
    for dirpath, _dirs, files in os.walk(base / "userstore"):  # the user wrote this store
        for name in [dirpath, *(os.path.join(dirpath, f) for f in files)]:
            os.chown(name, TEST_UID, TEST_UID)
    for dirpath, _dirs, files in os.walk(base / "store"):
        os.chmod(dirpath, 0o755)
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o644)
    _write_config(base / "udiRoot.conf", base)
    shared = base / "shared"
    subprocess.run(["mount", "--bind", str(shared), str(shared)], check=True)
    subprocess.run(["mount", "--make-shared", str(shared)], check=True)
    yield Site(base, base / "udiRoot.conf", "busybox:feat", "mine:1", user_id, base / "cache", shared)
    subprocess.run(["umount", "-R", "-l", str(shared)], check=False)
    shutil.rmtree(base, ignore_errors=True)


def run_priv(site: Site, *args: str, image: str | None = None, config: Path | None = None,
             **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SHIFTER, f"--user={TEST_USER}", f"--image={image or site.image}", *args], cwd="/",
                          env=shifter_env(config or site.config, **extra), capture_output=True, text=True, timeout=120,
                          check=False)


def _user_cmd(site: Site, args: tuple[str, ...], image: str | None, config: Path | None,
              extra: dict[str, str]) -> list[str]:
    env = [f"{k}={v}" for k, v in shifter_env(config or site.config, USER=TEST_USER, **extra).items()]
    return ["runuser", "-u", TEST_USER, "--", "env", "-i", *env, SHIFTER, f"--image={image or site.image}",
            *args]


def run_user(site: Site, *args: str, image: str | None = None, config: Path | None = None,
             **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_user_cmd(site, args, image, config, extra), cwd="/", capture_output=True, text=True,
                          timeout=120, check=False)


MODES = pytest.mark.parametrize("runner", [run_priv, run_user], ids=["privileged", "unprivileged"])


def _mount_line(output: str, target: str) -> list[str]:
    """The mountinfo fields of ``target`` from a container's ``cat /proc/self/mountinfo``."""
    lines = [line.split() for line in output.splitlines() if f" {target} " in line]
    assert lines, f"{target} is not mounted:\n{output}"
    return lines[-1]


def _fstype(fields: list[str]) -> str:
    return fields[fields.index("-") + 1]


def _loop_devices(site: Site) -> list[str]:
    return loop_devices(str(site.root), site.user_image_id)


def _processes(pattern: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if pattern in cmd and state != "Z":
            found.append(int(pid))
    return found


def _wait_gone(check: Callable[[], list[object]], seconds: float = 5.0) -> list[object]:
    deadline = time.monotonic() + seconds
    while (left := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _leftovers(site: Site) -> list[object]:
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if str(site.root) in line and str(site.shared) not in line]
    return [*mounts, *_loop_devices(site), *_processes(site.user_image_id), *os.listdir(site.cache_dir)]


# --- perNodeCache ------------------------------------------------------------------------------

CACHE_SCRIPT = ("id -u; stat -c '%u %a' /cache; echo data > /cache/f && cat /cache/f;"
                " cat /proc/self/mountinfo")


@needs_tools
@MODES
def test_per_node_cache_is_a_fresh_writable_file_system(site: Site, runner: Runner) -> None:
    res = runner(site, "--volume=/nonexistent:/cache:perNodeCache=size=1G", "sh", "-c", CACHE_SCRIPT)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[:3] == [str(TEST_UID), f"{TEST_UID} 755", "data"]
    fields = _mount_line(res.stdout, "/cache")
    assert "nosuid" in fields[5] and "nodev" in fields[5]
    assert _fstype(fields) == ("xfs" if runner is run_priv else "tmpfs")
    assert _wait_gone(lambda: _leftovers(site)) == []


@needs_tools
def test_per_node_cache_ext4_and_nothing_left_in_the_cache_directory(site: Site) -> None:
    res = run_priv(site, "--volume=/x:/scratch/c:perNodeCache=size=64M,fs=ext4", "sh", "-c",
                   "echo ok > /scratch/c/f && cat /scratch/c/f; ls /scratch/c; cat /proc/self/mountinfo")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == "ok"
    assert _fstype(_mount_line(res.stdout, "/scratch/c")) == "ext4"
    assert _wait_gone(lambda: _leftovers(site)) == []


@needs_tools
def test_per_node_cache_is_discarded_after_sigkill(site: Site) -> None:
    cmd = [SHIFTER, f"--user={TEST_USER}", f"--image={site.image}", "--volume=/x:/cache:perNodeCache=size=1G",
           "sleep", "60"]
    proc = subprocess.Popen(cmd, cwd="/", env=shifter_env(site.config))
    _wait_for_command(proc.pid, "sleep")
    assert _loop_devices(site), "the cache's loop device should exist while the container runs"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert _wait_gone(lambda: _leftovers(site)) == []


@needs_tools
@MODES
def test_per_node_cache_over_the_site_limit_is_refused(site: Site, runner: Runner) -> None:
    config = site.root / "limit.conf"
    _write_config(config, site.root, "perNodeCacheSizeLimit=1G\n")
    res = runner(site, "--volume=/x:/cache:perNodeCache=size=2G", "true", config=config)
    assert res.returncode == 15 and "limit" in res.stderr, res.stderr


def _wait_for_command(pid: int, name: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            argv0 = ""
        if name in argv0:
            return
        time.sleep(0.02)
    raise AssertionError(f"{name} did not start in the container")


# --- volume targets that do not exist in the image ------------------------------------------------

@needs_tools
@MODES
def test_volume_target_created_under_read_only_image_directories(site: Site, runner: Runner) -> None:
    src = Path(tempfile.mkdtemp(dir=site.root))
    (src / "f").write_text("vol\n")
    os.chmod(src, 0o755)
    os.chmod(src / "f", 0o644)
    res = runner(site, f"--volume={src}:/usr/local/newdir", f"--volume={src}:/app/data/x:ro",
                 f"--volume={src}/f:/app/new.txt", f"--volume={src}:/lnk/viaLink", "sh", "-c",
                 "cat /usr/local/newdir/f /app/data/x/f /app/new.txt /usr/viaLink/f /app/hello.txt;"
                 " /usr/bin/busybox true && echo BUSYBOX;"
                 " for p in /usr/zz /usr/local/zz /app/zz /app/data/zz; do touch $p 2>/dev/null && echo WROTE $p;"
                 " done; ls /usr; ls -ld /usr/local")
    assert res.returncode == 0, res.stderr
    out = res.stdout.splitlines()
    assert out[:5] == ["vol", "vol", "vol", "vol", "hello from the image"]
    assert "BUSYBOX" in out and not [line for line in out if line.startswith("WROTE")]
    assert {"bin", "local", "viaLink"} <= set(" ".join(out).split())  # /usr keeps its entries


@needs_tools
@MODES
def test_volume_target_under_a_host_directory_is_created_with_the_users_rights(
        site: Site, runner: Runner) -> None:
    outer = Path(tempfile.mkdtemp(dir=site.root))
    inner = Path(tempfile.mkdtemp(dir=site.root))
    (inner / "f").write_text("inner\n")
    for path in (outer, inner, inner / "f"):
        os.chown(path, TEST_UID, TEST_UID)
    res = runner(site, f"--volume={outer}:/outer", f"--volume={inner}:/outer/sub/deeper", "sh", "-c",
                 "cat /outer/sub/deeper/f")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "inner\n"
    # Like the user's own mkdir -p: created in their directory, owned by them (never by root).
    assert (outer / "sub/deeper").is_dir() and (outer / "sub").stat().st_uid == TEST_UID


@needs_tools
@MODES
def test_volume_target_under_a_directory_the_user_may_not_write(site: Site, runner: Runner) -> None:
    foreign = Path(tempfile.mkdtemp(dir=site.root))  # root's, 0755
    os.chmod(foreign, 0o755)
    (foreign / "keep").write_text("site data\n")
    (foreign / "hidden").mkdir(mode=0o711)
    (foreign / "hidden/secret-name").write_text("")
    inner = Path(tempfile.mkdtemp(dir=site.root))
    (inner / "f").write_text("inner\n")
    os.chmod(inner, 0o755)
    config = site.root / f"foreign-{runner.__name__}.conf"
    _write_config(config, site.root, f"siteFs={foreign}:/foreign\n")
    res = runner(site, f"--volume={inner}:/foreign/new/x", "sh", "-c",
                 "cat /foreign/keep /foreign/new/x/f; touch /foreign/zz 2>/dev/null && echo WROTE; true",
                 config=config)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["site", "data", "inner"]
    assert sorted(os.listdir(foreign)) == ["hidden", "keep"]  # nothing created on the host
    # Exploding a directory the user may not list would reveal its names: refused.
    res = runner(site, f"--volume={inner}:/foreign/hidden/new", "ls", "/foreign/hidden", config=config)
    assert res.returncode == 15 and "secret-name" not in res.stdout, (res.stdout, res.stderr)
    assert sorted(os.listdir(foreign / "hidden")) == ["secret-name"]


@needs_tools
@MODES
@pytest.mark.parametrize("target", ["/escape/new/deeper", "/data/up/newdir/x"])
def test_missing_volume_target_behind_image_symlink_pointing_out(
        site: Site, runner: Runner, target: str) -> None:
    res = runner(site, f"--volume=/tmp:{target}", "true")
    assert res.returncode == 15, (res.stdout, res.stderr)
    assert not Path("/etc/new").exists() and not Path("/etc/newdir").exists()


# --- per-user store images in privileged mode ---------------------------------------------------

@needs_tools
def test_user_store_image_privileged_is_served_by_squashfuse_as_the_user(site: Site) -> None:
    proc = subprocess.Popen([SHIFTER, f"--user={TEST_USER}", f"--image={site.user_image}", "sh", "-c",
                             "grep ' /bin ' /proc/self/mountinfo; cat /app/hello.txt; exec sleep 60"], cwd="/",
                            env=shifter_env(site.config), stdout=subprocess.PIPE, text=True)
    try:
        _wait_for_command(proc.pid, "sleep")
        helpers = _processes(site.user_image_id)
        assert len(helpers) == 1
        status = Path(f"/proc/{helpers[0]}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(TEST_UID)] * 4  # not root
        assert "squashfuse" in Path(f"/proc/{helpers[0]}/cmdline").read_text()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=10)
    assert "fuse.squashfuse" in out and "hello from the image" in out
    assert not _loop_devices(site)  # never a kernel squashfs mount of the user's file
    assert _wait_gone(lambda: _leftovers(site)) == []


@needs_tools
def test_user_store_image_privileged_leaves_nothing_after_exit(site: Site) -> None:
    res = run_priv(site, "sh", "-c", "id -u; touch /bin/x 2>/dev/null && echo WROTE; true", image=site.user_image)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(TEST_UID)]
    assert _wait_gone(lambda: _leftovers(site)) == []


@needs_tools
def test_user_store_tag_wins_over_the_site_store_for_that_user(site: Site) -> None:
    same_tag = site.root / "userstore/tags/docker/docker.io%2Flibrary%2Fbusybox%3Afeat"
    same_tag.write_text(site.user_image_id + "\n")
    os.chown(same_tag, TEST_UID, TEST_UID)
    try:
        res = run_priv(site, "cat", "/proc/self/mountinfo")
        assert res.returncode == 0, res.stderr
        assert _fstype(_mount_line(res.stdout, "/bin")) == "fuse.squashfuse"  # the user's copy
    finally:
        same_tag.unlink()


# --- the caller's loader variables ----------------------------------------------------------------

MARKER_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
__attribute__((constructor)) static void mark(void) {
    char comm[64] = "", path[512];
    int fd = open("/proc/self/comm", O_RDONLY);
    if (fd >= 0) { ssize_t n = read(fd, comm, sizeof comm - 1); if (n > 0) comm[n - 1] = 0; close(fd); }
    snprintf(path, sizeof path, "%s/%s.%d", MARKER_DIR, comm, (int)getpid());
    fd = open(path, O_CREAT | O_WRONLY, 0644);
    if (fd >= 0) close(fd);
}
"""


@pytest.fixture
def marker_lib(site: Site) -> Iterator[tuple[Path, Path]]:
    if shutil.which("cc") is None:
        pytest.skip("needs a C compiler")
    work = Path(tempfile.mkdtemp(dir=site.root))
    markers = work / "markers"
    markers.mkdir()
    os.chmod(work, 0o755)
    os.chmod(markers, 0o1777)
    (work / "marker.c").write_text(MARKER_C)
    subprocess.run(["cc", "-shared", "-fPIC", f'-DMARKER_DIR="{markers}"', "-o", str(work / "libmarker.so"),
                    str(work / "marker.c")], check=True)
    os.chmod(work / "libmarker.so", 0o755)
    yield work / "libmarker.so", markers
    shutil.rmtree(work, ignore_errors=True)


@needs_tools
def test_ld_preload_and_library_path_never_reach_a_privileged_helper(
        site: Site, marker_lib: tuple[Path, Path]) -> None:
    lib, markers = marker_lib
    loader = {"LD_PRELOAD": str(lib), "LD_LIBRARY_PATH": str(lib.parent)}
    # A per-user-store image (a squashfuse helper) and a perNodeCache (mkfs) in one container.
    proc = subprocess.Popen([SHIFTER, f"--user={TEST_USER}", f"--image={site.user_image}",
                             "--volume=/x:/cache:perNodeCache=size=1G", "sh", "-c",
                             "env | grep ^LD_ | sort; exec sleep 60"],
                            cwd="/", env=shifter_env(site.config, **loader), stdout=subprocess.PIPE, text=True)
    try:
        _wait_for_command(proc.pid, "sleep")
        helpers = _processes(site.user_image_id)
        assert helpers
        environ = Path(f"/proc/{helpers[0]}/environ").read_bytes().split(b"\0")
        assert not [var for var in environ if var.startswith(b"LD_")]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=10)
    # Inside, the user still gets them: that is the user's business.
    assert out.splitlines() == [f"LD_LIBRARY_PATH={lib.parent}", f"LD_PRELOAD={lib}"]
    # Only shifter itself (the caller's own process) loaded the library; no helper did.
    loaded = {name.rsplit(".", 1)[0] for name in os.listdir(markers)}
    assert loaded, "the marker library should at least have been loaded by the caller's process"
    assert loaded <= {"shifter", "python3", "python3.11"}, loaded
    assert _wait_gone(lambda: _leftovers(site)) == []


# --- propagation --------------------------------------------------------------------------------

HANDSHAKE = ("echo ready > /out/ready; while [ ! -e /out/go ]; do sleep 0.05; done;"
             " cat /site/sub/flag 2>/dev/null || echo NOT-PROPAGATED")


@needs_tools
@MODES
@pytest.mark.parametrize("flag", ["slave", ""], ids=["slave", "private"])
def test_site_volume_slave_propagation(site: Site, runner: Runner, flag: str) -> None:
    config = site.root / f"prop-{flag or 'private'}.conf"
    _write_config(config, site.root, f"siteFs={site.shared}:/site{':' + flag if flag else ''}\n")
    out = Path(tempfile.mkdtemp(dir=site.root))
    os.chown(out, TEST_UID, TEST_UID)
    args = (f"--volume={out}:/out", "sh", "-c", HANDSHAKE)
    if runner is run_priv:
        cmd = [SHIFTER, f"--user={TEST_USER}", f"--image={site.image}", *args]
    else:
        cmd = _user_cmd(site, args, None, config, {})
    proc = subprocess.Popen(cmd, cwd="/", env=shifter_env(config) if runner is run_priv else None,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sub = site.shared / "sub"
    try:
        deadline = time.monotonic() + 30
        while not (out / "ready").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(sub)], check=True)
        (sub / "flag").write_text("PROPAGATED\n")
        (out / "go").write_text("")
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        subprocess.run(["umount", "-l", str(sub)], check=False)
    assert proc.returncode == 0, stderr
    assert stdout.strip() == ("PROPAGATED" if flag == "slave" else "NOT-PROPAGATED")


# --- groups -------------------------------------------------------------------------------------

@needs_tools
@MODES
def test_supplementary_groups_are_named_in_etc_group(site: Site, runner: Runner) -> None:
    shared = Path(tempfile.mkdtemp(dir=site.root))
    os.chmod(shared, 0o755)
    (shared / "team.txt").write_text("team only\n")
    os.chown(shared / "team.txt", 0, GROUP_GID)
    os.chmod(shared / "team.txt", 0o640)
    res = runner(site, f"--volume={shared}:/team:ro", "sh", "-c", "id -G; cat /etc/group /team/team.txt")
    assert res.returncode == 0, res.stderr
    assert "team only" in res.stdout  # the supplementary group still grants access, in both modes
    gids = res.stdout.splitlines()[0].split()
    assert f"{GROUP}:x:{GROUP_GID}:{TEST_USER}" in res.stdout.splitlines()
    assert f"{TEST_USER}:x:{TEST_UID}:{TEST_USER}" in res.stdout.splitlines()
    # Privileged: the real supplementary gid.  Unprivileged: only the caller's gid can be mapped
    # without newgidmap, so the kernel shows the others as the overflow gid (docs/runtime.md).
    assert gids[0] == str(TEST_UID)
    assert (str(GROUP_GID) if runner is run_priv else "65534") in gids[1:]



# --- prepared containers ------------------------------------------------------------------------

@needs_tools
def test_prepared_container_with_user_store_image_and_cache_leaves_nothing(site: Site) -> None:
    tools = Path(SHIFTER).parent
    env = shifter_env(site.config)
    cache = "--volume=/x:/cache:perNodeCache=size=1G"
    setup = subprocess.run([str(tools / "shifter-setup"), f"--image={site.user_image}", f"--user={TEST_USER}",
                            cache], env=env, capture_output=True, text=True, timeout=120, check=False)
    try:
        assert setup.returncode == 0, setup.stderr
        helpers = _processes(site.user_image_id)
        assert len(helpers) == 1  # squashfuse, serving the user's image as the user
        assert Path(f"/proc/{helpers[0]}/status").read_text().count(f"\t{TEST_UID}") >= 4
        res = run_user(site, cache, "sh", "-c", "echo hi > /cache/f && cat /cache/f; cat /proc/self/mountinfo",
                       image=site.user_image)
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines()[0] == "hi"
        assert _fstype(_mount_line(res.stdout, "/cache")) == "xfs"  # the prepared tree's, not a tmpfs
    finally:
        down = subprocess.run([str(tools / "shifter-teardown")], env=env, capture_output=True, text=True,
                              check=False)
    assert down.returncode == 0, down.stderr
    assert _wait_gone(lambda: _leftovers(site)) == []


@MODES
def test_missing_workdir_is_said_on_stderr(site: Site, runner: Runner) -> None:
    """``--workdir=/nonexistent`` runs in ``/`` (as NERSC Shifter does), and says so on stderr."""
    res = runner(site, "--workdir=/nonexistent", "sh", "-c", "pwd")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "/"
    assert "shifter: warning: working directory /nonexistent does not exist in the container; using /" \
        in res.stderr


def test_missing_loop_mount_is_named_not_blamed_on_fuse(site: Site) -> None:
    """Unprivileged ``shifter`` with the configured loopMount missing says which directory is
    missing, instead of "squashfuse and a usable /dev/fuse are needed"."""
    config = site.root / "udiRoot-noloop.conf"
    _write_config(config, site.root)
    missing = site.root / "no-such-loop"
    config.write_text(config.read_text().replace(f"loopMount={site.root / 'loop'}", f"loopMount={missing}"))
    res = run_user(site, "true", config=config)
    assert res.returncode == 16, res.stderr
    assert f"loopMount {missing} does not exist" in res.stderr and "squashfuse" not in res.stderr.split("hint")[-1]
