"""Sensors and the observation operator shared by assimilation and reconstruction plug-ins.

A sensor layout is a tensor of physical positions ``(sensors, 2)`` (``x``, ``y`` in ``[0, L)``; ``x``
runs along the field's first spatial axis). :class:`ObservationOperator` samples a batched field
``(batch, x, y)`` at those positions by evaluating its Fourier series (exact for band-limited
fields, equal to the grid values at grid points), ``(batch, x, y) -> (batch, sensors)``, and adds
additive or multiplicative Gaussian noise. It is linear, and :meth:`ObservationOperator.matrix`
gives it as a dense ``(sensors, x*y)`` matrix for Kalman-type filters.

Layouts: :func:`regular_sensors` (a ``nx x ny`` lattice, E3's 10 x 10), :func:`random_sensors`
(uniform, optionally snapped to grid points), :func:`load_sensors` (``.npy`` / ``.csv`` / ``.txt``
with two columns ``x, y``).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .grid import Grid
from .random import normal_like

__all__ = ["regular_sensors", "random_sensors", "load_sensors", "parse_sensors", "check_positions", "grid_positions",
           "ObservationOperator", "NOISE_KINDS", "sample_fields"]

NOISE_KINDS = ("additive", "multiplicative")


def check_positions(positions, length: float, source: str = "sensor positions") -> torch.Tensor:
    """``(sensors, 2)`` float64 positions inside ``[0, length)``; ``ValueError`` naming the problem otherwise."""
    p = torch.as_tensor(positions, dtype=torch.float64)
    if p.dim() != 2 or p.shape[1] != 2:
        raise ValueError(f"{source}: expected (sensors, 2) columns x, y, got shape {tuple(p.shape)}")
    if p.shape[0] == 0:
        raise ValueError(f"{source}: no sensors; give at least one position")
    if not torch.isfinite(p).all():
        raise ValueError(f"{source}: {int((~torch.isfinite(p)).any(1).sum())} position(s) are NaN or infinite")
    outside = ((p < 0) | (p >= length)).any(1)
    if outside.any():
        first = p[outside][0].tolist()
        raise ValueError(f"{source}: {int(outside.sum())} position(s) lie outside the domain [0, {length:.6g})^2, "
                         f"e.g. {first}; wrap them (x mod L) or rescale to the box length")
    return p


def grid_positions(grid: Grid, flat: torch.Tensor | None = None) -> torch.Tensor:
    """Positions ``(points, 2)`` float64 (CPU) of the grid points with flattened indices ``flat`` (row-major,
    as ``w.reshape(batch, -1)``), or of every grid point in that order."""
    index = torch.arange(grid.n * grid.n) if flat is None else torch.as_tensor(flat).cpu()
    return torch.stack([index // grid.n, index % grid.n], dim=1).to(torch.float64) * grid.dx


def regular_sensors(nx: int, ny: int, length: float, offset: tuple[float, float] = (0.5, 0.5)) -> torch.Tensor:
    """``nx * ny`` sensors at ``((i + ox) L / nx, (j + oy) L / ny)`` ``(sensors, 2)``, x-major."""
    if nx < 1 or ny < 1:
        raise ValueError(f"need nx, ny >= 1, got {nx}, {ny}")
    x = (torch.arange(nx, dtype=torch.float64) + offset[0]) * length / nx
    y = (torch.arange(ny, dtype=torch.float64) + offset[1]) * length / ny
    return check_positions(torch.cartesian_prod(x, y) % length, length)


def random_sensors(count: int, length: float, generator: torch.Generator | None = None,
                   grid: Grid | None = None) -> torch.Tensor:
    """``count`` uniform random positions ``(sensors, 2)``; with ``grid``, distinct grid points."""
    if count < 1:
        raise ValueError(f"need at least one sensor, got {count}")
    if grid is None:
        return torch.rand(count, 2, generator=generator, dtype=torch.float64) * length
    if count > grid.n ** 2:
        raise ValueError(f"{count} sensors do not fit on {grid.n}^2 grid points")
    return grid_positions(grid, torch.randperm(grid.n ** 2, generator=generator)[:count])


def load_sensors(path: str | Path, length: float) -> torch.Tensor:
    """Positions from ``.npy`` ``(sensors, 2)`` or a ``.csv`` / ``.txt`` file of ``x, y`` rows (``#`` comments)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sensor file {path} does not exist")
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif path.suffix in (".csv", ".txt"):
            array = np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None, ndmin=2)
        else:
            raise ValueError(f"unsupported sensor file {path}: use .npy, .csv or .txt with columns x, y")
    except (OSError, ValueError) as err:
        if "unsupported" in str(err):
            raise
        raise ValueError(f"cannot read sensor file {path}: {err}") from err
    return check_positions(array, length, f"sensor file {path}")


