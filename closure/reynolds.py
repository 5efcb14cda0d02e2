"""Joint state + Reynolds-number estimation for ensemble plug-ins, by state augmentation.

Convention: ``Re = 1 / nu``. The project's flows are in units where the velocity and length scales are 1
(Kolmogorov forcing of amplitude 1 on a box of side 2 pi), so the solver's viscosity is the inverse
Reynolds number; ``Re`` here always means ``1 / equation.nu``.

Every member runs with its own Re (``equation.set_viscosity`` with one value per member; the rollout
rebuilds its stepper). The estimated parameter is ``log Re`` (Re > 0, uncertainty multiplicative):

- prior: log-uniform on ``[lo, hi]``, i.e. uniform in the estimated variable ``log Re``. Re is a scale
  parameter and log-uniform is the scale-free choice; a uniform prior in Re would put 1.7x more
  members in the upper half of ``[50, 150]`` than in the lower, for no physical reason. Draws come from
  the run's generator (member ``i`` from its own stream, ``u = Phi(z)`` of a standard normal ``z``), so
  runs are reproducible and every method with the same seed starts from the same draws.
- augmentation (:func:`augment`): the flattened state ``(members, x*y)`` gets one more column,
  ``s (log Re - c)`` with ``c`` the prior's centre ``log sqrt(lo hi)`` and ``s`` the field's spread over
  the parameter's, so the parameter's anomalies are as large as a typical grid value's. The EnKF and
  LETKF updates are equivariant under this scaling (it only keeps the numbers comparable); it matters
  for EnSF, whose mixture weights use Euclidean distances.
- parameter model: persistence plus a random walk, ``log Re <- log Re + N(0, jitter^2)`` before every
  analysis. Nothing in the dynamics restores the parameter's spread, which every analysis shrinks; a
  collapsed parameter ensemble stops listening to the data (filter divergence). The state's
  multiplicative inflation is not applied to the parameter (see ``Assimilation._inflated``), so this
  is its only spread maintenance. The default 0.02 (2 % in Re per cycle): on the 32^2 twin of
  ``tests/test_assimilation.py`` (4 truths / seeds) it leaves a final spread of 4-6 %, the size of the
  errors (0.1-3.6 %); 0.01 is overconfident (spread 2-3 %, errors up to 7.5 %), 0.05 too loose
  (spread 8-13 %, errors up to 6.6 %).
- after the analysis the parameter is clamped to the prior interval widened ``widen`` times,
  ``[lo / widen, hi * widen]`` (a member whose Re leaves that range is a filter failure, not physics).

The assimilation plug-ins' ``reynolds_update`` (:mod:`closure.assimilation`): ``average`` / ``global`` use this
augmentation. Measured on the 32^2 twin of ``tests/test_assimilation.py`` (16 members, 12x12 sensors, noise 0.2,
truth Re 120, prior [50, 150], members' mean 87.7): ``average`` at Re 117.4 +- 4.3 (enkf) and 121.3 +- 4.8
(letkf). ``global`` pins the parameter at the first analysis, while the state is still the climatology (144
sensors, 15 ensemble directions): spread 1-2 from then on; enkf stays near its first jump (140.6 +- 1.9), letkf
recovers (117.7 +- 1.3, overconfident). A taper of 1 on the parameter's row inside the localised EnKF solve (a
localised ``C_yy`` with unlocalised cross-covariances) is unstable: 15 of its 16 members end at the upper clamp,
one at the lower. Without ``radius`` the ``enkf`` update is global whatever the option; ``ensf`` observes an
augmented parameter through a zero column of ``H``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from solvers.random import normal_like

__all__ = ["ReynoldsParameter", "REYNOLDS_KEYS", "JITTER", "check_prior", "draw_log_uniform", "augment", "split"]

JITTER = 0.02  # default random-walk standard deviation of log Re per analysis (module doc)

# history keys, after each analysis: ensemble mean and spread (standard deviation over members) of Re (as
# ld_ensf's). The forecast's are the previous analysis's (persistence); the first, the prior draws.
REYNOLDS_KEYS = ("reynolds", "reynolds_spread")


def check_prior(prior: Sequence[float]) -> tuple[float, float]:
    """``(lo, hi)`` of a Reynolds-number prior ``[lo, hi]``; ``ValueError`` naming the fix otherwise."""
    try:
        lo, hi = (float(v) for v in prior)
    except (TypeError, ValueError):
        raise ValueError(f"reynolds_prior must be two numbers [lo, hi] (Re = 1/nu), e.g. [50, 150]; got "
                         f"{prior!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise ValueError(f"reynolds_prior [lo, hi] needs 0 < lo < hi (Re = 1/nu > 0), e.g. [50, 150]; got "
                         f"[{lo:g}, {hi:g}]" + ("; swap the bounds" if hi < lo else ""))
    return lo, hi


def draw_log_uniform(lo: float, hi: float, like: torch.Tensor, generator=None) -> torch.Tensor:
    """``log Re`` ``(members,)`` float64, log-uniform on ``[lo, hi]``, one per row of ``like`` ``(members, ...)``
    (on its device): ``u = Phi(z)`` of a standard normal from ``generator`` (a ``torch.Generator`` or a
    per-member :class:`~solvers.random.MemberRNG`)."""
    z = normal_like(torch.empty(like.shape[0], 1, dtype=torch.float64, device=like.device), generator)[:, 0]
    return math.log(lo) + torch.special.ndtr(z) * math.log(hi / lo)


def augment(X: torch.Tensor, log_re: torch.Tensor, centre: float) -> tuple[torch.Tensor, float]:
    """``(Z (members, dim + 1), s)``: ``X`` ``(members, dim)`` with the column ``s (log_re - centre)``, ``s`` the
    field's spread (RMS over components of the members' standard deviation) over ``log_re``'s (1 if either is 0)."""
    field, param = X.std(0).pow(2).mean().sqrt().item(), log_re.std().item()
    s = field / param if field > 0 and param > 0 else 1.0
    return torch.cat([X, (s * (log_re - centre))[:, None].to(X)], dim=1), s


