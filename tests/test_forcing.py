"""Forcings: analytic Kolmogorov / FNO fields; Q-Wiener noise statistics and reproducibility."""
import math

import pytest
import torch

from solvers import Grid
from solvers.forcing import QWienerNoise, fno_forcing, kolmogorov_forcing, make_forcing


def test_kolmogorov_is_curl_of_velocity_forcing():
    """Vorticity forcing = d f_v/dx - d f_u/dy with f_u = A sin(k y): equals -A k cos(k y)."""
    grid = Grid(32, 2 * math.pi)
    _, y = grid.coordinates()
    f_u = 2.0 * torch.sin(4 * y)
    curl = -grid.irfft(1j * grid.ky * grid.rfft(f_u))
    torch.testing.assert_close(kolmogorov_forcing(grid, k_f=4, amplitude=2.0), curl, atol=1e-12, rtol=0)


def test_fno_forcing_values_and_periodicity():
    grid = Grid(16, 1.0)
    f = fno_forcing(grid)
    assert f[0, 0].item() == pytest.approx(0.1)
    assert f[4, 0].item() == pytest.approx(0.1 * (math.sin(math.pi / 2) + math.cos(math.pi / 2)))
    # only the (1, 1) and (-1, -1) Fourier modes are present
    f_hat = grid.rfft(f).abs()
    assert (f_hat > 1e-12).sum().item() == 1 and f_hat[1, 1] > 0


def test_make_forcing_errors():
    grid = Grid(16)
    with pytest.raises(ValueError, match="unknown forcing 'spiral'"):
        make_forcing(grid, "spiral")
    with pytest.raises(ValueError, match="bad parameters"):
        make_forcing(grid, "kolmogorov", wavenumber=3)
    assert make_forcing(grid, "none") is None


def _mode_coefficient(field, grid, kx, ky, trig):
    """Component of ``field`` along the L2-normalised basis function sqrt(2)/L trig(k . x)."""
    x, y = grid.coordinates()
    phase = 2 * math.pi * (kx * x + ky * y) / grid.length
    basis = math.sqrt(2) / grid.length * trig(phase)
    return (field * basis).sum(dim=(-2, -1)) * grid.dx**2


@pytest.mark.parametrize("length", [1.0, 2 * math.pi])
def test_q_wiener_mode_variances(length):
    """Each real Fourier component of sigma dW has variance sigma^2 q_k dt, q_k = exp(-alpha |k|^2);
    modes beyond kappa and the mean are absent. 4000 samples: tolerance 5 standard errors."""
    grid = Grid(16, length)
    alpha, kappa, sigma, dt, samples = 0.005 * (length**2), 3, 0.5, 0.01, 4000
    noise = QWienerNoise(grid, alpha=alpha, kappa=kappa, sigma=sigma)
    dw = grid.irfft(noise.increment(samples, dt, torch.Generator().manual_seed(0)))
    for kx, ky in [(1, 0), (0, 2), (2, 3), (-3, 1), (3, -3)]:
        k2 = (2 * math.pi / length) ** 2 * (kx**2 + ky**2)
        expected = sigma**2 * dt * math.exp(-alpha * k2)
        for trig in (torch.cos, torch.sin):
            var = _mode_coefficient(dw, grid, kx, ky, trig).var().item()
            assert abs(var - expected) < 5 * expected * math.sqrt(2 / samples), (kx, ky, var, expected)
    assert _mode_coefficient(dw, grid, 4, 0, torch.cos).abs().max() < 1e-12
    assert dw.mean(dim=(-2, -1)).abs().max() < 1e-12


def test_q_wiener_is_reproducible_and_independent():
    grid = Grid(16, 1.0)
    noise = QWienerNoise(grid)
    a = noise.increment(2, 1e-3, torch.Generator().manual_seed(5))
    b = noise.increment(2, 1e-3, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])


def test_q_wiener_rejects_bad_parameters():
    with pytest.raises(ValueError, match="kappa"):
        QWienerNoise(Grid(16), kappa=0)
