"""Pynamic-style import storm: a Python application of 2,000 modules (plus its interpreter and standard
library) in an image whose file sits on a simulated parallel file system, imported inside the container.

Run as root from the repository root: ``/opt/shifter/venv/bin/python bench/pynamic.py [--runs N]``.

The "parallel file system" is ``bench/slowfs.c`` (built here with gcc and libfuse3): a FUSE
passthrough adding ``--delay-us`` (500) to every metadata operation, with the kernel's attribute,
entry and page caches off.  On it: the unpacked tree and the squashfs (in a shifter image store).
One run compares, as the test user (``shiftertest``), the time of ``python3 -I /app/main.py`` (which
imports the 2,000 modules):

* ``ch-run TREE``: the unpacked tree on the slow file system (every import's lookups go to it);
* ``ch-run SQFS``: Charliecloud on the squashfs there (squashfuse);
* ``shifter`` unprivileged, cold (page cache dropped first) and warm (median of ``--runs``; the
  image stays held between launches, ``imageMountLinger=600``, ended with ``shifter-teardown --user``);
* ``shifter`` in a prepared container (``shifter-setup``: kernel loop mount, entered by the fast path);
* a plain kernel loop mount of the squashfs and ``chroot`` (the floor, no container runtime).

Prints a table with the ratios to ``ch-run SQFS`` and the targets: prepared <= 0.45 s and
<= 0.5x ch-run; unprivileged warm <= 0.5x ch-run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fixtures.runtime import TEST_USER, build_rootfs, ensure_user, publish

HERE = Path(__file__).resolve().parent
MODULES = 2000
IMAGE_ID = "f" * 64
REF = "docker.io/library/pynamic:bench"
COMMAND = ["/usr/bin/python3", "-I", "/app/main.py"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per warm command (default 5)")
    parser.add_argument("--delay-us", type=int, default=500, help="added to each metadata operation (default 500)")
    parser.add_argument("--skip-tree", action="store_true", help="skip the slow unpacked-tree row (~30 s)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (it builds a FUSE file system, kernel loop mounts and a test user)")
        return 2
    for tool in ("gcc", "ch-run", "mksquashfs", "squashfuse"):
        if not shutil.which(tool):
            print(f"{tool} is not installed")
            return 2
    ensure_user()
    os.chmod("/dev/fuse", 0o666)
    base = Path(tempfile.mkdtemp(prefix="shifter-pynamic-", dir="/var/lib"))
    os.chmod(base, 0o755)
    try:
        return run(base, args)
    finally:
        for mnt in (base / "kloop", base / "mnt"):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


def run(base: Path, args: argparse.Namespace) -> int:
    src, mnt = base / "src", base / "mnt"
    for sub in ("src/store/tags/docker", "mnt", "udi", "loop", "kloop"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    tree = src / "tree"
    print("building the image (interpreter, standard library, 2,000 modules) ...", flush=True)
    build_image(tree)
    publish(src / "store", tree, REF, IMAGE_ID)
    for dirpath, _dirs, files in os.walk(src):
        os.chmod(dirpath, 0o755)
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode | 0o444)
    slowfs = base / "slowfs"
    subprocess.run(["gcc", "-O2", "-o", str(slowfs), str(HERE / "slowfs.c"),
                    *subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True,
                                    check=True).stdout.split()], check=True)
    env = {**os.environ, "SLOWFS_DELAY_US": str(args.delay_us)}
    subprocess.run([str(slowfs), str(src), str(mnt), "-o", "allow_other"], check=True, env=env)
    sqfs = mnt / "store" / f"{IMAGE_ID}.squashfs"
    config = base / "udiRoot.conf"
    config.write_text(f"imagePath={mnt / 'store'}\nudiMount={base / 'udi'}\nloopMount={base / 'loop'}\n"
                      "autoPull=0\nuserImagePath=\nimageMountLinger=600\n")  # warm: the image stays held
    os.chmod(config, 0o644)
    shifter = str(Path(sys.executable).parent / "shifter")
    senv = {"PATH": "/usr/bin:/bin", "SHIFTER_CONFIG": str(config), "HOME": "/tmp", "USER": TEST_USER}
    as_user = ["runuser", "-u", TEST_USER, "--", "env", "-i", *(f"{k}={v}" for k, v in senv.items())]
    rows: list[tuple[str, float]] = []
    if not args.skip_tree:
        rows.append(("ch-run TREE (unpacked, on slowfs)", timed([*as_user, "ch-run", str(mnt / "tree"), "--",
                                                                 *COMMAND])))
    rows.append(("ch-run SQFS (squashfuse, on slowfs)", median([*as_user, "ch-run", str(sqfs), "--", *COMMAND],
                                                               args.runs)))
    drop_caches()
    rows.append(("shifter unprivileged, cold", timed([*as_user, shifter, f"--image={REF}", *COMMAND])))
    rows.append(("shifter unprivileged, warm", median([*as_user, shifter, f"--image={REF}", *COMMAND], args.runs)))
    tools = Path(sys.executable).parent
    setup_env = {"PATH": "/usr/bin:/bin", "SHIFTER_CONFIG": str(config), "HOME": "/tmp"}
    subprocess.run([str(tools / "shifter-teardown"), f"--user={TEST_USER}"], env=setup_env, check=False, cwd="/")
    subprocess.run([str(tools / "shifter-setup"), f"--image={REF}", f"--user={TEST_USER}"], env=setup_env,
                   check=True, cwd="/")
    try:
        rows.append(("shifter prepared", median([*as_user, shifter, f"--image={REF}", *COMMAND], args.runs)))
    finally:
        subprocess.run([str(tools / "shifter-teardown")], env=setup_env, check=False, cwd="/")
    subprocess.run(["mount", "-o", "loop,ro", str(sqfs), str(base / "kloop")], check=True)
    rows.append(("kernel loop mount + chroot (floor)",
                 median(["chroot", "--userspec=2001:2001", str(base / "kloop"), *COMMAND], args.runs)))
    report(rows, args)
    return 0


def build_image(tree: Path) -> None:
    """busybox + the host's python3 (binary, libraries, standard library) + the application."""
    build_rootfs(tree)
    python = Path(os.path.realpath("/usr/bin/python3"))
    (tree / "usr/bin").mkdir(parents=True, exist_ok=True)
    shutil.copy(python, tree / "usr/bin/python3")
    for lib in needed_libraries(str(python)):
        dest = tree / lib.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(lib, dest)
    stdlib = f"/usr/lib/python3.{sys.version_info.minor}"
    shutil.copytree(stdlib, tree / stdlib.lstrip("/"), symlinks=True,
                    ignore=shutil.ignore_patterns("test", "idlelib", "tkinter", "turtledemo", "ensurepip",
                                                  "lib2to3", "dist-packages", "site-packages"))
    app = tree / "app"
    pkg = app / "pyn"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for index in range(MODULES):
        funcs = "".join(f"def f{index}_{k}(x):\n    return x * {k} + {index}\n\n" for k in range(5))
        (pkg / f"mod_{index:04d}.py").write_text(f'"""Module {index}."""\nVALUE = {index}\n\n{funcs}')
    (app / "main.py").write_text(
        "import importlib, sys\nsys.path.insert(0, '/app')  # -I leaves the script's directory out\n"
        f"total = sum(importlib.import_module(f'pyn.mod_{{i:04d}}').VALUE for i in range({MODULES}))\n"
        "print(total)\n")
    subprocess.run(["/usr/bin/python3", "-m", "compileall", "-q", "-d", "/app", str(app)], check=True)


