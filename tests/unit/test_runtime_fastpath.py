"""The prepared-container fast path gives exactly the full path's result, or steps aside.

For a table of requests, ``shifter.runtime.linux.fastpath`` (parse, decide) and the full path
(``request.build_spec`` -> ``prepared`` match -> ``plan.prepared_entry_plan``) must produce the same
argv, environment and working-directory candidates; for anything unusual the fast path returns
``None`` (the full path then runs).  A changed configuration or store file invalidates the record.
"""

from __future__ import annotations

import errno
import json
import os
import posix
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from shifter.config import site as site_config
from shifter.config.site import SiteConfig, load_config, parse_config
from shifter.errors import AccessDeniedError, ShifterError
from shifter.runtime import prepared, request
from shifter.runtime.environment import identity_env
from shifter.runtime.images import check_access
from shifter.runtime.linux import fastpath
from shifter.runtime.options import parse_options
from shifter.runtime.plan import Chdir, Exec, prepared_entry_plan
from shifter.runtime.spec import Identity

IMAGE_ID = "5e" * 32
ROOT = Identity(uid=0, gid=0, groups=(0,), user="root", home="/root")
ALICE = Identity(uid=5001, gid=5001, groups=(5001, 6000), user="alice", home="/nonexistent/alice",
                 shell="/bin/zsh")
BOB = Identity(uid=5002, gid=5002, groups=(5002,), user="bob", home="/nonexistent/bob")
META: dict[str, Any] = {
    "schema": 1, "status": "READY", "id": IMAGE_ID,
    "env": ["PATH=/usr/bin:/bin", "IMG=1", "SHARED=image", "BAD-NAME=x", "LD_LIBRARY_PATH=/img/lib"],
    "entrypoint": ["/entry.sh", "--flag"], "cmd": ["serve", "--port=1"], "workdir": "/app",
    "acl": {"private": False, "users": [], "groups": []}}
CONFIG_TEXT = ("siteFs=/home;/global/scratch:/scratch:rec\n"
               "siteEnv=SITE=1\nsiteEnvAppend=PATH=/opt/site/bin\nsiteEnvPrepend=MANPATH=/opt/site/man\n"
               "siteEnvUnset=UNWANTED\n"
               "defaultModules=gpu\n"
               "module_gpu_siteEnv=GPU=1\nmodule_gpu_siteFs=/opt/nvidia:/opt/nvidia:ro\n"
               "module_mpi_siteEnvPrepend=PATH=/opt/mpi/bin\nmodule_mpi_siteEnvAppend=MPI_PATHS=/x\n")
CALLER_ENV = {"HOME": "/home/alice", "PATH": "/usr/local/bin:/usr/bin", "SHARED": "caller", "UNWANTED": "1",
              "BASH_FUNC_f%%": "() { :; }", "LD_PRELOAD": "/lib/x.so", "MANPATH": "/usr/man", "TERM": "xterm"}


@dataclass
class Site:
    store: Path
    config_file: Path
    config: SiteConfig


def _write_image(store: Path, metadata: dict[str, Any]) -> None:
    (store / "tags" / "docker").mkdir(parents=True, exist_ok=True)
    (store / f"{IMAGE_ID}.squashfs").write_bytes(b"hsqs")
    (store / f"{IMAGE_ID}.json").write_text(json.dumps(metadata))
    quoted = urllib.parse.quote("docker.io/library/app:1", safe="")
    (store / "tags" / "docker" / quoted).write_text(IMAGE_ID + "\n")


def make_site(tmp_path: Path, metadata: dict[str, Any] = META, extra: str = "") -> Site:
    store = tmp_path / "images"
    _write_image(store, metadata)
    config_file = tmp_path / "udiRoot.conf"
    config_file.write_text(f"imagePath={store}\nudiMount={tmp_path}/udi\nloopMount={tmp_path}/loop\n"
                           f"userImagePath=\n{CONFIG_TEXT}{extra}")
    return Site(store, config_file, load_config(str(config_file)))


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A directory the (fake) user may search: when the suite runs as root, setup reads the store
    with the user's rights, and pytest's own tmp_path lies under a root-only directory."""
    path = Path(tempfile.mkdtemp(prefix="shifter-fastpath-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path)


def prepare(site: Site, *setup_args: str, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The record ``shifter-setup --user=alice SETUP_ARGS`` writes (without touching the system)."""
    env = environ or {}
    opts = parse_options([*setup_args, "--user=alice", "/bin/true"], env)
    spec = request.spec_from_options(opts, env, site.config, ROOT, "/", lookup_user=lambda _name: ALICE)
    fast = prepared.fast_section(opts, spec, site.config, fastpath.file_state(str(site.config_file)))
    assert fast is not None
    return prepared.make_record(spec, site.config, fast=fast)


