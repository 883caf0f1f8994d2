"""The mpich plugin with tiny versioned libraries built by gcc: the host's MPICH-ABI library and
what it needs are bound into the module directory (not the C library), and the ABI check (as in
Sarus' MPI hook) accepts the same version, warns for an older minor in the image, and refuses a
newer minor or another major, naming both versions.  Both modes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.hostlibs import LIBDIR, build_lib, make_tree, update_cache
from tests.fixtures.runtime import (
    IS_ROOT,
    SHIFTER,
    TEST_USER,
    build_rootfs,
    container_site,
    ensure_user,
    needs_tools,
    publish,
    shifter_env,
)

pytestmark = [pytest.mark.integration, needs_tools,
              pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc (tiny MPI libraries)")]

Runner = Callable[..., subprocess.CompletedProcess[str]]
HOST_VERSION = "12.2.2"
# image tag -> the real file of the image's libmpich.so.12
IMAGES = {"same": "libmpich.so.12.2.2", "older": "libmpich.so.12.1.0", "newer": "libmpich.so.12.3.0",
          "major": "libmpich.so.13.0.0"}
IDS = {"same": "a" * 64, "older": "b" * 64, "newer": "c" * 64, "major": "d" * 64}


@dataclass
class Site:
    base: Path
    config: Path


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    if not IS_ROOT:
        pytest.skip("needs root")
    ensure_user()
    base = container_site("shifter-mpich-", "store/tags/docker", "udi", "loop")
    host = base / "host"
    libdir = make_tree(host)
    dep = build_lib(libdir, "libfabricfake.so.1.0.0", "libfabricfake.so.1")
    build_lib(libdir, f"libmpich.so.{HOST_VERSION}", "libmpich.so.12", needed=[dep])
    build_lib(libdir, f"libmpichfort.so.{HOST_VERSION}", "libmpichfort.so.12")
    update_cache(host)
    for tag, real in IMAGES.items():
        rootfs = base / f"rootfs-{tag}"
        build_rootfs(rootfs)
        image_lib = rootfs / LIBDIR
        image_lib.mkdir(parents=True)
        build_lib(image_lib, real, "libmpich.so.12")
        (image_lib / "libmpich.so.12").symlink_to(real)
        publish(base / "store", rootfs, f"docker.io/library/mpi:{tag}", IDS[tag])
    for dirpath, _dirs, files in os.walk(base / "store"):
        os.chmod(dirpath, 0o755)
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o644)
    config = base / "udiRoot.conf"
    config.write_text(f"imagePath={base / 'store'}\nudiMount={base / 'udi'}\nloopMount={base / 'loop'}\n"
                      f"autoPull=0\nuserImagePath=\npluginHostRoot={host}\nmodule_mpich_plugin=mpich\n")
    os.chmod(config, 0o644)
    yield Site(base, config)
    shutil.rmtree(base, ignore_errors=True)


def run_priv(site: Site, tag: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SHIFTER, f"--user={TEST_USER}", f"--image=mpi:{tag}", "--module=mpich", *args], cwd="/",
                          env=shifter_env(site.config), capture_output=True, text=True, timeout=120, check=False)


def run_user(site: Site, tag: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = [f"{k}={v}" for k, v in shifter_env(site.config, USER=TEST_USER).items()]
    return subprocess.run(["runuser", "-u", TEST_USER, "--", "env", "-i", *env, SHIFTER, f"--image=mpi:{tag}",
                           "--module=mpich", *args], cwd="/", capture_output=True, text=True, timeout=120, check=False)


MODES = pytest.mark.parametrize("runner", [run_priv, run_user], ids=["privileged", "unprivileged"])


@MODES
def test_host_mpi_library_and_its_dependencies_are_bound(site: Site, runner: Runner) -> None:
    res = runner(site, "same", "sh", "-c", "ls /opt/udiImage/modules/mpich/lib; echo $LD_LIBRARY_PATH; "
                 "cat /opt/udiImage/modules/mpich/lib/libmpich.so.12 | grep -c libfabricfake")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[:-2] == ["libfabricfake.so.1", "libmpi.so.12", "libmpich.so.12", "libmpichfort.so.12",
                          "libmpifort.so.12"]  # no libc: the image's own
    assert lines[-2].split(":")[0] == "/opt/udiImage/modules/mpich/lib"
    assert int(lines[-1]) >= 1  # the host's build (it needs libfabricfake), not the image's
    assert "MPI library" not in res.stderr  # same version: no warning


@MODES
def test_older_minor_in_the_image_is_allowed_with_a_warning(site: Site, runner: Runner) -> None:
    res = runner(site, "older", "true")
    assert res.returncode == 0, res.stderr
    assert "(version 12.1.0) is older than the host's" in res.stderr and "(version 12.2.2)" in res.stderr


@MODES
def test_newer_minor_in_the_image_is_refused(site: Site, runner: Runner) -> None:
    res = runner(site, "newer", "true")
    assert res.returncode == 16
    assert "(version 12.3.0) is not ABI-compatible" in res.stderr and "(version 12.2.2)" in res.stderr


@MODES
def test_another_major_version_is_refused_naming_both(site: Site, runner: Runner) -> None:
    res = runner(site, "major", "true")
    assert res.returncode == 16
    assert "libmpich.so.13.0.0 (version 13.0.0) is not ABI-compatible" in res.stderr
    assert f"libmpich.so.{HOST_VERSION} (version {HOST_VERSION})" in res.stderr
