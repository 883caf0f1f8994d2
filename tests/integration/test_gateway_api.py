"""The REST gateway against real munged (two keys), a real registry and the real server process.

Every route of NERSC Shifter's imagegw contract, with its wire details (exact Content-Type,
Content-Length, ``last_pull`` a float, percent-encoded tags, pull polled by POSTs), our status
codes (400/401/403/404/409/503), and the access-list rules: user B cannot list, look up, pull
over, change, expire or remove user A's private image.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PushedImage
from tests.fixtures.gateway import GatewayProc, quote, write_configs
from tests.fixtures.images import busybox_entries, file, layer_tar, push_image
from tests.fixtures.munge import Munged, start_munged
from tests.fixtures.registry import Registry, have_tools

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not have_tools("docker-registry", "skopeo", "munge", "mksquashfs"),
                                 reason="needs docker-registry, skopeo, munge and mksquashfs")]

SYS = "testsys"
ALICE, BOB = 2001, 2002  # shiftertest, shiftertest2 (created by the runtime fixtures / CI)
RECORD_KEYS = {"id", "system", "itype", "tag", "status", "userACL", "groupACL", "ENV", "ENTRY", "WORKDIR",
               "LABELS", "last_pull", "status_message"}


def _ensure_users() -> None:
    for name, uid in (("shiftertest", ALICE), ("shiftertest2", BOB)):
        if subprocess.run(["getent", "passwd", name], check=False, capture_output=True).returncode != 0:
            subprocess.run(["useradd", "-u", str(uid), "-m", name], check=True)


@pytest.fixture(scope="module")
def foreign_munge() -> Iterator[Munged]:
    """A second munged with another key: its credentials must be refused."""
    daemon = start_munged()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def gateway(munge: Munged, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    _ensure_users()
    root = tmp_path_factory.mktemp("gateway")
    root.chmod(0o755)
    conf, gwconf = write_configs(root, {
        SYS: {"image_path": str(root / "images"), "munge_socket": munge.socket, "admins": ["root"]},
        "downsys": {"image_path": str(root / "down-images"), "munge_socket": str(root / "no-munged.socket")},
    }, workers=2, pull_update_timeout=300, import_users=["shiftertest"])
    proc = GatewayProc(root, conf, gwconf).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def private_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An image of its own (another digest than busybox_image) for the access-list tests."""
    ref = f"{registry.host}/test/secret:1"
    push_image(tmp_path_factory.mktemp("secret"), ref,
               [layer_tar(busybox_entries()), layer_tar([file("secret.txt", b"alice's\n")])])
    return ref


def _images(gateway: GatewayProc) -> Path:
    return gateway.root / "images"


# --- wire format and the pull loop ------------------------------------------------------------

def test_pull_answers_at_once_then_polls_to_ready(gateway: GatewayProc, munge: Munged,
                                                  busybox_image: PushedImage) -> None:
    first = gateway.request("POST", f"/api/pull/{SYS}/docker/{quote(busybox_image.ref)}/", cred=munge.credential())
    assert first.status == 200
    assert first.json()["status"] in ("INIT", "PENDING", "PULLING", "CONVERSION", "READY")
    reply = gateway.pull_until_done(SYS, busybox_image.ref, munge.credential)
    record = reply.json()
    assert reply.status == 200, reply.body
    assert record["status"] == "READY", record
    assert set(record) == RECORD_KEYS
    assert record["id"] == busybox_image.digest.split(":")[1]
    assert record["tag"] == [busybox_image.ref]
    assert isinstance(record["last_pull"], float)
    assert record["ENV"] == ["PATH=/usr/bin:/bin", "IMAGE_VAR=from-image"]
    assert record["WORKDIR"] == "/app"
    assert record["userACL"] == "MISSING"  # public


def test_responses_have_exact_json_content_type_and_length(gateway: GatewayProc, munge: Munged,
                                                           busybox_image: PushedImage) -> None:
    gateway.pull_until_done(SYS, busybox_image.ref, munge.credential)
    reply = gateway.request("GET", f"/api/lookup/{SYS}/docker/{quote(busybox_image.ref)}/", cred=munge.credential())
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"  # NERSC's client strcmp()s it
    assert int(reply.headers["content-length"]) == len(reply.body)
    assert "transfer-encoding" not in reply.headers
    error = gateway.request("GET", f"/api/lookup/{SYS}/docker/{quote('nothere:1')}/", cred=munge.credential())
    assert error.status == 404
    assert error.headers["content-type"] == "application/json"
    assert error.json()["status"] == 404


