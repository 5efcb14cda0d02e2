"""Assimilation plug-ins: at every observation time, replace the running ensemble by its analysis.

They are ``kind = "state"`` plug-ins that read sensor data from a :class:`~solvers.twin.SensorData`
(``observations`` option; ``simulate.py --observe TRUTH.h5`` builds it) and run one ensemble analysis
step of :mod:`latent.analysis` on the flattened fields ``(members, x*y)``. Calls at times without an
observation change nothing. Each analysis is logged in ``history`` DAPPER-style: forecast and analysis
``rmse`` of the ensemble mean against the truth, ``spread`` (RMS of the members about their mean), the
relative RMSE (``rmse / rms(truth)``, LD-EnSF's metric) and the wall time of the analysis. Every
plug-in takes ``nudge`` in ``(0, 1]``: the state moves that fraction of the way to the analysis
(``1``, the default, replaces it).

- ``enkf``: stochastic EnKF (perturbed observations), global or with covariance localisation.
- ``letkf``: local ensemble transform KF, Gaspari-Cohn R-localisation with cut-off ``radius``.
- ``ensf``: ensemble score filter in physical space (:mod:`latent.ensf`), the full-space baseline of
  LD-EnSF: ``steps`` pseudo-time steps, ``eps_alpha``, ``eps_beta``, ``clip``, ``guidance``.

Joint state + parameter estimation: ``reynolds_prior: [lo, hi]`` gives every member its own Reynolds number
``Re = 1 / nu``, drawn log-uniformly at the first call (:mod:`closure.reynolds`), and estimates it with the
state; the estimate sets the members' viscosities for the next forecast. The history then also logs
:data:`~closure.reynolds.REYNOLDS_KEYS`. ``null`` (the default) leaves every plug-in exactly as without the
option. ``reynolds_update`` chooses how:

- ``likelihood`` (default): Re's posterior on a grid of ``reynolds_points`` values, from the sensors'
  likelihood under forecasts of the analysis mean, the members at its quantiles
  (:mod:`closure.reynolds_likelihood`, with the measurements: on the 64^2 E3 twin 1.6-1.8 % off where
  augmentation ends 13-15 % off). One forecast of ``reynolds_points`` members per cycle.
- ``average``, ``global``: state augmentation (:mod:`closure.reynolds`: ``log Re`` appended to each member's
  state, ``reynolds_jitter`` its random walk per analysis); a global parameter in a local filter.
  ``average``: every grid point updates its own copy with its local gain and the parameter takes their
  mean (``letkf``: the mean of the points' transforms; ``enkf`` with ``radius``: each sensor's taper
  averaged over the grid). ``global``: one unlocalised update with all sensors. Measured on the 32^2 twin
  of ``tests/test_assimilation.py``: :mod:`closure.reynolds` (``likelihood``: 121.3 +- 2.1 for 120).
"""
from __future__ import annotations

import math
import time
from typing import ClassVar

import torch

from latent.analysis import (enkf_analysis, enkf_update, ensemble_transform, gaspari_cohn, letkf_analysis,
                             letkf_transforms, perturbed_innovations, periodic_distance)
from solvers.observation import grid_positions

from .base import FlowState, Plugin
from .registry import register
from .reynolds import JITTER, REYNOLDS_KEYS, ReynoldsParameter
from .reynolds_likelihood import POINTS, ReynoldsLikelihood

__all__ = ["Assimilation", "EnKF", "LETKF", "EnSF", "HISTORY_KEYS"]

HISTORY_KEYS = ("time", "rmse_f", "rmse_a", "spread_f", "spread_a", "rel_rmse_f", "rel_rmse_a", "seconds")
REYNOLDS_UPDATES = ("average", "global", "likelihood")


