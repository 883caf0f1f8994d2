"""A user cannot hang root through the squashfuse that serves their own image.

For an image in the user's per-user store, root (``shifter-setup``, ``shifter --user``) runs
squashfuse *as the user*, who may SIGSTOP it.  Every wait of root on it has a deadline
(``fuseTimeout``, 3 s here): past it the FUSE connection is aborted, the daemon killed, and the
tool fails with one clear line, leaving no mount, no squashfuse process and no loop device.  A
daemon stopped after a successful setup does not hang ``shifter-teardown`` either.

The user stops the daemon at a chosen moment through :class:`tests.fixtures.stopper.Stopper`
(fanotify permission events on the squashfs file): deterministic, no sleeps.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.runtime import (
    IS_ROOT,
    SHIFTER,
    TEST_UID,
    TEST_USER,
    VENV_BIN,
    build_rootfs,
    ensure_user,
    loop_devices,
    needs_tools,
    publish,
    scratch_dir,
    shifter_env,
)
from tests.fixtures.stopper import Stopper, squashfuse_processes

pytestmark = pytest.mark.integration

IMAGE_ID = secrets.token_hex(32)  # unique: other suites on the node may attach loop devices too
IMAGE = "docker:mine:stop"


@dataclass
class Site:
    root: Path
    config: Path
    udi: Path
    loop: Path
    squashfs: Path  # in the user's own store


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    if not IS_ROOT:
        pytest.skip("needs root")
    ensure_user()
    os.chmod("/dev/fuse", 0o666)
    base = scratch_dir("shifter-fusestop-")
    store, users, udi, loop = base / "store", base / "userstore", base / "udi", base / "loop"
    for path in (store / "tags/docker", users / "tags/docker", udi, loop):
        path.mkdir(parents=True)
    build_rootfs(base / "rootfs")
    publish(users, base / "rootfs", "docker.io/library/mine:stop", IMAGE_ID)
    config = base / "udiRoot.conf"
    config.write_text(f"imagePath={store}\nudiMount={udi}\nloopMount={loop}\nautoPull=0\nuserImagePath={users}\n"
                      "fuseTimeout=3\n")
    for dirpath, _dirnames, filenames in os.walk(base):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):  # the rootfs has links out of it: never chmod their targets
                os.chmod(full, stat.S_IMODE(os.stat(full).st_mode) | 0o444)
    for dirpath, _dirnames, filenames in os.walk(users):  # the user's own store
        for name in [dirpath, *(os.path.join(dirpath, f) for f in filenames)]:
            os.chown(name, TEST_UID, TEST_UID)
    yield Site(base, config, udi, loop, users / f"{IMAGE_ID}.squashfs")
    _tool(config, "shifter-teardown")
    _kill_leftovers(users)
    shutil.rmtree(base, ignore_errors=True)


def _tool(config: Path, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / tool), *args], env=shifter_env(config), capture_output=True, text=True,
                          timeout=120, check=False, cwd="/", stdin=subprocess.DEVNULL)


def _kill_leftovers(users: Path) -> None:
    for pid in squashfuse_processes(TEST_UID, str(users)):
        os.kill(pid, 9)


def _mounts_under(path: Path) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(str(path))]


def _assert_nothing_left(site: Site) -> None:
    assert _mounts_under(site.root) == []
    # SIGKILL is delivered asynchronously: give a killed daemon the moment it needs to exit.
    for _ in range(100):
        if not squashfuse_processes(TEST_UID, str(site.squashfs)):
            break
        time.sleep(0.1)
    assert squashfuse_processes(TEST_UID, str(site.squashfs)) == []
    assert loop_devices(str(site.root), IMAGE_ID) == []
    assert not Path(f"{site.udi}.json").exists()


def _assert_timed_out(res: subprocess.CompletedProcess[str], prog: str, site: Site) -> None:
    assert res.returncode == 16, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"{prog}: error: squashfuse serving {site.squashfs} (run as {TEST_USER}) "
                               "did not answer within 3 s; the container was not set up (hint: "), lines[0]


def _stopped_run(site: Site, which: str, argv: list[str]) -> tuple[subprocess.CompletedProcess[str], list[int]]:
    try:
        with Stopper(site.squashfs, TEST_USER, TEST_UID, which) as stopper:
            res = subprocess.run(argv, env=shifter_env(site.config), capture_output=True, text=True, timeout=120,
                                 check=False, cwd="/", stdin=subprocess.DEVNULL)
        assert not stopper.errors, stopper.errors
        return res, stopper.stopped
    finally:
        _tool(site.config, "shifter-teardown")  # only matters if the test fails


SETUP = [str(VENV_BIN / "shifter-setup"), f"--image={IMAGE}", f"--user={TEST_USER}"]
PRIVATE = [SHIFTER, f"--user={TEST_USER}", f"--image={IMAGE}", "/bin/true"]


@needs_tools
@pytest.mark.parametrize("which", ["first", "daemon"])
def test_stopped_squashfuse_cannot_hang_setup(site: Site, which: str) -> None:
    res, stopped = _stopped_run(site, which, SETUP)
    assert stopped, "the user's squashfuse was never stopped"
    _assert_timed_out(res, "shifter-setup", site)
    _assert_nothing_left(site)


@needs_tools
@pytest.mark.parametrize("which", ["first", "daemon"])
def test_stopped_squashfuse_cannot_hang_shifter_as_root_for_a_user(site: Site, which: str) -> None:
    res, stopped = _stopped_run(site, which, PRIVATE)
    assert stopped, "the user's squashfuse was never stopped"
    _assert_timed_out(res, "shifter", site)
    _assert_nothing_left(site)


@needs_tools
def test_squashfuse_stopped_after_setup_cannot_hang_teardown(site: Site) -> None:
    setup = _tool(site.config, "shifter-setup", f"--image={IMAGE}", f"--user={TEST_USER}")
    try:
        assert setup.returncode == 0, setup.stderr
        record = json.loads(Path(f"{site.udi}.json").read_text())
        daemons = squashfuse_processes(TEST_UID, str(site.squashfs))
        assert [pid for pid, _start in record["fuse"]["daemons"]] == daemons and len(daemons) == 1
        subprocess.run(["runuser", "-u", TEST_USER, "--", "kill", "-STOP", str(daemons[0])], check=True)
    finally:
        down = _tool(site.config, "shifter-teardown")
    assert down.returncode == 0, down.stderr
    _assert_nothing_left(site)


@needs_tools
def test_unstopped_squashfuse_still_serves_the_user_store_image(site: Site) -> None:
    """The deadline changes nothing for a daemon that answers: setup, entry and teardown work."""
    res = subprocess.run([*PRIVATE[:-1], "cat", "/etc/os-release"], env=shifter_env(site.config),
                         capture_output=True, text=True, timeout=120, check=False, cwd="/")
    assert res.returncode == 0 and res.stdout == "NAME=busybox-test\n", res.stderr
    assert _tool(site.config, "shifter-setup", f"--image={IMAGE}", f"--user={TEST_USER}").returncode == 0
    assert _tool(site.config, "shifter-teardown").returncode == 0
    _assert_nothing_left(site)
