"""The PostgreSQL test fixture finds Debian's server binaries, or fails saying how to get them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.postgres import PostgresUnavailable, find_bin_dir


def _fake_bin(root: Path, version: str) -> Path:
    bin_dir = root / version / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("initdb", "pg_ctl"):
        (bin_dir / tool).write_text("")
    return bin_dir


def test_missing_server_binaries_fail_with_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(PostgresUnavailable, match="apt-get install -y postgresql"):
        find_bin_dir(f"{tmp_path}/*/bin")


def test_the_newest_version_wins(tmp_path: Path) -> None:
    _fake_bin(tmp_path, "9.6")
    newest = _fake_bin(tmp_path, "15")
    (tmp_path / "16" / "bin").mkdir(parents=True)  # no initdb: not a server
    assert find_bin_dir(f"{tmp_path}/*/bin") == newest
