"""Steppers: exact Taylor-Green decay, measured convergence orders, implicit solve, CFL helper."""
import functools
import math

import pytest
import torch

from solvers import STEPPERS, Grid, NavierStokes2D, make_stepper, stable_time_step
from solvers.initial_conditions import band_limited, taylor_green, taylor_green_decay


def _advance(stepper, w_hat, steps, extra_hat=None):
    for _ in range(steps):
        w_hat = stepper(w_hat, extra_hat)
    return w_hat


def test_taylor_green_exact_with_integrating_factor(grid32):
    """w = w0 exp(-2 nu k^2 t): the nonlinear term vanishes, the linear part is exact (ifrk4)."""
    nu, k, dt, steps = 0.05, 2, 0.01, 1000
    eq = NavierStokes2D(grid32, nu=nu)
    w0 = taylor_green(grid32, k=k)
    w = grid32.irfft(_advance(make_stepper("ifrk4", eq, dt), grid32.rfft(w0), steps))
    exact = w0 * math.exp(-taylor_green_decay(grid32, k, nu) * dt * steps)
    assert (w - exact).abs().max() / exact.abs().max() < 1e-13


@pytest.mark.parametrize("name", sorted(STEPPERS))
def test_taylor_green_matches_each_steppers_linear_amplification(grid32, name):
    """For Taylor-Green each stepper reduces to its own rational/exponential amplification factor
    (checked to round-off after 1000 steps), and that factor approximates exp(-2 nu k^2 dt)."""
    nu, k, dt, steps, drag = 0.05, 2, 0.01, 1000, 0.1
    eq = NavierStokes2D(grid32, nu=nu, drag=drag)
    w0 = taylor_green(grid32, k=k)
    stepper = make_stepper(name, eq, dt)
    w = grid32.irfft(_advance(stepper, grid32.rfft(w0), steps))
    # amplification per step of the pure-linear problem, measured on a single mode without convection
    linear_only = NavierStokes2D(grid32, nu=nu, drag=drag, convection=False)
    one = grid32.irfft(make_stepper(name, linear_only, dt)(grid32.rfft(w0)))
    factor = (one * w0).sum() / (w0 * w0).sum()
    torch.testing.assert_close(w, w0 * factor**steps, atol=1e-13 * w0.abs().max().item(), rtol=0)
    rate = taylor_green_decay(grid32, k, nu, drag)
    assert abs(factor.item() - math.exp(-rate * dt)) < 10 * (rate * dt) ** 3


def _measured_order(name, eq, w0, t_end, reference, n_steps=(16, 32, 64)):
    grid = eq.grid
    errors = []
    for n in n_steps:
        w_hat = _advance(make_stepper(name, eq, t_end / n), grid.rfft(w0), n)
        errors.append((grid.irfft(w_hat) - reference).norm().item())
    return [math.log2(errors[i] / errors[i + 1]) for i in range(len(errors) - 1)], errors


@functools.lru_cache(maxsize=None)
def _order_problem(viscous: bool):
    """A smooth 16^2 problem (velocity in shells 1..3) and its converged reference (ifrk4, T/512)."""
    grid = Grid(16, 2 * math.pi, dtype=torch.float64)
    w0 = band_limited(grid, 1, 1, 3, 1.0, generator=torch.Generator().manual_seed(1))
    eq = NavierStokes2D(grid, nu=0.05 if viscous else 0.0)
    reference = grid.irfft(_advance(make_stepper("ifrk4", eq, 1 / 512), grid.rfft(w0), 512))
    return eq, w0, reference


@pytest.mark.parametrize("name", sorted(STEPPERS))
@pytest.mark.parametrize("viscous", [False, True], ids=["explicit-only", "imex"])
def test_convergence_order(name, viscous):
    """Measured order against a converged reference matches the order the scheme claims."""
    eq, w0, reference = _order_problem(viscous)
    spec = STEPPERS[name]
    claimed = spec.order_imex if viscous else spec.order_explicit
    orders, errors = _measured_order(name, eq, w0, 1.0, reference)
    assert errors[-1] < errors[0]
    for order in orders:
        assert abs(order - claimed) < 0.25, (name, orders, errors)


def test_linear_part_of_cn_is_second_order(grid32):
    """euler_cn treats the linear part by Crank-Nicolson: order 2 on a purely linear problem."""
    eq = NavierStokes2D(grid32, nu=0.1, convection=False)
    w0 = taylor_green(grid32, k=3)
    exact = w0 * math.exp(-taylor_green_decay(grid32, 3, 0.1) * 1.0)
    errors = [(grid32.irfft(_advance(make_stepper("euler_cn", eq, 1 / n), grid32.rfft(w0), n)) - exact).norm()
              for n in (32, 64, 128)]
    for i in range(2):
        assert abs(math.log2(errors[i] / errors[i + 1]) - 2) < 0.1


@pytest.mark.parametrize("step_size", [0.0, 1e-3, 0.5, 10.0])
def test_implicit_solve_inverts_implicit_terms(grid32, smooth_state, step_size):
    eq = NavierStokes2D(grid32, nu=0.02, drag=0.1)
    w_hat = grid32.rfft(smooth_state)
    y_hat = w_hat - step_size * eq.implicit_terms(w_hat)
    torch.testing.assert_close(eq.implicit_solve(y_hat, step_size), w_hat, atol=1e-13, rtol=1e-13)


@pytest.mark.parametrize("name", sorted(STEPPERS))
def test_constant_extra_tendency_is_integrated(grid32, name):
    """With no flow and a constant tendency c, every stepper gives w = c t exactly (mean mode)."""
    eq = NavierStokes2D(grid32, nu=0.0)
    c = torch.full((1, 32, 32), 0.3, dtype=torch.float64)
    w = grid32.irfft(_advance(make_stepper(name, eq, 0.1), grid32.rfft(torch.zeros_like(c)), 10, grid32.rfft(c)))
    torch.testing.assert_close(w, c * 1.0, atol=1e-13, rtol=0)


def test_unknown_stepper_and_bad_dt(grid32):
    eq = NavierStokes2D(grid32, nu=0.0)
    with pytest.raises(ValueError, match="unknown stepper 'rk99'.*cn_rk4"):
        make_stepper("rk99", eq, 0.1)
    with pytest.raises(ValueError, match="positive"):
        make_stepper("cn_rk4", eq, -1.0)


def test_stable_time_step():
    assert stable_time_step(2.0, 0.1, cfl=0.5) == pytest.approx(0.025)
    assert stable_time_step(2.0, 0.1, cfl=0.5, nu=10.0, implicit_diffusion=False) == pytest.approx(0.5 * 0.01 / 40)
    with pytest.raises(ValueError):
        stable_time_step(0.0, 0.1)
