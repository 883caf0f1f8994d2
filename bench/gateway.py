"""The image gateway under load: lookups from many clients, and many clients pulling one new image.

Run from the repository root (as root: munged, a registry):
``/opt/shifter/venv/bin/python bench/gateway.py [--clients 200] [--requests 20000] [--pullers 100]``.

It starts a real munged, a real ``docker-registry`` behind a counting proxy, and the real gateway
(``shifter-gateway serve``, uvicorn), then:

* **lookups**: ``--clients`` concurrent keep-alive connections (one asyncio client process) send
  ``GET /api/lookup/...`` for READY images, each with its own fresh MUNGE credential (made in
  advance through libmunge: credentials cannot be reused, munged refuses replays).  Twice: closed
  loop (each client sends its next lookup when the last one is answered: the most the gateway
  answers; latency is then clients / throughput by Little's law), and open loop at ``--rate``
  lookups/s offered by all clients together (the latency a node sees at that load).  Prints the
  throughput and the latency percentiles.  Targets (the issue): >= 2,000 lookups/s, p99 <= 50 ms.
* **pulls**: ``--pullers`` clients POST a pull of one image the gateway has never seen, all at
  once, then poll until READY.  Prints how many blob requests reached the registry (target: each
  blob exactly once).

The client shares the machine's cores with the gateway and munged: the figures are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_store(root: Path, count: int) -> list[str]:
    """N READY (placeholder) images tagged ``bench/app:<i>`` in ``root``; returns the tags."""
    from bench.lookup import build_store as build  # noqa: PLC0415

    return build(root, count)


def make_credentials(socket: str, count: int) -> list[str]:
    from shifter.munge import encode  # noqa: PLC0415

    return [encode(b"", socket) for _ in range(count)]


async def _client(port: int, paths: list[str], creds: list[str], latencies: list[float], errors: list[int],
                  interval: float = 0.0) -> None:
    """Send the lookups one after the other (``interval`` 0: closed loop), or one every ``interval``
    seconds (open loop: latency counts from when a request was due, so a slow answer that delays the
    next request is not hidden)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    if interval:
        await asyncio.sleep(random.uniform(0, interval))
    due = loop.time()
    try:
        for path, cred in zip(paths, creds, strict=True):
            if interval:
                due += interval
                await asyncio.sleep(max(0.0, due - loop.time()))
                start = time.perf_counter() - max(0.0, loop.time() - due)
            else:
                start = time.perf_counter()
            writer.write(f"GET {path} HTTP/1.1\r\nHost: gw\r\nauthentication: {cred}\r\n\r\n".encode())
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if b" 200 " not in status_line:
                errors.append(int(status_line.split()[1]))
    finally:
        writer.close()


async def _lookups(port: int, tags: list[str], creds: list[str], clients: int,
                   rate: float = 0.0) -> tuple[float, list[float], list[int]]:
    per = len(creds) // clients
    latencies: list[float] = []
    errors: list[int] = []
    jobs = []
    for c in range(clients):
        mine = creds[c * per:(c + 1) * per]
        paths = [f"/api/lookup/bench/docker/{urllib.parse.quote(tags[(c + i) % len(tags)], safe='')}/"
                 for i in range(per)]
        jobs.append(_client(port, paths, mine, latencies, errors, clients / rate if rate else 0.0))
    start = time.perf_counter()
    await asyncio.gather(*jobs)
    return time.perf_counter() - start, latencies, errors