class Assimilation(Plugin):
    """Base class: observation lookup, flattening, the analysis log. Subclasses define ``analysis``."""

    kind: ClassVar[str] = "state"
    default_every: ClassVar[int] = 10
    needs_observations: ClassVar[bool] = True  # simulate.py passes ``observations`` built from --observe
    min_members: ClassVar[int] = 2

    def __init__(self, grid, equation, observations=None, nudge: float = 1.0,
                 reynolds_prior: list[float] | None = None, reynolds_jitter: float = JITTER,
                 reynolds_update: str = "likelihood", reynolds_points: int = POINTS) -> None:
        super().__init__(grid, equation)
        if observations is None:
            raise ValueError(f"{self.name} assimilates sensor data: give a truth trajectory with --observe TRUTH.h5 "
                             f"(and --sensors, --noise, --obs-every)")
        if not 0 < nudge <= 1:
            raise ValueError(f"nudge must be in (0, 1] (1 replaces the state by the analysis), got {nudge}")
        if reynolds_update not in REYNOLDS_UPDATES:
            raise ValueError(f"unknown reynolds_update {reynolds_update!r}; choose one of {list(REYNOLDS_UPDATES)}")
        self.observations, self.nudge = observations, float(nudge)
        self.history: dict[str, list[float]] = {k: [] for k in HISTORY_KEYS}
        self.reynolds = self.likelihood = None
        self.reynolds_update = reynolds_update
        if reynolds_prior is not None:
            self.estimate_reynolds_by(reynolds_prior, reynolds_jitter, reynolds_update, reynolds_points)

    def estimate_reynolds_by(self, prior, jitter: float = JITTER, update: str = "likelihood",
                             points: int = POINTS) -> None:
        """Estimate Re from the log-uniform ``prior`` ``[lo, hi]`` (module doc; ``ld_ensf``: its model's range)."""
        self.reynolds = ReynoldsParameter(prior, jitter)
        self.likelihood = ReynoldsLikelihood(prior, points) if update == "likelihood" else None
        self.reynolds_update = update
        self.history.update({k: [] for k in REYNOLDS_KEYS})

    @classmethod
    def check_members(cls, members: int) -> None:
        """``ValueError`` unless an ensemble of ``members`` is large enough for this plug-in."""
        if members < cls.min_members:
            raise ValueError(f"closure {cls.name!r} needs an ensemble of at least {cls.min_members} members, got "
                             f"{members}; use --ensemble 20 (E3)")

    @staticmethod
    def example_observations(path, grid, truth: torch.Tensor, times, sensors: str = "regular:4x4",
                             noise: float = 0.1):
        """Sensor data of ``truth`` ``(time, x, y)`` at ``times`` written to ``path`` (.h5): for tests and demos."""
        from solvers.io import TrajectoryWriter
        from solvers.twin import sensor_data

        with TrajectoryWriter(path, 1, grid.n, {"grid_length": grid.length, "grid_n": grid.n}) as writer:
            for t, w in zip(times, truth):
                writer.append(float(t), w[None].detach().cpu().numpy())
        return sensor_data(str(path), grid, sensors, noise, "additive", seed=0, tol=1e-9)

    @classmethod
    def example_options(cls, truth_path) -> dict:
        """Extra options for a demo run on :meth:`example_observations`'s truth file (tests)."""
        return {}

    def analysis(self, X: torch.Tensor, HX: torch.Tensor, obs, state: FlowState) -> torch.Tensor:
        """Analysis ``(members, dim)`` float64 of the forecast ``X`` with observed values ``HX`` ``(members, obs)``;
        ``dim`` is ``x*y`` plus one (the last column) with ``reynolds_prior``."""
        raise NotImplementedError

    @property
    def parameters(self) -> int:
        """Columns appended to the flattened state: 1 (``log Re``) with ``reynolds_prior`` (unless estimated by
        ``likelihood``), else 0."""
        return 0 if self.reynolds is None or self.likelihood is not None else 1

    def __call__(self, state: FlowState) -> torch.Tensor | None:
        if self.reynolds is not None:
            self.reynolds.start(state)  # first call: draw the members' Re before any forecast
        obs = self.observations.at(state.t)
        if obs is None:
            return None
        members = state.w.shape[0]
        self.check_members(members)
        if not torch.isfinite(state.w).all():
            raise ValueError(f"{self.name}: the forecast ensemble is not finite at t={state.t:.4g} (a member blew up "
                             f"between analyses); assimilate more often or reduce dt")
        start = time.perf_counter()
        HX = self.observations.operator(state.w).to(torch.float64)
        X = state.w.reshape(members, -1).to(torch.float64)
        if self.likelihood is not None:
            self.likelihood.observe(state, obs, self.observations.operator, HX)
        if not self.parameters:
            Xa = self._nudged(X, self.analysis(X, HX, obs, state))
        else:
            Z, s = self.reynolds.augment(X, state)
            Xa = self.reynolds.update(self._nudged(Z, self.analysis(Z, HX, obs, state)), s, state)
        if self.likelihood is not None:
            self.likelihood.remember(Xa.mean(0).reshape(state.w.shape[1:]).to(state.w.dtype), state.t)
            self.likelihood.assign(state.equation, self.reynolds.reynolds(state.equation, members))
        seconds = time.perf_counter() - start
        self._log(obs, X, Xa, seconds)
        if self.reynolds is not None:
            scores = (self.likelihood.scores() if self.likelihood is not None and self.likelihood.cycles
                      else self.reynolds.scores(state.equation, members))
            for key, value in zip(REYNOLDS_KEYS, scores):
                self.history[key].append(value)
        return Xa.reshape(state.w.shape).to(state.w.dtype)

    def _inflated(self, X: torch.Tensor, inflation: float) -> torch.Tensor:
        """``X`` ``(members, dim)`` with the field's anomalies times ``sqrt(inflation)``. The parameter columns keep
        theirs: their spread is the random walk's (``reynolds_jitter``); inflating a weakly observed parameter
        too makes its spread grow geometrically (64^2 twin, inflation 1.5: Re spread 30 -> 51, members at the
        clamps). For the LETKF, inflating the prior covariance equals inflating the anomalies of ``X`` and
        ``HX``, so the parameter's transform is divided by ``sqrt(inflation)`` instead."""
        if not self.parameters:
            return _inflate(X, inflation)
        return torch.cat([_inflate(X[:, :-self.parameters], inflation), X[:, -self.parameters:]], dim=1)

    def _nudged(self, X: torch.Tensor, Xa: torch.Tensor) -> torch.Tensor:
        """``X + nudge (Xa - X)`` (``Xa`` itself for ``nudge = 1``)."""
        return Xa if self.nudge == 1 else X + self.nudge * (Xa - X)

    def _log(self, obs, X: torch.Tensor, Xa: torch.Tensor, seconds: float) -> None:
        truth = obs.truth.reshape(-1).to(torch.float64)
        scale = truth.pow(2).mean().sqrt().item()
        f, a = ensemble_scores(X, truth), ensemble_scores(Xa, truth)
        for key, value in zip(HISTORY_KEYS, (obs.t, f[0], a[0], f[1], a[1], f[0] / scale, a[0] / scale, seconds)):
            self.history[key].append(float(value))

    def describe(self) -> str:
        op = self.observations.operator
        about = "" if self.reynolds is None else f", {(self.likelihood or self.reynolds).describe()}"
        return (f"{self.name} ({self.kind}, default every {self.default_every}), {op.count} sensors "
                f"({100 * op.fraction():.2g} % of the grid), noise {op.noise:g} {op.kind}{about}")


