"""The mount plan is plain data: check the whole start sequence without touching the system."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from shifter.config.site import SiteConfig
from shifter.errors import ContainerError, VolumeError
from shifter.runtime import plan as p
from shifter.runtime.spec import ContainerSpec, Identity, ImageInfo, VolumeSpec

CONFIG = SiteConfig(udi_mount="/var/udi", loop_mount="/var/loop", max_group_count=2)
USER = Identity(uid=2001, gid=2001, groups=(2001, 0, 3000, 3001), user="alice", home="/home/alice")
IMAGE = ImageInfo(kind="docker", ref="docker.io/library/busybox:latest", image_id="a" * 64,
                  squashfs="/store/" + "a" * 64 + ".squashfs", local_root="")


def make_spec(**kw: Any) -> ContainerSpec:
    base: dict[str, Any] = {"image": IMAGE, "identity": USER, "argv": ("true",),
                            "env": (("PATH", "/bin"),), "cwd": "/home/alice", "workdir": "/app",
                            "volumes": (), "privileged": False}
    base.update(kw)
    return ContainerSpec(**base)


def ops_of(plan: p.Plan, kind: type) -> list[Any]:
    return [op for op in plan.ops if isinstance(op, kind)]


def test_phases_follow_the_fixed_start_sequence() -> None:
    vols = (VolumeSpec("/site", "/site", origin="site"), VolumeSpec("/data", "/in", read_only=True))
    plan = p.build_plan(make_spec(volumes=vols), CONFIG)
    order = [p.PHASES.index(ph) for ph in plan.phases()]
    assert order == sorted(order)
    assert plan.phases()[0] == "namespace" and plan.phases()[-1] == "exec"
    assert set(plan.phases()) == set(p.PHASES) - {"hook"}  # no module with a userhook here


def test_unprivileged_uses_user_namespace_and_squashfuse() -> None:
    plan = p.build_plan(make_spec(), CONFIG)
    ns = ops_of(plan, p.EnterNamespaces)[0]
    assert ns.user_ns and ns.fuse_helper and (ns.uid, ns.gid) == (2001, 2001)
    image = ops_of(plan, p.MountImage)[0]
    assert (image.method, image.source, image.mountpoint) == ("squashfuse", IMAGE.squashfs, "/var/loop")


def test_privileged_uses_kernel_loop_mount_and_sets_groups() -> None:
    plan = p.build_plan(make_spec(privileged=True), CONFIG)
    ns = ops_of(plan, p.EnterNamespaces)[0]
    assert not ns.user_ns and not ns.fuse_helper
    assert ops_of(plan, p.MountImage)[0].method == "loop"
    drop = ops_of(plan, p.DropPrivileges)[0]
    assert drop.set_groups and drop.groups == (2001, 3000)  # maxGroupCount=2, never gid 0


def test_root_tree_is_tmpfs_with_image_entries_and_etc() -> None:
    plan = p.build_plan(make_spec(), CONFIG)
    assert ops_of(plan, p.MountRootTmpfs)[0].root == "/var/udi"
    populate = ops_of(plan, p.PopulateRoot)[0]
    assert populate.image == "/var/loop" and "etc" in populate.skip and "proc" in populate.skip
    etc = ops_of(plan, p.BuildEtc)[0]
    names = dict(etc.files)
    assert set(names) == {"passwd", "group", "nsswitch.conf"}
    assert "alice:x:2001:2001:" in names["passwd"]
    assert etc.host_files == ("hosts", "resolv.conf")


def test_system_mounts_come_before_site_and_user_volumes() -> None:
    vols = (VolumeSpec("/site", "/site", origin="site"), VolumeSpec("/data", "/in", read_only=True))
    binds = ops_of(p.build_plan(make_spec(volumes=vols), CONFIG), p.Bind)
    assert [b.target for b in binds] == ["/proc", "/sys", "/dev", "/tmp", "/var/tmp", "/site", "/in"]
    assert [b.phase for b in binds][-2:] == ["site", "user"]
    assert binds[4].optional  # /var/tmp only if the image has /var/tmp


def test_user_volume_is_checked_and_opened_as_user_only_when_privileged() -> None:
    vols = (VolumeSpec("/data", "/in", read_only=True),)
    unpriv = ops_of(p.build_plan(make_spec(volumes=vols), CONFIG), p.Bind)[-1]
    priv = ops_of(p.build_plan(make_spec(volumes=vols, privileged=True), CONFIG), p.Bind)[-1]
    assert unpriv.check_target and priv.check_target
    assert not unpriv.as_user and priv.as_user


def test_every_volume_is_remounted_nosuid_nodev_and_ro_when_asked() -> None:
    vols = (VolumeSpec("/a", "/a"), VolumeSpec("/b", "/b", read_only=True))
    remounts = ops_of(p.build_plan(make_spec(volumes=vols), CONFIG), p.Remount)
    assert [(r.target, r.read_only, r.nodev) for r in remounts] == [
        ("/a", False, True), ("/b", True, True), ("/", True, True)]


def test_root_stays_writable_when_site_says_so() -> None:
    config = dataclasses.replace(CONFIG, mount_udi_root_writable=True)
    assert ops_of(p.build_plan(make_spec(), config), p.Remount)[-1] == p.Remount("/", False, bind=False)


def test_pivot_then_drop_then_chdir_then_exec() -> None:
    plan = p.build_plan(make_spec(), CONFIG)
    tail = plan.ops[-4:]
    assert isinstance(tail[0], p.EnterRoot) and tail[0].method == "pivot"
    assert isinstance(tail[1], p.DropPrivileges) and not tail[1].set_groups
    assert tail[2] == p.Chdir(("/home/alice", "/app", "/"))
    assert tail[3] == p.Exec(("true",), (("PATH", "/bin"),))


def test_chdir_uses_spec_candidates_when_given() -> None:
    plan = p.build_plan(make_spec(chdir_candidates=("/work",)), CONFIG)
    assert ops_of(plan, p.Chdir)[0].candidates == ("/work", "/")


def test_root_without_user_runs_as_root_with_no_groups() -> None:
    root = Identity(uid=0, gid=0, groups=(0, 1), user="root", home="/root")
    plan = p.build_plan(make_spec(identity=root, privileged=True, run_as_root=True), CONFIG)
    drop = ops_of(plan, p.DropPrivileges)[0]
    assert (drop.uid, drop.gid, drop.groups) == (0, 0, ())


def test_per_node_cache_is_a_loop_file_system_when_privileged() -> None:
    vols = (VolumeSpec("/ignored", "/cache", per_node_cache="size=1G,fs=xfs"),)
    config = dataclasses.replace(CONFIG, per_node_cache_path="/local/cache")
    plan = p.build_plan(make_spec(volumes=vols, privileged=True), config)
    assert "/cache" not in [b.target for b in ops_of(plan, p.Bind)]  # the source is not bound
    cache = ops_of(plan, p.MountCache)[0]
    assert cache == p.MountCache("user", "/cache", 1024**3, "loop", fs="xfs", backing_dir="/local/cache",
                                 uid=2001, gid=2001, check_target=True)
    assert p.Remount("/cache", False) in plan.ops
    assert plan.phases().index("user") > plan.phases().index("system")


def test_per_node_cache_is_a_size_limited_tmpfs_when_unprivileged() -> None:
    vols = (VolumeSpec("/x", "/cache", per_node_cache="size=64M"),)
    cache = ops_of(p.build_plan(make_spec(volumes=vols), CONFIG), p.MountCache)[0]
    assert (cache.method, cache.size, cache.fs) == ("tmpfs", 64 * 1024**2, "auto")


def test_per_node_cache_over_the_site_limit_is_refused() -> None:
    vols = (VolumeSpec("/x", "/cache", per_node_cache="size=2G"),)
    config = dataclasses.replace(CONFIG, per_node_cache_size_limit=1024**3)
    with pytest.raises(VolumeError, match="over the site's limit"):
        p.build_plan(make_spec(volumes=vols, privileged=True), config)


def test_private_propagation_unless_a_volume_is_slave() -> None:
    plain = p.build_plan(make_spec(volumes=(VolumeSpec("/s", "/s", origin="site"),)), CONFIG)
    assert ops_of(plain, p.EnterNamespaces)[0].propagation == "private"
    assert not any(b.private or b.slave for b in ops_of(plain, p.Bind))
    vols = (VolumeSpec("/s", "/s", origin="site", slave=True), VolumeSpec("/d", "/d"))
    plan = p.build_plan(make_spec(volumes=vols), CONFIG)
    assert ops_of(plan, p.EnterNamespaces)[0].propagation == "slave"
    binds = {b.target: b for b in ops_of(plan, p.Bind)}
    assert binds["/s"].slave and not binds["/s"].private
    assert all(b.private for t, b in binds.items() if t != "/s")  # /proc, /tmp, ..., /d


def test_local_chroot_needs_site_permission() -> None:
    local = ImageInfo(kind="local", ref="/srv/root", image_id="", squashfs="", local_root="/srv/root")
    with pytest.raises(ContainerError, match="local chroots"):
        p.build_plan(make_spec(image=local), CONFIG)
    allowed = dataclasses.replace(CONFIG, allow_local_chroot=True)
    assert ops_of(p.build_plan(make_spec(image=local), allowed), p.MountImage)[0].method == "bind"


def test_user_store_image_never_reaches_kernel_squashfs_as_root() -> None:
    mine = dataclasses.replace(IMAGE, user_store=True)
    plan = p.build_plan(make_spec(image=mine, privileged=True), CONFIG)
    assert ops_of(plan, p.MountImage)[0].method == "squashfuse"
    ns = ops_of(plan, p.EnterNamespaces)[0]
    assert not ns.user_ns and ns.fuse_helper  # root, no user namespace, a FUSE helper
    assert ops_of(p.build_plan(make_spec(image=mine), CONFIG), p.MountImage)[0].method == "squashfuse"


def test_unprivileged_mode_never_runs_as_uid_0() -> None:
    root = Identity(uid=0, gid=0, groups=(), user="root", home="/root")
    with pytest.raises(ContainerError):
        p.build_plan(make_spec(identity=root), CONFIG)


def test_empty_command_is_refused() -> None:
    with pytest.raises(ContainerError):
        p.build_plan(make_spec(argv=()), CONFIG)


def test_prepared_entry_has_no_mounts() -> None:
    plan = p.prepared_entry_plan(make_spec(), CONFIG)
    assert plan.phases() == ["namespace", "enter", "drop", "chdir", "exec"]
    assert ops_of(plan, p.EnterRoot)[0] == p.EnterRoot("/var/udi", "chroot")


def test_tree_ops_stop_before_entering() -> None:
    ops = p.tree_ops(make_spec(privileged=True), CONFIG, {})
    assert {op.phase for op in ops} <= {"image", "root", "system", "site", "user", "remount"}


def test_every_bind_takes_the_whole_tree_with_its_flags() -> None:
    vols = (VolumeSpec("/site", "/site", origin="site"), VolumeSpec("/data", "/in", read_only=True))
    binds = {b.target: b for b in ops_of(p.build_plan(make_spec(volumes=vols), CONFIG), p.Bind)}
    assert binds["/proc"].flags == binds["/sys"].flags == ("nosuid", "nodev", "noexec")
    assert binds["/dev"].flags == ("nosuid", "nodev", "noexec") and binds["/dev"].devices
    assert not any(b.devices for target, b in binds.items() if target != "/dev")
    for target in ("/tmp", "/var/tmp", "/site", "/in"):
        assert binds[target].flags == ("nosuid", "nodev"), target
    assert binds["/in"].read_only and not binds["/site"].read_only


@pytest.mark.parametrize("source", ["/", "/var", "/var/udi", "/var/udi/etc", "/var/loop/x"])
def test_user_volume_holding_the_container_tree_is_refused(source: str) -> None:
    with pytest.raises(VolumeError, match="where the container is built"):
        p.build_plan(make_spec(volumes=(VolumeSpec(source, "/data"),)), CONFIG)


def test_user_volume_next_to_the_container_tree_is_fine() -> None:
    p.build_plan(make_spec(volumes=(VolumeSpec("/var/udix", "/a"), VolumeSpec("/var/lib", "/b"))), CONFIG)
