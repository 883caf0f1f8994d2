"""Root acting for a user acts with the user's rights: the attacks of the privileged path.

``shifter --user=U`` (and, later, the Slurm prolog) runs as root on behalf of U.  Each test is
one attack a hostile user tried on that path, run for real: a real ``docker-registry`` (plain,
and one with htpasswd auth), real ``shifterimg``/``shifter`` processes as root and as the test
users ``shiftertest`` (uid 2001) and ``shiftertest2`` (uid 2002), real squashfuse and loop mounts.

* a planted ``shifter/cli/shifterimg.py`` in the caller's directory never runs as root;
* root's registry credentials never serve another user (the automatic pull runs as the user);
* a pull that sent registry credentials is private to the puller unless ``--public``;
* another tag of a private image's digest, pulled for someone outside the list, keeps it private;
* a private image's bytes (squashfs, metadata, layer blobs) are closed to users outside its list
  on the host, while listed users can still run it unprivileged.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shifter.store.layout import ImageStore
from tests.conftest import AUTH_PASSWORD, AUTH_USER, PushedImage
from tests.fixtures.images import push
from tests.fixtures.registry import Registry
from tests.fixtures.runtime import (
    IS_ROOT,
    SHIFTER,
    TEST_UID,
    TEST_USER,
    VENV_BIN,
    container_site,
    ensure_user,
    needs_tools,
)

pytestmark = [pytest.mark.integration, needs_tools]

OTHER_USER, OTHER_UID = "shiftertest2", 2002
SHIFTERIMG = str(VENV_BIN / "shifterimg")


@dataclass
class Site:
    base: Path
    config: Path
    root_home: Path  # root's HOME in these tests (its registry credentials live here)
    user_store_name: str  # userImagePath is ~/.local/share/<this>

    @property
    def site_store(self) -> ImageStore:
        return ImageStore(self.base / "site")

    def user_store(self, user: str) -> ImageStore:
        return ImageStore(Path(pwd.getpwnam(user).pw_dir) / ".local/share" / self.user_store_name)

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "SHIFTER_CONFIG": str(self.config), "HOME": str(self.root_home),
                **extra}


def _ensure_users() -> None:
    ensure_user()
    try:
        pwd.getpwnam(OTHER_USER)
    except KeyError:
        subprocess.run(["useradd", "-u", str(OTHER_UID), "-m", OTHER_USER], check=True)
    for user in (TEST_USER, OTHER_USER):  # other tests may have made them without a home
        entry = pwd.getpwnam(user)
        if not os.path.isdir(entry.pw_dir):
            os.makedirs(entry.pw_dir, mode=0o755)
            os.chown(entry.pw_dir, entry.pw_uid, entry.pw_gid)


def _user_auth_file(user: str) -> Path:
    return Path(pwd.getpwnam(user).pw_dir) / ".config/shifter/auth.json"


@pytest.fixture
def site() -> Iterator[Site]:
    if not IS_ROOT:
        pytest.skip("needs root (acts for other users, loop mounts)")
    _ensure_users()
    base = container_site("shifter-forusers-", "site", "udi", "loop", "roothome")
    name = f"shifter-it-{uuid.uuid4().hex[:8]}"
    config = base / "udiRoot.conf"
    config.write_text(f"imagePath={base / 'site'}\nudiMount={base / 'udi'}\nloopMount={base / 'loop'}\n"
                      f"userImagePath=~/.local/share/{name}\nautoPull=1\nsystem=testsys\n"
                      "gatewayAdmins=root\n")
    os.chmod(config, 0o644)
    saved = {u: _user_auth_file(u).read_bytes() if _user_auth_file(u).exists() else None
             for u in (TEST_USER, OTHER_USER)}
    yield Site(base, config, base / "roothome", name)
    for user, content in saved.items():
        auth = _user_auth_file(user)
        if content is None:
            auth.unlink(missing_ok=True)
        else:
            auth.write_bytes(content)
        shutil.rmtree(Path(pwd.getpwnam(user).pw_dir) / ".local/share" / name, ignore_errors=True)
    shutil.rmtree(base, ignore_errors=True)


def _as_user(user: str, cmd: list[str], site: Site, stdin: str | None = None,
             cwd: str = "/") -> subprocess.CompletedProcess[str]:
    home = pwd.getpwnam(user).pw_dir
    env = ["PATH=/usr/bin:/bin", f"SHIFTER_CONFIG={site.config}", f"HOME={home}", f"USER={user}"]
    return subprocess.run(["runuser", "-u", user, "--", "env", "-i", *env, *cmd], cwd=cwd, input=stdin,
                          capture_output=True, text=True, timeout=300, check=False)


def _as_root(cmd: list[str], site: Site, stdin: str | None = None, cwd: str = "/",
             **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=site.env(**extra), input=stdin, capture_output=True, text=True,
                          timeout=300, check=False)


def _login(site: Site, registry: Registry, user: str | None) -> None:
    cmd = [SHIFTERIMG, "login", "-u", AUTH_USER, "--password-stdin", registry.host]
    res = _as_root(cmd, site, stdin=AUTH_PASSWORD + "\n") if user is None else \
        _as_user(user, cmd, site, stdin=AUTH_PASSWORD + "\n")
    assert res.returncode == 0, res.stderr


def _private_ref(auth_registry: Registry, busybox_image: PushedImage) -> str:
    ref = f"{auth_registry.host}/team/busybox:1"
    push(busybox_image.layout, "t", ref, creds=auth_registry.creds)
    return ref


def _acl(store: ImageStore, ref: str) -> dict[str, object]:
    image_id = store.resolve_tag("docker", ref)
    assert image_id is not None
    return dict(json.loads(store.metadata_path(image_id).read_text())["acl"])


def _can_read(user: str, path: Path, site: Site) -> bool:
    return _as_user(user, ["head", "-c", "4", str(path)], site).returncode == 0


# --------------------------------------------------------------------------- 1: code execution
def test_planted_shifterimg_module_in_the_callers_directory_never_runs_as_root(
        site: Site, busybox_image: PushedImage) -> None:
    evil = site.base / "evil"
    (evil / "shifter/cli").mkdir(parents=True)
    marker = site.base / "pwned"
    payload = f"open({str(marker)!r}, 'w').write(str(__import__('os').getuid()))\n"
    for init in ("shifter/__init__.py", "shifter/cli/__init__.py"):
        (evil / init).write_text(payload)
    (evil / "shifter/cli/shifterimg.py").write_text(payload)
    (evil / "sitecustomize.py").write_text(payload)
    subprocess.run(["chown", "-R", f"{TEST_UID}:{TEST_UID}", str(evil)], check=True)
    res = _as_root([SHIFTER, f"--user={TEST_USER}", f"--image={busybox_image.ref}", "cat", "/app/hello.txt"],
                   site, cwd=str(evil), PYTHONPATH=str(evil), PYTHONSTARTUP=str(evil / "sitecustomize.py"))
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hello from the image\n"
    assert not marker.exists()


# --------------------------------------------------------------------------- 2: root's credentials
def test_roots_registry_credentials_are_not_lent_to_a_user(
        site: Site, auth_registry: Registry, busybox_image: PushedImage) -> None:
    ref = _private_ref(auth_registry, busybox_image)
    _login(site, auth_registry, user=None)  # root is logged in to the registry; the user is not
    res = _as_root([SHIFTER, f"--user={TEST_USER}", f"--image={ref}", "cat", "/app/hello.txt"], site)
    assert res.returncode == 16, res.stderr
    assert "pulling" in res.stderr and "hello from the image" not in res.stdout
    assert site.site_store.resolve_tag("docker", ref) is None  # nothing landed in the site store
    assert not (site.base / "site/tags/docker").exists() or not any((site.base / "site/tags/docker").iterdir())

    _login(site, auth_registry, user=TEST_USER)  # now with the user's own credentials
    res = _as_root([SHIFTER, f"--user={TEST_USER}", f"--image={ref}", "cat", "/app/hello.txt"], site)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hello from the image\n"
    store = site.user_store(TEST_USER)  # the store the user's own pull writes
    assert _acl(store, ref) == {"private": True, "users": [TEST_UID], "groups": []}
    image_id = store.resolve_tag("docker", ref)
    assert image_id is not None
    assert store.squashfs_path(image_id).stat().st_uid == TEST_UID  # written by the user, not by root
    assert site.site_store.resolve_tag("docker", ref) is None

    # Another user without credentials does not get it through root either.
    res = _as_root([SHIFTER, f"--user={OTHER_USER}", f"--image={ref}", "true"], site)
    assert res.returncode == 16, res.stderr
    assert site.user_store(OTHER_USER).resolve_tag("docker", ref) is None


# --------------------------------------------------------------------------- 4: private by default
def test_a_pull_with_credentials_is_private_to_the_puller_unless_public(
        site: Site, auth_registry: Registry, busybox_image: PushedImage) -> None:
    ref = _private_ref(auth_registry, busybox_image)
    _login(site, auth_registry, user=None)
    res = _as_root([SHIFTERIMG, "pull", "-q", ref], site)
    assert res.returncode == 0, res.stderr
    assert _acl(site.site_store, ref) == {"private": True, "users": [], "groups": []}  # root only
    res = _as_user(TEST_USER, [SHIFTER, f"--image={ref}", "true"], site)
    assert res.returncode == 4, res.stderr
    assert "private" in res.stderr

    res = _as_root([SHIFTERIMG, "pull", "-q", "--public", ref], site)  # an admin shares it on purpose
    assert res.returncode == 0, res.stderr
    assert _acl(site.site_store, ref)["private"] is False
    res = _as_user(TEST_USER, [SHIFTER, f"--image={ref}", "cat", "/app/hello.txt"], site)
    assert res.returncode == 0, res.stderr

    res = _as_root([SHIFTERIMG, "-u", TEST_USER, "pull", "-q", "--public", ref], site)
    assert res.returncode == 2 and "--public cannot go with" in res.stderr, res.stderr


# --------------------------------------------------------------------------- 3: access list reset
def test_another_tag_of_a_private_digest_pulled_for_an_outsider_keeps_it_private(
        site: Site, registry: Registry, busybox_image: PushedImage) -> None:
    alias = f"{registry.host}/test/busybox:alias-{uuid.uuid4().hex[:6]}"
    push(busybox_image.layout, "t", alias)  # the same digest under another tag
    res = _as_root([SHIFTERIMG, "-u", TEST_USER, "pull", "-q", busybox_image.ref], site)
    assert res.returncode == 0, res.stderr
    private = {"private": True, "users": [TEST_UID], "groups": []}
    assert _acl(site.site_store, busybox_image.ref) == private

    res = _as_root([SHIFTER, f"--user={OTHER_USER}", f"--image={alias}", "cat", "/app/hello.txt"], site)
    assert res.returncode == 0, res.stderr  # the outsider pulled it as themself, into their own store
    assert _acl(site.site_store, busybox_image.ref) == private
    assert site.site_store.resolve_tag("docker", alias) is None
    res = _as_root([SHIFTER, f"--user={OTHER_USER}", f"--image={busybox_image.ref}", "true"], site)
    assert res.returncode == 4, res.stderr


# --------------------------------------------------------------------------- 5: readable private files
def test_private_image_files_are_closed_to_users_outside_the_list(
        site: Site, busybox_image: PushedImage) -> None:
    res = _as_root([SHIFTERIMG, "-u", TEST_USER, "pull", "-q", busybox_image.ref], site)
    assert res.returncode == 0, res.stderr
    store = site.site_store
    image_id = store.resolve_tag("docker", busybox_image.ref)
    assert image_id is not None
    files = (store.squashfs_path(image_id), store.metadata_path(image_id))
    for path in files:
        assert path.stat().st_mode & 0o007 == 0, path
        assert not _can_read(OTHER_USER, path, site), path
        assert _can_read(TEST_USER, path, site), path
    # No layer of it in the shared blob cache, no partial download, no work files.
    cache = site.base / "site/cache"
    assert [p for p in cache.rglob("*") if p.is_file() and "locks" not in p.parts] == []
    assert list((site.base / "site/.tmp").iterdir()) == []

    listed = _as_user(TEST_USER, [SHIFTER, f"--image={busybox_image.ref}", "cat", "/app/hello.txt"], site)
    assert listed.returncode == 0, listed.stderr  # squashfuse, as the listed user, opens it
    assert listed.stdout == "hello from the image\n"
    outsider = _as_user(OTHER_USER, [SHIFTER, f"--image={busybox_image.ref}", "true"], site)
    assert outsider.returncode == 4 and "private" in outsider.stderr, outsider.stderr
    assert outsider.stderr.count("\n") == 1
    listing = _as_user(OTHER_USER, [SHIFTERIMG, "images"], site)
    assert listing.returncode == 0, listing.stderr
    assert "[private]" in listing.stdout

    # Made public by its owner (root here): readable again; private again: closed again.
    assert _as_root([SHIFTERIMG, "pull", "-q", "--public", busybox_image.ref], site).returncode == 0
    assert all(_can_read(OTHER_USER, path, site) for path in files)
    assert _as_root([SHIFTERIMG, "-g", OTHER_USER, "pull", "-q", busybox_image.ref], site).returncode == 0
    assert _can_read(OTHER_USER, files[0], site)  # through the group entry
    assert not _can_read(TEST_USER, files[0], site)


def test_private_pull_into_a_users_own_store_is_closed_to_others(
        site: Site, busybox_image: PushedImage) -> None:
    res = _as_user(TEST_USER, [SHIFTERIMG, "-u", TEST_USER, "pull", "-q", busybox_image.ref], site)
    assert res.returncode == 0, res.stderr
    store = site.user_store(TEST_USER)
    image_id = store.resolve_tag("docker", busybox_image.ref)
    assert image_id is not None
    for path in (store.squashfs_path(image_id), store.metadata_path(image_id)):
        assert path.stat().st_mode & 0o007 == 0, path  # closed even where the user opens the directories
    cache_files = [p for p in store.cache_dir.rglob("*") if p.is_file() and "locks" not in p.parts]
    assert cache_files == []
