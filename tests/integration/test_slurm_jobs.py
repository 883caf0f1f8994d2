"""Shifter jobs on a real Slurm cluster (``tests/slurm/cluster.sh``: munged, slurmctld and three
slurmd on this machine, with the SPANK plugin, prolog and epilog), submitted by unprivileged users.

Each test names what it guards: the image the job was submitted with is the one it runs, every
node prepares one container for the job and every ``shifter`` task enters it, nothing is left
mounted after the job (however it ends), a user's mistake never drains a node, and no other user
gets into the job's container.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.runtime import IS_ROOT, TEST_UID, TEST_USER, VENV_BIN, build_rootfs, ensure_user, publish

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "tests/slurm/cluster.sh"
BASE = Path("/var/lib/shifter-slurm-test")  # not under /tmp: containers bind the host's /tmp
OTHER_USER, OTHER_UID = "shiftertest2", 2002
IMAGE = "docker:test/app:1"
REF = "docker.io/test/app:1"
ID_A, ID_B = "a1" * 32, "b2" * 32
NODES = ("n1", "n2", "n3")
SECRET = "only-for-the-first-user"


@dataclass
class Cluster:
    base: Path
    store: Path
    config: Path
    conf: str  # SLURM_CONF
    jobs: Path  # <udiMount>.jobs
    work: Path  # the first user's directory (job scripts, outputs)
    volume: Path  # a directory only the first user may read

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "SHIFTER_CONFIG": str(self.config), "SLURM_CONF": self.conf,
                "HOME": str(self.work), **extra}

    def as_user(self, cmd: list[str], user: str = TEST_USER, timeout: float = 120, stdin: str | None = None,
                **extra: str) -> subprocess.CompletedProcess[str]:
        env = [f"{k}={v}" for k, v in self.env(USER=user, **extra).items()]
        return subprocess.run(["runuser", "-u", user, "--", "env", "-i", *env, *cmd], cwd=str(self.work),
                              capture_output=True, text=True, timeout=timeout, check=False, input=stdin)

    def slurm(self, cmd: list[str]) -> str:
        return subprocess.run(cmd, env={**os.environ, "SLURM_CONF": self.conf}, capture_output=True, text=True,
                              check=True, timeout=30).stdout


def _ensure_other_user() -> None:
    if subprocess.run(["id", OTHER_USER], capture_output=True, check=False).returncode != 0:
        subprocess.run(["useradd", "-u", str(OTHER_UID), "-M", "-s", "/bin/sh", OTHER_USER], check=True)


def _image(store: Path, image_id: str, name: str) -> None:
    rootfs = store.parent / f"rootfs-{name}"
    build_rootfs(rootfs)
    (rootfs / "etc/os-release").write_text(f"NAME={name}\n")
    publish(store, rootfs, REF, image_id)
    shutil.rmtree(rootfs)


def _tag(store: Path, image_id: str) -> None:
    (store / "tags/docker" / urllib.parse.quote(REF, safe="")).write_text(image_id + "\n")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    if not IS_ROOT or not shutil.which("slurmctld") or not Path("/usr/include/slurm/spank.h").exists():
        pytest.fail("the Slurm tests need root, slurm-wlm, libslurm-dev, munge and gcc (scripts/install.sh)",
                    pytrace=False)
    ensure_user()
    _ensure_other_user()
    os.chmod("/dev/fuse", 0o666)
    shutil.rmtree(BASE, ignore_errors=True)
    store, work, volume = BASE / "images", BASE / "work", BASE / "private/project"
    (store / "tags/docker").mkdir(parents=True)
    _image(store, ID_B, "imageB")
    _image(store, ID_A, "imageA")  # the tag points at A
    config = BASE / "udiRoot.conf"
    config.write_text(f"imagePath={store}\nudiMount={BASE / 'udiMount'}\nloopMount={BASE / 'loopMount'}\n"
                      "autoPull=0\nsystem=slurmtest\n")
    (BASE / "udiMount").mkdir()
    (BASE / "loopMount").mkdir()
    for path in (BASE, BASE / "udiMount", BASE / "loopMount", store, store / "tags", store / "tags/docker"):
        os.chmod(path, 0o755)
    for path in store.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    work.mkdir()
    os.chown(work, TEST_UID, TEST_UID)
    volume.mkdir(parents=True)
    (volume / "secret.txt").write_text(SECRET + "\n")
    for path in (volume.parent, volume, volume / "secret.txt"):
        os.chown(path, TEST_UID, TEST_UID)
    os.chmod(volume.parent, 0o700)
    env = {**os.environ, "SHIFTER_CONFIG": str(config), "SHIFTER_PREFIX": str(VENV_BIN.parent.parent),
           "SHIFTER_SLURM_DIR": str(BASE / "cluster")}
    started = subprocess.run(["bash", str(CLUSTER), "start"], env=env, capture_output=True, text=True,
                             timeout=120, check=False)
    assert started.returncode == 0, started.stderr
    conf = started.stdout.strip().removeprefix("export SLURM_CONF=")
    try:
        yield Cluster(BASE, store, config, conf, BASE / "udiMount.jobs", work, volume)
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop"], env=env, capture_output=True, timeout=120, check=False)
        shutil.rmtree(BASE, ignore_errors=True)


def _wait(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _script(cluster: Cluster, name: str, body: str) -> Path:
    path = cluster.work / name
    path.write_text("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)
    os.chown(path, TEST_UID, TEST_UID)
    return path


def _sbatch(cluster: Cluster, *args: str, user: str = TEST_USER, **extra: str) -> str:
    result = cluster.as_user(["sbatch", "--parsable", *args], user=user, **extra)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def _job_state(cluster: Cluster, job: str) -> str:
    return cluster.slurm(["squeue", "-h", "-j", job, "-o", "%T"]).strip() if job else ""


def _wait_gone(cluster: Cluster, job: str, timeout: float = 120) -> None:
    _wait(f"job {job} to end", lambda: _job_state(cluster, job) == "", timeout)
    # The epilog runs after the job left the queue's running state: wait for its directories.
    _wait(f"job {job}'s epilogs", lambda: not any(cluster.jobs.glob(f"*.{job}")), 60)


def _mounts(needle: str) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if needle in line]


def _loops(needle: str) -> list[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if needle in line]


def _processes_inside(root: Path) -> list[int]:
    """Processes whose root directory is (or was) below ``root``: a job's containers."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "root").startswith(str(root)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _assert_clean(cluster: Cluster, job: str) -> None:
    assert not any(cluster.jobs.glob(f"*.{job}")), "the job's directories are left"
    assert _processes_inside(cluster.jobs) == [], "processes are left in a job's container"
    assert _mounts(f"{cluster.jobs}/") == [], "mounts are left"
    assert _loops(str(cluster.store)) == [], "loop devices are left"
    states = cluster.slurm(["sinfo", "-h", "-N", "-o", "%N %T"]).split("\n")
    assert all(line.split()[1] == "idle" for line in states if line.strip()), f"a node is not idle: {states}"