def full_path(site: Site, record: dict[str, Any], argv: list[str], environ: dict[str, str], cwd: str,
              caller: Identity = ALICE) -> tuple[list[str], dict[str, str], tuple[str, ...]] | None:
    """What the full path runs when it enters ``record``'s container; ``None``: it would not."""
    spec = request.build_spec(argv, environ, site.config, caller, cwd)
    if any(record.get(key) != value for key, value in prepared.describe(spec).items()):
        return None
    plan = prepared_entry_plan(spec, site.config)
    exec_op = next(op for op in plan.ops if isinstance(op, Exec))
    chdir_op = next(op for op in plan.ops if isinstance(op, Chdir))
    return list(exec_op.argv), dict(exec_op.env), chdir_op.candidates


def fast_path(record: dict[str, Any], argv: list[str], environ: dict[str, str], cwd: str,
              caller: Identity = ALICE) -> tuple[list[str], dict[str, str], tuple[str, ...]] | None:
    req = fastpath.parse_request(argv, environ)
    if req is None:
        return None
    entry = fastpath.decide(req, record, environ, (caller.uid, caller.gid), groups=list(caller.groups), cwd=cwd,
                            account=list(identity_env(caller)))
    return None if entry is None else (entry.argv, entry.env, entry.candidates)


# (setup arguments, setup environment, request argv, request environment additions, cwd)
SAME = [
    (["--image=app:1"], {}, ["true"], {"SHIFTER_IMAGE": "app:1"}, "/home/alice"),
    (["--image=app:1"], {}, ["--image=app:1", "true"], {}, "/home/alice"),
    (["--image=app:1"], {}, ["-i", "app:1", "sh", "-c", "x"], {}, "/nonexistent"),
    (["--image=app:1"], {}, ["-iapp:1", "--", "-x", "--image=other"], {}, "/"),
    (["--image=app:1"], {}, ["--image", "app:1", "ls", "-l", "--env=A=1"], {}, "/app"),
    (["--image=app:1"], {}, ["--image=app:1", "--env=A=1", "-e", "B==2", "-eSHARED=cli", "--env", "PATH=/p"],
     {}, "/tmp"),
    (["--image=app:1"], {}, ["--image=app:1", "-E", "--clearenv", "env"], {}, "/tmp"),
    (["--image=app:1"], {}, ["--image=app:1", "-E", "env"], {"USER": "x", "SHELL": "/bin/csh"}, "/tmp"),
    (["--image=app:1"], {}, ["--image=app:1", "env"], {"USER": "someone", "LOGNAME": "x", "SHELL": "/bin/csh"},
     "/tmp"),
    (["--image=app:1"], {}, ["--image=app:1", "--workdir=/data/./x//y/", "pwd"], {}, "/tmp"),
    (["--image=app:1"], {}, ["--image=app:1", "--workdir", "pwd"], {}, "/tmp"),
    (["--image=app:1"], {}, ["--image=app:1", "-w", "/", "pwd"], {}, "/tmp"),
    (["--image=app:1"], {}, ["--image=app:1", "-w/srv", "--workdir=/opt"], {}, "/tmp"),
    (["--image=app:1"], {}, ["--image=app:1", "--entrypoint"], {}, "/tmp"),
    (["--image=app:1"], {}, ["--image=app:1", "--entrypoint", "a", "b"], {}, "/tmp"),
    (["--image=app:1"], {}, ["--image=other:1", "--image=app:1"], {}, "/tmp"),
    (["--image=app:1"], {"SHIFTER_MODULE": ""}, ["--image=app:1"], {"SHIFTER_IMAGE": "ignored:1"}, "/tmp"),
    (["--image=app:1", "--volume=/data:/in:ro", "--module=mpi"], {},
     ["--image=app:1", "--volume=/data:/in:ro", "--module=mpi", "true"], {}, "/tmp"),
    (["--image=app:1", "--volume=/data:/in:ro", "--module=mpi"], {},
     ["-i", "app:1", "-V", "/data:/in:ro", "-mmpi", "true"], {}, "/tmp"),
    (["--image=app:1", "--volume=/data:/in:ro", "--module=mpi"], {},
     ["true"], {"SHIFTER_IMAGE": "app:1", "SHIFTER_VOLUME": "/data:/in:ro", "SHIFTER_MODULE": "mpi"}, "/tmp"),
    ([], {"SHIFTER_IMAGE": "app:1", "SHIFTER_IMAGETYPE": "docker"}, ["id"],
     {"SHIFTER_IMAGE": "app:1", "SHIFTER_IMAGETYPE": "docker"}, "/tmp"),
    (["--image=app:1", "--volume=/a:/a;/b:/b:ro", "--module=gpu,mpi"], {},
     ["--image=app:1", "--volume=/a:/a;/b:/b:ro", "--module=gpu,mpi"], {}, "/tmp"),
    (["--image=id:" + IMAGE_ID], {}, ["--image=id:" + IMAGE_ID, "true"], {}, "/tmp"),
]


