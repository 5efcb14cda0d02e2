"""Classical reconstruction of a periodic field from scattered sensor values (the ``interp`` baselines).

- :func:`cubic_interpolate`: piecewise-cubic (Clough-Tocher) interpolation of the sensors and their
  periodic images (``scipy.interpolate.griddata``), evaluated on the grid;
- :func:`fourier_fit`: least-squares fit of the Fourier modes ``|k_x|, |k_y| <= modes`` to the
  sensors (ridge-regularised), exact for fields band-limited to those modes once there are enough
  well-placed sensors.

Values are ``(batch, sensors)``, positions ``(sensors, 2)`` in ``[0, L)``; results ``(batch, x, y)``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.interpolate import griddata

from .grid import Grid
from .observation import check_positions, grid_positions

__all__ = ["cubic_interpolate", "fourier_fit"]


def cubic_interpolate(values: torch.Tensor, positions, grid: Grid) -> torch.Tensor:
    """Clough-Tocher cubic interpolation on the grid from sensors tiled over the 3 x 3 periodic images."""
    pos = check_positions(positions, grid.length).numpy()
    if pos.shape[0] < 3:
        raise ValueError(f"cubic interpolation needs at least 3 sensors, got {pos.shape[0]}")
    L = grid.length
    shifts = np.array([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)], dtype=np.float64) * L
    tiled = (pos[None] + shifts[:, None]).reshape(-1, 2)
    x = np.arange(grid.n) * grid.dx
    X, Y = np.meshgrid(x, x, indexing="ij")
    vals = values.detach().cpu().double().numpy()
    out = [griddata(tiled, np.tile(v, 9), (X, Y), method="cubic") for v in vals]
    return torch.as_tensor(np.stack(out), device=grid.device, dtype=grid.dtype)


def _basis(points: torch.Tensor, modes: int, length: float) -> torch.Tensor:
    """Real Fourier features ``(points, features)``: 1, cos(k.x), sin(k.x) for the half-plane of
    ``|k_x|, |k_y| <= modes``."""
    ks = [(kx, ky) for kx in range(-modes, modes + 1) for ky in range(0, modes + 1) if ky > 0 or kx > 0]
    k = torch.tensor(ks, dtype=torch.float64).reshape(-1, 2) * (2 * math.pi / length)  # modes = 0: the mean only
    phase = points @ k.T
    return torch.cat([torch.ones(points.shape[0], 1, dtype=torch.float64), phase.cos(), phase.sin()], dim=1)


def fourier_fit(values: torch.Tensor, positions, grid: Grid, modes: int, ridge: float = 1e-8) -> torch.Tensor:
    """Ridge least-squares fit of the low Fourier modes to the sensors, evaluated on the grid."""
    if not 0 <= modes < grid.n // 2:
        raise ValueError(f"modes must be in [0, {grid.n // 2}), got {modes}")
    pos = check_positions(positions, grid.length)
    A = _basis(pos, modes, grid.length)  # (sensors, features)
    b = values.detach().cpu().double()
    coeffs = torch.linalg.solve(A.T @ A + ridge * torch.eye(A.shape[1], dtype=torch.float64), A.T @ b.T)
    out = (_basis(grid_positions(grid), modes, grid.length) @ coeffs).T.reshape(-1, grid.n, grid.n)
    return out.to(device=grid.device, dtype=grid.dtype)
