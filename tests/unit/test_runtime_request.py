"""build_spec: argv + environment + config + caller -> ContainerSpec (command, env, volumes, identity)."""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from shifter.config.site import SiteConfig, parse_config
from shifter.errors import ConfigError, UsageError, VolumeError
from shifter.runtime.images import ImageNotInStoreError
from shifter.runtime.options import ShifterOptions
from shifter.runtime.request import build_spec, chdir_candidates, lookup_identity, select_command
from shifter.runtime.spec import ContainerSpec, Identity

IMAGE_ID = "5e" * 32
ALICE = Identity(uid=5001, gid=5001, groups=(5001,), user="alice", home="/nonexistent/alice")
ROOT = Identity(uid=0, gid=0, groups=(0,), user="root", home="/root")
META = {"schema": 1, "status": "READY", "id": IMAGE_ID,
        "env": ["PATH=/usr/bin:/bin", "IMG=1", "SHARED=image"], "entrypoint": ["/entry.sh", "--flag"],
        "cmd": ["serve", "--port=1"], "workdir": "/app",
        "acl": {"private": False, "users": [], "groups": []}}


@pytest.fixture
def config(tmp_path: Path) -> SiteConfig:
    store = tmp_path / "images"
    (store / "tags" / "docker").mkdir(parents=True)
    (store / f"{IMAGE_ID}.squashfs").write_bytes(b"hsqs")
    (store / f"{IMAGE_ID}.json").write_text(json.dumps(META))
    quoted = urllib.parse.quote("docker.io/library/app:1", safe="")
    (store / "tags" / "docker" / quoted).write_text(IMAGE_ID + "\n")
    text = (f"imagePath={store}\n"
            "siteFs=/home;/global/scratch:/scratch:rec\n"
            "siteEnv=SITE=1\nsiteEnvAppend=PATH=/opt/site/bin\nsiteEnvUnset=UNWANTED\n"
            "defaultModules=gpu\n"
            "module_gpu_siteEnv=GPU=1\nmodule_gpu_siteFs=/opt/nvidia:/opt/nvidia:ro\n"
            "module_mpi_siteEnvPrepend=PATH=/opt/mpi/bin\n")
    return parse_config(text, "test.conf")


