"""A user who cannot write the site imagePath pulls into a per-user store under their home."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shifter.store.layout import ImageStore, search_roots
from tests.conftest import PushedImage

pytestmark = [pytest.mark.integration, pytest.mark.root]
ROOT = Path(__file__).resolve().parents[2]
UID = 4242


@pytest.fixture
def world(busybox_image: PushedImage) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged uid")
    base = Path(tempfile.mkdtemp(prefix="shifter-userstore-"))
    os.chmod(base, 0o755)
    (base / "site").mkdir()
    home = base / "home"
    home.mkdir()
    os.chown(home, UID, UID)
    (base / "udiRoot.conf").write_text(f"imagePath={base / 'site'}\nsystem=testsys\n")
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_unprivileged_user_pulls_into_per_user_store(world: Path, busybox_image: PushedImage) -> None:
    home = world / "home"
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "SHIFTER_CONFIG": str(world / "udiRoot.conf"),
           "PULL_LOG": str(home / "pull.log")}
    proc = subprocess.run(["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups",
                           sys.executable, "-m", "tests.integration.pull_child", busybox_image.ref],
                          check=False, cwd=ROOT, env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    image_id = proc.stdout.decode().strip()
    user_root = home / ".local/share/shifter/images"
    assert ImageStore(user_root).is_ready(image_id)
    assert ImageStore(user_root).resolve_tag("docker", busybox_image.ref) == image_id
    assert list((world / "site").iterdir()) == []
    assert (user_root / "shifter.db").stat().st_uid == UID
    assert search_roots(str(world / "site"), "~/.local/share/shifter/images", str(home)) == \
        [user_root, world / "site"]
    listing = subprocess.run(["unsquashfs", "-lls", "-d", "", str(user_root / f"{image_id}.squashfs")],
                             check=True, capture_output=True).stdout.decode()
    assert "/bin/busybox" in listing and " root/root " in listing and str(UID) not in listing
