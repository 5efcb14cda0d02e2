"""Re's grid likelihood (closure/reynolds_likelihood.py): the posterior, its quantiles, the members' ranks, a
perfect-state twin that must find the truth's Re, and clear errors."""
from __future__ import annotations

import math

import pytest
import torch

from closure import make_plugin
from closure.assimilation import Assimilation
from closure.reynolds_likelihood import ReynoldsLikelihood
from solvers import NavierStokes2D
from solvers.forcing import make_forcing
from solvers.grid import Grid
from solvers.initial_conditions import band_limited
from solvers.rollout import FlowState, rollout


def _flow(nu=1 / 120):
    grid = Grid(32, 2 * math.pi, dtype=torch.float64)
    forcing = make_forcing(grid, "kolmogorov", k_f=4, amplitude=1.0)
    return grid, NavierStokes2D(grid, nu=nu, drag=0.1, forcing=forcing)


def test_posterior_quantiles_and_scores_follow_a_gaussian_log_likelihood():
    """log L = -(log Re - mu)^2 / 2 s^2: the quantiles are the log-normal's to the refined grid's spacing, the
    scores its mean and standard deviation."""
    lik = ReynoldsLikelihood([50, 150], points=21, refine=20)
    mu, s = math.log(100.0), 0.05
    lik.log_lik = -0.5 * ((lik.log_grid - mu) / s) ** 2
    lik.cycles = 1
    q = lik.quantiles(8)
    normal = torch.distributions.Normal(mu, s)
    want = normal.icdf((torch.arange(8, dtype=torch.float64) + 0.5) / 8)  # log Re
    spacing = math.log(3) / 400  # the refined grid's step in log Re
    assert torch.allclose(q.log(), want, atol=2 * spacing + 0.003)  # linear interpolation of a parabola
    mean, spread = lik.scores()
    assert mean == pytest.approx(math.exp(mu + s * s / 2), rel=2e-3)
    assert spread == pytest.approx(mean * math.sqrt(math.exp(s * s) - 1), rel=0.03)


def test_assign_keeps_the_members_ranks_and_waits_for_a_likelihood():
    grid, eq = _flow()
    lik = ReynoldsLikelihood([50, 150])
    members = torch.tensor([60.0, 140.0, 90.0, 110.0], dtype=torch.float64)
    eq.set_viscosity(1 / members)
    lik.assign(eq, 1 / eq.nu)  # no likelihood yet: the prior draws stay
    assert torch.allclose(1 / eq.nu, members)
    lik.log_lik = -0.5 * ((lik.log_grid - math.log(120)) / 0.1) ** 2
    lik.cycles = 1
    lik.assign(eq, 1 / eq.nu)
    re = 1 / eq.nu
    assert torch.equal(torch.argsort(re), torch.argsort(members))  # same order
    assert torch.allclose(torch.sort(re).values, lik.quantiles(4), rtol=1e-6)


@pytest.mark.parametrize("nu", [1 / 120, torch.tensor([1 / 60, 1 / 130, 1 / 90])])
def test_grid_forecast_is_each_value_alone_and_restores_the_viscosity(nu):
    grid, eq = _flow()
    eq.set_viscosity(nu)
    lik = ReynoldsLikelihood([50, 150], points=3)
    w = band_limited(grid, 1, 1, 4, 3.0, generator=torch.Generator().manual_seed(0))[0]
    out = lik.forecast(w, eq, 0.01, 10)
    assert torch.equal(torch.as_tensor(eq.nu), torch.as_tensor(nu).to(torch.as_tensor(eq.nu)))
    _, alone = _flow(nu=float(torch.exp(-lik.log_grid[1])))
    ref = rollout(w[None].clone(), alone, 0.01, 10).w[0]
    assert out.shape == (3, 32, 32) and torch.allclose(out[1], ref, rtol=1e-10, atol=1e-10)


