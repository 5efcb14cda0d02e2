"""Latent ODE ``dz/dt = f(z, p)`` and its fixed-step RK4 integrator (LD-EnSF's latent dynamics, seed 003).

    f = LatentVectorField(latent=32, params=1)
    z1 = rk4(f, z0, p, dt=0.2, substeps=4)      # (batch, latent), p (batch, params)

Why the project's own classical RK4 and not torchdiffeq: the latent ensemble is advanced over one
fixed analysis interval at a time, with every member and the training windows on the same time
grid, so a fixed step (cost known in advance, bit-reproducible, differentiable by plain autograd) is
what the filter needs; adaptive steps would make members of one ensemble cost differently and make
training depend on the tolerance. The field is trained *through* this integrator, so its truncation
error is part of the learned model, as in LDNet. Convergence order 4 is tested on a linear ODE.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["rk4", "LatentVectorField"]

VectorField = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def rk4(f: VectorField, z: torch.Tensor, p: torch.Tensor, dt: float, substeps: int = 1) -> torch.Tensor:
    """``z(t + dt)`` ``(batch, latent)`` from ``z(t)`` by ``substeps`` classical RK4 steps of
    ``dz/dt = f(z, p)`` with constant parameters ``p`` ``(batch, params)``."""
    if substeps < 1:
        raise ValueError(f"need substeps >= 1, got {substeps}")
    h = dt / substeps
    for _ in range(substeps):
        k1 = f(z, p)
        k2 = f(z + 0.5 * h * k1, p)
        k3 = f(z + 0.5 * h * k2, p)
        k4 = f(z + h * k3, p)
        z = z + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
    return z


class LatentVectorField(nn.Module):
    """``f(z, p)``: an MLP of the latent state and the (normalised) physical parameters, LDNet's
    ``ds/dt = f([params, s])``; ``(batch, latent), (batch, params) -> (batch, latent)``."""

    def __init__(self, latent: int, params: int = 1, hidden: int = 128, layers: int = 2) -> None:
        super().__init__()
        dims = [latent + params] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b), nn.GELU()]
        self.net = nn.Sequential(*blocks, nn.Linear(dims[-1], latent))

    def forward(self, z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, p], dim=-1))
