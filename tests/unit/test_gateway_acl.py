"""Private-image ACLs: -u/-g names to ids, the stored form, and the rules of who may change it.

The service runs with the fakes of ``test_gateway_service`` (registry, flattener, squashfs
builder); the store, locks and SQLite repository are real.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shifter.errors import AccessDeniedError, UsageError
from shifter.gateway.acl import PUBLIC, ImageAcl, resolve_acl
from shifter.runtime.images import check_access
from shifter.runtime.spec import Identity
from tests.unit.test_gateway_service import ALICE, BOB, ROOT, Env, env  # noqa: F401  (fixture)

USERS = {"carol": 5001, "dave": 5002}
GROUPS = {"physics": 6001}


def resolve(users: list[str], groups: list[str], requester: int | None = None) -> ImageAcl | None:
    return resolve_acl(users, groups, requester_uid=requester, uid_of=USERS.__getitem__,
                       gid_of=GROUPS.__getitem__)


# --------------------------------------------------------------------------- names to ids
def test_no_users_or_groups_is_a_public_pull() -> None:
    assert resolve([], []) is None


def test_names_and_numeric_ids_resolve_sorted_and_unique() -> None:
    acl = resolve(["dave", "carol", "5001", "7000"], ["physics", "42"])
    assert acl == ImageAcl(True, (5001, 5002, 7000), (42, 6001))
    assert acl.to_json() == {"private": True, "users": [5001, 5002, 7000], "groups": [42, 6001]}


def test_the_puller_is_always_in_its_own_private_acl_but_root_is_not_added() -> None:
    assert resolve([], ["physics"], requester=4242) == ImageAcl(True, (4242,), (6001,))
    assert resolve(["carol"], [], requester=0) == ImageAcl(True, (5001,), ())


@pytest.mark.parametrize(("users", "groups", "needle"), [(["mallory"], [], "unknown user 'mallory'"),
                                                          ([], ["nogroup-x"], "unknown group 'nogroup-x'")])
def test_unknown_names_are_a_clear_usage_error(users: list[str], groups: list[str], needle: str) -> None:
    with pytest.raises(UsageError) as err:
        resolve(users, groups)
    assert needle in err.value.message and "getent" in err.value.hint


def test_real_system_names_resolve() -> None:
    acl = resolve_acl(["root", "nobody"], ["root"])
    assert acl is not None and acl.users == (0, 65534) and acl.groups == (0,)


def test_stored_acl_parsing_fails_closed() -> None:
    assert ImageAcl.from_json(None) == PUBLIC
    assert ImageAcl.from_json({"private": False, "users": [1]}) == PUBLIC
    assert ImageAcl.from_json("garbage") == ImageAcl(private=True)
    assert ImageAcl.from_json({"private": "yes", "users": [1, "2", True]}) == ImageAcl(True, (1,), ())
    assert ImageAcl(True, (5,), ()).describe() == "private (uids 5)" and PUBLIC.describe() == "public"


# --------------------------------------------------------------------------- the service rules
CAROL_ONLY = ImageAcl(True, (5001,), ())


def meta_acl(service: object, image_id: str) -> dict[str, object]:
    return dict(service.store.read_metadata(image_id)["acl"])  # type: ignore[attr-defined]


def test_private_pull_stores_the_acl_in_metadata_and_db_and_listing(env: Env) -> None:  # noqa: F811
    env.registry.put("r.io/app:1", {"a": "1"})
    service = env.service()
    record = service.pull("r.io/app:1", ALICE, acl=CAROL_ONLY)
    assert meta_acl(service, record.id) == CAROL_ONLY.to_json()
    assert service.repo.get(record.id).acl == CAROL_ONLY.to_json()  # type: ignore[union-attr]
    row = next(r for r in service.images() if r["id"] == record.id)
    assert row["acl"] == CAROL_ONLY.to_json()
    assert service.inspect("r.io/app:1")["acl"] == CAROL_ONLY.to_json()


def test_runtime_enforces_the_stored_acl(env: Env) -> None:  # noqa: F811
    env.registry.put("r.io/app:1", {"a": "1"})
    service = env.service()
    image_id = service.pull("r.io/app:1", ALICE, acl=CAROL_ONLY).id
    meta = service.store.read_metadata(image_id)
    check_access(meta, Identity(5001, 5001, (), "carol", "/home/carol"))
    with pytest.raises(AccessDeniedError):
        check_access(meta, Identity(5002, 5002, (6001,), "dave", "/home/dave"))


def test_owner_repull_changes_the_acl_atomically_without_downloading(env: Env) -> None:  # noqa: F811
    env.registry.put("r.io/app:1", {"a": "1"})
    service = env.service()
    image_id = service.pull("r.io/app:1", ALICE).id
    assert meta_acl(service, image_id) == PUBLIC.to_json()
    builds = len(env.tools.builds)
    service.pull("r.io/app:1", ALICE, acl=CAROL_ONLY)
    assert meta_acl(service, image_id) == CAROL_ONLY.to_json() and len(env.tools.builds) == builds
    leftovers = [p.name for p in service.store.root.iterdir() if p.name.startswith(".") and p.is_file()]
    assert leftovers == []  # the temporary file of the rewrite was renamed away
    service.pull("r.io/app:1", ALICE)  # a pull that asks nothing changes nothing
    assert meta_acl(service, image_id) == CAROL_ONLY.to_json()
    service.pull("r.io/app:1", ALICE, acl=PUBLIC)  # --public by the owner: public again
    assert meta_acl(service, image_id) == PUBLIC.to_json()
    assert service.repo.get(image_id).acl == PUBLIC.to_json()  # type: ignore[union-attr]


def test_public_pull_by_someone_else_does_not_make_a_private_image_public(env: Env) -> None:  # noqa: F811
    env.registry.put("r.io/app:1", {"a": "1"})
    env.registry.put("r.io/app:also", {"a": "1"})  # the same digest under another tag
    image_id = env.service().pull("r.io/app:1", ALICE, acl=CAROL_ONLY).id
    record = env.service(BOB).pull("r.io/app:also", BOB)
    assert record.id == image_id
    assert meta_acl(env.service(), image_id) == CAROL_ONLY.to_json()


def test_someone_else_may_not_change_the_acl(env: Env) -> None:  # noqa: F811
    env.registry.put("r.io/app:1", {"a": "1"})
    image_id = env.service().pull("r.io/app:1", ALICE).id
    bob = env.service(BOB)
    with pytest.raises(AccessDeniedError) as err:
        bob.pull("r.io/app:1", BOB, acl=ImageAcl(True, (BOB.uid,), ()))
    assert "owner: alice" in err.value.message and err.value.hint
    assert meta_acl(bob, image_id) == PUBLIC.to_json()


def test_an_admin_may_change_anyones_acl_when_asking_for_it(env: Env) -> None:  # noqa: F811
    env.registry.put("r.io/app:1", {"a": "1"})
    image_id = env.service().pull("r.io/app:1", ALICE, acl=CAROL_ONLY).id
    admin = env.service(ROOT)
    admin.pull("r.io/app:1", ROOT, acl=PUBLIC)
    assert meta_acl(admin, image_id) == PUBLIC.to_json()


def test_admin_pulling_another_tag_of_a_private_digest_keeps_it_private(env: Env) -> None:  # noqa: F811
    """The attack: a second tag of the same digest, pulled by root (an admin) for someone outside
    the list, used to make the image public ("the latest pull wins")."""
    env.registry.put("r.io/app:1", {"a": "1"})
    env.registry.put("r.io/app:other", {"a": "1"})
    image_id = env.service().pull("r.io/app:1", ALICE, acl=CAROL_ONLY).id
    admin = env.service(ROOT)
    assert admin.pull("r.io/app:other", ROOT).id == image_id
    assert meta_acl(admin, image_id) == CAROL_ONLY.to_json()


def test_someone_else_may_not_make_a_private_image_public(env: Env) -> None:  # noqa: F811
    env.registry.put("r.io/app:1", {"a": "1"})
    image_id = env.service().pull("r.io/app:1", ALICE, acl=CAROL_ONLY).id
    with pytest.raises(AccessDeniedError):
        env.service(BOB).pull("r.io/app:1", BOB, acl=PUBLIC)
    assert meta_acl(env.service(), image_id) == CAROL_ONLY.to_json()


def test_private_import(env: Env, tmp_path: Path) -> None:  # noqa: F811
    from shifter.convert.metadata import ImageContent, LayerBlob  # noqa: PLC0415
    service = env.service()
    layer = tmp_path / "layer"
    layer.write_text(json.dumps({"f": "x"}))
    digest, path = service.cache.ingest(layer)
    content = ImageContent("sha256:" + "1" * 64, {"config": {}}, "sha256:" + "2" * 64,
                           [LayerBlob(digest, layer.stat().st_size, "tar", path)])
    record = service.import_image(content, "app:1", ALICE, acl=CAROL_ONLY)
    assert meta_acl(service, record.id) == CAROL_ONLY.to_json()


def test_metadata_rewrite_follows_the_acl(env: Env) -> None:  # noqa: F811
    env.registry.put("r.io/app:1", {"a": "1"})
    service = env.service()
    image_id = service.pull("r.io/app:1", ALICE).id
    files = (service.store.metadata_path(image_id), service.store.squashfs_path(image_id))
    assert all(os.stat(f).st_mode & 0o777 == 0o644 for f in files)
    service.pull("r.io/app:1", ALICE, acl=CAROL_ONLY)
    assert all(os.stat(f).st_mode & 0o077 in (0o040, 0) for f in files)  # only the ACL's named readers
    service.pull("r.io/app:1", ALICE, acl=PUBLIC)
    assert all(os.stat(f).st_mode & 0o777 == 0o644 for f in files)


def _cached(service: object) -> list[str]:
    blobs = service.cache.blobs_dir  # type: ignore[attr-defined]
    return sorted(p.name for p in blobs.iterdir()) if blobs.is_dir() else []


def test_private_pull_keeps_its_layers_out_of_the_shared_cache(env: Env) -> None:  # noqa: F811
    env.registry.put("r.io/app:1", {"a": "1"})
    service = env.service()
    record = service.pull("r.io/app:1", ALICE, acl=CAROL_ONLY)
    assert _cached(service) == []
    assert not any(service.store.tmp_dir.iterdir())  # the private blob directory went with the work files
    assert record.status.value == "READY"


def test_making_an_image_private_evicts_its_layers_unless_a_public_image_shares_them(env: Env) -> None:  # noqa: F811
    env.registry.put("r.io/app:1", {"a": "1"})
    env.registry.put("r.io/app:2", {"a": "1", "b": "2"})
    service = env.service()
    first = service.pull("r.io/app:1", ALICE)
    second = service.pull("r.io/app:2", ALICE)
    shared_before = _cached(service)
    assert shared_before
    service.pull("r.io/app:2", ALICE, acl=CAROL_ONLY)
    layers_of = {r.id: {d["digest"].split(":")[1] for d in service.store.read_metadata(r.id)["layers"]}
                 for r in (first, second)}
    only_second = layers_of[second.id] - layers_of[first.id]
    assert only_second and set(_cached(service)) == set(shared_before) - only_second