def ensemble_scores(X: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """``(rmse of the ensemble mean, spread)`` of ``X`` ``(members, dim)`` against ``truth`` ``(dim,)``;
    spread is the RMS over components of the members' standard deviation (unbiased)."""
    rmse = (X.mean(0) - truth).pow(2).mean().sqrt().item()
    spread = X.var(0, unbiased=X.shape[0] > 1).mean().sqrt().item()
    return rmse, spread


def _inflate(X: torch.Tensor, inflation: float) -> torch.Tensor:
    """``X`` ``(members, dim)`` with its anomalies about the mean multiplied by ``sqrt(inflation)``."""
    mean = X.mean(0)
    return mean + math.sqrt(inflation) * (X - mean)


def _localisation(grid, positions: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaspari-Cohn tapers, zero beyond ``radius``: grid points x sensors ``(x*y, sensors)`` (row-major like
    ``reshape(members, -1)``) and sensors x sensors."""
    xy = gaspari_cohn(periodic_distance(grid_positions(grid), positions, grid.length), radius / 2)
    yy = gaspari_cohn(periodic_distance(positions, positions, grid.length), radius / 2)
    return xy.to(grid.device), yy.to(grid.device)


def _check_tuning(radius: float | None, inflation: float) -> None:
    if (radius is not None and not radius > 0) or not inflation >= 1:
        raise ValueError(f"need radius > 0 (or null) and inflation >= 1, got radius={radius}, inflation={inflation}")


@register("enkf")
class EnKF(Assimilation):
    """Stochastic EnKF with perturbed observations (Burgers et al. 1998), multiplicative ``inflation``;
    ``radius``: Gaspari-Cohn covariance localisation with that cut-off (``null``: global; ``log Re``:
    ``reynolds_update``, see the module doc)."""

    def __init__(self, grid, equation, observations=None, radius: float | None = None,
                 inflation: float = 1.0, nudge: float = 1.0, reynolds_prior: list[float] | None = None,
                 reynolds_jitter: float = JITTER, reynolds_update: str = "likelihood", reynolds_points: int = POINTS):
        super().__init__(grid, equation, observations, nudge, reynolds_prior, reynolds_jitter, reynolds_update,
                         reynolds_points)
        _check_tuning(radius, inflation)
        self.radius, self.inflation = radius, float(inflation)
        self.localize = None if radius is None else _localisation(grid, self.observations.operator.positions, radius)

    def analysis(self, X, HX, obs, state):
        X, HX = self._inflated(X, self.inflation), _inflate(HX, self.inflation)  # linear H: inflate both alike
        if not self.parameters or self.localize is None:
            return enkf_analysis(X, obs.y, HX, obs.r, state.generator, self.localize)
        d = perturbed_innovations(HX, obs.y, obs.r, state.generator)  # the same perturbed observations for both
        p = self.parameters
        rho_xy, rho_yy = self.localize
        average = (rho_xy.mean(0, keepdim=True).expand(p, -1), rho_yy)  # (p, sensors): the grid-mean taper
        param = enkf_update(X[:, -p:], HX, d, obs.r, average if self.reynolds_update == "average" else None)
        return torch.cat([enkf_update(X[:, :-p], HX, d, obs.r, self.localize), param], dim=1)


@register("letkf")
class LETKF(Assimilation):
    """LETKF (Hunt et al. 2007): every grid point its own ensemble transform from the sensors within
    ``radius`` (Gaspari-Cohn weights, zero beyond ``radius``; default a quarter of the box), with
    multiplicative covariance ``inflation``. The global ``log Re`` of ``reynolds_prior``: the mean of the grid
    points' transforms, or the global ETKF's (``reynolds_update``, see the module doc)."""

    def __init__(self, grid, equation, observations=None, radius: float | None = None,
                 inflation: float = 1.0, nudge: float = 1.0, reynolds_prior: list[float] | None = None,
                 reynolds_jitter: float = JITTER, reynolds_update: str = "likelihood", reynolds_points: int = POINTS):
        super().__init__(grid, equation, observations, nudge, reynolds_prior, reynolds_jitter, reynolds_update,
                         reynolds_points)
        radius = grid.length / 4 if radius is None else float(radius)
        _check_tuning(radius, inflation)
        self.radius, self.inflation = radius, float(inflation)
        self.weights = _localisation(grid, self.observations.operator.positions, radius)[0]  # (x*y, sensors)

    def analysis(self, X, HX, obs, state):
        if not self.parameters:
            return letkf_analysis(X, HX, obs.y, obs.r, self.weights, self.inflation)
        T = letkf_transforms(HX, obs.y, obs.r, self.weights, self.inflation)  # (x*y, members, members)
        if self.reynolds_update == "average":
            T_p = T.mean(0, keepdim=True)
        else:
            T_p = letkf_transforms(HX, obs.y, obs.r, None, self.inflation)  # (1, members, members)
        p = self.parameters  # the inflation is the field's: T_p / sqrt(inflation) (see _inflated)
        return torch.cat([ensemble_transform(X[:, :-p], T),
                          ensemble_transform(X[:, -p:], T_p / math.sqrt(self.inflation))], dim=1)


@register("ensf")
class EnSF(Assimilation):
    """Ensemble score filter (Bao et al. 2024) on the full state: new members by a reverse-time SDE guided
    by the ensemble's mixture score and the likelihood of the sensors (``guidance``: ``damped`` as the
    paper, ``tweedie`` exact for Gaussian priors); ``steps`` Euler-Maruyama steps, ``clip`` on the
    likelihood score, multiplicative ``inflation`` of the forecast. With ``reynolds_prior`` the sensors see the
    appended ``log Re`` through a zero column of ``H``."""

    def __init__(self, grid, equation, observations=None, steps: int = 100, eps_alpha: float = 0.05,
                 eps_beta: float = 0.0, clip: float | None = None, guidance: str = "damped",
                 inflation: float = 1.0, nudge: float = 1.0, reynolds_prior: list[float] | None = None,
                 reynolds_jitter: float = JITTER, reynolds_update: str = "likelihood", reynolds_points: int = POINTS):
        super().__init__(grid, equation, observations, nudge, reynolds_prior, reynolds_jitter, reynolds_update,
                         reynolds_points)
        from latent.ensf import GUIDANCE

        _check_tuning(None, inflation)
        if guidance not in GUIDANCE:
            raise ValueError(f"unknown EnSF guidance {guidance!r}; choose one of {list(GUIDANCE)}")
        self.options = dict(steps=int(steps), eps_alpha=float(eps_alpha), eps_beta=float(eps_beta),
                            clip=clip, guidance=guidance)
        self.inflation = float(inflation)
        H = self.observations.operator.matrix().to(torch.float64)  # (sensors, x*y)
        self.H = torch.cat([H, H.new_zeros(H.shape[0], self.parameters)], dim=1)  # (sensors, x*y + parameters)

    def analysis(self, X, HX, obs, state):
        from latent.ensf import ensf_analysis

        X = self._inflated(X, self.inflation)
        return ensf_analysis(X, obs.y.to(X), self.H.to(X.device), obs.r.to(X), state.generator, **self.options)