def test_meta_file_for_nersc_runtime(gateway: GatewayProc, munge: Munged, busybox_image: PushedImage) -> None:
    record = gateway.pull_until_done(SYS, busybox_image.ref, munge.credential).json()
    meta = (_images(gateway) / f"{record['id']}.meta").read_text().splitlines()
    assert meta[0] == "FORMAT: squashfs"
    assert "WORKDIR: /app" in meta and "CMD: /bin/sh" in meta
    assert "ENV: IMAGE_VAR=from-image" in meta
    assert not any(line.startswith("USERACL") for line in meta)
    assert (_images(gateway) / f"{record['id']}.squashfs").is_file()


def test_untagged_name_gets_latest_and_unencoded_path_works(gateway: GatewayProc, munge: Munged,
                                                            registry: Registry, busybox_layer: object,
                                                            tmp_path: Path) -> None:
    ref = f"{registry.host}/test/latestonly"
    push_image(tmp_path, f"{ref}:latest", [busybox_layer])  # type: ignore[list-item]
    reply = gateway.pull_until_done(SYS, ref, munge.credential)
    assert reply.json()["status"] == "READY"
    assert reply.json()["tag"] == [f"{ref}:latest"]
    raw = gateway.request("GET", f"/api/lookup/{SYS}/docker/{ref}:latest/", cred=munge.credential())
    assert raw.status == 200


def test_list_queue_and_root(gateway: GatewayProc, munge: Munged, busybox_image: PushedImage) -> None:
    gateway.pull_until_done(SYS, busybox_image.ref, munge.credential)
    listing = gateway.request("GET", f"/api/list/{SYS}/", cred=munge.credential())
    assert listing.status == 200
    assert any(busybox_image.ref in item["tag"] for item in listing.json()["list"])
    queue = gateway.request("GET", f"/api/queue/{SYS}/", cred=munge.credential())
    assert queue.status == 200 and isinstance(queue.json()["list"], list)
    assert gateway.request("GET", "/").status == 200


def test_pull_body_acl_adds_the_caller(gateway: GatewayProc, munge: Munged, registry: Registry,
                                       tmp_path: Path) -> None:
    ref = f"{registry.host}/test/acl:1"
    push_image(tmp_path, ref, [layer_tar(busybox_entries()), layer_tar([file("acl.txt", b"acl\n")])])
    body = json.dumps({"allowed_uids": "1000,1001", "allowed_gids": "1002"}).encode()
    record = gateway.pull_until_done(SYS, ref, lambda: munge.credential(uid=ALICE), body=body).json()
    assert record["status"] == "READY", record
    assert sorted(record["userACL"]) == [1000, 1001, ALICE]
    assert record["groupACL"] == [1002]
    meta = (_images(gateway) / f"{record['id']}.meta").read_text()
    assert f"USERACL: 1000,1001,{ALICE}" in meta and "GROUPACL: 1002" in meta


def test_pull_of_missing_image_ends_in_failure(gateway: GatewayProc, munge: Munged, registry: Registry) -> None:
    reply = gateway.pull_until_done(SYS, f"{registry.host}/test/absent:1", munge.credential)
    assert reply.status == 200
    assert reply.json()["status"] == "FAILURE"
    assert "absent" in reply.json()["status_message"]


# --- authentication -----------------------------------------------------------------------------

def _lookup(gateway: GatewayProc, ref: str, cred: str | None) -> int:
    return gateway.request("GET", f"/api/lookup/{SYS}/docker/{quote(ref)}/", cred=cred).status


def test_missing_credential_is_401(gateway: GatewayProc, busybox_image: PushedImage) -> None:
    assert _lookup(gateway, busybox_image.ref, None) == 401
    assert gateway.request("POST", f"/api/pull/{SYS}/docker/{quote(busybox_image.ref)}/").status == 401


def test_garbage_credential_is_401(gateway: GatewayProc, busybox_image: PushedImage) -> None:
    assert _lookup(gateway, busybox_image.ref, "MUNGE:not-a-credential:") == 401
    assert _lookup(gateway, busybox_image.ref, "(null)") == 401  # NERSC's client when munged is down


def test_replayed_credential_is_401(gateway: GatewayProc, munge: Munged, busybox_image: PushedImage) -> None:
    gateway.pull_until_done(SYS, busybox_image.ref, munge.credential)
    cred = munge.credential()
    assert _lookup(gateway, busybox_image.ref, cred) == 200
    replay = gateway.request("GET", f"/api/lookup/{SYS}/docker/{quote(busybox_image.ref)}/", cred=cred)
    assert replay.status == 401
    assert "replayed" in replay.json()["error"]


