"""A user whose pull resolves to an image the site store already has READY (and that they may run)
gets a tag pointing at the site's image, not a second copy; ``lookup``, ``images`` and the runtime
follow it, and when the site removes the image they say to pull again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shifter.config.site import load_config
from shifter.oci.reference import parse_reference
from shifter.runtime.images import ImageNotInStoreError, resolve_image
from shifter.runtime.spec import Identity
from shifter.store.layout import ImageStore
from tests.conftest import PushedImage
from tests.fixtures.runtime import VENV_BIN

pytestmark = [pytest.mark.integration, pytest.mark.root]
UID = 4242


@pytest.fixture
def world() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged uid")
    base = Path(tempfile.mkdtemp(prefix="shifter-share-", dir="/var/tmp"))
    os.chmod(base, 0o755)
    (base / "site").mkdir()
    (base / "home").mkdir()
    os.chown(base / "home", UID, UID)
    (base / "udiRoot.conf").write_text(f"imagePath={base / 'site'}\nsystem=testsys\n")
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _shifterimg(world: Path, *argv: str, user: bool = True) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(world / "home"), "SHIFTER_CONFIG": str(world / "udiRoot.conf")}
    cmd = [str(VENV_BIN / "shifterimg"), *argv]
    if user:
        cmd = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", *cmd]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False, cwd="/")


def test_user_pull_of_a_site_image_points_at_it(world: Path, busybox_image: PushedImage) -> None:
    ref, image_id = busybox_image.ref, busybox_image.digest.split(":")[1]
    assert _shifterimg(world, "pull", ref, user=False).returncode == 0  # the site has it
    proc = _shifterimg(world, "pull", ref)
    assert proc.returncode == 0, proc.stderr
    assert "no copy made" in proc.stderr and "status: READY" in proc.stdout
    user_store = ImageStore(world / "home/.local/share/shifter/images")
    assert user_store.resolve_tag("docker", str(parse_reference(ref))) == image_id
    assert not user_store.image_files_exist(image_id)  # no second copy

    assert _shifterimg(world, "lookup", ref).stdout.strip() == image_id
    rows = json.loads(_shifterimg(world, "images", "--json").stdout)
    mine = [r for r in rows if r["store"] == "user"]
    assert [(r["id"], r["image_store"], r["status"]) for r in mine] == [(image_id, "site", "READY")]
    lines = _shifterimg(world, "images").stdout.splitlines()
    assert any(line.endswith("[user tag -> site image]") for line in lines)
    assert any(line.endswith("[site]") for line in lines)

    config = load_config(str(world / "udiRoot.conf"))
    user = Identity(uid=UID, gid=UID, groups=(UID,), user=str(UID), home=str(world / "home"))
    info = resolve_image(ref, config, user)
    assert info.image_id == image_id and info.store == str(world / "site") and not info.user_store

    proc = _shifterimg(world, "rm", ref)  # the user drops their tag: the site's image stays
    assert proc.returncode == 0, proc.stderr
    assert ImageStore(world / "site").is_ready(image_id)
    assert user_store.resolve_tag("docker", str(parse_reference(ref))) is None
    assert _shifterimg(world, "lookup", ref).stdout.strip() == image_id  # the site's own tag
    assert _shifterimg(world, "pull", ref).returncode == 0  # shared again

    assert _shifterimg(world, "rm", ref, user=False).returncode == 0  # the site removes it
    with pytest.raises(ImageNotInStoreError, match="no longer has"):
        resolve_image(ref, config, user)
    proc = _shifterimg(world, "lookup", ref)
    assert proc.returncode == 1 and "pull it again" in proc.stderr and "Traceback" not in proc.stderr
    proc = _shifterimg(world, "pull", ref)  # now a copy of its own
    assert proc.returncode == 0, proc.stderr
    assert user_store.is_ready(image_id)
