"""Launch latency of ``shifter --image=X /bin/true`` against its peers, side by side.

Run as root from the repository root: ``/opt/shifter/venv/bin/python bench/launch.py [--runs N]``.
Builds a busybox squashfs store in a temporary directory under /var/lib (not /tmp: every
container binds the host's /tmp recursively, and a site tree below it would be bound in too),
then times with hyperfine (``-N``, no shell), all in one run:

* ``/bin/true`` on the host (the floor), and ``runuser -u USER -- /bin/true`` (the floor for
  anything run as the unprivileged user);
* ``python -I -S`` starting and exec'ing ``/bin/true`` as that user: the floor of any Python
  launcher (shifter's own work is the prepared row minus this one);
* shifter privileged (root, ``--user``: kernel loop mount), **cold** (``shifter-teardown
  --user=root`` before every run: a fresh loop device and mount) and **warm** (joining root's
  image holder);
* shifter unprivileged **cold** (user namespace + a fresh squashfuse: every run is preceded by
  ``shifter-teardown --user``, so nothing is held) and **warm** (``imageMountLinger=600``: the
  run joins the image holder the warm-up left, see docs/runtime.md "Image holders"), through
  runuser;
* shifter entering a prepared container (after ``shifter-setup``), through runuser;
* Charliecloud's ``ch-run`` on the same squashfs, through runuser;
* ``podman run`` if podman is installed (busybox only; skipped with a note otherwise).

Every row uses the same zstd squashfs (``-Xcompression-level 3``, what a real pull writes): a
busybox image (``--image=busybox``, the default) or a real Debian image with python3, numpy and
MPICH (``--image=debian``; debootstrap, built once and cached under /var/cache, see
``tests/fixtures/mpi_image.py``), or both.

``shifter`` is the command users run: the one on ``PATH`` (``/usr/local/bin/shifter``, the
launcher scripts/install.sh writes), else the venv's.  Prints each command's min and median,
the median minus its floor, and the ratios of the medians to ``/bin/true`` and to ``ch-run``.
Targets, as ratios to ``ch-run``: warm unprivileged <= 0.5x, prepared <= 0.6x, root warm <= 0.6x,
cold unprivileged <= 1.5x, cold root <= 1.0x.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fixtures import mpi_image
from tests.fixtures.runtime import (
    TEST_UID,
    TEST_USER,
)
from tests.fixtures.runtime import build_rootfs as _build_rootfs
from tests.fixtures.runtime import ensure_user as _ensure_user
from tests.fixtures.runtime import publish as _publish

VENV_BIN = Path("/opt/shifter/venv/bin")
AS_USER = ("python -IS exec", "shifter unpriv cold", "shifter unpriv warm", "shifter prepared", "ch-run")
PYTHON_FLOOR = "import posix; posix.execv('/bin/true', ['/bin/true'])"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="timed runs per command (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    parser.add_argument("--image", choices=("busybox", "debian", "both"), default="busybox",
                        help="the image every row runs (default busybox)")
    parser.add_argument("--venv", type=Path, default=VENV_BIN,
                        help=f"bin directory of the shifter installation (default {VENV_BIN})")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (it creates a test user and kernel loop mounts)")
        return 2
    if not shutil.which("hyperfine"):
        print("hyperfine is not installed")
        return 2
    _ensure_user()
    os.chmod("/dev/fuse", 0o666)
    status = 0
    for image in ("busybox", "debian") if args.image == "both" else (args.image,):
        base = Path(tempfile.mkdtemp(prefix="shifter-bench-", dir="/var/lib"))
        try:
            print(f"== {image}")
            status |= run(base, args.runs, args.warmup, image, args.venv)
        finally:
            subprocess.run([str(args.venv / "shifter-teardown")], env=env_for(base), check=False)
            for user in (TEST_USER, "root"):  # the warm rows' holders (unprivileged and root mode)
                subprocess.run([str(args.venv / "shifter-teardown"), f"--user={user}"], env=env_for(base),
                               check=False)
            shutil.rmtree(base, ignore_errors=True)
    return status


def shifter_command(venv: Path = VENV_BIN) -> str:
    """The ``shifter`` a user gets: on PATH (as installed), else the venv's (``--venv``: that one)."""
    if venv != VENV_BIN:
        return str(venv / "shifter")
    return shutil.which("shifter", path="/usr/local/bin:/usr/bin:/bin") or str(VENV_BIN / "shifter")


def env_for(base: Path) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "SHIFTER_CONFIG": str(base / "udiRoot.conf"),
            "HOME": "/tmp", "USER": TEST_USER, "LANG": "C"}


