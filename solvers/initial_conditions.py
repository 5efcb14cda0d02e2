"""Initial vorticity fields ``(batch, n, n)``: Gaussian random field, band-limited random
velocity, Taylor-Green, and loading from ``.npy`` / project HDF5 files."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from . import spectral
from .grid import Grid

__all__ = ["gaussian_random_field", "band_limited", "taylor_green", "taylor_green_decay", "from_file"]


def gaussian_random_field(grid: Grid, batch: int = 1, alpha: float = 2.5, tau: float = 7.0,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """FNO's Gaussian random field (Li et al. 2021), E1's initial condition.

    Per-mode power ``E|w_hat_k|^2 = 2 tau^(2 alpha - 2) (|k|^2 + tau^2)^-alpha`` with ``|k|`` the
    angular wavenumber (``2 pi k`` on the unit box) and a zero mean mode: complex white noise on the
    full FFT grid scaled by ``sqrt(2) tau^(alpha - 1) (|k|^2 + tau^2)^(-alpha/2)``, real part of the
    inverse transform, exactly as FNO's data generator.
    """
    kx = torch.fft.fftfreq(grid.n, d=grid.dx, dtype=torch.float64) * 2 * math.pi
    k2 = kx[:, None] ** 2 + kx[None, :] ** 2
    scale = math.sqrt(2.0) * tau ** (alpha - 1.0) * (k2 + tau**2) ** (-alpha / 2.0)
    scale[0, 0] = 0.0
    xi = torch.randn((batch, grid.n, grid.n), generator=generator, dtype=torch.complex128) * math.sqrt(2.0)
    w = torch.fft.ifft2(scale * xi, norm="forward").real
    return w.to(device=grid.device, dtype=grid.dtype)


def band_limited(grid: Grid, batch: int = 1, k_min: float = 1.0, k_max: float = 4.0,
                 max_velocity: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random vorticity whose velocity lives in the integer shell ``k_min <= |k| L / 2 pi <= k_max``,
    scaled so that each member's largest velocity component equals ``max_velocity``."""
    shells = torch.sqrt(grid.k2) * grid.length / (2 * math.pi)
    band = ((shells >= k_min) & (shells <= k_max)).to(grid.dtype)
    shape = (batch, *grid.spectral_shape)
    xi = torch.randn(shape, generator=generator, dtype=torch.complex128).to(device=grid.device,
                                                                              dtype=grid.complex_dtype)
    w = grid.irfft(xi * band)
    u, v = spectral.velocity(w, grid)
    peak = torch.maximum(u.abs().amax(dim=(-2, -1)), v.abs().amax(dim=(-2, -1)))
    if (peak == 0).any():
        raise ValueError(f"band [{k_min}, {k_max}] holds no Fourier mode on a {grid.n}^2 grid of length {grid.length}")
    return w * (max_velocity / peak)[:, None, None]


def taylor_green(grid: Grid, k: int = 1, amplitude: float = 1.0, batch: int = 1) -> torch.Tensor:
    """Taylor-Green vorticity ``2 A k^2 sin(k x) sin(k y)`` (``k`` angular, integer ``k`` on the box)."""
    x, y = grid.coordinates()
    kk = 2 * math.pi * k / grid.length
    w = 2 * amplitude * kk**2 * torch.sin(kk * x) * torch.sin(kk * y)
    return w.expand(batch, -1, -1).clone()


def taylor_green_decay(grid: Grid, k: int, nu: float, drag: float = 0.0) -> float:
    """Exact decay rate of the Taylor-Green mode: ``w(t) = w(0) exp(-rate t)``."""
    kk = 2 * math.pi * k / grid.length
    return 2 * nu * kk**2 + drag


def from_file(path: str | Path, grid: Grid, frame: int = -1) -> torch.Tensor:
    """Vorticity ``(member, n, n)`` from a ``.npy`` array ``(x, y)`` / ``(member, x, y)`` or from a
    project HDF5 file (dataset ``vorticity`` ``(member, time, x, y)``, time index ``frame``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"initial-condition file {path} does not exist")
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ValueError(f"cannot read {path} as a .npy array: {err}") from err
        if array.ndim not in (2, 3):
            raise ValueError(f"{path} holds shape {array.shape}; expected (x, y) or (member, x, y)")
        array = array[None] if array.ndim == 2 else array
    elif path.suffix in (".h5", ".hdf5"):
        from .io import read_frame

        array = read_frame(path, frame)
    else:
        raise ValueError(f"unsupported initial-condition file {path}: use .npy or a project .h5 file")
    w = torch.as_tensor(np.asarray(array, dtype=np.float64)).to(device=grid.device, dtype=grid.dtype)
    grid.check_field(w, f"initial condition from {path}")
    return w