def bench_lookups(gateway: object, socket: str, tags: list[str], clients: int, requests: int,
                  rate: float = 0.0) -> dict[str, float]:
    print(f"making {requests} MUNGE credentials ...", flush=True)
    creds = make_credentials(socket, requests)
    port = gateway.port  # type: ignore[attr-defined]
    asyncio.run(_lookups(port, tags, make_credentials(socket, clients * 5), clients))  # warm-up
    elapsed, latencies, errors = asyncio.run(_lookups(port, tags, creds, clients, rate))
    latencies.sort()
    result = {"lookups": len(latencies), "seconds": elapsed, "per_second": len(latencies) / elapsed,
              "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * latencies[int(len(latencies) * 0.99) - 1],
              "errors": len(errors)}
    mode = f"open loop, {rate:.0f}/s offered" if rate else "closed loop, as fast as answered"
    print(f"lookups ({mode}): {clients} clients, {result['lookups']} requests in {elapsed:.2f} s = "
          f"{result['per_second']:.0f}/s; p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms; "
          f"{len(errors)} errors {sorted(set(errors))[:5]}")
    return result


def bench_pulls(gateway: object, munge: object, proxy: object, ref: str, pullers: int) -> dict[str, int]:
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    path = f"/api/pull/bench/docker/{urllib.parse.quote(ref, safe='')}/"

    def one(_: int) -> str:
        from shifter.munge import encode  # noqa: PLC0415
        status = "INIT"
        while status in ("INIT", "PENDING", "PULLING", "CONVERSION", "TRANSFER"):
            reply = gateway.request("POST", path, cred=encode(b"", munge.socket))  # type: ignore[attr-defined]
            status = reply.json()["status"]
            if status != "READY":
                time.sleep(0.5)
        return status

    before = proxy.blob_gets  # type: ignore[attr-defined]
    with ThreadPoolExecutor(pullers) as pool:
        statuses = list(pool.map(one, range(pullers)))
    paths = proxy.blob_paths[before:]  # type: ignore[attr-defined]
    result = {"pullers": pullers, "ready": statuses.count("READY"), "blob_requests": len(paths),
              "distinct_blobs": len(set(paths))}
    print(f"pulls: {pullers} clients pulled one new image: {result['ready']} saw READY; the registry got "
          f"{result['blob_requests']} blob requests for {result['distinct_blobs']} distinct blobs")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--pullers", type=int, default=100)
    parser.add_argument("--rate", type=float, default=2000.0,
                        help="offered lookups/s of the open-loop run (0: skip it)")
    parser.add_argument("--http-workers", type=int, default=os.cpu_count() or 1,
                        help="gateway processes (http_workers; default: the number of cores)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
    args = parser.parse_args()

    from tests.fixtures.gateway import CountingProxy, GatewayProc, write_configs  # noqa: PLC0415
    from tests.fixtures.images import busybox_entries, file, layer_tar, push_image  # noqa: PLC0415
    from tests.fixtures.munge import start_munged  # noqa: PLC0415
    from tests.fixtures.registry import start_registry  # noqa: PLC0415

    root = Path(tempfile.mkdtemp(prefix="shifter-bench-gw-", dir="/var/tmp"))
    munge = start_munged()
    registry = start_registry(root / "registry")
    proxy = CountingProxy(registry.host)
    gateway = None
    try:
        images = root / "images"
        tags = build_store(images, args.images)
        conf, gwconf = write_configs(root / "gw", {"bench": {"image_path": str(images), "munge_socket": munge.socket}},
                                     http_workers=args.http_workers)
        gateway = GatewayProc(root / "gw", conf, gwconf).start()
        results: dict[str, object] = {"cpus": os.cpu_count(), "http_workers": args.http_workers}
        results["lookups"] = bench_lookups(gateway, munge.socket, tags, args.clients, args.requests)
        if args.rate:
            results["lookups_open_loop"] = bench_lookups(gateway, munge.socket, tags, args.clients, args.requests,
                                                         args.rate)
        ref = f"{registry.host}/bench/new:1"
        push_image(root / "new", ref, [layer_tar(busybox_entries()), layer_tar([file("new.txt", b"new\n")])])
        results["pulls"] = bench_pulls(gateway, munge, proxy, f"{proxy.host}/bench/new:1", args.pullers)
        if args.json:
            print(json.dumps(results, indent=1))
    finally:
        if gateway is not None:
            gateway.stop()
        proxy.stop()
        registry.stop()
        munge.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
