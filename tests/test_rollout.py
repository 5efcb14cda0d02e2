"""The closed loop and the plug-in contract."""
import math

import pytest
import torch

import closure
from closure import Plugin, make_plugin, register
from solvers import Grid, NavierStokes2D, make_stepper
from solvers.forcing import QWienerNoise, kolmogorov_forcing
from solvers.initial_conditions import band_limited
from solvers.rollout import BlowUpError, rollout


def _setup(dtype=torch.float64, n=32, batch=2):
    grid = Grid(n, 2 * math.pi, dtype=dtype)
    eq = NavierStokes2D(grid, nu=1e-3, drag=0.1, forcing=kolmogorov_forcing(grid))
    w0 = band_limited(grid, batch, 1, 4, 1.0, generator=torch.Generator().manual_seed(0))
    return grid, eq, w0


class Recorder(Plugin):
    kind = "tendency"

    def __init__(self, grid, equation, value: float = 0.0):
        super().__init__(grid, equation)
        self.value, self.steps = value, []

    def __call__(self, state):
        self.steps.append(state.step)
        return torch.full_like(state.w, self.value)


def test_none_reproduces_bare_solver_bit_for_bit():
    grid, eq, w0 = _setup()
    result = rollout(w0, eq, 0.05, 37, plugin=make_plugin("none", grid, eq), every=1)
    step = make_stepper("cn_rk4", eq, 0.05)
    w_hat = grid.rfft(w0)
    for _ in range(37):
        w_hat = step(w_hat)
    assert torch.equal(result.w, grid.irfft(w_hat))
    assert result.plugin_calls == 37


@pytest.mark.parametrize("every", [1, 3, 5])
def test_plugin_is_called_exactly_every_n_steps(every):
    grid, eq, w0 = _setup()
    plugin = Recorder(grid, eq)
    rollout(w0, eq, 0.05, 17, plugin=plugin, every=every)
    assert plugin.steps == list(range(0, 17, every))


def test_tendency_is_held_between_calls():
    """A constant tendency c from the plug-in equals stepping with c as an extra explicit term."""
    grid, eq, w0 = _setup()
    result = rollout(w0, eq, 0.05, 10, plugin=Recorder(grid, eq, value=0.2), every=4)
    step = make_stepper("cn_rk4", eq, 0.05)
    w_hat, c_hat = grid.rfft(w0), grid.rfft(torch.full_like(w0, 0.2))
    for _ in range(10):
        w_hat = step(w_hat, c_hat)
    torch.testing.assert_close(result.w, grid.irfft(w_hat), atol=1e-13, rtol=0)
    assert result.w.mean().item() == pytest.approx(w0.mean().item() + 0.2 * 0.5 * (1 - math.exp(-0.1 * 0.5)) / (0.1 * 0.5), rel=1e-6)


class Reset(Plugin):
    kind = "state"

    def __call__(self, state):
        return torch.zeros_like(state.w)


def test_state_plugin_replaces_state():
    grid, eq, w0 = _setup()
    eq_free = NavierStokes2D(grid, nu=1e-3, drag=0.1)
    result = rollout(w0, eq_free, 0.05, 3, plugin=Reset(grid, eq_free), every=10)
    assert result.w.abs().max() == 0.0


class WrongShape(Plugin):
    def __call__(self, state):
        return state.w[:, :-1]


def test_plugin_output_contract_is_checked():
    grid, eq, w0 = _setup()
    with pytest.raises(ValueError, match="WrongShape returned"):
        rollout(w0, eq, 0.05, 2, plugin=WrongShape(grid, eq))


@pytest.mark.parametrize("name", closure.available())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_registered_plugin_keeps_shape_dtype_device(name, dtype, tmp_path):
    grid, eq, w0 = _setup(dtype=dtype)
    cls, options = closure.plugin_class(name), {}
    if getattr(cls, "requires_checkpoint", False):  # learned plug-ins: a tiny untrained model for this flow
        options["checkpoint"] = str(cls.example_checkpoint(tmp_path / f"{name}.pt", grid, eq))
    if getattr(cls, "needs_observations", False):  # assimilation: sensor data of a truth at t = 0
        options["observations"] = cls.example_observations(tmp_path / "truth.h5", grid, w0[:1] + 0.1, [0.0])
        options.update(cls.example_options(tmp_path / "truth.h5"))
    plugin = make_plugin(name, grid, eq, **options)
    result = rollout(w0, eq, 0.02, 4, plugin=plugin, every=plugin.default_every)
    assert result.w.shape == w0.shape and result.w.dtype == dtype and result.w.device == w0.device
    assert torch.isfinite(result.w).all()


