"""Site modules that do real work, in real containers: ``copyPath``, ``roothook``, ``userhook``,
``enabled``, ``conflict``, module order; privileged (root for the test user), unprivileged (the test
user) and prepared (``shifter-setup``) containers.

A module's hooks are site-written: the roothook runs as root with a fixed environment and the
container root as its working directory; the userhook runs inside as the user, after the privilege
drop, and cannot gain root even through a setuid-root binary in the image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
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
    container_site,
    ensure_user,
    needs_tools,
    publish,
    shifter_env,
)

pytestmark = [pytest.mark.integration, needs_tools]

ROOTHOOK = """#!/bin/sh
# cwd is the container root; record where we are, who we are, what we were given
{{ echo "module=$SHIFTER_MODULE uid=$(id -u) pwd=$(pwd)"; echo "leak=${{LEAKME:-none}}";
   echo "preload=${{LD_PRELOAD:-none}}"; echo "dir=$SHIFTER_MODULE_DIR"; }} >> {log}
[ -d bin ] && [ -d etc ] && [ -d {moddir} ] && echo "root-ok" >> {log}
echo "from-roothook-$SHIFTER_MODULE" > {moddir}/$SHIFTER_MODULE/made-by-roothook 2>/dev/null || true
exit 0
"""
USERHOOK = """#!/bin/sh
echo "userhook $SHIFTER_MODULE uid=$(id -u) euid-setuid=$(/usr/bin/busybox id -u) var=${MYVAR:-none}" >&2
exit 0
"""
FAILHOOK = """#!/bin/sh
echo "some noise"
echo "license server unreachable" >&2
exit 3
"""


@dataclass
class Site:
    base: Path
    config: Path
    log: Path


def _write_config(base: Path, extra: str) -> Path:
    config = base / "udiRoot.conf"
    config.write_text(f"imagePath={base / 'store'}\nudiMount={base / 'udi'}\nloopMount={base / 'loop'}\n"
                      f"autoPull=0\nuserImagePath=\nmaxGroupCount=8\n{extra}")
    os.chmod(config, 0o644)
    return config


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    os.chmod(path, 0o755)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    if not IS_ROOT:
        pytest.skip("needs root")
    ensure_user()
    base = container_site("shifter-mods-", "store/tags/docker", "udi", "loop", "hooks", "copy/a/sub", "copy/b")
    rootfs = base / "rootfs"
    build_rootfs(rootfs)  # has a setuid-root busybox at /usr/bin/busybox
    (rootfs / "opt").mkdir()
    (rootfs / "opt/image-file").write_text("from the image\n")
    publish(base / "store", rootfs, "docker.io/library/busybox:mods", "6" * 64)
    # An image whose /opt is a link to a host directory (absolute): module files must stay inside.
    shutil.rmtree(rootfs / "opt")
    (base / "hostopt").mkdir()
    (rootfs / "opt").symlink_to(base / "hostopt")
    publish(base / "store", rootfs, "docker.io/library/busybox:optlink", "7" * 64)
    log = base / "roothook.log"
    _script(base / "hooks/root.sh", ROOTHOOK.format(log=log, moddir="opt/udiImage/modules"))
    (base / "copy/a/sub/data.txt").write_text("module a data\n")
    _script(base / "copy/a/hook.sh", USERHOOK)
    _script(base / "copy/a/fail.sh", FAILHOOK)
    shutil.copy("/bin/busybox", base / "copy/a/suid")
    os.chmod(base / "copy/a/suid", 0o4755)
    (base / "copy/b/b.txt").write_text("module b\n")
    os.chmod(base / "store", 0o755)
    for dirpath, _dirs, files in os.walk(base / "store"):
        os.chmod(dirpath, 0o755)
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o644)
    extra = (f"module_a_copyPath={base / 'copy/a'}\nmodule_a_roothook={base / 'hooks/root.sh'}\n"
             "module_a_userhook=/opt/udiImage/modules/a/hook.sh\nmodule_a_siteEnv=MYVAR=from-a\n"
             f"module_b_copyPath={base / 'copy/b'}\nmodule_b_roothook={base / 'hooks/root.sh'}\n"
             "module_c_userhook=/opt/udiImage/modules/a/fail.sh\n"
             "module_off_siteEnv=X=1\nmodule_off_enabled=0\n"
             "module_d_siteEnv=D=1\nmodule_d_conflict=b\n")
    config = _write_config(base, extra)
    yield Site(base, config, log)
    subprocess.run([str(VENV_BIN / "shifter-teardown")], env=shifter_env(config), capture_output=True, check=False)
    shutil.rmtree(base, ignore_errors=True)


def run_priv(site: Site, *args: str, config: Path | None = None,
             image: str = "busybox:mods") -> subprocess.CompletedProcess[str]:
    env = shifter_env(config or site.config, LEAKME="secret", LD_PRELOAD="/nonexistent.so")
    return subprocess.run([SHIFTER, f"--user={TEST_USER}", f"--image={image}", *args], cwd="/", env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def run_user(site: Site, *args: str, config: Path | None = None,
             image: str = "busybox:mods") -> subprocess.CompletedProcess[str]:
    env = [f"{k}={v}" for k, v in shifter_env(config or site.config, USER=TEST_USER, LEAKME="secret").items()]
    return subprocess.run(["runuser", "-u", TEST_USER, "--", "env", "-i", *env, SHIFTER, f"--image={image}",
                           *args], cwd="/", capture_output=True, text=True, timeout=120, check=False)


Runner = Callable[..., subprocess.CompletedProcess[str]]
MODES = pytest.mark.parametrize("runner", [run_priv, run_user], ids=["privileged", "unprivileged"])


@MODES
def test_copy_path_is_copied_into_the_module_directory(site: Site, runner: Runner) -> None:
    res = runner(site, "--module=b", "sh", "-c",
                 "cat /opt/udiImage/modules/b/b.txt; cat /opt/image-file; touch /opt/udiImage/x 2>&1 || echo ro")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[:2] == ["module b", "from the image"]
    assert res.stdout.splitlines()[-1] == "ro"  # read-only once built


@MODES
def test_image_symlink_cannot_move_module_files_onto_the_host(site: Site, runner: Runner) -> None:
    res = runner(site, "--module=b", "cat", "/opt/udiImage/modules/b/b.txt", image="busybox:optlink")
    # /opt is resolved inside the container, where the link leads nowhere: refused, clearly.
    assert res.returncode == 16
    assert "cannot create /opt/udiImage for the site modules' files in this image" in res.stderr
    assert list((site.base / "hostopt").iterdir()) == []  # nothing created or mounted on the host


@MODES
def test_copy_path_drops_setuid_bits(site: Site, runner: Runner) -> None:
    res = runner(site, "--module=a", "stat", "-c", "%a", "/opt/udiImage/modules/a/suid")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "755"


def test_roothook_runs_as_root_in_the_container_root_with_a_fixed_environment(site: Site) -> None:
    site.log.unlink(missing_ok=True)
    res = run_priv(site, "--module=a", "cat", "/opt/udiImage/modules/a/made-by-roothook")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "from-roothook-a"
    lines = site.log.read_text().splitlines()
    assert lines[0].startswith("module=a uid=0 pwd=") and str(site.base / "udi") in lines[0]
    assert "leak=none" in lines and "preload=none" in lines  # never the caller's environment
    assert "dir=opt/udiImage/modules/a" in lines and "root-ok" in lines


def test_roothooks_run_in_module_order(site: Site) -> None:
    for order in ("a,b", "b,a"):
        site.log.unlink(missing_ok=True)
        res = run_priv(site, f"--module={order}", "true")
        assert res.returncode == 0, res.stderr
        modules = [line.split()[0] for line in site.log.read_text().splitlines() if line.startswith("module=")]
        assert modules == [f"module={name}" for name in order.split(",")]


def test_roothook_is_skipped_unprivileged_with_a_warning(site: Site) -> None:
    site.log.unlink(missing_ok=True)
    res = run_user(site, "--module=b", "cat", "/opt/udiImage/modules/b/b.txt")
    assert res.returncode == 0, res.stderr
    assert "module 'b' roothook skipped (unprivileged mode)" in res.stderr
    assert not site.log.exists()


def test_roothook_refused_unprivileged_when_the_site_says_so(site: Site) -> None:
    text = site.config.read_text() + "unprivilegedRoothook=refuse\n"
    config = site.base / "refuse.conf"
    config.write_text(text)
    os.chmod(config, 0o644)
    res = run_user(site, "--module=b", "true", config=config)
    assert res.returncode == 16
    assert "module 'b' has a roothook, which cannot run in unprivileged mode" in res.stderr


@MODES
def test_userhook_runs_inside_as_the_user_before_the_command(site: Site, runner: Runner) -> None:
    res = runner(site, "--module=a", "echo", "command")
    assert res.returncode == 0, res.stderr
    assert f"userhook a uid={TEST_UID} euid-setuid={TEST_UID} var=from-a" in res.stderr
    assert res.stdout.strip() == "command"


@MODES
def test_userhook_cannot_gain_root_through_a_setuid_binary(site: Site, runner: Runner) -> None:
    # The hook runs /usr/bin/busybox (setuid root in the image): still the user (nosuid, no_new_privs).
    res = runner(site, "--module=a", "true")
    assert res.returncode == 0, res.stderr
    assert f"euid-setuid={TEST_UID}" in res.stderr and "euid-setuid=0" not in res.stderr


@MODES
def test_failing_userhook_aborts_with_its_message(site: Site, runner: Runner) -> None:
    res = runner(site, "--module=a,c", "echo", "must-not-run")
    assert res.returncode == 16
    assert "must-not-run" not in res.stdout
    assert "module 'c' userhook failed with exit status 3: license server unreachable" in res.stderr


@MODES
def test_disabled_and_conflicting_modules_are_refused(site: Site, runner: Runner) -> None:
    res = runner(site, "--module=off", "true")
    assert res.returncode == 2 and "module 'off' is disabled" in res.stderr
    res = runner(site, "--module=b,d", "true")
    assert res.returncode == 2 and "conflict" in res.stderr


def test_prepared_container_has_module_files_and_runs_the_userhook(site: Site) -> None:
    tool = VENV_BIN / "shifter-setup"
    site.log.unlink(missing_ok=True)
    setup = subprocess.run([str(tool), "--image=busybox:mods", f"--user={TEST_USER}", "--module=a"],
                           env=shifter_env(site.config), capture_output=True, text=True, timeout=120, check=False,
                           cwd="/")
    assert setup.returncode == 0, setup.stderr
    try:
        assert "module=a uid=0" in site.log.read_text()  # the roothook ran at setup
        # A userhook runs at every entry: no fast-path section, so entries take the full path.
        assert "fast" not in json.loads((site.base / "udi.json").read_text())
        res = run_user(site, "--module=a", "cat", "/opt/udiImage/modules/a/sub/data.txt")
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == "module a data"
        assert f"userhook a uid={TEST_UID}" in res.stderr
        assert "roothook" not in res.stderr  # the tree was built already: no hook at entry
    finally:
        subprocess.run([str(VENV_BIN / "shifter-teardown")], env=shifter_env(site.config), capture_output=True,
                       check=False, cwd="/")
