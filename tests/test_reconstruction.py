"""Interpolation baselines: exact Fourier fits of band-limited fields, converging cubic interpolation."""
from __future__ import annotations

import math

import torch

from solvers import Grid
from solvers.diagnostics import rel_l2
from solvers.initial_conditions import band_limited
from solvers.observation import ObservationOperator, random_sensors
from solvers.reconstruction import cubic_interpolate, fourier_fit


def _field(grid, seed=0):
    return band_limited(grid, 2, 1, 3, 1.0, generator=torch.Generator().manual_seed(seed))


def test_fourier_fit_recovers_a_band_limited_field():
    grid = Grid(32, 2 * math.pi, dtype=torch.float64)
    w = _field(grid)  # velocity shells 1..3: vorticity modes |k| <= 3
    pos = random_sensors(120, grid.length, torch.Generator().manual_seed(1))
    rec = fourier_fit(ObservationOperator(grid, pos)(w), pos, grid, modes=3)
    assert float(rel_l2(rec, w)) < 1e-6


def test_cubic_interpolation_error_falls_with_more_sensors():
    grid = Grid(32, 2 * math.pi, dtype=torch.float64)
    w = _field(grid, seed=2)
    errs = []
    for count in (64, 256, 1024):
        pos = random_sensors(count, grid.length, torch.Generator().manual_seed(3))
        rec = cubic_interpolate(ObservationOperator(grid, pos)(w), pos, grid)
        assert torch.isfinite(rec).all()  # periodic images: no NaN outside the sensors' hull
        errs.append(float(rel_l2(rec, w)))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.05, errs


def test_fourier_fit_with_zero_modes_is_the_sensor_mean():
    grid = Grid(16, 1.0, dtype=torch.float64)
    values = torch.tensor([[1.0, 2.0, 6.0]], dtype=torch.float64)
    positions = torch.tensor([[0.1, 0.2], [0.5, 0.5], [0.7, 0.9]], dtype=torch.float64)
    out = fourier_fit(values, positions, grid, modes=0, ridge=0.0)
    assert torch.allclose(out, torch.full((1, 16, 16), 3.0, dtype=torch.float64))
