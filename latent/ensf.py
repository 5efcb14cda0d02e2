"""Ensemble score filter (EnSF, Bao, Zhang & Zhang 2024): a training-free analysis step, as a pure function.

The forecast ensemble ``x0`` ``(members, dim)`` defines the prior. Diffusing it,
``x_t = alpha_t x_0 + beta_t eps`` with ``alpha_t = 1 - (1 - eps_alpha) t`` and
``beta_t^2 = eps_beta + (1 - eps_beta) t`` on ``t in [0, 1]``, gives a Gaussian mixture whose score is
known in closed form from the members (no network):

    s(x, t) = sum_j w_j(x) (alpha_t x0_j - x) / beta_t^2,   w(x) = softmax_j(-|x - alpha_t x0_j|^2 / (2 beta_t^2))

The analysis draws new members by integrating the reverse-time SDE from ``t = 1`` (standard normal
draws) to ``t = 0`` with Euler-Maruyama in ``steps`` pseudo-time steps, following the posterior score
``s(x, t) + h(t) grad log p(y | x)``. The likelihood term (linear ``H``, Gaussian ``R``:
``H^T R^-1 (y - H x)``) is damped by ``h(t) = 1 - t`` (full weight at ``t = 0``, none at ``t = 1``,
where the prior is pure noise) and clipped elementwise to ``[-clip, clip]`` for stability.

EnSF is an approximation: the damped likelihood is not the exact diffused likelihood. On a 4-dimensional
linear-Gaussian problem (400-1000 members) its analysis mean misses the Kalman mean by 0.3-0.5
posterior standard deviations (30-40 % of the update). ``guidance = "tweedie"`` replaces the damped
term by the Gaussian diffused likelihood around the ensemble's posterior mean ``E[x0 | x_t]`` (exact
for a Gaussian prior, still training-free), which brings that gap down to the Monte-Carlo error
(~0.06 sd at 400 members); ``tests/test_ensf.py`` checks both.

Measured limitation (physical space, few members): on the 32^2 twin of ``tests/test_assimilation.py``
(1024 dimensions, 16 members, 8x8 sensors) neither guidance improves on the free ensemble (final
relative error 0.94-0.95 against 1.01; EnKF and LETKF reach < 0.4). The mixture weights are one-hot
in high dimension, so as ``beta_t -> 0`` the prior score pins every particle to a forecast member and
outweighs the damped likelihood; this is why LD-EnSF filters in a small latent space.

``kernel`` (a standard deviation ``sigma``, scalar or per component ``(dim,)``; off by default) dresses each
member in a Gaussian ``N(x0_j, diag(sigma^2))``: the prior is a kernel density estimate instead of the
members themselves. Diffused, component ``j`` is ``N(alpha x0_j, b)`` with ``b = beta_t^2 + alpha_t^2 sigma^2``,
so the mixture score and weights above hold with ``b`` in place of ``beta_t^2``, and the Tweedie mean and
covariance gain the kernel's share (:func:`tweedie_likelihood_score`). With ``sigma = 0`` the analysis is
confined near the span of the members (``members - 1`` directions: too few when the state has 128
latent components and the ensemble 20); the kernel lets the likelihood move the analysis in every
direction by about ``sigma`` (LD-EnSF, where the standardised latent's climatological covariance is ``I``).
A single member with a kernel is a Gaussian prior, whose Kalman posterior ``tests/test_ensf.py`` checks.
"""
from __future__ import annotations

import math

import torch

from solvers.random import MemberRNG, normal_like

__all__ = ["ensf_analysis", "schedule", "prior_score", "tweedie_likelihood_score", "GUIDANCE"]

GUIDANCE = ("damped", "tweedie")


