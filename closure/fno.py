"""The ``fno`` plug-in: a trained Fourier neural operator closure loaded from a checkpoint.

    python train_closure.py train --closure fno --data pairs.h5 --out runs/fno
    python simulate.py --config configs/e1_coarse64.yaml --set flow.convection=false \\
        --closure fno --checkpoint runs/fno/best.pt

The checkpoint must match the running solver: grid size and box length, viscosity, drag, forcing
and, for E1 data (whose target is the whole convection term), a solver without convection
(:meth:`latent.checkpoint.Checkpoint.check_solver`). Each call normalises the batched state with
the training statistics, runs the model without gradients on the solver's device and dtype, and
returns the de-normalised tendency.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from latent.checkpoint import HOW_TO_TRAIN, load_checkpoint, save_checkpoint
from latent.models import Normalization, build_model
from solvers.grid import Grid

from .base import FlowState, Plugin
from .registry import register

__all__ = ["FNOClosure"]


@register("fno")
class FNOClosure(Plugin):
    """Deterministic learned closure ``dw/dt += H(w)`` with ``H`` an FNO (``latent.models.FNOClosureModel``).

    Options: ``checkpoint`` (required): a file written by ``train_closure.py train --closure fno``;
    ``device``: where the model runs (default: the solver's device; results come back there).
    """

    kind = "tendency"
    default_every = 1
    requires_checkpoint: ClassVar[bool] = True  # the plug-in contract test builds one with example_checkpoint

    def __init__(self, grid: Grid, equation, *, checkpoint: str | None = None, device=None) -> None:
        super().__init__(grid, equation)
        if checkpoint is None:
            raise ValueError(f"closure {self.name!r} needs a trained model: pass --checkpoint FILE "
                             f"(closure.options.checkpoint); {HOW_TO_TRAIN}")
        ckpt = load_checkpoint(checkpoint)
        if ckpt.closure != self.name:
            raise ValueError(f"checkpoint {checkpoint} was trained for closure {ckpt.closure!r}, not {self.name!r}; "
                             f"run --closure {ckpt.closure}")
        ckpt.check_solver(grid, equation)
        self.device = torch.device(device) if device is not None else grid.device
        self.model = ckpt.build_model(self.device, grid.dtype).eval()
        self.norm = ckpt.normalization
        self.checkpoint = str(checkpoint)

    @torch.no_grad()
    def __call__(self, state: FlowState) -> torch.Tensor:
        w = state.w.to(self.device, self.grid.dtype)
        h = self.norm.denormalize_target(self.model.predict(self.norm.state(w), generator=state.generator))
        return h.to(device=state.w.device, dtype=state.w.dtype)

    def describe(self) -> str:
        return f"{super().describe()}, checkpoint {self.checkpoint}"

    @classmethod
    def example_checkpoint(cls, path: str | Path, grid: Grid, equation, seed: int = 0) -> Path:
        """An *untrained* tiny model checkpoint that fits ``grid`` and ``equation`` (viscosity and
        drag; forcing and kind unrecorded), for contract tests and smoke runs; its output is noise of
        size ~1e-3."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = build_model("fno", modes=min(4, grid.n // 2), width=8, layers=2, hidden=16)
        norm = Normalization(state_mean=0.0, state_std=1.0, target_mean=0.0, target_std=1e-3)
        return save_checkpoint(path, model=model, closure=cls.name, grid={"n": grid.n, "length": grid.length},
                               flow={"name": "example", "nu": equation.nu, "drag": equation.drag},
                               normalization=norm, config="# untrained example checkpoint\n")
