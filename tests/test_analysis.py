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
