"""``shifterimg lookup`` and ``shifterimg images`` on a store of N images, fast path against full path.

Run from the repository root: ``/opt/shifter/venv/bin/python bench/lookup.py [--images 100] [--runs 30]``.
Builds a site store of N READY images (metadata, tags and the gateway's SQLite records, written
through the real service layer's repository; the squashfs files are small placeholders, which
neither command reads) in a temporary directory, then times with hyperfine (``-N``), in one run:

* ``shifterimg lookup TAG`` and ``shifterimg images`` (the installed command: the fast path);
* the same through ``python -m shifter.cli.shifterimg`` (the full path: click, httpx, SQLAlchemy);
* 20 concurrent lookups (wall time of the batch).

Targets (issue 10): lookup <= 60 ms median, images with 100 images <= 150 ms.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shifter.gateway.models import Status
from shifter.gateway.repository import ImageRepository

VENV_BIN = Path(sys.executable).parent


def build_store(root: Path, count: int) -> list[str]:
    """N READY images tagged ``bench/app:<i>`` in ``root``; returns the tags."""
    (root / "tags/docker").mkdir(parents=True)
    repo = ImageRepository.from_url(f"sqlite:///{root / 'shifter.db'}")
    tags = []
    for i in range(count):
        image_id = f"{i:064x}"
        tag = f"127.0.0.1:5000/bench/app:{i}"
        (root / f"{image_id}.squashfs").write_bytes(b"hsqs")
        meta = {"schema": 1, "status": "READY", "id": image_id, "digest": f"sha256:{image_id}", "type": "docker",
                "source": tag, "env": ["PATH=/usr/bin:/bin"], "cmd": ["/bin/sh"], "size": 4,
                "acl": {"private": False, "users": [], "groups": []}}
        (root / f"{image_id}.json").write_text(json.dumps(meta))
        (root / "tags/docker" / urllib.parse.quote(tag, safe="")).write_text(image_id + "\n")
        repo.set_status(image_id, Status.READY, "ready", digest=f"sha256:{image_id}", type="docker", source=tag,
                        owner="root", size=4)
        repo.set_tag("docker", tag, image_id, "root")
        tags.append(tag)
    return tags


def hyperfine(commands: dict[str, list[str]], env: dict[str, str], runs: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = ["hyperfine", "-N", "--warmup", "3", "--runs", str(runs), "--export-json", out.name]
        for name, argv in commands.items():
            cmd += ["-n", name, " ".join(argv)]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        results = json.loads(Path(out.name).read_text())["results"]
    return {r["command"]: r["median"] * 1000 for r in results}


def concurrent(argv: list[str], env: dict[str, str], count: int) -> float:
    start = time.perf_counter()
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL) for _ in range(count)]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit("a concurrent lookup failed")
    return (time.perf_counter() - start) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    if not shutil.which("hyperfine"):
        print("hyperfine is not installed")
        return 2
    base = Path(tempfile.mkdtemp(prefix="shifter-bench-lookup-", dir="/var/tmp"))
    try:
        tags = build_store(base / "site", args.images)
        config = base / "udiRoot.conf"
        config.write_text(f"imagePath={base / 'site'}\nudiMount={base / 'udi'}\nloopMount={base / 'loop'}\n")
        env = {"PATH": "/usr/bin:/bin", "SHIFTER_CONFIG": str(config), "HOME": str(base)}
        fast = [str(VENV_BIN / "shifterimg")]
        full = [str(VENV_BIN / "python"), "-m", "shifter.cli.shifterimg"]
        probe = tags[len(tags) // 2]
        for argv in (fast, full):  # both paths give the same answers
            outs = [subprocess.run([*argv, *cmd], env=env, capture_output=True, text=True, check=True).stdout
                    for cmd in (["lookup", probe], ["images"], ["images", "--json"])]
            if argv is fast:
                expected = outs
            elif outs != expected:
                raise SystemExit("the fast and the full path disagree")
        medians = hyperfine({"lookup (fast)": [*fast, "lookup", probe], "lookup (full)": [*full, "lookup", probe],
                             "images (fast)": [*fast, "images"], "images (full)": [*full, "images"]},
                            env, args.runs)
        batch = concurrent([*fast, "lookup", probe], env, 20)
        batch_full = concurrent([*full, "lookup", probe], env, 20)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"store of {args.images} images; hyperfine medians over {args.runs} runs")
    print(f"{'command':<18} {'median':>10}   target")
    for name, target in (("lookup (fast)", "<= 60 ms"), ("lookup (full)", ""), ("images (fast)", "<= 150 ms"),
                         ("images (full)", "")):
        print(f"{name:<18} {medians[name]:>7.1f} ms   {target}")
    print(f"lookup fast/full: {medians['lookup (fast)'] / medians['lookup (full)']:.2f}x; "
          f"images fast/full: {medians['images (fast)'] / medians['images (full)']:.2f}x")
    print(f"20 concurrent lookups: {batch:.0f} ms (full path: {batch_full:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