def schedule(t: float, eps_alpha: float, eps_beta: float) -> tuple[float, float, float, float]:
    """``alpha_t``, ``beta_t^2``, drift ``f = d ln alpha / dt`` and diffusion ``g^2 = d beta^2/dt - 2 f beta^2``."""
    alpha = 1 - (1 - eps_alpha) * t
    beta2 = eps_beta + (1 - eps_beta) * t
    f = -(1 - eps_alpha) / alpha
    return alpha, beta2, f, (1 - eps_beta) - 2 * f * beta2


def _kernel_variance(beta2: float, alpha: float, k2: torch.Tensor | None):
    """``b = beta^2 + alpha^2 sigma^2`` (scalar without a kernel, else ``(dim,)``)."""
    return beta2 if k2 is None else beta2 + alpha ** 2 * k2


def posterior_weights(x: torch.Tensor, x0: torch.Tensor, alpha: float, beta2: float,
                      x0_sq: torch.Tensor | None = None, k2: torch.Tensor | None = None) -> torch.Tensor:
    """``p(x0_j | x_t = x)`` ``(particles, members)``: softmax of ``-|x - alpha x0_j|^2 / (2 beta^2)``, computed as
    the softmax of ``(2 alpha x . x0_j - alpha^2 |x0_j|^2) / (2 beta^2)`` (``|x|^2`` is the same for every ``j``);
    ``x0_sq``: ``|x0_j|^2`` ``(members,)`` if already known; ``k2``: the kernel's variances ``(dim,)`` (then
    ``beta^2`` becomes ``b = beta^2 + alpha^2 k2`` per component)."""
    if k2 is not None:
        s = _kernel_variance(beta2, alpha, k2).rsqrt()
        x, x0, x0_sq, beta2 = x * s, x0 * s, None, 1.0
    x0_sq = (x0 * x0).sum(1) if x0_sq is None else x0_sq
    return torch.softmax(torch.addmm(x0_sq, x, x0.T, beta=-alpha ** 2, alpha=2 * alpha) / (2 * beta2), dim=1)


def prior_score(x: torch.Tensor, x0: torch.Tensor, alpha: float, beta2: float,
                x0_sq: torch.Tensor | None = None, k2: torch.Tensor | None = None) -> torch.Tensor:
    """Score ``(particles, dim)`` at ``x`` of the diffused ensemble ``x0`` ``(members, dim)`` (a Gaussian mixture;
    ``k2``: kernel variances ``(dim,)``, module docstring)."""
    b = _kernel_variance(beta2, alpha, k2)
    return (alpha * posterior_weights(x, x0, alpha, beta2, x0_sq, k2) @ x0 - x) / b


def tweedie_likelihood_score(x, x0, alpha, beta2, y, H, r, k2=None, gram=None) -> torch.Tensor:
    """``grad_x log N(y; H m, H C H^T + R)`` with ``m = E[x0 | x]``, ``C = Cov[x0 | x]`` under the ensemble
    mixture and ``dm/dx = alpha C / beta^2`` (``C`` held fixed): the exact diffused likelihood when the prior
    is Gaussian, a training-free alternative to the damped ``h(t) grad log p(y | x)``.

    With kernel variances ``k2`` ``(dim,)``: member ``j``'s posterior mean is ``c x0_j + alpha k2 / b x``
    (``c = beta^2 / b``) and its covariance ``diag(k2 beta^2 / b)``, so ``C = sum_j w_j c^2 D_j D_j^T + diag(k2 c)``.
    ``gram``: :func:`_kernel_gram`'s ``(value, eig)`` when the kernel has one nonzero value: then
    ``(H diag(k2 c) H^T + R)^-1`` comes from one eigendecomposition per analysis instead of a Cholesky per step."""
    w = posterior_weights(x, x0, alpha, beta2, None, k2)  # (particles, members)
    m0, c, spread = w @ x0, 1.0, None  # m0: the members' weighted mean (particles, dim)
    if k2 is not None:
        b = _kernel_variance(beta2, alpha, k2)
        c, spread = beta2 / b, k2 * beta2 / b  # (dim,): the members' share, the kernel's posterior variance
    # D_pj = c (x0_j - m0_p) is never formed: H D_pj = H c x0_j - H c m0_p, sum_j a_pj D_pj = c (a_p x0 - sum a_p m0_p)
    A = ((x0 * c) @ H.T)[None] - ((m0 * c) @ H.T)[:, None]  # (particles, members, obs)
    m = m0 if k2 is None else c * m0 + alpha * k2 / b * x
    G = F = None
    if gram is not None and H.shape[0] > x0.shape[0]:  # Woodbury's case: M = c_k H_k H_k^T + R, M^-1 = F F^T
        value, (s, lam, Q) = gram
        c_k = value * beta2 / (beta2 + alpha ** 2 * value)
        F = s[:, None] * Q * (c_k * lam + 1).rsqrt()
    elif spread is not None:  # (also with fewer observations than members: the direct solve needs M itself)
        G = (H * spread) @ H.T
    v = _solve_low_rank(w, A, r, y - m @ H.T, G, F)  # (H C H^T + R)^-1 (y - H m): (particles, obs)
    coef = w * (A @ v[..., None])[..., 0]  # (particles, members)
    score = c * (coef @ x0 - coef.sum(1, keepdim=True) * m0)  # J^T H^T v, J = alpha C / beta^2
    return alpha / beta2 * (score if spread is None else score + spread * (v @ H))


