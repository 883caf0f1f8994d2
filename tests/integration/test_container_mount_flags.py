"""Every mount inside a container carries the flags docs/runtime.md ("Mount flags") promises.

The container prints its ``/proc/self/mountinfo``; each line is checked: ``nosuid`` everywhere;
``nodev`` everywhere but ``/dev`` itself and ``devpts`` (device nodes work there); ``noexec`` on
``/proc``, ``/sys``, ``/dev`` and every mount below them; read-only on ``/``, the image and a
``:ro`` volume with the mounts below it.  Privileged (``--user``), unprivileged, and a prepared
container entered by the fast path.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.runtime import TEST_USER, VENV_BIN, needs_tools, shifter_env
from tests.integration import test_runtime_security as security
from tests.integration import test_volume_submounts as submounts
from tests.integration.test_runtime_security import Site, run_priv, run_user

pytestmark = pytest.mark.integration
site = security.site
covered = submounts.covered
SCRIPT = "echo x > /dev/null && cat /proc/self/mountinfo"
KERNEL_TREES = ("/proc", "/sys", "/dev")


def _under(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree + "/")


def _mounts(res: subprocess.CompletedProcess[str]) -> list[tuple[str, set[str], str]]:
    """``(mount point, per-mount options, fstype)`` of each mountinfo line."""
    assert res.returncode == 0, res.stderr
    mounts = []
    for line in res.stdout.splitlines():
        fields = line.split(" ")
        dash = fields.index("-", 6)
        mounts.append((fields[4], set(fields[5].split(",")), fields[dash + 1]))
    return mounts


def _check_every_mount(mounts: list[tuple[str, set[str], str]], read_only: tuple[str, ...]) -> None:
    assert {"/", "/proc", "/sys", "/dev", "/dev/pts", "/tmp", "/bin", "/rw", "/ro", "/ro/covered"} <= {
        point for point, _opts, _fs in mounts}
    for point, opts, fstype in mounts:
        where = f"{point} ({fstype}): {sorted(opts)}"
        assert "nosuid" in opts, where
        if point == "/dev":
            assert "nodev" not in opts, where  # /dev/null, /dev/zero... must work
        elif fstype != "devpts":
            assert "nodev" in opts, where
        if any(_under(point, tree) for tree in KERNEL_TREES):
            assert "noexec" in opts, where
        if point in ("/", "/bin") or any(_under(point, tree) for tree in read_only):
            assert "ro" in opts, where
    top_pts = [opts for point, opts, fstype in mounts if point == "/dev/pts" and fstype == "devpts"][-1]
    assert "nodev" not in top_pts  # ptys are device nodes


def _volumes(covered: Path, rw: Path) -> list[str]:
    return [f"--volume={rw}:/rw", f"--volume={covered}:/ro:ro"]


@needs_tools
@pytest.mark.parametrize("runner", [run_priv, run_user], ids=["privileged", "unprivileged"])
def test_every_mount_in_the_container_has_its_flags(site: Site, covered: Path,
                                                     runner: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    rw = site.root / "store"
    _check_every_mount(_mounts(runner(site, *_volumes(covered, rw), "sh", "-c", SCRIPT)), read_only=("/ro",))


@needs_tools
def test_every_mount_in_a_prepared_container_has_its_flags(site: Site, covered: Path) -> None:
    env = shifter_env(site.config)
    volumes = _volumes(covered, site.root / "store")
    setup = subprocess.run([str(VENV_BIN / "shifter-setup"), f"--image={site.image}", f"--user={TEST_USER}",
                            *volumes], env=env, capture_output=True, text=True, timeout=60, check=False)
    try:
        assert setup.returncode == 0, setup.stderr
        mounts = _mounts(run_user(site, *volumes, "sh", "-c", SCRIPT))
        assert [fs for point, _o, fs in mounts if point == "/bin"] == ["squashfs"]  # the prepared tree
        _check_every_mount(mounts, read_only=("/ro",))
    finally:
        subprocess.run([str(VENV_BIN / "shifter-teardown")], env=env, capture_output=True, check=False)
