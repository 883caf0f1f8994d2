"""Which launches share an image mount (``plan.shared_image``) and the holder's names and record
(``runtime.holder``): pure, no system calls."""

from __future__ import annotations

import dataclasses
import json
import os

from shifter.runtime import holder
from shifter.runtime import plan as p
from shifter.runtime.linux import fastpath
from shifter.runtime.linux import holder as linux_holder
from shifter.runtime.spec import ImageInfo, VolumeSpec
from tests.unit.test_plan_build import CONFIG, IMAGE, make_spec, ops_of


def _share(**kw: object) -> p.SharedImage | None:
    return ops_of(p.build_plan(make_spec(**kw), CONFIG), p.EnterNamespaces)[0].share


def test_unprivileged_store_image_is_shared_with_the_sites_linger() -> None:
    config = dataclasses.replace(CONFIG, image_mount_linger=300)
    ns = ops_of(p.build_plan(make_spec(), config), p.EnterNamespaces)[0]
    assert ns.share == p.SharedImage(IMAGE.squashfs, IMAGE.image_id, "/var/loop", 300)
    assert _share().linger == 0  # the default: the holder ends with the last container


def test_privileged_site_image_is_shared_through_roots_holder() -> None:
    plan = p.build_plan(make_spec(privileged=True), CONFIG)
    ns = ops_of(plan, p.EnterNamespaces)[0]
    assert ns.share == p.SharedImage(IMAGE.squashfs, IMAGE.image_id, "/var/loop", 0) and not ns.user_ns
    assert ops_of(plan, p.MountImage)[0].method == "loop"


def test_user_store_image_as_root_and_slave_volumes_mount_afresh() -> None:
    assert _share(privileged=True, image=dataclasses.replace(IMAGE, user_store=True)) is None
    assert _share(volumes=(VolumeSpec("/s", "/s", origin="site", slave=True),)) is None
    assert _share(image=dataclasses.replace(IMAGE, image_id="../../etc")) is None


def test_prepared_entry_joins_the_recorded_namespace_unless_privileged() -> None:
    plan = p.prepared_entry_plan(make_spec(), CONFIG, (1234, 4026532000))
    assert ops_of(plan, p.EnterNamespaces)[0].join == (1234, 4026532000)
    root = p.prepared_entry_plan(make_spec(privileged=True), CONFIG, (1234, 4026532000))
    assert ops_of(root, p.EnterNamespaces)[0].join == ()


def _stat(**kw: int) -> os.stat_result:
    values = {"st_dev": 0xFE00, "st_ino": 77, "st_size": 4096, "st_ctime_ns": 1_000_000}
    values.update(kw)
    fields = [0] * 10
    fields[1], fields[2], fields[6] = values["st_ino"], values["st_dev"], values["st_size"]
    result = os.stat_result((*fields, 0.0, 0.0, 0.0, 0, 0, values["st_ctime_ns"]))
    return result


def test_key_changes_with_the_image_id_and_the_exact_file() -> None:
    base = holder.holder_key("a" * 64, _stat(), 4026531841)
    assert base is not None and "/" not in base
    assert holder.holder_key("b" * 64, _stat(), 4026531841) != base  # a re-pull
    assert holder.holder_key("a" * 64, _stat(st_ino=78), 4026531841) != base  # another file (store)
    assert holder.holder_key("a" * 64, _stat(st_ctime_ns=2_000_000), 4026531841) != base  # rewritten in place
    assert holder.holder_key("a" * 64, _stat(), 4026532999) != base  # launched from another mount namespace
    assert holder.holder_key("a" * 64, _stat(), 4026531841) == base
    assert holder.holder_key("../x", _stat(), 1) is None and holder.holder_key("", _stat(), 1) is None


def test_record_round_trip_and_garbage() -> None:
    assert holder.decode_record(holder.encode_record(42, 4026532001, 4026532002)) == (42, 4026532001, 4026532002)
    for junk in (b"", b"1 42 1", b"2 42 1 2", b"1 -4 1 2", b"1 x 1 2", b"\xff"):
        assert holder.decode_record(junk) is None


def test_runtime_dirs_are_per_user() -> None:
    assert holder.runtime_dirs(2001) == ("/run/user/2001/shifter", "/dev/shm/shifter-2001")
    assert holder.runtime_dirs(0) == ("/run/user/0/shifter", "/run/shifter-0")  # no user can plant it


def test_local_images_are_never_shared() -> None:
    local = ImageInfo(kind="local", ref="/srv/root", image_id="", squashfs="", local_root="/srv/root")
    allowed = dataclasses.replace(CONFIG, allow_local_chroot=True)
    assert ops_of(p.build_plan(make_spec(image=local), allowed), p.EnterNamespaces)[0].share is None


def test_fast_paths_index_name_is_the_holders() -> None:
    for request, path, mntns in ((["busybox:1", None, [], None], "/etc/shifter/udiRoot.conf", 4026531841),
                                 (["x", "docker", ["/a:/b:ro"], "mpich"], "/srv/é.conf", 1)):
        assert fastpath.index_name(request, path, mntns) == holder.index_name(request, path, mntns)
    assert holder.index_name(["a"], "/c", 1) != holder.index_name(["a"], "/c", 2)


def test_index_record_encoder_is_json() -> None:
    value = {"version": 1, "key": "k-é\n\"", "fast": {"env": [["A", "1"]], "acl": None, "ok": True, "n": -3},
             "list": [], "t": (1, 2)}
    assert json.loads(linux_holder._dumps(value)) == json.loads(json.dumps(value))


def test_trees_with_per_container_state_are_never_held() -> None:
    assert p.tree_can_be_held(make_spec(), CONFIG)
    assert not p.tree_can_be_held(make_spec(writable_tmpfs=True), CONFIG)
    cache = VolumeSpec("/x", "/cache", per_node_cache="size=16M")
    assert not p.tree_can_be_held(make_spec(volumes=(cache,)), CONFIG)
