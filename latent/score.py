"""Conditional score network: two FNO branches, merged (the architecture of DESIGN.md E1).

Branch A lifts the noisy field ``x`` and adds a noise-level embedding (Gaussian Fourier features of
``log sigma(t)``, Tancik et al. / Song et al.) after every Fourier layer; branch B lifts the
condition ``c``. The two feature maps are concatenated and a pointwise MLP (1x1 convolutions) maps
them to one output channel. ``(batch, x, y)`` fields in and out; the same network serves latent
16^2 fields (L-CDM) and physical 64^2 fields (P-CDM). The caller divides the output by ``sigma(t)``
to obtain a score (:class:`latent.cdm.ConditionalDiffusion`), so the raw output is O(1) at every
noise level.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .fno import FNOBlock

__all__ = ["FourierEmbedding", "ConditionalScoreNet"]


class FourierEmbedding(nn.Module):
    """``(batch,) -> (batch, dim)``: ``[sin(2 pi w s), cos(2 pi w s)]`` with fixed random ``w``."""

    def __init__(self, dim: int, scale: float = 4.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"embedding dim must be even and >= 2, got {dim}")
        self.register_buffer("freqs", torch.randn(dim // 2) * scale)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        arg = 2 * math.pi * s[:, None] * self.freqs[None, :]
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class _Branch(nn.Module):
    """Lifting + ``layers`` FNO blocks, with an optional per-layer channel bias from an embedding."""

    def __init__(self, modes: int, width: int, layers: int, embed: int | None) -> None:
        super().__init__()
        self.lift = nn.Conv2d(1, width, kernel_size=1)
        self.blocks = nn.ModuleList(FNOBlock(width, modes) for _ in range(layers))
        self.film = None if embed is None else nn.ModuleList(nn.Linear(embed, width) for _ in range(layers))

    def forward(self, v: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.lift(v[:, None])
        for i, block in enumerate(self.blocks):
            h = block(h)
            if self.film is not None:
                h = h + self.film[i](emb)[:, :, None, None]
        return h


class ConditionalScoreNet(nn.Module):
    """``net(x, log_sigma, c) -> (batch, x, y)``, x and c of equal shape ``(batch, x, y)``."""

    def __init__(self, modes: int = 4, width: int = 20, layers: int = 4, hidden: int = 64, embed: int = 32) -> None:
        super().__init__()
        self.embed = nn.Sequential(FourierEmbedding(embed), nn.Linear(embed, embed), nn.GELU())
        self.noisy = _Branch(modes, width, layers, embed)
        self.cond = _Branch(modes, width, layers, None)
        self.merge = nn.Sequential(nn.Conv2d(2 * width, hidden, kernel_size=1), nn.GELU(),
                                   nn.Conv2d(hidden, 1, kernel_size=1))

    def forward(self, x: torch.Tensor, log_sigma: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or c.shape != x.shape or log_sigma.shape != x.shape[:1]:
            raise ValueError(f"ConditionalScoreNet expects x and c (batch, x, y) of one shape and log_sigma "
                             f"(batch,), got {tuple(x.shape)}, {tuple(c.shape)}, {tuple(log_sigma.shape)}")
        emb = self.embed(log_sigma / 4)
        h = torch.cat([self.noisy(x, emb), self.cond(c)], dim=1)
        return self.merge(F.gelu(h))[:, 0]
