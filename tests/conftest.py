"""Shared fixtures: tiny datasets written in the official file formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures import official


@pytest.fixture(scope="session")
def _tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, int]]]:
    root = tmp_path_factory.mktemp("data")
    return root, official.write_all(root)


@pytest.fixture(scope="session")
def tiny_data_dir(_tiny_data: tuple[Path, dict[str, dict[str, int]]]) -> Path:
    """A data directory with every dataset in its official layout (shared: do not modify).

    Tests that modify files write their own copy (``official.write_*`` into ``tmp_path``).
    """
    return _tiny_data[0]


@pytest.fixture(scope="session")
def tiny_counts(_tiny_data: tuple[Path, dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    """The counts ``official.write_all`` returned for ``tiny_data_dir``."""
    return _tiny_data[1]


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory):
    """A demo built with the ``tiny`` preset on tiny data, search included (shared by the demo
    route tests and the browser tests: built once per session)."""
    from fixtures.demo import build_tiny_demo

    root = tmp_path_factory.mktemp("demo")
    return root, build_tiny_demo(root)
