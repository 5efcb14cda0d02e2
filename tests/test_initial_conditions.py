"""Initial conditions: GRF covariance, band limits, Taylor-Green, loading from files."""
import math

import numpy as np
import pytest
import torch

from solvers import Grid
from solvers import spectral
from solvers.initial_conditions import band_limited, from_file, gaussian_random_field, taylor_green


def test_grf_spectrum_matches_covariance():
    """Ensemble-averaged |w_hat_k|^2 = 2 tau^(2 alpha - 2) (|k|^2 + tau^2)^-alpha, exactly FNO's generator
    (sqrt(2) amplitude, complex noise with E|xi|^2 = 2, real part)."""
    grid = Grid(32, 1.0)
    w = gaussian_random_field(grid, 2000, alpha=2.5, tau=7.0, generator=torch.Generator().manual_seed(0))
    power = (torch.fft.fft2(w, norm="forward").abs() ** 2).mean(0)
    for kx, ky in [(1, 0), (2, 1), (3, 3)]:
        lam2 = (2 * math.pi) ** 2 * (kx**2 + ky**2)
        expected = 2 * 7.0 ** (2 * 2.5 - 2) * (lam2 + 49.0) ** -2.5
        assert power[kx, ky].item() == pytest.approx(expected, rel=0.15)
    assert w.mean(dim=(-2, -1)).abs().max() < 1e-12


def test_band_limited_respects_band_and_speed():
    grid = Grid(32, 2 * math.pi)
    w = band_limited(grid, 3, k_min=2, k_max=5, max_velocity=1.5, generator=torch.Generator().manual_seed(0))
    u, v = spectral.velocity(w, grid)
    peak = torch.maximum(u.abs().amax(dim=(-2, -1)), v.abs().amax(dim=(-2, -1)))
    torch.testing.assert_close(peak, torch.full((3,), 1.5, dtype=torch.float64))
    shells = torch.sqrt(grid.k2)
    outside = (shells < 2 - 1e-9) | (shells > 5 + 1e-9)
    assert grid.rfft(w).abs()[:, outside].max() < 1e-12


def test_band_limited_empty_band_is_an_error():
    with pytest.raises(ValueError, match="holds no Fourier mode"):
        band_limited(Grid(8, 2 * math.pi), 1, k_min=10, k_max=12)


def test_taylor_green_is_a_steady_euler_solution():
    """For Taylor-Green, w = 2 k^2 psi, so the convection term vanishes identically."""
    grid = Grid(16, 2 * math.pi)
    w = taylor_green(grid, k=2)
    torch.testing.assert_close(spectral.advection(grid.rfft(w), grid).abs().max(),
                               torch.tensor(0.0, dtype=torch.float64), atol=1e-12, rtol=0)


def test_from_file_npy_shapes_and_errors(tmp_path):
    grid = Grid(16, 1.0)
    one = np.random.default_rng(0).standard_normal((16, 16))
    np.save(tmp_path / "one.npy", one)
    assert from_file(tmp_path / "one.npy", grid).shape == (1, 16, 16)
    np.save(tmp_path / "three.npy", np.stack([one] * 3))
    assert from_file(tmp_path / "three.npy", grid).shape == (3, 16, 16)
    np.save(tmp_path / "wrong.npy", one[:8, :8])
    with pytest.raises(ValueError, match=r"\(8, 8\).*\(16, 16\)"):
        from_file(tmp_path / "wrong.npy", grid)
    bad = one.copy()
    bad[2, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match="NaN"):
        from_file(tmp_path / "nan.npy", grid)
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        from_file(tmp_path / "missing.npy", grid)
    (tmp_path / "junk.npy").write_bytes(b"not a numpy file")
    with pytest.raises(ValueError, match="cannot read"):
        from_file(tmp_path / "junk.npy", grid)
