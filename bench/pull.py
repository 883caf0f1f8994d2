#!/usr/bin/env python3
"""Benchmark: ``shifterimg pull`` against skopeo + umoci + mksquashfs on the same image, same run.

Not a test: it prints a table with ratios and the targets of issue 2::

    python bench/pull.py            # >= 500 MB, >= 20,000 files, busybox + 5 data layers
    python bench/pull.py --small    # a quick smoke run (~30 MB)

What it does:

1. generates an OCI image (cached under ``--workdir``, default /var/tmp/shifter-bench) with
   random-ish but compressible-ish files, gzip layers, as a registry would serve them;
2. starts Debian's docker-registry on 127.0.0.1 and pushes the image with skopeo;
3. times, in the same run:
   (a) ``shifterimg pull`` to READY into a fresh store (``SHIFTER_CONFIG`` -> a temp config),
   (b) the pipeline NERSC Shifter's external mode and Sarus use: ``skopeo copy docker:// oci:``,
       ``umoci unpack``, ``mksquashfs`` with its defaults (gzip, every core),
   (c) ``shifterimg pull`` again of the unchanged tag;
4. reports peak memory: the shifterimg Python process itself, and its children (mksquashfs)
   separately (``getrusage`` of the process, and of its waited-for children).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures.images import busybox_entries, layer_tar  # noqa: E402
from tests.fixtures.registry import start_registry  # noqa: E402

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
POOL_SIZE = 16 * 1024 * 1024
TARGET_RATIO, TARGET_REPULL_S, TARGET_PEAK_MB = 0.5, 1.0, 300

# Runs `shifterimg` in-process and reports its own and its children's peak RSS on a pipe.
WRAPPER = """
import json, os, resource, sys
from shifter.cli.shifterimg import run
code = run(sys.argv[1:])
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
with os.fdopen(int(os.environ["BENCH_REPORT_FD"]), "w") as out:
    json.dump({"code": code, "self_kb": own, "children_kb": kids}, out)
sys.exit(code)
"""


@dataclass(frozen=True)
class Spec:
    """The generated image: ``layers`` data layers of ``files_per_layer`` files, ``layer_mb`` each."""

    layers: int
    files_per_layer: int
    layer_mb: int
    seed: int = 7

    @property
    def key(self) -> str:
        return f"v2-l{self.layers}-f{self.files_per_layer}-m{self.layer_mb}-s{self.seed}"


FULL = Spec(layers=5, files_per_layer=4200, layer_mb=104)
SMALL = Spec(layers=5, files_per_layer=400, layer_mb=6)


# --------------------------------------------------------------------------- image generation
def _pool(seed: int) -> bytes:
    """16 MiB of 1/4 random and 3/4 text-like bytes: gzip gets it to roughly half, like real images."""
    rng = random.Random(seed)
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz_", k=rng.randint(3, 10))) for _ in range(512)]
    parts = []
    while sum(map(len, parts)) < POOL_SIZE:
        parts.append(rng.randbytes(1024))
        line = b" ".join(rng.choices(words, k=600))
        parts.append(line[:3072].ljust(3072, b"\n"))
    return b"".join(parts)[:POOL_SIZE]


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to ``target``."""

    def __init__(self, target: IO[bytes]) -> None:
        super().__init__()
        self.target = target
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.sha.update(data)
        self.size += len(data)
        self.target.write(data)
        return len(data)


def _file_sizes(rng: random.Random, count: int, total: int) -> list[int]:
    """Log-normal-ish sizes (many small files, a few big ones) scaled to sum to ``total``."""
    raw = [rng.lognormvariate(0, 1.3) for _ in range(count)]
    scale = total / sum(raw)
    return [max(1, int(r * scale)) for r in raw]


