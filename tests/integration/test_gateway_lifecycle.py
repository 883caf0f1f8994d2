"""The gateway's life cycle with real processes: ``kill -9`` mid-pull then restart, a pull stuck
beyond ``pull_timeout``, the ``pull_update_timeout`` re-check of a tag, and two instances on one
PostgreSQL racing on one pull (the registry sees each blob fetched once)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.fixtures.gateway import BUSY, CountingProxy, GatewayProc, quote, write_configs
from tests.fixtures.images import busybox_entries, file, layer_tar, push_image
from tests.fixtures.munge import Munged
from tests.fixtures.registry import Registry, have_tools

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not have_tools("docker-registry", "skopeo", "munge", "mksquashfs"),
                                 reason="needs docker-registry, skopeo, munge and mksquashfs")]
SYS = "testsys"


@pytest.fixture
def proxy(registry: Registry) -> Iterator[CountingProxy]:
    counting = CountingProxy(registry.host)
    yield counting
    counting.stop()


def _gateway(root: Path, munge: Munged, **top: object) -> GatewayProc:
    conf, gwconf = write_configs(root, {SYS: {"image_path": str(root.parent / "images"), "munge_socket": munge.socket}},
                                 **top)
    return GatewayProc(root, conf, gwconf)


def _image(registry: Registry, tmp_path: Path, name: str) -> str:
    ref = f"{registry.host}/test/{name}:1"
    push_image(tmp_path / name, ref, [layer_tar(busybox_entries()), layer_tar([file(f"{name}.txt", name.encode())])])
    return ref


def _wait(predicate: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def _status(gateway: GatewayProc, munge: Munged, ref: str) -> dict[str, object]:
    reply = gateway.request("POST", f"/api/pull/{SYS}/docker/{quote(ref)}/", cred=munge.credential())
    assert reply.status == 200, reply.body
    return reply.json()  # type: ignore[no-any-return]


def test_kill_9_mid_pull_then_restart_fails_it_cleanly_and_pulls_again(
        munge: Munged, registry: Registry, proxy: CountingProxy, tmp_path: Path) -> None:
    _image(registry, tmp_path, "crashme")
    ref = f"{proxy.host}/test/crashme:1"
    gateway = _gateway(tmp_path / "gw", munge).start()
    try:
        proxy.hold(pass_first=1)  # the config blob passes: the pull is recorded, then downloads layers
        assert _status(gateway, munge, ref)["status"] in BUSY
        _wait(proxy.held.is_set)  # the worker is downloading a layer
        gateway.kill9()
        images = tmp_path / "images"
        with sqlite3.connect(images / "shifter.db") as db:
            (status,) = db.execute("SELECT status FROM images WHERE source = ?", (ref,)).fetchone()
        assert status == "PULLING"
        gateway.start()  # restart: the interrupted pull is failed and its work files removed
        with sqlite3.connect(images / "shifter.db") as db:
            (status, message) = db.execute("SELECT status, status_message FROM images WHERE source = ?",
                                           (ref,)).fetchone()
        assert status == "FAILED" and "interrupted" in message
        assert not [p for p in (images / ".tmp").iterdir() if not p.name.startswith(".")]
        proxy.let_go()
        reply = gateway.pull_until_done(SYS, ref, munge.credential)
        assert reply.json()["status"] == "READY", reply.json()
    finally:
        proxy.let_go()
        gateway.stop()


def test_pull_stuck_beyond_pull_timeout_is_failed_then_retried(
        munge: Munged, registry: Registry, proxy: CountingProxy, tmp_path: Path) -> None:
    _image(registry, tmp_path, "stuck")
    ref = f"{proxy.host}/test/stuck:1"
    gateway = _gateway(tmp_path / "gw", munge, pull_timeout=2, heartbeat=1).start()
    try:
        proxy.hold()
        _status(gateway, munge, ref)
        _wait(proxy.held.is_set)
        _wait(lambda: _status(gateway, munge, ref)["status"] == "FAILURE")
        record = _status(gateway, munge, ref)
        assert "no progress" in str(record["status_message"])
        proxy.let_go()
        time.sleep(10.5)  # the FAILURE answer is held for the polling client, then a new POST pulls again
        assert gateway.pull_until_done(SYS, ref, munge.credential).json()["status"] == "READY"
    finally:
        proxy.let_go()
        gateway.stop()


def test_unchanged_tag_is_rechecked_only_after_pull_update_timeout(
        munge: Munged, registry: Registry, proxy: CountingProxy, tmp_path: Path) -> None:
    _image(registry, tmp_path, "moving")
    ref = f"{proxy.host}/test/moving:1"
    gateway = _gateway(tmp_path / "gw", munge, pull_update_timeout=3).start()
    try:
        first = gateway.pull_until_done(SYS, ref, munge.credential).json()
        assert first["status"] == "READY"
        push_image(tmp_path / "moved", f"{registry.host}/test/moving:1",
                   [layer_tar(busybox_entries()), layer_tar([file("moved.txt", b"moved")])])
        again = _status(gateway, munge, ref)  # within pull_update_timeout: answered from the store
        assert again["status"] == "READY" and again["id"] == first["id"]
        time.sleep(3.5)
        later = gateway.pull_until_done(SYS, ref, munge.credential).json()
        assert later["status"] == "READY" and later["id"] != first["id"]  # the registry was asked again
    finally:
        gateway.stop()


def test_two_instances_on_one_postgresql_pull_an_image_once(
        munge: Munged, registry: Registry, proxy: CountingProxy, postgres_url: str, tmp_path: Path) -> None:
    _image(registry, tmp_path, "raced")
    ref = f"{proxy.host}/test/raced:1"
    one = _gateway(tmp_path / "gw1", munge, database_url=postgres_url).start()
    two = _gateway(tmp_path / "gw2", munge, database_url=postgres_url).start()
    try:
        proxy.hold()
        assert _status(one, munge, ref)["status"] in BUSY
        assert _status(two, munge, ref)["status"] in BUSY
        _wait(proxy.held.is_set)
        time.sleep(1)  # both workers have started; the second waits on the tag's advisory lock
        proxy.let_go()
        records = [gw.pull_until_done(SYS, ref, munge.credential).json() for gw in (one, two)]
        assert [r["status"] for r in records] == ["READY", "READY"], records
        assert records[0]["id"] == records[1]["id"]
        assert len(proxy.blob_paths) == 3  # the config and two layers, each fetched once
        assert len(set(proxy.blob_paths)) == 3
    finally:
        proxy.let_go()
        one.stop()
        two.stop()


@pytest.mark.skipif(not have_tools("rsync"), reason="needs rsync")
def test_rsync_system_gets_one_copy_under_a_temporary_name_then_renamed(
        munge: Munged, registry: Registry, tmp_path: Path) -> None:
    ref = _image(registry, tmp_path, "shipped")
    remote = tmp_path / "remote-images"
    remote.mkdir()
    conf, gwconf = write_configs(tmp_path / "gw", {"remote": {
        "image_path": str(tmp_path / "images"), "munge_socket": munge.socket, "transfer": "rsync",
        "remote_image_path": str(remote)}})
    gateway = GatewayProc(tmp_path / "gw", conf, gwconf).start()
    try:
        record = gateway.pull_until_done("remote", ref, munge.credential).json()
        assert record["status"] == "READY", record
        image_id = record["id"]
        assert sorted(p.name for p in remote.iterdir()) == [f"{image_id}.json", f"{image_id}.meta",
                                                            f"{image_id}.squashfs"]  # no temporary left
        local = tmp_path / "images" / f"{image_id}.squashfs"
        assert (remote / f"{image_id}.squashfs").read_bytes() == local.read_bytes()
        expired = gateway.request("GET", f"/api/expire/remote/docker/{quote(ref)}/", cred=munge.credential())
        assert expired.status == 200
        assert list(remote.iterdir()) == []
    finally:
        gateway.stop()


def test_many_clients_on_two_http_workers_pull_an_image_once(
        munge: Munged, registry: Registry, proxy: CountingProxy, tmp_path: Path) -> None:
    _image(registry, tmp_path, "crowd")
    ref = f"{proxy.host}/test/crowd:1"
    gateway = _gateway(tmp_path / "gw", munge, http_workers=2).start()
    try:
        proxy.hold()
        with ThreadPoolExecutor(20) as pool:
            first = list(pool.map(lambda _: _status(gateway, munge, ref)["status"], range(20)))
        assert all(status in BUSY for status in first)
        proxy.let_go()
        with ThreadPoolExecutor(20) as pool:
            final = list(pool.map(lambda _: gateway.pull_until_done(SYS, ref, munge.credential).json()["status"],
                                  range(20)))
        assert final == ["READY"] * 20
        assert len(proxy.blob_paths) == 3 and len(set(proxy.blob_paths)) == 3  # config + 2 layers, once each
    finally:
        proxy.let_go()
        gateway.stop()
