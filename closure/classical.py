"""Classical eddy-viscosity closures in vorticity form: Smagorinsky, Leith, dynamic Smagorinsky.

Every model parameterises the subgrid vorticity flux ``tau = filter(u w) - u_bar w_bar`` as
``-nu_t grad w_bar`` and returns the tendency correction (``-Pi`` in :mod:`solvers.filters`)

    ``d w_bar/dt += div(nu_t grad w_bar)``,

with ``nu_t(x) >= 0``, so the correction never creates enstrophy. Products are formed on the grid
pseudo-spectrally; inputs and output are masked with the 2/3 rule (``grid.dealias``).

- ``smagorinsky``: ``nu_t = (c_s Delta)^2 |S|``, ``|S| = sqrt(2 S_ij S_ij)`` of the resolved velocity
  (Smagorinsky 1963). ``c_s = 0.17`` is Lilly's (1967) value for a Kolmogorov cascade.
- ``leith``: ``nu_t = (c_l Delta)^3 |grad w_bar|`` (Leith 1968, 1996), the 2D enstrophy-cascade analogue.
- ``dsmag``: Smagorinsky with ``c_s^2`` replaced by a coefficient ``C`` from the Germano identity
  applied to the vorticity flux (Germano et al. 1991; Lilly 1992 least squares): test filter
  ``^`` = Gaussian of width ``2 Delta``, ``L_i = (u_i w)^ - u_i^ w^``,
  ``M_i = Delta^2 [(|S| d_i w)^ - a^2 |S^| d_i w^]``, ``C = <L.M> / <M.M>`` averaged over the domain
  for each ensemble member and clipped at 0. Gaussian widths add in quadrature, so the test level
  has width ``sqrt(1 + 2^2) Delta`` and ``a^2 = 5``.

``Delta`` defaults to ``2 L / n``: the E2 filter width on this (LES) grid (DESIGN.md E2).
"""
from __future__ import annotations

import logging
import math

import torch

from solvers import spectral
from solvers.filters import gaussian_transfer
from solvers.grid import Grid

from .base import FlowState, Plugin
from .registry import register

__all__ = ["strain_rate_magnitude", "vorticity_gradient_magnitude", "eddy_diffusion", "EddyViscosityClosure",
           "Smagorinsky", "Leith", "DynamicSmagorinsky"]

logger = logging.getLogger(__name__)


def strain_rate_magnitude(w_hat: torch.Tensor, grid: Grid) -> torch.Tensor:
    """``|S| = sqrt(2 S_ij S_ij) = sqrt(4 u_x^2 + (u_y + v_x)^2)`` (real ``(..., n, n)``) from ``w_hat``."""
    u_hat, v_hat = spectral.velocity_hat(w_hat, grid)
    u_x_hat, u_y_hat = spectral.gradient_hat(u_hat, grid)
    v_x_hat = 1j * grid.kx * v_hat
    u_x, shear = grid.irfft(u_x_hat), grid.irfft(u_y_hat + v_x_hat)
    return torch.sqrt(4 * u_x**2 + shear**2)


def vorticity_gradient_magnitude(w_hat: torch.Tensor, grid: Grid) -> torch.Tensor:
    """``|grad w|`` (real ``(..., n, n)``) from ``w_hat``."""
    w_x_hat, w_y_hat = spectral.gradient_hat(w_hat, grid)
    return torch.sqrt(grid.irfft(w_x_hat) ** 2 + grid.irfft(w_y_hat) ** 2)


def eddy_diffusion(nu_t: torch.Tensor, w_hat: torch.Tensor, grid: Grid) -> torch.Tensor:
    """``div(nu_t grad w)`` in Fourier space, ``(..., n, n//2+1)``; ``w`` and the result 2/3-masked."""
    w_hat = w_hat * grid.dealias
    flux_hat = [grid.rfft(nu_t * grid.irfft(g)) for g in spectral.gradient_hat(w_hat, grid)]
    return (1j * grid.kx * flux_hat[0] + 1j * grid.ky * flux_hat[1]) * grid.dealias


def _check_nonnegative(**values: float) -> None:
    for name, value in values.items():
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


class EddyViscosityClosure(Plugin):
    """Base for ``div(nu_t grad w)`` closures; subclasses define :meth:`eddy_viscosity`.

    ``delta``: the filter width ``Delta``; ``None`` means ``2 L / n`` (E2's width on this grid).
    """

    kind = "tendency"

    def __init__(self, grid: Grid, equation, *, delta: float | None = None) -> None:
        super().__init__(grid, equation)
        self.delta = 2 * grid.length / grid.n if delta is None else float(delta)
        if not self.delta > 0:
            raise ValueError(f"filter width delta must be > 0, got {delta!r}; leave it unset for 2 L / n")

    def eddy_viscosity(self, w_hat: torch.Tensor) -> torch.Tensor:
        """``nu_t`` ``(batch, n, n)`` from the (already 2/3-masked) vorticity ``w_hat``."""
        raise NotImplementedError

    def __call__(self, state: FlowState) -> torch.Tensor:
        w_hat = self.grid.rfft(state.w) * self.grid.dealias
        correction = self.grid.irfft(eddy_diffusion(self.eddy_viscosity(w_hat), w_hat, self.grid))
        return correction.to(state.w.dtype)


