"""The ``fno`` plug-in: a trained Fourier neural operator closure loaded from a checkpoint.

    python train_closure.py train --closure fno --data pairs.h5 --out runs/fno
    python simulate.py --config configs/e1_coarse64.yaml --set flow.convection=false \\
        --closure fno --checkpoint runs/fno/best.pt

The checkpoint must match the running solver (:mod:`closure.learned`). Each call normalises the batched state with
the training statistics, runs the model without gradients on the solver's device and dtype, and
returns the de-normalised tendency.
"""
from __future__ import annotations


from latent.models import build_model
from solvers.grid import Grid

from .learned import LearnedClosure
from .registry import register

__all__ = ["FNOClosure"]


@register("fno")
class FNOClosure(LearnedClosure):
    """Deterministic learned closure ``dw/dt += H(w)`` with ``H`` an FNO (``latent.models.FNOClosureModel``).

    Options: ``checkpoint`` (required): a file written by ``train_closure.py train --closure fno``;
    ``device``: where the model runs (default: the solver's device; results come back there).
    """

    default_every = 1

    def __init__(self, grid: Grid, equation, *, checkpoint: str | None = None, device=None) -> None:
        super().__init__(grid, equation, checkpoint=checkpoint, device=device)

    @classmethod
    def example_model(cls, grid: Grid):
        return build_model("fno", modes=min(4, grid.n // 2), width=8, layers=2, hidden=16)
