"""One user namespace and image mount per user, node and image (``shifter.runtime.linux.holder``).

Real unprivileged launches (``shifter`` as ``shiftertest`` through ``runuser``), real squashfuse,
real namespaces: reuse across launches and between concurrent ones, linger expiry, teardown, a
re-pull of the tag while a holder lives, another user neither finding nor joining it, a killed or
forged holder detected and replaced, and a SIGKILLed container leaving nothing but the holder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
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

OTHER_USER, OTHER_UID = "shiftertest2", 2002
HOLDER_DIR = Path(f"/dev/shm/shifter-{TEST_UID}")
NS_SCRIPT = "readlink /proc/self/ns/user; cat /app/version"


@dataclass
class Site:
    base: Path
    rootfs: Path
    ref: str

    def config(self, linger: int) -> Path:
        path = self.base / f"udiRoot-{linger}.conf"
        if not path.exists():
            path.write_text(f"imagePath={self.base / 'store'}\nudiMount={self.base / 'udi'}\n"
                            f"loopMount={self.base / 'loop'}\nautoPull=0\nuserImagePath=\n"
                            f"imageMountLinger={linger}\n")
            os.chmod(path, 0o644)
        return path

    def publish(self, version: str, image_id: str) -> None:
        (self.rootfs / "app/version").write_text(version + "\n")
        publish(self.base / "store", self.rootfs, self.ref, image_id)
        subprocess.run(["chmod", "-R", "a+rX", str(self.base)], check=True)


def _ensure_other_user() -> None:
    if subprocess.run(["id", OTHER_USER], capture_output=True, check=False).returncode != 0:
        subprocess.run(["useradd", "-u", str(OTHER_UID), "-m", OTHER_USER], check=True)


def teardown_holders(*users: str) -> None:
    for user in users:
        subprocess.run([str(Path(SHIFTER).parent / "shifter-teardown"), f"--user={user}"],
                       env={"PATH": "/usr/bin:/bin"}, capture_output=True, check=False)


@pytest.fixture
def site() -> Iterator[Site]:
    if not IS_ROOT:
        pytest.skip("needs root")
    ensure_user()
    _ensure_other_user()
    base = container_site("shifter-holder-", "store/tags/docker", "udi", "loop")
    rootfs = base / "rootfs"
    build_rootfs(rootfs)
    (rootfs / "app").mkdir()
    result = Site(base, rootfs, "docker.io/library/busybox:holder")
    result.publish("v1", "5" * 64)
    teardown_holders(TEST_USER, OTHER_USER, "root")
    yield result
    teardown_holders(TEST_USER, OTHER_USER, "root")
    for uid in (TEST_UID, OTHER_UID):  # whatever a failed test left running (by pid)
        for pid, _ in user_processes(uid):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(base, ignore_errors=True)


def _argv(site: Site, linger: int, args: tuple[str, ...], user: str) -> list[str]:
    env = [f"{k}={v}" for k, v in shifter_env(site.config(linger), USER=user).items()]
    return ["runuser", "-u", user, "--", "env", "-i", *env, SHIFTER, "--image=busybox:holder", *args]


def run_user(site: Site, *args: str, linger: int = 60, user: str = TEST_USER) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_argv(site, linger, args, user), cwd="/", capture_output=True, text=True, timeout=60,
                          check=False)


def start_user(site: Site, *args: str, linger: int = 60) -> subprocess.Popen[str]:
    return subprocess.Popen(_argv(site, linger, args, TEST_USER), cwd="/", stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def ns_and_version(site: Site, linger: int = 60) -> tuple[str, str]:
    res = run_user(site, "sh", "-c", NS_SCRIPT, linger=linger)
    assert res.returncode == 0, res.stderr
    userns, version = res.stdout.split()
    return userns, version


def holders(uid: int = TEST_UID) -> dict[str, int]:
    """key -> pid of the holders whose records are in ``uid``'s directory."""
    found: dict[str, int] = {}
    directory = Path(f"/dev/shm/shifter-{uid}" if uid else "/run/shifter-0")
    for record in directory.glob("*.holder") if directory.exists() else []:
        try:
            found[record.name[:-7]] = int(record.read_text().split()[1])
        except FileNotFoundError:
            continue  # a holder ending right now
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def wait_for(predicate: Callable[[], bool], limit: float = 20.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def user_processes(uid: int = TEST_UID, mark: str = "/var/lib/shifter-tests/shifter-holder-") -> list[tuple[int, str]]:
    """Live processes of ``uid`` that belong to these tests (other tests may run as the same user
    at the same time): ``mark`` in their command line or environment (squashfuse names the
    image, containers and holders inherit ``SHIFTER_CONFIG``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid or (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes()
            if mark.encode() in cmdline or mark.encode() in (entry / "environ").read_bytes():
                found.append((int(entry.name), cmdline.replace(b"\0", b" ").decode()))
        except OSError:
            continue
    return found


@needs_tools
def test_later_launches_join_the_first_launchs_namespace_and_mount(site: Site) -> None:
    first = ns_and_version(site)
    assert first[1] == "v1"
    (pid,) = holders().values()
    assert alive(pid)
    assert ns_and_version(site) == first  # the same user namespace, the same image
    assert list(holders().values()) == [pid]
    directory = os.stat(HOLDER_DIR)
    assert directory.st_uid == TEST_UID and directory.st_mode & 0o777 == 0o700


@needs_tools
def test_launch_from_another_mount_namespace_gets_its_own_holder(site: Site) -> None:
    # e.g. another job's namespace with a per-job /tmp: it must not see the first one's copy.
    own_ns, _ = ns_and_version(site)
    res = subprocess.run(["unshare", "-m", "--propagation", "private", *_argv(site, 60, ("sh", "-c", NS_SCRIPT),
                                                                             TEST_USER)],
                         cwd="/", capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[0] != own_ns
    assert len(holders()) == 2


@needs_tools
def test_concurrent_launches_share_one_user_namespace(site: Site) -> None:
    procs = [start_user(site, "sh", "-c", "readlink /proc/self/ns/user; sleep 1", linger=0) for _ in range(3)]
    outs = [proc.communicate(timeout=60) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1


@needs_tools
def test_holder_ends_when_the_last_container_exits_without_linger(site: Site) -> None:
    ns_and_version(site, linger=0)
    assert wait_for(lambda: not holders())
    assert wait_for(lambda: not user_processes())  # squashfuse too, once the last mount is gone


@needs_tools
def test_holder_lingers_then_ends(site: Site) -> None:
    ns_and_version(site, linger=2)
    (pid,) = holders().values()
    assert alive(pid)
    assert wait_for(lambda: not alive(pid) and not holders())
    assert wait_for(lambda: not user_processes())


@needs_tools
def test_teardown_user_kills_the_holder(site: Site) -> None:
    ns_and_version(site)
    (pid,) = holders().values()
    teardown_holders(TEST_USER)
    assert wait_for(lambda: not alive(pid))
    assert not holders()
    assert wait_for(lambda: not user_processes())


@needs_tools
def test_repull_while_a_holder_lives_serves_the_new_image(site: Site) -> None:
    old_ns, version = ns_and_version(site)
    assert version == "v1"
    site.publish("v2", "6" * 64)  # the tag now names another image
    new_ns, version = ns_and_version(site)
    assert version == "v2" and new_ns != old_ns
    assert len(holders()) == 2


@needs_tools
def test_image_file_replaced_in_place_is_not_served_stale(site: Site) -> None:
    old_ns, _ = ns_and_version(site)
    site.publish("v3", "5" * 64)  # same id, same path, new file
    new_ns, version = ns_and_version(site)
    assert version == "v3" and new_ns != old_ns


@needs_tools
def test_another_user_cannot_find_or_join_the_holder(site: Site) -> None:
    own_ns, _ = ns_and_version(site)
    (pid,) = holders().values()
    probe = ("import os, sys\n"
             f"try:\n    os.listdir('{HOLDER_DIR}'); print('listed')\nexcept PermissionError: print('no-list')\n"
             f"try:\n    os.open('/proc/{pid}/ns/user', os.O_RDONLY); print('opened')\n"
             "except PermissionError: print('no-open')\n")
    res = subprocess.run(["runuser", "-u", OTHER_USER, "--", "/usr/bin/python3", "-I", "-c", probe],
                         capture_output=True, text=True, check=False, cwd="/")
    assert res.stdout.split() == ["no-list", "no-open"], res.stderr
    other = run_user(site, "sh", "-c", NS_SCRIPT, user=OTHER_USER)
    assert other.returncode == 0, other.stderr
    assert other.stdout.split()[0] != own_ns  # a namespace of its own
    assert holders(OTHER_UID) and list(holders().values()) == [pid]


@needs_tools
def test_killed_holder_is_detected_and_replaced(site: Site) -> None:
    old_ns, _ = ns_and_version(site)
    (pid,) = holders().values()
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not alive(pid))
    new_ns, version = ns_and_version(site)
    assert version == "v1" and new_ns != old_ns
    (new_pid,) = holders().values()
    assert new_pid != pid and alive(new_pid)


@needs_tools
def test_forged_record_naming_another_process_is_not_joined(site: Site) -> None:
    # A record the user's own directory could hold, naming a live process of the user that is no
    # holder (and inodes that are not its namespaces): never trusted as it stands.
    own_ns, _ = ns_and_version(site)
    (key,) = holders()
    decoy = subprocess.Popen(["setpriv", f"--reuid={TEST_UID}", f"--regid={TEST_UID}", "--clear-groups",
                              "sleep", "60"])
    decoy_pid = decoy.pid
    try:
        record = HOLDER_DIR / f"{key}.holder"
        record.write_text(f"1 {decoy_pid} 4026531837 4026531841\n")
        os.chown(record, TEST_UID, TEST_UID)
        for index in HOLDER_DIR.glob("fast-*.json"):  # the fast path's index, forged the same way
            forged = json.loads(index.read_text())
            forged["pid"] = decoy_pid
            index.write_text(json.dumps(forged))
        new_ns, version = ns_and_version(site)
        assert version == "v1" and new_ns != own_ns
        assert holders()[key] != decoy_pid
    finally:
        decoy.kill()
        decoy.wait()


@needs_tools
def test_open_runtime_directory_is_never_used(site: Site) -> None:
    # Planted by another user (or left open): launches still work, each with its own namespace.
    shutil.rmtree(HOLDER_DIR, ignore_errors=True)
    HOLDER_DIR.mkdir(mode=0o700)
    os.chown(HOLDER_DIR, OTHER_UID, OTHER_UID)
    try:
        first, _ = ns_and_version(site)
        second, _ = ns_and_version(site)
        assert first != second
        assert not list(HOLDER_DIR.iterdir())
    finally:
        shutil.rmtree(HOLDER_DIR)


@needs_tools
@pytest.mark.parametrize("linger", [0, 60])
def test_sigkilled_container_leaves_only_the_holder(site: Site, linger: int) -> None:
    proc = start_user(site, "sleep", "300", linger=linger)
    assert wait_for(lambda: any(cmd.startswith("sleep 300") for _, cmd in user_processes()))
    (pid,) = holders().values()
    container = next(p for p, cmd in user_processes() if cmd.startswith("sleep 300"))
    os.kill(container, signal.SIGKILL)
    proc.wait(timeout=30)
    if linger:  # only the documented holder and its squashfuse
        left = [cmd for p, cmd in user_processes() if p != pid]
        assert all(cmd.startswith("squashfuse") for cmd in left), left
        assert alive(pid)
    else:  # nothing at all
        assert wait_for(lambda: not user_processes()), user_processes()


# --- the fast path enters the tree a first launch left in its holder ------------------------------

PACKAGE_DIR = str(Path(__file__).resolve().parents[2] / "src")
FAST_ONLY = ("import sys\nsys.path.append(sys.argv.pop(1))\nfrom shifter.runtime.linux import fastpath\n"
             "status = fastpath.try_enter(sys.argv[1:])\nif status is None:\n    print('FALLBACK')\n"
             "sys.exit(99 if status is None else status)\n")
ROOT_SCRIPT = "grep ' / / ' /proc/self/mountinfo | cut -d' ' -f3; readlink /proc/self/ns/user; cat /app/version"


def fast_only(site: Site, *args: str, linger: int = 60) -> subprocess.CompletedProcess[str]:
    """Only ``fastpath.try_enter``, as the launcher runs it; prints FALLBACK if it declined."""
    env = [f"{k}={v}" for k, v in shifter_env(site.config(linger), USER=TEST_USER).items()]
    return subprocess.run(["runuser", "-u", TEST_USER, "--", "env", "-i", *env, sys.executable, "-I", "-S", "-c",
                           FAST_ONLY, PACKAGE_DIR, "--image=busybox:holder", *args], cwd="/", capture_output=True,
                          text=True, timeout=60, check=False)


@needs_tools
def test_fast_path_enters_the_tree_the_first_launch_left(site: Site) -> None:
    first = run_user(site, "sh", "-c", ROOT_SCRIPT)
    assert first.returncode == 0, first.stderr
    fast = fast_only(site, "sh", "-c", ROOT_SCRIPT + "; id -u")
    assert fast.returncode == 0 and "FALLBACK" not in fast.stdout, fast.stdout + fast.stderr
    # the same root tmpfs (device), the same user namespace, the same image
    assert fast.stdout.split()[:3] == first.stdout.split() and fast.stdout.split()[3] == str(TEST_UID)
    status = fast_only(site, "sh", "-c", "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status")
    assert "CapEff:\t0000000000000000" in status.stdout and "NoNewPrivs:\t1" in status.stdout, status.stdout


@needs_tools
def test_fast_path_declines_another_request_or_a_repull(site: Site) -> None:
    assert run_user(site, "true").returncode == 0
    other = fast_only(site, "--volume=/var/tmp:/data", "true")
    assert other.returncode == 99 and "FALLBACK" in other.stdout  # another request: the full path
    site.publish("v2", "6" * 64)
    repulled = fast_only(site, "cat", "/app/version")
    assert repulled.returncode == 99, repulled.stdout  # the tag changed: the full path decides
    assert run_user(site, "cat", "/app/version").stdout.strip() == "v2"
    again = fast_only(site, "cat", "/app/version")
    assert again.returncode == 0 and again.stdout.strip() == "v2", again.stdout + again.stderr


@needs_tools
def test_fast_path_falls_back_when_the_holder_is_gone(site: Site) -> None:
    assert run_user(site, "true").returncode == 0
    (pid,) = holders().values()
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not alive(pid))
    res = fast_only(site, "true")
    assert res.returncode == 99 and "FALLBACK" in res.stdout
    assert run_user(site, "true").returncode == 0  # the full path replaces the holder


@needs_tools
def test_per_node_cache_request_keeps_no_tree(site: Site) -> None:
    args = ("--volume=/x:/cache:perNodeCache=size=16M", "sh", "-c", "ls /cache | wc -l; touch /cache/f")
    assert run_user(site, *args).stdout.split() == ["0"]
    res = fast_only(site, *args)
    assert "FALLBACK" in res.stdout  # a fresh cache per container: never a shared tree
    assert run_user(site, *args).stdout.split() == ["0"]


# --- root mode: one kernel loop mount per image, shared by privileged launches ----------------------

def run_root(site: Site, *args: str, linger: int = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SHIFTER, f"--user={TEST_USER}", "--image=busybox:holder", *args], cwd="/",
                          env=shifter_env(site.config(linger)), capture_output=True, text=True, timeout=60,
                          check=False)


def image_device(site: Site, linger: int = 60) -> str:
    """major:minor of the image's file system as a privileged container sees it (its /bin)."""
    res = run_root(site, "sh", "-c", "grep ' /bin ' /proc/self/mountinfo; id -u", linger=linger)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[-1] == str(TEST_UID)  # still the user's container
    return lines[0].split()[2]


@needs_tools
def test_privileged_launches_reuse_one_loop_mount(site: Site) -> None:
    first = image_device(site)
    assert len(holders(0)) == 1 and len(loop_devices(str(site.base))) == 1
    assert image_device(site) == first
    assert len(loop_devices(str(site.base))) == 1  # no second loop device
    directory = os.stat("/run/shifter-0")
    assert directory.st_uid == 0 and directory.st_mode & 0o777 == 0o700


@needs_tools
def test_privileged_holder_ends_without_linger_and_frees_the_loop_device(site: Site) -> None:
    image_device(site, linger=0)
    assert wait_for(lambda: not holders(0))
    assert wait_for(lambda: not loop_devices(str(site.base)))


@needs_tools
def test_teardown_root_ends_roots_holders(site: Site) -> None:
    image_device(site)
    (pid,) = holders(0).values()
    teardown_holders("root")
    assert wait_for(lambda: not alive(pid)) and not holders(0)
    assert wait_for(lambda: not loop_devices(str(site.base)))


@needs_tools
def test_repull_while_roots_holder_lives_serves_the_new_image(site: Site) -> None:
    old = image_device(site)
    site.publish("v2", "6" * 64)
    res = run_root(site, "cat", "/app/version")
    assert res.stdout.strip() == "v2", res.stderr
    assert image_device(site) != old


@needs_tools
def test_writable_tmpfs_launch_joins_for_the_image_but_keeps_no_tree(site: Site) -> None:
    assert run_user(site, "true").returncode == 0  # a holder with a tree for the plain request
    res = run_user(site, "--writable-tmpfs", "sh", "-c", "grep -c ' overlay ' /proc/self/mountinfo")
    assert res.returncode == 0 and int(res.stdout) >= 1, res.stdout + res.stderr
    assert len(holders()) == 1  # joined the same holder (for the image only)