def test_credential_of_another_munge_key_is_401(gateway: GatewayProc, foreign_munge: Munged,
                                                busybox_image: PushedImage) -> None:
    reply = gateway.request("GET", f"/api/list/{SYS}/", cred=foreign_munge.credential())
    assert reply.status == 401


def test_expired_credential_is_401(gateway: GatewayProc, munge: Munged, busybox_image: PushedImage) -> None:
    out = subprocess.run(["munge", "-n", "-t", "1", "-S", munge.socket], capture_output=True, check=True)
    time.sleep(2.5)
    reply = gateway.request("GET", f"/api/list/{SYS}/", cred=out.stdout.decode().strip())
    assert reply.status == 401
    assert "expired" in reply.json()["error"]


def test_munged_down_is_503_not_401(gateway: GatewayProc, munge: Munged) -> None:
    reply = gateway.request("GET", "/api/list/downsys/", cred=munge.credential())
    assert reply.status == 503


# --- bad input: 400/404, never 500 ---------------------------------------------------------------

def test_bad_input_gets_4xx(gateway: GatewayProc, munge: Munged) -> None:
    cases = [
        ("GET", f"/api/list/{'nosuchsys'}/", None, 404),
        ("GET", f"/api/lookup/{SYS}/docker/{quote('UPPER//bad::tag')}/", None, 400),
        ("GET", f"/api/lookup/{SYS}/rpm/{quote('alpine:3')}/", None, 400),
        ("POST", f"/api/pull/{SYS}/docker/{quote('alpine:3')}/", b"{not json", 400),
        ("POST", f"/api/pull/{SYS}/docker/{quote('alpine:3')}/", b"[1, 2]", 400),
        ("POST", f"/api/pull/{SYS}/docker/{quote('alpine:3')}/", b'{"allowed_uids": "nobody-like-this"}', 400),
        ("GET", f"/api/metrics/{SYS}/?limit=abc", None, 400),
        ("GET", f"/api/expire/{SYS}/docker/{quote('never:pulled')}/", None, 404),
    ]
    for method, path, body, expected in cases:
        reply = gateway.request(method, path, cred=munge.credential(), body=body)
        assert reply.status == expected, (path, reply.status, reply.body)
        assert reply.headers["content-type"] == "application/json"


# --- access lists ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def alice_private(gateway: GatewayProc, munge: Munged, private_image: str) -> dict[str, object]:
    body = json.dumps({"allowed_uids": str(ALICE)}).encode()
    record = gateway.pull_until_done(SYS, private_image, lambda: munge.credential(uid=ALICE), body=body).json()
    assert record["status"] == "READY", record
    assert record["userACL"] == [ALICE]
    return record


def test_owner_sees_her_private_image(gateway: GatewayProc, munge: Munged, private_image: str,
                                      alice_private: dict[str, object]) -> None:
    assert _lookup(gateway, private_image, munge.credential(uid=ALICE)) == 200
    listing = gateway.request("GET", f"/api/list/{SYS}/", cred=munge.credential(uid=ALICE)).json()["list"]
    assert any(item["id"] == alice_private["id"] for item in listing)
    assert _lookup(gateway, private_image, munge.credential()) == 200  # root: admin


def test_other_user_cannot_look_up_or_list_a_private_image(gateway: GatewayProc, munge: Munged,
                                                           private_image: str,
                                                           alice_private: dict[str, object]) -> None:
    assert _lookup(gateway, private_image, munge.credential(uid=BOB)) == 404
    listing = gateway.request("GET", f"/api/list/{SYS}/", cred=munge.credential(uid=BOB)).json()["list"]
    assert all(item["id"] != alice_private["id"] for item in listing)


def test_other_user_cannot_pull_over_a_private_image(gateway: GatewayProc, munge: Munged, private_image: str,
                                                     alice_private: dict[str, object]) -> None:
    path = f"/api/pull/{SYS}/docker/{quote(private_image)}/"
    assert gateway.request("POST", path, cred=munge.credential(uid=BOB)).status == 403
    public = json.dumps({"public": True}).encode()
    assert gateway.request("POST", path, cred=munge.credential(uid=BOB), body=public).status == 403
    mine = json.dumps({"allowed_uids": str(BOB)}).encode()
    assert gateway.request("POST", path, cred=munge.credential(uid=BOB), body=mine).status == 403
    meta = json.loads((_images(gateway) / f"{alice_private['id']}.json").read_text())
    assert meta["acl"] == {"private": True, "users": [ALICE], "groups": []}


