"""``shifter --image=<registry ref>`` pulls a missing image first (``autoPull``), in both modes;
with ``autoPull=0`` it fails with a clear error and the hint to pull.

Uses the real registry on 127.0.0.1 and the pushed busybox image from ``tests/conftest.py``
(plain HTTP is allowed for loopback registries).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shifter.store.layout import ImageStore
from tests.conftest import PushedImage
from tests.fixtures.runtime import (
    IS_ROOT,
    SHIFTER,
    TEST_UID,
    TEST_USER,
    container_site,
    ensure_user,
    needs_tools,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def world() -> Iterator[Path]:
    if not IS_ROOT:
        pytest.skip("needs root (creates users, loop mounts)")
    ensure_user()
    base = container_site("shifter-pull-", "site", "udi", "loop", "user")
    os.chown(base / "user", TEST_UID, TEST_UID)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _config(base: Path, auto_pull: bool) -> Path:
    path = base / f"udiRoot-{int(auto_pull)}.conf"
    path.write_text(f"imagePath={base / 'site'}\nudiMount={base / 'udi'}\nloopMount={base / 'loop'}\n"
                    f"userImagePath={base / 'user'}\nautoPull={int(auto_pull)}\nsystem=testsys\n")
    os.chmod(path, 0o644)
    return path


def _run(config: Path, ref: str, privileged: bool, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "SHIFTER_CONFIG": str(config), "HOME": "/tmp", **extra}
    cmd = [SHIFTER, f"--image={ref}", "cat", "/app/hello.txt"]
    if privileged:
        cmd.insert(1, f"--user={TEST_USER}")
    else:
        cmd = ["runuser", "-u", TEST_USER, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()),
               f"USER={TEST_USER}", *cmd]
    return subprocess.run(cmd, cwd="/", env=env if privileged else None, capture_output=True, text=True,
                          timeout=300, check=False)


@needs_tools
@pytest.mark.parametrize("privileged", [True, False], ids=["privileged", "unprivileged"])
def test_missing_image_is_pulled_first(world: Path, busybox_image: PushedImage, privileged: bool) -> None:
    res = _run(_config(world, auto_pull=True), busybox_image.ref, privileged)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hello from the image\n"
    # A user who cannot write the site store pulls into the per-user store; root acting for
    # that user (--user) pulls as the user, so into the same place.
    store = ImageStore(world / "user")
    image_id = store.resolve_tag("docker", busybox_image.ref)
    assert image_id is not None and store.is_ready(image_id)
    assert not list((world / "site").iterdir())


@needs_tools
@pytest.mark.parametrize("privileged", [True, False], ids=["privileged", "unprivileged"])
def test_missing_image_without_auto_pull_fails_with_the_hint_to_pull(
        world: Path, busybox_image: PushedImage, privileged: bool) -> None:
    res = _run(_config(world, auto_pull=False), busybox_image.ref, privileged)
    assert res.returncode == 3, res.stderr
    assert "is not in the image store" in res.stderr
    assert f"shifterimg pull docker:{busybox_image.ref}" in res.stderr
    assert not list((world / "site").iterdir()) and not list((world / "user").iterdir())


@needs_tools
def test_privileged_pull_never_gets_the_callers_ld_preload(world: Path, busybox_image: PushedImage) -> None:
    # ld.so complains once for each dynamically linked process that is given a missing preload:
    # here only shifter itself may be (the pull, mksquashfs & co. run with a fixed environment;
    # the container's busybox is static).
    res = _run(_config(world, auto_pull=True), busybox_image.ref, True, LD_PRELOAD="/nonexistent/libnope.so",
               LD_LIBRARY_PATH="/nonexistent")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hello from the image\n"
    assert res.stderr.count("libnope.so") == 1, res.stderr