def _solve_low_rank(w: torch.Tensor, A: torch.Tensor, r: torch.Tensor, b: torch.Tensor,
                    G: torch.Tensor | None = None, F: torch.Tensor | None = None) -> torch.Tensor:
    """``(A^T diag(w) A + M)^-1 b`` per particle, ``M = diag(r) + G`` (``G`` ``(obs, obs)``, shared by the particles,
    optional), ``w`` ``(p, m)``, ``A`` ``(p, m, obs)``, ``b`` ``(p, obs)``. ``F`` ``(obs, obs)``: a factor with
    ``M^-1 = F F^T`` when the caller has one (then ``G`` and ``r`` are not used; fewer members than observations).

    With fewer members than observations, by Woodbury through ``B = sqrt(w) A F`` (an ``m x m`` solve per
    particle, stable when weights vanish; ``F = R^-1/2``, or ``L^-T`` from the Cholesky factor ``L`` of ``M``):
    ``S^-1 = F (I - B^T (I + B B^T)^-1 B) F^T``; otherwise the ``obs x obs`` system directly."""
    m, obs = A.shape[-2:]
    if F is None and obs <= m:
        S = torch.einsum("pj,pjo,pjq->poq", w, A, A) + torch.diag(r)
        return torch.linalg.solve(S if G is None else S + G, b[..., None])[..., 0]
    if F is None and G is None:
        F = torch.diag(r.rsqrt())
    elif F is None:  # M = L L^T, M^-1 = L^-T L^-1
        eye = torch.eye(obs, dtype=A.dtype, device=A.device)
        F = torch.linalg.solve_triangular(torch.linalg.cholesky(G + torch.diag(r)), eye, upper=False).T
    B, c = (w.sqrt()[..., None] * A) @ F, b @ F  # (p, m, obs), (p, obs)
    inner = torch.eye(m, dtype=A.dtype, device=A.device) + B @ B.transpose(-1, -2)
    correction = (B.transpose(-1, -2) @ torch.linalg.solve(inner, (B @ c[..., None])))[..., 0]
    return (c - correction) @ F.T