def _data_layer(args: tuple[Spec, int, str]) -> tuple[str, int, str, int]:
    """Write one gzip layer blob into ``blobs_dir``; returns (digest, size, diff_id, files)."""
    spec, number, blobs_dir = args
    rng = random.Random(spec.seed * 1000 + number)
    pool = _pool(spec.seed + number)
    tmp = Path(blobs_dir) / f".layer{number}.tmp"
    with open(tmp, "wb") as raw_out:
        blob = _Hashing(raw_out)
        with gzip.GzipFile(fileobj=blob, mode="wb", compresslevel=1, mtime=0) as gz:  # type: ignore[arg-type]
            diff = _Hashing(gz)  # type: ignore[arg-type]
            with tarfile.open(fileobj=diff, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[arg-type]
                sizes = _file_sizes(rng, spec.files_per_layer, spec.layer_mb * 1024 * 1024)
                for index, size in enumerate(sizes):
                    if index % 100 == 0:
                        info = tarfile.TarInfo(f"data{number}/d{index // 100:04d}")
                        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
                        tar.addfile(info)
                    info = tarfile.TarInfo(f"data{number}/d{index // 100:04d}/f{index:06d}.dat")
                    info.size, info.mode, info.mtime = size, 0o644, 1_700_000_000
                    start = rng.randrange(0, POOL_SIZE - min(size, POOL_SIZE - 1))
                    chunk = pool[start:start + size]
                    data = (chunk * (size // max(len(chunk), 1) + 1))[:size]
                    tar.addfile(info, io.BytesIO(data))
    digest = blob.sha.hexdigest()
    tmp.rename(Path(blobs_dir) / digest)
    return f"sha256:{digest}", blob.size, f"sha256:{diff.sha.hexdigest()}", spec.files_per_layer


def _put_blob(blobs: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def generate_image(spec: Spec, workdir: Path) -> tuple[Path, dict[str, int]]:
    """An OCI layout (tag ``bench``) for ``spec``, generated once and cached under ``workdir``."""
    layout = workdir / f"layout-{spec.key}"
    stats_file = layout / "bench-stats.json"
    if stats_file.is_file():
        return layout, json.loads(stats_file.read_text())
    shutil.rmtree(layout, ignore_errors=True)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    started = time.monotonic()
    base = layer_tar(busybox_entries())
    base_desc = {"mediaType": MT_GZIP, **_put_blob(blobs, base.blob)}
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(_data_layer, [(spec, n, str(blobs)) for n in range(spec.layers)]))
    layers = [base_desc] + [{"mediaType": MT_GZIP, "digest": d, "size": s} for d, s, _, _ in results]
    config = {"architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
              "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
              "rootfs": {"type": "layers", "diff_ids": [base.diff_id] + [r[2] for r in results]}}
    config_desc = {"mediaType": MT_CONFIG, **_put_blob(blobs, json.dumps(config).encode())}
    manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": config_desc, "layers": layers}
    manifest_desc = {"mediaType": MT_MANIFEST, **_put_blob(blobs, json.dumps(manifest).encode()),
                     "annotations": {"org.opencontainers.image.ref.name": "bench"}}
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest_desc]}))
    stats = {"files": sum(r[3] for r in results) + len(busybox_entries()),
             "uncompressed_bytes": spec.layers * spec.layer_mb * 1024 * 1024,
             "compressed_bytes": sum(int(str(x["size"])) for x in layers),
             "layers": len(layers), "generate_s": round(time.monotonic() - started, 1)}
    stats_file.write_text(json.dumps(stats))
    return layout, stats


# --------------------------------------------------------------------------- measuring
@dataclass
class Measured:
    wall: float
    peak_kb: int  # the process itself (or the largest of its tree, for tools)
    children_kb: int = 0
    stderr: str = ""

    def phases(self) -> list[tuple[str, int]]:
        """(phase, seconds) from shifterimg's plain progress lines (1 s resolution)."""
        stamps: list[tuple[float, str]] = []
        for line in self.stderr.splitlines():
            when, _, rest = line.partition(" ")
            try:
                at = time.mktime(time.strptime(when, "%Y-%m-%dT%H:%M:%S"))
            except ValueError:
                continue
            if not rest.startswith("layer "):
                stamps.append((at, rest[:60]))
        return [(name, int(nxt[0] - at)) for (at, name), nxt in itertools.pairwise(stamps)]


