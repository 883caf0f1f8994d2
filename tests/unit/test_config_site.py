"""udiRoot.conf parsing and validation (format, types, modules, env rules, trust)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shifter.config import site
from shifter.config.site import (
    SYSTEM_BIND_SOURCES,
    SiteConfig,
    check_file_trust,
    check_mount_dirs,
    expand_user_path,
    load_config,
    parse_config,
    parse_lines,
)
from shifter.errors import ConfigError
from shifter.runtime.plan import SYSTEM_BINDS


def test_format_comments_continuation() -> None:
    text = "# c\n\n  # indented\nimagePath=/a\nsiteFs=/home;\\\n/scratch:/scratch\n"
    assert parse_lines(text) == [(4, "imagePath", "/a"), (5, "siteFs", "/home;/scratch:/scratch")]
    config = parse_config(text)
    assert config.image_path == "/a" and config.site_fs == ("/home", "/scratch:/scratch")


@pytest.mark.parametrize(("text", "words"), [
    ("imagePaht=/a\n", "unknown key 'imagePaht'"),
    ("no equals sign\n", "expected key=value"),
    ("imagePath=relative\n", "absolute"),
    ("allowLocalChroot=maybe\n", "boolean"),
    ("maxGroupCount=-1\n", "negative"),
    ("maxGroupCount=x\n", "integer"),
    ("maxGroupCount=100000\n", "too large"),
    ("cacheMaxSize=huge\n", "size"),
    ("squashfsCompression=brotli\n", "squashfsCompression"),
    ("defaultModules=nope\n", "unknown module"),
    ("module_a_conflict=b\n", "unknown module 'b'"),
    ("imagePath=/a\\\n", "continuation"),
    ("siteEnv=NOVALUE\n", "siteEnv entry 'NOVALUE'"),
    ("siteEnv=1BAD=x\n", "siteEnv entry"),
    ("siteEnvAppend=A-B=x\n", "siteEnvAppend"),
    ("siteEnvPrepend==x\n", "siteEnvPrepend"),
    ("siteEnvUnset=A=1\n", "siteEnvUnset"),
    ("module_m_siteEnv=bad\n", "module_m_siteEnv"),
    ("module_m_siteEnvUnset=a-b\n", "module_m_siteEnvUnset"),
    ("defaultModules=none,m\nmodule_m_siteEnv=A=1\n", "mixes 'none'"),
    ("defaultModules=a,b\nmodule_a_conflict=b\nmodule_b_siteEnv=B=1\n", "conflicting modules 'a' and 'b'"),
    ("defaultImageType=podman\n", "defaultImageType"),
    ("module_m_enabled=perhaps\n", "boolean"),
])
def test_bad_config(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "site.conf")
    assert words in info.value.message


def test_error_names_file_and_line() -> None:
    with pytest.raises(ConfigError, match=r"^site.conf:3: unknown key"):
        parse_config("imagePath=/a\n\nbogus=1\n", "site.conf")


def test_values() -> None:
    config = parse_config("allowLocalChroot=yes\nmaxGroupCount=8\ncacheMaxSize=500M\nsiteEnv=A=1 B=x=y\n"
                          "imageGateway=http://a http://b\ndefaultModules=m\nmodule_m_siteFs=/x:/y;/z\n"
                          "module_m_conflict=n\nmodule_n_enabled=0\nregistryMirror_docker.io=http://m1/ http://m2\n"
                          "udiRootPath=/ignored\n")
    assert config.allow_local_chroot and config.max_group_count == 8
    assert config.cache_max_size == 500 * 1024**2
    assert config.site_env == ("A=1", "B=x=y") and config.image_gateway == ("http://a", "http://b")
    assert config.module("m").site_fs == ("/x:/y", "/z") and config.module("m").conflict == ("n",)
    assert not config.module("n").enabled
    assert config.mirrors_for("docker.io") == ["http://m1", "http://m2"]
    with pytest.raises(ConfigError, match="unknown module"):
        config.module("zzz")


def test_defaults_when_default_file_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "none.conf"
    monkeypatch.setattr(site, "DEFAULT_CONFIG_PATH", str(path))
    monkeypatch.delenv("SHIFTER_CONFIG", raising=False)
    assert load_config(privileged=False) == SiteConfig(source=str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(privileged=True)


@pytest.mark.parametrize("privileged", [False, True])
def test_named_config_that_is_missing_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  privileged: bool) -> None:
    path = tmp_path / "none.conf"
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(path), privileged=privileged)
    monkeypatch.setenv("SHIFTER_CONFIG", str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(privileged=privileged)


@pytest.mark.parametrize("privileged", [False, True])
def test_config_that_is_a_directory_or_link_is_refused(tmp_path: Path, privileged: bool) -> None:
    if privileged and os.geteuid() != 0:
        pytest.skip("the trust check wants a root-owned file")
    (tmp_path / "real.conf").write_text("system=x\n")
    (tmp_path / "link.conf").symlink_to("real.conf")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(str(tmp_path), privileged=privileged)
    with pytest.raises(ConfigError, match="symbolic link"):
        load_config(str(tmp_path / "link.conf"), privileged=privileged)


def test_load_and_trust(tmp_path: Path) -> None:
    path = tmp_path / "udiRoot.conf"
    path.write_text("system=test\n")
    path.chmod(0o644)
    assert load_config(str(path)).system == "test"
    if os.geteuid() == 0:
        assert load_config(str(path), privileged=True).system == "test"
        path.chmod(0o666)
        with pytest.raises(ConfigError, match="writable"):
            load_config(str(path), privileged=True)


def test_check_file_trust_owner(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("")
    st = os.stat(path)
    fake = os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, 1234, st.st_gid, st.st_size,
                           0, 0, 0))
    with pytest.raises(ConfigError, match="not owned by root"):
        check_file_trust(str(path), fake)


def test_expand_user_path() -> None:
    assert expand_user_path("~/.local/x", "/home/a") == Path("/home/a/.local/x")
    assert expand_user_path("/abs/x", "/home/a") == Path("/abs/x")


# --- udiMount/loopMount outside every tree a container binds -------------------------------------

@pytest.mark.parametrize("text", [
    "udiMount=/tmp/udi\n", "loopMount=/tmp/shifter/loop\n", "udiMount=/var/tmp/x\n", "loopMount=/dev/shm/l\n",
    "udiMount=/proc/x\n", "udiMount=/sys/fs/x\n", "udiMount=/tmp\n", "udiMount=/\n",
    "siteFs=/scratch:/scratch\nudiMount=/scratch/udi\n", "siteFs=/var/lib\n",
    'siteFs="/var/lib/shifter:/s:ro"\n', "siteFs=/a:/a;/var:/hostvar\n",
    "module_m_siteFs=/var/lib/shifter/loopMount:/l\n",
    "udiMount=/srv/u\nloopMount=/srv/u/loop\n",
], ids=lambda text: text.strip().replace("\n", " "))
def test_setup_tree_under_a_tree_containers_bind_is_refused(text: str) -> None:
    config = parse_config(text, "u.conf")
    with pytest.raises(ConfigError) as info:
        check_mount_dirs(config)
    assert info.value.message.startswith("u.conf: ") and "overlap" in info.value.message
    assert info.value.hint


@pytest.mark.parametrize("text", [
    "", "siteFs=/home;/global/scratch:/scratch:rec\n", "udiMount=/srv/udi\nloopMount=/srv/loop\n",
    "siteFs=/var/lib/other:/o\n", "udiMount=/tmpfoo/u\n", "siteFs=/var/lib/shifterx:/x\n",
])
def test_setup_tree_elsewhere_is_accepted(text: str) -> None:
    check_mount_dirs(parse_config(text, "u.conf"))


def test_system_bind_sources_are_the_plans() -> None:
    assert tuple(bind[0] for bind in SYSTEM_BINDS) == SYSTEM_BIND_SOURCES


def test_registry_timeout_is_connect_idle_total_seconds() -> None:
    assert SiteConfig().registry_timeout == (10, 30, 3600)
    assert parse_config("registryTimeout=5, 20 ,600\n").registry_timeout == (5, 20, 600)
    for bad in ("5,20", "0,1,2", "a,b,c", "1,2,3,4", "-1,2,3"):
        with pytest.raises(ConfigError, match="registryTimeout"):
            parse_config(f"registryTimeout={bad}\n")
