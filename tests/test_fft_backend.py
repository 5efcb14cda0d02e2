"""The optional FFTW + numba CPU fast path equals the torch path and is reproducible.

Installed by the README's set-up command (the ``fast`` extra); the module is skipped, with the
reason shown, only where pyfftw / numba are absent.
"""
import math

import pytest
import torch

from solvers import STEPPERS, Grid, NavierStokes2D, make_stepper
from solvers import fft_backend
from solvers.forcing import kolmogorov_forcing
from solvers.initial_conditions import band_limited

pytestmark = pytest.mark.skipif(not fft_backend.fftw_available(), reason="pyfftw/numba not installed (pip install -e '.[fast]')")


@pytest.fixture
def backend():
    before = fft_backend.get_backend()
    yield fft_backend.set_backend
    fft_backend.set_backend(before)


def _run(name, dtype, backend_name, set_backend, batch=3, steps=20, n=64, extra=False, members=None):
    set_backend(backend_name)
    grid = Grid(n, 2 * math.pi, dtype=dtype)
    eq = NavierStokes2D(grid, nu=1e-3, drag=0.1, forcing=kolmogorov_forcing(grid))
    w0 = band_limited(Grid(n, 2 * math.pi), batch, 1, 8, 2.0, generator=torch.Generator().manual_seed(0)).to(dtype)
    w_hat = Grid(n, 2 * math.pi, dtype=dtype).rfft(w0)
    w0 = None
    step = make_stepper(name, eq, 0.01)
    w_hat = w_hat if members is None else w_hat[members]
    extra_hat = 0.1 * w_hat if extra else None
    for _ in range(steps):
        w_hat = step(w_hat, extra_hat)
    return w_hat  # compared in Fourier space: torch's batched irfft itself rounds batch-dependently


@pytest.mark.parametrize("name", sorted(STEPPERS))
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-13), (torch.float32, 2e-6)])
def test_fftw_path_equals_torch_path(backend, name, dtype, tol):
    fast = _run(name, dtype, "fftw", backend, extra=True)
    ref = _run(name, dtype, "torch", backend, extra=True)
    assert ((fast - ref).norm() / ref.norm()).item() < tol


def test_fftw_results_do_not_depend_on_the_batch(backend):
    """Members are stepped one at a time: a member's result is bitwise the same alone or in a batch."""
    batch = _run("cn_rk4", torch.float64, "fftw", backend, batch=3)
    single = _run("cn_rk4", torch.float64, "fftw", backend, batch=3, members=slice(0, 1))
    assert torch.equal(batch[:1], single)


def test_fftw_is_reproducible_across_plans(backend):
    """With the default 'estimate' planner, fresh plans (a new equation) give bitwise equal results."""
    assert fft_backend.get_planner() == "estimate"
    first = _run("cn_rk4", torch.float32, "fftw", backend, n=96)
    second = _run("cn_rk4", torch.float32, "fftw", backend, n=96)
    assert torch.equal(first, second)


def test_autograd_falls_back_to_torch(backend):
    backend("auto")
    grid = Grid(32, 2 * math.pi)
    eq = NavierStokes2D(grid, nu=1e-3)
    w0 = band_limited(grid, 1, 1, 4, 1.0, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    out = make_stepper("cn_rk4", eq, 0.01)(grid.rfft(w0))
    out.abs().sum().backward()
    assert w0.grad is not None and torch.isfinite(w0.grad).all()


def test_unknown_backend_and_planner_are_errors():
    with pytest.raises(ValueError, match="unknown"):
        fft_backend.set_backend("cufft")
    with pytest.raises(ValueError, match="unknown FFTW planner"):
        fft_backend.set_planner("patient")


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_three_halves_rule_by_fftw_equals_torch(backend, dtype, tol):
    """The 3/2 rule's padded product by FFTW plans equals torch's transforms (20 steps, 64^2)."""
    grid = Grid(64, 2 * math.pi, dtype=dtype)
    w0 = band_limited(Grid(64, 2 * math.pi), 3, 1, 8, 2.0, generator=torch.Generator().manual_seed(0)).to(dtype)
    out = {}
    for name in ("fftw", "torch"):
        backend(name)
        eq = NavierStokes2D(grid, nu=1e-3, drag=0.1, forcing=kolmogorov_forcing(grid), dealias="3/2")
        step, w_hat = make_stepper("cn_rk4", eq, 0.01), grid.rfft(w0)
        for _ in range(20):
            w_hat = step(w_hat, None)
        out[name] = w_hat
    scale = float(out["torch"].abs().max())
    assert float((out["fftw"] - out["torch"]).abs().max()) < tol * scale
