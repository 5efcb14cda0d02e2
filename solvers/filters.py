"""LES filters, DNS -> LES coarse-graining and exact closure terms (physics only).

Filters act in Fourier space through a real transfer function ``G(k)`` shaped ``(n, n//2+1)``
(Pope 2000, *Turbulent Flows*, table 13.2, with ``Delta`` the filter width and ``k`` angular):

- sharp:    ``G = 1`` for integer wavenumbers ``|k_x|, |k_y| <= k_cut`` (per direction, like spectral
  truncation), else 0; a width ``Delta`` means ``k_cut = pi / Delta`` (integer ``L / (2 Delta)``);
- gaussian: ``G = exp(-Delta^2 |k|^2 / 24)``;
- box:      ``G = sinc(k_x Delta / 2) sinc(k_y Delta / 2)``, a top-hat of width ``Delta`` per direction.

Coarse-graining (DESIGN.md E2) is filter-then-truncate with ``Delta = 2 L / n_coarse``. Coefficients
are forward-normalised (:class:`~solvers.grid.Grid`), so truncation / zero-padding need no rescaling.

Exact closure terms and their sign:

- E1: ``H = -u . grad w + sigma dW/dt`` on the fine grid, subsampled; :func:`e1_closure_target` gives
  the deterministic part, the data generator adds the noise part.
- E2: ``Pi = filter(u . grad w) - u_bar . grad w_bar`` on the coarse grid, ``u_bar . grad w_bar``
  dealiased as the LES does it (the E2 presets: the 3/2 rule, every mode to the Nyquist) and ``Pi``
  not masked. The filtered DNS obeys
  ``d w_bar/dt = -u_bar . grad w_bar + nu lap w_bar - drag w_bar + f_bar - Pi``, so the exact tendency
  correction a closure plug-in should return is ``-Pi``, and the LES forces with the filtered
  ``f_bar`` (``flow.forcing.filter``): then LES + exact closure has the filtered DNS's tendency to
  round-off (tests/test_filters.py).
"""
from __future__ import annotations

import math

import torch

from . import spectral
from .grid import Grid

__all__ = [
    "sharp_transfer",
    "gaussian_transfer",
    "box_transfer",
    "apply_filter",
    "make_filter",
    "FILTERS",
    "truncate",
    "spectral_interpolate",
    "subsample",
    "coarse_grain",
    "e1_closure_target",
    "les_closure_term",
]

FILTERS = ("sharp", "gaussian", "box", "none")


def sharp_transfer(grid: Grid, k_cut: float) -> torch.Tensor:
    """Sharp spectral cut, ``(n, n//2+1)``: 1 where integer ``|k_x| <= k_cut`` and ``|k_y| <= k_cut``."""
    scale = grid.length / (2 * math.pi)
    kx, ky = (grid.kx * scale).round().abs(), (grid.ky * scale).round().abs()
    return ((kx <= k_cut) & (ky <= k_cut)).to(grid.dtype)


def gaussian_transfer(grid: Grid, width: float) -> torch.Tensor:
    """Gaussian filter ``exp(-width^2 |k|^2 / 24)``, ``(n, n//2+1)``, ``|k|`` angular."""
    return torch.exp(-(width**2) * grid.k2 / 24)


def box_transfer(grid: Grid, width: float) -> torch.Tensor:
    """Top-hat of ``width`` per direction: ``sinc(k_x width / 2) sinc(k_y width / 2)``, ``(n, n//2+1)``."""
    # torch.sinc(x) = sin(pi x) / (pi x)
    return torch.sinc(grid.kx * width / (2 * math.pi)) * torch.sinc(grid.ky * width / (2 * math.pi))


