"""Gappy POD recovers fields in the span of its basis; QR placement beats random sensors."""
from __future__ import annotations

import math

import pytest
import torch

from latent.pod import fit_pod, gappy_reconstruct, qr_sensors
from solvers import Grid
from solvers.initial_conditions import band_limited
from solvers.observation import ObservationOperator, random_sensors


def _snapshots(grid, count=60, seed=0):
    return band_limited(grid, count, 1, 4, 1.0, generator=torch.Generator().manual_seed(seed))


def test_field_in_the_span_is_recovered_exactly_from_enough_sensors():
    grid = Grid(32, 2 * math.pi, dtype=torch.float64)
    basis = fit_pod(_snapshots(grid), modes=12)
    coeffs = torch.randn(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w = basis.expand(coeffs)  # in the span of the basis (plus mean)
    rows = torch.eye(32 * 32, dtype=torch.float64)[qr_sensors(basis, 12)]  # exactly as many sensors as modes
    assert torch.allclose(gappy_reconstruct(basis, w.reshape(3, -1) @ rows.T, rows), w, atol=1e-9)
    op = ObservationOperator(grid, random_sensors(20, grid.length, torch.Generator().manual_seed(2)))  # off-grid
    assert torch.allclose(gappy_reconstruct(basis, op(w), op.matrix()), w, atol=1e-9)


def test_qr_placement_conditions_better_than_random_points():
    grid = Grid(32, 2 * math.pi, dtype=torch.float64)
    basis = fit_pod(_snapshots(grid), modes=16)
    qr_rows = qr_sensors(basis, 16)
    rand_rows = torch.randperm(32 * 32, generator=torch.Generator().manual_seed(3))[:16]
    cond = [float(torch.linalg.cond(basis.modes[:, r].T)) for r in (qr_rows, rand_rows)]
    assert cond[0] < cond[1]


def test_held_out_band_limited_fields_are_recovered_from_as_many_qr_sensors_as_dimensions():
    """Fields with velocity in shells 1..4 span a fixed D-dimensional space: D modes from training
    snapshots and D QR-placed point sensors recover unseen fields of that space exactly."""
    grid = Grid(32, 2 * math.pi, dtype=torch.float64)
    train = _snapshots(grid, 200)
    s = torch.linalg.svdvals(train.reshape(200, -1) - train.reshape(200, -1).mean(0))
    dim = int((s > 1e-9 * s[0]).sum())
    assert 20 < dim < 150
    basis = fit_pod(train, modes=dim)
    held_out = _snapshots(grid, 5, seed=9)
    rows = torch.eye(32 * 32, dtype=torch.float64)[qr_sensors(basis, dim)]
    rec = gappy_reconstruct(basis, held_out.reshape(5, -1) @ rows.T, rows)
    assert float((rec - held_out).norm() / held_out.norm()) < 1e-8


def test_posterior_ridge_gives_the_gaussian_posterior_mean_and_tracks_dropped_variance():
    """With every mode kept, gappy POD at ``posterior_ridge`` equals the Gaussian conditional mean (kriging)
    ``m + C H^T (H C H^T + s^2 I)^-1 (y - H m)`` with the snapshots' covariance ``C``; truncation moves the
    dropped modes' variance into ``tail``."""
    from latent.pod import posterior_ridge

    grid = Grid(16, 2 * math.pi, dtype=torch.float64)
    snaps = _snapshots(grid, count=30)
    basis = fit_pod(snaps, modes=29)  # 30 snapshots: 29 nonzero modes, nothing left out
    assert basis.tail < 1e-12
    flat = snaps.reshape(30, -1)
    C = torch.cov(flat.T)  # (x*y, x*y), rank 29
    op = ObservationOperator(grid, random_sensors(12, grid.length, torch.Generator().manual_seed(3)))
    H, noise_var = op.matrix(), 0.05
    y = op(snaps[:2] + 0.3) + 0.2
    kriging = basis.mean + (C @ H.T @ torch.linalg.solve(H @ C @ H.T + noise_var * torch.eye(12, dtype=torch.float64),
                                                        (y - H @ basis.mean).T)).T
    ours = gappy_reconstruct(basis, y, H, posterior_ridge(basis, noise_var))
    torch.testing.assert_close(ours.reshape(2, -1), kriging, rtol=1e-7, atol=1e-8)
    small = basis.truncate(5)
    assert small.tail == pytest.approx(float(basis.energy[5:].sum()) / flat.shape[1], rel=1e-12)
    assert posterior_ridge(small, noise_var) == pytest.approx(noise_var + small.tail)


def test_background_fits_the_misfit_of_a_forecast_like_kriging_about_it():
    """``background``: ``b + C H^T (H C H^T + s^2 I)^-1 (y - H b)``; about the snapshots' mean it is plain gappy POD."""
    from latent.pod import posterior_ridge

    grid = Grid(16, 2 * math.pi, dtype=torch.float64)
    snaps = _snapshots(grid, count=30)
    basis = fit_pod(snaps, modes=29)
    C = torch.cov(snaps.reshape(30, -1).T)
    op = ObservationOperator(grid, random_sensors(12, grid.length, torch.Generator().manual_seed(3)))
    H, noise_var = op.matrix(), 0.05
    y = op(snaps[:2] + 0.3)
    b = _snapshots(grid, count=2, seed=7).reshape(2, -1)  # two forecasts, one per row of y
    kriging = b + (C @ H.T @ torch.linalg.solve(H @ C @ H.T + noise_var * torch.eye(12, dtype=torch.float64),
                                                (y - b @ H.T).T)).T
    ridge = posterior_ridge(basis, noise_var)
    torch.testing.assert_close(gappy_reconstruct(basis, y, H, ridge, background=b).reshape(2, -1), kriging,
                               rtol=1e-7, atol=1e-8)
    mean = basis.mean.expand(2, -1)
    torch.testing.assert_close(gappy_reconstruct(basis, y, H, ridge, background=mean), gappy_reconstruct(basis, y, H, ridge))


def test_snapshots_of_a_pair_file_are_its_train_split(tmp_path):
    import numpy as np

    from latent.pod import load_snapshots
    from solvers.pairs import write_pairs

    grid = Grid(16, 2 * math.pi, dtype=torch.float64)
    w = _snapshots(grid, count=12).reshape(4, 3, 16, 16).numpy()  # (traj, time, x, y)
    path = write_pairs(tmp_path / "pairs.h5", w, w, np.arange(3) * 0.1, np.array([0, 0, 1, 2]),
                       {"grid_n": 16, "grid_length": grid.length})
    snaps = load_snapshots(path, grid)
    torch.testing.assert_close(snaps, torch.as_tensor(w[:2].reshape(6, 16, 16), dtype=torch.float64))
    with pytest.raises(ValueError, match="16\\^2, the run is 32\\^2"):
        load_snapshots(path, Grid(32, 2 * math.pi))
    with pytest.raises(FileNotFoundError):
        load_snapshots(tmp_path / "missing.h5", grid)


def test_forecast_error_scale_reads_the_innovations_and_averages_a_window():
    """Innovations drawn with covariance ``a C_modes + s^2 I`` give back ``a`` on average; estimates are clipped to
    ``[floor, 1]`` and a stream averages its last ``window``."""
    from latent.pod import ForecastErrorScale

    grid = Grid(16, 2 * math.pi, dtype=torch.float64)
    basis = fit_pod(_snapshots(grid, count=40), modes=39)  # tail ~ 0
    op = ObservationOperator(grid, random_sensors(30, grid.length, torch.Generator().manual_seed(4)))
    H, a, s2 = op.matrix(), 0.05, 0.01
    g = torch.Generator().manual_seed(5)
    scale, var = ForecastErrorScale(basis, window=1000), basis.sensor_variance(H)
    for _ in range(400):
        error = (torch.randn(39, generator=g, dtype=torch.float64) * (a * basis.energy).sqrt()) @ basis.modes
        d = H @ error + s2 ** 0.5 * torch.randn(30, generator=g, dtype=torch.float64)
        scale.update("m", d, s2, var)
    assert sum(scale.history["m"]) / 400 == pytest.approx(a, rel=0.15)
    small = ForecastErrorScale(basis, window=2, floor=1e-3)
    assert small.update(0, torch.zeros(30, dtype=torch.float64), s2, var) == pytest.approx(1e-3)  # clipped below
    assert small.update(0, 1e3 * torch.ones(30, dtype=torch.float64), s2, var) == pytest.approx((1e-3 + 1) / 2)
    assert small.update(0, 1e3 * torch.ones(30, dtype=torch.float64), s2, var) == pytest.approx(1.0)  # window of 2
    with pytest.raises(ValueError, match="window"):
        ForecastErrorScale(basis, window=0)


def test_a_ridge_per_sample_equals_solving_each_sample_alone():
    grid = Grid(16, 2 * math.pi, dtype=torch.float64)
    basis = fit_pod(_snapshots(grid, count=30), modes=12)
    op = ObservationOperator(grid, random_sensors(10, grid.length, torch.Generator().manual_seed(6)))
    y, b = op(_snapshots(grid, count=3, seed=8)), _snapshots(grid, count=3, seed=9).reshape(3, -1)
    ridge = torch.tensor([1e-3, 0.1, 2.0], dtype=torch.float64)
    together = gappy_reconstruct(basis, y, op.matrix(), ridge, background=b)
    alone = torch.cat([gappy_reconstruct(basis, y[i:i + 1], op.matrix(), float(ridge[i]), background=b[i:i + 1])
                       for i in range(3)])
    torch.testing.assert_close(together, alone)
