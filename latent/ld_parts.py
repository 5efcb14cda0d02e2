"""The parts of the ``ld_ensf`` model (:mod:`latent.ld_model`): a periodic CNN encoder, a band-limited spectral
decoder that answers any coordinate, and the LSTM observation encoder.

    encoder = PeriodicEncoder(latent=512, width=32, n=64, linear=True)    # (batch, x, y) -> (batch, latent)
    decoder = SpectralDecoder(latent=512, modes=21, hidden=512, linear=True)  # (batch, latent) -> (batch, n, n)
    observer = ObservationEncoder(sensors=100, outputs=513)              # (batch, time, sensors) -> mean, var

``linear``: a fixed linear path beside the nonlinear one (a POD once ``init_linear`` has set it), the nonlinear
path starting at zero.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PeriodicEncoder", "SpectralDecoder", "ObservationEncoder"]


class PeriodicEncoder(nn.Module):
    """``(batch, x, y) -> (batch, latent)``: stride-2 circular convolutions down to 4 x 4, then linear.
    ``linear``: plus a fixed linear map of the whole field (buffers: a POD projection once :meth:`init_linear`
    has set it), with the convolutional path starting at zero."""

    def __init__(self, latent: int, width: int = 16, n: int = 64, linear: bool = False) -> None:
        super().__init__()
        layers, channels = [], 1
        for i in range(max(1, int(math.log2(n // 4)))):
            out = width * min(2 ** i, 4)
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, padding_mode="circular"), nn.GELU()]
            channels = out
        self.convs = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4))
        self.head = nn.Linear(channels * 16, latent)
        self.linear = bool(linear)
        if linear:
            self.register_buffer("linear_weight", torch.zeros(latent, n * n))
            self.register_buffer("linear_bias", torch.zeros(latent))
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @torch.no_grad()
    def init_linear(self, mean: torch.Tensor, rows: torch.Tensor) -> None:
        """The linear path as ``z = rows (w - mean)``: ``mean`` ``(x*y,)``, ``rows`` ``(latent, x*y)``."""
        self.linear_weight.copy_(rows)
        self.linear_bias.copy_(-rows @ mean)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        z = self.head(self.convs(w[:, None]).flatten(1))
        return z + F.linear(w.flatten(1), self.linear_weight, self.linear_bias) if self.linear else z


class SpectralDecoder(nn.Module):
    """``(batch, latent) -> (batch, n, n)``: an MLP gives the Fourier coefficients (real, imaginary) of
    ``|k_x|, |k_y| <= modes``, placed in an rfft array and inverted (``norm="forward"``: the
    coefficients are the amplitudes). ``linear``: plus a fixed linear map of ``z`` to the same coefficients
    (buffers: POD modes once :meth:`init_linear` has set them), with the MLP's output starting at zero."""

    def __init__(self, latent: int, modes: int = 16, hidden: int = 256, linear: bool = False) -> None:
        super().__init__()
        self.modes = modes
        self.shape = (2 * modes + 1, modes + 1)
        size = 2 * self.shape[0] * self.shape[1]
        self.net = nn.Sequential(nn.Linear(latent, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, size))
        self.linear = bool(linear)
        if linear:
            self.register_buffer("linear_weight", torch.zeros(size, latent))
            self.register_buffer("linear_bias", torch.zeros(size))
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def coefficients(self, w: torch.Tensor) -> torch.Tensor:
        """The decoder's output layout ``(batch, 2 (2 modes + 1) (modes + 1))`` of fields ``(batch, x, y)``: their
        ``|k_x|, |k_y| <= modes`` amplitudes (the inverse of :meth:`spectrum` on band-limited fields)."""
        return self.band(torch.fft.rfft2(w, norm="forward"))

    def band(self, w_hat: torch.Tensor) -> torch.Tensor:
        """:meth:`coefficients` of an rfft2 array (``norm="forward"``) ``(batch, n, n // 2 + 1)``."""
        n, m = w_hat.shape[-2], self.modes
        block = torch.cat([w_hat[:, n - m:, :m + 1], w_hat[:, :m + 1, :m + 1]], dim=1)  # k_x = -m..m
        return torch.stack([block.real, block.imag], 1).flatten(1)

    def band_weights(self, like: torch.Tensor) -> torch.Tensor:
        """``(2 (2 modes + 1) (modes + 1),)``: how often each output-layout coefficient counts in a sum over the
        full spectrum of a real field (1 for ``k_y = 0``, 2 for ``k_y > 0``, whose conjugates the rfft omits), so
        that ``sum_x a(x) b(x) = n^2 sum band_weights * coefficients(a) * coefficients(b)`` for band-limited ``a``."""
        weights = torch.full((2, *self.shape), 2.0, dtype=like.dtype, device=like.device)
        weights[:, :, 0] = 1.0
        return weights.flatten()

    def band_limit(self, w: torch.Tensor) -> torch.Tensor:
        """Fields ``w`` ``(batch, x, y)`` kept to the decoder's band ``|k_x|, |k_y| <= modes``."""
        n = w.shape[-1]
        return torch.fft.irfft2(self._place(self.coefficients(w), n), s=(n, n), norm="forward")

    @torch.no_grad()
    def init_linear(self, mean: torch.Tensor, modes: torch.Tensor) -> None:
        """The linear path as ``w = mean + z @ modes``: band-limited fields ``mean`` ``(x, y)``, ``modes``
        ``(latent, x, y)``."""
        self.linear_weight.copy_(self.coefficients(modes).T)
        self.linear_bias.copy_(self.coefficients(mean[None])[0])

    def spectrum(self, z: torch.Tensor, n: int) -> torch.Tensor:
        """The rfft2 (``norm="forward"``) array ``(batch, n, n // 2 + 1)`` of the decoded field."""
        if n < 2 * self.modes + 2:
            raise ValueError(f"a {n}^2 grid cannot hold the decoder's {self.modes} modes; use n >= {2 * self.modes + 2}")
        return self._place(self.amplitudes(z), n)

    def amplitudes(self, z: torch.Tensor) -> torch.Tensor:
        """The output layout ``(batch, 2 (2 modes + 1) (modes + 1))`` of codes ``z`` ``(batch, latent)``: the MLP's
        Fourier amplitudes plus the linear path's (the decoded field is linear in them). The MLP is skipped when
        its output layer is zero (a frozen POD start) and no gradient can reach it."""
        if not self.linear:
            return self.net(z)
        linear = F.linear(z, self.linear_weight, self.linear_bias)
        return linear if self._net_is_zero() else self.net(z) + linear

    def _net_is_zero(self) -> bool:
        """Whether the MLP's output is identically zero and needs no gradient (cached per version of its last
        layer's tensors)."""
        last = self.net[-1]
        if torch.is_grad_enabled() and (last.weight.requires_grad or last.bias.requires_grad):
            return False
        key = (last.weight._version, last.bias._version, last.weight.data_ptr(), last.bias.data_ptr())
        cache = self.__dict__.get("_zero_cache")
        if cache is None or cache[0] != key:
            cache = (key, not bool(last.weight.any()) and not bool(last.bias.any()))
            self.__dict__["_zero_cache"] = cache
        return cache[1]

    def _place(self, c: torch.Tensor, n: int) -> torch.Tensor:
        """Output-layout coefficients ``(batch, 2 (2 modes + 1) (modes + 1))`` as an rfft2 array ``(batch, n, n // 2 + 1)``."""
        c = c.reshape(-1, 2, *self.shape)
        c = torch.complex(c[:, 0], c[:, 1])
        out = torch.zeros(c.shape[0], n, n // 2 + 1, dtype=c.dtype, device=c.device)
        m = self.modes
        out[:, :m + 1, :m + 1] = c[:, m:]  # k_x = 0..m
        out[:, n - m:, :m + 1] = c[:, :m]  # k_x = -m..-1
        return out

    def forward(self, z: torch.Tensor, n: int) -> torch.Tensor:
        return torch.fft.irfft2(self.spectrum(z, n), s=(n, n), norm="forward")


class ObservationEncoder(nn.Module):
    """LSTM over the sensor history: ``(batch, time, sensors) -> mean, var (batch, time, latent + params)``."""

    def __init__(self, sensors: int, outputs: int, hidden: int = 128, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(sensors, hidden), nn.GELU())
        self.lstm = nn.LSTM(hidden, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, 2 * outputs)

    def forward(self, y: torch.Tensor, state=None):
        h, state = self.lstm(self.embed(y), state)
        mean, raw = self.head(h).chunk(2, dim=-1)
        return mean, F.softplus(raw) + 1e-4, state