def _perfect_state_twin(tmp_path, **options):
    """The analysis mean is the truth (noise 1 % of the RMS on 8 x 8 sensors, 12 cycles of 0.2)."""
    grid, eq = _flow(1 / 120)
    w = band_limited(grid, 1, 1, 4, 5.0, generator=torch.Generator().manual_seed(1))
    frames, dt, every = [w[0]], 0.01, 20
    for _ in range(12):
        w = rollout(w, eq, dt, every).w
        frames.append(w[0])
    times = [k * every * dt for k in range(len(frames))]
    sigma = 0.01 * torch.stack(frames).pow(2).mean().sqrt().item()
    obs = Assimilation.example_observations(tmp_path / "truth.h5", grid, torch.stack(frames), times, "regular:8x8",
                                            sigma)
    lik = ReynoldsLikelihood([50, 150], **options)
    active = []
    for k in range(1, len(frames)):
        lik.remember(frames[k - 1], times[k - 1])
        state = FlowState(w=frames[k][None], t=times[k], step=k * every, dt=dt, grid=grid, equation=eq)
        HX = obs.operator(state.w).to(torch.float64)
        lik.observe(state, obs.at(times[k]), obs.operator, HX)
        active.append(int(lik.active.sum()))
    assert eq.nu == pytest.approx(1 / 120)  # the truth's viscosity is back
    return lik, active


def test_a_perfectly_known_state_finds_the_truths_reynolds_number(tmp_path):
    """The posterior mean ends within 1 % of Re 120 from a prior [50, 150] (mean 91), and within 3 posterior
    standard deviations; pruning the grid (the default) forecasts fewer values and leaves the posterior as it is."""
    lik, active = _perfect_state_twin(tmp_path)
    mean, spread = lik.scores()
    assert lik.cycles == 12 and abs(mean - 120) / 120 < 0.01 and abs(mean - 120) < 3 * spread
    assert spread < 0.015 * 120  # measured: 120.45 +- 0.46
    full, every = _perfect_state_twin(tmp_path / "full", prune=math.inf)
    assert every == [21] * 12 and active[-1] <= 4 and sum(active) < 0.5 * sum(every)  # measured: 16, 11, 9, ..., 3
    assert mean == pytest.approx(full.scores()[0], rel=1e-4) and spread == pytest.approx(full.scores()[1], rel=1e-2)


def test_likelihood_update_in_a_plugin_sets_the_members_and_logs_the_posterior(tmp_path):
    """letkf with ``reynolds_update: likelihood``: no parameter column, the first analysis keeps the prior draws,
    the second sets the members to the posterior's quantiles and logs its mean."""
    grid, eq = _flow(1 / 100)
    truth = band_limited(grid, 3, 1, 4, 5.0, generator=torch.Generator().manual_seed(0))
    obs = Assimilation.example_observations(tmp_path / "truth.h5", grid, truth, [0.0, 0.1, 0.2], "regular:6x6", 0.3)
    plugin = make_plugin("letkf", grid, eq, observations=obs, reynolds_prior=[50, 150], reynolds_update="likelihood",
                         reynolds_points=5)
    assert plugin.parameters == 0 and "grid likelihood" in plugin.describe()
    w = band_limited(grid, 6, 1, 4, 5.0, generator=torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(3)
    plugin(FlowState(w=w, t=0.0, step=0, dt=0.01, grid=grid, equation=eq, generator=gen))
    drawn = (1 / eq.nu).clone()
    out = plugin(FlowState(w=w, t=0.1, step=10, dt=0.01, grid=grid, equation=eq, generator=gen))
    assert out.shape == w.shape and plugin.likelihood.cycles == 1
    re = 1 / eq.nu
    assert torch.equal(torch.argsort(re), torch.argsort(drawn)) and not torch.allclose(re, drawn)
    assert plugin.history["reynolds"][-1] == pytest.approx(plugin.likelihood.scores()[0])
    assert len(plugin.history["reynolds"]) == 2


@pytest.mark.parametrize("kwargs, match", [({"points": 1}, "reynolds_points >= 2"), ({"refine": 0}, "refine >= 1"),
                                           ({"points": 2.5}, "integers"), ({"prior": [150, 50]}, "0 < lo < hi"),
                                           ({"prune": 0}, "prune > 0")])
def test_bad_options_are_clear_errors(kwargs, match):
    prior = kwargs.pop("prior", [50, 150])
    with pytest.raises(ValueError, match=match):
        ReynoldsLikelihood(prior, **kwargs)
