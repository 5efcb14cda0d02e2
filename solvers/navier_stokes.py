"""2D incompressible Navier-Stokes in vorticity form, split into explicit and implicit parts.

    dw/dt = -u . grad w + f            (explicit: convection and deterministic forcing)
          + nu lap w - drag w          (implicit: diagonal in Fourier space)

The equation is a small object in the style of jax-cfd's ``spectral.equations``: it precomputes
its spectral operators once and exposes ``explicit_terms``, ``implicit_terms`` and
``implicit_solve``; time steppers (:mod:`solvers.stepping`) are built over it.
"""
from __future__ import annotations

import torch

from . import fft_backend, spectral
from .grid import Grid

__all__ = ["NavierStokes2D"]


class NavierStokes2D:
    """Vorticity equation on ``grid`` with viscosity ``nu``, linear ``drag`` and forcing.

    Args:
        grid: the periodic grid (its device and dtype are used for every operator).
        nu: kinematic viscosity (a number; :meth:`set_viscosity` also takes one per member).
        drag: linear (Rayleigh) drag coefficient ``alpha`` in ``- alpha w``.
        forcing: deterministic vorticity forcing, real ``(n, n)`` (or ``None``).
        dealias: the convection term's dealiasing: ``True`` / ``"2/3"`` (the 2/3 rule), ``"3/2"`` (padded
            product, every mode to the Nyquist kept: an LES's full resolution), ``False`` / ``"none"``.
        convection: include ``-u . grad w``; ``False`` gives E1's coarse model whose convection
            is supplied entirely by a closure.
    """

    def __init__(
        self,
        grid: Grid,
        nu: float,
        drag: float = 0.0,
        forcing: torch.Tensor | None = None,
        dealias: bool | str = True,
        convection: bool = True,
    ) -> None:
        if drag < 0:
            raise ValueError(f"drag must be >= 0, got drag={drag}")
        self.grid, self.drag, self.version = grid, float(drag), 0
        self.set_viscosity(nu)
        self.dealias, self.convection = spectral.dealias_mode(dealias), convection
        mask = grid.dealias if self.dealias == "2/3" else torch.ones_like(grid.dealias)
        self._fine = spectral.padded_grid(grid) if self.dealias == "3/2" else None  # the 3/2 rule's grid
        psi = -spectral.inverse_laplacian(grid)  # psi_hat = w_hat * psi
        ones = torch.ones_like(grid.k2)
        # w_hat -> (w, u, v) in one batched inverse transform; inputs masked for exact dealiasing.
        self._to_fields = (torch.stack([ones, 1j * grid.ky * psi, -1j * grid.kx * psi]) * mask)
        # (uw, vw)_hat -> div(u w), masked.
        self._divergence = torch.stack([1j * grid.kx * ones, 1j * grid.ky * ones]) * mask
        self._to_fields = self._to_fields.to(grid.complex_dtype)
        self._divergence = self._divergence.to(grid.complex_dtype)
        if forcing is not None:
            grid.check_field(forcing, "forcing")
            if forcing.dim() != 2:
                raise ValueError(f"forcing must be a single (n, n) field, got shape {tuple(forcing.shape)}")
            forcing = grid.rfft(forcing.to(device=grid.device, dtype=grid.dtype))
        self.forcing_hat = forcing

    def set_viscosity(self, nu: float | torch.Tensor) -> None:
        """Set ``nu``: a number, or one value per ensemble member ``(batch,)`` (parameter estimation; the
        implicit operator ``linear`` becomes ``(batch, n, n//2+1)``). Bumps ``version`` so a running
        rollout rebuilds its stepper."""
        value = torch.as_tensor(nu, dtype=torch.float64)
        if value.dim() > 1 or not torch.isfinite(value).all() or (value < 0).any():
            raise ValueError(f"viscosity must be a finite number >= 0 or one per member (batch,), got {nu}")
        k2 = self.grid.k2
        if value.dim() == 0:
            self.nu = float(value)
            self.linear = -self.nu * k2 - self.drag  # (n, n//2+1), the implicit operator
        else:
            self.nu = value.to(device=self.grid.device, dtype=self.grid.dtype)
            self.linear = -self.nu[:, None, None] * k2 - self.drag  # (batch, n, n//2+1)
        self.version += 1

    def advection(self, w_hat: torch.Tensor) -> torch.Tensor:
        """``u . grad w`` in Fourier space for ``w_hat`` ``(..., n, n//2+1)``."""
        fields_hat = w_hat.unsqueeze(-3) * self._to_fields  # (..., 3, n, n//2+1): w, u, v
        if self.dealias == "3/2":  # the product on the padded grid (FFTW when it can), truncated back
            fine = self._fine
            padded_hat = spectral.truncate_hat(fields_hat, fine.n)
            flux_hat = fft_backend.padded_flux(padded_hat, fine.n)
            if flux_hat is None:
                fields = fine.irfft(padded_hat)
                flux_hat = fine.rfft(fields[..., 1:, :, :] * fields[..., :1, :, :])
            flux_hat = spectral.truncate_hat(flux_hat, self.grid.n)
        else:
            fields = self.grid.irfft(fields_hat)
            flux_hat = self.grid.rfft(fields[..., 1:, :, :] * fields[..., :1, :, :])  # (uw, vw)
        return (flux_hat * self._divergence).sum(dim=-3)

    def explicit_terms(self, w_hat: torch.Tensor) -> torch.Tensor:
        """``-u . grad w + f`` in Fourier space."""
        if self.convection:
            if type(self).advection is NavierStokes2D.advection and fft_backend.uses_fftw(self, w_hat):
                return fft_backend.explicit_terms(self, w_hat)
            terms = -self.advection(w_hat)
            return terms if self.forcing_hat is None else terms + self.forcing_hat
        if self.forcing_hat is None:
            return torch.zeros_like(w_hat)
        return self.forcing_hat.expand_as(w_hat).clone()

    def implicit_terms(self, w_hat: torch.Tensor) -> torch.Tensor:
        """``(nu lap - drag) w`` in Fourier space."""
        return self.linear * w_hat

    def implicit_solve(self, y_hat: torch.Tensor, step_size: float) -> torch.Tensor:
        """Solve ``(1 - step_size * implicit) w = y`` for ``w``."""
        return y_hat / (1 - step_size * self.linear)
