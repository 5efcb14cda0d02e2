"""Sparse-sensor reconstruction, Senseiver-style (seed 000, experiment E4): the ``sparse_recon`` model.

Any number of sensors at any positions in, the field at any coordinate out, with its uncertainty::

    tokens  = MLP([value, phi(p), value phi(p)])                   (batch, sensors, width)
    latents = CrossAttention(latent array <- tokens)               (batch, latents, width)  padding masked
    latents = SelfAttention^blocks(latents)
    mean, var = Head(CrossAttention(MLP(phi(q)) <- latents))      (batch, queries)

Positions are in box units, ``[0, 1)^2`` (divide physical positions by the box side), so one model
fits any box length. ``phi`` are periodic Fourier features, ``sin / cos(2 pi k x)`` for
``k = 1..frequencies`` along each axis. The sensors enter only as an attention set, with no index, so
the output does not depend on their order and their number may change from call to call. The product
``value * phi(p)`` in the token hands the cross-attention, a weighted mean over the sensors, the
Fourier-projection sums ``sum_s value_s phi(p_s)`` (the adjoint of sampling) without having to learn a
multiplication (on the 32^2 test family: rel_l2 0.56 instead of 0.80 after the same 20 epochs).

Training (``loss``, through the shared pipeline of :mod:`latent.training`) draws for every sample a
sensor count log-uniform in ``[min_sensors, max_sensors]`` at uniform random off-grid positions, reads
their values by the field's Fourier series (:func:`solvers.observation.sample_fields`, exact for the
band-limited solver fields), adds Gaussian noise of a random level in ``[0, noise]`` times the field's
RMS, and scores ``queries`` random grid points: mean squared error for the mean, plus the Gaussian
negative log-likelihood of the predicted variance with the mean held fixed (so the variance is fitted to
the actual error and the mean is not traded for it). All values are in the dataset's normalised units.

Statistical prior (``prior_modes > 0``): the network learns a correction to the Gaussian posterior mean of
the field given the sensors (gappy POD in ``prior_modes`` POD modes of the training states and
``prior_copies - 1`` copies shifted along ``shifts``, noise variance ``prior_noise^2`` plus the modes'
left-out variance: :func:`latent.pod.posterior_ridge`), fitted once from the training split
(:meth:`SparseRecon.fit_data`, called by the pipeline) and stored in the checkpoint. Each token then
carries the reading and its residual from the prior at that sensor, and the decoder's mean is the prior's
value at the query plus the network's output. The prior is exact off the grid (Fourier series of the modes).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from solvers.observation import sample_fields
from solvers.symmetry import SHIFTS, augment_shifts, shift_fields  # noqa: F401  (shift_fields re-exported)

from .models import TrainableModel, register_model
from .pod import fit_pod, gappy_coefficients

__all__ = ["fourier_features", "SensorEncoder", "SparseRecon", "draw_sensors", "correlated_noise", "shift_fields", "grid_coordinates", "SHIFTS"]

Z90 = 1.6448536269514722  # the central 90 % band of a Gaussian is mean +- Z90 std


def fourier_features(p: torch.Tensor, length: float, frequencies: int) -> torch.Tensor:
    """Periodic features ``(..., 4 frequencies)`` of positions ``p`` ``(..., 2)`` in a box of side ``length``."""
    k = torch.arange(1, frequencies + 1, device=p.device, dtype=p.dtype) * (2 * math.pi / length)
    angles = p[..., :, None] * k  # (..., 2, frequencies)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


def _mlp(d_in: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, width), nn.GELU(), nn.Linear(width, width))


class CrossBlock(nn.Module):
    """Pre-norm cross-attention (queries read keys) plus an MLP, both residual."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_mlp = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, q: torch.Tensor, kv: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        kv = self.norm_kv(kv)
        q = q + self.attn(self.norm_q(q), kv, kv, key_padding_mask=pad, need_weights=False)[0]
        return q + self.mlp(self.norm_mlp(q))


