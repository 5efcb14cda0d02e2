"""Score-based diffusion: the variance-exploding SDE, denoising score matching and samplers.

The VE SDE (Song et al. 2021, "Score-Based Generative Modeling through SDEs", and the setting of
the latent closure paper, DESIGN.md E1) is ``dx = g(t) dW`` on ``t in [0, 1]`` with
``g(t) = sigma_max^t``, so the perturbation kernel is ``x_t = x_0 + sigma(t) z`` with

    sigma(t)^2 = (sigma_max^(2t) - 1) / (2 ln sigma_max).

A score function here is any callable ``score(x, t) -> (batch, ...)`` with ``t`` of shape
``(batch,)``; conditioning is closed over by the caller. Samplers integrate the reverse SDE
(Euler-Maruyama) or the probability-flow ODE (Heun, 2nd order) on a Karras-type time schedule
``t_i = (t_max^(1/rho) + i/(N-1) (t_min^(1/rho) - t_max^(1/rho)))^rho``; both start from
``x ~ N(0, sigma(t_max)^2)`` unless an initial ``x`` is given, and cost one score call per step
(Euler-Maruyama) or two (Heun, one fewer on the last step). All are pure functions of their
arguments and a ``generator`` (a ``torch.Generator``, a :class:`solvers.random.MemberRNG` giving each
batch row its own stream, or ``None`` for the global one).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from solvers.random import normal_like
from solvers.registry import Registry

__all__ = ["VESDE", "dsm_loss", "denoised", "time_schedule", "euler_maruyama", "heun", "sample", "available_samplers",
           "gaussian_score"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class VESDE:
    """``dx = sigma_max^t dW``: noise scale :meth:`sigma`, diffusion coefficient :meth:`g`."""

    sigma_max: float = 30.0
    t_min: float = 1e-5  # smallest training time (t ~ U(t_min, 1))

    def __post_init__(self) -> None:
        if not self.sigma_max > 1:
            raise ValueError(f"VESDE needs sigma_max > 1, got {self.sigma_max}")

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Marginal standard deviation of ``x_t - x_0``."""
        log_s = math.log(self.sigma_max)
        return torch.sqrt(torch.expm1(2 * t * log_s) / (2 * log_s))

    def g(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_max ** t


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def dsm_loss(score: ScoreFn, x0: torch.Tensor, sde: VESDE, generator=None) -> torch.Tensor:
    """Denoising score matching ``E |sigma(t) s(x_0 + sigma z, t) + z|^2`` (per-sample sum over the
    field, averaged over the batch and divided by the field size), ``t ~ U(t_min, 1)``.

    Weighted by ``sigma(t)^2`` (Song et al.'s likelihood-free weighting), so every noise level
    contributes O(1). Its minimiser is the true score of the noised data.
    """
    x_t, t, sigma, z = _noised(x0, sde, sde.t_min, 1.0, generator)
    return ((sigma * score(x_t, t) + z) ** 2).mean()


def _noised(x0: torch.Tensor, sde: VESDE, lo: float, hi: float, generator=None):
    """``(x_t, t, sigma, z)``: one ``t ~ U(lo, hi)`` per batch row, ``x_t = x0 + sigma(t) z`` (``sigma`` and ``z``
    shaped like ``x0``)."""
    u = torch.rand(x0.shape[0], device=x0.device, dtype=x0.dtype,
                   generator=generator if isinstance(generator, torch.Generator) else None)
    t = lo + (hi - lo) * u
    z = normal_like(x0, generator)
    sigma = _expand(sde.sigma(t), x0)
    return x0 + sigma * z, t, sigma, z


def denoised(score: ScoreFn, x0: torch.Tensor, sde: VESDE, t_range: tuple[float, float] = (1e-3, 0.4),
             generator=None) -> torch.Tensor:
    """Tweedie's one-step estimate of ``x0`` from its noised copy: ``x_t + sigma(t)^2 s(x_t, t)`` with
    ``x_t = x0 + sigma(t) z`` at one ``t ~ U(t_range)`` per batch row (default: the samplers' range).
    For the exact score it is ``E[x0 | x_t]``; a loss on a function of it (e.g. a decoder's output)
    trains the score where the samplers use it."""
    lo, hi = t_range
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"t_range must satisfy 0 < lo <= hi <= 1, got {t_range}")
    x_t, t, sigma, _ = _noised(x0, sde, lo, hi, generator)
    return x_t + sigma ** 2 * score(x_t, t)


