"""Launch latency of ``shifter --image=X /bin/true`` against its peers, side by side.

Run as root from the repository root: ``/opt/shifter/venv/bin/python bench/launch.py``.
Builds a busybox squashfs store in a temp dir, then times with hyperfine (``-N``, no shell):

* ``/bin/true`` on the host (the floor), and ``runuser -u USER -- /bin/true`` (the floor for
  anything run as the unprivileged user);
* shifter privileged (root, ``--user``: kernel loop mount);
* shifter unprivileged (user namespace + squashfuse), run through runuser;
* shifter entering a prepared container (after ``shifter-setup``), through runuser;
* Charliecloud's ``ch-run`` on the same squashfs, through runuser;
* ``podman run`` if podman is installed (skipped with a note otherwise).

Prints each median and its ratio to ``/bin/true`` and to ``ch-run``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.test_runtime_security import (
    TEST_UID,
    TEST_USER,
    _build_rootfs,
    _ensure_user,
    _publish,
)

VENV_BIN = Path("/opt/shifter/venv/bin")


def main() -> int:
    if os.geteuid() != 0:
        print("run as root (it creates a test user and kernel loop mounts)")
        return 2
    if not shutil.which("hyperfine"):
        print("hyperfine is not installed")
        return 2
    _ensure_user()
    os.chmod("/dev/fuse", 0o666)
    base = Path(tempfile.mkdtemp(prefix="shifter-bench-", dir="/tmp"))
    try:
        return run(base)
    finally:
        subprocess.run([str(VENV_BIN / "shifter-teardown")], env=env_for(base), check=False)
        shutil.rmtree(base, ignore_errors=True)


def env_for(base: Path) -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SHIFTER_CONFIG": str(base / "udiRoot.conf"),
            "HOME": "/tmp", "USER": TEST_USER}


def run(base: Path) -> int:
    store, udi, loop, rootfs = base / "store", base / "udi", base / "loop", base / "rootfs"
    for path in (store / "tags/docker", udi, loop):
        path.mkdir(parents=True)
    _build_rootfs(rootfs)
    image_id = "b" * 64
    _publish(store, rootfs, "docker.io/library/busybox:bench", image_id)
    (base / "udiRoot.conf").write_text(f"imagePath={store}\nudiMount={udi}\nloopMount={loop}\nautoPull=0\n"
                                       "userImagePath=\n")
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    env = env_for(base)
    sqfs = store / f"{image_id}.squashfs"
    shifter = f"{VENV_BIN}/shifter --image=busybox:bench /bin/true"
    as_user = f"runuser -u {TEST_USER} --"
    commands = {
        "true": "/bin/true",
        "runuser true": f"{as_user} /bin/true",
        "shifter privileged": f"{VENV_BIN}/shifter --user={TEST_USER} --image=busybox:bench /bin/true",
        "shifter unprivileged": f"{as_user} {shifter}",
        "ch-run": f"{as_user} ch-run {sqfs} -- /bin/true",
    }
    notes = []
    if not shutil.which("ch-run"):
        del commands["ch-run"]
        notes.append("ch-run not installed: skipped")
    if shutil.which("podman"):
        commands["podman"] = ("podman run --rm --runtime runc --network=none --cgroup-manager=cgroupfs "
                              f"oci-archive:{base}/none true")
        notes.append("podman: needs an image loaded; see MACHINE-NOTES for the flags")
    else:
        notes.append("podman is not installed: skipped")
    medians = hyperfine(commands, env, base / "first.json")
    setup = subprocess.run([str(VENV_BIN / "shifter-setup"), "--image=busybox:bench", f"--user={TEST_USER}"],
                           env=env, capture_output=True, text=True, check=False)
    if setup.returncode == 0:
        medians.update(hyperfine({"shifter prepared": f"{as_user} {shifter}"}, env, base / "prep.json"))
    else:
        notes.append(f"shifter-setup failed: {setup.stderr.strip()}")
    report(medians, notes)
    return 0


def hyperfine(commands: dict[str, str], env: dict[str, str], out: Path) -> dict[str, float]:
    args = ["hyperfine", "-N", "--warmup", "3", "--runs", "30", "--export-json", str(out), "--style", "basic"]
    for name, cmd in commands.items():
        args += ["-n", name, cmd]
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=None)
    results = json.loads(out.read_text())["results"]
    return {r["command"]: r["median"] * 1000 for r in results}


def report(medians: dict[str, float], notes: list[str]) -> None:
    floor = medians.get("true", 0.0)
    user_floor = medians.get("runuser true", 0.0)
    chrun = medians.get("ch-run")
    print(f"{'command':24} {'median ms':>10} {'minus floor':>12} {'x ch-run':>9}")
    for name, ms in medians.items():
        own_floor = user_floor if name in ("shifter unprivileged", "shifter prepared", "ch-run") else floor
        ratio = f"{ms / chrun:9.2f}" if chrun else "        -"
        print(f"{name:24} {ms:10.1f} {ms - own_floor:12.1f} {ratio}")
    for note in notes:
        print(f"note: {note}")
    print(f"(unprivileged rows run through runuser as uid {TEST_UID}; "
          "'minus floor' subtracts runuser's cost)")


if __name__ == "__main__":
    sys.exit(main())
