"""The SQLAlchemy repository on a real SQLite file (WAL)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from shifter.gateway.models import Status
from shifter.gateway.repository import ImageRepository

ID = "a" * 64


@pytest.fixture
def repo(tmp_path: Path) -> ImageRepository:
    return ImageRepository.from_url(f"sqlite:///{tmp_path / 'shifter.db'}")


def test_sqlite_uses_wal(repo: ImageRepository, tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "shifter.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_status_life_cycle(repo: ImageRepository) -> None:
    assert repo.get(ID) is None
    repo.set_status(ID, Status.PENDING, "queued", digest=f"sha256:{ID}", owner="alice", source="r.io/a:1")
    repo.set_status(ID, Status.PULLING, "downloading")
    record = repo.set_status(ID, Status.READY, "ready", size=10)
    assert record.status is Status.READY and record.owner == "alice" and record.size == 10
    assert record.to_json()["status"] == "READY"


def test_tags_point_move_and_go(repo: ImageRepository) -> None:
    other = "b" * 64
    repo.set_status(ID, Status.READY, "ready")
    repo.set_status(other, Status.READY, "ready")
    assert repo.set_tag("docker", "r.io/a:1", ID, "alice") is None
    assert repo.set_tag("docker", "r.io/a:2", ID, "bob") is None
    assert {t.ref for t in repo.tags_of(ID)} == {"r.io/a:1", "r.io/a:2"}
    assert repo.set_tag("docker", "r.io/a:1", other, "carol") == ID
    found = repo.find_tag("docker", "r.io/a:1")
    assert found is not None and found.image_id == other and found.owner == "carol"
    repo.remove_tag("docker", "r.io/a:2")
    assert repo.tags_of(ID) == []
    repo.delete_image(other)
    assert repo.find_tag("docker", "r.io/a:1") is None
    assert [r.id for r in repo.list_images()] == [ID]


def test_second_repository_on_same_file_sees_the_data(repo: ImageRepository, tmp_path: Path) -> None:
    repo.set_status(ID, Status.FAILED, "boom")
    again = ImageRepository.from_url(f"sqlite:///{tmp_path / 'shifter.db'}")
    record = again.get(ID)
    assert record is not None and record.status_message == "boom"