def ensf_analysis(x0: torch.Tensor, y: torch.Tensor, H: torch.Tensor, r: torch.Tensor, generator=None,
                  steps: int = 100, eps_alpha: float = 0.05, eps_beta: float = 0.0, clip: float | None = None,
                  particles: int | None = None, guidance: str = "damped",
                  kernel: float | torch.Tensor | None = None, implicit: bool = False) -> torch.Tensor:
    """EnSF analysis ``(particles, dim)`` (default: as many as members) of the forecast ``x0`` ``(members, dim)``
    for observations ``y`` ``(obs,)`` of ``H`` ``(obs, dim)`` with noise variances ``r`` ``(obs,)``; ``H = None``:
    every component observed (``obs = dim``, LD-EnSF's latent observation), without the products by ``H``.

    ``guidance``: ``damped`` (the paper's ``h(t) grad log p(y | x_t)``, ``h = 1 - t``) or ``tweedie``
    (:func:`tweedie_likelihood_score`); ``generator``: a ``torch.Generator`` (all the pseudo-time noise drawn in
    one call, in float32) or a per-member :class:`~solvers.random.MemberRNG` (then ``particles`` must equal the
    members); ``kernel``: each member's Gaussian kernel standard deviation, scalar or ``(dim,)`` (module docstring);
    ``implicit`` (damped guidance): the likelihood term, linear in ``x``, taken at the new point of each step
    (linearly implicit Euler-Maruyama, ``(I + c H^T R^-1 H) x_new = ...``, by Woodbury through ``R + c H H^T``):
    stable however stiff the likelihood, where the explicit step diverges once ``g^2 dt |H^T R^-1 H| > 2``
    (many precise sensors)."""
    if H is None:
        if y.shape[-1] != x0.shape[1]:
            raise ValueError(f"H = None observes every component: need {x0.shape[1]} observations, got {y.shape[-1]}")
        if guidance == "tweedie":
            H = torch.eye(x0.shape[1], dtype=x0.dtype, device=x0.device)
    if guidance not in GUIDANCE:
        raise ValueError(f"unknown EnSF guidance {guidance!r}; choose one of {list(GUIDANCE)}")
    if steps < 1 or not 0 < eps_alpha < 1 or not 0 <= eps_beta < 1:
        raise ValueError(f"need steps >= 1, 0 < eps_alpha < 1, 0 <= eps_beta < 1; got {steps}, {eps_alpha}, {eps_beta}")
    if implicit and (guidance != "damped" or clip is not None):
        raise ValueError("implicit applies to the damped guidance without clip (it treats the likelihood term exactly)")
    m, dim = x0.shape
    particles = particles or m
    k2 = None
    if kernel is not None:
        sigma = torch.as_tensor(kernel, dtype=x0.dtype, device=x0.device).expand(dim)
        k2 = sigma ** 2
        if not bool(torch.isfinite(sigma).all()) or bool((sigma < 0).any()):
            raise ValueError(f"the EnSF kernel must be finite standard deviations >= 0; got {kernel}")
    like_x0 = torch.empty(particles, dim, dtype=x0.dtype, device=x0.device)
    if isinstance(generator, MemberRNG):  # each member's own stream, step by step
        draws = (normal_like(like_x0, generator) for _ in range(steps + 1))
    else:
        draws = iter(torch.randn((steps + 1, particles, dim), generator=generator, dtype=torch.float32,  # 4x faster
                                 device=x0.device).to(x0.dtype))  # than float64 draws; ample for noise
    x, x0_sq, dt = next(draws), (x0 * x0).sum(1), 1.0 / steps
    if guidance == "damped" and H is None and clip is None and k2 is None and not implicit:
        return _damped_identity(x, x0, x0_sq, y, r, draws, steps, eps_alpha, eps_beta)
    eig = None if H is None or not implicit else _scaled_eigh(H, r)
    gram = _kernel_gram(H, r, k2) if guidance == "tweedie" and k2 is not None else None
    for i in range(steps):
        t = 1.0 - i * dt
        alpha, beta2, f, g2 = schedule(t, eps_alpha, eps_beta)
        if implicit:
            x = _implicit_damped_step(x, prior_score(x, x0, alpha, beta2, x0_sq, k2), y, H, eig, r,
                                      f * dt, g2 * dt, (1 - t) * g2 * dt, next(draws))
            continue
        if guidance == "tweedie":
            like = tweedie_likelihood_score(x, x0, alpha, beta2, y, H, r, k2, gram)
        elif H is None:
            like = (1 - t) * (y - x) / r
        else:
            like = (1 - t) * ((y - x @ H.T) / r) @ H
        if clip is not None:
            like = like.clamp(-clip, clip)
        score = prior_score(x, x0, alpha, beta2, x0_sq, k2) + like
        x = x - (f * x - g2 * score) * dt + math.sqrt(g2 * dt) * next(draws)
    return x


