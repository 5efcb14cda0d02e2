"""Periodic square grid: coordinates, rfft2 wavenumbers and the 2/3 dealiasing mask.

Layout convention used everywhere in the project:
- real fields are ``(batch, x, y)`` with grid points ``x_i = i * L / n``;
- spectral fields are ``(batch, x, y // 2 + 1)`` complex (``torch.fft.rfft2`` over the last two
  axes with ``norm="forward"``, so a Fourier coefficient is a grid-independent average and
  truncation / padding between grids needs no rescaling); names carry the suffix ``_hat``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = ["Grid", "parse_length"]

_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def parse_length(value: float | int | str) -> float:
    """Read a box length given as a number or as a string such as ``"2pi"`` / ``"2*pi"``."""
    if isinstance(value, (int, float)):
        length = float(value)
    else:
        text = str(value).strip().lower().replace("*", "").replace(" ", "")
        if text.endswith("pi"):
            factor = text[:-2] or "1"
            try:
                length = float(factor) * math.pi
            except ValueError as err:
                raise ValueError(f"cannot read box length {value!r}; use a number or e.g. '2pi'") from err
        else:
            try:
                length = float(text)
            except ValueError as err:
                raise ValueError(f"cannot read box length {value!r}; use a number or e.g. '2pi'") from err
    if not length > 0 or not math.isfinite(length):
        raise ValueError(f"box length must be a positive finite number, got {value!r}")
    return length


@dataclass(frozen=True, eq=False)
class Grid:
    """A periodic ``[0, L)^2`` grid of ``n x n`` points with precomputed spectral tensors.

    Attributes (all on ``device`` in ``dtype`` / its complex counterpart):
        kx, ky: angular wavenumbers ``2 pi k / L`` shaped ``(n, 1)`` and ``(1, n // 2 + 1)``.
        k2: ``kx^2 + ky^2`` shaped ``(n, n // 2 + 1)``.
        dealias: 2/3-rule mask ``(n, n // 2 + 1)``: keeps integer wavenumbers ``|k_i| < n / 3``
            in each direction, exactly the band whose quadratic products do not alias back.
    """

    n: int
    length: float = 2 * math.pi
    device: torch.device | str = "cpu"
    dtype: torch.dtype = torch.float64
    kx: torch.Tensor = field(init=False, repr=False)
    ky: torch.Tensor = field(init=False, repr=False)
    k2: torch.Tensor = field(init=False, repr=False)
    dealias: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 4 or self.n % 2:
            raise ValueError(f"grid size n must be an even integer >= 4, got {self.n!r}")
        if self.dtype not in _COMPLEX:
            raise ValueError(f"grid dtype must be torch.float32 or torch.float64, got {self.dtype}")
        object.__setattr__(self, "length", parse_length(self.length))
        object.__setattr__(self, "device", torch.device(self.device))
        kx_int = torch.fft.fftfreq(self.n, d=1.0 / self.n, dtype=torch.float64)
        ky_int = torch.fft.rfftfreq(self.n, d=1.0 / self.n, dtype=torch.float64)
        scale = 2 * math.pi / self.length
        keep = (kx_int.abs()[:, None] < self.n / 3) & (ky_int.abs()[None, :] < self.n / 3)
        to = dict(device=self.device, dtype=self.dtype)
        object.__setattr__(self, "kx", (scale * kx_int[:, None]).to(**to))
        object.__setattr__(self, "ky", (scale * ky_int[None, :]).to(**to))
        object.__setattr__(self, "k2", (self.kx**2 + self.ky**2))
        object.__setattr__(self, "dealias", keep.to(**to))

    @property
    def complex_dtype(self) -> torch.dtype:
        return _COMPLEX[self.dtype]

    @property
    def dx(self) -> float:
        return self.length / self.n

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.n)

    @property
    def spectral_shape(self) -> tuple[int, int]:
        return (self.n, self.n // 2 + 1)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Grid":
        """The same grid with its tensors on another device and / or dtype."""
        return Grid(self.n, self.length, device or self.device, dtype or self.dtype)

    def with_size(self, n: int) -> "Grid":
        """The same box, device and dtype at another resolution."""
        return Grid(n, self.length, self.device, self.dtype)

    def coordinates(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Meshgrid ``(x, y)`` each ``(n, n)``, with ``x`` varying along the first axis."""
        axis = torch.arange(self.n, device=self.device, dtype=self.dtype) * self.dx
        return torch.meshgrid(axis, axis, indexing="ij")

    def rfft(self, field: torch.Tensor) -> torch.Tensor:
        """``(..., n, n)`` real -> ``(..., n, n//2+1)`` complex coefficients (forward-normalised)."""
        return torch.fft.rfft2(field, norm="forward")

    def irfft(self, field_hat: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`rfft`: ``(..., n, n//2+1)`` complex -> ``(..., n, n)`` real."""
        return torch.fft.irfft2(field_hat, s=self.shape, norm="forward")

    def check_field(self, field: torch.Tensor, name: str = "field") -> None:
        """Raise ``ValueError`` naming the problem if ``field`` is not a finite ``(..., n, n)`` field."""
        if tuple(field.shape[-2:]) != self.shape:
            raise ValueError(
                f"{name} has spatial shape {tuple(field.shape[-2:])} but the grid is {self.shape}; "
                f"regrid it (solvers.filters.coarse_grain / spectral_interpolate) or run on that grid (simulate.py: --set flow.n={field.shape[-1]})"
            )
        if not torch.isfinite(field).all():
            raise ValueError(f"{name} contains NaN or Inf values; check the file or the run that produced it")
