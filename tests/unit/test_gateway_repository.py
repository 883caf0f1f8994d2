"""The SQLAlchemy repository on a real SQLite file (WAL).

The tests that take ``db_url`` are the backend contract: ``tests/integration/test_postgres_repository.py``
runs them again on a real PostgreSQL server.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest

from shifter.errors import StoreError
from shifter.gateway.models import Status
from shifter.gateway.repository import ImageRepository, database_url, make_engine

ID = "a" * 64
T = TypeVar("T")


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'shifter.db'}"


@pytest.fixture
def repo(db_url: str) -> ImageRepository:
    return ImageRepository.from_url(db_url)


def at_once(db_url: str, count: int, work: Callable[[ImageRepository, int], T]) -> list[T]:
    """Run ``work(repository, i)`` in ``count`` threads, each with its own repository (own connections)."""
    repos = [ImageRepository.from_url(db_url) for _ in range(count)]
    start = threading.Barrier(count)

    def one(i: int) -> T:
        start.wait()
        return work(repos[i], i)

    try:
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(one, range(count)))
    finally:
        for r in repos:
            r.close()


# --- the backend contract ----------------------------------------------------------------
def test_status_life_cycle(repo: ImageRepository) -> None:
    assert repo.get(ID) is None
    repo.set_status(ID, Status.PENDING, "queued", digest=f"sha256:{ID}", owner="alice", source="r.io/a:1")
    repo.set_status(ID, Status.PULLING, "downloading")
    record = repo.set_status(ID, Status.READY, "ready", size=10)
    assert record.status is Status.READY and record.owner == "alice" and record.size == 10
    assert record.digest == f"sha256:{ID}" and record.acl == {"private": False, "users": [], "groups": []}
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


def test_retag_keeps_top_digest_unless_given(repo: ImageRepository) -> None:
    repo.set_status(ID, Status.READY, "ready")
    repo.set_tag("docker", "r.io/a:1", ID, "alice", "sha256:" + "c" * 64)
    assert repo.set_tag("docker", "r.io/a:1", ID, "bob") == ID
    found = repo.find_tag("docker", "r.io/a:1")
    assert found is not None and found.top_digest == "sha256:" + "c" * 64 and found.owner == "alice"


def test_second_repository_on_the_same_database_sees_the_data(repo: ImageRepository, db_url: str) -> None:
    repo.set_status(ID, Status.FAILED, "boom")
    again = ImageRepository.from_url(db_url)  # creating the schema again is harmless
    record = again.get(ID)
    assert record is not None and record.status_message == "boom"


def test_sha512_ids_and_digests_fit(repo: ImageRepository) -> None:
    long_id = "d" * 128
    repo.set_status(long_id, Status.READY, "ready", digest=f"sha512:{long_id}")
    repo.set_tag("docker", "r.io/a@sha512:" + long_id, long_id, "alice", f"sha512:{long_id}")
    record = repo.get(long_id)
    assert record is not None and record.digest == f"sha512:{long_id}"
    assert [t.ref for t in record.tags] == ["r.io/a@sha512:" + long_id]


def test_image_config_created_of_any_length_is_kept(repo: ImageRepository) -> None:
    created = "2024-01-02T03:04:05.123456789Z" + " (built by a very chatty tool)" * 20
    record = repo.set_status(ID, Status.READY, "ready", created=created)
    assert record.created == created


def test_timestamps_are_naive_utc_whatever_the_caller_passes(repo: ImageRepository) -> None:
    aware = dt.datetime(2024, 5, 6, 14, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    record = repo.set_status(ID, Status.READY, "ready", pulled_at=aware)
    assert record.pulled_at == dt.datetime(2024, 5, 6, 12, 30)
    again = repo.get(ID)
    assert again is not None and again.pulled_at == dt.datetime(2024, 5, 6, 12, 30)
    assert again.updated_at is not None and again.updated_at.tzinfo is None
    assert again.to_json()["pulled_at"] == "2024-05-06T12:30:00Z"


def test_unknown_column_is_a_programming_error(repo: ImageRepository) -> None:
    with pytest.raises(TypeError, match="no_such_column"):
        repo.set_status(ID, Status.READY, "ready", no_such_column=1)


def test_many_connections_creating_the_schema_at_once(db_url: str) -> None:
    assert at_once(db_url, 6, lambda r, i: r.get(ID)) == [None] * 6


def test_concurrent_first_writes_of_one_image_all_succeed(db_url: str) -> None:
    records = at_once(db_url, 6, lambda r, i: r.set_status(ID, Status.PENDING, f"queued by {i}", owner=f"u{i}"))
    assert {r.id for r in records} == {ID}
    assert [r.id for r in ImageRepository.from_url(db_url).list_images()] == [ID]


def test_concurrent_retags_report_each_previous_image_once(repo: ImageRepository, db_url: str) -> None:
    """Each caller sees the tag as the one before it left it: no two callers replace the same image."""
    ids = [f"{i:x}" * 64 for i in range(1, 7)]
    for image_id in ids:
        repo.set_status(image_id, Status.READY, "ready")
    previous = at_once(db_url, len(ids), lambda r, i: r.set_tag("docker", "r.io/a:1", ids[i], f"u{i}"))
    final = repo.find_tag("docker", "r.io/a:1")
    assert final is not None
    assert previous.count(None) == 1
    assert sorted(p for p in previous if p is not None) == sorted(i for i in ids if i != final.image_id)


# --- SQLite only -------------------------------------------------------------------------
def test_sqlite_uses_wal(repo: ImageRepository, tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "shifter.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --- URLs --------------------------------------------------------------------------------
def test_bare_postgresql_url_means_psycopg_3() -> None:
    assert database_url("postgresql://shifter@db:5432/shifter").drivername == "postgresql+psycopg"
    assert database_url("postgresql+psycopg://shifter@db/shifter").drivername == "postgresql+psycopg"
    assert database_url("sqlite:////var/lib/shifter/images/shifter.db").drivername == "sqlite"


def test_other_databases_are_refused_with_a_hint() -> None:
    with pytest.raises(StoreError) as err:
        make_engine("mysql://shifter:pw@db/shifter")
    assert "SQLite and PostgreSQL" in str(err.value) and err.value.hint


def test_password_never_shows_in_errors() -> None:
    with pytest.raises(StoreError) as err:
        make_engine("postgresql+nosuchdriver://shifter:hunter2@db/shifter")
    assert "hunter2" not in str(err.value) and "***" in str(err.value)