class ChangeViscosity(Plugin):
    """Sets one viscosity per member at step 20 and a single one at step 40 (parameter estimation)."""

    kind = "state"

    def __init__(self, grid, equation, values):
        super().__init__(grid, equation)
        self.values = values  # {step: nu}

    def __call__(self, state):
        if state.step in self.values:
            state.equation.set_viscosity(self.values[state.step])
        return None


def test_viscosity_changed_mid_rollout_rebuilds_the_stepper():
    """Changing nu at steps 20 and 40 of one rollout equals three rollouts restarted with the new nu (to the
    round-off of the restarts' FFT round trips), and differs from a run that kept the first nu (the stepper
    is not stale)."""
    grid, eq, w0 = _setup(batch=3)
    values = {20: torch.tensor([1e-3, 2e-2, 1e-1], dtype=torch.float64), 40: 5e-2}
    changed = rollout(w0, eq, 0.02, 50, plugin=ChangeViscosity(grid, eq, values), every=10).w
    assert isinstance(eq.nu, float) and eq.nu == 5e-2
    eq2 = NavierStokes2D(grid, nu=1e-3, drag=0.1, forcing=kolmogorov_forcing(grid))
    w = rollout(w0, eq2, 0.02, 20).w
    eq2.set_viscosity(values[20])
    w = rollout(w, eq2, 0.02, 20).w
    eq2.set_viscosity(values[40])
    torch.testing.assert_close(changed, rollout(w, eq2, 0.02, 10).w, rtol=0, atol=1e-12)
    stale = rollout(w0, NavierStokes2D(grid, nu=1e-3, drag=0.1, forcing=kolmogorov_forcing(grid)), 0.02, 50).w
    assert ((changed - stale).norm(dim=(1, 2)) > 1e-3 * stale.norm(dim=(1, 2))).all()


def test_registry_errors():
    grid, eq, _ = _setup()
    with pytest.raises(ValueError, match=r"unknown closure 'magic'; choose one of \[.*'none'"):
        make_plugin("magic", grid, eq)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['strength'\]"):
        make_plugin("none", grid, eq, strength=1.0)
    with pytest.raises(ValueError, match="already registered"):
        register("none")(Recorder)


class AntiDrag(Plugin):
    def __call__(self, state):
        return 2.0 * state.w  # exponential growth: healthy at first, then the CFL limit is crossed


def test_blow_up_stops_with_last_good_state():
    grid, eq, w0 = _setup()
    with pytest.raises(BlowUpError, match="CFL") as info:
        rollout(w0, eq, 0.05, 400, plugin=AntiDrag(grid, eq), check_every=1, cfl_limit=1.0, record_every=2)
    err = info.value
    assert torch.isfinite(err.last_good).all() and err.last_good_t > 0
    assert err.result.steps == round(err.last_good_t / 0.05) + 1
    assert err.result.times[-1] <= err.last_good_t + 1e-12
    assert len(err.result.frames) == len(err.result.times) >= 1


def test_nonfinite_state_is_caught():
    grid, eq, w0 = _setup()
    with pytest.raises(BlowUpError, match="non-finite"):
        rollout(w0 * 1e3, eq, 1.0, 400, check_every=1)


def test_recording_and_noise_reproducibility():
    grid, eq, w0 = _setup()
    noise = QWienerNoise(grid, alpha=0.005, kappa=4, sigma=0.1)
    runs = [rollout(w0, eq, 0.05, 10, noise=noise, generator=torch.Generator().manual_seed(s), record_every=4)
            for s in (1, 1, 2)]
    assert runs[0].times == pytest.approx([0.0, 0.2, 0.4, 0.5])
    assert runs[0].trajectory().shape == (2, 4, 32, 32)
    assert torch.equal(runs[0].w, runs[1].w)
    assert not torch.allclose(runs[0].w, runs[2].w)
