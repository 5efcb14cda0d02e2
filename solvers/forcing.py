"""Deterministic forcings and additive Q-Wiener stochastic forcing.

Deterministic forcings return real vorticity fields ``(n, n)`` on the grid, ready for
:class:`~solvers.navier_stokes.NavierStokes2D`; :class:`QWienerNoise` draws spectral increments
``(batch, n, n//2+1)`` added once per step (Euler-Maruyama).
"""
from __future__ import annotations

import math

import torch

from .grid import Grid

__all__ = ["kolmogorov_forcing", "fno_forcing", "make_forcing", "QWienerNoise"]


def kolmogorov_forcing(grid: Grid, k_f: int = 4, amplitude: float = 1.0) -> torch.Tensor:
    """Vorticity forcing ``-A k cos(k y)`` of the velocity forcing ``(A sin(k y), 0)``, ``k = 2 pi k_f / L``.

    With ``k_f = 4``, ``A = 1`` on ``[0, 2 pi]^2`` this is the Kochkov et al. (2021) / jax-cfd flow.
    """
    _, y = grid.coordinates()
    k = 2 * math.pi * k_f / grid.length
    return -amplitude * k * torch.cos(k * y)


def fno_forcing(grid: Grid, amplitude: float = 0.1) -> torch.Tensor:
    """E1 / FNO forcing ``A (sin 2 pi (x + y) + cos 2 pi (x + y))`` (periodic for integer L)."""
    x, y = grid.coordinates()
    phase = 2 * math.pi * (x + y)
    return amplitude * (torch.sin(phase) + torch.cos(phase))


def make_forcing(grid: Grid, kind: str | None, **params: float) -> torch.Tensor | None:
    """Forcing by name: ``"kolmogorov"`` (``k_f``, ``amplitude``), ``"fno"`` (``amplitude``) or ``"none"``."""
    if kind in (None, "none"):
        if params:
            raise ValueError(f"forcing 'none' takes no parameters, got {sorted(params)}")
        return None
    builders = {"kolmogorov": kolmogorov_forcing, "fno": fno_forcing}
    if kind not in builders:
        raise ValueError(f"unknown forcing {kind!r}; choose one of {sorted(builders) + ['none']}")
    try:
        return builders[kind](grid, **params)
    except TypeError as err:
        raise ValueError(f"bad parameters for forcing {kind!r}: {err}") from err


class QWienerNoise:
    """Additive Q-Wiener noise ``sigma dW`` with covariance eigenvalues ``q_k = exp(-alpha |k|^2)``.

    ``W(t, x) = sum_k sqrt(q_k) beta_k(t) e_k(x)`` over Fourier modes with ``max(|k_x|, |k_y|) <=
    kappa`` (integer wavenumbers), ``|k|`` the angular wavenumber ``2 pi k / L``, ``e_k`` the
    Fourier basis normalised on the box and ``beta_k`` independent Brownian motions; the mean mode
    is excluded so the noise keeps the mean vorticity at zero. One step adds ``sigma dW``, where
    every real Fourier component of ``dW`` (normalised by ``L``) has variance ``q_k dt``.
    E1 uses ``alpha = 0.005``, ``kappa = 10``, ``sigma = 5e-5``.
    """

    def __init__(self, grid: Grid, alpha: float = 0.005, kappa: int = 10, sigma: float = 5e-5) -> None:
        if alpha < 0 or kappa < 1 or sigma < 0:
            raise ValueError(f"Q-Wiener needs alpha >= 0, kappa >= 1, sigma >= 0; got {alpha}, {kappa}, {sigma}")
        self.grid, self.alpha, self.kappa, self.sigma = grid, alpha, int(kappa), sigma
        kx_int = grid.kx * grid.length / (2 * math.pi)
        ky_int = grid.ky * grid.length / (2 * math.pi)
        band = (kx_int.abs() <= kappa) & (ky_int.abs() <= kappa) & (grid.k2 > 0)
        band &= (kx_int.abs() < grid.n / 2) & (ky_int.abs() < grid.n / 2)  # no Nyquist modes
        # The rfft half-plane holds each real mode once, except the ky = 0 column (and Nyquist) which
        # holds both k and -k: there the Hermitian symmetrisation by irfft halves the variance, so
        # those entries get sqrt(2) more amplitude.
        doubled = torch.ones_like(grid.k2)
        doubled[:, 0] = math.sqrt(2.0)
        # A coefficient c_k with Re, Im ~ N(0, s^2/2) gives a real field with per-mode variance s^2 / L^2.
        self.amplitude = torch.where(band, torch.exp(-0.5 * alpha * grid.k2), torch.zeros_like(grid.k2))
        self.amplitude = self.amplitude * doubled / grid.length

    def increment(self, batch: int, dt: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """``sigma dW`` over one step, spectral ``(batch, n, n//2+1)`` complex."""
        shape = (batch, *self.grid.spectral_shape)
        xi = torch.randn(shape, generator=generator, dtype=self.grid.complex_dtype, device=self.grid.device)
        return (self.sigma * math.sqrt(dt)) * self.amplitude * xi
