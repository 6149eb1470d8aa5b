"""Fixtures shared by the registry adapter tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.registries.data import generate


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated registries database, one per test module."""
    path = tmp_path_factory.mktemp("registries") / "registries.db"
    generate(f"sqlite:///{path}", scale="small")
    return path
