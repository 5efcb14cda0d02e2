"""VE SDE, denoising score matching and samplers against exact Gaussian answers."""
from __future__ import annotations

import math

import pytest
import torch

from latent.diffusion import VESDE, denoised, dsm_loss, gaussian_score, sample, time_schedule
from latent.score import ConditionalScoreNet

SDE = VESDE(sigma_max=30.0)


def test_sigma_is_the_integral_of_g_squared():
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    dsigma2 = (SDE.sigma(t + h) ** 2 - SDE.sigma(t - h) ** 2) / (2 * h)
    assert torch.allclose(dsigma2, SDE.g(t) ** 2, rtol=1e-6)
    assert float(SDE.sigma(torch.zeros((), dtype=torch.float64))) == 0.0


def test_time_schedule_is_karras():
    t = time_schedule(10, 0.4, 1e-3, 7.0, dtype=torch.float64)
    assert t[0] == pytest.approx(0.4) and t[-1] == pytest.approx(1e-3) and len(t) == 10
    assert bool((t[1:] < t[:-1]).all())
    assert bool((t[1:-1].diff() > t[:-2].diff()).all())  # |step| shrinks toward t_min (rho > 1)
    with pytest.raises(ValueError, match="t_min < t_max"):
        time_schedule(10, 1e-3, 0.4)


def test_dsm_loss_is_minimised_by_the_exact_score():
    """For N(mean, var) data the expected DSM loss of ``c * exact score`` is smallest at c = 1."""
    mean, var = 0.7, 0.3 ** 2
    x0 = mean + math.sqrt(var) * torch.randn(20000, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = gaussian_score(mean, var, SDE)
    losses = {}
    for c in (0.8, 0.95, 1.0, 1.05, 1.2):
        torch.manual_seed(1)  # the same t and noise for every c
        losses[c] = float(dsm_loss(lambda x, t: c * exact(x, t), x0, SDE))
    assert min(losses, key=losses.get) == 1.0, losses


def test_denoiser_of_the_exact_score_is_the_posterior_mean():
    """Tweedie: with the exact score of N(mean, var) data, ``denoised`` at one noise level has the Bayes
    error ``var sigma^2 / (var + sigma^2)`` (within 3 % over 40 000 draws), and a mis-scaled score does worse."""
    mean, var, t = 0.7, 0.3 ** 2, 0.2
    x0 = mean + math.sqrt(var) * torch.randn(40000, 1, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sigma2 = float(SDE.sigma(torch.tensor(t, dtype=torch.float64))) ** 2
    exact = gaussian_score(mean, var, SDE)
    errors = {}
    for c in (0.8, 1.0, 1.2):
        torch.manual_seed(4)  # the same noise for every c
        errors[c] = float(((denoised(lambda x, s: c * exact(x, s), x0, SDE, (t, t)) - x0) ** 2).mean())
    assert errors[1.0] == pytest.approx(var * sigma2 / (var + sigma2), rel=0.03)
    assert errors[1.0] < min(errors[0.8], errors[1.2])
    with pytest.raises(ValueError, match="t_range"):
        denoised(exact, x0, SDE, (0.4, 0.1))


@pytest.mark.parametrize("sampler, steps", [("euler_maruyama", 200), ("heun", 25)])
def test_sampler_draws_the_gaussian_target(sampler, steps):
    """Exact score of N(mean, var), chain started from the exact noised marginal at t_max = 0.4: the
    samples' mean within 4 standard errors and variance within 5 % of the target's (40 000 draws)."""
    mean, var, t_max = -0.4, 0.5 ** 2, 0.4
    n = 40000
    gen = torch.Generator().manual_seed(2)
    sigma_max = float(SDE.sigma(torch.tensor(t_max, dtype=torch.float64)))
    x = mean + math.sqrt(var + sigma_max ** 2) * torch.randn(n, 1, 1, generator=gen, dtype=torch.float64)
    out = sample(gaussian_score(mean, var, SDE), (n, 1, 1), SDE, sampler=sampler, steps=steps, t_max=t_max,
                 t_min=1e-3, generator=gen, dtype=torch.float64, x=x)
    assert abs(float(out.mean()) - mean) < 4 * math.sqrt(var / n)
    assert float(out.var()) == pytest.approx(var, rel=0.05)


def test_e1_sampler_from_its_prior_is_close_to_the_target():
    """The E1 setting as used (10 Euler-Maruyama steps from N(0, sigma(0.4)^2)) on a standardised
    Gaussian target: the sample mean and standard deviation land within 0.15 of the target's."""
    n = 20000
    out = sample(gaussian_score(0.0, 1.0, SDE), (n, 1, 1), SDE, steps=10, generator=torch.Generator().manual_seed(3),
                 dtype=torch.float64)
    assert abs(float(out.mean())) < 0.05
    assert float(out.std()) == pytest.approx(1.0, abs=0.15)


@pytest.mark.parametrize("channels", [1, 2])
def test_score_network_learns_a_conditional_gaussian_score(channels):
    """Train the two-branch score network by DSM on x | c ~ N(m(c), 0.3^2) (per point; one channel:
    m = c, two channels: m = (c, -c)): its score must match the exact -(x - m) / (0.09 + sigma(t)^2)
    within 20 % relative L2 at every tested t."""
    torch.manual_seed(0)
    net = ConditionalScoreNet(modes=2, width=16, layers=2, hidden=32, embed=16, channels=channels).double()
    s2 = 0.3 ** 2
    sign = torch.tensor([1.0, -1.0], dtype=torch.float64)[:, None, None]

    def mean(c):
        return c if channels == 1 else c[:, None] * sign

    def score(x, t, c):
        sigma = SDE.sigma(t)
        return net(x, sigma.log(), c) / sigma.reshape(-1, *[1] * (x.dim() - 1))

    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(400):
        c = torch.randn(64, 8, 8, dtype=torch.float64)
        x0 = mean(c) + math.sqrt(s2) * torch.randn_like(mean(c))
        loss = dsm_loss(lambda x, t: score(x, t, c), x0, SDE)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        for tv in (0.05, 0.2, 0.5, 0.9):
            c = torch.randn(256, 8, 8, dtype=torch.float64)
            t = torch.full((256,), tv, dtype=torch.float64)
            m = mean(c)
            x = m + torch.sqrt(s2 + SDE.sigma(t).reshape(-1, *[1] * (m.dim() - 1)) ** 2) * torch.randn_like(m)
            exact = gaussian_score(m, s2, SDE)(x, t)
            err = float((score(x, t, c) - exact).norm() / exact.norm())
            assert err < 0.2, (tv, err)
