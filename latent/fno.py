"""Fourier neural operator building blocks on the periodic grid (Li et al. 2021, "Fourier Neural
Operator for Parametric PDEs", eqs. 2-4).

Fields are ``(batch, channel, x, y)`` inside; :class:`FNO2d` also takes and returns ``(batch, x, y)``
when it has one input / output channel. Every layer is a function of the field only (no coordinate
channels), so the operator commutes with shifts by whole grid points on the periodic grid. The
spectral weights act on forward-normalised Fourier coefficients of the lowest ``modes`` integer
wavenumbers, which are grid-independent, so one set of weights serves every resolution with
``n >= 2 * modes`` (up to the aliasing of the pointwise nonlinearity).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SpectralConv2d", "FNOBlock", "FNO2d"]


class SpectralConv2d(nn.Module):
    """Fourier layer ``(K v)_hat(k) = R(k) v_hat(k)`` for ``|k_x| < modes``, ``0 <= k_y < modes``, else 0.

    ``R(k)`` is a learned complex ``(in, out)`` matrix per kept mode (stored as real pairs so
    optimisers, ``.to(dtype)`` and DDP see ordinary real parameters). ``(B, in, X, Y) -> (B, out, X, Y)``.
    The 2D transforms are done one axis at a time, the second only over the kept ``k_y`` columns
    (the same numbers as ``rfft2`` / ``irfft2``, about half the work at ``modes = n / 5``).
    """

    def __init__(self, in_channels: int, out_channels: int, modes: int) -> None:
        super().__init__()
        if min(in_channels, out_channels, modes) < 1:
            raise ValueError(f"channels and modes must be >= 1, got {in_channels}, {out_channels}, {modes}")
        self.in_channels, self.out_channels, self.modes = in_channels, out_channels, modes
        scale = 1.0 / (in_channels * out_channels)  # Li et al.'s initialisation
        # (k_x = 0..modes-1 then -(modes-1)..-1, k_y = 0..modes-1, in, out, re/im)
        self.weight = nn.Parameter(scale * torch.rand(2 * modes - 1, modes, in_channels, out_channels, 2))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        (b, _, n_x, n_y), m = v.shape, self.modes
        if 2 * m > min(n_x, n_y):
            raise ValueError(f"a spectral layer with modes={m} needs a grid of at least {2 * m}^2 points, "
                             f"got {n_x}x{n_y}; use fewer modes or a finer grid")
        v_hat = torch.fft.fft(torch.fft.rfft(v, dim=-1, norm="forward")[..., :m], dim=-2, norm="forward")
        low = torch.cat([v_hat[..., :m, :], v_hat[..., n_x - m + 1:, :]], dim=-2)  # (B, in, 2m-1, m)
        r = torch.view_as_complex(self.weight).flatten(0, 1)  # ((2m-1) m, in, out)
        mixed = torch.bmm(low.flatten(2).permute(2, 0, 1), r)  # ((2m-1) m, B, out): one matrix per mode
        mixed = mixed.permute(1, 2, 0).reshape(b, self.out_channels, 2 * m - 1, m)
        gap = mixed.new_zeros(b, self.out_channels, n_x - 2 * m + 1, m)
        out_hat = torch.cat([mixed[..., :m, :], gap, mixed[..., m:, :]], dim=-2)  # (B, out, X, m)
        return torch.fft.irfft(torch.fft.ifft(out_hat, dim=-2, norm="forward"), n=n_y, dim=-1, norm="forward")


class FNOBlock(nn.Module):
    """One FNO layer ``v -> sigma(K v + W v)``: spectral convolution plus a pointwise linear map."""

    def __init__(self, width: int, modes: int, activation: bool = True) -> None:
        super().__init__()
        self.spectral = SpectralConv2d(width, width, modes)
        self.pointwise = nn.Conv2d(width, width, kernel_size=1)
        self.activation = activation

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        v = self.spectral(v) + self.pointwise(v)
        return F.gelu(v) if self.activation else v


class FNO2d(nn.Module):
    """Lifting ``P`` (pointwise), ``layers`` :class:`FNOBlock` of ``width`` channels (no activation
    after the last), projection ``Q`` (pointwise two-layer MLP with ``hidden`` channels).

    ``(B, in_channels, X, Y) -> (B, out_channels, X, Y)``; with one input channel a ``(B, X, Y)``
    input is accepted, and the output is then ``(B, X, Y)`` when there is one output channel.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, modes: int = 12, width: int = 32,
                 layers: int = 4, hidden: int = 128) -> None:
        super().__init__()
        if min(width, layers, hidden) < 1:
            raise ValueError(f"width, layers and hidden must be >= 1, got {width}, {layers}, {hidden}")
        self.in_channels, self.out_channels, self.modes = in_channels, out_channels, modes
        self.lift = nn.Conv2d(in_channels, width, kernel_size=1)
        self.blocks = nn.ModuleList(FNOBlock(width, modes, activation=i < layers - 1) for i in range(layers))
        self.project = nn.Sequential(nn.Conv2d(width, hidden, kernel_size=1), nn.GELU(),
                                     nn.Conv2d(hidden, out_channels, kernel_size=1))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        squeeze = v.dim() == 3
        if squeeze and self.in_channels == 1:
            v = v.unsqueeze(1)
        if v.dim() != 4 or v.shape[1] != self.in_channels:
            raise ValueError(f"FNO2d expects (batch, {self.in_channels}, x, y)"
                             f"{' or (batch, x, y)' if self.in_channels == 1 else ''}, got {tuple(v.shape)}")
        h = self.lift(v)
        for block in self.blocks:
            h = block(h)
        out = self.project(h)
        return out.squeeze(1) if squeeze and self.out_channels == 1 else out
