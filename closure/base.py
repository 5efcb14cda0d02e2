"""The plug-in contract.

A plug-in is built by name with one signature, ``Plugin(grid, equation, **options)``, and is called
by :func:`solvers.rollout.rollout` every ``every`` solver steps with a
:class:`~solvers.rollout.FlowState` holding the batched state ``w`` ``(batch, x, y)`` on the
solver's device. It returns

- ``kind = "tendency"``: a correction ``(batch, x, y)`` to ``dw/dt``, held until the next call
  (closures); ``None`` means no correction;
- ``kind = "state"``: the new state ``(batch, x, y)`` (assimilation, reconstruction, nudging).

Output shape, dtype and device equal the input's; the rollout checks this.
"""
from __future__ import annotations

from typing import ClassVar

import torch

from solvers.grid import Grid
from solvers.rollout import FlowState

__all__ = ["Plugin", "FlowState"]


class Plugin:
    """Base class for plug-ins. Subclasses declare their options as keyword arguments."""

    kind: ClassVar[str] = "tendency"
    default_every: ClassVar[int] = 1  # plug-in period used when the user gives none
    name: ClassVar[str] = ""

    def __init__(self, grid: Grid, equation) -> None:
        self.grid, self.equation = grid, equation

    def __call__(self, state: FlowState) -> torch.Tensor | None:
        raise NotImplementedError

    def describe(self) -> str:
        """One line for logs and output attributes."""
        return f"{self.name} ({self.kind}, default every {self.default_every})"
