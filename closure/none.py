"""The ``none`` plug-in: no correction; reproduces the bare solver bit for bit."""
from __future__ import annotations

from .base import FlowState, Plugin
from .registry import register


@register("none")
class NoClosure(Plugin):
    """No model: the coarse solver runs on its own resolved physics."""

    def __call__(self, state: FlowState) -> None:
        return None