@pytest.mark.parametrize(("setup_args", "setup_env", "argv", "extra_env", "cwd"), SAME)
def test_fast_path_and_full_path_run_the_same(site: Site, setup_args: list[str], setup_env: dict[str, str],
                                              argv: list[str], extra_env: dict[str, str], cwd: str) -> None:
    record = prepare(site, *setup_args, environ=setup_env)
    environ = {**CALLER_ENV, **extra_env}
    expected = full_path(site, record, argv, environ, cwd)
    assert expected is not None, "the full path would not enter the prepared container"
    assert fast_path(record, argv, environ, cwd) == expected
    assert fastpath.files_unchanged(record["fast"], ALICE.uid)


FALLBACK = [
    ["--env-file=/x", "true"], ["--user=alice", "true"], ["-v", "true"], ["--verbose", "true"], ["--help"],
    ["-h"], ["--entrypoint=/bin/x"], ["--entrypoint="], ["--im=app:1", "true"], ["-Ei", "app:1", "true"],
    ["-E", "-vi", "app:1"], ["--image=docker:app:1"], ["--image=local:/srv"], ["--volume=/other:/o", "true"],
    ["--module=none"], ["--module=", "true"], ["--env=1BAD=x"], ["--env=NOVALUE"], ["-e"], ["--workdir=rel"],
    ["--workdir=/a/../b"], ["-w", ""], ["--image"], ["--image="], ["--image= ", "true"], ["--unknown", "x"],
    ["--clearenv=1"], ["-x"], ["-Q", "x"], ["--image=app:1", ""],
]


@pytest.mark.parametrize("argv", FALLBACK, ids=lambda a: " ".join(a) or "-")
def test_anything_unusual_goes_to_the_full_path(site: Site, argv: list[str]) -> None:
    record = prepare(site, "--image=app:1")
    environ = {**CALLER_ENV, "SHIFTER_IMAGE": "app:1"}
    assert fast_path(record, argv, environ, "/tmp") is None


def test_no_image_anywhere_goes_to_the_full_path(site: Site) -> None:
    assert fast_path(prepare(site, "--image=app:1"), ["true"], CALLER_ENV, "/") is None


def test_another_user_goes_to_the_full_path(site: Site) -> None:
    record = prepare(site, "--image=app:1")
    assert fast_path(record, ["--image=app:1"], CALLER_ENV, "/", caller=BOB) is None


def test_a_record_of_another_layout_goes_to_the_full_path(site: Site) -> None:
    record = prepare(site, "--image=app:1")
    record["fast"]["version"] = fastpath.FAST_VERSION + 1
    assert fast_path(record, ["--image=app:1"], CALLER_ENV, "/") is None


