"""Shared body of the learned closure plug-ins: load a checkpoint, check it fits the solver, run the
model on the solver's state in normalised units.

A subclass registers a name, declares its options as keyword arguments (always ``checkpoint`` and
``device``) and may name a shipped ``default_checkpoint`` used when none is given. The checkpoint
must match the running solver: grid size and box length, viscosity, drag, forcing and, for E1 data
(whose target is the whole convection term), a solver without convection
(:meth:`latent.checkpoint.Checkpoint.check_solver`); its ``closure`` must be this plug-in's name.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

import torch

from latent.checkpoint import HOW_TO_TRAIN, load_checkpoint, save_checkpoint
from latent.models import Normalization
from solvers.grid import Grid

from .base import FlowState, Plugin

__all__ = ["LearnedClosure", "SHIPPED", "load_plugin_model", "save_example_checkpoint"]

log = logging.getLogger(__name__)
SHIPPED = Path(__file__).resolve().parent / "checkpoints"  # models that ship with the package


def load_plugin_model(name: str, checkpoint: str | None, grid: Grid, device, how_to_train: str):
    """``(checkpoint, device, model)`` of plug-in ``name``: the checkpoint must exist (else ``how_to_train``
    is in the error), be trained for ``name`` and fit ``grid``; the model is built float32, in eval mode."""
    if checkpoint is None:
        raise ValueError(f"{name} needs a trained model: --checkpoint FILE (closure.options.checkpoint); "
                         f"train one with {how_to_train}")
    ckpt = load_checkpoint(checkpoint)
    if ckpt.closure != name:
        raise ValueError(f"checkpoint {checkpoint} was trained for {ckpt.closure!r}, not {name!r}")
    ckpt.check_grid(grid.n, grid.length)
    device = torch.device(device) if device is not None else grid.device
    return ckpt, device, ckpt.build_model(device, torch.float32).eval()


def save_example_checkpoint(path: str | Path, name: str, model, grid: Grid, equation,
                            normalization: Normalization = Normalization(0.0, 1.0, 0.0, 1.0)) -> Path:
    """An *untrained* ``model`` saved as plug-in ``name``'s checkpoint for ``grid`` and ``equation`` (viscosity,
    drag): the ``example_checkpoint`` of the learned plug-ins, for contract tests and smoke runs."""
    return save_checkpoint(path, model=model, closure=name, grid={"n": grid.n, "length": grid.length},
                           flow={"name": "example", "nu": equation.nu, "drag": equation.drag},
                           normalization=normalization, config="# untrained example checkpoint\n")


class LearnedClosure(Plugin):
    """``dw/dt += H(w)`` with ``H = model.predict`` of a trained :class:`latent.models.TrainableModel`."""

    kind = "tendency"
    requires_checkpoint: ClassVar[bool] = True  # trainable with train_closure.py; contract tests build one
    default_checkpoint: ClassVar[str | None] = None  # file name under closure/checkpoints/, used when none is given

    def __init__(self, grid: Grid, equation, *, checkpoint: str | None = None, device=None) -> None:
        super().__init__(grid, equation)
        self.shipped = checkpoint is None and self.default_checkpoint is not None
        if checkpoint is None and self.default_checkpoint is None:
            raise ValueError(f"closure {self.name!r} needs a trained model: pass --checkpoint FILE "
                             f"(closure.options.checkpoint); {HOW_TO_TRAIN}")
        if self.shipped:
            checkpoint = str(SHIPPED / self.default_checkpoint)
            log.info("closure %s: no --checkpoint given, using the shipped default model %s", self.name, checkpoint)
        ckpt = load_checkpoint(checkpoint)
        if ckpt.closure != self.name:
            raise ValueError(f"checkpoint {checkpoint} was trained for closure {ckpt.closure!r}, not {self.name!r}; "
                             f"run --closure {ckpt.closure}")
        ckpt.check_solver(grid, equation)
        self.device = torch.device(device) if device is not None else grid.device
        self.model = ckpt.build_model(self.device, grid.dtype).eval()
        self.norm = ckpt.normalization
        self.checkpoint, self.ckpt = str(checkpoint), ckpt

    def predict_kwargs(self) -> dict:
        """Extra keyword arguments of ``model.predict`` (e.g. the sampler of a diffusion model)."""
        return {}

    @torch.no_grad()
    def __call__(self, state: FlowState) -> torch.Tensor:
        w = state.w.to(self.device, self.grid.dtype)
        h = self.model.predict(self.norm.state(w), generator=state.generator, **self.predict_kwargs())
        return self.norm.denormalize_target(h).to(device=state.w.device, dtype=state.w.dtype)

    def describe(self) -> str:
        which = "shipped default model" if self.shipped else "checkpoint"
        return f"{super().describe()}, {which} {self.checkpoint}"

    @classmethod
    def example_model(cls, grid: Grid):
        """A tiny untrained model of this plug-in's kind that fits ``grid`` (subclasses define it)."""
        raise NotImplementedError

    @classmethod
    def example_checkpoint(cls, path: str | Path, grid: Grid, equation, seed: int = 0) -> Path:
        """An *untrained* tiny model checkpoint that fits ``grid`` and ``equation`` (viscosity and
        drag; forcing and kind unrecorded), for contract tests and smoke runs; its output is noise of
        size ~1e-3."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = cls.example_model(grid)
        norm = Normalization(state_mean=0.0, state_std=1.0, target_mean=0.0, target_std=1e-3)
        return save_example_checkpoint(path, cls.name, model, grid, equation, norm)
