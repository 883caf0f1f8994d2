"""Environment composition: order, path-list joins, hostile names, env files."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shifter.config.site import parse_config
from shifter.errors import ConfigError, UsageError
from shifter.runtime.environment import (
    PRIVILEGED_ENV,
    EnvRules,
    compose_environment,
    identity_env,
    is_unsafe_name,
    parse_assignment,
    parse_env_file,
    read_text_for,
)
from shifter.runtime.spec import Identity


def test_order_caller_image_file_cli_modules_site() -> None:
    result = compose_environment(
        {"A": "caller", "B": "caller", "C": "caller", "D": "caller", "E": "caller", "KEEP": "1"},
        image=["B=image", "C=image", "D=image", "E=image"],
        files=[[("C", "file1"), ("D", "file1")], [("D", "file2")]],
        cli=[("E", "cli"), ("F", "cli")],
        rules=[EnvRules("module_m", set=("F=module", "G=module")), EnvRules("site", set=("G=site",))],
    )
    env = dict(result.env)
    assert env == {"A": "caller", "B": "image", "C": "file1", "D": "file2", "E": "cli", "F": "module",
                   "G": "site", "KEEP": "1"}
    assert [k for k, _ in result.env][:6] == ["A", "B", "C", "D", "E", "KEEP"]  # first position kept


def test_clearenv_drops_the_caller_only() -> None:
    env = dict(compose_environment({"HOME": "/h", "X": "1"}, clearenv=True, image=["PATH=/bin"],
                                   cli=[("Y", "2")]).env)
    assert env == {"PATH": "/bin", "Y": "2"}


def test_append_prepend_unset() -> None:
    rules = [EnvRules("site", append=("PATH=/opt/site/bin", "NEW=/a"), prepend=("LD_LIBRARY_PATH=/opt/lib",
                                                                                  "EMPTY=/b"),
                      unset=("SECRET", "ABSENT"))]
    env = dict(compose_environment({"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": "/u", "EMPTY": "",
                                    "SECRET": "s"}, rules=rules).env)
    assert env["PATH"] == "/usr/bin:/bin:/opt/site/bin"
    assert env["NEW"] == "/a"
    assert env["LD_LIBRARY_PATH"] == "/opt/lib:/u"
    assert env["EMPTY"] == "/b"
    assert "SECRET" not in env


def test_module_rules_apply_before_site_rules() -> None:
    rules = [EnvRules("m", append=("PATH=/m",)), EnvRules("site", append=("PATH=/s",))]
    assert dict(compose_environment({"PATH": "/bin"}, rules=rules).env)["PATH"] == "/bin:/m:/s"


def test_hostile_caller_names_are_dropped_not_fatal() -> None:
    result = compose_environment({"BASH_FUNC_f%%": "() { :; }", "1BAD": "x", "A-B": "y", "OK": "z"})
    assert dict(result.env) == {"OK": "z"}
    assert set(result.dropped) == {"BASH_FUNC_f%%", "1BAD", "A-B"}


def test_hostile_image_env_is_dropped() -> None:
    result = compose_environment({}, image=["GOOD=1", "NOEQUALS", "BAD NAME=x", 42, "=empty"])
    assert dict(result.env) == {"GOOD": "1"}
    assert len(result.dropped) == 4


def test_ld_preload_passes_in_but_is_flagged() -> None:
    result = compose_environment({"LD_PRELOAD": "/evil.so", "LD_LIBRARY_PATH": "/x", "PYTHONPATH": "/p",
                                  "GLIBC_TUNABLES": "x", "HOME": "/h"})
    env = dict(result.env)
    assert env["LD_PRELOAD"] == "/evil.so"
    assert set(result.unsafe) == {"LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "GLIBC_TUNABLES"}
    assert not any(is_unsafe_name(k) for k, _ in PRIVILEGED_ENV)


@pytest.mark.parametrize(("text", "pair"), [
    ("A=1", ("A", "1")), ("A=", ("A", "")), ("_x9=a=b", ("_x9", "a=b")), ("A= spaced ", ("A", " spaced ")),
])
def test_parse_assignment(text: str, pair: tuple[str, str]) -> None:
    assert parse_assignment(text, "--env") == pair


@pytest.mark.parametrize("text", ["A", "=1", "1A=x", "A B=x", "A-B=x", "A=\0", "Ä=x", "export A=1"])
def test_parse_assignment_refuses(text: str) -> None:
    with pytest.raises(UsageError):
        parse_assignment(text, "--env")


def test_site_rule_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        compose_environment({}, rules=[EnvRules("site", set=("bad",))])


def test_env_file_format() -> None:
    text = "# comment\n\nA=1\n  B=two words\nC=x=y\n   # indented comment\nD=\n"
    assert parse_env_file(text, "run.env") == [("A", "1"), ("B", "two words"), ("C", "x=y"), ("D", "")]


def test_env_file_error_names_file_and_line_but_not_content() -> None:
    with pytest.raises(UsageError) as info:
        parse_env_file("A=1\nroot:$6$secrethash:19000:0:99999:7:::\n", "/etc/shadow")
    assert info.value.message.startswith("/etc/shadow:2:")
    assert "secrethash" not in info.value.render()


def test_read_text_for(tmp_path: Path) -> None:
    path = tmp_path / "run.env"
    path.write_text("A=1\n")
    me = Identity(os.getuid(), os.getgid(), (), "me", str(tmp_path))
    assert read_text_for(str(path), me) == "A=1\n"
    with pytest.raises(UsageError, match="not a regular file"):
        read_text_for(str(tmp_path), me)
    with pytest.raises(UsageError, match="cannot open"):
        read_text_for(str(tmp_path / "missing"), me)
    big = tmp_path / "big"
    big.write_text("A=1\n" * 10)
    with pytest.raises(UsageError, match="larger"):
        read_text_for(str(big), me, limit=8)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may search (pytest's tmp_path lies under a root-only one)."""
    path = Path(tempfile.mkdtemp(prefix="shifter-env-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act for another user")
def test_root_acting_for_user_cannot_read_unreadable_env_file(open_dir: Path) -> None:
    path = open_dir / "secret.env"
    path.write_text("A=1\n")
    path.chmod(0o600)  # owned by root
    other = Identity(54321, 54321, (54321,), "other", "/nonexistent")
    with pytest.raises(UsageError, match="Permission denied"):
        read_text_for(str(path), other)
    path.chmod(0o644)
    assert read_text_for(str(path), other) == "A=1\n"
    assert os.geteuid() == 0 and os.getegid() == 0  # root's ids are back


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act for another user")
def test_env_file_behind_a_directory_the_user_cannot_search_is_refused(open_dir: Path) -> None:
    closed = open_dir / "root-only"
    closed.mkdir(mode=0o700)  # like /root: the user may not look inside...
    secret = closed / "app.env"
    secret.write_text("TOKEN=root-secret\n")
    secret.chmod(0o644)  # ...although the file's own mode would let anyone read it
    other = Identity(54321, 54321, (54321,), "other", "/nonexistent")
    with pytest.raises(UsageError, match="Permission denied"):
        read_text_for(str(secret), other)
    link = open_dir / "link.env"  # nor through a symlink the user planted
    link.symlink_to(secret)
    with pytest.raises(UsageError, match="Permission denied"):
        read_text_for(str(link), other)
    assert os.geteuid() == 0


def test_rules_from_config() -> None:
    config = parse_config("siteEnv=A=1 B=2\nsiteEnvAppend=PATH=/s\nsiteEnvUnset=X\n"
                          "module_m_siteEnvPrepend=PATH=/m\n")
    site = EnvRules.from_site(config)
    assert site.set == ("A=1", "B=2") and site.append == ("PATH=/s",) and site.unset == ("X",)
    assert EnvRules.from_module(config.module("m")).prepend == ("PATH=/m",)


def test_identity_fills_what_the_caller_lacks_or_replaces_all_for_another_user() -> None:
    ident = identity_env(Identity(7, 7, (7,), "bob", "/home/bob", "/bin/zsh"))
    assert ident == (("HOME", "/home/bob"), ("USER", "bob"), ("LOGNAME", "bob"), ("SHELL", "/bin/zsh"))
    root_env = {"HOME": "/root", "USER": "root", "X": "1"}
    own = dict(compose_environment(root_env, identity=ident).env)
    assert (own["HOME"], own["USER"], own["LOGNAME"], own["SHELL"]) == ("/root", "root", "bob", "/bin/zsh")
    other = dict(compose_environment(root_env, identity=ident, replace_identity=True, image=["HOME=/img"]).env)
    assert (other["HOME"], other["USER"], other["LOGNAME"]) == ("/img", "bob", "bob")  # image ENV still wins
    cleared = dict(compose_environment(root_env, clearenv=True, identity=ident).env)
    assert cleared == dict(ident)
    assert "SHELL" not in dict(identity_env(Identity(7, 7, (), "bob", "/home/bob")))
