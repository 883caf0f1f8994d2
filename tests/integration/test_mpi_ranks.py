"""MPI for real: two ranks, each its own ``shifter``, on one node, with Debian's MPICH.

The image is a real Debian (debootstrap) with MPICH and an MPI ping-pong program
(``tests/fixtures/mpi_image.py``, cached under /var/cache).  The host's ``mpiexec -launcher
fork -n 2`` starts one ``shifter`` per rank as the unprivileged test user, as ``srun shifter``
does: both ranks must end up in one user namespace, or MPICH's shared-memory transport (UCX
through ``/proc/PID/fd``, CMA for large messages) fails.  Each run must complete ``MPI_Init``,
an allreduce and a 16 MiB ping-pong; the bandwidth is printed next to the same program run
inside one container.  Once for unprivileged launches (image holder), once entering a prepared
container (shifter-setup).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import mpi_image
from tests.fixtures.runtime import IS_ROOT, SHIFTER, TEST_USER, container_site, ensure_user

# The first session builds the image (debootstrap, 1-3 minutes; cached under /var/cache after).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

IMAGE_ID = "7" * 64
BIN = Path(SHIFTER).parent


@pytest.fixture(scope="module")
def config() -> Iterator[Path]:
    if not IS_ROOT:
        pytest.skip("needs root")
    if not shutil.which("mpiexec"):
        pytest.fail("the host's MPICH (mpiexec) is missing: scripts/install.sh installs it")
    ensure_user()
    base = container_site("shifter-mpi-", "store/tags/docker", "udi", "loop")
    store = base / "store"
    mpi_image.publish_cached(store, "docker.io/library/mpi:test", IMAGE_ID)
    path = base / "udiRoot.conf"
    path.write_text(f"imagePath={store}\nudiMount={base / 'udi'}\nloopMount={base / 'loop'}\nautoPull=0\n"
                    "userImagePath=\nimageMountLinger=0\n")
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    yield path
    subprocess.run([str(BIN / "shifter-teardown"), f"--user={TEST_USER}"], env=_env(path), check=False)
    subprocess.run([str(BIN / "shifter-teardown")], env=_env(path), check=False)
    shutil.rmtree(base, ignore_errors=True)


def _env(config: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "SHIFTER_CONFIG": str(config), "HOME": "/tmp", "USER": TEST_USER}


def as_user(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = [f"{k}={v}" for k, v in _env(config).items()]
    return subprocess.run(["runuser", "-u", TEST_USER, "--", "env", "-i", *env, *argv], cwd="/",
                          capture_output=True, text=True, timeout=300, check=False)


def ranks(config: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """``mpiexec -n 2 shifter --image=mpi:test COMMAND`` on the host: one shifter per rank."""
    return as_user(config, "mpiexec", "-launcher", "fork", "-n", "2", SHIFTER, "--image=mpi:test", *command)


def one_container(config: Path) -> subprocess.CompletedProcess[str]:
    """The same two ranks inside one container (the image's own mpiexec)."""
    return as_user(config, SHIFTER, "--image=mpi:test", "mpiexec", "-launcher", "fork", "-n", "2",
                   "/opt/mpi_pingpong")


def check_pingpong(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert "allreduce 2 of 2" in lines and "pingpong ok" in lines, res.stdout + res.stderr
    return next(line for line in lines if line.startswith("bandwidth"))


def _same_namespace(config: Path) -> None:
    res = ranks(config, "sh", "-c", "readlink /proc/self/ns/user; sleep 2")  # the ranks overlap, as MPI ranks do
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.split()) == 2 and len(set(res.stdout.split())) == 1, res.stdout


def test_two_shifter_ranks_use_shared_memory_unprivileged(config: Path) -> None:
    _same_namespace(config)
    separate = check_pingpong(ranks(config, "/opt/mpi_pingpong"))
    inside = check_pingpong(one_container(config))
    print(f"\nunprivileged, one shifter per rank: {separate}; one container: {inside}")


def test_two_shifter_ranks_use_shared_memory_in_a_prepared_container(config: Path) -> None:
    setup = subprocess.run([str(BIN / "shifter-setup"), "--image=mpi:test", f"--user={TEST_USER}"],
                           env=_env(config), capture_output=True, text=True, check=False, timeout=300)
    assert setup.returncode == 0, setup.stderr
    try:
        check = ranks(config, "sh", "-c", "grep -c fuse.squashfuse /proc/self/mountinfo || true")
        assert check.stdout.split() == ["0", "0"], check.stdout  # the prepared tree (kernel squashfs)
        _same_namespace(config)
        separate = check_pingpong(ranks(config, "/opt/mpi_pingpong"))
        inside = check_pingpong(one_container(config))
        print(f"\nprepared, one shifter per rank: {separate}; one container: {inside}")
    finally:
        subprocess.run([str(BIN / "shifter-teardown")], env=_env(config), check=False)
