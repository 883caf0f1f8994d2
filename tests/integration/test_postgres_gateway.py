"""The image gateway end to end with ``databaseUrl`` on a real PostgreSQL server.

``shifterimg pull/images/lookup/inspect/rm`` (in-process), a pull killed with SIGKILL and
recovered, and two processes pulling one image at once: the same tests as on SQLite
(imported from their modules), here with a site configuration whose ``databaseUrl`` names
a fresh PostgreSQL database.  The test below also looks into that database directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shifter.cli.shifterimg import run
from tests.conftest import PushedImage
from tests.fixtures.postgres import PostgresServer
from tests.integration.test_pull_crash import (  # the same tests, on PostgreSQL
    test_kill_9_during_conversion_then_pull_again_recovers,
    test_two_processes_pulling_one_image_convert_it_once,
)
from tests.integration.test_shifterimg_cli import test_pull_images_lookup_inspect_rm

pytestmark = pytest.mark.integration
__all__ = ["test_kill_9_during_conversion_then_pull_again_recovers", "test_pull_images_lookup_inspect_rm",
           "test_two_processes_pulling_one_image_convert_it_once"]


@pytest.fixture
def site_config(site_config: Path, postgres_url: str) -> Path:
    """The test site configuration, with its database on PostgreSQL."""
    with site_config.open("a") as conf:
        conf.write(f"databaseUrl={postgres_url}\n")
    return site_config


def test_pull_and_rm_write_postgresql_not_sqlite(capsys: pytest.CaptureFixture[str], site_config: Path,
                                                 postgres: PostgresServer, postgres_url: str,
                                                 busybox_image: PushedImage) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    image_id = busybox_image.digest.split(":")[1]
    assert run(["pull", busybox_image.ref]) == 0, capsys.readouterr().err
    row = postgres.psql(database, f"SELECT status || ' ' || digest || ' ' || (pulled_at IS NOT NULL) "
                                  f"FROM images WHERE id = '{image_id}'").strip()
    assert row == f"READY {busybox_image.digest} true"
    assert postgres.psql(database, "SELECT image_id FROM tags").strip() == image_id
    assert not (site_config.parent / "images" / "shifter.db").exists()

    capsys.readouterr()
    assert run(["images", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["tag"], r["status"]) for r in rows] == [(image_id, busybox_image.ref, "READY")]

    assert run(["rm", busybox_image.ref]) == 0
    assert postgres.psql(database, "SELECT count(*) FROM tags").strip() == "0"
