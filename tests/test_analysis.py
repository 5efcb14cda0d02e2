"""Ensemble analysis steps against the exact Kalman posterior of a linear-Gaussian problem."""
from __future__ import annotations

import pytest
import torch

from latent.analysis import enkf_analysis, kalman_posterior


def _problem(members: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    L = torch.tensor([[1.0, 0, 0], [0.5, 0.8, 0], [0.2, -0.3, 0.6]], dtype=torch.float64)
    mean = torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64)
    H = torch.tensor([[1.0, 0, 0], [0, 0.5, 1.0]], dtype=torch.float64)
    r = torch.tensor([0.3, 0.2], dtype=torch.float64)
    y = torch.tensor([1.8, 0.4], dtype=torch.float64)
    X = mean + torch.randn(members, 3, dtype=torch.float64, generator=g) @ L.T
    return X, y, H, r, *kalman_posterior(X.mean(0), torch.cov(X.T), y, H, r)


def test_kalman_posterior_is_the_gaussian_product():
    X, y, H, r, km, kc = _problem(10)
    prior_mean, prior_cov = X.mean(0), torch.cov(X.T)
    info = torch.linalg.inv(prior_cov) + H.T @ torch.diag(1 / r) @ H  # information form
    assert torch.allclose(kc, torch.linalg.inv(info), atol=1e-12)
    assert torch.allclose(km, kc @ (torch.linalg.solve(prior_cov, prior_mean) + H.T @ (y / r)), atol=1e-12)


def test_enkf_matches_the_kalman_posterior():
    """20 000 members: the analysis mean equals the Kalman update of the ensemble's own mean and
    covariance to 0.02 and the covariance to 4 % (sampling error of the observation perturbations
    ~1/sqrt(N) = 0.7 %)."""
    X, y, H, r, km, kc = _problem(20000)
    Xa = enkf_analysis(X, y, lambda x: x @ H.T, r, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(Xa.mean(0), km, atol=0.02)
    assert float((torch.cov(Xa.T) - kc).norm() / kc.norm()) < 0.04
    shift = float((km - X.mean(0)).norm())
    assert shift > 0.5  # the observation moves the mean: the test is not trivial


def test_enkf_needs_two_members():
    X, y, H, r, *_ = _problem(2)
    X = X[:1]
    with pytest.raises(ValueError, match="at least 2 members"):
        enkf_analysis(X, y, lambda x: x @ H.T, r)


def test_global_letkf_is_exactly_the_kalman_posterior():
    """Without localisation the LETKF (an ETKF) gives the Kalman posterior of the ensemble's mean and
    covariance exactly (deterministic square root, no sampling error), for any ensemble size."""
    from latent.analysis import letkf_analysis

    for members in (5, 40):
        X, y, H, r, km, kc = _problem(members, seed=members)
        Xa = letkf_analysis(X, X @ H.T, y, r)
        assert torch.allclose(Xa.mean(0), km, atol=1e-10)
        assert torch.allclose(torch.cov(Xa.T), kc, atol=1e-10)
    # inflation 2 is the Kalman update of twice the prior covariance
    X, y, H, r, *_ = _problem(40, seed=1)
    km2, _ = kalman_posterior(X.mean(0), 2 * torch.cov(X.T), y, H, r)
    assert torch.allclose(letkf_analysis(X, X @ H.T, y, r, inflation=2.0).mean(0), km2, atol=1e-10)


def test_letkf_localisation_leaves_far_components_alone():
    """Weights of 1 reproduce the global analysis; a component with all weights 0 keeps its forecast
    mean (observations beyond the localisation radius have no influence)."""
    from latent.analysis import letkf_analysis

    X, y, H, r, *_ = _problem(12, seed=3)
    HX = X @ H.T
    ones = torch.ones(3, 2, dtype=torch.float64)
    assert torch.allclose(letkf_analysis(X, HX, y, r, ones), letkf_analysis(X, HX, y, r), atol=1e-12)
    weights = ones.clone()
    weights[2] = 0
    Xa = letkf_analysis(X, HX, y, r, weights)
    assert torch.allclose(Xa[:, 2], X[:, 2], atol=1e-12)  # no observation reaches it: unchanged members
    assert not torch.allclose(Xa[:, 0], X[:, 0])


def test_gaspari_cohn_and_periodic_distance():
    from latent.analysis import gaspari_cohn, periodic_distance

    d = torch.linspace(0, 3, 301, dtype=torch.float64)
    gc = gaspari_cohn(d, 1.0)
    assert gc[0] == pytest.approx(1.0) and (gc[d >= 2] == 0).all()
    assert (gc.diff() <= 1e-12).all()  # non-increasing
    assert gc[100].item() == pytest.approx(0.2083333, abs=1e-6)  # z = 1: both branches give 5/24
    a = torch.tensor([[0.05, 0.5]], dtype=torch.float64)
    b = torch.tensor([[0.95, 0.5], [0.5, 0.5]], dtype=torch.float64)
    assert torch.allclose(periodic_distance(a, b, 1.0), torch.tensor([[0.1, 0.45]], dtype=torch.float64))


def test_mixture_analysis_of_one_repeated_member_is_the_kalman_posterior():
    """Every member at the same point: the kernel-dressed prior is one Gaussian ``N(x, K)``, so the samples'
    mean and covariance are the Kalman posterior's (4000 samples: mean within 0.1 sd, covariance within 10 %)."""
    from latent.analysis import mixture_analysis

    g = torch.Generator().manual_seed(0)
    dim, obs = 3, 2
    x = torch.randn(dim, generator=g, dtype=torch.float64)
    kernel = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    H = torch.randn(obs, dim, generator=g, dtype=torch.float64)
    r = torch.tensor([0.3, 0.8], dtype=torch.float64)
    y = torch.randn(obs, generator=g, dtype=torch.float64)
    samples = mixture_analysis(x.repeat(4000, 1), y, H, r, kernel, g)
    mean, cov = kalman_posterior(x, torch.diag(kernel ** 2), y, H, r)
    sd = cov.diagonal().sqrt()
    assert ((samples.mean(0) - mean).abs() < 0.1 * sd).all()
    torch.testing.assert_close(samples.T.cov(), cov, rtol=0.1, atol=0.1 * float(cov.diagonal().min()))


def test_mixture_analysis_weights_the_members_by_their_fit():
    """Two members far apart, a precise observation near one: every sample comes from that member's component."""
    from latent.analysis import mixture_analysis

    X = torch.tensor([[-5.0, 0.0], [5.0, 0.0]], dtype=torch.float64).repeat(50, 1)
    H = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    samples = mixture_analysis(X, torch.tensor([4.5], dtype=torch.float64), H, torch.tensor([0.01], dtype=torch.float64),
                               torch.tensor([0.5, 0.5], dtype=torch.float64), torch.Generator().manual_seed(1))
    assert (samples[:, 0] > 3).all() and (samples[:, 0] - 4.5).abs().mean() < 0.2
