"""Diagnostics: Parseval, spectrum sums to energy, analytic values, error metrics."""
import math

import pytest
import torch

from solvers import Grid
from solvers.diagnostics import (cfl_number, cospectrum, energy, energy_spectrum, enstrophy, ens_mean_rel_l2, max_velocity,
                                 rel_l2, spread, vorticity_pdf)
from solvers import spectral
from solvers.initial_conditions import taylor_green


def test_energy_matches_physical_space_and_spectrum_sums_to_it():
    grid = Grid(32, 2 * math.pi)
    noise = torch.randn(3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w = grid.irfft(grid.rfft(noise) * grid.dealias)  # solver states carry no Nyquist content
    u, v = spectral.velocity(w, grid)
    direct = 0.5 * (u**2 + v**2).mean(dim=(-2, -1))
    torch.testing.assert_close(energy(w, grid), direct, rtol=1e-12, atol=0)
    k, spectrum = energy_spectrum(w, grid)
    torch.testing.assert_close(spectrum.sum(-1), direct, rtol=1e-12, atol=0)
    assert k[0] == 0 and spectrum[:, 0].abs().max() < 1e-14


def test_cospectrum_sums_to_the_box_mean_of_the_product_and_sits_in_its_shells():
    grid = Grid(16, 2 * math.pi)
    g = torch.Generator().manual_seed(1)
    a, b = (torch.randn(2, 16, 16, dtype=torch.float64, generator=g) for _ in range(2))  # with Nyquist content
    k, c = cospectrum(a, b, grid)
    torch.testing.assert_close(c.sum(-1), (a * b).mean(dim=(-2, -1)), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(cospectrum(b, a, grid)[1], c, rtol=1e-12, atol=1e-14)
    x, y = grid.coordinates()
    _, c = cospectrum(torch.cos(3 * x), torch.cos(3 * x) + torch.sin(5 * y), grid)
    assert c[3].item() == pytest.approx(0.5) and c.abs().sum().item() == pytest.approx(0.5)  # sin 5y is orthogonal


def test_taylor_green_values():
    """TG with amplitude A, k: u = A k sin cos, so E = A^2 k^2 / 4, Z = <w^2>/2 = A^2 k^4 / 2, all energy in shell sqrt2 k."""
    grid = Grid(32, 2 * math.pi)
    w = taylor_green(grid, k=3, amplitude=0.5)
    assert energy(w, grid).item() == pytest.approx(0.25 * 0.25 * 9)
    assert enstrophy(w, grid).item() == pytest.approx(0.25 * 81 / 2)
    _, spectrum = energy_spectrum(w, grid)
    assert spectrum[0, round(3 * math.sqrt(2))].item() == pytest.approx(energy(w, grid).item())
    assert max_velocity(w, grid).item() == pytest.approx(0.5 * 3, rel=1e-3)
    assert cfl_number(w, grid, 0.1).item() == pytest.approx(2 * 1.5 * 0.1 / grid.dx, rel=1e-3)


def test_vorticity_pdf_is_normalised():
    centres, density = vorticity_pdf(torch.randn(10000, generator=torch.Generator().manual_seed(0)), bins=51)
    width = (centres[1] - centres[0]).item()
    assert (density.sum() * width).item() == pytest.approx(1.0)
    assert centres[density.argmax()].abs() < 0.3


def test_error_metrics():
    truth = torch.ones(2, 4, 4)
    assert rel_l2(truth * 1.1, truth).item() == pytest.approx(0.1)
    members = torch.stack([truth * 0.9, truth * 1.1])
    assert ens_mean_rel_l2(members, truth).item() == pytest.approx(0.0, abs=1e-7)
    assert spread(members).item() == pytest.approx(0.1)


def test_correlation_is_pearsons_over_all_values():
    import numpy as np

    from solvers import diagnostics

    g = torch.Generator().manual_seed(0)
    a, noise = torch.randn(3, 8, 8, generator=g), torch.randn(3, 8, 8, generator=g)
    assert diagnostics.correlation(a, 2 * a + 1) == pytest.approx(1.0, abs=1e-12)
    assert diagnostics.correlation(a, -a) == pytest.approx(-1.0, abs=1e-12)
    expected = np.corrcoef(a.flatten().numpy(), (a + noise).flatten().numpy())[0, 1]
    assert diagnostics.correlation(a, a + noise) == pytest.approx(expected, rel=1e-6)
    assert diagnostics.correlation(torch.zeros(4, 4), a[0, :4, :4]) == 0.0
