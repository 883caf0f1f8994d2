"""Real containers, both modes: identity, capabilities, read-only image, hostile volumes, cleanup.

Privileged tests run ``shifter --user=shiftertest`` as root (kernel loop mount); unprivileged
tests run ``shifter`` as that user through ``runuser`` (user namespace + squashfuse).  The
image is a busybox-static squashfs built here, in a store laid out as docs/internals.md says.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.runtime import (
    SHIFTER,
    TEST_UID,
    TEST_USER,
    VENV_BIN,
    build_rootfs,
    ensure_user,
    needs_tools,
    publish,
    scratch_dir,
    shifter_env,
)

pytestmark = pytest.mark.integration

IS_ROOT = os.geteuid() == 0

needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (creates users, loop mounts)")


@dataclass
class Site:
    root: Path
    config: Path
    image: str
    image_id: str
    private_image: str
    udi: Path
    loop: Path


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    if not IS_ROOT:
        pytest.skip("needs root")
    ensure_user()
    os.chmod("/dev/fuse", 0o666)  # the normal mode on clusters; no udev here
    base = scratch_dir("shifter-rt-")
    store, udi, loop = base / "store", base / "udi", base / "loop"
    for path in (store / "tags/docker", udi, loop):
        path.mkdir(parents=True)
    rootfs = base / "rootfs"
    build_rootfs(rootfs)
    image_id, private_id = "1" * 64, "2" * 64
    publish(store, rootfs, "docker.io/library/busybox:test", image_id)
    publish(store, rootfs, "docker.io/library/secret:1", private_id, private=True)
    config = base / "udiRoot.conf"
    config.write_text(f"imagePath={store}\nudiMount={udi}\nloopMount={loop}\nautoPull=0\nuserImagePath=\n"
                      "maxGroupCount=8\n")
    for dirpath, _dirnames, filenames in os.walk(base):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                os.chmod(full, stat.S_IMODE(os.stat(full).st_mode) | 0o444)
    yield Site(base, config, "busybox:test", image_id, "secret:1", udi, loop)
    subprocess.run([str(VENV_BIN / "shifter-teardown")], env=shifter_env(config), check=False)
    shutil.rmtree(base, ignore_errors=True)


def run_priv(site: Site, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """``shifter --user=shiftertest`` as root (kernel loop mount)."""
    return subprocess.run([SHIFTER, f"--user={TEST_USER}", f"--image={site.image}", *args], cwd="/",
                          env=shifter_env(site.config, **extra), capture_output=True, text=True, timeout=60,
                          check=False)


def run_user(site: Site, *args: str, image: str | None = None,
             **extra: str) -> subprocess.CompletedProcess[str]:
    """``shifter`` as the unprivileged test user (user namespace + squashfuse)."""
    env = [f"{k}={v}" for k, v in shifter_env(site.config, USER=TEST_USER, **extra).items()]
    return subprocess.run(["runuser", "-u", TEST_USER, "--", "env", "-i", *env, SHIFTER,
                           f"--image={image or site.image}", *args], cwd="/", capture_output=True, text=True,
                          timeout=60, check=False)


MODES = pytest.mark.parametrize("runner", [run_priv, run_user], ids=["privileged", "unprivileged"])
STATUS_SCRIPT = "grep -E '^(Cap|NoNewPrivs)' /proc/self/status; id -u; id -g; id -G"


@needs_tools
@MODES
def test_no_capabilities_no_new_privs_and_callers_ids(site: Site, runner) -> None:  # type: ignore[no-untyped-def]
    res = runner(site, "sh", "-c", STATUS_SCRIPT)
    assert res.returncode == 0, res.stderr
    lines = dict(line.split(":\t") for line in res.stdout.splitlines() if ":\t" in line)
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(lines[key], 16) == 0, key
    assert lines["NoNewPrivs"].strip() == "1"
    ids = [line for line in res.stdout.splitlines() if ":\t" not in line]
    assert ids[0] == str(TEST_UID) and ids[1] == str(TEST_UID)
    assert 0 not in [int(g) for g in ids[2].split()]


@needs_tools
def test_root_without_user_runs_as_root_with_every_capability_dropped(site: Site) -> None:
    res = subprocess.run([SHIFTER, f"--image={site.image}", "sh", "-c", STATUS_SCRIPT], cwd="/",
                         env=shifter_env(site.config), capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert "CapBnd:\t0000000000000000" in res.stdout and "CapPrm:\t0000000000000000" in res.stdout
    assert res.stdout.splitlines()[-3] == "0"


@needs_tools
@MODES
def test_setuid_root_binary_in_image_gives_no_root(site: Site, runner) -> None:  # type: ignore[no-untyped-def]
    res = runner(site, "/usr/bin/busybox", "sh", "-c", "grep -E '^Uid' /proc/self/status;"
                 " grep ' /usr ' /proc/self/mountinfo")
    assert res.returncode == 0, res.stderr
    uid_line = res.stdout.splitlines()[0].split()
    assert uid_line[1:] == [str(TEST_UID)] * 4
    assert "nosuid" in res.stdout.splitlines()[-1]


@needs_tools
@MODES
def test_image_is_read_only_and_passwd_has_user(site: Site, runner) -> None:  # type: ignore[no-untyped-def]
    res = runner(site, "sh", "-c", "touch /bin/x 2>/dev/null && echo WROTE; cat /etc/passwd /etc/os-release;"
                 " ls -l /etc/mtab")
    assert res.returncode == 0, res.stderr
    assert "WROTE" not in res.stdout
    assert f"{TEST_USER}:x:{TEST_UID}:" in res.stdout
    assert "NAME=busybox-test" in res.stdout and "/proc/mounts" in res.stdout


@needs_tools
@MODES
def test_exit_status_is_the_commands(site: Site, runner) -> None:  # type: ignore[no-untyped-def]
    assert runner(site, "sh", "-c", "exit 42").returncode == 42
    missing = runner(site, "no-such-command")
    assert missing.returncode == 127 and "not found" in missing.stderr


@needs_tools
@MODES
def test_user_volume_read_write_and_read_only(site: Site, runner) -> None:  # type: ignore[no-untyped-def]
    data = Path(tempfile.mkdtemp(dir=site.root))
    os.chown(data, TEST_UID, TEST_UID)
    res = runner(site, f"--volume={data}:/output", f"--volume={data}:/input:ro", "sh", "-c",
                 "echo hi > /output/f && cat /input/f && (echo no > /input/g) 2>/dev/null || echo RO")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["hi", "RO"]
    assert (data / "f").read_text() == "hi\n"


# --- hostile volumes: refused before the command runs --------------------------------------------

@needs_tools
@MODES
def test_symlink_to_etc_shadow_as_volume_source(site: Site, runner) -> None:  # type: ignore[no-untyped-def]
    link = site.root / f"shadow-link-{runner.__name__}"
    link.symlink_to("/etc/shadow")
    res = runner(site, f"--volume={link}:/mnt", "cat", "/mnt")
    assert res.returncode == 15, (res.stdout, res.stderr)
    assert "root:" not in res.stdout


@needs_tools
@MODES
def test_dotdot_in_volume(site: Site, runner) -> None:  # type: ignore[no-untyped-def]
    res = runner(site, f"--volume={site.root}/../etc:/mnt", "true")
    assert res.returncode == 15, res.stderr


@needs_tools
@MODES
@pytest.mark.parametrize("target", ["/etc", "/etc/passwd", "/var/lib", "/proc/x"])
def test_volume_target_over_system_paths(site: Site, runner, target: str) -> None:  # type: ignore[no-untyped-def]
    res = runner(site, f"--volume=/tmp:{target}", "true")
    assert res.returncode == 15, res.stderr


@needs_tools
@MODES
@pytest.mark.parametrize("target", ["/escape/x", "/data/up/x"])
def test_volume_target_through_image_symlink_pointing_out(  # type: ignore[no-untyped-def]
        site: Site, runner, target: str) -> None:
    res = runner(site, f"--volume=/tmp:{target}", "true")
    assert res.returncode == 15, (res.stdout, res.stderr)


@needs_tools
@MODES
def test_volume_source_the_user_cannot_read(site: Site, runner) -> None:  # type: ignore[no-untyped-def]
    secret = site.root / f"secret-{runner.__name__}"
    secret.mkdir(mode=0o700)
    (secret / "key").write_text("s3cret")
    res = runner(site, f"--volume={secret}:/mnt", "cat", "/mnt/key")
    assert res.returncode == 15, (res.stdout, res.stderr)
    assert "s3cret" not in res.stdout


@needs_tools
@MODES
def test_private_image_the_user_is_not_allowed(site: Site, runner) -> None:  # type: ignore[no-untyped-def]
    args = ("true",)
    if runner is run_priv:
        res = subprocess.run([SHIFTER, f"--user={TEST_USER}", f"--image={site.private_image}", *args],
                             cwd="/",
                             env=shifter_env(site.config), capture_output=True, text=True, timeout=60, check=False)
    else:
        res = run_user(site, *args, image=site.private_image)
    assert res.returncode == 4, res.stderr


# --- nothing left behind ----------------------------------------------------------------------------

def _leftovers(site: Site) -> list[str]:
    found = [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
             if str(site.root) in line and "shifter-rt" in line]
    losetup = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout
    found += [line for line in losetup.splitlines() if site.image_id in line]
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if site.image_id in cmd and state != "Z":
            found.append(f"process {pid}: {cmd}")
    return found


def _wait_clean(site: Site, seconds: float = 5.0) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := _leftovers(site)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@needs_tools
@MODES
def test_nothing_left_after_exit(site: Site, runner) -> None:  # type: ignore[no-untyped-def]
    assert runner(site, "true").returncode == 0
    assert _wait_clean(site) == []


@needs_tools
@pytest.mark.parametrize("unprivileged", [False, True], ids=["privileged", "unprivileged"])
def test_nothing_left_after_sigkill(site: Site, unprivileged: bool) -> None:
    cmd = [SHIFTER, f"--image={site.image}", "sleep", "60"]
    if unprivileged:
        env = [f"{k}={v}" for k, v in shifter_env(site.config, USER=TEST_USER).items()]
        cmd = ["setpriv", f"--reuid={TEST_UID}", f"--regid={TEST_UID}", "--init-groups",
               "env", "-i", *env, *cmd]
    else:
        cmd.insert(1, f"--user={TEST_USER}")
    proc = subprocess.Popen(cmd, cwd="/", env=shifter_env(site.config))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # wait until the command runs inside the container
        if "sleep" in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[0]:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert _wait_clean(site) == []


# --- prepared containers -------------------------------------------------------------------------

@needs_tools
def test_prepared_container_is_entered_without_privilege_and_torn_down(site: Site) -> None:
    env = shifter_env(site.config)
    setup = subprocess.run([str(VENV_BIN / "shifter-setup"), f"--image={site.image}", f"--user={TEST_USER}"],
                           env=env, capture_output=True, text=True, timeout=60, check=False)
    try:
        assert setup.returncode == 0, setup.stderr
        assert (Path(str(site.udi) + ".json")).exists()
        marker = site.udi / "etc/passwd"
        assert TEST_USER in marker.read_text()  # the tree exists in the host mount namespace
        res = run_user(site, "sh", "-c", STATUS_SCRIPT)
        assert res.returncode == 0, res.stderr
        assert "CapEff:\t0000000000000000" in res.stdout and "NoNewPrivs:\t1" in res.stdout
        # different options: a private container, still fine
        other = run_user(site, f"--volume={site.root / 'store'}:/extra", "ls", "/extra")
        assert other.returncode == 0, other.stderr
    finally:
        down = subprocess.run([str(VENV_BIN / "shifter-teardown")], env=env, capture_output=True, text=True,
                              check=False)
    assert down.returncode == 0, down.stderr
    assert not Path(str(site.udi) + ".json").exists()
    assert _wait_clean(site) == []


PACKAGE_DIR = str(Path(__file__).resolve().parents[2] / "src")
# Who and where the command runs, and with what: compared between the fast and the full path.
INSIDE_SCRIPT = ("id -u; id -g; id -G; pwd; env | sort; grep -E '^(Cap|NoNewPrivs)' /proc/self/status; "
                 "grep ' /bin ' /proc/self/mountinfo | grep -q fuse.squashfuse "
                 "&& echo private-container || echo prepared-tree")


def _as_user(site: Site, cmd: list[str], cwd: str) -> subprocess.CompletedProcess[str]:
    env = [f"{k}={v}" for k, v in shifter_env(site.config, USER=TEST_USER, LD_PRELOAD="", OMP_NUM_THREADS="4").items()]
    return subprocess.run(["runuser", "-u", TEST_USER, "--", "env", "-i", *env, *cmd], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


def _fast_only(site: Site, args: list[str], cwd: str) -> subprocess.CompletedProcess[str]:
    """Only ``fastpath.try_enter``, as the launcher runs (python -I -S): it enters the prepared
    container and execs (or fails after entering, with the full path's message and status), or
    returns ``None`` and we print FALLBACK."""
    code = (f"import sys\nsys.path.append({PACKAGE_DIR!r})\nfrom shifter.runtime.linux import fastpath\n"
            "status = fastpath.try_enter(sys.argv[1:])\nif status is None:\n    print('FALLBACK')\n"
            "sys.exit(99 if status is None else status)\n")
    return _as_user(site, [sys.executable, "-I", "-S", "-c", code, *args], cwd)


@needs_tools
def test_prepared_fast_path_gives_what_the_full_path_gives(site: Site) -> None:
    env = shifter_env(site.config)
    setup = subprocess.run([str(VENV_BIN / "shifter-setup"), f"--image={site.image}", f"--user={TEST_USER}"],
                           env=env, capture_output=True, text=True, timeout=60, check=False)
    try:
        assert setup.returncode == 0, setup.stderr
        cases = [(["sh", "-c", INSIDE_SCRIPT], "/tmp"),  # /tmp exists inside: the caller's directory
                 (["--workdir=/bin", "-e", "X=1", "sh", "-c", INSIDE_SCRIPT], "/tmp"),
                 (["-E", "sh", "-c", INSIDE_SCRIPT], str(site.root)),  # not inside: "/" and a warning
                 (["no-such-command"], "/tmp")]  # 127 and the same message
        for args, cwd in cases:
            image = [f"--image={site.image}"]
            fast = _fast_only(site, [*image, *args], cwd)
            assert "FALLBACK" not in fast.stdout, fast.stdout + fast.stderr
            # --verbose: an option the fast path leaves to the full parser, which then enters the
            # same prepared tree (a no-op otherwise).
            full = _as_user(site, [SHIFTER, *image, "--verbose", *args], cwd)
            launcher = _as_user(site, [SHIFTER, *image, *args], cwd)
            assert (fast.returncode, fast.stdout, fast.stderr) == (full.returncode, full.stdout, full.stderr)
            assert (launcher.returncode, launcher.stdout, launcher.stderr) == (full.returncode, full.stdout,
                                                                              full.stderr)
            if args[0] == "no-such-command":
                assert full.returncode == 127 and "command not found in the image" in full.stderr
                continue
            assert full.returncode == 0, full.stderr
            lines = full.stdout.splitlines()
            assert lines[:2] == [str(TEST_UID), str(TEST_UID)] and lines[-1] == "prepared-tree"
            status = dict(line.split(":\t") for line in lines if ":\t" in line)
            assert all(int(status[key], 16) == 0 for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"))
            assert status["NoNewPrivs"].strip() == "1"
        # Anything else (here another volume) still falls back, and then gets a private container.
        other = _fast_only(site, [f"--image={site.image}", f"--volume={site.root / 'store'}:/extra", "true"], "/")
        assert "FALLBACK" in other.stdout, other.stdout + other.stderr
    finally:
        down = subprocess.run([str(VENV_BIN / "shifter-teardown")], env=env, capture_output=True, text=True,
                              check=False)
    assert down.returncode == 0, down.stderr
    assert _wait_clean(site) == []
