"""Private images through ``shifterimg -u/-g``, removal under a running container, and the
clean-up of an import killed with SIGKILL.  Real registry, real tar2sqfs/mksquashfs, real mounts."""

from __future__ import annotations

import grp
import json
import os
import pwd
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shifter.config.site import load_config
from shifter.errors import AccessDeniedError
from shifter.runtime.images import resolve_image
from shifter.runtime.spec import Identity
from tests.conftest import PushedImage
from tests.fixtures.images import OCILayout, file, layer_tar
from tests.integration.test_shifterimg_cli import one_error_line, shifterimg, snapshot

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _identity(name: str) -> Identity:
    entry = pwd.getpwnam(name)
    return Identity(entry.pw_uid, entry.pw_gid, (), name, entry.pw_dir)


# --------------------------------------------------------------------------- private images
def test_private_pull_is_stored_listed_and_enforced(capsys: pytest.CaptureFixture[str], store: Path,
                                                    busybox_image: PushedImage) -> None:
    code, _, err = shifterimg(capsys, "-u", "nobody", "-g", "users", "pull", busybox_image.ref)
    assert code == 0, err
    image_id = busybox_image.digest.split(":")[1]
    acl = {"private": True, "users": [pwd.getpwnam("nobody").pw_uid], "groups": [grp.getgrnam("users").gr_gid]}
    assert json.loads((store / f"{image_id}.json").read_text())["acl"] == acl
    rows = json.loads(shifterimg(capsys, "images", "--json")[1])
    assert [r["acl"] for r in rows if r["id"] == image_id] == [acl]
    assert shifterimg(capsys, "images")[1].rstrip().endswith(f"{busybox_image.ref} [private]")
    assert json.loads(shifterimg(capsys, "inspect", busybox_image.ref)[1])["acl"] == acl

    config = load_config()
    assert resolve_image(busybox_image.ref, config, _identity("nobody")).image_id == image_id
    with pytest.raises(AccessDeniedError):
        resolve_image(busybox_image.ref, config, _identity("daemon"))

    # the owner (root, an admin) pulls it again without asking: nothing changes; with --public it does
    assert shifterimg(capsys, "pull", busybox_image.ref)[0] == 0
    assert json.loads((store / f"{image_id}.json").read_text())["acl"] == acl
    assert shifterimg(capsys, "pull", "--public", busybox_image.ref)[0] == 0
    assert json.loads((store / f"{image_id}.json").read_text())["acl"]["private"] is False
    assert resolve_image(busybox_image.ref, config, _identity("daemon")).image_id == image_id


def test_unknown_user_in_acl_is_exit_2_and_pulls_nothing(capsys: pytest.CaptureFixture[str], store: Path,
                                                          busybox_image: PushedImage) -> None:
    before = snapshot(store)
    code, out, err = shifterimg(capsys, "--user=no-such-user-zz", "pull", busybox_image.ref)
    assert code == 2 and out == "" and one_error_line(err) and "no-such-user-zz" in err
    assert snapshot(store) == before


# --------------------------------------------------------------------------- rm under a running container
@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[list[tuple[str, Path]]]:
    if os.geteuid() != 0:
        pytest.skip("loop mounts need root")
    done: list[tuple[str, Path]] = []
    yield done
    for kind, where in done:
        cmd = ["fusermount3", "-u", str(where)] if kind == "squashfuse" else ["umount", str(where)]
        subprocess.run(cmd, check=False, capture_output=True)


def test_rm_does_not_break_a_container_that_mounted_the_image(capsys: pytest.CaptureFixture[str],
                                                              store: Path, busybox_image: PushedImage,
                                                              mounts: list[tuple[str, Path]],
                                                              tmp_path: Path) -> None:
    assert shifterimg(capsys, "pull", busybox_image.ref)[0] == 0
    squashfs = store / f"{busybox_image.digest.split(':')[1]}.squashfs"
    # both ways the runtime mounts an image: kernel squashfs on a loop device (root), squashfuse
    loop, fuse = tmp_path / "loop", tmp_path / "fuse"
    loop.mkdir()
    fuse.mkdir()
    subprocess.run(["mount", "-t", "squashfs", "-o", "loop,ro", str(squashfs), str(loop)], check=True)
    mounts.append(("loop", loop))
    subprocess.run(["squashfuse", str(squashfs), str(fuse)], check=True)
    mounts.append(("squashfuse", fuse))

    code, _, err = shifterimg(capsys, "rm", busybox_image.ref)
    assert code == 0, err
    assert not squashfs.exists() and shifterimg(capsys, "lookup", busybox_image.ref)[0] == 1
    for root in (loop, fuse):  # the mounted image still reads and runs
        assert (root / "app" / "hello.txt").read_text() == "hello from the image\n"
        result = subprocess.run([str(root / "bin" / "busybox"), "cat", str(root / "etc" / "os-release")],
                                check=True, capture_output=True, text=True, timeout=30)
        assert "Busybox" in result.stdout


# --------------------------------------------------------------------------- kill -9 during import
def _oci_tarball(tmp_path: Path) -> Path:
    layout = OCILayout(tmp_path / "layout")
    layout.add_image("t", [layer_tar([file("data/blob.bin", os.urandom(3 * 1024 * 1024))], "none")])
    tarball = tmp_path / "app.tar"
    with tarfile.open(tarball, "w") as tar:
        for path in sorted(layout.root.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(layout.root)), recursive=False)
    return tarball


def test_import_killed_with_sigkill_leaves_temp_files_that_the_next_run_removes(
        capsys: pytest.CaptureFixture[str], store: Path, tmp_path: Path) -> None:
    tarball, events = _oci_tarball(tmp_path), tmp_path / "events"
    proc = subprocess.Popen([sys.executable, "-m", "tests.integration.blob_child", "--import", str(tarball),
                             "app:1"], cwd=ROOT, env={**os.environ, "EVENTS": str(events), "HOLD_DIGEST": "*",
                                                      "GO": str(tmp_path / "never")},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (events.exists() and "hold" in events.read_text()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the import never started copying"
        time.sleep(0.02)
    partial = store / "cache" / "partial" / "sha256"
    assert list(partial.glob("import-*.blob"))  # mid-copy
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(partial.glob("import-*.blob"))  # what a kill -9 leaves behind

    code, _, err = shifterimg(capsys, "import", str(tarball), "app:1")
    assert code == 0, err
    assert list(partial.glob("import-*.blob")) == []
    assert shifterimg(capsys, "lookup", "app:1")[0] == 0
