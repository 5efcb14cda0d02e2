"""Sensor layouts and the observation operator: exact at grid points and for band-limited fields."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from solvers import Grid
from solvers.observation import ObservationOperator, load_sensors, random_sensors, regular_sensors


def _trig_field(grid: Grid, modes, coeffs):
    """sum_j a_j cos(kx x + ky y) + b_j sin(...) on the grid, and the same as a function of points."""
    x = torch.arange(grid.n, dtype=torch.float64) * grid.dx
    X, Y = torch.meshgrid(x, x, indexing="ij")
    s = 2 * math.pi / grid.length

    def f(px, py):
        return sum(a * torch.cos(s * (kx * px + ky * py)) + b * torch.sin(s * (kx * px + ky * py))
                   for (kx, ky), (a, b) in zip(modes, coeffs))
    return f(X, Y)[None], f


def test_grid_points_return_grid_values(grid32):
    w = torch.randn(3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pos = random_sensors(50, grid32.length, torch.Generator().manual_seed(1), grid=grid32)
    obs = ObservationOperator(grid32, pos)(w)
    idx = (pos / grid32.dx).round().long()
    assert torch.allclose(obs, w[:, idx[:, 0], idx[:, 1]], atol=1e-12)


@pytest.mark.parametrize("length", [2 * math.pi, 1.0])
def test_off_grid_sampling_of_a_band_limited_field_is_exact(length):
    grid = Grid(32, length, dtype=torch.float64)
    modes = [(1, 0), (0, 3), (2, -5), (-7, 4), (10, 10), (15, 0)]
    coeffs = [(0.3, -0.2), (1.0, 0.5), (-0.4, 0.8), (0.25, 0.1), (0.05, -0.3), (0.2, 0.0)]
    w, f = _trig_field(grid, modes, coeffs)
    pos = random_sensors(200, length, torch.Generator().manual_seed(2))
    obs = ObservationOperator(grid, pos)(w)
    assert torch.allclose(obs[0], f(pos[:, 0], pos[:, 1]), atol=1e-12)


def test_matrix_equals_the_operator(grid32):
    op = ObservationOperator(grid32, regular_sensors(5, 4, grid32.length))
    w = torch.randn(2, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    H = op.matrix()
    assert H.shape == (20, 32 * 32)
    assert torch.allclose(w.reshape(2, -1) @ H.T, op(w), atol=1e-12)


def test_regular_layout_and_fraction():
    grid = Grid(64, 2 * math.pi)
    pos = regular_sensors(10, 10, grid.length)
    op = ObservationOperator(grid, pos)
    assert pos.shape == (100, 2) and op.fraction() == pytest.approx(100 / 64 ** 2)
    assert float(pos.min()) == pytest.approx(0.05 * grid.length) and float(pos.max()) < grid.length


@pytest.mark.parametrize("kind", ["additive", "multiplicative"])
def test_noise_has_the_stated_standard_deviation(grid32, kind):
    w = torch.full((4000, 32, 32), 2.0, dtype=torch.float64)
    op = ObservationOperator(grid32, regular_sensors(2, 2, grid32.length), noise=0.1, kind=kind)
    y = op.observe(w, torch.Generator().manual_seed(4))
    err = (y - 2.0) / (1.0 if kind == "additive" else 2.0)
    assert float(err.mean()) == pytest.approx(0.0, abs=4 * 0.1 / math.sqrt(err.numel()))
    assert float(err.std()) == pytest.approx(0.1, rel=0.03)  # 16 000 draws: 3 % is > 5 standard errors


def test_bad_sensor_input_is_refused_with_a_clear_error(tmp_path, grid32):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sensors(tmp_path / "none.csv", grid32.length)
    bad = tmp_path / "bad.csv"
    bad.write_text("0.1, 0.2\n0.3, nan\n")
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_sensors(bad, grid32.length)
    outside = tmp_path / "out.npy"
    np.save(outside, np.array([[0.1, 0.2], [7.0, 1.0]]))
    with pytest.raises(ValueError, match=r"outside the domain \[0, 6.28319\)"):
        load_sensors(outside, grid32.length)
    shape = tmp_path / "shape.txt"
    shape.write_text("1 2 3\n")
    with pytest.raises(ValueError, match="expected \\(sensors, 2\\)"):
        load_sensors(shape, grid32.length)
    with pytest.raises(ValueError, match="no sensors"):
        ObservationOperator(grid32, torch.zeros(0, 2))
    with pytest.raises(ValueError, match="unknown noise kind"):
        ObservationOperator(grid32, torch.zeros(1, 2), noise=0.1, kind="poisson")
    good = tmp_path / "good.txt"
    good.write_text("# x y\n0.5 1.5\n2.0 3.0\n")
    assert load_sensors(good, grid32.length).shape == (2, 2)