class SensorEncoder(nn.Module):
    """A sensor set -> a latent array ``(batch, latents, width)``: every sensor a token
    ``MLP([value, phi(p), value phi(p)])``, read by cross-attention into a learned array, then ``blocks``
    self-attention layers. Order-free and any count (padding masked); positions in a box of side ``length``."""

    def __init__(self, latents: int, width: int, heads: int, blocks: int, frequencies: int, length: float = 1.0,
                 channels: int = 1) -> None:
        super().__init__()
        self.length, self.frequencies = float(length), int(frequencies)
        self.latent_array = nn.Parameter(0.02 * torch.randn(latents, width))
        self.embed_sensor = _mlp(channels * (1 + 4 * frequencies) + 4 * frequencies, width)
        self.read = CrossBlock(width, heads)
        self.process = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True) for _ in range(blocks))

    def forward(self, values: torch.Tensor, positions: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """Latents from ``values`` ``(batch, sensors)`` (or ``(batch, sensors, channels)``) at ``positions``
        ``(batch, sensors, 2)`` or ``(sensors, 2)``; ``pad`` ``(batch, sensors)`` True marks padding. Bad readings
        raise (see ``_check_sensors``)."""
        channels = values[..., None] if values.dim() == 2 else values
        _check_sensors(channels[..., 0], positions, pad)
        positions = positions.to(values).expand(values.shape[0], -1, -1)
        phi = fourier_features(positions, self.length, self.frequencies)
        products = (channels[..., :, None] * phi[..., None, :]).flatten(-2)
        tokens = self.embed_sensor(torch.cat([channels, phi, products], -1))
        z = self.read(self.latent_array.expand(values.shape[0], -1, -1), tokens, pad)
        for block in self.process:
            z = block(z)
        return z


def _rename_sensor_keys(state_dict, prefix, *args) -> None:
    """Checkpoints written before :class:`SensorEncoder` existed keep its parts at the model's top level."""
    for part in ("latent_array", "embed_sensor.", "read.", "process."):
        for key in [k for k in state_dict if k.startswith(prefix + part)]:
            state_dict[prefix + "sensors." + key[len(prefix):]] = state_dict.pop(key)


@register_model("sparse_recon")
class SparseRecon(TrainableModel):
    """Perceiver-style sparse reconstruction with a per-point Gaussian uncertainty (see the module doc).

    ``latents`` x ``width: the learned latent array; ``heads``,
    ``blocks`` (self-attention layers), ``frequencies`` (Fourier features per axis); training draws:
    ``min_sensors`` .. ``max_sensors`` sensors, noise up to ``noise`` x RMS, ``queries`` points per sample,
    and random periodic ``shifts`` of the training fields along the directions in which the flow's
    statistics are invariant (data augmentation): ``x`` or ``y`` (Kolmogorov forcing along that axis),
    ``xy`` (both; unforced or isotropic forcing), ``diagonal`` (``(s, -s)``: E1's forcing of ``x + y``).
    """

    def __init__(self, latents: int = 64, width: int = 64, heads: int = 4,
                 blocks: int = 2, frequencies: int = 16, min_sensors: int = 8, max_sensors: int = 160,
                 noise: float = 0.1, queries: int = 1024, shifts: str = "none", prior_modes: int = 0,
                 prior_noise: float = 0.05, prior_copies: int = 4, n: int = 64) -> None:
        super().__init__()
        if not 1 <= min_sensors <= max_sensors:
            raise ValueError(f"need 1 <= min_sensors <= max_sensors, got {min_sensors}, {max_sensors}")
        self.length, self.frequencies = 1.0, int(frequencies)  # positions in box units
        if shifts not in SHIFTS:
            raise ValueError(f"unknown shifts {shifts!r}; choose one of {list(SHIFTS)}")
        self.min_sensors, self.max_sensors, self.noise, self.queries = min_sensors, max_sensors, noise, queries
        self.shifts = shifts
        self.prior_modes, self.prior_noise, self.prior_copies = int(prior_modes), float(prior_noise), int(prior_copies)
        if self.prior_modes:
            self.register_buffer("prior_mean", torch.zeros(n, n))
            self.register_buffer("prior_basis", torch.zeros(self.prior_modes, n, n))
            self.register_buffer("prior_energy", torch.ones(self.prior_modes))
            self.register_buffer("prior_tail", torch.zeros(()))
        self.sensors = SensorEncoder(latents, width, heads, blocks, frequencies, self.length,
                                     channels=2 if self.prior_modes else 1)
        self.embed_query = _mlp(4 * frequencies, width)
        self.write = CrossBlock(width, heads)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2))
        if self.prior_modes:  # the untrained model is the prior itself: its correction starts at zero
            with torch.no_grad():
                self.head[1].weight[0].zero_()
                self.head[1].bias[0].zero_()
        self._register_load_state_dict_pre_hook(_rename_sensor_keys)

    # ---- inference ------------------------------------------------------------------------------------------

    def encode(self, values: torch.Tensor, positions: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """Latents ``(batch, latents, width)`` from sensor values ``(batch, sensors)`` at ``positions``
        ``(batch, sensors, 2)`` or ``(sensors, 2)`` in box units ``[0, 1)``; ``pad`` ``(batch, sensors)`` True marks padding."""
        return self.sensors(values, positions, pad)

    def decode(self, z: torch.Tensor, coords: torch.Tensor,
               prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance ``(batch, queries)`` at ``coords`` ``(batch, queries, 2)`` or ``(queries, 2)`` (box
        units); ``prior`` ``(batch, queries)``: the prior's values there, added to the mean."""
        coords = coords.to(z).expand(z.shape[0], -1, -1)
        q = self.embed_query(fourier_features(coords, self.length, self.frequencies))
        mean, raw = self.head(self.write(q, z)).unbind(-1)
        return (mean if prior is None else mean + prior), F.softplus(raw) + 1e-6

    def query(self, values: torch.Tensor, positions: torch.Tensor, coords: torch.Tensor,
              pad: torch.Tensor | None = None, chunk: int = 4096,
              noise_var: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation ``(batch, queries)`` of the field at ``coords`` from the sensors;
        ``noise_var``: the readings' noise variance (normalised units) for the prior (default ``prior_noise^2``)."""
        z, field = self._encode_with_prior(values, positions, pad, noise_var)
        prior = None if field is None else sample_fields(field, coords.to(field), self.length)
        return self._decode_chunks(z, coords, prior, chunk)

    def _decode_chunks(self, z, coords, prior, chunk: int):
        """Mean and standard deviation ``(batch, queries)``, decoding ``chunk`` queries at a time; ``prior``
        ``(batch, queries)`` or ``None``."""
        pieces = coords.split(chunk, dim=-2)
        priors = [None] * len(pieces) if prior is None else prior.split(chunk, dim=-1)
        parts = [self.decode(z, c, p) for c, p in zip(pieces, priors)]
        return torch.cat([m for m, _ in parts], -1), torch.cat([v for _, v in parts], -1).sqrt()

    def _encode_with_prior(self, values, positions, pad, noise_var=None):
        """Latents and the prior's field ``(batch, n, n)`` (``None`` without a prior)."""
        if not self.prior_modes:
            return self.encode(values, positions, pad), None
        _check_sensors(values, positions, pad)
        field, at_sensors = self.prior(values, positions, pad, noise_var)
        return self.encode(torch.stack([values, values - at_sensors], -1), positions, pad), field

    def prior(self, values: torch.Tensor, positions: torch.Tensor, pad: torch.Tensor | None = None,
              noise_var: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The Gaussian posterior mean field ``(batch, n, n)`` given the sensors with noise variance
        ``noise_var`` (default ``prior_noise^2``), and its values at them ``(batch, sensors)`` (gappy POD in
        the stored basis, exact off the grid)."""
        batch, count = values.shape
        k, n = self.prior_modes, self.prior_basis.shape[-1]
        flat = positions.to(values).expand(batch, -1, -1).reshape(-1, 2)
        fields = torch.cat([self.prior_mean[None], self.prior_basis]).to(values)
        sampled = sample_fields(fields, flat, self.length).reshape(k + 1, batch, count).permute(1, 2, 0)
        mean_s, A = sampled[..., 0], sampled[..., 1:]  # (batch, sensors), (batch, sensors, modes)
        keep = torch.ones_like(values) if pad is None else (~pad).to(values)
        A, b = A * keep[..., None], (values - mean_s) * keep  # padded sensors: zero rows
        ridge = (self.prior_noise ** 2 if noise_var is None else float(noise_var)) + float(self.prior_tail)
        c = gappy_coefficients(A, b, self.prior_energy.to(values), ridge)  # (batch, modes)
        field = self.prior_mean.to(values) + (c @ self.prior_basis.to(values).reshape(k, -1)).reshape(batch, n, n)
        return field, mean_s + (A @ c[..., None])[..., 0]

    def fit_data(self, state: torch.Tensor, target: torch.Tensor | None = None) -> None:
        """Fit the prior's basis to the training states ``(samples, x, y)`` (normalised units); no-op without one."""
        if not self.prior_modes:
            return
        if state.shape[-1] != self.prior_basis.shape[-1]:
            raise ValueError(f"the data's {state.shape[-1]}^2 grid differs from model.kwargs.n = "
                             f"{self.prior_basis.shape[-1]}; set --set model.kwargs.n={state.shape[-1]}")
        pick = torch.linspace(0, len(state) - 1, min(2000, len(state))).round().long()
        snapshots = augment_shifts(state[pick].detach().double().cpu(), self.shifts, self.prior_copies)
        if len(snapshots) < self.prior_modes:
            raise ValueError(f"{len(snapshots)} training states cannot give {self.prior_modes} prior modes; lower "
                             f"model.kwargs.prior_modes")
        basis = fit_pod(snapshots, self.prior_modes)
        n = state.shape[-1]
        self.prior_mean.copy_(basis.mean.reshape(n, n))
        self.prior_basis.copy_(basis.modes.reshape(-1, n, n))
        self.prior_energy.copy_(basis.energy)
        self.prior_tail.fill_(basis.tail)

    def reconstruct(self, values: torch.Tensor, positions: torch.Tensor, n: int, pad: torch.Tensor | None = None,
                    noise_var: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation ``(batch, n, n)`` on the ``n x n`` grid of the box (``noise_var``: see
        :meth:`query`)."""
        z, field = self._encode_with_prior(values, positions, pad, noise_var)
        coords = grid_coordinates(n, self.length, values)
        if field is None:
            prior = None
        elif field.shape[-1] == n:  # the prior's own grid: its values, no Fourier resampling
            prior = field.reshape(field.shape[0], -1)
        else:
            prior = sample_fields(field, coords.to(field), self.length)
        mean, std = self._decode_chunks(z, coords, prior, 4096)
        return mean.reshape(-1, n, n), std.reshape(-1, n, n)

    def predict(self, state: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A-priori check: the mean reconstruction of ``state`` ``(batch, x, y)`` from its own values at
        ``sqrt(min_sensors * max_sensors)`` random positions."""
        count = round(math.sqrt(self.min_sensors * self.max_sensors))
        positions = torch.rand(state.shape[0], count, 2, generator=generator, dtype=torch.float64).to(state.device)
        positions = positions * self.length
        return self.reconstruct(sample_fields(state, positions, self.length).to(state.dtype), positions,
                                state.shape[-1])[0]

    # ---- training -------------------------------------------------------------------------------------------

    def draw_sensors(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Random training layouts for ``state`` ``(batch, x, y)``: noisy values and positions
        ``(batch, most, [2])`` and the padding mask (True past each sample's own count)."""
        return draw_sensors(state, self.min_sensors, self.max_sensors, self.noise, self.length)

    def loss(self, state: torch.Tensor, target: torch.Tensor | None = None):
        """MSE of the mean plus Gaussian NLL of the variance (mean detached) at random grid points;
        ``target`` (a closure term in the pair files) is not used."""
        state = shift_fields(state, self.shifts)
        values, positions, pad = self.draw_sensors(state)
        n, batch = state.shape[-1], state.shape[0]
        index = torch.randint(n * n, (batch, min(self.queries, n * n)), device=state.device)
        coords = grid_coordinates(n, self.length, state)[index]
        truth = state.reshape(batch, -1).gather(1, index)
        z, field = self._encode_with_prior(values, positions, pad)
        prior = None if field is None else field.reshape(batch, -1).gather(1, index)  # on the grid: exact
        mean, var = self.decode(z, coords, prior)
        mse = (mean - truth).pow(2).mean()
        nll = 0.5 * (var.log() + (truth - mean.detach()).pow(2) / var).mean()
        return mse + nll, {"mse": mse.detach(), "nll": nll.detach()}


def draw_sensors(state: torch.Tensor, min_sensors: int, max_sensors: int, noise: float,
                 length: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random sensor sets for fields ``state`` ``(batch, x, y)`` in a box of side ``length``: a count
    log-uniform in ``[min_sensors, max_sensors]`` per field at uniform random off-grid positions, values read
    by the Fourier series plus Gaussian noise of a level uniform in ``[0, noise]`` x the field's RMS.
    Returns values and positions ``(batch, most, [2])`` and the padding mask (True past each field's count)."""
    batch, device = state.shape[0], state.device
    lo, hi = math.log(min_sensors), math.log(max_sensors + 1)
    counts = torch.exp(lo + (hi - lo) * torch.rand(batch, device=device)).floor().clamp(max=max_sensors)
    most = int(counts.max())
    pad = torch.arange(most, device=device)[None, :] >= counts[:, None]
    positions = torch.rand(batch, most, 2, device=device, dtype=state.dtype) * length
    values = sample_fields(state, positions, length).to(state.dtype)
    rms = state.pow(2).mean((-2, -1)).sqrt()[:, None]
    level = noise * torch.rand(batch, 1, device=device, dtype=state.dtype)
    return values + level * rms * torch.randn_like(values), positions, pad


def grid_coordinates(n: int, length: float, like: torch.Tensor) -> torch.Tensor:
    """Positions ``(n*n, 2)`` of the ``n x n`` grid points, row-major (``w.reshape(batch, -1)`` order)."""
    x = torch.arange(n, device=like.device, dtype=like.dtype) * (length / n)
    return torch.cartesian_prod(x, x)


def _check_sensors(values: torch.Tensor, positions: torch.Tensor, pad: torch.Tensor | None) -> None:
    if values.dim() != 2 or values.shape[1] == 0:
        raise ValueError(f"sparse_recon needs sensor values (batch, sensors) with at least one sensor, got shape "
                         f"{tuple(values.shape)}; a reconstruction from no data is the climatology, not a model call")
    if positions.shape[-2:] != (values.shape[1], 2):
        raise ValueError(f"sensor positions {tuple(positions.shape)} do not match values {tuple(values.shape)}")
    valid = ~pad if pad is not None else torch.ones_like(values, dtype=torch.bool)
    if pad is not None and not valid.any(1).all():
        raise ValueError("a sample has every sensor padded out: give at least one sensor per sample")
    if not torch.isfinite(values[valid]).all():
        raise ValueError(f"{int((~torch.isfinite(values[valid])).sum())} sensor reading(s) are NaN or infinite; drop "
                         f"those sensors (or mask them with pad) before reconstructing")


def correlated_noise(white: torch.Tensor, length: float, scale: float) -> torch.Tensor:
    """Smooth Gaussian fields ``(..., n, n)`` from white noise ``white`` (unit variance per point), with the
    correlation ``exp(-r^2 / (2 scale^2))`` at distance ``r``: filtered by a Gaussian (:func:`solvers.filters.gaussian_transfer`) and rescaled by the
    kernel's norm, so every point keeps unit variance. Turns a per-point standard deviation into smooth
    ensemble members (``mean + std * correlated_noise(...)``)."""
    from solvers.filters import apply_filter, gaussian_transfer
    from solvers.grid import Grid

    n = white.shape[-1]
    grid = Grid(n, length, dtype=torch.float64)
    transfer = gaussian_transfer(grid, scale * math.sqrt(6))  # exp(-|k|^2 scale^2 / 4): correlation exp(-r^2 / 2 scale^2)
    delta = torch.zeros(n, n, dtype=torch.float64)
    delta[0, 0] = 1.0
    norm = apply_filter(delta, transfer).pow(2).sum().sqrt()
    return (apply_filter(white.to(torch.float64), transfer.to(white.device)) / norm).to(white.dtype)