def split(Z: torch.Tensor, centre: float, s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`augment`: ``(X (members, dim), log_re (members,))``."""
    return Z[:, :-1], centre + Z[:, -1] / s


class ReynoldsParameter:
    """The per-member Reynolds numbers of an ensemble run: prior draws, augmentation, update.

    Args:
        prior: ``[lo, hi]``, the log-uniform prior on Re (``Re = 1 / nu``).
        jitter: standard deviation of the random walk on ``log Re`` added before every analysis (>= 0).
        widen: the analysed Re is clamped to ``[lo / widen, hi * widen]`` (>= 1).
    """

    def __init__(self, prior: Sequence[float], jitter: float = JITTER, widen: float = 2.0) -> None:
        self.lo, self.hi = check_prior(prior)
        if not (jitter >= 0 and math.isfinite(jitter)) or not widen >= 1:
            raise ValueError(f"need reynolds_jitter >= 0 (e.g. 0.02, the std of log Re per analysis) and widen >= 1; "
                             f"got {jitter}, {widen}")
        self.jitter, self.widen = float(jitter), float(widen)
        self.centre = 0.5 * math.log(self.lo * self.hi)
        self.bounds = (math.log(self.lo / self.widen), math.log(self.hi * self.widen))
        self.prior_draws: torch.Tensor | None = None  # (members,) Re drawn at the first call

    def start(self, state) -> None:
        """At the first call only: draw every member's Re from the prior and set its viscosity ``1 / Re``."""
        if self.prior_draws is None:
            log_re = draw_log_uniform(self.lo, self.hi, state.w, state.generator)
            self.prior_draws = log_re.exp().cpu()
            state.equation.set_viscosity(torch.exp(-log_re))

    def reynolds(self, equation, members: int) -> torch.Tensor:
        """The members' Re ``(members,)`` float64 (``1 / nu``)."""
        nu = torch.as_tensor(equation.nu, dtype=torch.float64)
        return 1 / (nu.expand(members) if nu.dim() == 0 else nu.to(torch.float64))

    def augment(self, X: torch.Tensor, state) -> tuple[torch.Tensor, float]:
        """``X`` ``(members, x*y)`` with the jittered, scaled ``log Re`` column (:func:`augment`) and its scale."""
        log_re = self.reynolds(state.equation, X.shape[0]).log().to(X.device)
        if self.jitter > 0:
            log_re = log_re + normal_like(log_re[:, None], state.generator, self.jitter)[:, 0]
        return augment(X, log_re, self.centre)

    def update(self, Za: torch.Tensor, s: float, state) -> torch.Tensor:
        """Set the viscosities from the analysed parameter column (clamped); returns the field part ``(members, x*y)``."""
        Xa, log_re = split(Za, self.centre, s)
        state.equation.set_viscosity(torch.exp(-log_re.clamp(*self.bounds)))
        return Xa

    def scores(self, equation, members: int) -> tuple[float, float]:
        """``(mean, spread)`` of the members' Re (spread: the unbiased standard deviation)."""
        re = self.reynolds(equation, members)
        return re.mean().item(), re.std(unbiased=members > 1).item()

    def describe(self) -> str:
        return f"Re ~ log-uniform [{self.lo:g}, {self.hi:g}] (nu = 1/Re per member), jitter {self.jitter:g}"