def test_other_user_cannot_expire_or_remove_a_private_image(gateway: GatewayProc, munge: Munged,
                                                            private_image: str,
                                                            alice_private: dict[str, object]) -> None:
    assert gateway.request("GET", f"/api/expire/{SYS}/docker/{quote(private_image)}/",
                           cred=munge.credential(uid=BOB)).status == 403
    assert gateway.request("DELETE", f"/api/remove/{SYS}/docker/{quote(private_image)}/",
                           cred=munge.credential(uid=BOB)).status == 404
    assert (_images(gateway) / f"{alice_private['id']}.squashfs").is_file()


def test_private_meta_file_names_only_the_owner(gateway: GatewayProc, alice_private: dict[str, object]) -> None:
    meta = (_images(gateway) / f"{alice_private['id']}.meta")
    assert f"USERACL: {ALICE}" in meta.read_text().splitlines()
    assert meta.stat().st_mode & 0o004 == 0  # not world-readable, like the squashfs


def test_registry_credentials_travel_in_the_munge_payload_and_make_the_image_private(
        gateway: GatewayProc, munge: Munged, auth_registry: Registry, tmp_path: Path) -> None:
    ref = f"{auth_registry.host}/test/licensed:1"
    push_image(tmp_path, ref, [layer_tar(busybox_entries()), layer_tar([file("licensed.txt", b"paid\n")])],
               creds=auth_registry.creds)
    anonymous = gateway.pull_until_done(SYS, ref, lambda: munge.credential(uid=ALICE))
    assert anonymous.json()["status"] == "FAILURE"
    # the same request again answers FAILURE for a while (the polling client stops); with credentials it pulls
    payload = json.dumps({"authorized_locations": {auth_registry.host: auth_registry.creds}}).encode()
    record = gateway.pull_until_done(SYS, ref, lambda: munge.credential(payload, uid=ALICE)).json()
    assert record["status"] == "READY", record
    assert record["userACL"] == [ALICE]
    assert _lookup(gateway, ref, munge.credential(uid=BOB)) == 404


# --- removal, expiry, metrics ------------------------------------------------------------------------

def test_owner_removes_her_image_and_others_cannot(gateway: GatewayProc, munge: Munged, registry: Registry,
                                                   tmp_path: Path) -> None:
    ref = f"{registry.host}/test/mine:1"
    push_image(tmp_path, ref, [layer_tar(busybox_entries()), layer_tar([file("mine.txt", b"mine\n")])])
    record = gateway.pull_until_done(SYS, ref, lambda: munge.credential(uid=ALICE)).json()
    path = f"/api/remove/{SYS}/docker/{quote(ref)}/"
    assert gateway.request("DELETE", path, cred=munge.credential(uid=BOB)).status == 403
    reply = gateway.request("DELETE", path, cred=munge.credential(uid=ALICE))
    assert reply.status == 200, reply.body
    assert f"id:{record['id']}" in reply.json()["removed"]
    for suffix in (".squashfs", ".json", ".meta"):
        assert not (_images(gateway) / f"{record['id']}{suffix}").exists()
    assert _lookup(gateway, ref, munge.credential(uid=ALICE)) == 404


def test_expire_is_for_admins(gateway: GatewayProc, munge: Munged, registry: Registry, tmp_path: Path) -> None:
    ref = f"{registry.host}/test/expireme:1"
    push_image(tmp_path, ref, [layer_tar(busybox_entries()), layer_tar([file("x.txt", b"x\n")])])
    record = gateway.pull_until_done(SYS, ref, munge.credential).json()
    path = f"/api/expire/{SYS}/docker/{quote(ref)}/"
    assert gateway.request("GET", path, cred=munge.credential(uid=ALICE)).status == 403
    reply = gateway.request("GET", path, cred=munge.credential())
    assert reply.status == 200 and reply.json() == {"status": True}
    assert not (_images(gateway) / f"{record['id']}.meta").exists()
    assert _lookup(gateway, ref, munge.credential()) == 404