def _output(cluster: Cluster, job: str) -> str:
    return (cluster.work / f"out.{job}").read_text()


def test_sbatch_image_runs_srun_shifter_on_three_nodes_in_one_prepared_container_each(cluster: Cluster) -> None:
    body = (f"srun -n 6 shifter sh -c 'echo task $SLURMD_NODENAME $(cat /etc/os-release) "
            "$(id -u) $(cat /data/secret.txt) $(stat -f -c %T /bin)'\n"
            f"echo loops $(/usr/sbin/losetup -a | grep -c {cluster.store})\n"
            "echo env $SHIFTER_IMAGE $SHIFTER_IMAGETYPE $SHIFTER_VOLUME\n"
            f"srun -N1 -n1 shifter --image=id:{ID_B} sh -c 'echo other $(cat /etc/os-release) $(stat -f -c %T /bin)'\n")
    script = _script(cluster, "three.sh", body)
    job = _sbatch(cluster, "-N3", f"--image={IMAGE}", f"--volume={cluster.volume}:/data",
                  "-o", str(cluster.work / "out.%j"), "--wait", str(script))
    out = _output(cluster, job)
    tasks = [line.split() for line in out.splitlines() if line.startswith("task ")]
    assert len(tasks) == 6, out
    assert sorted(t[1] for t in tasks) == sorted([*NODES, *NODES])
    # The image's files, as the user, the volume, and the image mounted once per node by the
    # prolog (kernel squashfs): every task entered the node's prepared container.
    assert all(t[2:] == ["NAME=imageA", str(TEST_UID), SECRET, "squashfs"] for t in tasks), out
    assert "loops 3" in out, out  # one image mount per node (the three slurmd share this host)
    assert f"env id:{ID_A} id {cluster.volume}:/data" in out, out
    # Other options: a private container of its own (squashfuse as the user), not the job's.
    other = next(line.split() for line in out.splitlines() if line.startswith("other "))
    assert other[1] == "NAME=imageB" and other[2] != "squashfs", out
    _wait_gone(cluster, job)
    _assert_clean(cluster, job)


