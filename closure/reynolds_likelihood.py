"""Reynolds-number estimation by a grid likelihood: Re's posterior from forecasts of the analysis mean.

State augmentation (:mod:`closure.reynolds`) learns Re from the members' sample covariance with the sensors.
In a chaotic flow with 20 members that covariance mostly reflects the members' different states, not their
different Re: on the E3 twin (``benchmarks/ld_ensf_twin.py``) the EnKF and the LETKF end 13-15 % off after
40 cycles. Here Re is a static parameter with its own Bayesian update on a grid (a one-dimensional
point-mass filter), conditioned on the state filter's analyses:

- after every analysis the plug-in remembers the analysis mean ``m`` ``(x, y)``;
- at the next observation time ``m`` is forecast once for every grid value ``Re_j`` (one batched solver run
  of ``points`` members from the previous observation time, at the run's ``dt``, ``stepper`` ``cn_rk4`` by
  default, without the run's stochastic forcing, if any), sensed, and the new readings' log-likelihood is added:
  ``log L_j += -1/2 sum_s (y_s - H M_j(m))_s^2 / (r_s + v_s)``. ``v_s`` is the state's uncertainty at sensor
  ``s``: the forecast members' variance there, floored by the innovations' mean excess over the noise
  (``mean_s d_s^2 - r`` under the current posterior), so an under-dispersed ensemble does not make the
  posterior over-confident. ``v`` does not depend on ``j``, so the Gaussian normaliser cancels;
- the members' Re become the posterior's quantiles ``(i + 1/2) / members``, rank-preserving (the member
  with the i-th smallest Re gets the i-th quantile), after ``log L`` is interpolated linearly onto a
  ``refine`` times finer grid (the posterior is narrower than the grid's spacing after some cycles).

Prior: log-uniform on ``[lo, hi]`` as :mod:`closure.reynolds`' (the grid is log-spaced on it, so the prior
weights are uniform); the first analysis has no previous mean and the members keep their prior draws. Cost: one
forecast of the grid's active values per cycle. A value whose ``log L`` falls ``prune`` (30) below the best is
dropped for good (its posterior weight is below ``e^-30`` of the best's; bringing it back would take that much
contrary evidence), so after a few cycles only the few values around the posterior are forecast. Lower bound:
with the state known exactly, the E3 sensors' Fisher information gives a standard error of ``log Re`` of 2-3 %
after 40 cycles (``benchmarks/reynolds_bound.py``). Measured on the E3 twin
(``benchmarks/results/ld_ensf_twin_pod512_likelihood*.md``, ``benchmarks/README.md``): EnKF / LETKF end 1.8 /
1.6 % off (3 truths; augmentation: 14.7 / 13.5 %). It needs a good analysis mean: the mean's own error is
forecast too, and viscosity damps it, so a large one biases Re low (LD-EnSF's hybrid, relative error 0.2, ten
times LETKF's at every scale: 13 % off, every truth low). Scaling ``v`` per grid value by the
viscous decay of the analysis anomalies' spectrum made it worse (37 %): over one period advection, not
viscosity, moves most of that error.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from solvers.rollout import BlowUpError, rollout

from .reynolds import check_prior

log = logging.getLogger(__name__)

__all__ = ["ReynoldsLikelihood", "POINTS"]

POINTS = 21  # default grid size: 5.6 % apart on [50, 150]; refined x10 for the posterior
PRUNE = 30.0  # log-likelihood below the best at which a grid value is dropped
DROPPED = -1e4  # the log L of a dropped value (relative to the best, 0): weight 0, finite for the interpolation


class ReynoldsLikelihood:
    """Grid posterior of a static ``log Re`` from forecasts of the analysis mean (module doc).

    Args:
        prior: ``[lo, hi]``, the log-uniform prior on Re (``Re = 1 / nu``); the grid spans it.
        points: grid values of Re (>= 2), log-spaced on the prior.
        refine: the posterior is evaluated on a grid ``refine`` times finer (>= 1; linear in ``log L``).
        stepper: the solver's time stepper for the grid forecasts (the run's, ``cn_rk4`` by default).
        prune: grid values whose ``log L`` is this far below the best are no longer forecast (> 0; ``inf``:
            never).
    """

    def __init__(self, prior: Sequence[float], points: int = POINTS, refine: int = 10, stepper: str = "cn_rk4",
                 prune: float = PRUNE):
        self.lo, self.hi = check_prior(prior)
        if int(points) != points or points < 2 or int(refine) != refine or refine < 1 or not prune > 0:
            raise ValueError(f"need reynolds_points >= 2 (grid values of Re, e.g. {POINTS}) and refine >= 1 "
                             f"(integers) and prune > 0; got {points}, {refine}, {prune}")
        self.log_grid = torch.linspace(math.log(self.lo), math.log(self.hi), int(points), dtype=torch.float64)
        self.log_lik = torch.zeros(int(points), dtype=torch.float64)  # (points,)
        self.refine, self.stepper, self.prune = int(refine), stepper, float(prune)
        self.active = torch.ones(int(points), dtype=torch.bool)  # (points,) the values still forecast
        self.mean: torch.Tensor | None = None  # (x, y) the last analysis mean
        self.t: float | None = None  # its time
        self.cycles = 0  # likelihood terms accumulated

    def forecast(self, mean: torch.Tensor, equation, dt: float, steps: int) -> torch.Tensor:
        """``mean`` ``(x, y)`` advanced ``steps`` steps at every active grid Re: ``(active, x, y)``. The
        equation's viscosity is restored afterwards."""
        saved = equation.nu
        log_re = self.log_grid[self.active]
        try:
            equation.set_viscosity(torch.exp(-log_re))
            w0 = mean.expand(len(log_re), *mean.shape).clone()
            return rollout(w0, equation, dt, steps, stepper=self.stepper).w
        finally:
            equation.set_viscosity(saved)

    def observe(self, state, obs, operator, HX: torch.Tensor) -> None:
        """Before the analysis at ``state.t``: add the log-likelihood of ``obs`` under every grid Re's forecast of
        the previous analysis mean; ``HX`` ``(members, sensors)``: the forecast members' readings."""
        if self.mean is None:
            return
        steps = round((state.t - self.t) / state.dt)
        if steps < 1:
            return
        try:
            Hf = operator(self.forecast(self.mean, state.equation, state.dt, steps)).to(torch.float64)
        except BlowUpError as err:  # a grid value's forecast blew up: this cycle says nothing about Re
            log.warning("Re likelihood: the grid forecast from t=%.4g blew up (%s); cycle skipped", self.t, err)
            return
        Hf = Hf.cpu()
        y, r = obs.y.to(Hf), obs.r.to(Hf)  # (sensors,)
        d2 = (y - Hf) ** 2  # (active, sensors)
        excess = ((self.grid_weights()[self.active, None] * d2).sum(0).mean() - r.mean()).clamp(min=0)
        v = torch.clamp(HX.to(Hf).var(0), min=excess.item()) if HX.shape[0] > 1 else excess.expand_as(r)
        self.log_lik[self.active] += -0.5 * (d2 / (r + v)).sum(-1)
        self.log_lik -= self.log_lik[self.active].max()  # the best at 0
        self.active &= self.log_lik > -self.prune
        self.log_lik[~self.active] = DROPPED
        self.cycles += 1

    def remember(self, mean: torch.Tensor, t: float) -> None:
        """After the analysis at ``t``: its mean ``(x, y)`` (the next cycle's forecast start)."""
        self.mean, self.t = mean.detach().clone(), float(t)

    def grid_weights(self) -> torch.Tensor:
        """Posterior weights ``(points,)`` on the coarse grid."""
        return torch.softmax(self.log_lik, 0)

    def posterior(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log Re (fine,), weights (fine,))``: ``log L`` interpolated linearly onto the refined grid, normalised."""
        fine = (len(self.log_grid) - 1) * self.refine + 1
        log_re = torch.linspace(self.log_grid[0].item(), self.log_grid[-1].item(), fine, dtype=torch.float64)
        ll = F.interpolate(self.log_lik[None, None], size=fine, mode="linear", align_corners=True)[0, 0]
        return log_re, torch.softmax(ll, 0)

    def quantiles(self, members: int) -> torch.Tensor:
        """The posterior's quantiles ``(i + 1/2) / members`` of Re, ``(members,)`` ascending."""
        log_re, w = self.posterior()
        q = (torch.arange(members, dtype=torch.float64) + 0.5) / members
        idx = torch.searchsorted(torch.cumsum(w, 0), q).clamp(max=len(w) - 1)
        return log_re[idx].exp()

    def assign(self, equation, reynolds: torch.Tensor) -> None:
        """Set the viscosities ``1 / Re`` of members whose Re are now ``reynolds`` ``(members,)`` to the posterior
        quantiles, keeping their ranks (no-op before the first likelihood term: they keep their prior draws)."""
        if self.cycles == 0:
            return
        ranks = torch.argsort(torch.argsort(reynolds.cpu()))
        equation.set_viscosity(1.0 / self.quantiles(len(ranks))[ranks])

    def scores(self) -> tuple[float, float]:
        """``(mean, spread)`` of Re under the posterior (the estimate and its standard deviation)."""
        log_re, w = self.posterior()
        re = log_re.exp()
        mean = (w * re).sum()
        return mean.item(), (w * (re - mean) ** 2).sum().sqrt().item()

    def describe(self) -> str:
        return (f"Re ~ log-uniform [{self.lo:g}, {self.hi:g}], grid likelihood of the analysis mean's forecasts "
                f"({len(self.log_grid)} values)")
