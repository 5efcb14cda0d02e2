"""The ``ld_ensf`` plug-in: LD-EnSF (seed 003) assimilating sparse noisy sensors into a running ensemble.

Hybrid mode (the solver forecasts): at every observation time the solver's members are encoded by the
trained ``ld_ensf`` model (:mod:`latent.ld_model`), their Reynolds numbers joined to the codes, the
LSTM reads the new sensor values, and the latent EnSF analysis (:class:`latent.ld_ensf.LatentFilter`)
updates codes and Reynolds numbers together. The analysis goes back into the solver

- ``inject = "increment"`` (default): ``w <- w + nudge (decode(z_a) - decode(z_f))``, the analysis
  increment only, so the scales the decoder cannot represent are kept from the solver;
- ``inject = "replace"``: ``w <- w + nudge (decode(z_a) - w)``;

``observation = "sensors"`` (default): the analysis sees the sensor readings (noise: the run's observation
variances, or ``sensor_noise`` in normalised units if given, plus ``representation_error``) through the decoder
linearised at the forecast mean, plus, with ``unresolved`` (default), the members' mean unresolved part at the
sensors, ``mean_i sense(w_i - decode(encode(w_i)))``: the solver carries the scales the decoder cannot, so the
latent is fitted only to what it can change (without it the latent is pulled toward the truth's unresolved part
too, and the members' own is treated as noise). ``observation = "lstm"``: the paper's LSTM estimate of the
latent. ``kernel`` (default 0.2) dresses the members in Gaussians so the analysis can leave their span;
``parameter = "separate"`` (default) updates Re by the LSTM's estimate alone (``joint``: with the latent, where
the sensors' nearly one-hot mixture weights make it jump between members; :mod:`latent.ld_ensf`). Those
defaults are the best measured on the E3 twin (``benchmarks/README.md``). With ``estimate_reynolds``
(default), each member continues at its analysed viscosity ``1 / Re``: ``reynolds = "latent"`` (default) from
the latent filter's own estimate (LSTM / joint, as the paper), ``"likelihood"`` from the grid likelihood of the
analysis mean's solver forecasts over the model's Re range (:mod:`closure.reynolds_likelihood`, the physical
filters' default; the members' prior Re log-uniform, drawn at the first call). On the E3 twin (9 truths,
``configs/train_ld_ensf_pod512.yaml``'s model) both end about 20 % off (likelihood 19.7 %, latent 21.6 %) with
the same state error, the likelihood at 1.7-2x the time per cycle: it is only as good as the analysis mean,
and LD-EnSF's errors bias it low (``benchmarks/README.md``, "Re by a grid likelihood"). The pure-latent mode
(no solver) is :func:`latent.ld_ensf.run_latent` (``benchmarks/ld_ensf_twin.py``).
The log is the assimilation plug-ins' plus ``reynolds`` (ensemble mean) and ``reynolds_spread``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

import torch

from .assimilation import Assimilation
from .reynolds_likelihood import POINTS
from .registry import register

log = logging.getLogger(__name__)

__all__ = ["LDEnSF"]


@register("ld_ensf")
class LDEnSF(Assimilation):
    """LD-EnSF in hybrid mode (module docstring). EnSF options as :class:`latent.ld_ensf.LatentFilter`."""

    requires_checkpoint: ClassVar[bool] = True  # trainable with train_closure.py train --closure ld_ensf
    INJECT = ("increment", "replace")
    REYNOLDS = ("latent", "likelihood")

    def __init__(self, grid, equation, observations=None, nudge: float = 1.0, checkpoint: str | None = None,
                 device=None, inject: str = "increment", estimate_reynolds: bool = True, steps: int = 100,
                 eps_alpha: float = 0.01, eps_beta: float = 0.0, clip: float | None = None,
                 guidance: str = "tweedie", inflation: float = 1.0, param_jitter: float = 0.02,
                 observation: str = "sensors", sensor_noise: float | None = None,
                 representation_error: float = 0.15, kernel: float = 0.2, implicit: bool = False,
                 reproject: bool = False, unresolved: bool = True, parameter: str = "separate",
                 kernel_scale: str = "fixed", sampler: str = "ensf", reynolds: str = "latent",
                 reynolds_points: int = POINTS) -> None:
        super().__init__(grid, equation, observations, nudge)
        from .learned import load_plugin_model

        if inject not in self.INJECT:
            raise ValueError(f"unknown inject mode {inject!r}; choose one of {list(self.INJECT)}")
        if reynolds not in self.REYNOLDS:
            raise ValueError(f"unknown reynolds estimate {reynolds!r}; choose one of {list(self.REYNOLDS)}")
        ckpt, self.device, self.model = load_plugin_model(
            self.name, checkpoint, grid, device, "`python train_closure.py train --closure ld_ensf --data "
            "data/e3_small.h5 --config configs/train_ld_ensf.yaml`")
        self._check_sensors()
        self.norm, self.checkpoint = ckpt.normalization, str(checkpoint)
        self.inject, self.estimate_reynolds, self.unresolved = inject, bool(estimate_reynolds), bool(unresolved)
        self.filter_options = dict(steps=int(steps), eps_alpha=float(eps_alpha), eps_beta=float(eps_beta), clip=clip,
                                   guidance=guidance, inflation=float(inflation), param_jitter=float(param_jitter),
                                   observation=observation, sensor_noise=sensor_noise,
                                   representation_error=float(representation_error), kernel=float(kernel),
                                   implicit=bool(implicit), reproject=bool(reproject), parameter=parameter,
                                   kernel_scale=kernel_scale, sampler=sampler)
        self.sensor_noise_given = sensor_noise is not None
        self.filter = None
        self.last_t: float | None = None
        self.history.update(reynolds=[], reynolds_spread=[])
        if self.estimate_reynolds and reynolds == "likelihood":  # the base class estimates Re, over the model's range
            self.estimate_reynolds_by(self.model.reynolds, update="likelihood", points=reynolds_points)

    def _check_sensors(self) -> None:
        """The LSTM was trained on one sensor layout: the run must observe the same points."""
        given = self.observations.operator.positions.to(torch.float64).cpu()
        want = self.model.positions.to(torch.float64).cpu()
        if given.shape != want.shape or not torch.allclose(given, want, atol=1e-4 * self.grid.length):
            raise ValueError(f"ld_ensf's observation encoder was trained on the sensor layout {self.model.sensors!r} "
                             f"({len(want)} points); this run observes {len(given)} other points: use --sensors "
                             f"{self.model.sensors} or train a model for this layout (model.kwargs.sensors)")

    def analysis(self, X, HX, obs, state):
        from latent.ld_ensf import LatentFilter

        members, n = X.shape[0], self.grid.n
        model, norm = self.model, self.norm
        w = norm.state(X.reshape(members, n, n).to(self.device, torch.float32))
        if self.filter is None:
            generator = torch.Generator().manual_seed(int(self.observations.seed) * 7919 + members)
            self.filter = LatentFilter(model, members, generator, **self.filter_options)
            self.filter.initialize(w)
        else:
            interval = obs.t - self.last_t
            if abs(interval - model.frame_dt) > 1e-6 * model.frame_dt:
                log.warning("ld_ensf: observations %.4g apart, the observation encoder was trained on %.4g",
                            interval, model.frame_dt)
            self.filter.set_latent(w)
            self.filter.jitter_parameters()
        self.last_t = obs.t
        forecast = self.filter.fields(n)
        noise_var = None if self.sensor_noise_given else obs.r.to(self.device, torch.float64) / norm.state_std ** 2
        offset = None  # the members' mean unresolved part at the sensors (sensors,): HX is the members' readings
        if self.unresolved:  # and the sensing is linear, so the decoded part is sensed once, on the mean
            offset = norm.state(HX.mean(0).to(self.device, torch.float32)) - model.sense(forecast.mean(0))
        self.filter.assimilate(norm.state(obs.y.to(self.device, torch.float32)), noise_var, offset)
        analysed = self.filter.fields(n)
        base = forecast if self.inject == "increment" else w
        new = w + (analysed - base)  # the base class moves the state the fraction nudge of the way
        if self.likelihood is None:  # with the grid likelihood the base class logs and sets Re
            reynolds = self.filter.reynolds()
            self.history["reynolds"].append(float(reynolds.mean()))
            self.history["reynolds_spread"].append(float(reynolds.std()))
            if self.estimate_reynolds:
                lo, hi = model.reynolds
                self.equation.set_viscosity(1.0 / reynolds.clamp(lo / 2, 2 * hi).to(torch.float64))
        return (new * norm.state_std + norm.state_mean).reshape(members, -1).to(X)

    @classmethod
    def example_checkpoint(cls, path: str | Path, grid, equation, seed: int = 0) -> Path:
        """An untrained tiny model for ``grid`` observing a 4 x 4 lattice (contract tests, smoke runs)."""
        from latent.models import build_model

        from .learned import save_example_checkpoint

        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = build_model(cls.name, latent=4, width=4, modes=min(4, grid.n // 2 - 1), hidden=16, ode_hidden=16,
                                lstm_hidden=8, n=grid.n, length=grid.length, sensors="regular:4x4")
        return save_example_checkpoint(path, cls.name, model, grid, equation)

    def describe(self) -> str:
        return (f"{super().describe()}, checkpoint {self.checkpoint}, inject {self.inject}, "
                f"observation {self.filter_options['observation']}, unresolved {self.unresolved}")
