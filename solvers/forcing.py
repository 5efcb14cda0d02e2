"""Deterministic forcings and additive Q-Wiener stochastic forcing.

Deterministic forcings return real vorticity fields ``(n, n)`` on the grid, ready for
:class:`~solvers.navier_stokes.NavierStokes2D`; :class:`QWienerNoise` draws spectral increments
``(batch, n, n//2+1)`` added once per step (Euler-Maruyama).
"""
from __future__ import annotations

import math

import torch

from .filters import apply_filter, make_filter
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


def make_forcing(grid: Grid, kind: str | None, *, filter: str = "none", filter_width: float | None = None,
                 **params: float) -> torch.Tensor | None:
    """Forcing by name: ``"kolmogorov"`` (``k_f``, ``amplitude``), ``"fno"`` (``amplitude``) or ``"none"``.

    ``filter`` (one of :data:`solvers.filters.FILTERS`): the forcing as an LES on ``grid`` sees it,
    ``f_bar``, filtered with ``filter_width`` (default ``2 L / n``, the E2 coarse-graining width); an LES
    compared with filtered DNS needs it (at 32^2, the Gaussian filter scales E2's ``k_f = 4`` forcing by
    0.90).
    """
    if filter != "none":
        force = make_forcing(grid, kind, **params)
        width = 2 * grid.length / grid.n if filter_width is None else filter_width
        return None if force is None else apply_filter(force, make_filter(filter, grid, width))
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
        self.band_index, self._band_keep = self._band_layout()
        self._band_amplitude = self.amplitude.flatten()[self.band_index]

    def _band_layout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the ``(2 kappa + 1, kappa + 1)`` block of integer modes ``(k_x, k_y)``, ``|k_x| <= kappa``,
        ``0 <= k_y <= kappa``, lies in the flattened rfft layout, and which of its entries the grid holds."""
        n, m = self.grid.spectral_shape
        kx = torch.arange(-self.kappa, self.kappa + 1)[:, None].expand(-1, self.kappa + 1)
        ky = torch.arange(self.kappa + 1)[None, :].expand(2 * self.kappa + 1, -1)
        keep = ((kx.abs() < n / 2) & (ky < n / 2)).flatten()
        index = ((kx % n) * m + ky).flatten()[keep]
        return index.to(self.grid.device), keep.to(self.grid.device)

    def band_increment(self, dt: float, generator) -> torch.Tensor:
        """``sigma dW`` on the noise band only: ``(members, len(band_index))`` complex, the values at
        :attr:`band_index` of the flattened ``(n, n//2+1)`` layout (zero everywhere else).

        Each member draws its ``(2 kappa + 1, kappa + 1)`` block of integer modes from its own stream of
        the :class:`~solvers.random.MemberRNG` ``generator``, so its noise is the same whatever its
        batch, process or grid size (modes the grid cannot hold are dropped). Adding it in place,
        ``w_hat.view(b, -1)[:, band_index] += band``, touches only the band.
        """
        block = generator.randn((2 * self.kappa + 1, self.kappa + 1), self.grid.complex_dtype)
        values = block.reshape(len(generator), -1)[:, self._band_keep.to(block.device)].to(self.grid.device)
        return (self.sigma * math.sqrt(dt)) * self._band_amplitude * values

    def scatter(self, band: torch.Tensor) -> torch.Tensor:
        """Band values ``(batch, len(band_index))`` -> spectral field ``(batch, n, n//2+1)``."""
        full = torch.zeros((band.shape[0], self.grid.n * (self.grid.n // 2 + 1)), dtype=band.dtype, device=band.device)
        full[:, self.band_index] = band
        return full.reshape(band.shape[0], *self.grid.spectral_shape)

    def add_to(self, w_hat: torch.Tensor, dt: float, generator=None) -> torch.Tensor:
        """``w_hat + sigma dW`` for ``w_hat`` ``(batch, n, n//2+1)``; with a
        :class:`~solvers.random.MemberRNG` only the noise band is touched, in place (no full-size
        increment is built), else the full increment of :meth:`increment` is added."""
        from .random import MemberRNG

        if isinstance(generator, MemberRNG) and w_hat.is_contiguous():
            if len(generator) != w_hat.shape[0]:
                raise ValueError(f"the MemberRNG holds {len(generator)} members but the batch has {w_hat.shape[0]}; "
                                 f"build it with one member per batch row")
            w_hat.view(w_hat.shape[0], -1)[:, self.band_index] += self.band_increment(dt, generator)
            return w_hat
        return w_hat + self.increment(w_hat.shape[0], dt, generator)

    def increment(self, batch: int, dt: float, generator=None) -> torch.Tensor:
        """``sigma dW`` over one step, spectral ``(batch, n, n//2+1)`` complex.

        ``generator``: a ``torch.Generator`` (or ``None``) draws the whole batch at once; a
        :class:`~solvers.random.MemberRNG` gives each member its own stream (:meth:`band_increment`).
        """
        from .random import MemberRNG

        if isinstance(generator, MemberRNG):
            if len(generator) != batch:
                raise ValueError(f"the MemberRNG holds {len(generator)} members but the batch has {batch}; "
                                 f"build it with one member per batch row")
            return self.scatter(self.band_increment(dt, generator))
        shape = (batch, *self.grid.spectral_shape)
        xi = torch.randn(shape, generator=generator, dtype=self.grid.complex_dtype, device=self.grid.device)
        return (self.sigma * math.sqrt(dt)) * self.amplitude * xi
