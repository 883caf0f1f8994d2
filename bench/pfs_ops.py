"""Metadata operations a job start costs the shared image store (a simulated parallel filesystem).

Run as root from the repository root: ``/opt/shifter/venv/bin/python bench/pfs_ops.py``.

At scale every node of a job prepares its container at the same moment, and every lookup, stat,
open and close of a file of the shared store is a request to the parallel filesystem's metadata
server.  This benchmark puts the image store behind a FUSE passthrough that counts the requests
the kernel sends it (``serve``: run by Debian's ``/usr/bin/python3`` with ``python3-fusepy``), with
the kernel's attribute, entry and negative caches off by default (``--cache SECONDS`` turns them
on: a real client caches under the server's locks), and counts one node's job start:

* the Slurm prolog (``python -m shifter.cli.slurm prolog``, the job's image pinned to its id at
  submission) plus one task entering the job's container (``shifter /bin/true`` as the user);
* ``shifter-setup --image=docker:TAG`` plus one ``shifter`` entering it (the path before Slurm);
* ``shifter --image=docker:TAG`` as the user alone (private container, squashfuse);
* Charliecloud's ``ch-run`` on the same squashfs file.

Metadata requests: everything except ``read`` (data).  Target: at most 20 per node for a job start.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DUMP = ".pfs-dump"  # stat'ing <mount>/.pfs-dump-N writes the counts to the dump file and resets them
TAG, IMAGE_ID = "docker.io/bench/app:1", "c3" * 32


# ------------------------------------------------------------------------ the counting filesystem
def serve(source: str, mountpoint: str, dump_file: str, cache: str) -> None:
    """A read-only passthrough of ``source`` at ``mountpoint`` that counts every request."""
    import fusepy  # type: ignore[import-not-found]  # noqa: PLC0415  (Debian python3-fusepy)

    counts: Counter[str] = Counter()
    trace: list[str] = []

    def real(path: str) -> str:
        return os.path.join(source, path.lstrip("/"))

    class Counting(fusepy.Operations):  # type: ignore[misc]
        def __call__(self, op: str, path: str, *args: Any) -> Any:
            if op == "getattr" and path.startswith("/" + DUMP):
                Path(dump_file).write_text(json.dumps({**counts, "_trace": trace}))
                counts.clear()
                trace.clear()
                raise fusepy.FuseOSError(errno.ENOENT)
            if op not in ("init", "destroy"):
                counts[op] += 1
                if op != "read":
                    trace.append(f"{op} {path}")
            return super().__call__(op, path, *args)

        def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
            st = os.lstat(real(path))
            return {key: getattr(st, key) for key in ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime",
                                                       "st_nlink", "st_size", "st_uid", "st_ino")}

        def access(self, path: str, amode: int) -> int:
            if not os.access(real(path), amode):
                raise fusepy.FuseOSError(errno.EACCES)
            return 0

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", *os.listdir(real(path))]

        def readlink(self, path: str) -> str:
            return os.readlink(real(path))

        def open(self, path: str, flags: int) -> int:
            return os.open(real(path), flags & ~(os.O_CREAT | os.O_TRUNC))

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return os.pread(fh, size, offset)

        def release(self, path: str, fh: int) -> int:
            os.close(fh)
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            st = os.statvfs(real(path))
            return {key: getattr(st, key) for key in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                                                       "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}

    seconds = float(cache)  # how long the kernel may cache attributes, names and misses
    fusepy.FUSE(Counting(), mountpoint, foreground=True, ro=True, allow_other=True, default_permissions=True,
                attr_timeout=seconds, entry_timeout=seconds, negative_timeout=seconds, use_ino=True)


class CountedStore:
    """The counting filesystem, mounted for the benchmark."""

    def __init__(self, source: Path, mountpoint: Path, dump: Path, cache: float) -> None:
        self.mountpoint, self.dump, self.takes = mountpoint, dump, 0
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(["/usr/bin/python3", "-I", __file__, "serve", str(source), str(mountpoint),
                                      str(dump), str(cache)], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not os.path.ismount(mountpoint):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("the counting filesystem did not start (is python3-fusepy installed?)")
            time.sleep(0.05)

    def take(self) -> tuple[Counter[str], list[str]]:
        """The requests since the last ``take`` (and reset), and the metadata requests in order."""
        self.takes += 1  # a new name each time: the kernel may cache a miss
        with contextlib.suppress(FileNotFoundError):
            os.stat(self.mountpoint / f"{DUMP}-{self.takes}")
        data = json.loads(self.dump.read_text())
        trace = data.pop("_trace")
        return Counter(data), trace

    def close(self) -> None:
        subprocess.run(["fusermount", "-u", str(self.mountpoint)], check=False)
        self.proc.wait(timeout=20)


# ------------------------------------------------------------------------ the scenarios
def metadata(counts: Counter[str]) -> int:
    return sum(n for op, n in counts.items() if op != "read")


def site(base: Path) -> tuple[Path, Path, Path]:
    """A store with one busybox image in ``base/real``; udiRoot.conf whose imagePath is the counted mount."""
    from tests.fixtures.runtime import build_rootfs, ensure_user, publish  # noqa: PLC0415

    ensure_user()
    real, counted = base / "real", base / "counted"
    (real / "tags/docker").mkdir(parents=True)
    rootfs = base / "rootfs"
    build_rootfs(rootfs)
    publish(real, rootfs, TAG, IMAGE_ID)
    for path in [base, *base.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    for name in ("udiMount", "loopMount"):
        (base / name).mkdir(mode=0o755)
    config = base / "udiRoot.conf"
    config.write_text(f"imagePath={counted}\nudiMount={base / 'udiMount'}\nloopMount={base / 'loopMount'}\n"
                      "autoPull=0\nsystem=bench\n")
    os.chmod(config, 0o644)
    return real, counted, config


def scenarios(bin_dir: Path, config: Path, counted: Path) -> dict[str, list[list[str]]]:
    """Name -> the commands of one node's job start (``@USER`` commands run as the test user)."""
    py = str(bin_dir / "python")
    job = {"SLURM_JOB_ID": "9001", "SLURMD_NODENAME": "bench"}
    prolog_env = [f"{k}={v}" for k, v in {**job, "SLURM_JOB_USER": "shiftertest", "SLURM_JOB_UID": "2001",
                                           "SPANK_SHIFTER_IMAGE": f"id:{IMAGE_ID}",
                                           "SPANK_SHIFTER_IMAGETYPE": "id"}.items()]
    task_env = [f"{k}={v}" for k, v in {**job, "SHIFTER_IMAGE": f"id:{IMAGE_ID}", "SHIFTER_IMAGETYPE": "id"}.items()]
    shifter = str(bin_dir / "shifter")
    return {
        "Slurm prolog + task (image id from submission)": [
            ["env", *prolog_env, py, "-I", "-m", "shifter.cli.slurm", "prolog"],
            ["@USER", "env", *task_env, shifter, "/bin/true"]],
        "shifter-setup + shifter (tag)": [
            [str(bin_dir / "shifter-setup"), f"--image=docker:{TAG}", "--user=shiftertest"],
            ["@USER", shifter, f"--image=docker:{TAG}", "/bin/true"]],
        "shifter alone as the user (private container)": [
            ["@USER", shifter, f"--image=docker:{TAG}", "/bin/true"]],
        "ch-run on the squashfs": [
            ["@USER", "ch-run", str(counted / f"{IMAGE_ID}.squashfs"), "--", "/bin/true"]],
    }


