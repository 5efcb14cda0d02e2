"""Stochastic conditional-diffusion closures: ``latent_cdm``, ``latent_cdm_two_phase``, ``p_cdm``.

    python simulate.py --closure latent_cdm                      # the shipped E1 model, its own default run
    python simulate.py --config configs/e1_latent_cdm.yaml --closure p_cdm --checkpoint runs/p_cdm/best.pt
    python simulate.py --closure latent_cdm --set closure.options.sampler=heun --set closure.options.steps=5

Every call (default every 5 solver steps, held in between) draws one closure sample per ensemble
member from ``p(H | w_member)``, all members in one batched network call per sampler step, on the
solver's device; the members' noise comes from the rollout's generator (per-member streams under
``simulate.py``), so members differ and a fixed seed repeats the run. Models: :mod:`latent.cdm`.
"""
from __future__ import annotations

from typing import ClassVar

from latent.diffusion import available_samplers
from latent.models import build_model
from solvers.grid import Grid

from .learned import LearnedClosure
from .registry import register

__all__ = ["LatentCDMClosure", "LatentCDMTwoPhaseClosure", "PhysicalCDMClosure"]


class _CDMClosure(LearnedClosure):
    """Options: ``checkpoint`` (a file from ``train_closure.py train --closure <name>``), ``device``,
    and the sampler: ``sampler`` (euler_maruyama | heun), ``steps``, ``t_max``, ``t_min``, ``rho``
    (default: the values stored with the model, E1's 10-step Euler-Maruyama from t = 0.4 to 1e-3)."""

    default_every = 5
    stochastic: ClassVar[bool] = True  # ensembles differ per member (evaluation runs several)

    def __init__(self, grid: Grid, equation, *, checkpoint: str | None = None, device=None,
                 sampler: str | None = None, steps: int | None = None, t_max: float | None = None,
                 t_min: float | None = None, rho: float | None = None) -> None:
        super().__init__(grid, equation, checkpoint=checkpoint, device=device)
        self.sampling = {k: v for k, v in dict(sampler=sampler, steps=steps, t_max=t_max, t_min=t_min,
                                               rho=rho).items() if v is not None}
        if sampler is not None and sampler not in available_samplers():
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {available_samplers()}")
        if steps is not None and int(steps) < 1:
            raise ValueError(f"sampler steps must be >= 1, got {steps}")

    def predict_kwargs(self) -> dict:
        return self.sampling

    def describe(self) -> str:
        opts = {**self.model.sampling, **self.sampling}
        return f"{super().describe()}, sampler {opts['sampler']} x{opts['steps']}"


@register("latent_cdm")
class LatentCDMClosure(_CDMClosure):
    """Jointly trained latent conditional diffusion closure (L-CDM); ships a default E1 model."""

    default_checkpoint: ClassVar[str | None] = "latent_cdm_e1_small.pt"
    default_config: ClassVar[str | None] = "e1_latent_cdm.yaml"  # simulate.py's run when no --config is given

    @classmethod
    def example_model(cls, grid: Grid):
        return build_model(cls.name, ae_channels=4, modes=2, width=4, layers=1, hidden=8, embed=4)


@register("latent_cdm_two_phase")
class LatentCDMTwoPhaseClosure(LatentCDMClosure):
    """Latent conditional diffusion closure with the autoencoders trained first (two-phase baseline)."""

    default_checkpoint = None
    default_config = None


@register("p_cdm")
class PhysicalCDMClosure(_CDMClosure):
    """Conditional diffusion closure in physical space (P-CDM)."""

    @classmethod
    def example_model(cls, grid: Grid):
        return build_model(cls.name, modes=min(4, grid.n // 2), width=4, layers=1, hidden=8, embed=4)
