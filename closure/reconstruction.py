"""Reconstruction plug-ins: rebuild the full field from the sensors and re-initialise or nudge the run.

At every observation time (``simulate.py --observe TRUTH.h5 --sensors ...``) the field is reconstructed
from the noisy sensor values alone, and every member moves toward it:
``w <- w + nudge (reconstruction - w)`` (``nudge = 1``: replace). The log is the assimilation plug-ins'
(:mod:`closure.assimilation`): ``rmse_f`` / ``rmse_a`` before and after, relative RMSE, seconds.

- ``interp``: ``method = "cubic"`` (periodic Clough-Tocher) or ``"fourier"`` (ridge fit of the Fourier
  modes ``|k| <= modes``), :mod:`solvers.reconstruction`;
- ``gappy_pod``: least squares in a POD basis fitted to the frames of a trajectory file (``basis``,
  ``modes``, Tikhonov ``ridge``), :mod:`latent.pod`. ``python -m latent.pod`` places sensors by pivoted
  QR of that basis and writes a file for ``--sensors``.
"""
from __future__ import annotations

from typing import ClassVar

import torch

from .assimilation import Assimilation
from .registry import register

__all__ = ["Reconstruction", "Interpolation", "GappyPOD"]


class Reconstruction(Assimilation):
    """Base: ``reconstruct(y) -> (1, x, y)``; the analysis nudges every member toward it."""

    min_members: ClassVar[int] = 1

    def reconstruct(self, y: torch.Tensor) -> torch.Tensor:
        """The field ``(1, x, y)`` from sensor values ``y`` ``(sensors,)``."""
        raise NotImplementedError

    def analysis(self, X, HX, obs, state):
        field = self.reconstruct(obs.y).reshape(1, -1).to(X)
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

    def reconstruct(self, y):
        from solvers.reconstruction import cubic_interpolate, fourier_fit

        positions = self.observations.operator.positions
        if self.method == "cubic":
            return cubic_interpolate(y[None], positions, self.grid)
        return fourier_fit(y[None], positions, self.grid, self.modes, self.ridge)


@register("gappy_pod")
class GappyPOD(Reconstruction):
    """Gappy POD (Everson & Sirovich 1995) in the leading ``modes`` POD modes of the frames of ``basis``
    (a project .h5 trajectory on this grid, every member and time), ``ridge`` for noisy sensors."""

    def __init__(self, grid, equation, observations=None, nudge: float = 1.0, basis: str | None = None,
                 modes: int = 20, ridge: float = 1e-3) -> None:
        super().__init__(grid, equation, observations, nudge)
        from latent.pod import fit_pod, load_snapshots

        if basis is None:
            raise ValueError("gappy_pod needs snapshots for its basis: --set closure.options.basis=TRAJECTORY.h5 "
                             "(a run of the same flow, e.g. a simulate.py output)")
        self.basis = fit_pod(load_snapshots(basis, grid), modes)
        self.rows = self.observations.operator.matrix().to(torch.float64)  # (sensors, x*y)
        self.ridge = float(ridge)

    @classmethod
    def example_options(cls, truth_path) -> dict:
        return {"basis": str(truth_path), "modes": 1}

    def reconstruct(self, y):
        from latent.pod import gappy_reconstruct

        return gappy_reconstruct(self.basis, y[None].to(torch.float64), self.rows, self.ridge)