def test_job_runs_the_digest_it_was_submitted_with_after_the_tag_moves(cluster: Cluster) -> None:
    script = _script(cluster, "pinned.sh", "srun shifter cat /etc/os-release\n")
    job = _sbatch(cluster, "-N1", "--hold", f"--image={IMAGE}", "-o", str(cluster.work / "out.%j"), str(script))
    try:
        _tag(cluster.store, ID_B)  # the tag moves while the job waits
        cluster.slurm(["scontrol", "release", job])
        _wait_gone(cluster, job)
    finally:
        _tag(cluster.store, ID_A)
    out = _output(cluster, job)
    assert "NAME=imageA" in out and "imageB" not in out, out
    _assert_clean(cluster, job)


def test_unknown_image_fails_the_submission_with_the_reason(cluster: Cluster) -> None:
    result = cluster.as_user(["sbatch", "-N1", "--image=docker:no/such:1", "--wrap", "true"])
    assert result.returncode != 0
    assert "--image=docker:no/such:1: image docker:no/such:1 is not in the image store" in result.stderr
    assert "Submitted" not in result.stdout


def test_bad_volume_fails_the_job_with_the_reason_and_drains_no_node(cluster: Cluster) -> None:
    script = _script(cluster, "badvol.sh", "srun shifter true\n")
    result = cluster.as_user(["sbatch", "--parsable", "-N2", f"--image={IMAGE}", "--volume=/does/not/exist:/data",
                              "-o", str(cluster.work / "out.%j"), "--wait", str(script)])
    job = result.stdout.strip().split(";")[0]
    assert result.returncode != 0  # the job failed
    out = _output(cluster, job)
    assert "shifter: error:" in out and "/does/not/exist" in out, out
    _wait_gone(cluster, job)
    _assert_clean(cluster, job)


def test_image_gone_before_the_job_starts_fails_the_job_with_the_reason_and_drains_no_node(cluster: Cluster) -> None:
    gone_id, ref = "e5" * 32, "docker.io/test/gone:1"
    rootfs = cluster.base / "rootfs-gone"
    build_rootfs(rootfs)
    publish(cluster.store, rootfs, ref, gone_id)
    shutil.rmtree(rootfs)
    for path in cluster.store.glob(f"{gone_id}.*"):
        os.chmod(path, 0o644)
    script = _script(cluster, "gone.sh", "srun shifter true\n")
    job = _sbatch(cluster, "-N2", "--hold", "--image=docker:test/gone:1", "-o", str(cluster.work / "out.%j"),
                  str(script))
    for path in cluster.store.glob(f"{gone_id}.*"):  # removed after submission, before the job runs
        path.unlink()
    cluster.slurm(["scontrol", "release", job])
    _wait_gone(cluster, job)
    out = _output(cluster, job)
    assert f"shifter: error: no image with id {gone_id}" in out, out
    _assert_clean(cluster, job)


