"""Ensemble analysis steps as pure functions (shared by the assimilation plug-ins): the exact
Kalman posterior (the reference), the stochastic EnKF, the local ensemble transform Kalman filter
(LETKF, Hunt et al. 2007) with Gaspari-Cohn localisation, and exact sampling of a kernel-dressed ensemble's
posterior (a Gaussian mixture filter: what an EnSF with a kernel approximates by its reverse SDE).

Ensembles are ``(members, dim)`` (flatten fields first), observations ``y`` ``(obs,)``, the
observation error is Gaussian with variances ``r`` ``(obs,)`` (diagonal ``R``). ``observe`` maps
``(members, dim) -> (members, obs)`` and may be nonlinear (the EnKF linearises it through the
ensemble). DAPPER's conventions (Raanes et al.) for the EnKF.
"""
from __future__ import annotations

from typing import Callable

import torch

from solvers.random import normal_like

__all__ = ["enkf_analysis", "enkf_update", "perturbed_innovations", "kalman_posterior", "mixture_analysis",
           "letkf_analysis",
           "letkf_transforms", "ensemble_transform", "gaspari_cohn", "periodic_distance"]

Observe = Callable[[torch.Tensor], torch.Tensor]


def kalman_posterior(mean: torch.Tensor, cov: torch.Tensor, y: torch.Tensor, H: torch.Tensor,
                     r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact linear-Gaussian posterior ``(mean (dim,), cov (dim, dim))`` for ``y = H x + N(0, diag r)``."""
    S = H @ cov @ H.T + torch.diag(r)
    K = torch.linalg.solve(S, H @ cov).T
    return mean + K @ (y - H @ mean), cov - K @ H @ cov


def mixture_analysis(X: torch.Tensor, y: torch.Tensor, H: torch.Tensor, r: torch.Tensor, kernel: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Samples ``(members, dim)`` of the exact posterior of the kernel-dressed ensemble prior
    ``(1/N) sum_j N(x_j, diag(kernel^2))`` (``X`` ``(members, dim)``, ``kernel`` ``(dim,)`` standard deviations)
    for ``y = H x + N(0, diag r)``: the Gaussian mixture ``sum_j w_j N(m_j, P)`` with
    ``w_j ~ N(y; H x_j, S)``, ``S = H K H^T + R``, ``m_j = x_j + K H^T S^-1 (y - H x_j)``, ``P = K - K H^T S^-1 H K``.
    One sample per member: a component drawn by the weights, then ``m_j + u - K H^T S^-1 (H u - v)`` with
    ``u ~ N(0, K)``, ``v ~ N(0, R)`` (a draw of ``N(0, P)``). Costs one ``obs x obs`` Cholesky."""
    k2 = kernel.to(X) ** 2
    L = torch.linalg.cholesky((H * k2) @ H.T + torch.diag(r))  # S = L L^T

    def gain(v: torch.Tensor) -> torch.Tensor:  # rows v (k, obs) -> K H^T S^-1 v: (k, dim)
        return torch.cholesky_solve(v.T, L).T @ H * k2

    innovation = y - X @ H.T  # (members, obs)
    white = torch.linalg.solve_triangular(L, innovation.T, upper=False).T
    logw = -0.5 * (white ** 2).sum(1)
    pick = torch.multinomial(torch.softmax(logw, 0), X.shape[0], replacement=True, generator=generator)
    u = normal_like(X, generator) * k2.sqrt()
    v = normal_like(innovation, generator) * r.sqrt()
    return X[pick] + gain(innovation[pick]) + u - gain(u @ H.T - v)


def enkf_analysis(X: torch.Tensor, y: torch.Tensor, observe: Observe | torch.Tensor, r: torch.Tensor,
                  generator=None, localize: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Stochastic (perturbed-observation) EnKF analysis of ``X`` ``(members, dim)``.

    ``X_a = X + (y + e_i - h(x_i)) K^T`` with the ensemble gain
    ``K = C_xy (C_yy + R)^-1`` from the ensemble's anomalies (Burgers et al. 1998); the perturbations
    ``e_i ~ N(0, R)`` are centred so the analysis mean is the Kalman update of the ensemble mean.
    ``observe`` may also be the observed ensemble ``h(X)`` itself. ``localize = (rho_xy (dim, obs),
    rho_yy (obs, obs))`` tapers both covariances elementwise (Schur product, Houtekamer & Mitchell 2001)."""
    if X.shape[0] < 2:
        raise ValueError(f"the EnKF needs at least 2 members, got {X.shape[0]}")
    HX = observe if isinstance(observe, torch.Tensor) else observe(X)  # (members, obs)
    return enkf_update(X, HX, perturbed_innovations(HX, y, r, generator), r, localize)


def perturbed_innovations(HX: torch.Tensor, y: torch.Tensor, r: torch.Tensor, generator=None) -> torch.Tensor:
    """``y + e_i - HX_i`` ``(members, obs)`` with centred perturbations ``e_i ~ N(0, diag r)`` from ``generator``."""
    e = normal_like(HX, generator) * r.sqrt()
    return y[None] + (e - e.mean(0)) - HX


def enkf_update(X: torch.Tensor, HX: torch.Tensor, innovations: torch.Tensor, r: torch.Tensor,
                localize: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``X + innovations K^T`` ``(members, dim)``, the EnKF gain ``K = C_xy (C_yy + R)^-1`` of ``X`` and its
    observed values ``HX`` ``(members, obs)`` (optionally tapered by ``localize``, see :func:`enkf_analysis`)."""
    n = X.shape[0]
    if n < 2:
        raise ValueError(f"the EnKF needs at least 2 members, got {n}")
    A, HA = X - X.mean(0), HX - HX.mean(0)
    C_yy, C_xy = HA.T @ HA / (n - 1), A.T @ HA / (n - 1)
    if localize is not None:
        C_xy, C_yy = C_xy * localize[0], C_yy * localize[1]
    C_yy = C_yy + torch.diag(r)
    return X + torch.linalg.solve(C_yy, innovations.T).T @ C_xy.T


def letkf_analysis(X: torch.Tensor, HX: torch.Tensor, y: torch.Tensor, r: torch.Tensor,
                   weights: torch.Tensor | None = None, inflation: float = 1.0) -> torch.Tensor:
    """LETKF analysis of ``X`` ``(members, dim)`` given its observed values ``HX`` ``(members, obs)``.

    Every state component ``g`` gets its own ensemble transform from the observations weighted by
    ``weights[g]`` ``(dim, obs)`` in ``[0, 1]`` (R-localisation: ``R_g^-1 = diag(weights[g] / r)``);
    ``weights=None`` is the global ETKF, whose mean and covariance are exactly the Kalman posterior of
    the ensemble's mean and covariance for a linear ``H``. ``inflation`` multiplies the prior covariance.
    Deterministic square root (symmetric), so the analysis ensemble stays centred on the analysis mean.
    """
    if X.shape[0] != HX.shape[0]:
        raise ValueError(f"X has {X.shape[0]} members but HX {HX.shape[0]}")
    return ensemble_transform(X, letkf_transforms(HX, y, r, weights, inflation))


def ensemble_transform(X: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """``mean_g + A[:, g] @ T[g]`` ``(members, dim)`` for ``X`` ``(members, dim)`` with anomalies ``A`` and
    transforms ``T`` ``(1 | dim, members, members)`` (one for all components, or one each)."""
    return X.mean(0) + torch.einsum("ig,gij->jg", X - X.mean(0), T.expand(X.shape[1], *T.shape[1:]))


def letkf_transforms(HX: torch.Tensor, y: torch.Tensor, r: torch.Tensor, weights: torch.Tensor | None = None,
                     inflation: float = 1.0) -> torch.Tensor:
    """The LETKF's ensemble transforms ``T`` ``(1 | dim, members, members)`` (Hunt et al. 2007, eqs. 20-24):
    component ``g``'s analysis members are ``mean_g + A[:, g] @ T[g]`` (column ``j``: member ``j``'s weights,
    mean weights plus the symmetric square root), ``A`` the forecast anomalies; see :func:`letkf_analysis`."""
    n = HX.shape[0]
    if n < 2:
        raise ValueError(f"the LETKF needs at least 2 members, got {n}")
    if inflation <= 0:
        raise ValueError(f"inflation must be > 0, got {inflation}")
    y_mean = HX.mean(0)
    Y = HX - y_mean  # (members, obs)
    rinv = (1 / r)[None] if weights is None else weights / r  # (1 | dim, obs)
    C = Y[None] * rinv[:, None, :]  # (1 | dim, members, obs): Y R_g^-1
    eye = torch.eye(n, dtype=HX.dtype, device=HX.device)
    M = (n - 1) / inflation * eye + C @ Y.T  # (1 | dim, members, members): inverse of Pa~
    evals, evecs = torch.linalg.eigh(M)
    Pa = (evecs / evals[..., None, :]) @ evecs.transpose(-1, -2)
    W = (evecs * ((n - 1) / evals).sqrt()[..., None, :]) @ evecs.transpose(-1, -2)
    w_mean = (Pa @ (C @ (y - y_mean)[:, None]))  # (1 | dim, members, 1)
    return W + w_mean


def periodic_distance(a: torch.Tensor, b: torch.Tensor, length: float) -> torch.Tensor:
    """Distances ``(len(a), len(b))`` between points ``(.., 2)`` on the periodic square of side ``length``."""
    d = (a[:, None, :] - b[None, :, :]).abs() % length
    return torch.minimum(d, length - d).norm(dim=-1)


def gaspari_cohn(distance: torch.Tensor, radius: float) -> torch.Tensor:
    """Gaspari-Cohn (1999) compactly supported 5th-order correlation: 1 at 0, 0 beyond ``2 * radius``."""
    z = distance / radius
    inner = -0.25 * z**5 + 0.5 * z**4 + 0.625 * z**3 - 5 / 3 * z**2 + 1
    outer = z**5 / 12 - 0.5 * z**4 + 0.625 * z**3 + 5 / 3 * z**2 - 5 * z + 4 - 2 / (3 * z.clamp_min(1e-12))
    return torch.where(z <= 1, inner, torch.where(z < 2, outer, torch.zeros_like(z))).clamp_min(0)
