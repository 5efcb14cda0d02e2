"""Time steppers as factories ``make_stepper(name, equation, dt) -> step(w_hat, extra_hat=None)``.

IMEX low-storage Runge-Kutta / Crank-Nicolson family (one generic routine, thin presets), as in
jax-cfd's ``time_stepping`` and Kochkov et al. (2021): for stages ``k = 1..s``

    h = N(u) + gamma_k h
    mu = dt (alpha_{k+1} - alpha_k) / 2
    u = (1 - mu L)^-1 (u + dt beta_k h + mu L u)

with ``N`` the explicit and ``L`` the implicit (diagonal) part. Presets:

- ``euler_cn``   one stage: forward Euler + Crank-Nicolson (E1's scheme; order 1, linear part 2).
- ``midpoint_cn`` two stages: explicit midpoint + CN sub-steps (order 2).
- ``cn_rk4``     Carpenter-Kennedy 5-stage RK4 + CN sub-steps (jax-cfd; order 4 explicit, 2 IMEX).

Plus ``ifrk4``: Lawson's integrating-factor RK4, exact for the linear part (order 4 overall).

``extra_hat`` is an additional explicit tendency held constant over the step (a closure's
correction). Every stepper assumes the implicit operator is diagonal in Fourier space, which holds
for every spectral equation here; factors are precomputed once per ``(equation, dt)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from . import fft_backend

__all__ = ["Equation", "Stepper", "StepperSpec", "STEPPERS", "make_stepper", "stable_time_step"]


class Equation(Protocol):
    def explicit_terms(self, w_hat: torch.Tensor) -> torch.Tensor: ...
    def implicit_terms(self, w_hat: torch.Tensor) -> torch.Tensor: ...
    def implicit_solve(self, y_hat: torch.Tensor, step_size: float) -> torch.Tensor: ...


Stepper = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class StepperSpec:
    """A stepper factory with the orders it claims: explicit part alone, and with the implicit part."""

    factory: Callable[[Equation, float], Stepper]
    order_explicit: int
    order_imex: int


def low_storage_imex(alphas: list[float], betas: list[float], gammas: list[float]):
    """Factory for an IMEX low-storage RK scheme with Crank-Nicolson sub-steps (see module doc)."""
    if not (len(alphas) == len(betas) + 1 == len(gammas) + 1):
        raise ValueError("need len(alphas) == len(betas) + 1 == len(gammas) + 1")

    def factory(equation: Equation, dt: float) -> Stepper:
        # u_new = u * a_k + h * b_k with a_k = (1 + mu L) / (1 - mu L), b_k = dt beta_k / (1 - mu L).
        a, b = [], []
        for k, beta in enumerate(betas):
            mu = 0.5 * dt * (alphas[k + 1] - alphas[k])
            ones = torch.ones_like(equation.linear)
            a.append(equation.implicit_solve(ones + mu * equation.implicit_terms(ones), mu))
            b.append(equation.implicit_solve(ones * (dt * beta), mu))

        fast = fft_backend.LowStorageStep(equation, a, b, gammas)  # FFTW + numba path, CPU only

        def step(w_hat: torch.Tensor, extra_hat: torch.Tensor | None = None) -> torch.Tensor:
            if fast.applies(w_hat, extra_hat):
                return fast(w_hat, extra_hat)
            u, h = w_hat, None
            for k in range(len(betas)):
                f = equation.explicit_terms(u)
                if extra_hat is not None:
                    f = f + extra_hat
                h = f if h is None or gammas[k] == 0 else f.add_(h, alpha=gammas[k])
                u = torch.addcmul(u * a[k], h, b[k])
            return u

        return step

    return factory


def ifrk4(equation: Equation, dt: float) -> Stepper:
    """Lawson integrating-factor RK4: classic RK4 on ``v = exp(-L t) w``; exact linear part."""
    e_half = torch.exp(0.5 * dt * equation.linear)
    e_full = e_half * e_half

    def step(w_hat: torch.Tensor, extra_hat: torch.Tensor | None = None) -> torch.Tensor:
        def rhs(u: torch.Tensor) -> torch.Tensor:
            f = equation.explicit_terms(u)
            return f if extra_hat is None else f + extra_hat

        k1 = rhs(w_hat)
        k2 = rhs(e_half * (w_hat + 0.5 * dt * k1))
        k3 = rhs(e_half * w_hat + 0.5 * dt * k2)
        k4 = rhs(e_full * w_hat + dt * e_half * k3)
        return e_full * (w_hat + dt / 6 * k1) + dt / 6 * (e_half * (2 * k2 + 2 * k3) + k4)

    return step


_CK_ALPHAS = [0.0, 1432997174477 / 9575080441755, 2526269341429 / 6820363399203,
              2006345519317 / 3224310063776, 2802321613138 / 2924317926251, 1.0]
_CK_BETAS = [1432997174477 / 9575080441755, 5161836677717 / 13612068292357,
             1720146321549 / 2090206949498, 3134564353537 / 4481467310338,
             2277821191437 / 14882151754819]
_CK_GAMMAS = [0.0, -567301805773 / 1357537059087, -2404267990393 / 2016746695238,
              -3550918686646 / 2091501179385, -1275806237668 / 842570457699]

STEPPERS: dict[str, StepperSpec] = {
    "euler_cn": StepperSpec(low_storage_imex([0.0, 1.0], [1.0], [0.0]), 1, 1),
    "midpoint_cn": StepperSpec(low_storage_imex([0.0, 0.5, 1.0], [0.5, 1.0], [0.0, -0.5]), 2, 2),
    "cn_rk4": StepperSpec(low_storage_imex(_CK_ALPHAS, _CK_BETAS, _CK_GAMMAS), 4, 2),
    "ifrk4": StepperSpec(ifrk4, 4, 4),
}


def make_stepper(name: str, equation: Equation, dt: float) -> Stepper:
    """Build the stepper ``name`` for ``equation`` and time step ``dt``."""
    if name not in STEPPERS:
        raise ValueError(f"unknown stepper {name!r}; choose one of {sorted(STEPPERS)}")
    if not (dt > 0 and math.isfinite(dt)):
        raise ValueError(f"time step must be positive and finite, got dt={dt}")
    return STEPPERS[name].factory(equation, dt)


def stable_time_step(max_velocity: float, dx: float, cfl: float = 0.5,
                     nu: float = 0.0, implicit_diffusion: bool = True) -> float:
    """Largest ``dt`` with advective CFL ``max_velocity dt / dx <= cfl`` (jax-cfd's rule).

    With ``implicit_diffusion=False`` the explicit-diffusion limit ``dx^2 / (4 nu)`` also applies.
    """
    if max_velocity <= 0 or dx <= 0 or cfl <= 0:
        raise ValueError(f"need positive max_velocity, dx and cfl; got {max_velocity}, {dx}, {cfl}")
    dt = cfl * dx / max_velocity
    if not implicit_diffusion and nu > 0:
        dt = min(dt, cfl * dx**2 / (4 * nu))
    return dt
