"""Every tool trusts the site configuration by the same rules as ``shifter``.

``udiRoot.conf`` sets root's image store, database and mount points: root trusts only a
root-owned regular file that group and others cannot write, never through a symbolic link; a
file named by ``$SHIFTER_CONFIG`` that does not exist is an error for everyone (no silent
fall-back to the defaults).  Each attack runs every tool, as root and as the test user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.runtime import (
    IS_ROOT,
    TEST_UID,
    TEST_USER,
    VENV_BIN,
    ensure_user,
    needs_root,
    scratch_dir,
    shifter_env,
)

pytestmark = pytest.mark.integration

# (tool, arguments): every command that loads the site configuration.
TOOLS = [
    ("shifterimg", ("images",)),
    ("shifterimg", ("pull", "docker:busybox:latest")),
    ("shifter-gateway", ("status",)),
    ("shifter-setup", ("--image=docker:busybox:latest", f"--user={TEST_USER}")),
    ("shifter-teardown", ()),
    ("shifter", ("--image=docker:busybox:latest", "/bin/true")),
]
IDS = [" ".join([tool, *args[:1]]) for tool, args in TOOLS]
ROOT_ONLY = ("shifter-setup", "shifter-teardown")


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory every user can search, holding a usable configuration body."""
    path = scratch_dir("shifter-conftrust-")
    os.chmod(path, 0o755)
    (path / "images").mkdir()
    (path / "text").write_text(f"imagePath={path / 'images'}\nudiMount={path / 'udi'}\n"
                               f"loopMount={path / 'loop'}\nsystem=trusttest\n")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _config(base: Path, kind: str) -> Path:
    """A configuration file of ``kind``: world-writable, user-owned, a link to a user-owned one,
    or missing."""
    conf = base / f"{kind}.conf"
    if kind == "missing":
        return conf
    target = base / "user-owned-target.conf" if kind == "symlink" else conf
    shutil.copy(base / "text", target)
    os.chmod(target, 0o666 if kind == "world-writable" else 0o644)
    if kind in ("user-owned", "symlink"):
        ensure_user()
        os.chown(target, TEST_UID, TEST_UID)
    if kind == "symlink":
        conf.symlink_to(target)
    return conf


def _run(config: Path, tool: str, args: tuple[str, ...], as_user: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [str(VENV_BIN / tool), *args]
    env: dict[str, str] | None = shifter_env(config)
    if as_user:
        cmd = ["runuser", "-u", TEST_USER, "--", "env", "-i", *(f"{k}={v}" for k, v in shifter_env(config).items()),
               *cmd]
        env = None
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False, cwd="/",
                          stdin=subprocess.DEVNULL)


def _assert_one_line_error(res: subprocess.CompletedProcess[str], tool: str, what: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{tool}: error: site configuration "), res.stderr
    assert what in lines[0], lines[0]
    assert "Traceback" not in res.stderr


@needs_root
@pytest.mark.parametrize(("kind", "why"), [("world-writable", "writable"), ("user-owned", "not owned by root"),
                                           ("symlink", "symbolic link"), ("missing", "does not exist")])
@pytest.mark.parametrize(("tool", "args"), TOOLS, ids=IDS)
def test_root_refuses_an_untrusted_or_missing_config(base: Path, tool: str, args: tuple[str, ...], kind: str,
                                                     why: str) -> None:
    res = _run(_config(base, kind), tool, args)
    _assert_one_line_error(res, tool, why)


@pytest.mark.skipif(not IS_ROOT, reason="runs the tools as the test user through runuser")
@pytest.mark.parametrize(("tool", "args"), [t for t in TOOLS if t[0] not in ROOT_ONLY],
                         ids=[i for i, t in zip(IDS, TOOLS, strict=True) if t[0] not in ROOT_ONLY])
def test_user_with_a_missing_named_config_gets_an_error_not_defaults(base: Path, tool: str,
                                                                     args: tuple[str, ...]) -> None:
    ensure_user()
    res = _run(_config(base, "missing"), tool, args, as_user=True)
    _assert_one_line_error(res, tool, "does not exist")


@needs_root
@pytest.mark.parametrize("kind", ["directory", "fifo"])
@pytest.mark.parametrize(("tool", "args"), TOOLS, ids=IDS)
def test_config_naming_a_directory_or_fifo_is_refused_without_blocking(base: Path, tool: str,
                                                                       args: tuple[str, ...], kind: str) -> None:
    conf = base / "odd.conf"
    conf.mkdir() if kind == "directory" else os.mkfifo(conf, 0o644)
    why = "is a directory" if kind == "directory" else "not a regular file"
    _assert_one_line_error(_run(conf, tool, args), tool, why)