def _running_with_container(cluster: Cluster, job: str, node: str = "n1", work: Path | None = None) -> None:
    record = cluster.jobs / f"{node}.{job}" / "udiMount.json"
    _wait(f"job {job} to run", lambda: _job_state(cluster, job) == "RUNNING" and record.exists())
    _wait(f"job {job}'s task", ((work or cluster.work) / f"started.{job}").exists)


def test_scancel_mid_run_leaves_nothing_mounted(cluster: Cluster) -> None:
    script = _script(cluster, "cancel.sh", "srun -n 2 shifter sh -c 'touch /data/started.$SLURM_JOB_ID; sleep 300'\n")
    job = _sbatch(cluster, "-N2", f"--image={IMAGE}", f"--volume={cluster.work}:/data",
                  "-o", str(cluster.work / "out.%j"), str(script))
    _running_with_container(cluster, job)
    assert len(_loops(str(cluster.store))) == 2
    cluster.slurm(["scancel", job])
    _wait_gone(cluster, job)
    _assert_clean(cluster, job)


def test_time_limit_leaves_nothing_mounted(cluster: Cluster) -> None:
    script = _script(cluster, "timeout.sh", "srun shifter sh -c 'touch /data/started.$SLURM_JOB_ID; sleep 600'\n")
    job = _sbatch(cluster, "-N1", "-t", "1", f"--image={IMAGE}", f"--volume={cluster.work}:/data",
                  "-o", str(cluster.work / "out.%j"), str(script))
    _running_with_container(cluster, job)
    _wait_gone(cluster, job, timeout=180)  # slurmctld checks time limits every 30 s
    assert "DUE TO TIME LIMIT" in _output(cluster, job)
    _assert_clean(cluster, job)


def test_other_user_cannot_enter_the_jobs_container(cluster: Cluster) -> None:
    script = _script(cluster, "victim.sh", "srun shifter sh -c 'touch /work/started.$SLURM_JOB_ID; sleep 300'\n")
    volumes = f"{cluster.volume}:/data;{cluster.work}:/work"
    # Two --volume options: the job carries both (';'-joined), and its srun does not re-resolve them.
    job = _sbatch(cluster, "-N1", "-w", "n1", f"--image={IMAGE}", f"--volume={cluster.volume}:/data",
                  f"--volume={cluster.work}:/work", "-o", str(cluster.work / "out.%j"), str(script))
    try:
        _running_with_container(cluster, job)
        tree = cluster.jobs / f"n1.{job}" / "udiMount"
        # Claiming to be in the victim's job, on its node, with its exact options: no entry.
        attack = cluster.as_user(["shifter", "cat", "/data/secret.txt"], user=OTHER_USER, timeout=60,
                                 SLURM_JOB_ID=job, SLURMD_NODENAME="n1", SHIFTER_IMAGE=f"id:{ID_A}",
                                 SHIFTER_IMAGETYPE="id", SHIFTER_VOLUME=volumes)
        assert SECRET not in attack.stdout
        assert attack.returncode != 0
        walk = cluster.as_user(["cat", str(tree / "data/secret.txt")], user=OTHER_USER)
        assert walk.returncode != 0 and SECRET not in walk.stdout
        assert "Permission denied" in walk.stderr
    finally:
        cluster.slurm(["scancel", job])
    _wait_gone(cluster, job)
    _assert_clean(cluster, job)


