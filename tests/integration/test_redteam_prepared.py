"""Red-team attacks on prepared containers (``shifter-setup``), each named after the attack.

A prepared tree lives in the host mount namespace, so every user on the node can try to walk into
it; and ``shifter-setup`` runs as root for a user, so it must read that user's files with the
user's rights.  The victim is the test user ``shiftertest`` (uid 2001); the other user on the node
is ``shiftertest2`` (uid 2002, created here).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.runtime import (
    IS_ROOT,
    SHIFTER,
    TEST_UID,
    TEST_USER,
    VENV_BIN,
    build_rootfs,
    ensure_user,
    loop_devices,
    needs_tools,
    publish,
    scratch_dir,
    shifter_env,
)

pytestmark = pytest.mark.integration

OTHER_USER, OTHER_UID = "shiftertest2", 2002
PRIVATE_ID, META_ID, TAG_ID = "8" * 64, "5" * 64, "7" * 64
PACKAGE_DIR = str(Path(__file__).resolve().parents[2] / "src")
VOLUME_SECRET, META_SECRET = "victim-volume-secret", "hunter2-from-root-only-metadata"


@dataclass
class Site:
    root: Path
    config: Path
    udi: Path
    loop: Path
    victim: Path  # a directory in the victim's private (0700) home, given as a volume
    rootonly: Path  # a directory only root may enter


def _ensure_other_user() -> None:
    try:
        pwd.getpwnam(OTHER_USER)
    except KeyError:
        subprocess.run(["useradd", "-u", str(OTHER_UID), "-M", "-s", "/bin/sh", OTHER_USER], check=True)


def _private_acl(store: Path, image_id: str, users: list[int]) -> None:
    meta_file = store / f"{image_id}.json"
    meta = json.loads(meta_file.read_text())
    meta["acl"] = {"private": True, "users": users, "groups": []}
    meta_file.write_text(json.dumps(meta))


def _tag(store: Path, ref: str) -> Path:
    return store / "tags/docker" / urllib.parse.quote(ref, safe="")


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    if not IS_ROOT:
        pytest.skip("needs root")
    ensure_user()
    _ensure_other_user()
    os.chmod("/dev/fuse", 0o666)
    base = scratch_dir("shifter-prep-")
    store, users, udi, loop = base / "store", base / "userstore", base / "udi", base / "loop"
    for path in (store / "tags/docker", users / "tags/docker", udi, loop, base / "cache"):
        path.mkdir(parents=True)
    rootfs = base / "rootfs"
    build_rootfs(rootfs)
    publish(store, rootfs, "docker.io/library/secret:prep", PRIVATE_ID)
    _private_acl(store, PRIVATE_ID, [TEST_UID])  # only the victim may use it
    publish(users, rootfs, "docker.io/library/mine:meta", META_ID)
    publish(users, rootfs, "docker.io/library/mine:tag", TAG_ID)
    config = base / "udiRoot.conf"
    config.write_text(f"imagePath={store}\nudiMount={udi}\nloopMount={loop}\nautoPull=0\nuserImagePath={users}\n"
                      f"maxGroupCount=8\nperNodeCachePath={base / 'cache'}\n")
    for dirpath, _dirnames, filenames in os.walk(base):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):  # rootfs/data/up points out of the image (dangling here)
                os.chmod(full, stat.S_IMODE(os.stat(full).st_mode) | 0o444)
    for dirpath, _dirnames, filenames in os.walk(users):  # the victim's own store
        for name in [dirpath, *(os.path.join(dirpath, f) for f in filenames)]:
            os.chown(name, TEST_UID, TEST_UID)
    # A world-readable project in the victim's private (0700) home: outside a container, only the
    # victim reaches it.
    home, rootonly = base / "home", base / "rootonly"
    victim = home / "project"
    victim.mkdir(parents=True)
    (victim / "secret.txt").write_text(VOLUME_SECRET + "\n")
    for path in (home, victim, victim / "secret.txt"):
        os.chown(path, TEST_UID, TEST_UID)
    os.chmod(home, 0o700)
    os.chmod(victim, 0o755)
    os.chmod(victim / "secret.txt", 0o644)
    rootonly.mkdir(mode=0o700)
    yield Site(base, config, udi, loop, victim, rootonly)
    _run_tool(config, "shifter-teardown")
    shutil.rmtree(base, ignore_errors=True)


def _run_tool(config: Path, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / tool), *args], env=shifter_env(config), capture_output=True, text=True,
                          timeout=120, check=False, cwd="/")


def _as(site: Site, user: str, cmd: list[str]) -> subprocess.CompletedProcess[str]:
    env = [f"{k}={v}" for k, v in shifter_env(site.config, USER=user).items()]
    return subprocess.run(["runuser", "-u", user, "--", "env", "-i", *env, *cmd], cwd="/", capture_output=True,
                          text=True, timeout=60, check=False)


def _fast_only(site: Site, args: list[str]) -> subprocess.CompletedProcess[str]:
    """Only ``fastpath.try_enter``, as the launcher runs it (``python -I -S``); FALLBACK if it
    declined (see ``test_runtime_security._fast_only``)."""
    code = (f"import sys\nsys.path.append({PACKAGE_DIR!r})\nfrom shifter.runtime.linux import fastpath\n"
            "status = fastpath.try_enter(sys.argv[1:])\nif status is None:\n    print('FALLBACK')\n"
            "sys.exit(99 if status is None else status)\n")
    return _as(site, TEST_USER, [sys.executable, "-I", "-S", "-c", code, *args])


def _mounts_under(path: Path) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(str(path))]


def _loop_devices(site: Site) -> list[str]:
    """The loop devices still attached to the site's files, after giving autoclear devices a few
    seconds: the kernel releases them asynchronously once their last mount went lazily."""
    for _ in range(50):
        found = loop_devices(str(site.root), PRIVATE_ID)
        if not found:
            return found
        time.sleep(0.1)
    return found


# What another user tries on the node: list and read the record and through the tree, the image at
# loopMount, and the same again from a user namespace of their own (where they are "root").
_PROBE = """
import os, sys
udi, loop = sys.argv[1], sys.argv[2]
def probe(path):
    try:
        if os.path.isdir(path):
            return "LISTED " + " ".join(sorted(os.listdir(path)))
        with open(path) as handle:
            return "READ " + handle.read().strip().replace("\\n", " | ")
    except OSError as err:
        return f"DENIED {err.strerror}"
