"""Markers of the tools' tests (registered here so pyproject's list stays the shared one)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos: runs a fault schedule against its own mesh (tools.chaos)"
    )
