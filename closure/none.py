"""The ``none`` plug-in: no correction; reproduces the bare solver bit for bit.

``reynolds_prior: [lo, hi]`` makes it the free-running baseline of a twin experiment with an unknown
Reynolds number: at the first call every member gets its own ``Re = 1 / nu`` from the same log-uniform
prior, with the same draws as the assimilation plug-ins' (:mod:`closure.reynolds`), and keeps it.
"""
from __future__ import annotations

from .base import FlowState, Plugin
from .registry import register
from .reynolds import ReynoldsParameter


@register("none")
class NoClosure(Plugin):
    """No model: the coarse solver runs on its own resolved physics (with ``reynolds_prior``: each member
    at its own Re drawn from the prior at the first call)."""

    def __init__(self, grid, equation, reynolds_prior: list[float] | None = None) -> None:
        super().__init__(grid, equation)
        self.reynolds = None if reynolds_prior is None else ReynoldsParameter(reynolds_prior)

    def __call__(self, state: FlowState) -> None:
        if self.reynolds is not None:
            self.reynolds.start(state)
        return None