def timed(argv: list[str], env: dict[str, str] | None = None, wrapper: bool = False) -> Measured:
    """Run ``argv``; wall time and peak RSS (via wait4, or the wrapper's own report on a pipe)."""
    read_fd, write_fd = os.pipe()
    env = dict(env or os.environ)
    env["BENCH_REPORT_FD"] = str(write_fd)
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            pass_fds=(write_fd,) if wrapper else ())
    os.close(write_fd)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    with os.fdopen(read_fd) as report:
        data = report.read()
    if proc.returncode != 0:
        sys.exit(f"{argv[0]} failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    if not wrapper:
        return Measured(wall, usage.ru_maxrss)
    got = json.loads(data)
    return Measured(wall, int(got["self_kb"]), int(got["children_kb"]), err.decode(errors="replace"))


def shifterimg_pull(ref: str, config: Path) -> Measured:
    env = {**os.environ, "SHIFTER_CONFIG": str(config)}
    return timed([sys.executable, "-c", WRAPPER, "pull", ref], env=env, wrapper=True)


def pipeline(ref: str, scratch: Path) -> dict[str, Measured]:
    oci, bundle, sqfs = scratch / "oci", scratch / "bundle", scratch / "image.sqfs"
    scratch.mkdir(parents=True, exist_ok=True)
    steps = {
        "skopeo copy": ["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}",
                        f"oci:{oci}:bench"],
        "umoci unpack": ["umoci", "unpack", "--image", f"{oci}:bench", str(bundle)],
        "mksquashfs (defaults)": ["mksquashfs", str(bundle / "rootfs"), str(sqfs), "-noappend",
                                  "-no-progress"],
    }
    return {name: timed(argv) for name, argv in steps.items()}


def _mb(kb: int) -> float:
    return kb / 1024


def _row(name: str, wall: float | None, peak: str = "") -> str:
    return f"  {name:<44} {'' if wall is None else f'{wall:8.2f}':>8}   {peak}"


def report(stats: dict[str, int], pull: Measured, steps: dict[str, Measured], repull: Measured,
           sizes: tuple[int, int]) -> bool:
    total = sum(m.wall for m in steps.values())
    ratio = pull.wall / total
    print(f"\nimage: {stats['layers']} layers, {stats['files']} files, "
          f"{stats['uncompressed_bytes'] / 1e6:.0f} MB uncompressed, "
          f"{stats['compressed_bytes'] / 1e6:.0f} MB gzip")
    print(f"squashfs: shifterimg {sizes[0] / 1e6:.0f} MB, mksquashfs defaults {sizes[1] / 1e6:.0f} MB\n")
    print(f"  {'step':<44} {'wall s':>8}   peak RSS")
    print(_row("(a) shifterimg pull, fresh store", pull.wall,
               f"python {_mb(pull.peak_kb):.0f} MB, children {_mb(pull.children_kb):.0f} MB"))
    for name, m in steps.items():
        print(_row(f"(b)   {name}", m.wall, f"{_mb(m.peak_kb):.0f} MB"))
    print(_row("(b) skopeo + umoci + mksquashfs, total", total))
    print(_row("(c) shifterimg pull, unchanged tag", repull.wall, f"python {_mb(repull.peak_kb):.0f} MB"))
    print("\n  phases of (a), from its progress lines (1 s resolution):")
    for name, seconds in pull.phases():
        print(f"    {seconds:4d} s  {name}")
    checks = [
        ("pull / pipeline wall time", f"{ratio:.2f}x", f"<= {TARGET_RATIO}x", ratio <= TARGET_RATIO),
        ("re-pull of an unchanged tag", f"{repull.wall:.2f} s", f"< {TARGET_REPULL_S} s",
         repull.wall < TARGET_REPULL_S),
        ("peak RSS, shifterimg process", f"{_mb(pull.peak_kb):.0f} MB", f"< {TARGET_PEAK_MB} MB",
         _mb(pull.peak_kb) < TARGET_PEAK_MB),
        ("peak RSS, its children (mksquashfs)", f"{_mb(pull.children_kb):.0f} MB", f"< {TARGET_PEAK_MB} MB",
         _mb(pull.children_kb) < TARGET_PEAK_MB),
    ]
    print(f"\n  {'measure':<38} {'value':>10}   {'target':<10} result")
    for name, value, target, ok in checks:
        print(f"  {name:<38} {value:>10}   {target:<10} {'OK' if ok else 'MISSED'}")
    return all(ok for *_, ok in checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="a ~30 MB image: a quick smoke run")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/shifter-bench"),
                        help="where the generated image is cached and scratch space lives")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    missing = [t for t in ("skopeo", "umoci", "mksquashfs", "docker-registry") if shutil.which(t) is None]
    if missing:
        sys.exit(f"missing tools: {', '.join(missing)}")
    spec = SMALL if args.small else FULL
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"generating (or reusing) the image {spec.key} under {args.workdir} ...", flush=True)
    layout, stats = generate_image(spec, args.workdir)
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=args.workdir))
    registry = start_registry(scratch / "registry")
    try:
        ref = f"{registry.host}/bench/image:1"
        print(f"pushing to {ref} ...", flush=True)
        subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:bench",
                        f"docker://{ref}"], check=True, timeout=1800)
        config = scratch / "udiRoot.conf"
        config.write_text(f"imagePath={scratch / 'store'}\nuserImagePath={scratch / 'user-store'}\n"
                          f"udiMount={scratch / 'udiMount'}\nloopMount={scratch / 'loopMount'}\n")
        print("timing (a) shifterimg pull ...", flush=True)
        pull = shifterimg_pull(ref, config)
        print("timing (b) skopeo copy + umoci unpack + mksquashfs ...", flush=True)
        steps = pipeline(ref, scratch / "pipeline")
        print("timing (c) shifterimg pull of the unchanged tag ...", flush=True)
        repull = shifterimg_pull(ref, config)
        ours = sum(p.stat().st_size for p in (scratch / "store").glob("*.squashfs"))
        theirs = (scratch / "pipeline" / "image.sqfs").stat().st_size
        ok = report(stats, pull, steps, repull, (ours, theirs))
    finally:
        registry.stop()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
