"""ImageService with its seams filled by small fakes: registry, flattener, squashfs builder.

The store, locks, blob cache and SQLite repository are real.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from shifter.config.site import SiteConfig
from shifter.convert.metadata import ImageContent, LayerBlob
from shifter.errors import (
    AccessDeniedError,
    ConversionError,
    ImageNotFoundError,
    ImageNotReadyError,
    UsageError,
)
from shifter.gateway.models import Status
from shifter.gateway.repository import ImageRepository
from shifter.gateway.service import ImageService
from shifter.gateway.stores import Caller, choose_store
from shifter.store import publish

ALICE = Caller(4242, 4242, "alice", "/home/alice")
BOB = Caller(4343, 4343, "bob", "/home/bob")
ROOT = Caller(0, 0, "root", "/root")


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeRegistry:
    """Serves images made of JSON 'layers' ({path: text}); counts what it is asked."""

    def __init__(self) -> None:
        self.images: dict[str, tuple[list[bytes], dict[str, Any]]] = {}
        self.resolves = 0
        self.heads = 0
        self.fetched: list[str] = []
        self.gate: threading.Event | None = None

    def put(self, ref: str, *layers: dict[str, str], env: str = "A=1") -> str:
        blobs = [json.dumps(layer).encode() for layer in layers]
        self.images[ref] = (blobs, {"os": "linux", "architecture": "amd64", "config": {"Env": [env]}})
        return self._digest(ref)

    def _digest(self, ref: str) -> str:
        blobs, config = self.images[ref]
        return _sha(json.dumps([_sha(b) for b in blobs] + [config]).encode())

    def resolve(self, ref: Any, platform: Any = None) -> Any:
        self.resolves += 1
        if str(ref) not in self.images:
            raise ImageNotFoundError(f"{ref} not in registry")
        blobs, config = self.images[str(ref)]
        layers = [SimpleNamespace(digest=_sha(b), size=len(b), media_type="tar", data=b) for b in blobs]
        digest = self._digest(str(ref))
        config_desc = SimpleNamespace(digest=_sha(json.dumps(config).encode()))
        return SimpleNamespace(digest=digest, top_digest=digest, layers=layers,
                               config=SimpleNamespace(raw=config),
                               manifest=SimpleNamespace(config=config_desc),
                               platform=SimpleNamespace(os="linux", architecture="amd64", variant=""))

    def head_digest(self, ref: Any) -> str | None:
        self.heads += 1
        return self._digest(str(ref)) if str(ref) in self.images else None

    def fetch_blobs(self, ref: Any, descriptors: Sequence[Any], cache: Any, progress: Any) -> list[Path]:
        if self.gate is not None:
            self.gate.wait(10)
        out = []
        for desc in descriptors:
            self.fetched.append(desc.digest)
            partial = cache.partial_path(desc.digest)
            partial.write_bytes(desc.data)
            out.append(cache.commit(desc.digest, partial))
        return out


@dataclass
class FakeTools:
    builds: list[Path] = field(default_factory=list)
    fail_build: Exception | None = None

    def flatten(self, layers: Sequence[Path], dest: Path) -> None:
        assert dest.is_dir() and not any(dest.iterdir())
        for layer in layers:
            for name, text in json.loads(layer.read_bytes()).items():
                (dest / name).write_text(text)

    def build(self, tree: Path, dest: Path) -> int:
        self.builds.append(tree)
        if self.fail_build is not None:
            raise self.fail_build
        files = {p.name: p.read_text() for p in sorted(tree.iterdir())}
        dest.write_text(json.dumps(files))
        return dest.stat().st_size


@dataclass
class Env:
    config: SiteConfig
    registry: FakeRegistry
    tools: FakeTools
    root: Path

    def service(self, caller: Caller = ALICE, **config: Any) -> ImageService:
        cfg = SiteConfig(**{**self.config.__dict__, **config})
        choice = choose_store(cfg, caller, site_writable=True)
        publish.ensure_layout(choice.store)
        repo = ImageRepository.from_url(choice.database_url)
        return ImageService(cfg, choice, repo, registry=self.registry, flatten=self.tools.flatten,
                            build=self.tools.build)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    config = SiteConfig(image_path=str(tmp_path / "images"), gateway_admins=("root",), system="testsys")
    return Env(config, FakeRegistry(), FakeTools(), tmp_path / "images")


def _squash_content(service: ImageService, image_id: str) -> dict[str, str]:
    return dict(json.loads(service.store.squashfs_path(image_id).read_text()))


def test_pull_makes_a_ready_image_with_tag_and_metadata(env: Env) -> None:
    digest = env.registry.put("r.io/app:1", {"a": "1"}, {"b": "2", "a": "3"})
    service = env.service()
    record = service.pull("docker:r.io/app:1", ALICE)
    image_id = digest.split(":")[1]
    assert record.status is Status.READY and record.id == image_id and record.owner == "alice"
    assert service.store.is_ready(image_id)
    assert service.store.resolve_tag("docker", "r.io/app:1") == image_id
    assert _squash_content(service, image_id) == {"a": "3", "b": "2"}
    meta = service.store.read_metadata(image_id)
    assert meta["env"] == ["A=1"] and meta["source"] == "r.io/app:1" and len(meta["layers"]) == 2
    assert list(service.store.tmp_dir.iterdir()) == []  # the tree and partial are gone
    assert service.lookup("r.io/app:1") == image_id


def test_repull_of_unchanged_tag_only_resolves(env: Env) -> None:
    env.registry.put("r.io/app:1", {"a": "1"})
    service = env.service()
    service.pull("r.io/app:1", ALICE)
    fetched, builds = len(env.registry.fetched), len(env.tools.builds)
    record = service.pull("r.io/app:1", ALICE)
    assert record.status is Status.READY
    assert len(env.registry.fetched) == fetched and len(env.tools.builds) == builds
    assert env.registry.resolves == 1 and env.registry.heads == 1  # one HEAD request, nothing else


def test_same_digest_under_two_tags_is_stored_once(env: Env) -> None:
    env.registry.put("r.io/app:1", {"a": "1"})
    env.registry.put("r.io/app:latest", {"a": "1"})
    service = env.service()
    first = service.pull("r.io/app:1", ALICE)
    second = service.pull("r.io/app:latest", ALICE)
    assert first.id == second.id and len(env.tools.builds) == 1
    assert len(list(service.store.root.glob("*.squashfs"))) == 1
    assert {r["tag"] for r in service.images()} == {"r.io/app:1", "r.io/app:latest"}


def test_changed_tag_moves_and_old_image_stays(env: Env) -> None:
    env.registry.put("r.io/app:1", {"a": "old"})
    service = env.service()
    old = service.pull("r.io/app:1", ALICE)
    env.registry.put("r.io/app:1", {"a": "new"})
    new = service.pull("r.io/app:1", ALICE)
    assert old.id != new.id and service.lookup("r.io/app:1") == new.id
    assert service.store.is_ready(old.id)


def test_failed_conversion_keeps_previous_image_and_tag(env: Env) -> None:
    env.registry.put("r.io/app:1", {"a": "old"})
    service = env.service()
    old = service.pull("r.io/app:1", ALICE)
    new_digest = env.registry.put("r.io/app:1", {"a": "new"})
    env.tools.fail_build = ConversionError("mksquashfs failed: boom", hint="h")
    with pytest.raises(ConversionError):
        service.pull("r.io/app:1", ALICE)
    new_id = new_digest.split(":")[1]
    assert service.lookup("r.io/app:1") == old.id
    assert not service.store.squashfs_path(new_id).exists()
    assert not service.store.metadata_path(new_id).exists()
    assert list(service.store.tmp_dir.iterdir()) == []
    failed = service.repo.get(new_id)
    assert failed is not None and failed.status is Status.FAILED and "boom" in failed.status_message
    env.tools.fail_build = None
    assert service.pull("r.io/app:1", ALICE).id == new_id  # a retry works


def test_stale_pull_of_a_dead_process_is_recovered(env: Env) -> None:
    digest = env.registry.put("r.io/app:1", {"a": "1"})
    image_id = digest.split(":")[1]
    service = env.service()
    # What a kill -9 during conversion leaves: DB says CONVERTING, work files, no json; lock free.
    service.repo.set_status(image_id, Status.CONVERTING, "building squashfs", worker="otherhost:1")
    publish.work_path(service.store, image_id, ".tree").mkdir()
    publish.work_path(service.store, image_id, ".squashfs.partial").write_bytes(b"half")
    with pytest.raises(ImageNotReadyError, match="died"):  # seen as dead at once: no "wait"
        service.lookup(f"id:{image_id}")
    assert service.recover() == []  # the lookup already did it
    stale = service.repo.get(image_id)
    assert stale is not None and stale.status is Status.FAILED and "interrupted" in stale.status_message
    assert list(service.store.tmp_dir.iterdir()) == []
    assert service.pull("r.io/app:1", ALICE).status is Status.READY


def test_live_pull_is_not_mistaken_for_stale(env: Env) -> None:
    digest = env.registry.put("r.io/app:1", {"a": "1"})
    image_id = digest.split(":")[1]
    service = env.service()
    service.repo.set_status(image_id, Status.PULLING, "downloading")
    publish.work_path(service.store, image_id, ".tree").mkdir()
    holder = publish.image_lock(service.store, image_id)
    assert holder.acquire(blocking=False)
    try:
        assert service.recover() == []
    finally:
        holder.release()
    record = service.repo.get(image_id)
    assert record is not None and record.status is Status.PULLING


def test_concurrent_pulls_of_one_image_do_the_work_once(env: Env) -> None:
    env.registry.put("r.io/app:1", {"a": "1"})
    env.registry.gate = threading.Event()
    results: list[Any] = []

    def pull() -> None:
        results.append(env.service().pull("r.io/app:1", ALICE))

    threads = [threading.Thread(target=pull) for _ in range(2)]
    for thread in threads:
        thread.start()
    env.registry.gate.set()
    for thread in threads:
        thread.join(20)
    assert len(results) == 2 and {r.status for r in results} == {Status.READY}
    assert len(env.tools.builds) == 1


def test_remove_last_tag_removes_files_owner_or_admin_only(env: Env) -> None:
    env.registry.put("r.io/app:1", {"a": "1"})
    env.registry.put("r.io/app:2", {"a": "1"})
    service = env.service()
    image_id = service.pull("r.io/app:1", ALICE).id
    service.pull("r.io/app:2", ALICE)
    with pytest.raises(AccessDeniedError):
        service.remove("r.io/app:1", BOB)
    assert service.remove("r.io/app:1", ALICE) == ["docker:r.io/app:1"]
    assert service.store.is_ready(image_id)
    assert service.remove("r.io/app:2", ROOT) == ["docker:r.io/app:2", f"id:{image_id}"]
    assert not service.store.squashfs_path(image_id).exists()
    assert service.repo.get(image_id) is None
    with pytest.raises(ImageNotFoundError):
        service.lookup("r.io/app:2")


def test_remove_by_id_drops_all_tags(env: Env) -> None:
    env.registry.put("r.io/app:1", {"a": "1"})
    service = env.service()
    image_id = service.pull("r.io/app:1", ALICE).id
    assert service.remove(f"id:{image_id[:12]}", ALICE) == ["docker:r.io/app:1", f"id:{image_id}"]
    assert service.images() == []


def test_lookup_and_inspect(env: Env) -> None:
    env.registry.put("r.io/app:1", {"a": "1"})
    service = env.service()
    with pytest.raises(ImageNotFoundError):
        service.lookup("r.io/app:1")
    image_id = service.pull("r.io/app:1", ALICE).id
    info = service.inspect("r.io/app:1")
    assert info["id"] == image_id and info["tags"] == ["docker:r.io/app:1"] and info["status"] == "READY"
    assert json.loads(json.dumps(service.images()))[0]["id"] == image_id
    assert service.lookup(f"id:{image_id[:12]}") == image_id


def test_unknown_image_in_registry_fails_cleanly(env: Env) -> None:
    service = env.service()
    with pytest.raises(ImageNotFoundError):
        service.pull("r.io/nope:1", ALICE)
    assert service.images() == []


def test_pull_of_id_reference_is_a_usage_error(env: Env) -> None:
    with pytest.raises(UsageError):
        env.service().pull("id:" + "a" * 64, ALICE)


def test_import_converts_local_blobs(env: Env, tmp_path: Path) -> None:
    service = env.service()
    blob = tmp_path / "layer"
    blob.write_text(json.dumps({"x": "imported"}))
    digest, path = service.cache.ingest(blob)
    content = ImageContent(_sha(b"manifest"), {"config": {"Cmd": ["/x"]}}, _sha(b"cfg"),
                           [LayerBlob(digest, path.stat().st_size, "tar", path)])
    record = service.import_image(content, "docker:app:1", ALICE)
    assert record.status is Status.READY
    assert service.lookup("app:1") == content.image_id
    assert _squash_content(service, content.image_id) == {"x": "imported"}


def test_db_lost_ready_image_is_adopted_on_repull(env: Env, tmp_path: Path) -> None:
    env.registry.put("r.io/app:1", {"a": "1"})
    service = env.service()
    image_id = service.pull("r.io/app:1", ALICE).id
    service.store.database_path.unlink()
    fresh = env.service()
    assert fresh.images()[0]["id"] == image_id  # listed from the tag files
    assert fresh.pull("r.io/app:1", ALICE).status is Status.READY
    assert len(env.tools.builds) == 1
