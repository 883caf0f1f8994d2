"""The mpich module with real MPI: a hello world compiled with ``mpicc`` in a Debian image with
MPICH runs under the host's ``mpiexec -n 2`` with the host's library swapped in (``ldd`` inside
shows the module directory, whose file is the host's very library).

The image is ``tests.fixtures.mpi_image`` (debootstrap bookworm + MPICH, cached under
``/var/cache/shifter-test``); the test is skipped where that fixture or the host's MPICH is absent.
Privileged mode (root for the test user): MPICH's UCX transport needs both ranks in one user
namespace (docs/modules.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.runtime import IS_ROOT, SHIFTER, TEST_UID, TEST_USER, ensure_user, needs_tools, scratch_dir

mpi_image = pytest.importorskip("tests.fixtures.mpi_image", reason="the MPI image fixture is not available")

pytestmark = [pytest.mark.integration, needs_tools,
              pytest.mark.skipif(not shutil.which("mpiexec"), reason="needs MPICH on the host")]

HELLO = r"""
#include <mpi.h>
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    int rank, size;
    char line[4096], lib[4096] = "none";
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    FILE *maps = fopen("/proc/self/maps", "r");
    while (maps && fgets(line, sizeof line, maps))
        if (strstr(line, "libmpi")) { sscanf(strrchr(line, ' ') + 1, "%4095s", lib); break; }
    printf("hello from rank %d of %d using %s\n", rank, size, lib);
    MPI_Finalize();
    return 0;
}
"""
MODULE_LIB = "/opt/udiImage/modules/mpich/lib/libmpich.so.12"


@dataclass
class Site:
    base: Path
    config: Path
    work: Path


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    if not IS_ROOT:
        pytest.skip("needs root")
    ensure_user()
    base = scratch_dir("shifter-realmpi-")
    for sub in ("store/tags/docker", "udi", "loop", "work"):
        (base / sub).mkdir(parents=True)
    mpi_image.publish_cached(base / "store", "docker.io/library/mpich:real", "e" * 64)
    for dirpath, _dirs, files in os.walk(base / "store"):
        os.chmod(dirpath, 0o755)
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o644)
    work = base / "work"
    (work / "hello.c").write_text(HELLO)
    os.chown(work, TEST_UID, TEST_UID)
    config = base / "udiRoot.conf"
    config.write_text(f"imagePath={base / 'store'}\nudiMount={base / 'udi'}\nloopMount={base / 'loop'}\n"
                      "autoPull=0\nuserImagePath=\nmodule_mpich_plugin=mpich\n")
    os.chmod(config, 0o644)
    yield Site(base, config, work)
    shutil.rmtree(base, ignore_errors=True)


def _env(site: Site) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "SHIFTER_CONFIG": str(site.config), "HOME": "/tmp"}


def _shifter(site: Site, *args: str) -> list[str]:
    return [SHIFTER, f"--user={TEST_USER}", "--image=mpich:real", f"--volume={site.work}:/work", *args]


def _compiled(site: Site) -> None:
    if (site.work / "hello").exists():
        return
    res = subprocess.run(_shifter(site, "mpicc", "-o", "/work/hello", "/work/hello.c"), env=_env(site), cwd="/",
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr


def test_ldd_inside_shows_the_host_library_in_the_module_directory(site: Site) -> None:
    _compiled(site)
    script = f"ldd /work/hello; stat -L -c '%d %i' {MODULE_LIB}"
    res = subprocess.run(_shifter(site, "--module=mpich", "sh", "-c", script), env=_env(site), cwd="/",
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert f"libmpich.so.12 => {MODULE_LIB}" in res.stdout
    host = os.stat("/usr/lib/x86_64-linux-gnu/libmpich.so.12")
    assert res.stdout.splitlines()[-1].split()[1] == str(host.st_ino)  # the host's very file
    plain = subprocess.run(_shifter(site, "ldd", "/work/hello"), env=_env(site), cwd="/", capture_output=True,
                           text=True, timeout=120, check=False)
    assert "libmpich.so.12 => /lib/x86_64-linux-gnu/libmpich.so.12" in plain.stdout  # without the module


def test_mpiexec_runs_two_ranks_with_the_host_library(site: Site) -> None:
    _compiled(site)
    res = subprocess.run(["mpiexec", "-launcher", "fork", "-n", "2", *_shifter(site, "--module=mpich", "/work/hello")],
                         env=_env(site), cwd="/", capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = sorted(line for line in res.stdout.splitlines() if line.startswith("hello"))
    assert lines == [f"hello from rank {r} of 2 using {MODULE_LIB}" for r in (0, 1)]