def _scaled_eigh(H: torch.Tensor, r: torch.Tensor):
    """``R^-1/2`` ``(obs,)`` and the eigenpairs of ``R^-1/2 H H^T R^-1/2``: then ``(c H H^T + R)^-1 v =
    R^-1/2 Q (c Lambda + I)^-1 Q^T R^-1/2 v`` for every ``c`` by products alone (one decomposition per analysis)."""
    s = r.rsqrt()
    lam, Q = torch.linalg.eigh(s[:, None] * (H @ H.T) * s)
    return s, lam, Q


def _kernel_gram(H: torch.Tensor, r: torch.Tensor, k2: torch.Tensor):
    """``(value, _scaled_eigh(H_k, r))`` when the kernel variances ``k2`` ``(dim,)`` take one nonzero value on the
    columns ``H_k`` of ``H`` (zero elsewhere), so ``H diag(spread) H^T = c H_k H_k^T`` at every step; else None."""
    on = k2 > 0
    if not bool(on.any()) or not bool((k2[on] == k2[on][0]).all()):
        return None
    return float(k2[on][0]), _scaled_eigh(H * on, r)


def _implicit_damped_step(x, prior, y, H, eig, r, fdt: float, g2dt: float, c: float, noise):
    """One linearly implicit Euler-Maruyama step: ``(I + c H^T R^-1 H) x_new = x - (f x - g^2 prior) dt
    + c H^T R^-1 y + sqrt(g^2 dt) noise``, ``c = h(t) g^2 dt``; ``(I + c H^T R^-1 H)^-1 = I - c H^T (R + c H H^T)^-1 H``
    (``H = None``: the identity, a division; ``eig``: :func:`_scaled_eigh`)."""
    rhs = x - fdt * x + g2dt * prior + math.sqrt(g2dt) * noise
    if H is None:
        return (rhs + c * y / r) / (1 + c / r)
    rhs = rhs + c * (y / r) @ H
    s, lam, Q = eig
    v = ((rhs @ H.T) * s) @ Q / (c * lam + 1)  # (particles, obs): Q^T R^-1/2 H rhs, scaled
    return rhs - c * ((v @ Q.T) * s) @ H


def _damped_identity(x, x0, x0_sq, y, r, draws, steps: int, eps_alpha: float, eps_beta: float) -> torch.Tensor:
    """:func:`ensf_analysis`'s loop for damped guidance with ``H = I`` and no clipping, its Euler-Maruyama step
    ``x - (f x - g^2 (s_prior + (1 - t)(y - x) / r)) dt + sqrt(g^2 dt) noise`` regrouped into a few fused
    operations (LD-EnSF's latent analysis: a few hundred dimensions, where the per-operation overhead dominates)."""
    dt, inv_r, y_r = 1.0 / steps, 1.0 / r, y / r
    for i in range(steps):
        t = 1.0 - i * dt
        alpha, beta2, f, g2 = schedule(t, eps_alpha, eps_beta)
        logits = torch.addmm(x0_sq, x, x0.T, beta=-alpha ** 2 / (2 * beta2), alpha=alpha / beta2)
        c = g2 * dt
        keep = (1 - f * dt - c / beta2) - (c * (1 - t)) * inv_r  # (dim,): what stays of x
        x = torch.addmm(torch.addcmul(c * (1 - t) * y_r, x, keep), torch.softmax(logits, dim=1), x0,
                        alpha=c * alpha / beta2).add_(next(draws), alpha=math.sqrt(c))
    return x