def parse_sensors(spec: str, grid: Grid, seed: int = 0) -> torch.Tensor:
    """A layout ``(sensors, 2)`` from ``regular:NXxNY``, ``random:COUNT``, ``grid:COUNT`` or a file path."""
    kind, sep, arg = str(spec).partition(":")
    layouts = "regular:NXxNY (e.g. regular:10x10), random:COUNT, grid:COUNT or a .npy/.csv/.txt file"
    if not sep or kind not in ("regular", "random", "grid"):
        if Path(spec).suffix in (".npy", ".csv", ".txt"):
            return load_sensors(spec, grid.length)
        raise ValueError(f"cannot read sensor layout {spec!r}; use {layouts}")
    try:
        if kind == "regular":
            nx, ny = (int(v) for v in arg.lower().split("x"))
            return regular_sensors(nx, ny, grid.length)
        count = int(arg)
    except ValueError:
        raise ValueError(f"cannot read sensor layout {spec!r}; use {layouts}") from None
    generator = torch.Generator().manual_seed(seed)
    return random_sensors(count, grid.length, generator, grid if kind == "grid" else None)


def _fourier_factors(p: torch.Tensor, n: int, length: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``exp(i kx x)`` ``(..., sensors, n)`` and ``weight * exp(i ky y)`` ``(..., sensors, n // 2 + 1)`` (complex128)
    for positions ``p`` ``(..., sensors, 2)``: summed against an ``rfft2(norm="forward")`` they give the
    Fourier series at ``p``."""
    scale = 2 * math.pi / length
    kx = scale * torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64, device=p.device)
    ky = scale * torch.fft.rfftfreq(n, d=1.0 / n, dtype=torch.float64, device=p.device)
    weight = torch.full_like(ky, 2.0)  # the rfft half-plane counts each ky > 0 twice ...
    weight[0] = 1.0
    weight[-1] = 1.0  # ... except ky = 0 and the Nyquist column
    p = p.to(torch.float64)
    return torch.exp(1j * p[..., :1] * kx), torch.exp(1j * p[..., 1:] * ky) * weight


def sample_fields(w: torch.Tensor, positions: torch.Tensor, length: float) -> torch.Tensor:
    """Fourier-series values ``(batch, sensors)`` of ``w`` ``(batch, x, y)`` at per-sample positions
    ``(batch, sensors, 2)`` (or one layout ``(sensors, 2)``) in a periodic box of side ``length``: the batched,
    differentiable form of :class:`ObservationOperator` (no position checks), for training on random layouts."""
    ex, ey = _fourier_factors(positions, w.shape[-1], length)
    ctype = torch.complex128 if w.dtype == torch.float64 else torch.complex64
    w_hat = torch.fft.rfft2(w, norm="forward")
    pattern = "bkl,bsk,bsl->bs" if positions.dim() == 3 else "bkl,sk,sl->bs"
    return torch.einsum(pattern, w_hat, ex.to(ctype), ey.to(ctype)).real


class ObservationOperator:
    """Samples ``(batch, x, y)`` fields at ``positions`` ``(sensors, 2)``; optional Gaussian noise.

    ``noise``: standard deviation (additive: ``y = Hw + noise * e``; multiplicative:
    ``y = Hw (1 + noise * e)``).
    """

    def __init__(self, grid: Grid, positions, noise: float = 0.0, kind: str = "additive") -> None:
        if kind not in NOISE_KINDS:
            raise ValueError(f"unknown noise kind {kind!r}; choose one of {list(NOISE_KINDS)}")
        if not (math.isfinite(noise) and noise >= 0):
            raise ValueError(f"noise must be a finite standard deviation >= 0, got {noise}")
        self.grid, self.noise, self.kind = grid, float(noise), kind
        self.positions = check_positions(positions, grid.length)
        self._ex, self._ey = _fourier_factors(self.positions.to(grid.device), grid.n, grid.length)
        self._ex, self._ey = self._ex.to(grid.complex_dtype), self._ey.to(grid.complex_dtype)

    @property
    def count(self) -> int:
        return self.positions.shape[0]

    def fraction(self) -> float:
        """Sensors per grid point (E3: 100 / 64^2 = 2.4 %)."""
        return self.count / self.grid.n ** 2

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        """Noise-free observations ``(batch, sensors)`` of ``w`` ``(batch, x, y)``."""
        self.grid.check_field(w, "observed field")
        w_hat = self.grid.rfft(w)
        return torch.einsum("bkl,sk,sl->bs", w_hat, self._ex, self._ey).real

    def observe(self, w: torch.Tensor, generator=None) -> torch.Tensor:
        """Noisy observations ``(batch, sensors)``; ``generator`` as :func:`solvers.random.normal_like`."""
        y = self(w)
        if self.noise == 0:
            return y
        e = normal_like(y, generator, std=self.noise)
        return y + e if self.kind == "additive" else y * (1 + e)

    def matrix(self) -> torch.Tensor:
        """The operator as a dense ``(sensors, x*y)`` matrix (row-major flattening of ``(x, y)``)."""
        n = self.grid.n
        x = torch.arange(n, device=self._ex.device, dtype=torch.float64) * (2 * math.pi / n)  # k x_i in grid units
        k = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64, device=x.device)
        a = self._ex.to(torch.complex128) @ torch.exp(-1j * k[:, None] * x[None, :])  # (sensors, x): sum over kx
        b = self._ey.to(torch.complex128) @ torch.exp(-1j * k[: n // 2 + 1, None] * x[None, :])  # (sensors, y)
        rows = (a[:, :, None] * b[:, None, :]).real / n**2  # Re: the rfft half-plane sum of a real field
        return rows.reshape(self.count, n * n).to(self.grid.dtype)
