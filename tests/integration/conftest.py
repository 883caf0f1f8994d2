"""Fixtures shared by the integration tests (the session-wide ones are in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def store(site_config: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The site image store of a fresh site configuration (credentials under the temp HOME)."""
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    return site_config.parent / "images"
