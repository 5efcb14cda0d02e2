"""Convolutional autoencoder for periodic fields: ``(batch, n, n) <-> (batch, n/f, n/f)`` latents.

Every convolution pads circularly (the fields are periodic), so the maps commute with shifts by
whole multiples of the compression factor ``f = 2^levels``. The encoder halves the grid ``levels``
times with stride-2 3x3 convolutions (64^2 -> 16^2 for ``levels=2``, the E1 setting), the decoder
mirrors it with a 3x3 convolution, nearest-neighbour upsampling and another 3x3 convolution per level (no checkerboard
artefacts of transposed convolutions).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["Encoder", "Decoder", "Autoencoder"]


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, padding_mode="circular")


class Encoder(nn.Module):
    """``(B, n, n) -> (B, n / 2^levels, n / 2^levels)``."""

    def __init__(self, channels: int = 16, levels: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv(1, channels), nn.GELU()]
        for _ in range(levels):
            layers += [_conv(channels, channels, stride=2), nn.GELU(), _conv(channels, channels), nn.GELU()]
        layers.append(nn.Conv2d(channels, 1, kernel_size=1))
        self.net, self.factor = nn.Sequential(*layers), 2 ** levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"Encoder expects (batch, x, y) with x, y divisible by {self.factor}, got {tuple(x.shape)}")
        return self.net(x[:, None])[:, 0]


class Decoder(nn.Module):
    """``(B, m, m) -> (B, m 2^levels, m 2^levels)``."""

    def __init__(self, channels: int = 16, levels: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv(1, channels), nn.GELU()]
        for _ in range(levels):
            layers += [_conv(channels, channels), nn.GELU(), nn.Upsample(scale_factor=2, mode="nearest"),
                       _conv(channels, channels), nn.GELU()]
        layers.append(nn.Conv2d(channels, 1, kernel_size=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 3:
            raise ValueError(f"Decoder expects (batch, x, y) latents, got {tuple(z.shape)}")
        return self.net(z[:, None])[:, 0]


class Autoencoder(nn.Module):
    """An :class:`Encoder` and its :class:`Decoder`."""

    def __init__(self, channels: int = 16, levels: int = 2) -> None:
        super().__init__()
        self.encoder, self.decoder = Encoder(channels, levels), Decoder(channels, levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
