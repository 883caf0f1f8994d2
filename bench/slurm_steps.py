"""What Shifter adds to a Slurm job step: ``srun -N3 -n6 shifter /bin/true`` against
``srun -N3 -n6 /bin/true`` in the same allocation and run, and each node's prepare time in the prolog.

Run as root from the repository root: ``/opt/shifter/venv/bin/python bench/slurm_steps.py [--rounds N]``.
Builds a busybox image store under /var/lib, starts the test cluster (``tests/slurm/cluster.sh``:
munged, slurmctld, three slurmd on this machine, the SPANK plugin, prolog and epilog), submits one
``sbatch -N3 --image=...`` job as the test user that times both steps alternately, ``--rounds``
times each (``date +%s%N`` around each ``srun``), and reads the prolog's ``prepare.json`` of each
node while the job runs.  Prints the medians, the difference per step, and the prepare times.
Target: at most 50 ms extra per step once the job's containers exist.

The three slurmd share this machine's 2 cores, so a step's 6 tasks start on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TAG, IMAGE_ID = "docker.io/bench/app:1", "d4" * 32
USER, UID = "shiftertest", 2001


def site(base: Path) -> Path:
    from tests.fixtures.runtime import build_rootfs, ensure_user, publish  # noqa: PLC0415

    ensure_user()
    store = base / "images"
    (store / "tags/docker").mkdir(parents=True)
    build_rootfs(base / "rootfs")
    publish(store, base / "rootfs", TAG, IMAGE_ID)
    for name in ("udiMount", "loopMount", "work"):
        (base / name).mkdir()
    for path in [base, *base.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    os.chown(base / "work", UID, UID)
    config = base / "udiRoot.conf"
    config.write_text(f"imagePath={store}\nudiMount={base / 'udiMount'}\nloopMount={base / 'loopMount'}\n"
                      "autoPull=0\nsystem=bench\n")
    os.chmod(config, 0o644)
    return config


def job_script(rounds: int, bin_dir: Path) -> str:
    return f"""#!/bin/sh
ns() {{ date +%s%N; }}
srun -N3 -n6 {bin_dir}/shifter /bin/true  # warm-up: the job's containers exist from here on
srun -N3 -n6 /bin/true
for i in $(seq {rounds}); do
  a=$(ns); srun -N3 -n6 /bin/true; b=$(ns)
  srun -N3 -n6 {bin_dir}/shifter /bin/true; c=$(ns)
  echo "round $((b - a)) $((c - b))"
done
"""


def run(base: Path, rounds: int, bin_dir: Path, port: int) -> int:
    config = site(base)
    env = {**os.environ, "SHIFTER_CONFIG": str(config), "SHIFTER_PREFIX": str(bin_dir.parent.parent),
           "SHIFTER_SLURM_DIR": str(base / "cluster"), "SHIFTER_SLURM_PORT": str(port)}
    cluster = ROOT / "tests/slurm/cluster.sh"
    started = subprocess.run(["bash", str(cluster), "start"], env=env, capture_output=True, text=True, check=False)
    if started.returncode != 0:
        print(started.stderr)
        return 1
    conf = started.stdout.strip().removeprefix("export SLURM_CONF=")
    try:
        script = base / "work/steps.sh"
        script.write_text(job_script(rounds, bin_dir))
        os.chmod(script, 0o755)
        user_env = [f"PATH={bin_dir}:/usr/bin:/bin", f"SHIFTER_CONFIG={config}", f"SLURM_CONF={conf}", f"USER={USER}"]
        submitted = subprocess.run(["runuser", "-u", USER, "--", "env", "-i", *user_env, "sbatch", "--parsable",
                                    "-N3", f"--image=docker:{TAG}", "-o", str(base / "work/out"), str(script)],
                                   cwd=base / "work", capture_output=True, text=True, check=False)
        if submitted.returncode != 0:
            print(submitted.stderr)
            return 1
        job = submitted.stdout.strip()
        prepare = read_prepare_times(base / "udiMount.jobs", job)
        while subprocess.run(["squeue", "-h", "-j", job], env={**os.environ, "SLURM_CONF": conf},
                             capture_output=True, text=True, check=False).stdout.strip():
            time.sleep(0.5)
        report((base / "work/out").read_text(), prepare)
    finally:
        subprocess.run(["bash", str(cluster), "stop"], env=env, capture_output=True, check=False)
    return 0


def read_prepare_times(jobs: Path, job: str, timeout: float = 120) -> dict[str, float]:
    deadline, found = time.monotonic() + timeout, {}
    while len(found) < 3 and time.monotonic() < deadline:
        for path in jobs.glob(f"*.{job}/prepare.json"):
            try:
                found[path.parent.name.split(".")[0]] = json.loads(path.read_text())["seconds"]
            except (OSError, ValueError, KeyError):
                continue
        time.sleep(0.2)
    return found


def report(out: str, prepare: dict[str, float]) -> None:
    rounds = [line.split()[1:] for line in out.splitlines() if line.startswith("round ")]
    if not rounds:
        print(out)
        return
    plain = statistics.median(int(r[0]) for r in rounds) / 1e6
    shifter = statistics.median(int(r[1]) for r in rounds) / 1e6
    print(f"{len(rounds)} rounds in one allocation (-N3 -n6), medians:")
    print("| step | median | target |\n|---|---|---|")
    print(f"| `srun -N3 -n6 /bin/true` | {plain:.0f} ms | |")
    print(f"| `srun -N3 -n6 shifter /bin/true` | {shifter:.0f} ms | |")
    print(f"| extra per step | {shifter - plain:.0f} ms | <= 50 ms |")
    for node, seconds in sorted(prepare.items()):
        print(f"prolog prepare on {node}: {seconds * 1000:.0f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="timed steps of each kind (default 10)")
    parser.add_argument("--bin", default="/opt/shifter/venv/bin", help="Shifter's venv bin directory")
    parser.add_argument("--port", type=int, default=17100, help="slurmctld's port; slurmd use the next three")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (it starts a Slurm cluster)")
        return 2
    base = Path(tempfile.mkdtemp(prefix="shifter-slurm-bench-", dir="/var/lib"))
    try:
        return run(base, args.rounds, Path(args.bin), args.port)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