def test_job_script_on_stdin_reaches_slurm_untouched_by_the_plugin(cluster: Cluster) -> None:
    result = cluster.as_user(["sbatch", "--parsable", "-N1", f"--image={IMAGE}", "-o", str(cluster.work / "out.%j"),
                              "--wait"], stdin="#!/bin/sh\nsrun shifter cat /etc/os-release\n")
    assert result.returncode == 0, result.stderr
    assert "NAME=imageA" in _output(cluster, result.stdout.strip().split(";")[0])


def test_srun_and_salloc_with_image_run_without_a_batch_script(cluster: Cluster) -> None:
    srun = cluster.as_user(["srun", "-N2", f"--image={IMAGE}", "shifter", "cat", "/etc/os-release"])
    assert srun.returncode == 0, srun.stderr
    assert srun.stdout.split() == ["NAME=imageA", "NAME=imageA"]
    salloc = cluster.as_user(["salloc", "-N1", f"--image={IMAGE}", "srun", "shifter", "sh", "-c",
                              "echo $SHIFTER_IMAGE; cat /etc/os-release"])
    assert salloc.returncode == 0, salloc.stderr
    assert salloc.stdout.split() == [f"id:{ID_A}", "NAME=imageA"]


def test_prolog_records_the_prepare_time(cluster: Cluster) -> None:
    script = _script(cluster, "timing.sh", "srun shifter sh -c 'touch /data/started.$SLURM_JOB_ID; sleep 300'\n")
    job = _sbatch(cluster, "-N1", f"--image={IMAGE}", f"--volume={cluster.work}:/data",
                  "-o", str(cluster.work / "out.%j"), str(script))
    try:
        _running_with_container(cluster, job)
        outcome = json.loads((cluster.jobs / f"n1.{job}" / "prepare.json").read_text())
        assert outcome["ok"] is True and outcome["user"] == TEST_USER and outcome["seconds"] > 0
    finally:
        cluster.slurm(["scancel", job])
    _wait_gone(cluster, job)


def test_two_users_jobs_sharing_a_node_each_get_their_own_container(cluster: Cluster) -> None:
    work2 = cluster.base / "work2"
    work2.mkdir(exist_ok=True)
    os.chown(work2, OTHER_UID, OTHER_UID)
    body = ("srun shifter sh -c 'cat /etc/os-release > /work/seen.$SLURM_JOB_ID; "
            "touch /work/started.$SLURM_JOB_ID; sleep 300'\n")
    script = _script(cluster, "shared.sh", body)
    first = _sbatch(cluster, "-p", "shared", "-n1", "-w", "n1", f"--image={IMAGE}", f"--volume={cluster.work}:/work",
                    "-o", str(cluster.work / "out.%j"), str(script))
    second = _sbatch(cluster, "-p", "shared", "-n1", "-w", "n1", f"--image=id:{ID_B}", f"--volume={work2}:/work",
                     "-o", str(work2 / "out.%j"), str(script), user=OTHER_USER, HOME=str(work2))
    try:
        _running_with_container(cluster, first)
        _running_with_container(cluster, second, work=work2)
        assert (cluster.work / f"seen.{first}").read_text().strip() == "NAME=imageA"
        assert (work2 / f"seen.{second}").read_text().strip() == "NAME=imageB"
        assert len(_loops(str(cluster.store))) == 2  # one image mount per job on the node
        walk = cluster.as_user(["ls", str(cluster.jobs / f"n1.{first}" / "udiMount/work")], user=OTHER_USER)
        assert walk.returncode != 0 and "Permission denied" in walk.stderr
        # The first job's end (and epilog) leaves the second job's container alone.
        cluster.slurm(["scancel", first])
        _wait_gone(cluster, first)
        assert _job_state(cluster, second) == "RUNNING"
        assert (cluster.jobs / f"n1.{second}" / "udiMount.json").exists()
        assert len(_loops(str(cluster.store))) == 1
    finally:
        cluster.slurm(["scancel", first, second])
    _wait_gone(cluster, second)
    _assert_clean(cluster, second)