def time_schedule(steps: int, t_max: float = 0.4, t_min: float = 1e-3, rho: float = 7.0,
                  device=None, dtype=torch.float32) -> torch.Tensor:
    """``steps`` SDE times from ``t_max`` down to ``t_min``, denser near ``t_min`` (Karras et al. 2022)."""
    if steps < 1 or not 0 < t_min < t_max <= 1:
        raise ValueError(f"need steps >= 1 and 0 < t_min < t_max <= 1, got {steps}, {t_min}, {t_max}")
    if steps == 1:
        return torch.tensor([t_max], device=device, dtype=dtype)
    i = torch.arange(steps, device=device, dtype=torch.float64) / (steps - 1)
    t = (t_max ** (1 / rho) + i * (t_min ** (1 / rho) - t_max ** (1 / rho))) ** rho
    return t.to(dtype)


_SAMPLERS = Registry("sampler", "option(s)")
available_samplers = _SAMPLERS.available


@_SAMPLERS.register("euler_maruyama")
def euler_maruyama(score: ScoreFn, x: torch.Tensor, times: torch.Tensor, sde: VESDE, generator=None) -> torch.Tensor:
    """Reverse SDE ``dx = -g^2 s dt + g dW-bar`` by Euler-Maruyama from ``times[0]`` to 0.

    Step ``i`` goes from ``times[i]`` to ``times[i+1]`` (0 after the last); the last step returns
    the mean, without noise (Song et al.'s ``denoise``)."""
    nxt = torch.cat([times[1:], times.new_zeros(1)])
    for i, (t, t_next) in enumerate(zip(times.tolist(), nxt.tolist())):
        dt = t - t_next
        tb = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
        g2 = sde.sigma_max ** (2 * t)
        x = x + g2 * dt * score(x, tb)
        if i < len(times) - 1:
            x = x + math.sqrt(g2 * dt) * normal_like(x, generator)
    return x


@_SAMPLERS.register("heun")
def heun(score: ScoreFn, x: torch.Tensor, times: torch.Tensor, sde: VESDE, generator=None) -> torch.Tensor:
    """Probability-flow ODE ``dx/dt = -g^2 s / 2`` by Heun's method (2nd order, deterministic given
    the initial noise) from ``times[0]`` to ``times[-1]``, then one Euler step to 0.

    The randomness is the initial draw only: a sample per member, at about half the steps the
    Euler-Maruyama sampler needs for the same error (Karras et al. 2022, Alg. 1)."""
    def drift(x, t):
        tb = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
        return -0.5 * sde.sigma_max ** (2 * t) * score(x, tb)

    nxt = torch.cat([times[1:], times.new_zeros(1)]).tolist()
    for t, t_next in zip(times.tolist(), nxt):
        d = drift(x, t)
        x_euler = x + (t_next - t) * d
        if t_next > 0:
            x = x + (t_next - t) * 0.5 * (d + drift(x_euler, t_next))
        else:
            x = x_euler
    return x


def sample(score: ScoreFn, shape: tuple[int, ...], sde: VESDE, *, sampler: str = "euler_maruyama",
           steps: int = 10, t_max: float = 0.4, t_min: float = 1e-3, rho: float = 7.0, generator=None,
           device=None, dtype=torch.float32, x: torch.Tensor | None = None) -> torch.Tensor:
    """Draw ``shape[0]`` samples: start from ``x`` or ``N(0, sigma(t_max)^2)``, run ``sampler`` over
    :func:`time_schedule` ``(steps, t_max, t_min, rho)``."""
    fn = _SAMPLERS.get(sampler)
    times = time_schedule(steps, t_max, t_min, rho, device=device, dtype=torch.float64)
    if x is None:
        x = normal_like(torch.empty(shape, device=device, dtype=dtype), generator) * float(sde.sigma(times[:1]))
    return fn(score, x, times, sde, generator)


def gaussian_score(mean: torch.Tensor | float, var: torch.Tensor | float, sde: VESDE) -> ScoreFn:
    """Exact score of ``N(mean, var) * N(0, sigma(t)^2)`` (the noised marginal of a Gaussian):
    ``-(x - mean) / (var + sigma(t)^2)``; the reference the tests hold networks and samplers to."""
    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -(x - mean) / (var + _expand(sde.sigma(t), x) ** 2)
    return score
