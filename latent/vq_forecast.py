"""The ``vq_forecast`` model (seed 001, experiment E4): sparse sensors -> discrete latent codes -> forecast.

Three parts on one codebook, trained in two phases through the shared pipeline (:mod:`latent.training`)
on whole trajectories (``samples = "trajectories"``)::

    codes  = VQ(encode(w))                 (batch, x, y) -> (batch, tokens, tokens)    dense conv encoder
    w      = decode(codebook[codes])       back to (batch, x, y)                       conv decoder
    codes  = VQ(sensors(values, positions)) any sensor set -> latents (batch, T, T, dim)  SensorEncoder + head
    codes' ~ forecaster(codes_1..codes_k)  the next frame's logits, block-causal       decoder-only transformer

Phase 1 (``epoch < ae_epochs``): the dense VQ autoencoder, reconstruction MSE plus ``commitment`` x the
commitment loss; the codebook follows its assigned encoder outputs by exponential moving averages with
dead-code restarts (:class:`VectorQuantizer`). Phase 2: the autoencoder frozen; the sparse encoder learns
the dense encoder's continuous latent at every token from a random sensor set (count log-uniform in
``[min_sensors, max_sensors]``, uniform random off-grid positions, noise up to ``noise`` x RMS: the training
draws of :class:`~latent.sparse_recon.SparseRecon`) by mean squared error, and the nearest code of its
output is the frame's code (seed 001: regress the dense field's features, the VQ bottleneck snaps them; a
512-way classification of every token from the sensors instead reached 1 % accuracy on E1); the
forecaster learns the next frame's codes from the previous ``context`` frames' (teacher forcing) by
cross-entropy. Phase 2's two parts share no
parameter, so training them together equals training them one after the other.

The forecaster reads a frame as its ``tokens^2`` codes (embedding + learned token position + frame
position in the window) and predicts all of the next frame's codes at once: a token attends to every
token of its own and earlier frames (a block-causal mask), so one teacher-forced pass trains every
horizon in the window, and a forecast starts from a single observed frame (:meth:`VQForecast.forecast`,
sliding window of ``context`` frames). A forecast step spans ``stride`` data frames (``step_dt = stride x
frame_dt``): on E1 a frame moves the field by 1.7 % but changes 39 % of its codes, so a one-frame
forecaster learns to copy the codes (its forecast was exactly persistence); at stride 5 (8.7 %, 83 % of
the codes) there is motion to learn. Fields are the dataset's normalised units; training frames are
rolled by random periodic ``shifts`` (:func:`solvers.symmetry.shift_fields`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .models import TrainableModel, check_trajectory_grid, register_model
from solvers.symmetry import SHIFTS, shift_fields

from . import sparse_recon  # attributes read at call time: sparse_recon may still be importing models

__all__ = ["VectorQuantizer", "ConvVQAutoencoder", "FrameForecaster", "VQForecast", "block_causal_mask"]


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation of vectors ``(..., dim)`` with a straight-through gradient (van den Oord
    et al. 2017); the codebook ``(codes, dim)`` is not trained by gradients but follows the mean of its
    assigned vectors by exponential moving averages (``decay``), is initialised from the first training
    batch, and a code unused for a while (its EMA count of vectors per batch below ``restart`` x the mean
    count) restarts at a random current vector: at decay 0.99 a code left unused restarts after ~120
    steps. (Without restarts, E1 at 512 codes used ~15 of them after 300 steps.)"""

    def __init__(self, codes: int, dim: int, decay: float = 0.99, restart: float = 0.3, eps: float = 1e-5) -> None:
        super().__init__()
        self.codes, self.dim, self.decay, self.restart, self.eps = codes, dim, decay, restart, eps
        self.register_buffer("codebook", torch.randn(codes, dim))
        self.register_buffer("counts", torch.ones(codes))
        self.register_buffer("sums", self.codebook.clone())
        self.register_buffer("initialized", torch.zeros((), dtype=torch.uint8))

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index ``(...)`` of the nearest code to each vector of ``z`` ``(..., dim)`` (Euclidean)."""
        flat = z.reshape(-1, self.dim)
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.t() + self.codebook.pow(2).sum(1)
        return dist.argmin(1).reshape(z.shape[:-1])

    def lookup(self, index: torch.Tensor) -> torch.Tensor:
        """Code vectors ``(..., dim)`` of indices ``(...)``."""
        return self.codebook[index]

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantised ``z`` (straight-through), the indices and the commitment loss ``|z - sg(q)|^2``."""
        if self.training and not bool(self.initialized):
            self._initialize(z.detach().reshape(-1, self.dim))
        index = self.nearest(z)
        q = self.lookup(index)
        if self.training:
            self._update(z.detach().reshape(-1, self.dim), index.reshape(-1))
        commit = F.mse_loss(z, q.detach())
        return z + (q - z).detach(), index, commit

    @torch.no_grad()
    def _initialize(self, flat: torch.Tensor) -> None:
        pick = torch.randint(len(flat), (self.codes,), device=flat.device)
        self.codebook.copy_(flat[pick])
        self.sums.copy_(flat[pick] * (len(flat) / self.codes))
        self.counts.fill_(len(flat) / self.codes)
        self.initialized.fill_(1)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, index: torch.Tensor) -> None:
        onehot = F.one_hot(index, self.codes).to(flat.dtype)  # (vectors, codes)
        self.counts.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.sums.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        total = self.counts.sum()
        counts = (self.counts + self.eps) / (total + self.codes * self.eps) * total  # Laplace smoothing
        self.codebook.copy_(self.sums / counts[:, None])
        mean = len(flat) / self.codes
        dead = self.counts < self.restart * mean
        if dead.any():
            pick = torch.randint(len(flat), (int(dead.sum()),), device=flat.device)
            self.codebook[dead] = flat[pick]
            self.sums[dead] = flat[pick] * mean
            self.counts[dead] = mean

    def usage(self, index: torch.Tensor) -> float:
        """Perplexity of the code histogram of ``index`` over the codebook size: 1 when every code is used equally."""
        p = torch.bincount(index.reshape(-1), minlength=self.codes).to(torch.float64)
        p = p / p.sum()
        return float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum()) / self.codes)


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.GELU(), nn.Conv2d(channels, channels, 3, padding=1, padding_mode="circular"),
                                 nn.GELU(), nn.Conv2d(channels, channels, 3, padding=1, padding_mode="circular"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class ConvVQAutoencoder(nn.Module):
    """Periodic conv autoencoder ``(batch, n, n) <-> (batch, tokens, tokens, dim)`` through a
    :class:`VectorQuantizer`: stride-2 circular convolutions with residual blocks down to a
    ``tokens x tokens`` grid, and nearest-neighbour upsampling with circular convolutions back."""

    def __init__(self, n: int, tokens: int, dim: int, width: int, codes: int) -> None:
        super().__init__()
        levels = int(round(math.log2(n / tokens)))
        if tokens < 1 or tokens * 2 ** levels != n:
            raise ValueError(f"the {n}^2 grid must be tokens x 2^k: choose tokens among "
                             f"{[n // 2 ** k for k in range(1, 5) if n % 2 ** k == 0]}, got {tokens}")
        chans = [width * min(2 ** i, 4) for i in range(levels + 1)]
        down = [nn.Conv2d(1, chans[0], 3, padding=1, padding_mode="circular")]
        for i in range(levels):
            down += [_Residual(chans[i]), nn.GELU(),
                     nn.Conv2d(chans[i], chans[i + 1], 4, stride=2, padding=1, padding_mode="circular")]
        self.encoder = nn.Sequential(*down, _Residual(chans[-1]), nn.GELU(), nn.Conv2d(chans[-1], dim, 1))
        up = [nn.Conv2d(dim, chans[-1], 1), _Residual(chans[-1])]
        for i in reversed(range(levels)):
            up += [nn.Upsample(scale_factor=2, mode="nearest"),
                   nn.Conv2d(chans[i + 1], chans[i], 3, padding=1, padding_mode="circular"), _Residual(chans[i])]
        self.decoder = nn.Sequential(*up, nn.GELU(), nn.Conv2d(chans[0], 1, 3, padding=1, padding_mode="circular"))
        self.quantizer = VectorQuantizer(codes, dim)

    def encode(self, w: torch.Tensor) -> torch.Tensor:
        """Continuous latents ``(batch, tokens, tokens, dim)`` of fields ``(batch, n, n)``."""
        return self.encoder(w[:, None]).permute(0, 2, 3, 1)

    def decode(self, q: torch.Tensor) -> torch.Tensor:
        """Fields ``(batch, n, n)`` from code vectors ``(batch, tokens, tokens, dim)``."""
        return self.decoder(q.permute(0, 3, 1, 2))[:, 0]

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """Code indices ``(batch, tokens, tokens)`` of fields ``(batch, n, n)``."""
        return self.quantizer.nearest(self.encode(w))

    def fields(self, index: torch.Tensor) -> torch.Tensor:
        """Fields ``(batch, n, n)`` of code indices ``(batch, tokens, tokens)``."""
        return self.decode(self.quantizer.lookup(index))


def block_causal_mask(frames: int, tokens: int, device=None) -> torch.Tensor:
    """Boolean attention mask ``(frames*tokens, frames*tokens)``, True where attention is *forbidden*: a
    token of frame ``i`` sees every token of frames ``<= i`` (``nn.MultiheadAttention``'s convention)."""
    frame = torch.arange(frames * tokens, device=device) // tokens
    return frame[None, :] > frame[:, None]


class FrameForecaster(nn.Module):
    """Decoder-only transformer over frames of code tokens: ``(batch, frames, tokens)`` indices ->
    logits ``(batch, frames, tokens, codes)`` of the *next* frame's codes (block-causal)."""

    def __init__(self, codes: int, tokens: int, context: int, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.tokens, self.context = tokens, context
        self.embed = nn.Embedding(codes, width)
        self.token_pos = nn.Parameter(0.02 * torch.randn(tokens, width))
        self.frame_pos = nn.Parameter(0.02 * torch.randn(context, width))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True) for _ in range(layers))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, codes))

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        batch, frames, tokens = index.shape
        if frames > self.context or tokens != self.tokens:
            raise ValueError(f"the forecaster reads at most {self.context} frames of {self.tokens} tokens, got "
                             f"{frames} x {tokens}")
        x = self.embed(index) + self.token_pos + self.frame_pos[:frames, None]
        x = x.reshape(batch, frames * tokens, -1)
        mask = block_causal_mask(frames, tokens, index.device)
        for block in self.blocks:
            x = block(x, src_mask=mask)
        return self.head(x).reshape(batch, frames, tokens, -1)


