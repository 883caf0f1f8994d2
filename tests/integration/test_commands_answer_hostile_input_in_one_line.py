"""Every installed command, driven with hostile input, answers with one error line and a documented
exit code: never a Python traceback on stderr (the command boundary, ``shifter.cli.boundary``).

The commands run as real processes (the installed ``shifter``, ``shifterimg``, ``shifter-gateway``,
``shifter-setup``, ``shifter-teardown``), as root and as an unprivileged user, against a real store, a
real registry that misbehaves on purpose (``tests.fixtures.hostile_registry``) and files a user
controls.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shifter.oci.reference import parse_reference
from shifter.store.layout import ImageStore
from tests.fixtures.hostile_registry import hostile_registry
from tests.fixtures.runtime import TEST_UID, TEST_USER, VENV_BIN, ensure_user

pytestmark = [pytest.mark.integration, pytest.mark.root]

DEEP_ID = "d" * 64
COMMANDS = ("shifter", "shifterimg", "shifter-gateway", "shifter-setup", "shifter-teardown")


class World:
    """A site (config, site store, a per-user store for the test user) under one directory."""

    def __init__(self, base: Path, registry: str) -> None:
        self.base, self.registry = base, registry
        self.site, self.user_store = base / "site", base / "ustore"
        self.conf = base / "udiRoot.conf"

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "HOME": str(self.base / "home"), "SHIFTER_CONFIG": str(self.conf),
                "TMPDIR": str(self.base / "tmp"), **extra}

    def run(self, *argv: str, user: bool = False, stdin: str = "", timeout: float = 120,
            **env: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(VENV_BIN / argv[0]), *argv[1:]]
        if user:
            cmd = ["setpriv", f"--reuid={TEST_UID}", f"--regid={TEST_UID}", "--clear-groups", *cmd]
        return subprocess.run(cmd, env=self.env(**env), input=stdin, capture_output=True, text=True,
                              timeout=timeout, check=False, cwd="/")


@pytest.fixture
def world() -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.skip("needs root (runs commands as root and as the test user)")
    ensure_user()
    base = Path(tempfile.mkdtemp(prefix="shifter-hostile-", dir="/var/tmp"))
    os.chmod(base, 0o755)
    for sub in ("site", "home", "tmp"):
        (base / sub).mkdir()
    os.chmod(base / "tmp", 0o1777)
    with hostile_registry() as registry:
        world = World(base, registry)
        world.conf.write_text(f"imagePath={world.site}\nuserImagePath={world.user_store}\n"
                              f"udiMount={base / 'udiMount'}\nloopMount={base / 'loopMount'}\nsystem=testsys\n")
        _plant_deep_image(world.user_store)
        yield world
    subprocess.run(["umount", "-l", str(base / "udiMount")], capture_output=True, check=False)
    shutil.rmtree(base, ignore_errors=True)


def _plant_deep_image(root: Path) -> None:
    """A per-user store (owned by the test user) whose image metadata is ``[`` x 100,000."""
    store = ImageStore(root)
    tag = store.tag_path("docker", str(parse_reference("deep:1")))
    tag.parent.mkdir(parents=True)
    tag.write_text(DEEP_ID + "\n")
    store.metadata_path(DEEP_ID).write_text("[" * 100_000)
    store.squashfs_path(DEEP_ID).write_bytes(b"")
    for path in (root, *root.rglob("*")):
        os.chown(path, TEST_UID, TEST_UID)


def assert_one_error_line(proc: subprocess.CompletedProcess[str], prog: str, code: int) -> None:
    """No traceback; stderr ends with exactly one ``prog: error: ... (hint: ...)`` line; exit ``code``."""
    err = proc.stderr
    assert "Traceback" not in err and 'File "' not in err, err
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert "(hint: " in errors[0], err
    assert proc.returncode == code, err


def test_config_that_is_a_directory_is_one_line_in_every_command(world: World) -> None:
    for prog, args in (("shifterimg", ["images"]), ("shifter-gateway", ["status"]),
                       ("shifter", ["--image=busybox", "true"]),
                       ("shifter-setup", ["--image=busybox", f"--user={TEST_USER}"]), ("shifter-teardown", [])):
        proc = world.run(prog, *args, SHIFTER_CONFIG=str(world.base))
        assert_one_error_line(proc, prog, 2)
        assert "is a directory" in proc.stderr


def test_unreadable_config_files_are_one_line(world: World) -> None:
    for path in ("/proc/self/mem", "/dev/zero", "/etc/shadow"):
        proc = world.run("shifterimg", "images", user=True, SHIFTER_CONFIG=path)
        assert_one_error_line(proc, "shifterimg", 2)


def test_hostile_registry_answers_are_one_line(world: World, tmp_path: Path) -> None:
    reg = world.registry
    assert_one_error_line(world.run("shifterimg", "pull", f"{reg}/loop/app:1"), "shifterimg", 5)
    proc = world.run("shifterimg", "pull", f"{reg}/deep/app:1")
    assert_one_error_line(proc, "shifterimg", 8)
    assert "nested too deeply" in proc.stderr
    # shifter's auto-pull meets the same registry: its own one line, after shifterimg's
    proc = world.run("shifter", f"--image={reg}/deep/app:1", "true")
    assert_one_error_line(proc, "shifter", 16)


def test_bad_arguments_are_one_line(world: World) -> None:
    junk = world.base / "tmp" / "not-an-archive.txt"
    junk.write_text("hello, not a tarball\n")
    cases: list[tuple[list[str], int]] = [
        (["shifterimg", "import", str(junk), "docker:x:1"], 11),
        (["shifterimg", "pull", ""], 2),
        (["shifterimg", "pull", "dokcer:ubuntu:22.04"], 2),
        (["shifterimg", "inspect", "id:zz"], 2),
        (["shifterimg", "rm", "id:0123456789ab"], 3),
        (["shifterimg", "lookup", "x" * 5000], 2),
        (["shifterimg", "-s", "other", "images"], 2),
        (["shifterimg", "nosuchcommand"], 2),
        (["shifter-gateway", "prune", "--max-size", "lots"], 2),
        (["shifter-gateway", "nosuchcommand"], 2),
        (["shifter", "--image=local:/srv", "true"], 4),
        (["shifter", "--image=id:zz", "true"], 2),
        (["shifter", "--nosuchoption"], 2),
        (["shifter-setup"], 2),
        (["shifter-teardown", "extra"], 2),
    ]
    for argv, code in cases:
        assert_one_error_line(world.run(*argv), argv[0], code)


def test_deeply_nested_user_metadata_is_one_line(world: World) -> None:
    for argv, code in ((["shifterimg", "lookup", "deep:1"], 1), (["shifterimg", "inspect", "deep:1"], 13),
                       (["shifter", "--image=deep:1", "true"], 13)):
        proc = world.run(*argv, user=True)
        assert_one_error_line(proc, argv[0], code)
        assert code != 13 or "nested too deeply" in proc.stderr
    proc = world.run("shifterimg", "images", user=True)
    assert "Traceback" not in proc.stderr and proc.returncode == 0, proc.stderr
    # root acting for the user reads the user's metadata with the user's rights: same answer
    proc = world.run("shifter", f"--user={TEST_USER}", "--image=deep:1", "true")
    assert_one_error_line(proc, "shifter", 13)


def test_unreadable_site_store_is_one_line(world: World) -> None:
    os.chmod(world.site, 0o700)
    for argv in (["shifterimg", "images"], ["shifter-gateway", "status"]):
        proc = world.run(*argv, user=True)
        assert_one_error_line(proc, argv[0], 13)
        assert str(world.site) in proc.stderr


def test_every_command_has_a_version(world: World) -> None:
    for prog in COMMANDS:
        proc = world.run(prog, "--version")
        assert proc.returncode == 0 and proc.stdout.startswith(f"{prog}, version "), proc.stderr


def test_hung_and_trickling_registries_fail_within_registry_timeout(world: World) -> None:
    """registryTimeout=CONNECT,IDLE,TOTAL: a registry that never answers fails after the retries of
    IDLE; one that sends a byte every 0.3 s (never idle) fails after TOTAL for the blob."""
    world.conf.write_text(world.conf.read_text() + "registryTimeout=2,1,3\n")
    for repo, words in (("hang", "timed out"), ("trickle", "did not deliver blob")):
        proc = world.run("shifterimg", "pull", f"{world.registry}/{repo}/app:1", timeout=60)
        assert_one_error_line(proc, "shifterimg", 7)
        assert f"registry {world.registry}" in proc.stderr and words in proc.stderr
