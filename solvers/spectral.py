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
    "DEALIASING",
    "dealias_mode",
    "truncate_hat",
    "pad_hat",
    "padded_size",
    "padded_grid",
]

# Convection-term dealiasing: "2/3" (Orszag's 2/3 rule: inputs and output masked to |k_i| < n/3),
# "3/2" (Orszag's 3/2 rule: the product on a grid padded to 3n/2, every mode up to the Nyquist kept,
# alias-free), "none" (the plain pseudo-spectral product, aliased).
DEALIASING = ("2/3", "3/2", "none")


def dealias_mode(dealias: bool | str) -> str:
    """``True`` -> ``"2/3"``, ``False`` -> ``"none"``, or one of :data:`DEALIASING`."""
    mode = {True: "2/3", False: "none"}.get(dealias, dealias) if isinstance(dealias, bool) else dealias
    if mode not in DEALIASING:
        raise ValueError(f"unknown dealiasing {dealias!r}; use true (2/3 rule), false, or one of {list(DEALIASING)}")
    return mode


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


def truncate_hat(w_hat: torch.Tensor, n_out: int) -> torch.Tensor:
    """``(..., n, n//2+1)`` -> ``(..., n_out, n_out//2+1)`` keeping the integer modes ``|k_i| < min(n, n_out) / 2``:
    a spectral truncation (``n_out < n``) or a zero-padding (``n_out > n``); the smaller grid's Nyquist
    row and column are dropped. Coefficients are forward-normalised, so no rescaling."""
    h = min(n_out, w_hat.shape[-2]) // 2
    out = w_hat.new_zeros(*w_hat.shape[:-2], n_out, n_out // 2 + 1)
    out[..., :h, :h] = w_hat[..., :h, :h]
    out[..., n_out - h + 1:, :h] = w_hat[..., w_hat.shape[-2] - h + 1:, :h]
    return out


def pad_hat(w_hat: torch.Tensor, n_fine: int) -> torch.Tensor:
    """Zero-pad ``(..., n, n//2+1)`` to ``(..., n_fine, n_fine//2+1)``; the Nyquist modes are split
    evenly between ``+n/2`` and ``-n/2`` so the fine field still interpolates the coarse samples."""
    h = w_hat.shape[-2] // 2
    rows = w_hat.new_zeros(*w_hat.shape[:-2], n_fine, h + 1)
    rows[..., :h, :] = w_hat[..., :h, :]
    rows[..., n_fine - h + 1:, :] = w_hat[..., h + 1:, :]
    rows[..., h, :] = 0.5 * w_hat[..., h, :]
    rows[..., n_fine - h, :] = 0.5 * w_hat[..., h, :]
    out = w_hat.new_zeros(*w_hat.shape[:-2], n_fine, n_fine // 2 + 1)
    out[..., :h] = rows[..., :h]
    out[..., h] = 0.5 * rows[..., h]
    return out


def padded_size(n: int) -> int:
    """The 3/2 rule's grid: the smallest even size ``>= 3 n / 2``."""
    return 2 * -(-3 * n // 4)


_PADDED: dict = {}


def padded_grid(grid: Grid) -> Grid:
    """The 3/2 rule's grid for ``grid`` (same box, device and dtype), built once."""
    key = (grid.n, grid.length, str(grid.device), grid.dtype)
    if key not in _PADDED:
        _PADDED[key] = grid.with_size(padded_size(grid.n))
    return _PADDED[key]


def advection(w_hat: torch.Tensor, grid: Grid, dealias: bool | str = True) -> torch.Tensor:
    """The convection term ``u . grad w`` in Fourier space, dealiased by ``dealias`` (:func:`dealias_mode`).

    Computed in divergence form ``div(u w)`` (equal for divergence-free ``u``). The 2/3 rule masks
    inputs and output, the 3/2 rule forms the product on the padded grid and truncates it back (the
    Nyquist modes dropped): both are exact Galerkin truncations, without aliasing.
    """
    mode = dealias_mode(dealias)
    if mode == "3/2":
        fine = padded_grid(grid)
        return truncate_hat(advection(truncate_hat(w_hat, fine.n), fine, dealias=False), grid.n)
    dealias = mode == "2/3"
    if dealias:
        w_hat = w_hat * grid.dealias
    u_hat, v_hat = velocity_hat(w_hat, grid)
    w = grid.irfft(w_hat)
    uw_hat = grid.rfft(grid.irfft(u_hat) * w)
    vw_hat = grid.rfft(grid.irfft(v_hat) * w)
    adv_hat = 1j * grid.kx * uw_hat + 1j * grid.ky * vw_hat
    return adv_hat * grid.dealias if dealias else adv_hat