@register_model("vq_forecast")
class VQForecast(TrainableModel):
    """See the module docstring. Grid ``n``, box side ``length`` (sensor positions are in box units
    ``[0, 1)`` as for ``sparse_recon``), ``frame_dt`` the data's frame spacing; autoencoder: ``tokens`` per
    side, ``codes`` x ``dim`` codebook, conv ``width``; sensor encoder: ``sensor_width``, ``sensor_blocks``,
    ``frequencies`` and the training draws (``min_sensors``, ``max_sensors``, ``noise``); forecaster:
    ``context`` steps of ``stride`` data frames, ``forecast_width``, ``forecast_layers``, ``heads``; training: ``ae_epochs`` of phase
    1, ``windows`` random windows (or frames) drawn per trajectory and step, ``commitment``, ``shifts``."""

    samples = "trajectories"
    ddp_find_unused = True  # each phase leaves the other phase's parts without gradients

    def __init__(self, n: int = 64, length: float = 1.0, frame_dt: float = 0.1, tokens: int = 8, codes: int = 512,
                 dim: int = 32, width: int = 32, sensor_width: int = 64, sensor_blocks: int = 2,
                 frequencies: int = 16, min_sensors: int = 8, max_sensors: int = 160, noise: float = 0.1,
                 context: int = 4, forecast_width: int = 96, forecast_layers: int = 4, heads: int = 4,
                 ae_epochs: int = 100, windows: int = 8, commitment: float = 0.25, shifts: str = "none",
                 stride: int = 1) -> None:
        super().__init__()
        if not (1 <= min_sensors <= max_sensors and context >= 1 and windows >= 1 and frame_dt > 0 and stride >= 1):
            raise ValueError(f"need 1 <= min_sensors <= max_sensors, context >= 1, windows >= 1, frame_dt > 0, "
                             f"stride >= 1; got {min_sensors}, {max_sensors}, {context}, {windows}, {frame_dt}, {stride}")
        self.stride, self.step_dt = int(stride), float(frame_dt) * int(stride)
        if shifts not in SHIFTS:
            raise ValueError(f"unknown shifts {shifts!r}; choose one of {list(SHIFTS)}")
        self.n, self.length, self.frame_dt, self.tokens = n, float(length), float(frame_dt), tokens
        self.min_sensors, self.max_sensors, self.noise = min_sensors, max_sensors, noise
        self.context, self.ae_epochs, self.windows = context, ae_epochs, windows
        self.commitment, self.shifts, self.frequencies = commitment, shifts, frequencies
        self.autoencoder = ConvVQAutoencoder(n, tokens, dim, width, codes)
        self.sensors = sparse_recon.SensorEncoder(tokens * tokens, sensor_width, heads, sensor_blocks, frequencies, 1.0)
        self.token_query = nn.Linear(4 * frequencies, sensor_width)  # the token's centre, added to its latent
        self.sensor_head = nn.Sequential(nn.LayerNorm(sensor_width), nn.Linear(sensor_width, dim))
        self.forecaster = FrameForecaster(codes, tokens * tokens, context, forecast_width, forecast_layers, heads)
        self.phase = 1

    @classmethod
    def check_data(cls, attrs: dict, times, kwargs: dict) -> None:
        """The data's grid, box and frame spacing must be the model's (clear error naming the ``--set`` fix)."""
        defaults = check_trajectory_grid(cls, attrs, times, kwargs)
        need = int(kwargs.get("context", defaults["context"])) * int(kwargs.get("stride", defaults["stride"])) + 1
        if len(times) < need:
            raise ValueError(f"vq_forecast with this context and stride trains on windows of {need} frames; the "
                             f"trajectories have {len(times)}: lower model.kwargs.context or stride")

    # ---- inference ------------------------------------------------------------------------------------------

    def encode_sensors(self, values: torch.Tensor, positions: torch.Tensor,
                       pad: torch.Tensor | None = None) -> torch.Tensor:
        """The dense encoder's continuous latents ``(batch, tokens, tokens, dim)`` estimated from sensor ``values``
        ``(batch, sensors)`` at ``positions`` (box units, ``(batch, sensors, 2)`` or ``(sensors, 2)``)."""
        z = self.sensors(values, positions, pad)
        centres = (torch.arange(self.tokens, device=z.device, dtype=z.dtype) + 0.5) / self.tokens
        z = z + self.token_query(sparse_recon.fourier_features(torch.cartesian_prod(centres, centres), 1.0, self.frequencies))
        return self.sensor_head(z).reshape(z.shape[0], self.tokens, self.tokens, -1)

    def codes_from_sensors(self, values, positions, pad=None) -> torch.Tensor:
        """Code indices ``(batch, tokens, tokens)`` from sensors: the nearest codes to :meth:`encode_sensors`."""
        return self.autoencoder.quantizer.nearest(self.encode_sensors(values, positions, pad))

    def step(self, history: torch.Tensor, generator: torch.Generator | None = None,
             temperature: float = 0.0) -> torch.Tensor:
        """The next frame's codes ``(batch, tokens, tokens)`` after ``history`` ``(batch, frames, tokens,
        tokens)`` (its last ``context`` frames are read): the most likely (``temperature = 0``) or sampled."""
        window = history[:, -self.context:].flatten(2)
        logits = self.forecaster(window)[:, -1]  # (batch, tokens^2, codes)
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / temperature, -1).flatten(0, 1)
            nxt = torch.multinomial(probs, 1, generator=generator).reshape(logits.shape[:2])
        return nxt.reshape(-1, self.tokens, self.tokens)

    def forecast(self, history: torch.Tensor, frames: int, generator: torch.Generator | None = None,
                 temperature: float = 0.0) -> torch.Tensor:
        """Codes ``(batch, frames, tokens, tokens)`` of the ``frames`` frames after ``history`` (one frame
        ``(batch, tokens, tokens)`` or several ``(batch, k, tokens, tokens)``), autoregressively."""
        codes = history[:, None] if history.dim() == 3 else history
        out = []
        for _ in range(frames):
            out.append(self.step(codes, generator, temperature))
            codes = torch.cat([codes, out[-1][:, None]], 1)[:, -self.context:]
        return torch.stack(out, 1) if out else codes[:, :0]

    def fields(self, index: torch.Tensor) -> torch.Tensor:
        """Decoded normalised fields ``(..., n, n)`` of code indices ``(..., tokens, tokens)``."""
        flat = index.reshape(-1, self.tokens, self.tokens)
        return self.autoencoder.fields(flat).reshape(*index.shape[:-2], self.n, self.n)

    def predict(self, state: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A-priori check: the dense autoencoder's reconstruction of ``state`` ``(batch, x, y)``."""
        return self.autoencoder.fields(self.autoencoder.codes(state))

    # ---- training -------------------------------------------------------------------------------------------

    def begin_epoch(self, epoch: int) -> bool:
        phase = 1 if epoch < self.ae_epochs else 2
        changed, self.phase = phase != self.phase, phase
        self.autoencoder.requires_grad_(phase == 1)
        for part in (self.sensors, self.token_query, self.sensor_head, self.forecaster):
            part.requires_grad_(phase == 2)
        return changed

    def train(self, mode: bool = True):
        super().train(mode)
        if self.phase == 2:  # frozen: the codebook's moving averages must not move either
            self.autoencoder.eval()
        return self

    def loss(self, state: torch.Tensor, target: torch.Tensor | None = None):
        """``state`` ``(batch, time, x, y)`` normalised trajectories; ``target`` (parameters) is not used."""
        if state.dim() != 4:
            raise ValueError(f"vq_forecast trains on trajectories (batch, time, x, y), got {tuple(state.shape)}")
        state = shift_fields(state, self.shifts)
        return self._autoencoder_loss(state) if self.phase == 1 else self._code_loss(state)

    def _windows(self, w: torch.Tensor, length: int, stride: int = 1) -> torch.Tensor:
        """``windows`` random runs of ``length`` frames ``stride`` apart per trajectory: ``(batch*windows, length, x, y)``."""
        batch, frames = w.shape[:2]
        length = min(length, (frames - 1) // stride + 1)
        start = torch.randint(0, frames - (length - 1) * stride, (batch, self.windows), device=w.device)
        idx = start[..., None] + stride * torch.arange(length, device=w.device)  # (batch, windows, length)
        return w[torch.arange(batch, device=w.device)[:, None, None], idx].flatten(0, 1)

    def _autoencoder_loss(self, w: torch.Tensor):
        frames = self._windows(w, 1)[:, 0]
        q, index, commit = self.autoencoder.quantizer(self.autoencoder.encode(frames))
        recon = F.mse_loss(self.autoencoder.decode(q), frames)
        total = recon + self.commitment * commit
        return total, {"recon": recon.detach(), "commit": commit.detach(),
                       "usage": torch.tensor(self.autoencoder.quantizer.usage(index))}

    def _code_loss(self, w: torch.Tensor):
        win = self._windows(w, self.context + 1, self.stride)  # (B, L, x, y), frames `stride` apart
        B, L = win.shape[:2]
        with torch.no_grad():  # one pass of the frozen encoder: latents of every frame and their codes
            latents = self.autoencoder.encode(win.flatten(0, 1))  # (B*L, tokens, tokens, dim)
            codes = self.autoencoder.quantizer.nearest(latents).reshape(B, L, -1)  # (B, L, tokens^2)
        forecast = F.cross_entropy(self.forecaster(codes[:, :-1]).flatten(0, 2), codes[:, 1:].flatten())
        frames, truth = win[:, 0], codes[:, 0]
        dense = latents.reshape(B, L, *latents.shape[1:])[:, 0]  # (B, tokens, tokens, dim)
        values, positions, pad = sparse_recon.draw_sensors(frames, self.min_sensors, self.max_sensors, self.noise, 1.0)
        guess = self.encode_sensors(values, positions, pad)
        sensor = F.mse_loss(guess, dense) / dense.var().clamp_min(1e-8)
        accuracy = (self.autoencoder.quantizer.nearest(guess.detach()).flatten(1) == truth).to(w.dtype).mean()
        return forecast + sensor, {"forecast_ce": forecast.detach(), "sensor_mse": sensor.detach(),
                                   "sensor_acc": accuracy.detach()}