@pytest.fixture
def env_dir() -> Iterator[Path]:
    """A directory the (fake) caller may search: when the suite runs as root, env files are
    read with the caller's rights, and pytest's tmp_path lies under a root-only directory."""
    path = Path(tempfile.mkdtemp(prefix="shifter-request-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def spec(config: SiteConfig, *argv: str, environ: dict[str, str] | None = None,
         caller: Identity = ALICE, **kw: Any) -> ContainerSpec:
    env = {"HOME": "/home/alice", "PATH": "/host/bin", "UNWANTED": "x", "SHARED": "caller"}
    env.update(environ or {})
    return build_spec(list(argv), env, config, caller, "/home/alice/work", **kw)


def test_basic_spec(config: SiteConfig) -> None:
    s = spec(config, "--image=app:1", "ls", "-l")
    assert s.argv == ("ls", "-l")
    assert s.image.image_id == IMAGE_ID and s.identity == ALICE
    assert not s.privileged and not s.run_as_root
    assert s.modules == ("gpu",)
    assert [(v.source, v.target, v.origin) for v in s.volumes] == [
        ("/home", "/home", "site"), ("/global/scratch", "/scratch", "site"),
        ("/opt/nvidia", "/opt/nvidia", "module:gpu")]
    assert s.cwd == "/home/alice/work" and s.workdir == "/app"
    assert s.chdir_candidates == ("/home/alice/work", "/app")


def test_environment_order_in_spec(config: SiteConfig, env_dir: Path) -> None:
    env_file = env_dir / "run.env"
    env_file.write_text("# x\nFROMFILE=1\nSHARED=file\n")
    s = spec(config, "-i", "app:1", f"--env-file={env_file}", "-e", "SHARED=cli", "-m", "gpu,mpi", "true")
    env = dict(s.env)
    assert env["PATH"] == "/opt/mpi/bin:/usr/bin:/bin:/opt/site/bin"  # image, module prepend, site append
    assert env["SHARED"] == "cli" and env["FROMFILE"] == "1" and env["IMG"] == "1"
    assert env["GPU"] == "1" and env["SITE"] == "1" and env["HOME"] == "/home/alice"
    assert "UNWANTED" not in env


def test_clearenv(config: SiteConfig) -> None:
    env = dict(spec(config, "-E", "-i", "app:1", environ={"CALLER_ONLY": "1"}).env)
    assert "CALLER_ONLY" not in env and env["IMG"] == "1"
    # The identity variables are the user's, from the passwd entry (no SHELL: ALICE has none).
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == ("/nonexistent/alice", "alice", "alice")
    assert "SHELL" not in env


BOB_ENTRY = Identity(uid=5002, gid=5002, groups=(5002,), user="bob", home="/home/bob", shell="/bin/zsh")
ROOT_ENV = {"HOME": "/root", "USER": "root", "LOGNAME": "root", "SHELL": "/bin/bash", "MAIL": "/var/mail/root"}


@pytest.mark.parametrize("clearenv", [False, True], ids=["env", "clearenv"])
def test_root_acting_for_a_user_passes_the_users_identity_not_roots(config: SiteConfig, clearenv: bool) -> None:
    s = spec(config, "-i", "app:1", "--user=bob", *(["-E"] if clearenv else []), caller=ROOT,
             environ=ROOT_ENV, lookup_user=lambda _name: BOB_ENTRY)
    env = dict(s.env)
    assert (env["HOME"], env["USER"], env["LOGNAME"], env["SHELL"]) == ("/home/bob", "bob", "bob", "/bin/zsh")


def test_the_callers_own_identity_variables_are_kept(config: SiteConfig) -> None:
    env = dict(spec(config, "-i", "app:1", environ={"HOME": "/scratch/alice", "USER": "al"}).env)
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == ("/scratch/alice", "al", "alice")


def test_image_env_and_env_option_still_override_the_identity(config: SiteConfig) -> None:
    env = dict(spec(config, "-i", "app:1", "--user=bob", "-e", "HOME=/work", caller=ROOT, environ=ROOT_ENV,
                    lookup_user=lambda _name: BOB_ENTRY).env)
    assert env["HOME"] == "/work"


def test_ld_preload_is_flagged(config: SiteConfig) -> None:
    s = spec(config, "-i", "app:1", environ={"LD_PRELOAD": "/tmp/evil.so"})
    assert ("LD_PRELOAD", "/tmp/evil.so") in s.env
    assert "LD_PRELOAD" in s.unsafe_env


def test_image_from_environment(config: SiteConfig) -> None:
    s = spec(config, "bash", environ={"SHIFTER_IMAGE": "app:1", "SHIFTER_VOLUME": "/data:/data"})
    assert s.argv == ("bash",) and s.volumes[-1].target == "/data"


def test_no_image(config: SiteConfig) -> None:
    with pytest.raises(UsageError, match="no image"):
        spec(config, "ls")


def test_help_is_not_a_spec(config: SiteConfig) -> None:
    with pytest.raises(UsageError, match="help"):
        spec(config, "--help")


@pytest.mark.parametrize(("argv", "expected"), [
    ((), ("/bin/sh",)),
    (("echo", "hi"), ("echo", "hi")),
])
def test_command_without_entrypoint(config: SiteConfig, argv: tuple[str, ...],
                                    expected: tuple[str, ...]) -> None:
    assert spec(config, "-i", "app:1", *argv).argv == expected


@pytest.mark.parametrize(("options", "argv", "expected"), [
    (["--entrypoint"], [], ("/entry.sh", "--flag", "serve", "--port=1")),
    (["--entrypoint"], ["--", "arg1"], ("/entry.sh", "--flag", "arg1")),
    (["--entrypoint=/bin/run -q 'a b'"], [], ("/bin/run", "-q", "a b", "serve", "--port=1")),
    (["--entrypoint=/bin/run"], ["x"], ("/bin/run", "x")),
])
def test_command_with_entrypoint(config: SiteConfig, options: list[str], argv: list[str],
                                 expected: tuple[str, ...]) -> None:
    assert spec(config, "-i", "app:1", *options, *argv).argv == expected


def test_entrypoint_without_image_entrypoint() -> None:
    opts = ShifterOptions(image="x", entrypoint=True)
    with pytest.raises(UsageError, match="no ENTRYPOINT"):
        select_command(opts, {"entrypoint": None, "cmd": ["x"]})
    with_args = ShifterOptions(image="x", entrypoint=True, args=("a",))
    assert select_command(with_args, {"entrypoint": ["/e"]}) == ("/e", "a")
    with pytest.raises(UsageError, match="No closing quotation"):
        select_command(ShifterOptions(entrypoint=True, entrypoint_cmd="'open"), {})


@pytest.mark.parametrize(("given", "workdir", "expected"), [
    (False, None, ("/cwd", "/img")),
    (True, "/app", ("/app",)),
    (True, None, ("/img",)),
])
def test_chdir_candidates(given: bool, workdir: str | None, expected: tuple[str, ...]) -> None:
    assert chdir_candidates(given, workdir, "/cwd", "/img") == expected
    assert chdir_candidates(True, None, "/cwd", "") == ("/cwd",)
    assert chdir_candidates(False, None, "/same", "/same") == ("/same",)


def test_workdir_option(config: SiteConfig) -> None:
    s = spec(config, "-i", "app:1", "--workdir=/srv//x/", "pwd")
    assert s.workdir == "/srv/x" and s.chdir_candidates == ("/srv/x",)
    with pytest.raises(UsageError):
        spec(config, "-i", "app:1", "--workdir=rel")
    with pytest.raises(UsageError):
        spec(config, "-i", "app:1", "--workdir=/a/../etc")


def test_user_volume_errors_before_image_lookup(config: SiteConfig) -> None:
    # the image does not exist either; the volume error must win (no pull for a doomed request)
    with pytest.raises(VolumeError):
        spec(config, "-i", "missing:1", "-V", "/x:/etc")


def test_user_volume_over_site_volume(config: SiteConfig) -> None:
    with pytest.raises(VolumeError, match="/home"):
        spec(config, "-i", "app:1", "--volume=/tmp:/home")


def test_bad_site_fs_is_a_config_error(config: SiteConfig) -> None:
    with pytest.raises(ConfigError, match=r"test\.conf"):
        spec(replace(config, site_fs=("/x:/etc",)), "-i", "app:1")


def test_missing_image_is_pullable(config: SiteConfig) -> None:
    with pytest.raises(ImageNotInStoreError) as info:
        spec(config, "-i", "missing:1")
    assert info.value.request == "docker:docker.io/library/missing:1"


def test_env_errors(config: SiteConfig, env_dir: Path) -> None:
    with pytest.raises(UsageError, match="--env"):
        spec(config, "-i", "app:1", "-e", "1BAD=x")
    bad = env_dir / "bad.env"
    bad.write_text("OK=1\nnot a line\n")
    with pytest.raises(UsageError, match=f"{bad}:2"):
        spec(config, "-i", "app:1", f"--env-file={bad}")


def test_module_errors(config: SiteConfig) -> None:
    with pytest.raises(UsageError, match="unknown module"):
        spec(config, "-i", "app:1", "-m", "cuda")
    assert spec(config, "-i", "app:1", "-m", "none").modules == ()
    assert spec(config, "-i", "app:1", environ={"SHIFTER_MODULE": "mpi"}).modules == ("mpi",)


def test_user_option_needs_root(config: SiteConfig) -> None:
    with pytest.raises(UsageError, match="only for root"):
        spec(config, "-i", "app:1", "--user=bob")
    assert spec(config, "-i", "app:1", "--user=alice").identity == ALICE


def test_root_with_user(config: SiteConfig) -> None:
    bob = Identity(uid=5002, gid=5002, groups=(5002,), user="bob", home="/nonexistent/bob")
    seen: list[str] = []

    def lookup(name: str) -> Identity:
        seen.append(name)
        return bob

    s = spec(config, "-i", "app:1", "--user=bob", caller=ROOT, lookup_user=lookup)
    assert seen == ["bob"] and s.identity == bob and s.privileged and not s.run_as_root


def test_root_without_user_runs_as_root(config: SiteConfig) -> None:
    s = spec(config, "-i", "app:1", caller=ROOT)
    assert s.privileged and s.run_as_root and s.identity == ROOT


def test_env_file_is_read_for_the_target_identity(config: SiteConfig, tmp_path: Path) -> None:
    env_file = tmp_path / "x.env"
    env_file.write_text("A=1\n")
    calls: list[tuple[str, Identity]] = []

    def reader(path: str, ident: Identity) -> str:
        calls.append((path, ident))
        return "A=2\n"

    s = spec(config, "-i", "app:1", f"--env-file={env_file}", read_file=reader)
    assert calls == [(str(env_file), ALICE)] and ("A", "2") in s.env


def test_lookup_identity_real_user() -> None:
    root = lookup_identity("root")
    assert root.uid == 0 and root.user == "root" and 0 in root.groups
    assert lookup_identity("0").user == "root"
    with pytest.raises(UsageError, match="unknown user"):
        lookup_identity("no-such-user-xyz")
