"""Reynolds-number augmentation (closure/reynolds.py): prior draws, scaling, update and clamping."""
from __future__ import annotations

import math

import pytest
import torch

from closure.reynolds import ReynoldsParameter, augment, check_prior, draw_log_uniform, split
from solvers import Grid, NavierStokes2D
from solvers.random import MemberRNG
from solvers.rollout import FlowState


def _state(members=4, generator=None, nu=1e-2):
    grid = Grid(16, 2 * math.pi, dtype=torch.float64)
    w = torch.randn(members, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return FlowState(w=w, t=0.0, step=0, dt=0.01, grid=grid, equation=NavierStokes2D(grid, nu=nu), generator=generator)


def test_prior_draws_are_log_uniform_and_per_member_reproducible():
    lo, hi = 50.0, 150.0
    log_re = draw_log_uniform(lo, hi, torch.empty(4000, 1), torch.Generator().manual_seed(0))
    assert log_re.dtype == torch.float64 and lo <= log_re.exp().min() and log_re.exp().max() <= hi
    u = (log_re - math.log(lo)) / math.log(hi / lo)  # uniform on [0, 1]: mean 1/2, variance 1/12, within 4 SE
    assert abs(u.mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / 4000)
    assert abs(u.var().item() - 1 / 12) < 4 * math.sqrt(1 / 180 / 4000)
    both = draw_log_uniform(lo, hi, torch.empty(4, 1), MemberRNG(7, 4))
    assert torch.equal(both[2:], draw_log_uniform(lo, hi, torch.empty(2, 1), MemberRNG(7, range(2, 4))))


def test_augment_scales_the_parameter_like_the_field_and_split_inverts_it():
    X = torch.randn(8, 100, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3.0
    log_re = torch.linspace(4.0, 5.0, 8, dtype=torch.float64)
    Z, s = augment(X, log_re, 4.5)
    assert Z.shape == (8, 101) and torch.equal(Z[:, :100], X)
    assert Z[:, -1].std().item() == pytest.approx(X.std(0).pow(2).mean().sqrt().item())
    X2, log_re2 = split(Z, 4.5, s)
    assert torch.equal(X2, X) and torch.allclose(log_re2, log_re, atol=1e-14)


def test_start_draws_once_and_update_clamps_to_the_widened_prior():
    state = _state(generator=torch.Generator().manual_seed(3))
    param = ReynoldsParameter([50, 150], jitter=0.0)
    param.start(state)
    drawn = param.prior_draws.clone()
    assert torch.allclose(param.reynolds(state.equation, 4), drawn) and state.equation.version == 2
    param.start(state)  # later calls leave the members' Re alone
    assert torch.equal(param.prior_draws, drawn) and state.equation.version == 2
    X = state.w.reshape(4, -1)
    Z, s = param.augment(X, state)  # jitter 0: the column is the members' log Re, scaled
    assert torch.allclose(split(Z, param.centre, s)[1].exp(), drawn)
    Z[:, -1] = s * (torch.tensor([math.log(10.0), math.log(100.0), math.log(290.0), math.log(1e4)]) - param.centre)
    assert torch.equal(param.update(Z, s, state), X)
    assert torch.allclose(param.reynolds(state.equation, 4), torch.tensor([25.0, 100.0, 290.0, 300.0], dtype=torch.float64))


def test_jitter_is_a_random_walk_of_the_stated_size():
    state = _state(members=2000, generator=torch.Generator().manual_seed(4))
    state.equation.set_viscosity(torch.full((2000,), 0.01))
    param = ReynoldsParameter([50, 150], jitter=0.05)
    Z, s = param.augment(state.w.reshape(2000, -1), state)
    steps = split(Z, param.centre, s)[1] - math.log(100.0)
    assert steps.std().item() == pytest.approx(0.05, rel=4 / math.sqrt(2 * 2000))


@pytest.mark.parametrize("prior", [[1, 2, 3], None, [float("nan"), 5], [5, float("inf")]])
def test_check_prior_rejects_malformed_priors(prior):
    with pytest.raises(ValueError, match="reynolds_prior"):
        check_prior(prior)
    assert check_prior(["50", 150]) == (50.0, 150.0)
