"""``shifterimg`` with ``imageGateway`` set: the same commands, output and exit codes as embedded
mode, through the real gateway process (real munged, real registry); ``login`` credentials travel
inside the MUNGE payload."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import AUTH_PASSWORD, AUTH_USER, PushedImage
from tests.fixtures.gateway import GatewayProc, write_configs
from tests.fixtures.images import busybox_entries, file, layer_tar, push_image
from tests.fixtures.munge import Munged
from tests.fixtures.registry import Registry, have_tools
from tests.fixtures.runtime import VENV_BIN

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not have_tools("docker-registry", "skopeo", "munge", "mksquashfs"),
                                 reason="needs docker-registry, skopeo, munge and mksquashfs")]
SYS = "testsys"
SHIFTERIMG = str(VENV_BIN / "shifterimg")
ALICE = 2001


@pytest.fixture(scope="module")
def gateway(munge: Munged, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    root = tmp_path_factory.mktemp("gw")
    conf, gwconf = write_configs(root, {SYS: {"image_path": str(root / "images"), "munge_socket": munge.socket}})
    proc = GatewayProc(root, conf, gwconf).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client_dir(gateway: GatewayProc, munge: Munged) -> Iterator[Path]:
    """A world-readable client udiRoot.conf (its imagePath is not the gateway's: nothing local is used)
    and home directories, outside pytest's private temp tree."""
    root = Path(tempfile.mkdtemp(prefix="shifter-test-client-", dir="/var/tmp"))
    root.chmod(0o755)
    (root / "udiRoot.conf").write_text(
        f"imagePath={root / 'local-images'}\nudiMount={root / 'u'}\nloopMount={root / 'l'}\nsystem={SYS}\n"
        f"imageGateway=http://127.0.0.1:1 {gateway.base}\nmungeSocket={munge.socket}\n")
    (root / "udiRoot.conf").chmod(0o644)
    for name in ("root-home", "alice-home"):
        (root / name).mkdir()
    os.chown(root / "alice-home", ALICE, ALICE)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def shifterimg(client_dir: Path, *args: str, uid: int | None = None) -> subprocess.CompletedProcess[str]:
    home = client_dir / ("alice-home" if uid else "root-home")
    env = {"PATH": "/usr/bin:/bin", "SHIFTER_CONFIG": str(client_dir / "udiRoot.conf"), "HOME": str(home)}
    argv = [SHIFTERIMG, *args]
    if uid is not None:
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180, cwd="/", check=False)


def test_pull_lookup_images_as_in_embedded_mode(client_dir: Path, gateway: GatewayProc,
                                                busybox_image: PushedImage) -> None:
    pulled = shifterimg(client_dir, "pull", busybox_image.ref)
    assert pulled.returncode == 0, pulled.stderr
    assert re.fullmatch(rf"\S+ Pulling Image: docker:{re.escape(busybox_image.ref)}, status: READY\n", pulled.stdout)
    looked = shifterimg(client_dir, "lookup", busybox_image.ref)
    assert looked.returncode == 0 and looked.stdout == busybox_image.digest.split(":")[1] + "\n"
    listed = shifterimg(client_dir, "images")
    assert listed.returncode == 0
    line = next(x for x in listed.stdout.splitlines() if x.endswith(busybox_image.ref))
    assert line.split()[:4] == [SYS, "docker", "READY", busybox_image.digest.split(":")[1][:10]]
    assert not (client_dir / "local-images").exists()  # nothing went to a local store


def test_lookup_miss_exits_1_as_embedded(client_dir: Path, gateway: GatewayProc, registry: Registry) -> None:
    missing = shifterimg(client_dir, "lookup", f"{registry.host}/test/never-pulled:1")
    assert missing.returncode == 1
    assert missing.stdout == "" and missing.stderr.startswith("shifterimg: error: ")
    assert len(missing.stderr.strip().splitlines()) == 1


def test_failed_pull_gives_the_embedded_exit_code(client_dir: Path, gateway: GatewayProc, registry: Registry,
                                                  site_config: Path) -> None:
    ref = f"{registry.host}/test/absent:1"
    remote = shifterimg(client_dir, "pull", ref)
    embedded = subprocess.run([SHIFTERIMG, "pull", ref], capture_output=True, text=True, check=False,
                              env={**os.environ, "SHIFTER_CONFIG": str(site_config)})
    assert embedded.returncode not in (0, 1)
    assert remote.returncode == embedded.returncode, remote.stderr
    assert remote.stderr.strip().splitlines()[-1].startswith("shifterimg: error: ")


def test_private_pull_and_rm_by_owner(client_dir: Path, gateway: GatewayProc, registry: Registry,
                                      tmp_path: Path) -> None:
    ref = f"{registry.host}/test/alices:1"
    push_image(tmp_path, ref, [layer_tar(busybox_entries()), layer_tar([file("a.txt", b"alice\n")])])
    pulled = shifterimg(client_dir, "-u", str(ALICE), "pull", ref, uid=ALICE)
    assert pulled.returncode == 0, pulled.stderr
    assert shifterimg(client_dir, "lookup", ref, uid=2002).returncode == 1  # another user: not found
    listed = shifterimg(client_dir, "images", uid=ALICE).stdout
    assert any(line.endswith(f"{ref} [private]") for line in listed.splitlines())
    removed = shifterimg(client_dir, "rm", ref, uid=ALICE)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.startswith(f"removed docker:{ref}")


def test_rm_of_someone_elses_image_is_refused_with_exit_4(client_dir: Path, gateway: GatewayProc,
                                                          registry: Registry, tmp_path: Path) -> None:
    ref = f"{registry.host}/test/roots:1"
    push_image(tmp_path, ref, [layer_tar(busybox_entries()), layer_tar([file("r.txt", b"root\n")])])
    assert shifterimg(client_dir, "pull", ref).returncode == 0
    refused = shifterimg(client_dir, "rm", ref, uid=ALICE)
    assert refused.returncode == 4, refused.stderr
    assert "may not remove" in refused.stderr


def test_login_credentials_travel_inside_munge(client_dir: Path, gateway: GatewayProc, auth_registry: Registry,
                                               tmp_path: Path) -> None:
    ref = f"{auth_registry.host}/test/vendor:1"
    push_image(tmp_path, ref, [layer_tar(busybox_entries()), layer_tar([file("v.txt", b"vendor\n")])],
               creds=auth_registry.creds)
    assert shifterimg(client_dir, "pull", ref, uid=ALICE).returncode != 0  # no credentials yet
    login = subprocess.run(["setpriv", f"--reuid={ALICE}", f"--regid={ALICE}", "--clear-groups", SHIFTERIMG,
                            "login", "-u", AUTH_USER, "--password-stdin", auth_registry.host],
                           input=AUTH_PASSWORD + "\n", capture_output=True, text=True, check=False, cwd="/",
                           env={"PATH": "/usr/bin:/bin", "HOME": str(client_dir / "alice-home"),
                                "SHIFTER_CONFIG": str(client_dir / "udiRoot.conf")})
    assert login.returncode == 0, login.stderr
    pulled = shifterimg(client_dir, "pull", ref, uid=ALICE)
    assert pulled.returncode == 0, pulled.stderr
    assert AUTH_PASSWORD not in gateway.log()
    listed = shifterimg(client_dir, "images", uid=ALICE).stdout
    assert any(line.endswith(f"{ref} [private]") for line in listed.splitlines())  # pulled with credentials