def needed_libraries(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if path.startswith("/"):
            libs.append(path)
    return libs


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd="/", timeout=600)
    elapsed = time.perf_counter() - start
    expected = str(sum(range(MODULES)))
    if res.returncode != 0 or res.stdout.strip().splitlines()[-1:] != [expected]:
        raise SystemExit(f"{' '.join(cmd[-6:])} failed ({res.returncode}): {res.stderr[-500:]}")
    return elapsed


def median(cmd: list[str], runs: int) -> float:
    timed(cmd)  # warm-up
    return statistics.median(timed(cmd) for _ in range(runs))


def report(rows: list[tuple[str, float]], args: argparse.Namespace) -> None:
    times = dict(rows)
    chrun = times["ch-run SQFS (squashfuse, on slowfs)"]
    print(f"\n{MODULES} modules imported; metadata delay {args.delay_us} us; warm rows: median of {args.runs}\n")
    print(f"| {'command':<38} | {'seconds':>8} | {'x ch-run SQFS':>13} |")
    print(f"|{'-' * 40}|{'-' * 10}:|{'-' * 14}:|")
    for name, seconds in rows:
        print(f"| {name:<38} | {seconds:8.3f} | {seconds / chrun:13.2f} |")
    prepared, warm = times["shifter prepared"], times["shifter unprivileged, warm"]
    print(f"\ntargets: prepared <= 0.45 s: {'met' if prepared <= 0.45 else 'MISSED'}; "
          f"prepared <= 0.5x ch-run: {'met' if prepared <= 0.5 * chrun else 'MISSED'}; "
          f"unprivileged warm <= 0.5x ch-run: {'met' if warm <= 0.5 * chrun else 'MISSED'}")


if __name__ == "__main__":
    sys.exit(main())
