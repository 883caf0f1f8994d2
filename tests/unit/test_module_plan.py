"""Site modules, plugins, CDI devices and --writable-tmpfs in the plan (pure data), and the pure
helpers of the plugins (linker cache, ELF needs, the MPI ABI rule) and of CDI parsing."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from shifter.config.site import ModuleConfig, SiteConfig, parse_config
from shifter.errors import ConfigError, ContainerError
from shifter.runtime import cdi, plugins
from shifter.runtime import plan as p
from shifter.runtime.options import parse_options
from shifter.runtime.spec import ContainerSpec, ExtraBind, Identity, ImageInfo, VolumeSpec

USER = Identity(uid=2001, gid=2001, groups=(2001,), user="alice", home="/home/alice")
IMAGE = ImageInfo(kind="docker", ref="docker.io/library/busybox:latest", image_id="a" * 64,
                  squashfs="/store/" + "a" * 64 + ".squashfs", local_root="")
MODULES = (ModuleConfig("a", copy_path="/site/a", roothook="/site/root.sh arg", userhook="/opt/udiImage/a/hook.sh"),
           ModuleConfig("b", roothook="/site/root.sh"), ModuleConfig("c"))


def config(**kw: Any) -> SiteConfig:
    return SiteConfig(udi_mount="/var/udi", loop_mount="/var/loop", modules=MODULES, **kw)


def make_spec(**kw: Any) -> ContainerSpec:
    base: dict[str, Any] = {"image": IMAGE, "identity": USER, "argv": ("true",), "env": (("PATH", "/bin"),),
                            "cwd": "/", "workdir": "", "volumes": (), "privileged": True}
    base.update(kw)
    return ContainerSpec(**base)


def kinds(plan: p.Plan) -> list[str]:
    return [type(op).__name__ for op in plan.ops]


def test_module_steps_come_before_the_volumes_and_roothooks_before_the_users() -> None:
    vols = (VolumeSpec("/site", "/site", origin="site"), VolumeSpec("/data", "/in"))
    plan = p.build_plan(make_spec(modules=("a", "b"), volumes=vols), config())
    names = kinds(plan)
    assert names.index("ModuleTmpfs") < names.index("CopyTree") < names.index("Bind", names.index("CopyTree"))
    hooks = [op for op in plan.ops if isinstance(op, p.RootHook)]
    assert [h.what for h in hooks] == ["module 'a' roothook", "module 'b' roothook"]
    user_bind = next(op for op in plan.ops if isinstance(op, p.Bind) and op.phase == "user")
    assert plan.ops.index(hooks[-1]) < plan.ops.index(user_bind)
    assert hooks[0].argv == ("/site/root.sh", "arg")
    env = dict(hooks[0].env)
    assert env["SHIFTER_MODULE"] == "a" and env["SHIFTER_MODULE_DIR"] == "opt/udiImage/modules/a"
    assert "LD_PRELOAD" not in env and env["PATH"].startswith("/usr/sbin")
    assert p.Remount("/opt/udiImage", read_only=True) in plan.ops


def test_userhook_runs_after_the_drop_and_chdir_just_before_exec() -> None:
    plan = p.build_plan(make_spec(modules=("a",)), config())
    names = kinds(plan)
    assert names[-4:] == ["DropPrivileges", "Chdir", "UserHook", "Exec"]
    hook = plan.ops[-2]
    assert ("SHIFTER_MODULE", "a") in hook.env and ("PATH", "/bin") in hook.env


def test_prepared_entry_runs_userhooks_too() -> None:
    plan = p.prepared_entry_plan(make_spec(modules=("a",)), config())
    assert kinds(plan)[-2:] == ["UserHook", "Exec"]


def test_unprivileged_roothook_is_skipped_or_refused_per_site() -> None:
    plan = p.build_plan(make_spec(modules=("b",), privileged=False), config())
    assert [op.skip for op in plan.ops if isinstance(op, p.RootHook)] == [True]
    with pytest.raises(ContainerError, match="cannot run in unprivileged mode"):
        p.build_plan(make_spec(modules=("b",), privileged=False), config(unprivileged_roothook="refuse"))


def test_device_binds_keep_device_access_through_the_remount() -> None:
    binds = (ExtraBind("/host/nvidia0", "/dev/nvidia0", device=True, read_only=False),
             ExtraBind("/host/lib.so", "/opt/udiImage/modules/gpu/lib64/lib.so"))
    plan = p.build_plan(make_spec(extra_binds=binds), config())
    assert p.Remount("/dev/nvidia0", read_only=False, nodev=False) in plan.ops
    assert not any(isinstance(op, p.Remount) and op.target.endswith("lib.so") for op in plan.ops)
    assert p.ModuleTmpfs() in plan.ops


def test_writable_tmpfs_stacks_an_overlay_on_the_image() -> None:
    plan = p.build_plan(make_spec(writable_tmpfs=True), config(writable_tmpfs_size=1024))
    assert kinds(plan)[1:3] == ["MountImage", "WritableOverlay"]
    assert plan.ops[2] == p.WritableOverlay("/var/loop", 1024)


def test_options_device_and_writable_tmpfs() -> None:
    opts = parse_options(["--device=a.com/x=1", "--device", "a.com/x=2", "--writable-tmpfs", "true"])
    assert opts.devices == ("a.com/x=1", "a.com/x=2") and opts.writable_tmpfs and opts.args == ("true",)


def test_config_module_paths_must_be_absolute() -> None:
    with pytest.raises(ConfigError, match="must start with an absolute path"):
        parse_config("module_x_roothook=root.sh\n")
    with pytest.raises(ConfigError, match="not a known plugin"):
        parse_config("module_x_plugin=amd\n")
    with pytest.raises(ConfigError, match="must be one of"):
        parse_config("unprivilegedRoothook=maybe\n")


# --- plugins -------------------------------------------------------------------------------------

def test_linker_cache_of_this_host_is_read() -> None:
    cache = plugins.read_ld_cache("/")
    assert cache["libc.so.6"].endswith("/libc.so.6")


@pytest.mark.parametrize(("host", "image", "outcome"), [
    ((12, 2, 2), (12, 2, 2), ""), ((12, 2, 2), (12, 2, 0), ""), ((12, 2, 2), (12, 1, 0), "older"),
    ((12, 2, 2), (12, 3, 0), "refuse"), ((12, 2, 2), (13, 0, 0), "refuse"), ((12, 2, 2), (), "refuse"),
])
def test_mpi_abi_rule(host: tuple[int, ...], image: tuple[int, ...], outcome: str) -> None:
    if outcome == "refuse":
        with pytest.raises(ContainerError, match="not ABI-compatible") as info:
            plugins.check_abi(host, image, "/img/libmpi.so.x", "/host/libmpi.so.y")
        assert "/img/libmpi.so.x" in info.value.message and "/host/libmpi.so.y" in info.value.message
    else:
        assert (outcome in plugins.check_abi(host, image, "i", "h")) if outcome else not plugins.check_abi(
            host, image, "i", "h")


def test_library_version_from_the_real_file_name() -> None:
    assert plugins.library_version("/x/libmpich.so.12.2.2") == (12, 2, 2)
    assert plugins.library_version("/x/libmpi.so") == ()


def test_garbage_linker_cache_and_elf_yield_nothing(tmp_path: Path) -> None:
    assert plugins.parse_ld_cache(b"glibc-ld.so.cache1.1" + b"\xff" * 40) == {}
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"\x7fELF\x02\x01" + b"\xff" * 100)
    assert plugins.needed_libraries(str(junk)) == []


def test_host_path_stays_in_the_plugin_root(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib/real.so").write_text("")
    (tmp_path / "lib/abs.so").symlink_to("/lib/real.so")  # written for the real root
    assert plugins.host_path(str(tmp_path), "/lib/abs.so") == str(tmp_path / "lib/real.so")


# --- CDI -----------------------------------------------------------------------------------------

def _spec_dir(tmp_path: Path, text: str, name: str = "x.json") -> SiteConfig:
    directory = tmp_path / "cdi"
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(text)
    if os.geteuid() != 0:
        pytest.skip("CDI specs must be root-owned")
    return SiteConfig(cdi_spec_dirs=(str(directory),))


@pytest.mark.parametrize(("doc", "message"), [
    ("[]", "the top level is not an object"),
    ('{"cdiVersion": "0.6.0", "kind": "nokind", "devices": [{"name": "a"}]}', "'kind' must be vendor/class"),
    ('{"cdiVersion": "0.6.0", "kind": "a.com/x", "devices": []}', "'devices' must be a non-empty list"),
    ('{"cdiVersion": "0.6.0", "kind": "a.com/x", "devices": [{"name": "../x"}]}', "has no valid 'name'"),
    ('{"cdiVersion": "0.6.0", "kind": "a.com/x", "devices": [{"name": "a", "containerEdits": {"env": "X=1"}}]}',
     "'env' is not a list"),
    ('{"cdiVersion": "0.6.0", "kind": "a.com/x", "devices": [{"name": "a", "containerEdits": {"env": [1]}}]}',
     "is not NAME=value"),
    ('{"cdiVersion": "0.6.0", "kind": "a.com/x", "devices": [{"name": "a", "containerEdits": '
     '{"mounts": [{"hostPath": "rel", "containerPath": "/x"}]}}]}', "is not an absolute path"),
    ('{"cdiVersion": "0.6.0", "kind": "a.com/x", "devices": [{"name": "a", "containerEdits": '
     '{"hooks": [{"hookName": "poststop", "path": "/bin/true"}]}}]}', "is not supported"),
    ("{not json", "cannot be parsed"),
])
def test_malformed_cdi_specs_are_errors_naming_the_file(tmp_path: Path, doc: str, message: str) -> None:
    config = _spec_dir(tmp_path, doc)
    with pytest.raises(ConfigError) as info:
        cdi.resolve_devices(["a.com/x=a"], config)
    assert str(tmp_path / "cdi/x.json") in info.value.message and message in info.value.message


def test_cdi_device_node_must_match_the_spec(tmp_path: Path) -> None:
    spec = {"cdiVersion": "0.6.0", "kind": "a.com/x", "devices": [{"name": "a", "containerEdits": {
        "deviceNodes": [{"path": "/dev/null", "major": 9}]}}]}
    config = _spec_dir(tmp_path, json.dumps(spec))
    with pytest.raises(ConfigError, match="has major 1, the spec says 9"):
        cdi.resolve_devices(["a.com/x=a"], config)


def test_cdi_edits_in_order(tmp_path: Path) -> None:
    spec = {"cdiVersion": "0.6.0", "kind": "a.com/x", "containerEdits": {"env": ["COMMON=1"]},
            "devices": [{"name": "a", "containerEdits": {"env": ["A=1"], "deviceNodes": [{"path": "/dev/null"}],
                                                          "mounts": [{"hostPath": "/etc", "containerPath": "/h",
                                                                      "options": ["ro"]}]}}]}
    config = _spec_dir(tmp_path, json.dumps(spec))
    edits = cdi.resolve_devices(["a.com/x=a"], config)
    assert edits.env == ("COMMON=1", "A=1")
    origin = "CDI device a.com/x=a"
    assert edits.binds == (ExtraBind("/dev/null", "/dev/null", device=True, read_only=False, origin=origin),
                           ExtraBind("/etc", "/h", read_only=True, origin=origin))
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
