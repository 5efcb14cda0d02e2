"""The ``ld_ensf`` model (seed 003, LD-EnSF): latent dynamics plus an observation encoder.

Four parts, trained in two phases through the shared pipeline (:mod:`latent.training`) on whole
trajectories with their Reynolds numbers (:mod:`solvers.parametric`)::

    z      = encode(w)                    (batch, x, y)  -> (batch, latent)     periodic CNN
    w(q)   = decode(z)(q)                 (batch, latent) -> field at any q      band-limited (spectral)
    z(t+T) = rk4(f, z(t), p, T)           dz/dt = f(z, p), p = normalised Re    (latent.latent_ode)
    (u, p), var = observe(y_1..y_k)       sensors -> standardised (latent, Re)  LSTM over the history

The decoder's output is a band-limited field: an MLP of ``z`` gives the Fourier coefficients of the
wavenumbers ``|k_x|, |k_y| <= modes``, so the field is exact and smooth at any coordinate
(:meth:`LatentDynamicsModel.query`, the Fourier series) and costs one inverse FFT on the grid.

Phase 1 (``epochs < dynamics_epochs``): autoencoder + latent ODE on random windows of ``window``
frames: reconstruction MSE of every frame, MSE of the decoded latent rollout from the first frame's
code against the later frames, and ``consistency`` x the latent rollout error. Phase 2: encoder,
decoder and ODE frozen; the LSTM reads the noisy sensor values (fixed layout ``sensors``, noise
``obs_noise`` x U(0.5, 1.5) in normalised units) of whole trajectories from their first frame and
predicts, at every frame, the *standardised* latent ``u = (z - z_mean) / z_std`` of the frame and
the normalised parameter, with a variance (Gaussian NLL, mean detached): LD-EnSF's latent observations and
their noise. The mean's loss is the latent's MSE (mean over its components) plus ``param_weight`` x the
parameter's (averaged in with 128 latents, the LSTM learned no Re). ``z_mean`` / ``z_std`` track the training
frames' codes during phase 2 (first batch, then a moving average). Parts: :mod:`latent.ld_parts`.

``pod`` (off by default): encoder and decoder each get a fixed linear path beside the nonlinear one, set
before training to the POD of the training frames in the decoder's band (:meth:`LatentDynamicsModel.fit_data`),
the nonlinear paths starting at zero: training starts from the best linear autoencoder of that size
instead of from scratch (E3 data, 128 latents: the POD's relative error is 0.29). ``freeze_autoencoder`` (with
``pod``): the autoencoder stays the POD (phase 1 trains the latent ODE alone). On the E3 data with 512 latents
joint training made the autoencoder worse than its POD start (test relative error 0.20-0.30 after 30 epochs
against the POD's 0.02-0.16), and the hybrid filter's analysis is bounded by the autoencoder.

``dynamics = "galerkin"`` (with ``pod`` and ``freeze_autoencoder``: a linear latent ``w = mean + D z``,
``z = P (w - mean)``) adds to the MLP the vorticity equation projected onto the latent, ``P N(decode(z); Re)``
(:mod:`latent.galerkin`; model kwargs ``drag`` and ``forcing`` must be the data's, checked), the classical
POD-Galerkin reduced-order model; the MLP starts at zero and, trained in phase 1, learns what the projection drops
(the unresolved scales' effect). On the E3 data the neural ODE alone forecasts one frame no better than persistence
(test split 0.26-0.68 against 0.23-0.74) and the projection 0.04-0.21 (``benchmarks/README.md``).

Phase-1 options: ``windows`` (default 1) random windows per trajectory in each batch; ``latent_noise`` (default 0):
the rollout starts from the first frame's code plus Gaussian noise of ``latent_noise`` x each component's batch
standard deviation, against the same clean frames (seed 003's noise injection: perturbed codes, as an analysis
is, are brought back). Neither moved the E3 neural ODE off persistence.

Training fields are rolled along ``x`` by a random whole number of steps per trajectory
(``shifts = "x"``, a symmetry of the Kolmogorov flow). Parameters are normalised affinely, ``p = 2 (Re - lo) / (hi - lo) - 1`` over ``reynolds``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from solvers.observation import parse_sensors, sample_fields
from solvers.symmetry import shift_fields

from .galerkin import VorticityTendency, check_galerkin_flow
from .latent_ode import LatentVectorField, rk4
from .ld_parts import ObservationEncoder, PeriodicEncoder, SpectralDecoder
from .models import TrainableModel, check_trajectory_grid, register_model
from .pod import fit_pod

__all__ = ["LatentDynamicsModel", "DYNAMICS"]

DYNAMICS = ("neural", "galerkin")


@register_model("ld_ensf")
class LatentDynamicsModel(TrainableModel):
    """See the module docstring. ``length``: box side (positions of ``sensors``); ``frame_dt``: time
    between the data's frames; ``reynolds``: ``[lo, hi]`` of the parameter's normalisation."""

    samples = "trajectories"
    ddp_find_unused = True  # phase 2 leaves the frozen parts without gradients

    def __init__(self, latent: int = 32, width: int = 16, modes: int = 16, hidden: int = 256,
                 ode_hidden: int = 128, ode_substeps: int = 4, lstm_hidden: int = 128, n: int = 64,
                 length: float = 2 * math.pi, frame_dt: float = 0.2, reynolds: tuple = (50.0, 150.0),
                 sensors: str = "regular:10x10", obs_noise: float = 0.1, window: int = 5,
                 consistency: float = 0.1, dynamics_epochs: int = 60, shifts: str = "x", pod: bool = False,
                 param_weight: float = 1.0, freeze_autoencoder: bool = False, latent_noise: float = 0.0,
                 windows: int = 1, dynamics: str = "neural", drag: float = 0.0, forcing: dict | None = None) -> None:
        super().__init__()
        if not (latent >= 1 and window >= 2 and frame_dt > 0 and reynolds[0] < reynolds[1] and latent_noise >= 0
                and windows >= 1):
            raise ValueError(f"need latent >= 1, window >= 2, frame_dt > 0, reynolds lo < hi, latent_noise >= 0, "
                             f"windows >= 1; got {latent}, {window}, {frame_dt}, {reynolds}, {latent_noise}, {windows}")
        self.latent, self.n, self.length, self.frame_dt = latent, n, float(length), float(frame_dt)
        self.ode_substeps, self.window, self.consistency = ode_substeps, window, consistency
        self.param_weight, self.latent_noise, self.windows = float(param_weight), float(latent_noise), int(windows)
        self.reynolds, self.obs_noise, self.dynamics_epochs = tuple(map(float, reynolds)), obs_noise, dynamics_epochs
        if shifts not in ("none", "x"):
            raise ValueError(f"unknown shifts {shifts!r}; choose 'x' (Kolmogorov forcing in y) or 'none'")
        self.sensors, self.shifts = sensors, shifts
        from solvers.grid import Grid

        self.register_buffer("positions", parse_sensors(sensors, Grid(n, length, dtype=torch.float64)).float())
        self.pod, self.freeze_autoencoder = bool(pod), bool(freeze_autoencoder)
        if self.freeze_autoencoder and not self.pod:
            raise ValueError("freeze_autoencoder keeps the POD autoencoder fixed: set model.kwargs.pod=true too")
        self.encoder = PeriodicEncoder(latent, width, n, linear=self.pod)
        self.decoder = SpectralDecoder(latent, modes, hidden, linear=self.pod)
        self.field = LatentVectorField(latent, 1, ode_hidden)
        self.dynamics, self.tendency = dynamics, None
        if dynamics not in DYNAMICS:
            raise ValueError(f"unknown dynamics {dynamics!r}; choose one of {list(DYNAMICS)}")
        if dynamics == "galerkin":  # the projected equations plus the MLP, which starts at zero
            if not self.freeze_autoencoder:
                raise ValueError("dynamics 'galerkin' projects onto a linear latent: set model.kwargs.pod=true and "
                                 "freeze_autoencoder=true")
            self.tendency = VorticityTendency(n, length, drag, forcing)
            nn.init.zeros_(self.field.net[-1].weight)
            nn.init.zeros_(self.field.net[-1].bias)
        self.observer = ObservationEncoder(len(self.positions), latent + 1, lstm_hidden)
        self.register_buffer("z_mean", torch.zeros(latent))
        self.register_buffer("z_std", torch.ones(latent))
        self.register_buffer("z_fitted", torch.zeros((), dtype=torch.uint8))
        self.phase = 1

    # ---- the parts --------------------------------------------------------------------------------

    @classmethod
    def check_data(cls, attrs: dict, times, kwargs: dict) -> None:
        """The data must be a parametric file (one Re per trajectory) whose frame spacing and grid match
        the model's kwargs."""
        if [str(name) for name in attrs.get("param_names", [])] != ["reynolds"]:
            raise ValueError("ld_ensf trains on parametric trajectories with a Reynolds number each: make them with "
                             "`python train_closure.py generate-parametric --config configs/data_e3_small.yaml`")
        check_trajectory_grid(cls, attrs, times, kwargs)
        if kwargs.get("dynamics", "neural") == "galerkin":
            check_galerkin_flow(attrs, kwargs)

    def fit_normalization(self, norm) -> None:
        """``dynamics = "galerkin"``: the projected equations work in the data's physical units."""
        if self.tendency is not None:
            self.tendency.set_normalization(norm.state_mean, norm.state_std)

    def normalize_params(self, reynolds: torch.Tensor) -> torch.Tensor:
        lo, hi = self.reynolds
        return 2 * (reynolds - lo) / (hi - lo) - 1

    def reynolds_from(self, p: torch.Tensor) -> torch.Tensor:
        lo, hi = self.reynolds
        return lo + (p + 1) * (hi - lo) / 2

    def encode(self, w: torch.Tensor) -> torch.Tensor:
        """Latent codes ``(batch, latent)`` of normalised fields ``(batch, x, y)``."""
        return self.encoder(w)

    def decode(self, z: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """Normalised fields ``(batch, n, n)`` (default: the training grid)."""
        return self.decoder(z, n or self.n)

    def query(self, z: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """The decoded fields ``(batch, queries)`` at any coordinates ``(queries, 2)`` or ``(batch, queries, 2)``:
        the Fourier series of the band-limited output, exact off the grid."""
        return sample_fields(self.decode(z), coords, self.length)

    def advance(self, z: torch.Tensor, p: torch.Tensor, dt: float | None = None) -> torch.Tensor:
        """``z`` ``(batch, latent)`` after ``dt`` (default one frame) at normalised parameters ``p`` ``(batch, 1)``."""
        dt = self.frame_dt if dt is None else dt
        substeps = max(1, round(self.ode_substeps * dt / self.frame_dt))
        if self.tendency is not None:  # the projected equations' stiffness follows the flow's speed (CFL)
            with torch.no_grad():
                substeps = max(substeps, self.tendency.substeps(self.decoder.spectrum(z, self.n), dt))
        return rk4(self.vector_field, z, p, dt, substeps)

    def vector_field(self, z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """``dz/dt`` ``(batch, latent)`` at normalised parameters ``p`` ``(batch, 1)``: the MLP, plus with
        ``dynamics = "galerkin"`` the projected equations ``P N(decode(z))`` (:mod:`latent.galerkin`)."""
        out = self.field(z, p)
        if self.tendency is None:
            return out
        dw_hat = self.tendency.spectral(self.decoder.spectrum(z, self.n), self.reynolds_from(p[:, 0]))
        projection = self._projection(z)
        if projection is None:  # rows with energy outside the band: on the grid
            return out + F.linear(torch.fft.irfft2(dw_hat, s=(self.n, self.n), norm="forward").flatten(1),
                                  self.encoder.linear_weight)
        return out + F.linear(self.decoder.band(dw_hat), projection)

    def _projection(self, like: torch.Tensor) -> torch.Tensor | None:
        """The encoder's linear rows as a map of the decoder's band coefficients ``(latent, coefficients)``
        (Parseval: ``P w = n^2 sum weights * band(P) * band(w)``), or None when the rows are not band-limited;
        cached per device, dtype and version of the rows."""
        rows = self.encoder.linear_weight
        key = (like.device, like.dtype, rows._version, rows.data_ptr())
        cache = self.__dict__.get("_projection_cache")
        if cache is None or cache[0] != key:
            with torch.no_grad():
                fields = rows.to(torch.float64).reshape(-1, self.n, self.n)
                band = self.decoder.coefficients(fields)
                kept = float((band.pow(2) * self.decoder.band_weights(band)).sum()) * self.n ** 2
                total = float(fields.pow(2).sum())
                matrix = None
                if total == 0 or abs(kept - total) <= 1e-9 * total:
                    matrix = (band * self.decoder.band_weights(band) * self.n ** 2).to(like)
            cache = (key, matrix)
            self.__dict__["_projection_cache"] = cache
        return cache[1]

    def standardize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.z_mean) / self.z_std

    def unstandardize(self, u: torch.Tensor) -> torch.Tensor:
        return self.z_mean + self.z_std * u

    def observe(self, y: torch.Tensor, state=None):
        """Sensor readings ``(batch, time, sensors)`` (normalised units) -> mean and variance ``(batch, time,
        latent + 1)`` of the standardised latent and the normalised parameter, and the LSTM state."""
        return self.observer(y, state)

    def sense(self, w: torch.Tensor) -> torch.Tensor:
        """Noise-free readings ``(..., sensors)`` of fields ``(..., x, y)`` at the model's sensor layout."""
        flat = w.reshape(-1, *w.shape[-2:])
        return sample_fields(flat, self.positions.to(w), self.length).to(w.dtype).reshape(*w.shape[:-2], -1)

    def sense_latent(self, z: torch.Tensor) -> torch.Tensor:
        """``sense(decode(z))`` ``(batch, sensors)`` without the grid: the decoder's amplitudes times the fixed
        map from amplitudes to sensor values (the Fourier series at the sensors). Its Jacobian costs a small
        MLP's, not a decode and a spectral interpolation per sensor (LD-EnSF's sensor likelihood: 0.57 s -> ms)."""
        c = self.decoder.amplitudes(z)
        return c @ self._sensor_map(c).T

    def _sensor_map(self, ref: torch.Tensor) -> torch.Tensor:
        """``(sensors, amplitudes)`` for amplitudes like ``ref`` ``(batch, amplitudes)``: the readings of each unit
        amplitude's field, cached per device and dtype."""
        key = (ref.device, ref.dtype)
        cache = self.__dict__.get("_sensor_cache")
        if cache is None or cache[0] != key:
            eye = torch.eye(ref.shape[-1], device=ref.device, dtype=ref.dtype)
            with torch.no_grad():
                fields = torch.fft.irfft2(self.decoder._place(eye, self.n), s=(self.n, self.n), norm="forward")
                cache = (key, self.sense(fields).T.contiguous())
            self.__dict__["_sensor_cache"] = cache
        return cache[1]

    # ---- training ---------------------------------------------------------------------------------

    @torch.no_grad()
    def fit_data(self, state: torch.Tensor, target: torch.Tensor | None = None, frames: int = 4000) -> None:
        """``pod``: start the autoencoder at the POD of the training frames (``state`` ``(batch, time, x, y)``,
        at most ``frames`` of them, each rolled along ``shifts``) restricted to the decoder's band: the linear
        paths of encoder and decoder project onto and sum the leading ``latent`` modes (coordinates in units
        of their RMS amplitude), the nonlinear paths start at zero. No-op without ``pod``."""
        if not self.pod:
            return
        flat = state.reshape(-1, *state.shape[-2:])
        if flat.shape[-1] != self.n:
            raise ValueError(f"the data's {flat.shape[-1]}^2 grid differs from model.kwargs.n = {self.n}; set "
                             f"--set model.kwargs.n={flat.shape[-1]}")
        pick = torch.linspace(0, len(flat) - 1, min(frames, len(flat)), device=flat.device).round().long()
        g = torch.Generator().manual_seed(0)
        snaps = shift_fields(flat[pick].detach().double().cpu(), self.shifts, g)
        snaps = self.decoder.band_limit(snaps)
        if len(snaps) < self.latent:
            raise ValueError(f"{len(snaps)} training frames cannot give {self.latent} POD modes; lower "
                             f"model.kwargs.latent or turn model.kwargs.pod off")
        basis = fit_pod(snaps, self.latent)
        scale = basis.energy.mean().sqrt()
        mean, modes = basis.mean.reshape(self.n, self.n), basis.modes.reshape(-1, self.n, self.n)
        dtype = self.encoder.head.weight.dtype
        self.encoder.init_linear(basis.mean.to(dtype), (basis.modes / scale).to(dtype))
        self.decoder.init_linear(mean.to(dtype), (modes * scale).to(dtype))

    def begin_epoch(self, epoch: int) -> bool:
        phase = 1 if epoch < self.dynamics_epochs else 2
        changed, self.phase = phase != self.phase, phase
        for part in (self.encoder, self.decoder):
            part.requires_grad_(phase == 1 and not self.freeze_autoencoder)
        self.field.requires_grad_(phase == 1)
        return changed

    def loss(self, state: torch.Tensor, target: torch.Tensor):
        """``state`` ``(batch, time, x, y)`` normalised trajectories, ``target`` ``(batch, 1)`` their Re."""
        if state.dim() != 4 or target.shape != (state.shape[0], 1):
            raise ValueError(f"ld_ensf trains on trajectories (batch, time, x, y) with one Re each, got "
                             f"{tuple(state.shape)} and {tuple(target.shape)}")
        p = self.normalize_params(target.to(state.dtype))
        return self._dynamics_loss(state, p) if self.phase == 1 else self._observer_loss(state, p)

    def _dynamics_loss(self, w: torch.Tensor, p: torch.Tensor):
        w = shift_fields(w, self.shifts)  # per trajectory, the same shift for all its frames
        traj = torch.arange(w.shape[0], device=w.device).repeat_interleave(self.windows)  # windows per trajectory
        p, batch, frames = p[traj], len(traj), w.shape[1]
        start = torch.randint(0, frames - self.window + 1, (batch,), device=w.device)
        idx = start[:, None] + torch.arange(self.window, device=w.device)
        win = w[traj[:, None], idx]  # (batch, window, x, y)
        z = self.encode(win.flatten(0, 1)).reshape(batch, self.window, -1)
        recon = F.mse_loss(self.decode(z.flatten(0, 1)), win.flatten(0, 1))
        roll, zk = [], z[:, 0]
        if self.training and self.latent_noise > 0:  # start off the trajectory: the ODE learns to return to it
            zk = zk + self.latent_noise * z.detach().flatten(0, 1).std(0) * torch.randn_like(zk)
        for _ in range(1, self.window):
            zk = self.advance(zk, p)
            roll.append(zk)
        roll = torch.stack(roll, 1)  # (batch, window - 1, latent)
        forecast = F.mse_loss(self.decode(roll.flatten(0, 1)), win[:, 1:].flatten(0, 1))
        latent = F.mse_loss(roll, z[:, 1:]) / z.detach().var().clamp_min(1e-8)
        total = recon + forecast + self.consistency * latent
        return total, {"recon": recon.detach(), "forecast": forecast.detach(), "latent": latent.detach()}

    @torch.no_grad()
    def _track_standardization(self, z: torch.Tensor, momentum: float = 0.02) -> None:
        """Phase 2, training: ``z_mean`` / ``z_std`` from the first batch's codes ``(count, latent)``, then
        an exponential moving average (the codes are frozen, so it converges to the training frames')."""
        mean, std = z.mean(0), z.std(0).clamp_min(1e-6)
        rate = 1.0 if not bool(self.z_fitted) else momentum
        self.z_mean.lerp_(mean, rate)
        self.z_std.lerp_(std, rate)
        self.z_fitted.fill_(1)

    def _observer_loss(self, w: torch.Tensor, p: torch.Tensor):
        w = shift_fields(w, self.shifts)  # per trajectory, the same shift for all its frames
        batch, frames = w.shape[:2]
        with torch.no_grad():
            z = self.encode(w.flatten(0, 1))
            if self.training:
                self._track_standardization(z)
            u = self.standardize(z).reshape(batch, frames, -1)
        truth = torch.cat([u, p[:, None].expand(batch, frames, 1)], -1)
        level = self.obs_noise * (0.5 + torch.rand(batch, 1, 1, device=w.device, dtype=w.dtype))
        y = self.sense(w)
        mean, var, _ = self.observe(y + level * torch.randn_like(y))
        err = (mean - truth).pow(2)
        mse, re_mse = err[..., :-1].mean(), err[..., -1].mean()  # the standardised latent's, the parameter's
        nll = 0.5 * (var.log() + (truth - mean.detach()).pow(2) / var).mean()
        return mse + self.param_weight * re_mse + nll, {"mse": mse.detach(), "nll": nll.detach(),
                                                        "re_mse": re_mse.detach()}

    def predict(self, state: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A-priori check: the autoencoder's reconstruction of ``state`` ``(batch, x, y)``."""
        return self.decode(self.encode(state), state.shape[-1])