def test_image_without_entrypoint_goes_to_the_full_path(tmp_path: Path) -> None:
    site = make_site(tmp_path, {**META, "entrypoint": None})
    record = prepare(site, "--image=app:1")
    assert fast_path(record, ["--image=app:1", "--entrypoint"], CALLER_ENV, "/") is None
    with pytest.raises(ShifterError):
        full_path(site, record, ["--image=app:1", "--entrypoint"], CALLER_ENV, "/")


ACLS: list[object] = [
    None, {"private": False}, {"private": True, "users": [5001], "groups": []},
    {"private": True, "users": [], "groups": [6000]}, {"private": True, "users": [], "groups": [5001]},
    {"private": True, "users": [7, True], "groups": ["5001"]}, {"private": 0}, "garbage", {"users": [1]},
]


@pytest.mark.parametrize("acl", ACLS, ids=str)
@pytest.mark.parametrize("caller", [ALICE, BOB, replace(ALICE, groups=(5001,))], ids=["alice", "bob", "alice-1"])
def test_acl_precomputed_as_check_access_decides(acl: object, caller: Identity) -> None:
    try:
        check_access({"acl": acl}, caller)
        allowed = True
    except AccessDeniedError:
        allowed = False
    precomputed = json.loads(json.dumps(prepared._acl({"acl": acl})))  # as the record stores it
    assert fastpath._acl_allows(precomputed, (caller.uid, caller.gid), list(caller.groups)) is allowed


def test_private_image_for_a_caller_who_left_the_group(tmp_path: Path) -> None:
    site = make_site(tmp_path, {**META, "acl": {"private": True, "users": [], "groups": [6000]}})
    record = prepare(site, "--image=app:1")  # alice is in group 6000 at setup
    assert fast_path(record, ["--image=app:1"], CALLER_ENV, "/") == \
        full_path(site, record, ["--image=app:1"], CALLER_ENV, "/")
    left = replace(ALICE, groups=(5001,))
    assert fast_path(record, ["--image=app:1"], CALLER_ENV, "/", caller=left) is None
    with pytest.raises(AccessDeniedError):
        full_path(site, record, ["--image=app:1"], CALLER_ENV, "/", caller=left)


# --- recorded files ----------------------------------------------------------------------------------

def test_a_repulled_tag_invalidates_the_record(site: Site) -> None:
    record = prepare(site, "--image=app:1")
    tag = next((site.store / "tags" / "docker").iterdir())
    tag.write_text("ab" * 32 + "\n")  # the tag now names another image
    assert not fastpath.files_unchanged(record["fast"], ALICE.uid)


@pytest.mark.parametrize("name", [f"{IMAGE_ID}.json", f"{IMAGE_ID}.squashfs"])
def test_changed_or_removed_image_files_invalidate_the_record(site: Site, name: str) -> None:
    record = prepare(site, "--image=app:1")
    os.chmod(site.store / name, 0o600)
    assert not fastpath.files_unchanged(record["fast"], ALICE.uid)
    (site.store / name).unlink()
    assert not fastpath.files_unchanged(record["fast"], ALICE.uid)


def test_a_new_user_store_tag_invalidates_the_record(tmp_path: Path) -> None:
    home = tmp_path / "home"
    site = make_site(tmp_path, extra=f"userImagePath={home}/images\n")
    record = prepare(site, "--image=app:1")
    assert fastpath.files_unchanged(record["fast"], ALICE.uid)
    _write_image(home / "images", META)  # the user pulled the tag: their copy wins from now on
    assert not fastpath.files_unchanged(record["fast"], ALICE.uid)


def test_a_home_relative_user_store_records_the_home(tmp_path: Path) -> None:
    site = make_site(tmp_path, extra="userImagePath=~/images\n")
    record = prepare(site, "--image=app:1")
    assert record["fast"]["home"] == ALICE.home
    assert any(path.startswith(ALICE.home + "/images/") for path, _, _ in record["fast"]["witnesses"])
    me = os.getuid()
    record["fast"]["home"] = "/surely/not/the/home"
    assert not fastpath.files_unchanged(record["fast"], me)
    record["fast"]["home"] = __import__("pwd").getpwuid(me).pw_dir
    assert fastpath.files_unchanged(record["fast"], me)


