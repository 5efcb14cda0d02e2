"""Periodic shifts under which a flow's statistics are invariant: data augmentation for learned models
and for snapshot bases (POD), so that a few trajectories stand for the whole symmetry orbit.

``shifts`` names the allowed directions: ``x`` or ``y`` (Kolmogorov forcing ``sin(k y)`` / ``sin(k x)``
is invariant along the other axis), ``xy`` (both; unforced or isotropic forcing), ``diagonal``
(``(s, -s)``: E1's forcing of ``x + y``), ``none``.
"""
from __future__ import annotations

import torch

__all__ = ["SHIFTS", "shift_fields", "augment_shifts"]

SHIFTS = ("none", "x", "y", "xy", "diagonal")


def shift_fields(w: torch.Tensor, shifts: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each field of ``w`` ``(batch, ..., x, y)`` rolled by its own random whole number of grid steps along
    the directions ``shifts`` allows (one of :data:`SHIFTS`; the leading ``...`` frames share the shift)."""
    if shifts not in SHIFTS:
        raise ValueError(f"unknown shifts {shifts!r}; choose one of {list(SHIFTS)}")
    if shifts == "none":
        return w
    n = w.shape[-1]
    sx, sy = torch.randint(n, (2, w.shape[0]), generator=generator).tolist()
    sx = sx if shifts != "y" else [0] * len(sx)
    sy = {"x": [0] * len(sy), "diagonal": [-s for s in sx]}.get(shifts, sy)
    return torch.stack([f.roll((a, b), (-2, -1)) for f, a, b in zip(w, sx, sy)])


def augment_shifts(snapshots: torch.Tensor, shifts: str, copies: int, seed: int = 0) -> torch.Tensor:
    """``snapshots`` ``(count, x, y)`` and ``copies - 1`` randomly shifted copies of them, ``(copies*count, x, y)``
    (reproducible: ``seed``). ``copies = 1`` or ``shifts = "none"`` returns the snapshots alone."""
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    if shifts == "none" or copies == 1:
        return snapshots
    g = torch.Generator().manual_seed(seed)
    return torch.cat([snapshots] + [shift_fields(snapshots, shifts, g) for _ in range(copies - 1)])
