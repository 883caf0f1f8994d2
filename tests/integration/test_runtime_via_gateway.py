"""``shifter --image=...`` with ``imageGateway`` set: the runtime asks the gateway for the image's
id and reads the one shared copy in imagePath; the access list is enforced by the gateway and
again by the runtime (a root-owned launch for another user included)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PushedImage
from tests.fixtures.gateway import GatewayProc, write_configs
from tests.fixtures.images import busybox_entries, directory, file, layer_tar, push_image
from tests.fixtures.munge import Munged
from tests.fixtures.registry import Registry
from tests.fixtures.runtime import (
    IS_ROOT,
    SHIFTER,
    TEST_UID,
    TEST_USER,
    container_site,
    ensure_user,
    needs_tools,
)

pytestmark = [pytest.mark.integration, needs_tools]
SYS = "testsys"
OTHER_USER, OTHER_UID = "shiftertest2", 2002


@pytest.fixture(scope="module")
def world() -> Iterator[Path]:
    if not IS_ROOT:
        pytest.skip("needs root (users, mounts)")
    ensure_user()
    base = container_site("shifter-gwrt-", "udi", "loop")  # udiMount/loopMount may not lie in /tmp or /var/tmp
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def gateway(world: Path, munge: Munged) -> Iterator[GatewayProc]:
    conf, gwconf = write_configs(world / "gw", {SYS: {"image_path": str(world / "site"),
                                                      "munge_socket": munge.socket}})
    (world / "site").chmod(0o755)
    proc = GatewayProc(world / "gw", conf, gwconf).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client_conf(world: Path, gateway: GatewayProc, munge: Munged) -> Path:
    path = world / "udiRoot.conf"
    path.write_text(f"imagePath={world / 'site'}\nudiMount={world / 'udi'}\nloopMount={world / 'loop'}\n"
                    f"userImagePath={world / 'nouser'}\nsystem={SYS}\nautoPull=1\n"
                    f"imageGateway={gateway.base}\nmungeSocket={munge.socket}\n")
    path.chmod(0o644)
    return path


def _shifter(conf: Path, ref: str, user: str, privileged: bool) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "SHIFTER_CONFIG": str(conf), "HOME": "/tmp"}
    cmd = [SHIFTER, f"--image={ref}", "cat", "/app/hello.txt"]
    if privileged:
        cmd.insert(1, f"--user={user}")
    else:
        cmd = ["runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), f"USER={user}",
               *cmd]
    return subprocess.run(cmd, cwd="/", env=env if privileged else None, capture_output=True, text=True,
                          timeout=300, check=False)


def test_runtime_pulls_and_looks_up_through_the_gateway(client_conf: Path, world: Path,
                                                        busybox_image: PushedImage) -> None:
    res = _shifter(client_conf, busybox_image.ref, TEST_USER, privileged=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hello from the image\n"
    image_id = busybox_image.digest.split(":")[1]
    assert (world / "site" / f"{image_id}.squashfs").is_file()  # the gateway's one shared copy
    assert (world / "site" / f"{image_id}.meta").is_file()
    assert not (world / "nouser").exists()  # no per-user copy


def test_other_user_cannot_run_a_private_image(client_conf: Path, world: Path, gateway: GatewayProc,
                                               munge: Munged, registry: Registry, tmp_path: Path) -> None:
    ref = f"{registry.host}/test/runprivate:1"
    push_image(tmp_path, ref, [layer_tar(busybox_entries()),
                               layer_tar([directory("app"), file("app/hello.txt", b"private hello\n")])])
    body = json.dumps({"allowed_uids": str(TEST_UID)}).encode()
    reply = gateway.pull_until_done(SYS, ref, lambda: munge.credential(uid=TEST_UID), body=body)
    assert reply.json()["status"] == "READY", reply.json()
    ok = _shifter(client_conf, ref, TEST_USER, privileged=False)
    assert ok.returncode == 0 and ok.stdout == "private hello\n", ok.stderr
    subprocess.run(["id", OTHER_USER], check=True, capture_output=True)
    refused = _shifter(client_conf, ref, OTHER_USER, privileged=False)
    assert refused.returncode != 0 and "private hello" not in refused.stdout
    # root acting for the other user: the gateway answers root, the runtime's own check refuses
    as_root = _shifter(client_conf, ref, OTHER_USER, privileged=True)
    assert as_root.returncode == 4, as_root.stderr
    assert "private hello" not in as_root.stdout
