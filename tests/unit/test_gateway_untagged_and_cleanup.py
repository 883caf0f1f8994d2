"""Listing untagged images, removal while a pull runs, the stale-import clean-up, import_archive.

Fakes for the registry, flattener and squashfs builder (``test_gateway_service``); the store,
locks, blob cache and SQLite repository are real.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from shifter.cli.shifterimg import App, format_image_rows, run
from shifter.config.site import SiteConfig
from shifter.errors import ImageNotReadyError
from shifter.gateway.acl import ImageAcl
from shifter.gateway.models import ImageRecord, Status
from shifter.gateway.repository import ImageRepository
from shifter.gateway.service import ImageService
from shifter.gateway.stores import Caller, choose_store
from shifter.store import publish
from shifter.store.locks import FileLock
from tests.fixtures.images import OCILayout, file, layer_tar
from tests.unit.test_gateway_service import ALICE, Env, env  # noqa: F401  (fixture)


# --------------------------------------------------------------------------- untagged images
def test_old_image_of_a_moved_tag_is_listed_untagged_with_its_source(env: Env) -> None:  # noqa: F811
    env.registry.put("r.io/app:1", {"a": "old"})
    service = env.service()
    old = service.pull("r.io/app:1", ALICE)
    env.registry.put("r.io/app:1", {"a": "new"})
    new = service.pull("r.io/app:1", ALICE)
    rows = {r["id"]: r for r in service.images()}
    assert rows[new.id]["tag"] == "r.io/app:1"
    assert rows[old.id]["tag"] is None and rows[old.id]["source"] == "r.io/app:1"
    assert rows[old.id]["status"] == "READY"
    lines = format_image_rows(list(rows.values()))
    assert lines[0].endswith(" r.io/app:1") and new.id[:10] in lines[0]
    assert lines[1].endswith(" <none> (from r.io/app:1)") and old.id[:10] in lines[1]  # untagged last
    assert service.lookup(f"id:{old.id}") == old.id


def test_untagged_image_the_database_does_not_know_is_listed(env: Env) -> None:  # noqa: F811
    env.registry.put("r.io/app:1", {"a": "old"})
    service = env.service()
    old = service.pull("r.io/app:1", ALICE)
    env.registry.put("r.io/app:1", {"a": "new"})
    service.pull("r.io/app:1", ALICE)
    service.repo.delete_image(old.id)  # e.g. the database was lost
    rows = [r for r in service.images() if r["id"] == old.id]
    assert len(rows) == 1 and rows[0]["tag"] is None and rows[0]["source"] == "r.io/app:1"


def test_private_images_are_marked_in_the_listing() -> None:
    row = {"system": "s", "type": "docker", "status": "READY", "id": "a" * 64, "pulled_at": None,
           "tag": "docker.io/library/app:1", "acl": {"private": True, "users": [5], "groups": []}}
    assert format_image_rows([row])[0].endswith(" app:1 [private]")
    assert format_image_rows([{**row, "acl": {"private": False}}])[0].endswith(" app:1")


# --------------------------------------------------------------------------- removal
def test_rm_by_id_refuses_while_the_image_is_being_pulled_and_keeps_its_tags(env: Env) -> None:  # noqa: F811
    env.registry.put("r.io/app:1", {"a": "1"})
    service = env.service()
    image_id = service.pull("r.io/app:1", ALICE).id
    puller = publish.image_lock(service.store, image_id)  # another process working on this image
    assert puller.acquire(blocking=False)
    try:
        for target in (f"id:{image_id}", "r.io/app:1"):
            with pytest.raises(ImageNotReadyError) as err:
                service.remove(target, ALICE)
            assert "being pulled" in err.value.message and err.value.hint
    finally:
        puller.release()
    assert service.store.resolve_tag("docker", "r.io/app:1") == image_id and service.store.is_ready(image_id)
    assert service.remove(f"id:{image_id}", ALICE) == ["docker:r.io/app:1", f"id:{image_id}"]


# --------------------------------------------------------------------------- stale imports
def test_shared_locks_exclude_an_exclusive_one(tmp_path: Path) -> None:
    first, second = FileLock(tmp_path / "l", shared=True), FileLock(tmp_path / "l", shared=True)
    assert first.acquire(blocking=False) and second.acquire(blocking=False)
    exclusive = FileLock(tmp_path / "l")
    assert not exclusive.acquire(blocking=False)
    first.release()
    second.release()
    assert exclusive.acquire(blocking=False)
    assert not FileLock(tmp_path / "l", shared=True).acquire(blocking=False)
    exclusive.release()


def test_recover_removes_import_temp_files_of_dead_imports_only(env: Env) -> None:  # noqa: F811
    service = env.service()
    partial = service.cache.partial_dir
    partial.mkdir(parents=True, exist_ok=True)
    stale = partial / "import-dead1234.blob"
    stale.write_bytes(b"half a layer")
    download = partial / ("ab" * 32)  # a resumable registry download: never touched
    download.write_bytes(b"prefix")
    with service.cache.importing():  # a live import in some process
        service.recover()
        assert stale.exists()
    service.recover()
    assert not stale.exists() and download.exists()


def _oci_tarball(tmp_path: Path) -> tuple[Path, str]:
    layout = OCILayout(tmp_path / "layout")
    digest = layout.add_image("t", [layer_tar([file("etc/app.conf", b"x=1\n")])])
    tarball = tmp_path / "app.tar"
    with tarfile.open(tarball, "w") as tar:
        for path in sorted(layout.root.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(layout.root)), recursive=False)
    return tarball, digest


def test_import_archive_reads_verifies_and_converts(tmp_path: Path) -> None:
    config = SiteConfig(image_path=str(tmp_path / "images"), system="testsys", platform="linux/amd64")
    choice = choose_store(config, ALICE, site_writable=True)
    publish.ensure_layout(choice.store)
    built: list[Path] = []

    def build(tree: Path, dest: Path) -> int:
        built.append(tree)
        dest.write_text(json.dumps(sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))))
        return dest.stat().st_size
    service = ImageService(config, choice, ImageRepository.from_url(choice.database_url), build=build)
    tarball, digest = _oci_tarball(tmp_path)
    record = service.import_archive(tarball, "app:1", ALICE, acl=ImageAcl(True, (5001,), ()))
    assert record.status is Status.READY and record.id == digest.split(":")[1]
    assert service.lookup("app:1") == record.id and len(built) == 1
    assert service.store.read_metadata(record.id)["acl"] == {"private": True, "users": [5001], "groups": []}
    assert not list(choice.cache.partial_dir.glob("import-*.blob"))


# --------------------------------------------------------------------------- the CLI's -u / -g
class AclService:
    def __init__(self) -> None:
        self.acls: list[Any] = []

    def pull(self, ref: str, caller: Caller, progress: Any, acl: Any = None) -> ImageRecord:
        self.acls.append(acl)
        return ImageRecord("a" * 64, "sha256:" + "a" * 64, "docker", Status.READY)


def _app(service: AclService) -> App:
    caller = Caller(4242, 4242, "alice", "/nonexistent")
    return App(_config=SiteConfig(system="s"), _service=service, _caller=caller)  # type: ignore[arg-type]


def test_cli_user_and_group_options_become_a_private_acl(capsys: pytest.CaptureFixture[str]) -> None:
    service = AclService()
    assert run(["-u", "root,nobody", "--group=root", "pull", "app:1"], _app(service)) == 0
    assert service.acls == [ImageAcl(True, (0, 4242, 65534), (0,))]
    assert run(["pull", "app:1"], _app(service)) == 0
    assert service.acls[-1] is None
    capsys.readouterr()


def test_cli_unknown_user_is_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    service = AclService()
    assert run(["-u", "no-such-user-xyz", "pull", "app:1"], _app(service)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown user 'no-such-user-xyz'" in err and "(hint: " in err
    assert service.acls == []
