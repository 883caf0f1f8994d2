"""Red-team attacks on the per-user image store, which root reads in privileged mode
(``shifter --user=NAME`` as Slurm runs it).  Each test is named after the attack.

The hostile cases that could hang or exhaust memory on a regression run in a child process
with a time limit and an address-space limit, so a failure is a failure, not a stuck suite.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from shifter.config.site import SiteConfig
from shifter.errors import ShifterError, StoreError
from shifter.runtime.images import resolve_image
from shifter.runtime.spec import Identity
from shifter.store.layout import ImageStore

IMAGE_ID = "ab" * 32
REF = "docker.io/library/app:1"
USER = Identity(uid=54321, gid=54321, groups=(54321,), user="mallory", home="/nonexistent")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act for another user")


@pytest.fixture
def home() -> Iterator[Path]:
    """A home directory the user owns, in a place every user may search."""
    path = Path(tempfile.mkdtemp(prefix="shifter-redteam-"))
    path.chmod(0o755)
    home = path / "home"
    home.mkdir()
    yield home
    shutil.rmtree(path)


def _user_store(home: Path) -> Path:
    store = home / "store"
    (store / "tags" / "docker").mkdir(parents=True)
    (store / f"{IMAGE_ID}.squashfs").write_bytes(b"hsqs")
    return store


def _tag(store: Path) -> Path:
    return store / "tags" / "docker" / urllib.parse.quote(REF, safe="")


def _chown_tree(path: Path, uid: int) -> None:
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.lchown(name, uid, uid)


def _config(home: Path) -> SiteConfig:
    return SiteConfig(image_path=str(home / "no-site-store"), user_image_path=str(home / "store"))


def _run_limited(code: str) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60, preexec_fn=limit, check=False)


def test_tag_file_that_is_a_fifo_does_not_block(home: Path) -> None:
    store = _user_store(home)
    os.mkfifo(_tag(store))  # an open() for reading would wait for a writer forever
    res = _run_limited(f"""
        from shifter.store.layout import ImageStore
        from shifter.errors import StoreError
        try:
            ImageStore({str(store)!r}).resolve_tag("docker", {REF!r})
        except StoreError as err:
            print("refused", err.message)
        """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("refused") and "not a regular file" in res.stdout


def test_metadata_symlink_to_dev_zero_cannot_exhaust_memory(home: Path) -> None:
    store = _user_store(home)
    (store / f"{IMAGE_ID}.json").symlink_to("/dev/zero")  # an endless read
    res = _run_limited(f"""
        from shifter.store.layout import ImageStore
        from shifter.errors import StoreError
        try:
            ImageStore({str(store)!r}).read_metadata({IMAGE_ID!r})
        except StoreError as err:
            print("refused", err.message)
        """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("refused")


def test_huge_metadata_file_is_refused_without_reading_it_all(home: Path) -> None:
    store = _user_store(home)
    with open(store / f"{IMAGE_ID}.json", "wb") as handle:
        handle.truncate(64 << 30)  # sparse: 64 GiB of NUL bytes
    with pytest.raises(StoreError, match="larger than"):
        ImageStore(store).read_metadata(IMAGE_ID)


@needs_root
def test_privileged_user_store_metadata_symlink_to_a_root_only_file(home: Path) -> None:
    """The user plants ``<id>.json -> /root-only/secret.json``: root must not read it for them."""
    secret_dir = home.parent / "root-only"
    secret_dir.mkdir(mode=0o700)
    secret = secret_dir / "secret.json"
    secret.write_text(json.dumps({"status": "READY", "id": IMAGE_ID, "env": ["TOKEN=root-secret"]}))
    secret.chmod(0o644)  # readable by mode; only the directory protects it (like /root)
    store = _user_store(home)
    (store / f"{IMAGE_ID}.json").symlink_to(secret)
    _tag(store).write_text(IMAGE_ID + "\n")
    _chown_tree(home, USER.uid)
    with pytest.raises(ShifterError) as info:
        resolve_image(f"docker:{REF}", _config(home), USER, as_user=True)
    assert "root-secret" not in info.value.render()
    assert os.geteuid() == 0 and os.getegid() == 0  # root's ids are back


@needs_root
def test_privileged_user_store_that_is_a_symlink_into_a_root_only_directory(home: Path) -> None:
    """``userImagePath -> /root-only/store``: a store the user cannot reach is not searched."""
    hidden = home.parent / "root-only"
    hidden.mkdir(mode=0o700)
    store = _user_store(hidden)
    _tag(store).write_text(IMAGE_ID + "\n")
    (store / f"{IMAGE_ID}.json").write_text(json.dumps({"status": "READY", "id": IMAGE_ID}))
    (home / "store").symlink_to(store)
    _chown_tree(home, USER.uid)
    with pytest.raises(ShifterError, match="not in the image store"):
        resolve_image(f"docker:{REF}", _config(home), USER, as_user=True)
    # The user's own, reachable store still works with the user's rights.
    (home / "store").unlink()
    store.rename(home / "store")
    _chown_tree(home, USER.uid)
    info = resolve_image(f"docker:{REF}", _config(home), USER, as_user=True)
    assert info.image_id == IMAGE_ID and info.user_store
    assert os.geteuid() == 0
