"""Convolutional autoencoder for periodic fields: ``(batch, n, n) <-> (batch, n/f, n/f)`` latents, or
``(batch, latent_channels, n/f, n/f)`` with several latent channels (E1: one).

Every convolution pads circularly (the fields are periodic), so the maps commute with shifts by
whole multiples of the compression factor ``f = 2^levels``. The encoder halves the grid ``levels``
times with stride-2 3x3 convolutions (64^2 -> 16^2 for ``levels=2``, the E1 setting), the decoder
mirrors it with a 3x3 convolution, nearest-neighbour upsampling and another 3x3 convolution per level (no checkerboard
artefacts of transposed convolutions).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["Encoder", "Decoder", "Autoencoder", "latent_shape"]


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, padding_mode="circular")


def latent_shape(latent_channels: int) -> str:
    return "(batch, x, y)" if latent_channels == 1 else f"(batch, {latent_channels}, x, y)"


class Encoder(nn.Module):
    """``(B, n, n) -> (B, n / 2^levels, n / 2^levels)``, or ``(B, latent_channels, ., .)`` when > 1."""

    def __init__(self, channels: int = 16, levels: int = 2, latent_channels: int = 1) -> None:
        super().__init__()
        if latent_channels < 1:
            raise ValueError(f"latent_channels must be >= 1, got {latent_channels}")
        layers: list[nn.Module] = [_conv(1, channels), nn.GELU()]
        for _ in range(levels):
            layers += [_conv(channels, channels, stride=2), nn.GELU(), _conv(channels, channels), nn.GELU()]
        layers.append(nn.Conv2d(channels, latent_channels, kernel_size=1))
        self.net, self.factor, self.latent_channels = nn.Sequential(*layers), 2 ** levels, latent_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"Encoder expects (batch, x, y) with x, y divisible by {self.factor}, got {tuple(x.shape)}")
        z = self.net(x[:, None])
        return z[:, 0] if self.latent_channels == 1 else z


class Decoder(nn.Module):
    """``(B, m, m)`` (or ``(B, latent_channels, m, m)``) ``-> (B, m 2^levels, m 2^levels)``."""

    def __init__(self, channels: int = 16, levels: int = 2, latent_channels: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv(latent_channels, channels), nn.GELU()]
        for _ in range(levels):
            layers += [_conv(channels, channels), nn.GELU(), nn.Upsample(scale_factor=2, mode="nearest"),
                       _conv(channels, channels), nn.GELU()]
        layers.append(nn.Conv2d(channels, 1, kernel_size=1))
        self.net, self.latent_channels = nn.Sequential(*layers), latent_channels

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c = self.latent_channels
        if not (z.dim() == 3 if c == 1 else z.dim() == 4 and z.shape[1] == c):
            raise ValueError(f"Decoder expects {latent_shape(c)} latents, got {tuple(z.shape)}")
        return self.net(z[:, None] if c == 1 else z)[:, 0]


class Autoencoder(nn.Module):
    """An :class:`Encoder` and its :class:`Decoder`."""

    def __init__(self, channels: int = 16, levels: int = 2, latent_channels: int = 1) -> None:
        super().__init__()
        self.encoder = Encoder(channels, levels, latent_channels)
        self.decoder = Decoder(channels, levels, latent_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
