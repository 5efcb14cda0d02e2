"""Flow diagnostics: energy, enstrophy, energy spectrum and cospectra, vorticity PDF, CFL number, errors.

Real fields are ``(..., x, y)``; reductions are over the last two axes, so a batch or an
ensemble gives one value per member.
"""
from __future__ import annotations

import torch

from . import spectral
from .grid import Grid

__all__ = [
    "energy",
    "enstrophy",
    "energy_spectrum",
    "cospectrum",
    "vorticity_pdf",
    "max_velocity",
    "cfl_number",
    "rel_l2",
    "correlation",
    "ens_mean_rel_l2",
    "spread",
]


def _half_plane_weight(grid: Grid, device) -> torch.Tensor:
    """``(n, n//2+1)`` weights of the rfft half-plane: 2 for modes whose conjugate is not stored, 1 for the
    self-conjugate columns (0 and, for even ``n``, the Nyquist)."""
    weight = torch.full(grid.spectral_shape, 2.0, dtype=grid.dtype, device=device)
    weight[:, 0] = 1.0
    if grid.n % 2 == 0:
        weight[:, -1] = 1.0
    return weight


def _parseval(f_hat: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Mean of ``|f|^2`` over the box from rfft coefficients ``(..., n, n//2+1)`` (Parseval)."""
    return (_half_plane_weight(grid, f_hat.device) * f_hat.abs() ** 2).sum(dim=(-2, -1))


def energy(w: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Kinetic energy per unit area ``<|u|^2> / 2``, shape ``(...)``."""
    u_hat, v_hat = spectral.velocity_hat(grid.rfft(w), grid)
    return 0.5 * (_parseval(u_hat, grid) + _parseval(v_hat, grid))


def enstrophy(w: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Enstrophy per unit area ``<w^2> / 2``, shape ``(...)``."""
    return 0.5 * (w**2).mean(dim=(-2, -1))


def energy_spectrum(w: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """Shell-summed energy spectrum ``E(k)`` over integer shells ``k = round(|k| L / 2 pi)``.

    Returns ``(k, E)`` with ``k`` ``(n//2+1,)`` integer shells and ``E`` ``(..., n//2+1)`` such that
    ``E.sum(-1)`` equals :func:`energy` (modes beyond the last shell are folded into it).
    """
    u_hat, v_hat = spectral.velocity_hat(grid.rfft(w), grid)
    return _shell_sum(0.5 * (u_hat.abs() ** 2 + v_hat.abs() ** 2), grid)


def cospectrum(a: torch.Tensor, b: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """Shell sums ``C(k)`` of ``Re(a_hat conj(b_hat))`` for real fields ``(..., x, y)``: ``C.sum(-1)`` is the
    box mean ``<a b>``. With ``a`` a closure tendency and ``b`` the vorticity, ``C(k)`` is the enstrophy the
    closure puts into shell ``k`` (negative: it drains there)."""
    return _shell_sum((grid.rfft(a) * grid.rfft(b).conj()).real, grid)


def _shell_sum(density: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """``(k, S)``: ``density`` ``(..., n, n//2+1)`` on the rfft half-plane, weighted for the missing
    conjugate half, summed over integer shells ``(n//2+1,)`` (modes past the last shell fold into it)."""
    density = _half_plane_weight(grid, density.device) * density
    kmag = torch.sqrt(grid.k2) * grid.length / (2 * torch.pi)
    n_shells = grid.n // 2 + 1
    shell = torch.round(kmag).long().clamp(max=n_shells - 1).reshape(-1)
    flat = density.reshape(*density.shape[:-2], -1)
    spectrum = torch.zeros(*flat.shape[:-1], n_shells, dtype=flat.dtype, device=density.device)
    spectrum.index_add_(-1, shell, flat)
    k = torch.arange(n_shells, device=density.device)
    return k, spectrum


def vorticity_pdf(
    w: torch.Tensor, bins: int = 101, value_range: tuple[float, float] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised histogram of all vorticity values in ``w``: ``(bin_centres, density)``."""
    values = w.detach().reshape(-1).to(torch.float64).cpu()
    lo, hi = value_range if value_range is not None else (values.min().item(), values.max().item())
    if hi <= lo:
        hi = lo + 1.0
    density = torch.histc(values, bins=bins, min=lo, max=hi)
    width = (hi - lo) / bins
    density = density / (density.sum() * width)
    centres = lo + width * (torch.arange(bins, dtype=torch.float64) + 0.5)
    return centres, density


def max_velocity(w: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Largest speed component ``max(|u|, |v|)`` per member, shape ``(...)``."""
    u, v = spectral.velocity(w, grid)
    return torch.maximum(u.abs().amax(dim=(-2, -1)), v.abs().amax(dim=(-2, -1)))


def cfl_number(w: torch.Tensor, grid: Grid, dt: float) -> torch.Tensor:
    """Advective CFL number ``(|u|_max + |v|_max) dt / dx`` per member, shape ``(...)``."""
    u, v = spectral.velocity(w, grid)
    speed = u.abs().amax(dim=(-2, -1)) + v.abs().amax(dim=(-2, -1))
    return speed * dt / grid.dx


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``||a - b|| / ||b||`` per sample over the last two axes, averaged over all leading axes."""
    num = torch.linalg.vector_norm(a - b, dim=(-2, -1))
    den = torch.linalg.vector_norm(b, dim=(-2, -1))
    return (num / den).mean()


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of all values of ``a`` and ``b`` (same shape), in float64; 0 if either is constant."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    norms = float(a.norm() * b.norm())
    return float((a * b).sum()) / norms if norms > 0 else 0.0


def ens_mean_rel_l2(members: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """``rel_l2`` of the ensemble mean: ``members`` ``(member, ..., x, y)``, ``truth`` ``(..., x, y)``."""
    return rel_l2(members.mean(dim=0), truth)


def spread(members: torch.Tensor) -> torch.Tensor:
    """RMS deviation of the members about their mean, ``members`` ``(member, ..., x, y)``."""
    return torch.sqrt(((members - members.mean(dim=0)) ** 2).mean())