for path in (udi, udi + ".json", udi + "/data", udi + "/data/secret.txt", udi + "/cache/f", udi + "/etc/passwd",
             udi + "/etc/os-release", loop, loop + "/image", loop + "/image/etc/os-release", loop + "/etc/os-release"):
    print(path, probe(path))
try:
    os.chroot(udi)
    print("CHROOTED")
except OSError as err:
    print("chroot DENIED", err.strerror)
"""


@needs_tools
def test_other_user_cannot_read_a_prepared_tree_its_volumes_cache_or_private_image(site: Site) -> None:
    request = ["--image=secret:prep", f"--volume={site.victim}:/data", "--volume=/x:/cache:perNodeCache=size=64M"]
    setup = _run_tool(site.config, "shifter-setup", *request, f"--user={TEST_USER}")
    try:
        assert setup.returncode == 0, setup.stderr
        inside = ("cat /data/secret.txt; echo cached-by-victim > /cache/f; cat /etc/os-release; "
                  "grep ' /bin ' /proc/self/mountinfo | grep -q fuse.squashfuse "
                  "&& echo private-container || echo prepared-tree")
        fast = _fast_only(site, [*request, "sh", "-c", inside])
        full = _as(site, TEST_USER, [SHIFTER, *request, "--verbose", "sh", "-c", inside])
        for res in (fast, full):  # the owner still enters, by the fast and the full path
            assert res.returncode == 0, res.stdout + res.stderr
            assert res.stdout.split() == [VOLUME_SECRET, "NAME=busybox-test", "prepared-tree"]
        # The image is no longer mounted at loopMount (the tree's binds keep it alive).
        assert _mounts_under(site.loop) == [] and os.listdir(site.loop) == []
        script = site.root / "probe.py"
        script.write_text(_PROBE)
        os.chmod(script, 0o644)
        probe = [sys.executable, "-I", str(script), str(site.udi), str(site.loop)]
        for cmd in (probe, ["unshare", "--user", "--map-root-user", "--mount", *probe]):
            res = _as(site, OTHER_USER, cmd)
            assert res.returncode == 0, res.stderr
            seen = dict(line.split(" ", 1) for line in res.stdout.splitlines())
            assert seen[str(site.udi)].startswith("DENIED"), seen
            assert seen[f"{site.udi}.json"].startswith("DENIED"), seen  # the record names volumes, image ENV
            assert seen["chroot"].startswith("DENIED"), seen
            for secret in (VOLUME_SECRET, "cached-by-victim", "busybox-test", f"{TEST_USER}:x"):
                assert secret not in res.stdout, seen
    finally:
        down = _run_tool(site.config, "shifter-teardown")
    assert down.returncode == 0, down.stderr
    assert _mounts_under(site.udi) == [] and _mounts_under(site.loop) == []
    assert _loop_devices(site) == []


def _assert_setup_did_not_read(site: Site, image: str, secret: str) -> None:
    setup = _run_tool(site.config, "shifter-setup", f"--image={image}", f"--user={TEST_USER}")
    try:
        record = Path(str(site.udi) + ".json")
        text = record.read_text() if record.exists() else ""
        assert secret not in text + setup.stdout + setup.stderr
        # Read with the victim's rights the file is not there: no image, no container.
        assert setup.returncode != 0 and text == "", setup.stderr
    finally:
        _run_tool(site.config, "shifter-teardown")
    assert _mounts_under(site.udi) == [] and _mounts_under(site.loop) == []


@needs_tools
def test_user_store_metadata_symlinked_to_a_root_only_file_is_not_read_by_setup(site: Site) -> None:
    # Root's file: valid image metadata (as if another user's), whose ENV would land in the record.
    hidden = site.rootonly / "meta.json"
    meta = json.loads((site.root / "userstore" / f"{META_ID}.json").read_text())
    meta["env"] = [f"SECRET={META_SECRET}", "PATH=/bin"]
    hidden.write_text(json.dumps(meta))
    os.chmod(hidden, 0o600)
    link = site.root / "userstore" / f"{META_ID}.json"
    link.unlink()
    link.symlink_to(hidden)
    os.lchown(link, TEST_UID, TEST_UID)
    _assert_setup_did_not_read(site, "mine:meta", META_SECRET)


@needs_tools
def test_user_store_tag_symlinked_to_a_root_only_file_is_not_read_by_setup(site: Site) -> None:
    # Root's file holds an image id; if setup read it, the record would name that image.
    hidden = site.rootonly / "tag"
    hidden.write_text(TAG_ID + "\n")
    os.chmod(hidden, 0o600)
    link = _tag(site.root / "userstore", "docker.io/library/mine:tag")
    link.unlink()
    link.symlink_to(hidden)
    os.lchown(link, TEST_UID, TEST_UID)
    _assert_setup_did_not_read(site, "mine:tag", TAG_ID)
