"""Filters, regridding and exact closure terms (solvers/filters.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from solvers import Grid, NavierStokes2D, spectral
from solvers.diagnostics import energy_spectrum
from solvers.forcing import make_forcing
from solvers.filters import (apply_filter, box_transfer, coarse_grain, e1_closure_target, gaussian_transfer,
                             les_closure_term, make_filter, sharp_transfer, spectral_interpolate, subsample,
                             truncate)
from solvers.initial_conditions import gaussian_random_field


def mode(grid: Grid, a: int, b: int, phase: float = 0.3) -> torch.Tensor:
    """``cos(k_a x + k_b y + phase)`` with integer wavenumbers ``(a, b)``, shape ``(1, n, n)``."""
    x, y = grid.coordinates()
    s = 2 * math.pi / grid.length
    return torch.cos(s * a * x + s * b * y + phase)[None]


def analytic_transfer(kind: str, grid: Grid, a: int, b: int, width: float) -> float:
    """The filter's stated transfer value at integer mode ``(a, b)``, written out independently."""
    ka, kb = 2 * math.pi * a / grid.length, 2 * math.pi * b / grid.length
    if kind == "gaussian":
        return math.exp(-(width**2) * (ka**2 + kb**2) / 24)
    if kind == "box":
        sinc = lambda z: 1.0 if z == 0 else math.sin(z) / z  # noqa: E731
        return sinc(ka * width / 2) * sinc(kb * width / 2)
    k_cut = grid.length / (2 * width)  # sharp: cutoff pi / width
    return float(abs(a) <= k_cut and abs(b) <= k_cut)


@pytest.mark.parametrize("kind", ["sharp", "gaussian", "box"])
@pytest.mark.parametrize("a,b", [(0, 1), (3, -2), (-5, 4), (7, 0), (2, 2)])
@pytest.mark.parametrize("length", [2 * math.pi, 1.0])
def test_filter_multiplies_a_mode_by_its_transfer(kind, a, b, length):
    grid = Grid(32, length)
    width = 2 * length / 16  # E2's Delta for a 16^2 LES grid: sharp cutoff k = 4
    w = mode(grid, a, b)
    expected = analytic_transfer(kind, grid, a, b, width)
    out = apply_filter(w, make_filter(kind, grid, width))
    torch.testing.assert_close(out, expected * w, atol=1e-13, rtol=0)
    assert kind != "sharp" or expected == float(max(abs(a), abs(b)) <= 4)


