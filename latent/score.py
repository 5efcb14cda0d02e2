"""Conditional score network: two FNO branches, merged (the architecture of DESIGN.md E1).

Branch A lifts the noisy field ``x`` and adds a noise-level embedding (Gaussian Fourier features of
``log sigma(t)``, Tancik et al. / Song et al.) after every Fourier layer; branch B lifts the
condition ``c``. The two feature maps are concatenated and a pointwise MLP (1x1 convolutions) maps
them to ``channels`` output channels. ``(batch, x, y)`` fields in and out (``(batch, channels, x, y)``
and ``(batch, cond_channels, x, y)`` with several channels); the same network serves latent 16^2
fields (L-CDM, one or more latent channels) and physical 64^2 fields (P-CDM). The caller divides the output by ``sigma(t)``
to obtain a score (:class:`latent.cdm.ConditionalDiffusion`), so the raw output is O(1) at every
noise level.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .autoencoder import latent_shape
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

    def __init__(self, modes: int, width: int, layers: int, embed: int | None, channels: int = 1) -> None:
        super().__init__()
        self.lift = nn.Conv2d(channels, width, kernel_size=1)
        self.blocks = nn.ModuleList(FNOBlock(width, modes) for _ in range(layers))
        self.film = None if embed is None else nn.ModuleList(nn.Linear(embed, width) for _ in range(layers))

    def forward(self, v: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.lift(v)
        for i, block in enumerate(self.blocks):
            h = block(h)
            if self.film is not None:
                h = h + self.film[i](emb)[:, :, None, None]
        return h


def _channels_first(v: torch.Tensor, channels: int) -> torch.Tensor | None:
    """``(B, C, X, Y)`` from ``(B, X, Y)`` (one channel) or ``(B, C, X, Y)``; ``None`` if neither."""
    if channels == 1 and v.dim() == 3:
        return v[:, None]
    return v if v.dim() == 4 and v.shape[1] == channels else None


class ConditionalScoreNet(nn.Module):
    """``net(x, log_sigma, c)`` of the shape of ``x``: ``(batch, x, y)`` or ``(batch, channels, x, y)``,
    ``c`` on the same grid with ``cond_channels``."""

    def __init__(self, modes: int = 4, width: int = 20, layers: int = 4, hidden: int = 64, embed: int = 32,
                 channels: int = 1, cond_channels: int = 1) -> None:
        super().__init__()
        self.channels, self.cond_channels = channels, cond_channels
        self.embed = nn.Sequential(FourierEmbedding(embed), nn.Linear(embed, embed), nn.GELU())
        self.noisy = _Branch(modes, width, layers, embed, channels)
        self.cond = _Branch(modes, width, layers, None, cond_channels)
        self.merge = nn.Sequential(nn.Conv2d(2 * width, hidden, kernel_size=1), nn.GELU(),
                                   nn.Conv2d(hidden, channels, kernel_size=1))

    def forward(self, x: torch.Tensor, log_sigma: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x4, c4 = _channels_first(x, self.channels), _channels_first(c, self.cond_channels)
        if x4 is None or c4 is None or x4.shape[-2:] != c4.shape[-2:] or log_sigma.shape != x.shape[:1] \
                or c4.shape[0] != x4.shape[0]:
            raise ValueError(f"ConditionalScoreNet expects x {latent_shape(self.channels)} and c {latent_shape(self.cond_channels)} "
                             f"on one grid and log_sigma (batch,), got {tuple(x.shape)}, {tuple(c.shape)}, "
                             f"{tuple(log_sigma.shape)}")
        emb = self.embed(log_sigma / 4)
        h = torch.cat([self.noisy(x4, emb), self.cond(c4)], dim=1)
        out = self.merge(F.gelu(h))
        return out.reshape(x.shape)

