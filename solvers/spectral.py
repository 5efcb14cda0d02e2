"""Spectral operators on a :class:`~solvers.grid.Grid`: stream function, velocity, gradients.

All functions take and return Fourier coefficients ``(..., n, n//2+1)`` (suffix ``_hat``) unless
their name says otherwise. The mean mode of the stream function is set to zero.
"""
from __future__ import annotations

import torch

from .grid import Grid

__all__ = [
    "inverse_laplacian",
    "stream_function_hat",
    "velocity_hat",
    "velocity",
    "gradient_hat",
    "laplacian_hat",
    "advection",
]


def inverse_laplacian(grid: Grid) -> torch.Tensor:
    """``-1 / |k|^2`` with the mean mode set to 0, shaped ``(n, n//2+1)`` (solves ``lap psi = f``)."""
    k2 = grid.k2.clone()
    k2[0, 0] = 1.0
    inv = -1.0 / k2
    inv[0, 0] = 0.0
    return inv


def stream_function_hat(w_hat: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Stream function ``psi`` with ``-lap psi = w``: ``psi_hat = w_hat / |k|^2``."""
    return -w_hat * inverse_laplacian(grid)


def velocity_hat(w_hat: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """Velocity ``(u, v) = (d psi/dy, -d psi/dx)`` from vorticity ``w = dv/dx - du/dy``."""
    psi_hat = stream_function_hat(w_hat, grid)
    return 1j * grid.ky * psi_hat, -1j * grid.kx * psi_hat


def velocity(w: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """Real-space velocity ``(u, v)``, each ``(..., n, n)``, from real vorticity ``(..., n, n)``."""
    u_hat, v_hat = velocity_hat(grid.rfft(w), grid)
    return grid.irfft(u_hat), grid.irfft(v_hat)


def gradient_hat(f_hat: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """``(df/dx, df/dy)`` in Fourier space."""
    return 1j * grid.kx * f_hat, 1j * grid.ky * f_hat


def laplacian_hat(f_hat: torch.Tensor, grid: Grid) -> torch.Tensor:
    """``lap f`` in Fourier space."""
    return -grid.k2 * f_hat


def advection(w_hat: torch.Tensor, grid: Grid, dealias: bool = True) -> torch.Tensor:
    """The convection term ``u . grad w`` in Fourier space, 2/3-dealiased when ``dealias``.

    Computed in divergence form ``div(u w)`` (equal for divergence-free ``u``); inputs and output
    are masked so the product is the exact Galerkin truncation (no aliasing).
    """
    if dealias:
        w_hat = w_hat * grid.dealias
    u_hat, v_hat = velocity_hat(w_hat, grid)
    w = grid.irfft(w_hat)
    uw_hat = grid.rfft(grid.irfft(u_hat) * w)
    vw_hat = grid.rfft(grid.irfft(v_hat) * w)
    adv_hat = 1j * grid.kx * uw_hat + 1j * grid.ky * vw_hat
    return adv_hat * grid.dealias if dealias else adv_hat
