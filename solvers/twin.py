"""Twin experiments: noisy sensor data of a truth trajectory, the input of every assimilation plug-in.

:class:`SensorData` reads a truth run (a project ``.h5`` trajectory, coarse-grained to the run's grid
when finer, see :class:`~solvers.setup.Reference`), samples it with an
:class:`~solvers.observation.ObservationOperator` and adds noise drawn from a stream seeded by
``(seed, frame index)``: the same observations whatever plug-in, ensemble size or run order asks, so
methods are compared on identical data. The truth is member 0 of the file.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .observation import ObservationOperator, parse_sensors
from .setup import Reference

__all__ = ["Observation", "SensorData", "sensor_data"]


@dataclass
class Observation:
    """One observation time: noisy values, their error variances and (for diagnostics only) the truth."""

    t: float
    y: torch.Tensor  # (sensors,) noisy observations
    r: torch.Tensor  # (sensors,) observation-error variances (diagonal R)
    truth: torch.Tensor  # (x, y) the true field on the run's grid; plug-ins must not assimilate it


class SensorData:
    """Observations of ``reference`` (the truth) through ``operator`` at the truth's frame times."""

    def __init__(self, reference: Reference, operator: ObservationOperator, seed: int = 0) -> None:
        if operator.grid.n != reference.grid.n:
            raise ValueError(f"sensor operator on {operator.grid.n}^2, truth brought to {reference.grid.n}^2")
        self.reference, self.operator, self.seed = reference, operator, int(seed)

    @property
    def grid(self):
        return self.operator.grid

    def times(self) -> list[float]:
        return [float(t) for t in self.reference.times]

    def at(self, t: float) -> Observation | None:
        """The observation at time ``t``, or ``None`` when the truth has no frame there."""
        k = self.reference.frame_index(t)
        if k is None:
            return None
        truth = self.reference.truth(t)[0]
        clean = self.operator(truth[None])[0].to(torch.float64)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        e = torch.randn(clean.shape, generator=generator, dtype=torch.float64) * self.operator.noise
        multiplicative = self.operator.kind == "multiplicative"
        y = clean * (1 + e) if multiplicative else clean + e
        # the filter's R: the noise variance; for multiplicative noise estimated from the observed value
        floor = (1e-6 * clean.abs().max()) ** 2 + 1e-30
        r = (self.operator.noise * y) ** 2 + floor if multiplicative else torch.full_like(y, self.operator.noise ** 2)
        device = self.grid.device
        return Observation(float(self.reference.times[k]), y.to(device), r.clamp_min(1e-30).to(device), truth)


def sensor_data(truth: str, grid, sensors: str, noise: float, noise_kind: str, seed: int, tol: float,
                coarse_grain: str = "gaussian") -> SensorData:
    """:class:`SensorData` from an ``observe`` config's values (``tol``: time matching, e.g. ``dt / 2``)."""
    if noise <= 0:
        raise ValueError("observe.noise must be > 0 for assimilation (the filter needs an error variance); "
                         "e.g. --noise 0.1")
    try:
        reference = Reference(truth, grid, 1, tol, coarse_grain)
    except ValueError as err:
        if "members" not in str(err):
            raise
        raise ValueError(f"truth file {truth} holds several members; a twin experiment observes one truth: "
                         f"write it with --ensemble 1") from None
    operator = ObservationOperator(grid, parse_sensors(sensors, grid, seed), noise, noise_kind)
    return SensorData(reference, operator, seed)