def test_an_edited_configuration_has_another_identity(site: Site) -> None:
    record = prepare(site, "--image=app:1")
    assert record["fast"]["config"] == fastpath.file_state(str(site.config_file))
    with site.config_file.open("a") as handle:
        handle.write("siteEnv=SITE=2\n")
    assert record["fast"]["config"] != fastpath.file_state(str(site.config_file))


def test_no_fast_section_for_a_configuration_changed_during_setup(site: Site) -> None:
    opts = parse_options(["--image=app:1", "/bin/true"], {})
    spec = request.spec_from_options(opts, {}, site.config, ROOT, "/", lookup_user=lambda _name: ALICE)
    before = fastpath.file_state(str(site.config_file))
    site.config_file.write_text(site.config_file.read_text() + "# edited\n")
    assert prepared.fast_section(opts, spec, site.config, before) is None


def test_no_fast_section_for_an_id_prefix(site: Site) -> None:
    opts = parse_options([f"--image=id:{IMAGE_ID[:12]}", "/bin/true"], {})
    spec = request.spec_from_options(opts, {}, site.config, ROOT, "/", lookup_user=lambda _name: ALICE)
    assert prepared.fast_section(opts, spec, site.config, fastpath.file_state(str(site.config_file))) is None


# --- pieces --------------------------------------------------------------------------------------------

PARSE = [
    ["--image=a", "-V", "/x:/y", "--volume=/p:/q", "-e", "A=1", "-mgpu", "-E", "--workdir", "cmd", "-i", "b"],
    ["-ia", "--entrypoint", "--workdir=/w/../w2/./", "--", "--image=c"],
    ["--module=a,b", "-w", "/x", "--clearenv", "-"],
    [],
]


@pytest.mark.parametrize("argv", PARSE)
@pytest.mark.parametrize("environ", [{}, {"SHIFTER_IMAGE": "e:1", "SHIFTER_IMAGETYPE": "docker",
                                           "SHIFTER_VOLUME": "/v:/v", "SHIFTER_MODULE": "m"}, {"SHIFTER": "s:1"}])
def test_the_small_parser_agrees_with_the_full_one(argv: list[str], environ: dict[str, str]) -> None:
    req = fastpath.parse_request(argv, environ)
    opts = parse_options(argv, environ)
    if req is None:  # only when the full path has no image or would refuse the workdir
        assert not opts.image or (opts.workdir or "/").find("..") >= 0
        return
    assert (req.image, req.image_type, tuple(req.volumes), req.modules) == \
        (opts.image, opts.image_type, opts.volumes, opts.modules)
    assert ([f"{k}={v}" for k, v in req.env], req.clearenv, req.entrypoint, req.workdir_given, tuple(req.args)) \
        == (list(opts.env), opts.clearenv, opts.entrypoint, opts.workdir_given, opts.args)


@pytest.mark.parametrize("text", [
    "udiMount=/var/udi\n", "# udiMount=/x\n  udiMount = /a/b  \nudiMount=/c\n", "imagePath=/i\n",
    "siteFs=/a:/a;\\\n  /b:/b\nudiMount=/u\n", "udiMount=/u/\n", "udiMount=//u\n", "udiMount=/a/./b\n",
])
def test_udi_mount_as_the_site_configuration_reads_it(text: str) -> None:
    found = fastpath.config_udi_mount(text)
    assert found in (parse_config(text).udi_mount, None)  # None: the full path decides
    assert found is not None or "udiMount=/u" not in text.replace(" ", "").splitlines()


def test_constants_match_their_sources() -> None:
    assert fastpath.RECORD_VERSION == prepared.RECORD_VERSION
    assert fastpath.DEFAULT_CONFIG_PATH == site_config.DEFAULT_CONFIG_PATH
    assert SiteConfig().udi_mount == fastpath.DEFAULT_UDI_MOUNT
    assert list(request.DEFAULT_COMMAND) == fastpath.DEFAULT_COMMAND
    assert os.defpath == fastpath.DEFPATH
    assert (fastpath.ENOENT, fastpath.EINVAL) == (errno.ENOENT, errno.EINVAL)


