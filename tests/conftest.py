"""Shared fixtures: small grids, seeded smooth states. Tests default to CPU and float64."""
from __future__ import annotations

import math
import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")

from solvers import Grid  # noqa: E402
from solvers.initial_conditions import band_limited  # noqa: E402


@pytest.fixture
def grid32() -> Grid:
    return Grid(32, 2 * math.pi, dtype=torch.float64)


@pytest.fixture
def smooth_state(grid32: Grid) -> torch.Tensor:
    """One band-limited vorticity field (velocity in shells 1..3, max speed 1), ``(1, 32, 32)``."""
    return band_limited(grid32, 1, 1, 3, 1.0, generator=torch.Generator().manual_seed(1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