def test_autoexpire_removes_images_unused_for_too_long(gateway: GatewayProc, munge: Munged, registry: Registry,
                                                       tmp_path: Path) -> None:
    ref = f"{registry.host}/test/old:1"
    push_image(tmp_path, ref, [layer_tar(busybox_entries()), layer_tar([file("old.txt", b"old\n")])])
    record = gateway.pull_until_done(SYS, ref, munge.credential).json()
    assert gateway.request("GET", f"/api/autoexpire/{SYS}/", cred=munge.credential(uid=ALICE)).status == 403
    fresh = gateway.request("GET", f"/api/autoexpire/{SYS}/", cred=munge.credential())
    assert record["id"] not in fresh.json()["status"]
    with sqlite3.connect(_images(gateway) / "shifter.db") as db:  # as if last used 100 days ago
        db.execute("UPDATE gateway_usage SET last_used = last_used - 8640000 WHERE image_id = ?", (record["id"],))
        db.execute("UPDATE images SET pulled_at = '2020-01-01 00:00:00', updated_at = '2020-01-01 00:00:00' "
                   "WHERE id = ?", (record["id"],))
    reply = gateway.request("GET", f"/api/autoexpire/{SYS}/", cred=munge.credential())
    assert reply.status == 200
    assert record["id"] in reply.json()["status"]
    assert not (_images(gateway) / f"{record['id']}.squashfs").exists()


def test_lookup_metrics_for_admins(gateway: GatewayProc, munge: Munged, busybox_image: PushedImage) -> None:
    gateway.pull_until_done(SYS, busybox_image.ref, munge.credential)
    for _ in range(3):
        assert _lookup(gateway, busybox_image.ref, munge.credential(uid=ALICE)) == 200
    rows = gateway.request("GET", f"/api/metrics/{SYS}/?limit=2", cred=munge.credential()).json()
    assert len(rows) == 2 and rows[-1]["uid"] == ALICE and rows[-1]["tag"] == busybox_image.ref
    assert gateway.request("GET", f"/api/metrics/{SYS}/", cred=munge.credential(uid=ALICE)).status == 403


def test_prometheus_metrics_and_openapi(gateway: GatewayProc) -> None:
    text = gateway.request("GET", "/metrics").body.decode()
    assert "shifter_gateway_lookups_total" in text and 'shifter_gateway_images{system="testsys"}' in text
    spec = gateway.request("GET", "/openapi.json").json()
    assert "/api/pull/{system}/{imgtype}/{tag}/" in spec["paths"]


# --- doimport ------------------------------------------------------------------------------------

def _squashfs(path: Path, text: bytes, owner: int) -> Path:
    tree = path.parent / f"{path.name}.tree"
    (tree / "app").mkdir(parents=True)
    (tree / "app/hello.txt").write_bytes(text)
    subprocess.run(["mksquashfs", str(tree), str(path), "-noappend", "-quiet", "-all-root"], check=True,
                   capture_output=True)
    os.chown(path, owner, owner)
    return path


def test_import_users_import_their_own_squashfs(gateway: GatewayProc, munge: Munged, tmp_path: Path) -> None:
    image = _squashfs(tmp_path / "mine.squashfs", b"imported\n", ALICE)
    body = json.dumps({"filepath": str(image), "format": "squashfs"}).encode()
    path = f"/api/doimport/{SYS}/docker/{quote('imported/app:1')}/"
    reply = gateway.request("POST", path, cred=munge.credential(uid=ALICE), body=body)
    assert reply.status == 200, reply.body
    record = reply.json()
    assert record["status"] == "READY" and record["id"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert (_images(gateway) / f"{record['id']}.meta").read_text().startswith("FORMAT: squashfs\n")
    assert _lookup(gateway, "imported/app:1", munge.credential(uid=BOB)) == 200
    # not an import user: 403; a file of someone else's (root's), even through a link: 403
    assert gateway.request("POST", path, cred=munge.credential(uid=BOB), body=body).status == 403
    roots = _squashfs(tmp_path / "roots.squashfs", b"root's\n", 0)
    (tmp_path / "link.squashfs").symlink_to(roots)
    for target in (roots, tmp_path / "link.squashfs"):
        other = json.dumps({"filepath": str(target)}).encode()
        assert gateway.request("POST", path, cred=munge.credential(uid=ALICE), body=other).status in (400, 403)
    shadow = json.dumps({"filepath": "/etc/shadow"}).encode()
    assert gateway.request("POST", path, cred=munge.credential(uid=ALICE), body=shadow).status == 403
    for bad in (b"{}", b'{"filepath": "relative"}', b'{"filepath": "/nonexistent"}',
                json.dumps({"filepath": str(image), "format": "ext4"}).encode()):
        assert gateway.request("POST", path, cred=munge.credential(uid=ALICE), body=bad).status == 400, bad
