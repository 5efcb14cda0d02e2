"""The equation: invariants of the dealiased convection term, conservation in time, batching, dtypes."""
import math

import pytest
import torch

from solvers import Grid, NavierStokes2D, make_stepper
from solvers import spectral
from solvers.diagnostics import energy, enstrophy
from solvers.forcing import kolmogorov_forcing
from solvers.initial_conditions import band_limited, gaussian_random_field


def _broadband(grid, batch=2, seed=0):
    """A rough field with every Fourier mode populated (the hard case for aliasing)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, grid.n, grid.n), generator=g, dtype=grid.dtype)


def _inner(a_hat, b_hat, grid):
    return (grid.irfft(a_hat) * grid.irfft(b_hat)).mean(dim=(-2, -1))


def test_dealiased_convection_conserves_energy_and_enstrophy_exactly(grid32):
    """<w, u.grad w> = 0 and <psi, u.grad w> = 0 to round-off for the dealiased term (any field)."""
    eq = NavierStokes2D(grid32, nu=0.0)
    w_hat = grid32.rfft(_broadband(grid32)) * grid32.dealias
    adv = eq.advection(w_hat)
    psi_hat = spectral.stream_function_hat(w_hat, grid32)
    scale = grid32.irfft(w_hat).abs().max() ** 2 * grid32.kx.abs().max()
    assert _inner(w_hat, adv, grid32).abs().max() < 1e-13 * scale
    assert _inner(psi_hat, adv, grid32).abs().max() < 1e-13 * scale


def test_three_halves_rule_conserves_invariants_and_keeps_every_mode(grid32):
    """The 3/2 rule (padded product): energy and enstrophy conserved to round-off for a field with
    every mode below the Nyquist, and its output is the exact product truncated to the grid (the
    product on a 4x finer grid), on every mode, also above the 2/3 cutoff, where the 2/3 rule has none."""
    eq = NavierStokes2D(grid32, nu=0.0, dealias="3/2")
    w_hat = spectral.truncate_hat(grid32.rfft(_broadband(grid32)), 32)  # Nyquist row / column zero
    adv = eq.advection(w_hat)
    psi_hat = spectral.stream_function_hat(w_hat, grid32)
    scale = grid32.irfft(w_hat).abs().max() ** 2 * grid32.kx.abs().max()
    assert _inner(w_hat, adv, grid32).abs().max() < 1e-13 * scale
    assert _inner(psi_hat, adv, grid32).abs().max() < 1e-13 * scale
    fine = grid32.with_size(128)
    exact = spectral.truncate_hat(spectral.advection(spectral.pad_hat(w_hat, 128), fine, dealias=False), 32)
    torch.testing.assert_close(adv, exact, rtol=0, atol=1e-12 * float(exact.abs().max()))
    band = 1 - grid32.dealias
    assert float((exact * band).abs().max()) > 0.1 * float(exact.abs().max())
    assert float((NavierStokes2D(grid32, nu=0.0).advection(w_hat) * band).abs().max()) == 0.0


def test_without_dealiasing_invariants_are_broken(grid32):
    """The check above is meaningful: with aliasing, enstrophy is not conserved by the term."""
    eq = NavierStokes2D(grid32, nu=0.0, dealias=False)
    w_hat = grid32.rfft(_broadband(grid32))
    adv = eq.advection(w_hat)
    scale = grid32.irfft(w_hat).abs().max() ** 2 * grid32.kx.abs().max()
    assert _inner(w_hat, adv, grid32).abs().max() > 1e-6 * scale


def test_advection_matches_spectral_reference_and_analytic(grid32):
    """Fast batched advection equals the straightforward one; and an analytic two-mode case."""
    eq = NavierStokes2D(grid32, nu=0.0)
    w_hat = grid32.rfft(_broadband(grid32)) * grid32.dealias
    torch.testing.assert_close(eq.advection(w_hat), spectral.advection(w_hat, grid32), atol=1e-12, rtol=1e-12)
    # w = cos x + cos y: psi = w, u = -sin y, v = sin x, u.grad w = sin y sin x - sin x sin y = 0 ... use
    # w = cos x + cos 2y: u = -2 sin 2y / 4 * ... computed analytically below.
    x, y = grid32.coordinates()
    w = torch.cos(x) + torch.cos(2 * y)  # psi = cos x + cos(2y)/4
    u, v = -0.5 * torch.sin(2 * y), torch.sin(x)  # u = dpsi/dy, v = -dpsi/dx
    exact = u * (-torch.sin(x)) + v * (-2 * torch.sin(2 * y))
    torch.testing.assert_close(grid32.irfft(eq.advection(grid32.rfft(w))), exact, atol=1e-12, rtol=0)


def _inviscid_drift(grid, w0, dt, t_end=4.0):
    eq = NavierStokes2D(grid, nu=0.0)
    step = make_stepper("cn_rk4", eq, dt)
    w_hat = grid.rfft(w0)
    for _ in range(round(t_end / dt)):
        w_hat = step(w_hat)
    w = grid.irfft(w_hat)
    drifts = [((f(w, grid) - f(w0, grid)) / f(w0, grid)).abs().max().item() for f in (energy, enstrophy)]
    return w_hat, drifts


def test_unforced_inviscid_run_conserves_invariants(grid32):
    """cn_rk4 on a field filling shells 1..10: energy and enstrophy drift < 1e-7 at CFL ~0.2 and the
    drift is pure time-discretisation error (falls >= 2^4 when dt halves); the mean stays zero."""
    w0 = band_limited(grid32, 2, 1, 10, 1.0, generator=torch.Generator().manual_seed(3))
    w_hat, coarse = _inviscid_drift(grid32, w0, 0.02)
    _, fine = _inviscid_drift(grid32, w0, 0.01)
    for name, d_coarse, d_fine in zip(("energy", "enstrophy"), coarse, fine):
        assert d_coarse < 1e-7, (name, d_coarse)
        assert d_coarse / d_fine > 16, (name, d_coarse, d_fine)
    assert w_hat[..., 0, 0].abs().max() < 1e-15
    assert (grid32.irfft(w_hat) - w0).abs().max() > 1e-2  # the flow did evolve


def test_forced_viscous_mean_stays_zero():
    grid = Grid(32, 2 * math.pi)
    eq = NavierStokes2D(grid, nu=1e-3, drag=0.1, forcing=kolmogorov_forcing(grid))
    step = make_stepper("cn_rk4", eq, 0.05)
    w_hat = grid.rfft(band_limited(grid, 1, 1, 4, 2.0, generator=torch.Generator().manual_seed(0)))
    for _ in range(50):
        w_hat = step(w_hat)
    assert w_hat[..., 0, 0].abs().max() < 1e-14


@pytest.mark.parametrize("name", ["euler_cn", "cn_rk4", "ifrk4"])
def test_batched_ensemble_equals_single_runs(name):
    grid = Grid(32, 1.0)
    eq = NavierStokes2D(grid, nu=1e-3, forcing=None)
    w0 = gaussian_random_field(grid, 4, generator=torch.Generator().manual_seed(0))
    step = make_stepper(name, eq, 1e-3)

    def run(w):
        w_hat = grid.rfft(w)
        for _ in range(20):
            w_hat = step(w_hat)
        return grid.irfft(w_hat)

    batched = run(w0)
    singles = torch.cat([run(w0[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, singles, atol=1e-12, rtol=1e-12)


def test_float32_agrees_with_float64():
    """One step agrees to a few float32 ulps; after 10 steps of this chaotic flow, still < 5e-6."""
    results = {}
    for dtype in (torch.float32, torch.float64):
        grid = Grid(32, 2 * math.pi, dtype=dtype)
        eq = NavierStokes2D(grid, nu=1e-3, drag=0.1, forcing=kolmogorov_forcing(grid))
        w0 = band_limited(Grid(32, 2 * math.pi), 1, 1, 4, 1.0, generator=torch.Generator().manual_seed(0))
        w_hat = grid.rfft(w0.to(dtype))
        step = make_stepper("cn_rk4", eq, 0.05)
        results[dtype] = []
        for _ in range(10):
            w_hat = step(w_hat)
            results[dtype].append(grid.irfft(w_hat))
    assert results[torch.float32][0].dtype == torch.float32
    errs = [(a.double() - b).norm() / b.norm() for a, b in zip(results[torch.float32], results[torch.float64])]
    eps32 = torch.finfo(torch.float32).eps
    assert errs[0] < 10 * eps32
    assert errs[-1] < 5e-6


def test_bad_parameters_are_rejected(grid32):
    with pytest.raises(ValueError, match="viscosity"):
        NavierStokes2D(grid32, nu=-1.0)
    with pytest.raises(ValueError, match="spatial shape"):
        NavierStokes2D(grid32, nu=0.0, forcing=torch.zeros(16, 16, dtype=torch.float64))


def test_per_member_viscosity_equals_separate_runs():
    """One batch with a viscosity per member equals each member run alone with its own nu; a plug-in
    that sets the viscosity makes the rollout rebuild its stepper."""
    from solvers.rollout import rollout
    from closure import Plugin

    grid = Grid(32, 2 * math.pi, dtype=torch.float64)
    forcing = kolmogorov_forcing(grid)
    w0 = band_limited(grid, 3, 1, 4, 3.0, generator=torch.Generator().manual_seed(0))
    nus = torch.tensor([1e-3, 1e-2, 5e-2], dtype=torch.float64)
    for stepper in ("ifrk4", "cn_rk4"):
        eq = NavierStokes2D(grid, nu=1e-3, drag=0.1, forcing=forcing)
        eq.set_viscosity(nus)
        batch = rollout(w0, eq, 0.01, 50, stepper=stepper).w  # (cn_rk4 last: compared below)
        for i, nu in enumerate(nus.tolist()):
            alone = rollout(w0[i:i + 1], NavierStokes2D(grid, nu=nu, drag=0.1, forcing=forcing), 0.01, 50,
                            stepper=stepper).w
            assert torch.allclose(batch[i:i + 1], alone, rtol=1e-10, atol=1e-10), (stepper, nu)

    class SetViscosity(Plugin):
        kind = "state"

        def __call__(self, state):
            if state.step == 0:
                state.equation.set_viscosity(nus)
            return None

    eq = NavierStokes2D(grid, nu=1e-3, drag=0.1, forcing=forcing)
    changed = rollout(w0, eq, 0.01, 50, stepper="cn_rk4", plugin=SetViscosity(grid, eq), every=10).w
    assert torch.allclose(changed, batch, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="viscosity must be"):
        eq.set_viscosity(torch.tensor([1e-3, -1.0]))
