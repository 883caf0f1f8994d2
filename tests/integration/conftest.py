"""Fixtures shared by the integration tests (the session-wide ones are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.munge import Munged, MungeUnavailable, start_munged


@pytest.fixture
def store(site_config: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The site image store of a fresh site configuration (credentials under the temp HOME)."""
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    return site_config.parent / "images"


@pytest.fixture(scope="module")
def munge() -> Iterator[Munged]:
    """A munged of its own (own key, socket and state) for one test module; fails, never skips,
    where munge is not installed (CI installs it)."""
    try:
        daemon = start_munged()
    except MungeUnavailable as err:
        pytest.fail(str(err))
    yield daemon
    daemon.stop()