@pytest.mark.parametrize("width_cells", [1.0, 2.0, 3.5])
def test_box_filter_equals_top_hat_average(width_cells):
    """Box filter = direct average over the square of side ``width`` (Gauss-Legendre quadrature)."""
    grid = Grid(32, 3.0)
    width = width_cells * grid.dx
    x, y = grid.coordinates()
    s = 2 * math.pi / grid.length
    f = lambda x, y: torch.sin(s * 2 * x - s * 3 * y + 0.1) + 0.5 * torch.cos(s * 5 * y)  # noqa: E731
    nodes, weights = np.polynomial.legendre.leggauss(16)
    average = torch.zeros_like(x)
    for xi, wi in zip(nodes, weights):
        for eta, we in zip(nodes, weights):
            average += 0.25 * wi * we * f(x + 0.5 * width * xi, y + 0.5 * width * eta)
    out = apply_filter(f(x, y)[None], box_transfer(grid, width))[0]
    torch.testing.assert_close(out, average, atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", ["gaussian", "box"])
def test_zero_width_and_none_are_identity(kind):
    grid = Grid(32)
    w = gaussian_random_field(grid, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(apply_filter(w, make_filter(kind, grid, 1e-12)), w, atol=1e-12, rtol=0)
    torch.testing.assert_close(apply_filter(w, make_filter("none", grid)), w, atol=1e-12, rtol=0)
    assert sharp_transfer(grid, grid.n).min() == 1  # a cut beyond the grid keeps every mode


def test_transfer_values():
    grid = Grid(16, 1.0)
    g = gaussian_transfer(grid, 0.25)
    assert g.shape == grid.spectral_shape and g.dtype == grid.dtype
    assert g[0, 0] == 1 and g[3, 4].item() == pytest.approx(math.exp(-(0.25**2) * (2 * math.pi) ** 2 * 25 / 24))
    assert box_transfer(grid, 0.25)[4, 0].item() == pytest.approx(0.0, abs=1e-15)  # sin(pi) zero of the top-hat


@pytest.mark.parametrize("bad", [None, 0.0, -1.0, float("nan")])
def test_make_filter_rejects_bad_width(bad):
    with pytest.raises(ValueError, match="positive finite width"):
        make_filter("gaussian", Grid(8), bad)


def test_make_filter_rejects_unknown_name():
    choices = r"\['sharp', 'gaussian', 'box', 'none'\]"
    with pytest.raises(ValueError, match=r"unknown filter 'tophat'; choose one of " + choices):
        make_filter("tophat", Grid(8), 0.1)


@pytest.mark.parametrize("n,n_fine", [(16, 32), (16, 48), (32, 64)])
def test_truncate_inverts_spectral_interpolate(n, n_fine):
    w = truncate(gaussian_random_field(Grid(n), 3, generator=torch.Generator().manual_seed(1)), n)  # no Nyquist
    fine = spectral_interpolate(w, n_fine)
    torch.testing.assert_close(truncate(fine, n), w, atol=1e-13, rtol=0)
    w_hat = torch.fft.rfft2(w, norm="forward")
    torch.testing.assert_close(truncate(torch.fft.rfft2(fine, norm="forward"), n), w_hat, atol=1e-13, rtol=0)


@pytest.mark.parametrize("stride", [2, 3, 4])
def test_spectral_interpolate_passes_through_coarse_samples(stride):
    """Even with Nyquist content the padded field equals the coarse field at the coarse points."""
    w = gaussian_random_field(Grid(16), 2, alpha=1.0, generator=torch.Generator().manual_seed(2))
    assert torch.fft.rfft2(w, norm="forward")[..., 8, :].abs().max() > 1e-3  # has Nyquist content
    torch.testing.assert_close(subsample(spectral_interpolate(w, 16 * stride), stride), w, atol=1e-13, rtol=0)


@pytest.mark.parametrize("length", [2 * math.pi, 1.0])
def test_spectral_interpolate_band_limited_is_exact(length):
    def field(grid):
        x, y = grid.coordinates()
        s = 2 * math.pi / length
        return (torch.sin(s * x) * torch.cos(2 * s * y) + 0.3 * torch.cos(3 * s * x - 5 * s * y + 1.0))[None]

    fine = spectral_interpolate(field(Grid(16, length)), 64)
    torch.testing.assert_close(fine, field(Grid(64, length)), atol=1e-13, rtol=0)


def test_truncate_drops_modes_at_and_above_coarse_nyquist():
    grid = Grid(32)
    kept, dropped = mode(grid, 3, -7), mode(grid, 8, 1) + mode(grid, 2, 8) + mode(grid, 11, 0)
    out = truncate(kept + dropped, 16)
    torch.testing.assert_close(out, mode(Grid(16), 3, -7), atol=1e-13, rtol=0)


@pytest.mark.parametrize("bad", [24, 7])
def test_truncate_rejects_bad_size(bad):
    with pytest.raises(ValueError, match="n_coarse|finer"):
        truncate(torch.zeros(1, 16, 16), bad)


def test_subsample():
    w = torch.arange(36.0).reshape(1, 6, 6)
    assert torch.equal(subsample(w, 3), w[..., ::3, ::3])
    with pytest.raises(ValueError, match=r"not divisible by stride 4; pick a stride that divides 6"):
        subsample(w, 4)
    with pytest.raises(ValueError, match="positive integer"):
        subsample(w, 0)


@pytest.mark.parametrize("length", [2 * math.pi, 1.0])
def test_coarse_grain_default_width(length):
    grid = Grid(64, length)
    w = gaussian_random_field(grid, 2, generator=torch.Generator().manual_seed(3))
    expected = truncate(apply_filter(w, gaussian_transfer(grid, 2 * length / 16)), 16)
    torch.testing.assert_close(coarse_grain(w, 16), expected, atol=1e-13, rtol=0)
    torch.testing.assert_close(coarse_grain(w, 16, width=2 * length / 16, length=length), expected, atol=1e-13, rtol=0)
    with pytest.raises(ValueError, match="needs the box length"):
        coarse_grain(w, 16, width=0.1)


@pytest.mark.parametrize("kind", ["sharp", "gaussian", "box"])
def test_filtered_spectrum_is_transfer_squared(kind):
    grid, n_c = Grid(64), 32
    w = gaussian_random_field(grid, 2, generator=torch.Generator().manual_seed(4))
    transfer = make_filter(kind, grid, 2 * grid.length / n_c)
    density = lambda g, v: sum(c.abs() ** 2 for c in spectral.velocity_hat(g.rfft(v), g))  # noqa: E731
    torch.testing.assert_close(density(grid, apply_filter(w, transfer)), transfer**2 * density(grid, w))
    # After truncation: the LES spectrum is the shell sum of transfer^2 x DNS energy over kept modes.
    coarse = Grid(n_c)
    kept = truncate(transfer.to(grid.complex_dtype), n_c).real  # transfer on the coarse modes, Nyquist 0
    fine_on_coarse = truncate(w, n_c)
    _, e_les = energy_spectrum(coarse_grain(w, n_c, kind), coarse)
    _, e_manual = energy_spectrum(apply_filter(fine_on_coarse, kept), coarse)
    _, e_unfiltered = energy_spectrum(fine_on_coarse, coarse)
    torch.testing.assert_close(e_les, e_manual)
    assert (e_les <= e_unfiltered + 1e-15).all() and e_les.sum() < e_unfiltered.sum()


@pytest.mark.parametrize("length", [2 * math.pi, 1.0])
@pytest.mark.parametrize("stride", [1, 2])
def test_e1_target_is_minus_convection(length, stride):
    """For a band-limited field the dealiased product is exact: compare with ``-(u w_x + v w_y)``."""
    grid = Grid(32, length)
    equation = NavierStokes2D(grid, nu=1e-3)
    w = mode(grid, 1, 2) + 0.5 * mode(grid, -3, 1, phase=1.0) + 0.2 * mode(grid, 0, 4)
    u, v = spectral.velocity(w, grid)
    w_x, w_y = (grid.irfft(d) for d in spectral.gradient_hat(grid.rfft(w), grid))
    exact = -(u * w_x + v * w_y)
    assert exact.abs().max() > 0.1
    torch.testing.assert_close(e1_closure_target(w, stride, equation), exact[..., ::stride, ::stride],
                               atol=1e-10, rtol=0)
    full = grid.irfft(-equation.advection(grid.rfft(w)))
    assert torch.equal(e1_closure_target(w, 1, equation), full)


def test_les_term_vanishes_without_filter_on_same_grid():
    grid = Grid(32)
    w = gaussian_random_field(grid, 2, generator=torch.Generator().manual_seed(5))
    pi = les_closure_term(w, 32, "none")
    scale = grid.irfft(spectral.advection(grid.rfft(w), grid)).abs().max()
    assert pi.abs().max() <= 1e-13 * scale


def test_les_term_of_field_resolved_on_coarse_grid_is_the_dealiased_band():
    """No filter and a field inside the coarse 2/3 band: inside the band the LES's own convection is
    exact (``Pi = 0`` there); ``Pi`` is the product's part between the 2/3 cutoff and the coarse
    Nyquist, which the dealiased LES drops."""
    fine, n_c = Grid(64), 24
    coarse = fine.with_size(n_c)
    band = (fine.kx.abs() * fine.length / (2 * math.pi) < n_c / 3) & (fine.ky * fine.length / (2 * math.pi) < n_c / 3)
    w = fine.irfft(fine.rfft(gaussian_random_field(fine, 2, generator=torch.Generator().manual_seed(6))) * band)
    pi_hat = coarse.rfft(les_closure_term(w, n_c, "none"))
    assert (pi_hat * coarse.dealias).abs().max() < 1e-13
    product = truncate(fine.irfft(spectral.advection(fine.rfft(w), fine)), n_c)
    torch.testing.assert_close(pi_hat, coarse.rfft(product) * (1 - coarse.dealias), rtol=0, atol=1e-13)
    assert les_closure_term(w, n_c, "gaussian").abs().max() > 1e-3  # the filter itself makes a closure term


def test_les_term_vanishes_for_field_resolved_on_a_three_halves_les():
    """No filter, a field inside the LES grid's modes, and an LES with the 3/2 rule: no subgrid scales
    and nothing the LES drops, so ``Pi = 0`` on every mode."""
    fine, n_c = Grid(64), 24
    w = spectral_interpolate(truncate(gaussian_random_field(fine, 2, generator=torch.Generator().manual_seed(6)),
                                      n_c), 64)
    assert les_closure_term(w, n_c, "none", dealias="3/2").abs().max() < 1e-12
    assert les_closure_term(w, n_c, "none").abs().max() > 1e-2  # the 2/3 rule drops part of the product


@pytest.mark.parametrize("n_c, filter, dealias", [(32, "gaussian", True), (16, "box", True), (24, "sharp", True),
                                                 (32, "gaussian", "3/2"), (16, "box", "3/2")])
def test_les_with_exact_closure_and_filtered_forcing_has_the_filtered_dns_tendency(n_c, filter, dealias):
    """The defining property of the closure term: an LES (dealiased convection, viscosity, drag, the
    filtered forcing) plus ``-Pi`` has exactly the filtered DNS's tendency ``d coarse_grain(w)/dt``,
    on every coarse mode, also those above the 2/3 cutoff. Without the filtered forcing or with a
    dealiased ``Pi`` it does not."""
    fine = Grid(64, 2 * math.pi, dtype=torch.float64)
    kw = dict(nu=1e-3, drag=0.1)
    dns = NavierStokes2D(fine, forcing=make_forcing(fine, "kolmogorov", k_f=4), **kw)
    coarse = fine.with_size(n_c)
    les = NavierStokes2D(coarse, forcing=make_forcing(coarse, "kolmogorov", k_f=4, filter=filter), dealias=dealias, **kw)
    w = 5 * gaussian_random_field(fine, 2, alpha=2.0, generator=torch.Generator().manual_seed(9))

    def tendency(eq, field):
        w_hat = eq.grid.rfft(field)
        return eq.grid.irfft(eq.explicit_terms(w_hat) + eq.implicit_terms(w_hat))

    exact = coarse_grain(tendency(dns, w), n_c, filter)
    pi = les_closure_term(w, n_c, filter, dealias=dealias)
    model = tendency(les, coarse_grain(w, n_c, filter)) - pi
    assert float((exact - model).abs().max()) < 1e-10 * float(exact.abs().max())
    if dealias == "3/2":  # the LES computes the resolved product on every mode: Pi is the subgrid part alone
        assert float(pi.norm()) < 0.8 * float(les_closure_term(w, n_c, filter).norm())
        return
    if filter != "sharp":  # a sharp filter (k_cut = n_c / 4) keeps k_f = 4 whole and nothing above the 2/3 cutoff
        dealiased = coarse.irfft(coarse.rfft(les_closure_term(w, n_c, filter)) * coarse.dealias)
        wrong = model + les_closure_term(w, n_c, filter) - dealiased
        assert float((exact - wrong).abs().max()) > 1e-2 * float(exact.abs().max())
        unfiltered = NavierStokes2D(coarse, forcing=make_forcing(coarse, "kolmogorov", k_f=4), **kw)
        gap = tendency(unfiltered, coarse_grain(w, n_c, filter)) - tendency(les, coarse_grain(w, n_c, filter))
        assert float(gap.abs().max()) > 1e-3


def test_les_term_on_turbulent_like_field():
    fine, n_c = Grid(64), 32
    w = gaussian_random_field(fine, 3, generator=torch.Generator().manual_seed(7))
    pi = les_closure_term(w, n_c)
    coarse = fine.with_size(n_c)
    resolved = coarse.irfft(spectral.advection(coarse.rfft(coarse_grain(w, n_c)), coarse))
    assert pi.shape == (3, n_c, n_c) and pi.dtype == w.dtype and torch.isfinite(pi).all()
    ratio = torch.linalg.vector_norm(pi, dim=(-2, -1)) / torch.linalg.vector_norm(resolved, dim=(-2, -1))
    assert ((ratio > 1e-2) & (ratio < 1)).all(), ratio
    assert pi.mean(dim=(-2, -1)).abs().max() < 1e-13  # a divergence: zero mean
    assert (coarse.rfft(pi) * (1 - coarse.dealias)).abs().max() > 1e-3  # the band the dealiased LES drops
    # Linear in nothing, quadratic in w: Pi(2 w) = 4 Pi(w).
    torch.testing.assert_close(les_closure_term(2 * w, n_c), 4 * pi)


def test_float32_stays_float32():
    fine = Grid(32, dtype=torch.float32)
    w = gaussian_random_field(fine, 2, generator=torch.Generator().manual_seed(8))
    assert w.dtype == torch.float32
    outputs = [apply_filter(w, make_filter("gaussian", Grid(32), 0.5)), coarse_grain(w, 16), truncate(w, 16),
               spectral_interpolate(w, 64), les_closure_term(w, 16),
               e1_closure_target(w, 2, NavierStokes2D(fine, nu=1e-3))]
    assert all(out.dtype == torch.float32 and torch.isfinite(out).all() for out in outputs)
    torch.testing.assert_close(les_closure_term(w, 16), les_closure_term(w.double(), 16).float(), atol=1e-5, rtol=1e-4)
