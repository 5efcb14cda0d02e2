"""Reconstruction plug-ins: rebuild the full field from the sensors and re-initialise or nudge the run.

At every observation time (``simulate.py --observe TRUTH.h5 --sensors ...``) the field is reconstructed
from the noisy sensor values alone, and every member moves toward it:
``w <- w + nudge (reconstruction - w)`` (``nudge = 1``: replace). The log is the assimilation plug-ins'
(:mod:`closure.assimilation`): ``rmse_f`` / ``rmse_a`` before and after, relative RMSE, seconds.

- ``interp``: ``method = "cubic"`` (periodic Clough-Tocher) or ``"fourier"`` (ridge fit of the Fourier
  modes ``|k| <= modes``), :mod:`solvers.reconstruction`;
- ``gappy_pod``: least squares in a POD basis fitted to the frames of a trajectory file or a pair file's train
  split (``basis``, ``modes``, Tikhonov ``ridge``), :mod:`latent.pod`; ``background: forecast`` corrects each
  member's forecast instead (optimal interpolation, the sensors' history through the solver).
  ``python -m latent.pod`` places sensors by pivoted QR of that basis and writes a file for ``--sensors``;
- ``sparse_recon``: the learned Senseiver-style model of :mod:`latent.sparse_recon` (``checkpoint`` from
  ``train_closure.py train --closure sparse_recon``), any sensor layout, with a per-point standard
  deviation; ``ensemble = "sample"`` gives every member its own draw from that uncertainty (smooth
  fields: :func:`latent.sparse_recon.correlated_noise` of width the mean sensor spacing), ``"first"``
  does so at the first observation only (an ensemble initialisation) and nudges toward the mean after.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import ClassVar

import torch

from .assimilation import Assimilation
from .registry import register

log = logging.getLogger(__name__)

__all__ = ["Reconstruction", "Interpolation", "GappyPOD", "SparseReconPlugin"]


class Reconstruction(Assimilation):
    """Base: ``reconstruct(y, noise_var) -> (1, x, y)``; the analysis nudges every member toward it."""

    min_members: ClassVar[int] = 1

    def reconstruct(self, y: torch.Tensor, noise_var: float) -> torch.Tensor:
        """The field ``(1, x, y)`` from sensor values ``y`` ``(sensors,)`` with noise variance ``noise_var``
        (the observations' mean error variance; methods with a statistical prior weigh the readings by it)."""
        raise NotImplementedError

    def analysis(self, X, HX, obs, state):
        field = self.reconstruct(obs.y, float(obs.r.mean())).reshape(1, -1).to(X)
        return field.expand_as(X)  # the base class nudges: w + nudge (field - w)


@register("interp")
class Interpolation(Reconstruction):
    """Interpolation of the sensors: ``cubic`` (Clough-Tocher over the periodic images) or ``fourier``
    (ridge least squares of the modes ``|k_x|, |k_y| <= modes``)."""

    def __init__(self, grid, equation, observations=None, nudge: float = 1.0, method: str = "cubic",
                 modes: int = 4, ridge: float = 1e-8) -> None:
        super().__init__(grid, equation, observations, nudge)
        if method not in ("cubic", "fourier"):
            raise ValueError(f"unknown interp method {method!r}; choose 'cubic' or 'fourier'")
        self.method, self.modes, self.ridge = method, int(modes), float(ridge)

    def reconstruct(self, y, noise_var):
        from solvers.reconstruction import cubic_interpolate, fourier_fit

        positions = self.observations.operator.positions
        if self.method == "cubic":
            return cubic_interpolate(y[None], positions, self.grid)
        return fourier_fit(y[None], positions, self.grid, self.modes, self.ridge)


@register("gappy_pod")
class GappyPOD(Reconstruction):
    """Gappy POD (Everson & Sirovich 1995) in the leading ``modes`` POD modes of the frames of ``basis``
    (a project .h5 trajectory on this grid, every member and time); ``ridge``: Tikhonov weight for noisy
    sensors, or ``posterior``: the posterior mean under the snapshots' Gaussian prior for the observations'
    own noise variance (:func:`latent.pod.posterior_ridge`; no tuning); ``shifts`` / ``copies``: add
    ``copies - 1`` copies of the snapshots shifted along the flow's symmetry
    (:func:`solvers.symmetry.augment_shifts`; E1 at 1 % sensors: rel_l2 0.11 -> 0.07).

    ``background``: ``mean`` reconstructs from the sensors alone, about the snapshots' mean; ``forecast`` does so
    at the first observation only and after it fits the modes to each member's misfit at the sensors and adds
    them to the member (optimal interpolation / 3D-Var with ``forecast_error`` x the snapshots' covariance as
    the forecast's error covariance; ``auto``: estimated from the innovations, :class:`latent.pod.ForecastErrorScale`):
    cycled with the solver it accumulates the sensors' history (``benchmarks/reconstruction_history.py``)."""

    BACKGROUNDS = ("mean", "forecast")

    def __init__(self, grid, equation, observations=None, nudge: float = 1.0, basis: str | None = None,
                 modes: int = 20, ridge: float | str = 1e-3, shifts: str = "none", copies: int = 1,
                 background: str = "mean", forecast_error: float | str = "auto") -> None:
        super().__init__(grid, equation, observations, nudge)
        if background not in self.BACKGROUNDS:
            raise ValueError(f"unknown gappy_pod background {background!r}; choose one of {list(self.BACKGROUNDS)}")
        if forecast_error != "auto" and not (isinstance(forecast_error, (int, float)) and forecast_error > 0):
            raise ValueError(f"gappy_pod forecast_error must be 'auto' or a number > 0 (a fraction of the snapshots' "
                             f"variance), got {forecast_error!r}")
        self.background, self.calls = background, 0
        self.forecast_error = forecast_error if forecast_error == "auto" else float(forecast_error)
        from latent.pod import fit_pod, load_snapshots

        if basis is None:
            raise ValueError("gappy_pod needs snapshots for its basis: --set closure.options.basis=TRAJECTORY.h5 "
                             "(a run of the same flow, e.g. a simulate.py output)")
        if isinstance(ridge, str) and ridge != "posterior":
            raise ValueError(f"gappy_pod ridge must be a number >= 0 or 'posterior', got {ridge!r}")
        from solvers.symmetry import augment_shifts

        self.basis = fit_pod(augment_shifts(load_snapshots(basis, grid), shifts, int(copies)), modes)
        self.rows = self.observations.operator.matrix().to(torch.float64)  # (sensors, x*y)
        from latent.pod import ForecastErrorScale

        self.scale = ForecastErrorScale(self.basis) if self.forecast_error == "auto" else None
        self.sensor_variance = self.basis.sensor_variance(self.rows) if self.scale is not None else None
        self.ridge = ridge if ridge == "posterior" else float(ridge)

    @classmethod
    def example_options(cls, truth_path) -> dict:
        return {"basis": str(truth_path), "modes": 1}

    def _ridge(self, noise_var: float) -> float:
        from latent.pod import posterior_ridge

        return posterior_ridge(self.basis, noise_var) if self.ridge == "posterior" else self.ridge

    def reconstruct(self, y, noise_var):
        from latent.pod import gappy_reconstruct

        return gappy_reconstruct(self.basis, y[None].to(torch.float64), self.rows, self._ridge(noise_var))

    def analysis(self, X, HX, obs, state):
        self.calls += 1
        if self.background == "mean" or self.calls == 1:  # the first estimate: from the sensors alone
            return super().analysis(X, HX, obs, state)
        from latent.pod import gappy_reconstruct

        y, noise_var = obs.y.to(torch.float64).expand(X.shape[0], -1), float(obs.r.mean())
        if self.scale is None:
            a = self.forecast_error
        else:  # each member its own forecast error
            innovations = y - X @ self.rows.T  # (members, sensors)
            a = X.new_tensor([self.scale.update(m, d, noise_var, self.sensor_variance) for m, d in enumerate(innovations)])
        ridge = self._ridge(noise_var / a) if self.ridge == "posterior" else self.ridge / a  # B = a C
        return gappy_reconstruct(self.basis, y, self.rows, ridge, background=X).reshape(X.shape)

    def describe(self) -> str:
        about = "" if self.background == "mean" else f" (forecast_error {self.forecast_error})"
        return f"{super().describe()}, background {self.background}{about}"


@register("sparse_recon")
class SparseReconPlugin(Reconstruction):
    """Learned sparse reconstruction (:class:`latent.sparse_recon.SparseRecon`) from ``checkpoint``, on
    ``device``; ``ensemble``: ``mean`` (every member to the mean), ``sample`` (each member to its own draw
    of mean + std x smooth noise) or ``first`` (draws at the first observation, the mean after)."""

    requires_checkpoint: ClassVar[bool] = True  # trainable with train_closure.py train --closure sparse_recon
    ENSEMBLE = ("mean", "sample", "first")

    def __init__(self, grid, equation, observations=None, nudge: float = 1.0, checkpoint: str | None = None,
                 device=None, ensemble: str = "mean") -> None:
        super().__init__(grid, equation, observations, nudge)
        from latent.checkpoint import compare_flows

        from .learned import load_plugin_model

        if ensemble not in self.ENSEMBLE:
            raise ValueError(f"unknown ensemble mode {ensemble!r}; choose one of {list(self.ENSEMBLE)}")
        ckpt, self.device, self.model = load_plugin_model(
            self.name, checkpoint, grid, device, "`python train_closure.py train --closure sparse_recon --data FILE`")
        differ = compare_flows(ckpt.flow, {"nu": equation.nu, "drag": equation.drag})
        if differ:  # the model knows the training flow's statistics; another flow is allowed but worth a word
            log.warning("sparse_recon: checkpoint trained on another flow (%s)", "; ".join(differ))
        self.norm, self.checkpoint, self.ensemble = ckpt.normalization, str(checkpoint), ensemble
        self.calls = 0

    @torch.no_grad()
    def reconstruct_with_std(self, y: torch.Tensor, noise_var: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation ``(1, x, y)`` in physical units from sensor values ``(sensors,)`` with
        noise variance ``noise_var`` (physical units; a model with a POD prior uses it, default its own)."""
        positions = (self.observations.operator.positions / self.grid.length).to(self.device, torch.float32)
        values = self.norm.state(y.to(self.device, torch.float32))[None]
        scaled = None if noise_var is None else noise_var / self.norm.state_std ** 2
        mean, std = self.model.reconstruct(values, positions, self.grid.n, noise_var=scaled)
        scale = self.norm.state_std
        return mean * scale + self.norm.state_mean, std * scale

    def reconstruct(self, y, noise_var):
        return self.reconstruct_with_std(y, noise_var)[0]

    def analysis(self, X, HX, obs, state):
        self.calls += 1
        mean, std = (t.reshape(1, -1).to(X) for t in self.reconstruct_with_std(obs.y, float(obs.r.mean())))
        if self.ensemble == "mean" or (self.ensemble == "first" and self.calls > 1):
            return mean.expand_as(X)
        from latent.sparse_recon import correlated_noise
        from solvers.random import normal_like

        n, spacing = self.grid.n, self.grid.length / math.sqrt(self.observations.operator.count)
        white = normal_like(torch.empty(X.shape[0], n, n, dtype=X.dtype, device=X.device), state.generator)
        return mean + std * correlated_noise(white, self.grid.length, spacing).reshape(X.shape)

    @classmethod
    def example_checkpoint(cls, path: str | Path, grid, equation, seed: int = 0) -> Path:
        """An untrained tiny model that fits ``grid`` (contract tests, smoke runs)."""
        from latent.models import build_model

        from .learned import save_example_checkpoint

        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = build_model(cls.name, latents=4, width=8, heads=2, blocks=1, frequencies=2)
        return save_example_checkpoint(path, cls.name, model, grid, equation)

    def describe(self) -> str:
        return f"{super().describe()}, checkpoint {self.checkpoint}, ensemble {self.ensemble}"