def run(base: Path, runs: int, warmup: int, image: str, venv: Path) -> int:
    store, udi, loop, rootfs = base / "store", base / "udi", base / "loop", base / "rootfs"
    for path in (store / "tags/docker", udi, loop):
        path.mkdir(parents=True)
    image_id = "b" * 64
    if image == "busybox":
        _build_rootfs(rootfs)
        _publish(store, rootfs, "docker.io/library/busybox:bench", image_id,
                 comp=("zstd", "-Xcompression-level", "3"))
    else:
        mpi_image.publish_cached(store, "docker.io/library/busybox:bench", image_id)
    site = f"imagePath={store}\nudiMount={udi}\nloopMount={loop}\nautoPull=0\nuserImagePath=\n"
    # Warm rows join the holder the warm-up left; cold rows tear it down before every run.
    (base / "udiRoot.conf").write_text(site + "imageMountLinger=600\n")
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    env = env_for(base)
    sqfs = store / f"{image_id}.squashfs"
    shifter = f"{shifter_command(venv)} --image=busybox:bench /bin/true"
    as_user = f"runuser -u {TEST_USER} --"
    commands = {
        "true": "/bin/true",
        "runuser true": f"{as_user} /bin/true",
        "python -IS exec": f'{as_user} {venv / "python3"} -I -S -c "{PYTHON_FLOOR}"',
        "shifter root warm": f"{shifter_command(venv)} --user={TEST_USER} --image=busybox:bench /bin/true",
        "shifter unpriv warm": f"{as_user} {shifter}",
        "ch-run": f"{as_user} ch-run {sqfs} -- /bin/true",
    }
    notes = [f"shifter is {shifter_command(venv)}; image {image}"]
    if not shutil.which("ch-run"):
        del commands["ch-run"]
        notes.append("ch-run not installed: skipped")
    if image == "busybox" and shutil.which("podman") and _podman_image(rootfs):
        # Rootful podman with the flags MACHINE-NOTES found to work here (no systemd, cgroups v1).
        commands["podman"] = ("podman --cgroup-manager=cgroupfs run --rm --runtime runc --network=none "
                              "--ulimit nofile=1024:1024 --ulimit nproc=4096:4096 "
                              f"{PODMAN_IMAGE} /bin/true")
    else:
        notes.append("podman (with runc) not installed, could not import the image, or not the busybox run: "
                     "skipped")
    times = hyperfine(commands, env, base / "first.json", runs, warmup)
    # Cold: nothing held before each run (the teardown runs untimed).
    teardown = f"{venv / 'shifter-teardown'} --user={TEST_USER}"
    times.update(hyperfine({"shifter unpriv cold": f"{as_user} {shifter}"}, env, base / "cold.json", runs,
                           warmup, prepare=teardown))
    times.update(hyperfine({"shifter root cold": commands["shifter root warm"]}, env, base / "rootcold.json", runs,
                           warmup, prepare=f"{venv / 'shifter-teardown'} --user=root"))
    setup = subprocess.run([str(venv / "shifter-setup"), "--image=busybox:bench", f"--user={TEST_USER}"],
                           env=env, capture_output=True, text=True, check=False)
    if setup.returncode == 0:
        times.update(hyperfine({"shifter prepared": f"{as_user} {shifter}"}, env, base / "prep.json", runs, warmup))
    else:
        notes.append(f"shifter-setup failed: {setup.stderr.strip()}")
    report(times, notes)
    return 0


PODMAN_IMAGE = "localhost/shifter-bench:latest"


def _podman_image(rootfs: Path) -> bool:
    """Import the same busybox tree into podman's store (``podman import`` of a tar stream)."""
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    done = subprocess.run(["podman", "--cgroup-manager=cgroupfs", "import", "-", PODMAN_IMAGE],
                          stdin=tar.stdout, capture_output=True, check=False)
    tar.wait()
    return done.returncode == 0 and shutil.which("runc") is not None


def hyperfine(commands: dict[str, str], env: dict[str, str], out: Path, runs: int,
              warmup: int, prepare: str = "") -> dict[str, tuple[float, float]]:
    """``name -> (min ms, median ms)``; ``prepare`` runs (untimed) before every run."""
    args = ["hyperfine", "-N", "--warmup", str(warmup), "--runs", str(runs), "--export-json", str(out),
            "--style", "basic"]
    if prepare:
        args += ["--prepare", prepare]
    for name, cmd in commands.items():
        args += ["-n", name, cmd]
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=None)
    results = json.loads(out.read_text())["results"]
    return {r["command"]: (r["min"] * 1000, r["median"] * 1000) for r in results}


def report(times: dict[str, tuple[float, float]], notes: list[str]) -> None:
    floor = times.get("true", (0.0, 0.0))[1]
    user_floor = times.get("runuser true", (0.0, 0.0))[1]
    chrun = times.get("ch-run", (0.0, 0.0))[1]
    print(f"{'command':22} {'min ms':>7} {'median':>7} {'- floor':>8} {'x true':>7} {'x ch-run':>9}")
    for name, (low, median) in times.items():
        own_floor = user_floor if name in AS_USER else floor
        vs_true = f"{median / floor:7.1f}" if floor else "      -"
        vs_chrun = f"{median / chrun:9.2f}" if chrun else "        -"
        print(f"{name:22} {low:7.1f} {median:7.1f} {median - own_floor:8.1f} {vs_true} {vs_chrun}")
    for note in notes:
        print(f"note: {note}")
    print(f"(rows run as {TEST_USER}, uid {TEST_UID}, go through runuser; '- floor' subtracts runuser's cost; "
          "'x true' and 'x ch-run' compare medians)")


if __name__ == "__main__":
    sys.exit(main())