@register("smagorinsky")
class Smagorinsky(EddyViscosityClosure):
    """Smagorinsky: ``nu_t = (cs Delta)^2 |S|``; ``cs = 0.17`` (Lilly 1967)."""

    def __init__(self, grid: Grid, equation, *, cs: float = 0.17, delta: float | None = None) -> None:
        super().__init__(grid, equation, delta=delta)
        _check_nonnegative(cs=cs)
        self.cs = float(cs)

    def eddy_viscosity(self, w_hat: torch.Tensor) -> torch.Tensor:
        return (self.cs * self.delta) ** 2 * strain_rate_magnitude(w_hat, self.grid)


@register("leith")
class Leith(EddyViscosityClosure):
    """Leith: ``nu_t = (cl Delta)^3 |grad w|``.

    ``cl = 0.2``: Lilly's argument for the 2D enstrophy cascade ``E(k) = C' eta^(2/3) k^-3`` cut at
    ``k_c = pi / Delta`` (eddy enstrophy dissipation = cascade rate ``eta``) gives
    ``cl = 1 / (pi sqrt(C'))``, i.e. 0.20-0.27 for Kraichnan constants ``C' = 1.4-2.5``; the lower
    end is chosen since a larger ``cl`` over-damps the resolved band (the same derivation in 3D
    gives Lilly's ``cs = 0.17``).
    """

    def __init__(self, grid: Grid, equation, *, cl: float = 0.2, delta: float | None = None) -> None:
        super().__init__(grid, equation, delta=delta)
        _check_nonnegative(cl=cl)
        self.cl = float(cl)

    def eddy_viscosity(self, w_hat: torch.Tensor) -> torch.Tensor:
        return (self.cl * self.delta) ** 3 * vorticity_gradient_magnitude(w_hat, self.grid)


@register("dsmag")
class DynamicSmagorinsky(EddyViscosityClosure):
    """Dynamic Smagorinsky: ``nu_t = C Delta^2 |S|`` with ``C >= 0`` per member from the Germano
    identity (module doc); ``test_ratio`` is the test-filter width over ``Delta`` (2)."""

    def __init__(self, grid: Grid, equation, *, delta: float | None = None, test_ratio: float = 2.0) -> None:
        super().__init__(grid, equation, delta=delta)
        if not test_ratio > 0:
            raise ValueError(f"test_ratio must be > 0, got {test_ratio!r}")
        self.test_ratio = float(test_ratio)
        self.test_filter = gaussian_transfer(grid, self.test_ratio * self.delta)
        self.level_ratio_sq = 1.0 + self.test_ratio**2  # (test-level width / Delta)^2, Gaussian widths

    def _product_hat(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """2/3-masked spectrum of the real product ``a b``."""
        return self.grid.rfft(a * b) * self.grid.dealias

    def germano_terms(self, w_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L, M)``, each real ``(batch, 2, n, n)`` (components ``x, y``), for the masked ``w_hat``."""
        g, hat, irfft = self.grid, self.test_filter, self.grid.irfft
        w_hat = w_hat * g.dealias
        w, w_test_hat = irfft(w_hat), hat * w_hat
        w_test = irfft(w_test_hat)
        strain, strain_test = strain_rate_magnitude(w_hat, g), strain_rate_magnitude(w_test_hat, g)
        leonard, model = [], []
        for vel_hat, grad_hat, grad_test_hat in zip(spectral.velocity_hat(w_hat, g), spectral.gradient_hat(w_hat, g),
                                                    spectral.gradient_hat(w_test_hat, g)):
            flux = hat * self._product_hat(irfft(vel_hat), w) - self._product_hat(irfft(hat * vel_hat), w_test)
            leonard.append(irfft(flux))
            m_hat = (hat * self._product_hat(strain, irfft(grad_hat))
                     - self.level_ratio_sq * self._product_hat(strain_test, irfft(grad_test_hat)))
            model.append(self.delta**2 * irfft(m_hat))
        return torch.stack(leonard, dim=-3), torch.stack(model, dim=-3)

    def coefficient(self, w_hat: torch.Tensor, clip: bool = True) -> torch.Tensor:
        """``C = <L.M> / <M.M>`` per member, shape ``(batch,)``; 0 where ``M`` vanishes, ``>= 0`` if ``clip``."""
        leonard, model = self.germano_terms(w_hat)
        lm = (leonard * model).sum(dim=-3).mean(dim=(-2, -1))
        mm = (model * model).sum(dim=-3).mean(dim=(-2, -1))
        safe = mm > torch.finfo(mm.dtype).tiny
        c = torch.where(safe, lm / torch.where(safe, mm, torch.ones_like(mm)), torch.zeros_like(mm))
        logger.debug("dsmag coefficient (unclipped): %s", c.tolist())
        return c.clamp(min=0.0) if clip else c

    def eddy_viscosity(self, w_hat: torch.Tensor) -> torch.Tensor:
        c = self.coefficient(w_hat)
        return c[..., None, None] * self.delta**2 * strain_rate_magnitude(w_hat, self.grid)