def apply_filter(w: torch.Tensor, transfer: torch.Tensor) -> torch.Tensor:
    """Filter real fields ``(..., n, n)`` by a transfer function ``(n, n//2+1)``."""
    n = w.shape[-1]
    if tuple(w.shape[-2:]) != (n, n) or tuple(transfer.shape) != (n, n // 2 + 1):
        raise ValueError(f"field {tuple(w.shape)} and transfer {tuple(transfer.shape)} do not match; "
                         f"build the transfer on the field's grid (n={n})")
    w_hat = torch.fft.rfft2(w, norm="forward")
    return torch.fft.irfft2(w_hat * transfer.to(device=w.device, dtype=w.dtype), s=(n, n), norm="forward")


def make_filter(kind: str, grid: Grid, width: float | None = None) -> torch.Tensor:
    """Transfer function ``(n, n//2+1)`` of filter ``kind`` (one of :data:`FILTERS`) of ``width``."""
    if kind not in FILTERS:
        raise ValueError(f"unknown filter {kind!r}; choose one of {list(FILTERS)}")
    if kind == "none":
        return torch.ones_like(grid.k2)
    if width is None or not (width > 0 and math.isfinite(width)):
        raise ValueError(f"filter {kind!r} needs a positive finite width, got {width!r}")
    if kind == "sharp":
        return sharp_transfer(grid, grid.length / (2 * width))
    return gaussian_transfer(grid, width) if kind == "gaussian" else box_transfer(grid, width)


def _check_even(n: int, name: str) -> None:
    if not isinstance(n, int) or n < 2 or n % 2:
        raise ValueError(f"{name} must be an even integer >= 2, got {n!r}")


def truncate(w_hat_or_w: torch.Tensor, n_coarse: int) -> torch.Tensor:
    """Spectral truncation fine -> coarse: drop modes ``|k_i| >= n_coarse / 2`` (Nyquist zeroed).

    Real ``(..., n, n)`` in -> real ``(..., n_coarse, n_coarse)`` out; complex rfft coefficients
    ``(..., n, n//2+1)`` in -> ``(..., n_coarse, n_coarse//2+1)`` out.
    """
    _check_even(n_coarse, "n_coarse")
    spectral_in = w_hat_or_w.is_complex()
    n = w_hat_or_w.shape[-2]
    if n_coarse > n:
        raise ValueError(f"cannot truncate a {n}^2 field to a finer {n_coarse}^2 grid; use spectral_interpolate")
    if not spectral_in:
        w_hat = spectral.truncate_hat(torch.fft.rfft2(w_hat_or_w, norm="forward"), n_coarse)
        return torch.fft.irfft2(w_hat, s=(n_coarse, n_coarse), norm="forward")
    return spectral.truncate_hat(w_hat_or_w, n_coarse)


def spectral_interpolate(w: torch.Tensor, n_fine: int) -> torch.Tensor:
    """Zero-padding coarse -> fine: real ``(..., n, n)`` -> ``(..., n_fine, n_fine)``.

    Exact for band-limited fields (the trigonometric interpolant); ``subsample(result, n_fine // n)``
    returns ``w`` and ``truncate(result, n)`` returns ``w`` when ``w`` has no Nyquist content.
    """
    _check_even(n_fine, "n_fine")
    n = w.shape[-1]
    if n_fine < n:
        raise ValueError(f"cannot interpolate a {n}^2 field to a coarser {n_fine}^2 grid; use truncate or coarse_grain")
    if n_fine == n:
        return w.clone()
    w_hat = spectral.pad_hat(torch.fft.rfft2(w, norm="forward"), n_fine)
    return torch.fft.irfft2(w_hat, s=(n_fine, n_fine), norm="forward")


def subsample(w: torch.Tensor, stride: int) -> torch.Tensor:
    """Every ``stride``-th point, ``(..., n, n) -> (..., n / stride, n / stride)`` (E1, no filter)."""
    n = w.shape[-1]
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    if n % stride or w.shape[-2] % stride:
        raise ValueError(f"grid size {tuple(w.shape[-2:])} is not divisible by stride {stride}; "
                         f"pick a stride that divides {n}")
    return w[..., ::stride, ::stride]


def _resolve_width(width: float | None, n_coarse: int, length: float | None) -> tuple[float | None, float]:
    """``(width, length)`` with E2's default ``Delta = 2 L / n_coarse``. With the default width the
    result does not depend on ``L`` (only ``k Delta`` enters), so ``L`` then defaults to ``2 pi``."""
    if width is None:
        box = 2 * math.pi if length is None else length
        return 2 * box / n_coarse, box
    if length is None:
        raise ValueError(f"an explicit width={width} needs the box length: pass length=L (e.g. 2*math.pi)")
    return width, length


def coarse_grain(w: torch.Tensor, n_coarse: int, filter: str = "gaussian", width: float | None = None,
                 *, length: float | None = None) -> torch.Tensor:
    """Filter then truncate: DNS ``(..., n, n)`` -> LES ``(..., n_coarse, n_coarse)`` (DESIGN.md E2).

    ``width`` defaults to ``Delta = 2 L / n_coarse``; an explicit ``width`` needs ``length`` (= L).
    """
    width, length = _resolve_width(width, n_coarse, length)
    fine = Grid(w.shape[-1], length, device=w.device, dtype=w.dtype)
    return truncate(apply_filter(w, make_filter(filter, fine, width)), n_coarse)


def e1_closure_target(w_fine: torch.Tensor, stride: int, equation_fine) -> torch.Tensor:
    """E1's closure target without noise: ``subsample(-u . grad w, stride)``, ``(..., n/stride, n/stride)``.

    ``-u . grad w`` is the fine equation's own (2/3-dealiased for E1) convection term
    ``-equation_fine.advection``; the data generator adds the ``sigma dW/dt`` part of ``H``.
    """
    grid = equation_fine.grid
    grid.check_field(w_fine, "fine vorticity")
    convection = grid.irfft(-equation_fine.advection(grid.rfft(w_fine)))
    return subsample(convection, stride)


def les_closure_term(w_fine: torch.Tensor, n_coarse: int, filter: str = "gaussian", width: float | None = None,
                     *, length: float | None = None, dealias: bool | str = True) -> torch.Tensor:
    """E2's ``Pi = filter(u . grad w) - u_bar . grad w_bar`` on the coarse grid, ``(..., n_c, n_c)``.

    ``u . grad w`` is dealiased on the fine grid, filtered and truncated to the coarse grid;
    ``w_bar = coarse_grain(w)`` and its advection are computed as the LES computes them, dealiased by
    ``dealias`` (the LES's ``flow.dealias``: ``True`` / ``"2/3"``, ``"3/2"``, see
    :func:`solvers.spectral.advection`). ``Pi`` itself is not masked, so an LES step with the closure
    ``-Pi`` and the filtered forcing (``forcing.filter``) has exactly the filtered DNS's tendency. With
    the 2/3 rule the LES has no convection at all between its 2/3 cutoff and its Nyquist and ``Pi``
    holds the whole filtered transfer there; with the 3/2 rule the LES computes the resolved modes'
    product on every mode and ``Pi`` is the subgrid term alone. A closure should return ``-Pi``.
    ``width`` defaults to ``2 L / n_coarse``; an explicit ``width`` needs ``length`` (= L).
    """
    width, length = _resolve_width(width, n_coarse, length)
    fine = Grid(w_fine.shape[-1], length, device=w_fine.device, dtype=w_fine.dtype)
    fine.check_field(w_fine, "fine vorticity")
    coarse = fine.with_size(n_coarse)
    transfer = make_filter(filter, fine, width)
    w_hat = fine.rfft(w_fine)
    filtered_adv_hat = spectral.truncate_hat(spectral.advection(w_hat, fine) * transfer, n_coarse)
    w_bar_hat = truncate(w_hat * transfer, n_coarse)
    return coarse.irfft(filtered_adv_hat - spectral.advection(w_bar_hat, coarse, dealias=dealias))
