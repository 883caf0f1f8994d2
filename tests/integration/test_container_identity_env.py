"""The job's environment names the container's user, never the caller who set it up.

Root running ``shifter --user=U`` must not hand U's job ``HOME=/root``, ``USER=root``,
``LOGNAME=root``: they come from U's passwd entry (``SHELL`` too).  A caller running for itself
keeps its own values, and gets the passwd ones where its environment lacks them (``--clearenv``).
Both modes, with and without ``--clearenv``; a prepared container gives the same.
"""

from __future__ import annotations

import pwd
import subprocess

import pytest

from tests.fixtures.runtime import SHIFTER, TEST_USER, VENV_BIN, needs_tools, shifter_env
from tests.integration import test_runtime_security as security
from tests.integration.test_runtime_security import Site, run_user

pytestmark = pytest.mark.integration
site = security.site  # the same module-scoped site fixture (busybox image, both modes)

ROOT_ENV = {"HOME": "/root", "USER": "root", "LOGNAME": "root", "SHELL": "/bin/bash"}
SCRIPT = "echo HOME=$HOME; echo USER=$USER; echo LOGNAME=$LOGNAME; echo SHELL=$SHELL"


def _identity(res: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert res.returncode == 0, res.stderr
    return dict(line.split("=", 1) for line in res.stdout.splitlines())


def _passwd() -> dict[str, str]:
    entry = pwd.getpwnam(TEST_USER)
    return {"HOME": entry.pw_dir, "USER": TEST_USER, "LOGNAME": TEST_USER, "SHELL": entry.pw_shell}


@needs_tools
@pytest.mark.parametrize("clearenv", [[], ["--clearenv"]], ids=["env", "clearenv"])
def test_root_acting_for_a_user_does_not_pass_roots_home_user_logname(site: Site, clearenv: list[str]) -> None:
    res = subprocess.run([SHIFTER, f"--user={TEST_USER}", f"--image={site.image}", *clearenv, "sh", "-c", SCRIPT],
                         cwd="/", env=shifter_env(site.config, **ROOT_ENV), capture_output=True, text=True,
                         timeout=60, check=False)
    assert _identity(res) == _passwd()


@needs_tools
@pytest.mark.parametrize("clearenv", [[], ["--clearenv"]], ids=["env", "clearenv"])
def test_unprivileged_caller_keeps_its_own_and_gets_the_missing_from_passwd(site: Site, clearenv: list[str]) -> None:
    res = run_user(site, *clearenv, "sh", "-c", SCRIPT)  # its environment: USER and HOME=/tmp, no LOGNAME/SHELL
    expected = _passwd() if clearenv else {**_passwd(), "HOME": "/tmp"}
    assert _identity(res) == expected


@needs_tools
@pytest.mark.parametrize("clearenv", [[], ["--clearenv"]], ids=["env", "clearenv"])
def test_prepared_container_gives_the_same_identity(site: Site, clearenv: list[str]) -> None:
    env = shifter_env(site.config, **ROOT_ENV)
    setup = subprocess.run([str(VENV_BIN / "shifter-setup"), f"--image={site.image}", f"--user={TEST_USER}"],
                           env=env, capture_output=True, text=True, timeout=60, check=False)
    try:
        assert setup.returncode == 0, setup.stderr
        # /bin from the kernel's squashfs: the prepared tree, not a private container (squashfuse)
        res = run_user(site, *clearenv, "sh", "-c",
                       SCRIPT + "; grep ' /bin ' /proc/self/mountinfo | grep -c fuse.squashfuse; true")
        lines = res.stdout.splitlines()
        assert lines[-1] == "0"
        res.stdout = "\n".join(lines[:-1])
        expected = _passwd() if clearenv else {**_passwd(), "HOME": "/tmp"}
        assert _identity(res) == expected
    finally:
        subprocess.run([str(VENV_BIN / "shifter-teardown")], env=env, capture_output=True, check=False)