def test_caller_environ_is_os_environ() -> None:
    assert list(fastpath.caller_environ().items()) == list(os.environ.items())


def test_untrusted_records_are_ignored(tmp_path: Path) -> None:
    udi = tmp_path / "udi"
    udi.mkdir()
    conf = tmp_path / "udiRoot.conf"
    conf.write_text(f"udiMount={udi}\n")
    record = tmp_path / "udi.json"
    record.write_text(json.dumps({"version": 1, "udi_mount": str(udi), "fast": {}}))
    env = {"SHIFTER_CONFIG": str(conf)}
    for mode in (0o644, 0o664, 0o646):
        record.chmod(mode)
        # Not root-owned (as an ordinary user), writable by others, or udiMount is no mount.
        assert fastpath.read_record(env) is None
    link = tmp_path / "link.conf"
    link.symlink_to(conf)
    assert fastpath.read_record({"SHIFTER_CONFIG": str(link)}) is None  # as load_config: O_NOFOLLOW


def test_mount_point_check() -> None:
    assert fastpath._is_mountpoint("/proc") and fastpath._is_mountpoint("/")
    assert not fastpath._is_mountpoint("/proc/self/..") or os.path.ismount("/proc")
    assert not fastpath._is_mountpoint("/nonexistent")


@pytest.mark.parametrize(("file", "path", "errors"), [
    ("cmd", None, {}),
    ("cmd", "", {}),
    ("cmd", "/a:/b/::/c", {}),
    ("cmd", "/a:/b", {"/a/cmd": errno.EACCES}),
    ("cmd", "/a:/b", {"/a/cmd": errno.ENOTDIR, "/b/cmd": errno.ENOENT}),
    ("cmd", "/a:/b", {"/a/cmd": errno.ENOENT, "/b/cmd": errno.ENOTDIR}),
    ("./cmd", "/a", {"./cmd": errno.ENOEXEC}),
    ("/bin/cmd", "/a", {}),
])
def test_command_lookup_is_execvpes(monkeypatch: pytest.MonkeyPatch, file: str, path: str | None,
                                    errors: dict[str, int]) -> None:
    """The PATH search tries the same files and raises the same error as ``os.execvpe``."""
    tried: list[str] = []

    def execve(target: str | bytes, _argv: object, _env: object) -> None:
        name = os.fsdecode(target)
        tried.append(name)
        code = errors.get(name, errno.ENOENT)
        raise OSError(code, os.strerror(code), name)

    env = {} if path is None else {"PATH": path}
    outcomes = []
    for run in (lambda: os.execvpe(file, [file], env), lambda: fastpath._execvpe([file], env)):
        monkeypatch.setattr(os, "execve", execve)
        monkeypatch.setattr(posix, "execve", execve)
        tried.clear()
        with pytest.raises(OSError) as caught:
            run()
        outcomes.append((list(tried), type(caught.value), caught.value.errno))
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("clearenv", [False, True], ids=["env", "clearenv"])
def test_identity_variables_come_from_the_callers_passwd_entry(site: Site, clearenv: bool) -> None:
    record = prepare(site, "--image=app:1")
    argv = ["--image=app:1", *(["-E"] if clearenv else []), "env"]
    expected = full_path(site, record, argv, CALLER_ENV, "/")
    assert expected is not None
    env = expected[1]
    assert (env["USER"], env["LOGNAME"], env["SHELL"]) == ("alice", "alice", "/bin/zsh")
    assert env["HOME"] == ("/nonexistent/alice" if clearenv else "/home/alice")  # the caller's own stays
    assert fast_path(record, argv, CALLER_ENV, "/") == expected


def test_caller_without_a_passwd_entry_goes_to_the_full_path_when_an_identity_variable_is_missing(
        site: Site) -> None:
    record = prepare(site, "--image=app:1")
    req = fastpath.parse_request(["--image=app:1", "-E", "env"], CALLER_ENV)
    assert req is not None
    assert fastpath.decide(req, record, CALLER_ENV, (ALICE.uid, ALICE.gid), groups=[], cwd="/") is None  # no uid 5001


def test_identity_pairs_match_identity_env() -> None:
    assert fastpath.identity_pairs(0) == list(identity_env(request.lookup_identity("0")))
