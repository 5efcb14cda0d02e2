"""Ensemble analysis steps as pure functions (shared by the assimilation plug-ins): the exact
Kalman posterior (the reference) and the stochastic EnKF. The ensemble score filter joins here.

Ensembles are ``(members, dim)`` (flatten fields first), observations ``y`` ``(obs,)``, the
observation error is Gaussian with variances ``r`` ``(obs,)`` (diagonal ``R``). ``observe`` maps
``(members, dim) -> (members, obs)`` and may be nonlinear (the EnKF linearises it through the
ensemble). DAPPER's conventions (Raanes et al.) for the EnKF.
"""
from __future__ import annotations

from typing import Callable

import torch

from solvers.random import normal_like

__all__ = ["enkf_analysis", "kalman_posterior"]

Observe = Callable[[torch.Tensor], torch.Tensor]


def kalman_posterior(mean: torch.Tensor, cov: torch.Tensor, y: torch.Tensor, H: torch.Tensor,
                     r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact linear-Gaussian posterior ``(mean (dim,), cov (dim, dim))`` for ``y = H x + N(0, diag r)``."""
    S = H @ cov @ H.T + torch.diag(r)
    K = torch.linalg.solve(S, H @ cov).T
    return mean + K @ (y - H @ mean), cov - K @ H @ cov


def enkf_analysis(X: torch.Tensor, y: torch.Tensor, observe: Observe, r: torch.Tensor,
                  generator=None) -> torch.Tensor:
    """Stochastic (perturbed-observation) EnKF analysis of ``X`` ``(members, dim)``.

    ``X_a = X + (y + e_i - h(x_i)) K^T`` with the ensemble gain
    ``K = C_xy (C_yy + R)^-1`` from the ensemble's anomalies (Burgers et al. 1998); the perturbations
    ``e_i ~ N(0, R)`` are centred so the analysis mean is the Kalman update of the ensemble mean."""
    n = X.shape[0]
    if n < 2:
        raise ValueError(f"the EnKF needs at least 2 members, got {n}")
    HX = observe(X)
    A, HA = X - X.mean(0), HX - HX.mean(0)
    C_yy = HA.T @ HA / (n - 1) + torch.diag(r)
    C_xy = A.T @ HA / (n - 1)
    e = normal_like(HX, generator) * r.sqrt()
    innovations = y[None] + (e - e.mean(0)) - HX  # (members, obs)
    return X + torch.linalg.solve(C_yy, innovations.T).T @ C_xy.T