def cleanup(bin_dir: Path, config: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "SHIFTER_CONFIG": str(config), "SLURM_JOB_ID": "9001", "SLURMD_NODENAME": "bench"}
    subprocess.run([str(bin_dir / "python"), "-I", "-m", "shifter.cli.slurm", "epilog"], env=env, check=False)
    subprocess.run([str(bin_dir / "shifter-teardown")], env=env, check=False)


def run_one(commands: list[list[str]], config: Path) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SHIFTER_CONFIG": str(config), "HOME": "/", "USER": "shiftertest"}
    for given in commands:
        cmd = ["runuser", "-u", "shiftertest", "--", *given[1:]] if given[0] == "@USER" else given
        result = subprocess.run(cmd, env=env, cwd="/", capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {result.stderr.strip()}")


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "serve":
        serve(*sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", default="/opt/shifter/venv/bin", help="Shifter's venv bin directory")
    parser.add_argument("--trace", action="store_true", help="print every metadata request")
    parser.add_argument("--cache", type=float, default=0.0,
                        help="seconds the kernel may cache names and attributes (default 0: every lookup "
                             "reaches the server; FUSE's own default is 1)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (FUSE mounts, prolog, test user)")
        return 2
    if os.path.exists("/dev/fuse"):
        os.chmod("/dev/fuse", 0o666)
    base = Path(tempfile.mkdtemp(prefix="shifter-pfs-", dir="/var/lib"))
    bin_dir = Path(args.bin)
    store = None
    try:
        real, counted, config = site(base)
        store = CountedStore(real, counted, base / "counts.json", args.cache)
        rows = []
        for name, commands in scenarios(bin_dir, config, counted).items():
            if commands[-1][1] == "ch-run" and not shutil.which("ch-run"):
                rows.append((name, None, Counter()))
                continue
            time.sleep(args.cache + 0.5)  # every scenario starts cold: nothing cached from the last one
            store.take()
            run_one(commands, config)
            counts, trace = store.take()
            if args.trace:
                print(f"== {name}", *trace, sep="\n")
            cleanup(bin_dir, config)
            rows.append((name, metadata(counts), counts))
        print("| job start on one node | metadata requests | breakdown |\n|---|---|---|")
        for name, total, counts in rows:
            detail = ", ".join(f"{op} {n}" for op, n in sorted(counts.items()) if op != "read")
            print(f"| {name} | {'n/a' if total is None else total} | {detail} |")
    finally:
        cleanup(bin_dir, base / "udiRoot.conf")
        if store is not None:
            store.close()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
