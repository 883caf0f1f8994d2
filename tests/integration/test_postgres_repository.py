"""The gateway's repository on a real PostgreSQL server.

The backend contract of ``tests/unit/test_gateway_repository.py`` (the tests that take ``db_url``)
runs here again with ``db_url`` on a fresh PostgreSQL database; the tests below cover what only
PostgreSQL has: a server that may be down, enforced column types, a server time zone.
"""

from __future__ import annotations

import datetime as dt

import pytest

from shifter.errors import StoreError
from shifter.gateway.models import Status
from shifter.gateway.repository import ImageRepository
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.registry import free_port
from tests.unit.test_gateway_repository import (  # the same contract, on PostgreSQL
    test_concurrent_first_writes_of_one_image_all_succeed,
    test_concurrent_retags_report_each_previous_image_once,
    test_image_config_created_of_any_length_is_kept,
    test_many_connections_creating_the_schema_at_once,
    test_retag_keeps_top_digest_unless_given,
    test_second_repository_on_the_same_database_sees_the_data,
    test_sha512_ids_and_digests_fit,
    test_status_life_cycle,
    test_tags_point_move_and_go,
    test_timestamps_are_naive_utc_whatever_the_caller_passes,
    test_unknown_column_is_a_programming_error,
)

pytestmark = pytest.mark.integration
__all__ = [
    "test_concurrent_first_writes_of_one_image_all_succeed", "test_concurrent_retags_report_each_previous_image_once",
    "test_image_config_created_of_any_length_is_kept", "test_many_connections_creating_the_schema_at_once",
    "test_retag_keeps_top_digest_unless_given", "test_second_repository_on_the_same_database_sees_the_data",
    "test_sha512_ids_and_digests_fit", "test_status_life_cycle", "test_tags_point_move_and_go",
    "test_timestamps_are_naive_utc_whatever_the_caller_passes", "test_unknown_column_is_a_programming_error",
]
ID = "a" * 64


@pytest.fixture
def db_url(postgres_url: str) -> str:
    return postgres_url


@pytest.fixture
def repo(db_url: str) -> ImageRepository:
    return ImageRepository.from_url(db_url)


def test_server_down_is_a_store_error_with_a_hint_and_no_password() -> None:
    with pytest.raises(StoreError) as err:
        ImageRepository.from_url(f"postgresql+psycopg://shifter:hunter2@127.0.0.1:{free_port()}/shifter")
    assert "hunter2" not in str(err.value) and "server runs" in err.value.hint


def test_the_schema_is_real_postgresql_tables(repo: ImageRepository, postgres: PostgresServer) -> None:
    database = repo.engine.url.database or ""
    columns = postgres.psql(database, "SELECT table_name || '.' || column_name || ' ' || data_type "
                                      "FROM information_schema.columns WHERE table_schema = 'public'").split("\n")
    assert "images.updated_at timestamp without time zone" in columns
    assert "images.acl json" in columns and "images.size bigint" in columns
    assert postgres.psql(database, "SELECT value FROM shifter_meta WHERE key = 'schema'").strip() == "1"


def test_timestamps_do_not_follow_the_server_time_zone(repo: ImageRepository, postgres: PostgresServer) -> None:
    database = repo.engine.url.database or ""
    postgres.psql(database, f"ALTER DATABASE {database} SET timezone TO 'Pacific/Auckland'")
    fresh = ImageRepository.from_url(str(repo.engine.url))  # new connections get the zone
    try:
        aware = dt.datetime(2024, 5, 6, 14, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
        fresh.set_status(ID, Status.READY, "ready", pulled_at=aware)
        stored = postgres.psql(database, f"SELECT pulled_at FROM images WHERE id = '{ID}'").strip()
        assert stored == "2024-05-06 12:30:00"
        record = fresh.get(ID)
        assert record is not None and record.pulled_at == dt.datetime(2024, 5, 6, 12, 30)
    finally:
        fresh.close()
