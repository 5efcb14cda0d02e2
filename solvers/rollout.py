"""The closed loop: step the solver, call a plug-in every N steps, record, stop safely on blow-up.

The solver stays ignorant of ML: a plug-in is any callable ``plugin(state: FlowState)`` with a
``kind`` attribute (see :mod:`closure.base`):

- ``kind == "tendency"``: returns a real correction ``(batch, x, y)`` (or ``None``) added to the
  explicit terms and held until the next call;
- ``kind == "state"``: returns a new state ``(batch, x, y)`` that replaces the running one
  (assimilation / reconstruction / nudging). It may also change the equation's parameters
  (``state.equation.set_viscosity``, per member for parameter estimation): the rollout then
  rebuilds its stepper before the next step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from .diagnostics import cfl_number
from .grid import Grid
from .stepping import make_stepper

__all__ = ["FlowState", "Plugin", "RolloutResult", "BlowUpError", "rollout"]


@dataclass
class FlowState:
    """What a plug-in sees: the running state at one call."""

    w: torch.Tensor  # (batch, x, y) real vorticity, on the solver's device and dtype
    t: float
    step: int
    dt: float
    grid: Grid
    equation: object
    # The run's generator, for reproducible sampling: a torch.Generator, or a MemberRNG
    # (solvers.random) whose row i is member i's own stream (use generator.normal_like(w)).
    generator: object | None = None

    @property
    def w_hat(self) -> torch.Tensor:
        return self.grid.rfft(self.w)


class Plugin(Protocol):
    kind: str
    def __call__(self, state: FlowState) -> torch.Tensor | None: ...


@dataclass
class RolloutResult:
    """Final state and the recorded trajectory (frames on CPU, ``(batch, time, x, y)``)."""

    w: torch.Tensor
    t: float
    steps: int
    times: list[float] = field(default_factory=list)
    frames: list[torch.Tensor] = field(default_factory=list)
    plugin_calls: int = 0

    def trajectory(self) -> torch.Tensor:
        """Recorded frames stacked as ``(batch, time, x, y)``."""
        return torch.stack(self.frames, dim=1)


class BlowUpError(RuntimeError):
    """Raised when the state turns non-finite or its CFL number exceeds the limit.

    ``result`` holds everything recorded so far; ``last_good`` the last state that passed the check.
    """

    def __init__(self, message: str, result: RolloutResult, last_good: torch.Tensor, last_good_t: float):
        super().__init__(message)
        self.result, self.last_good, self.last_good_t = result, last_good, last_good_t


def _check(w: torch.Tensor, grid: Grid, dt: float, cfl_limit: float | None) -> str | None:
    """Why ``w`` is not a healthy state, or ``None``."""
    if not torch.isfinite(w).all():
        return "the vorticity became non-finite (NaN/Inf)"
    if cfl_limit is not None:
        cfl = cfl_number(w, grid, dt).max().item()
        if not cfl <= cfl_limit:
            return f"the CFL number reached {cfl:.3g} > limit {cfl_limit} (reduce dt or add dissipation)"
    return None


def rollout(
    w0: torch.Tensor,
    equation,
    dt: float,
    steps: int,
    *,
    stepper: str = "cn_rk4",
    plugin: Plugin | None = None,
    every: int = 1,
    noise=None,
    generator=None,
    t0: float = 0.0,
    record_every: int | None = None,
    on_record: Callable[[float, torch.Tensor], None] | None = None,
    check_every: int = 100,
    cfl_limit: float | None = None,
    progress: bool = False,
    agree: Callable[[str | None], str | None] | None = None,
) -> RolloutResult:
    """Advance ``w0`` ``(batch, x, y)`` by ``steps`` steps of size ``dt``.

    Args:
        plugin, every: call ``plugin`` at steps ``0, every, 2 every, ...`` (see module doc).
        noise: optional additive noise with ``add_to(w_hat, dt, generator)`` (Euler-Maruyama).
        generator: passed unchanged to ``noise`` and to the plug-in (``FlowState.generator``): a
            ``torch.Generator`` or a :class:`~solvers.random.MemberRNG` (one stream per member).
        record_every: keep a CPU float32 copy of the state every that many steps (and at 0 and the
            end); ``on_record(t, w)`` is called instead of keeping frames when given.
        check_every, cfl_limit: health check period; on failure :class:`BlowUpError` is raised
            carrying the frames so far and the last good state.
        agree: for an ensemble sharded over processes: maps this process's health verdict (a problem
            or ``None``) to the verdict of all of them (a collective call at every check), so every
            process stops at the same step.
    """
    grid = equation.grid
    grid.check_field(w0, "initial state")
    if w0.dim() != 3:
        raise ValueError(f"state must be (batch, x, y), got shape {tuple(w0.shape)}")
    if steps < 0 or every < 1:
        raise ValueError(f"need steps >= 0 and every >= 1, got steps={steps}, every={every}")
    step_fn = make_stepper(stepper, equation, dt)
    result = RolloutResult(w=w0, t=t0, steps=0)
    w_hat, extra_hat = grid.rfft(w0), None
    last_good, last_good_t = w0.clone(), t0

    def record(t: float, w: torch.Tensor) -> None:
        if on_record is not None:
            on_record(t, w)
        else:
            result.frames.append(w.detach().to("cpu", torch.float32))
        result.times.append(t)

    if record_every:
        record(t0, w0)
    bar = _progress(steps, progress)
    for n in range(steps):
        t = t0 + n * dt
        if plugin is not None and n % every == 0:
            version = getattr(equation, "version", None)
            extra_hat, w_hat = _call_plugin(plugin, w_hat, t, n, dt, grid, equation, generator)
            result.plugin_calls += 1
            if getattr(equation, "version", None) != version:  # the plug-in changed a parameter (e.g. nu)
                step_fn = make_stepper(stepper, equation, dt)
        w_hat = step_fn(w_hat, extra_hat)
        if noise is not None:
            w_hat = noise.add_to(w_hat, dt, generator)  # the stepper's output is fresh: in place is safe
        done = n + 1
        is_record = bool(record_every) and (done % record_every == 0 or done == steps)
        if is_record or done % check_every == 0 or done == steps:
            w = grid.irfft(w_hat)
            problem = _check(w, grid, dt, cfl_limit)
            if agree is not None:
                problem = agree(problem)
            if problem is not None:
                result.w, result.t, result.steps = last_good, last_good_t, done
                bar.close()
                raise BlowUpError(f"run stopped at step {done} (t={t0 + done * dt:.4g}): {problem}; "
                                  f"last good state is from t={last_good_t:.4g}", result, last_good, last_good_t)
            last_good, last_good_t = w, t0 + done * dt
            if is_record:
                record(t0 + done * dt, w)
        bar.update(1)
    bar.close()
    result.w, result.t, result.steps = grid.irfft(w_hat), t0 + steps * dt, steps
    return result


def _call_plugin(plugin, w_hat, t, n, dt, grid, equation, generator):
    """Run the plug-in once; returns ``(held tendency_hat or None, possibly replaced w_hat)``."""
    state = FlowState(w=grid.irfft(w_hat), t=t, step=n, dt=dt, grid=grid, equation=equation, generator=generator)
    out = plugin(state)
    if out is None:
        return None, w_hat
    if out.shape != state.w.shape or out.dtype != state.w.dtype or out.device != state.w.device:
        raise ValueError(f"plug-in {type(plugin).__name__} returned {tuple(out.shape)} {out.dtype} on {out.device}; "
                         f"expected {tuple(state.w.shape)} {state.w.dtype} on {state.w.device}")
    if plugin.kind == "tendency":
        return grid.rfft(out), w_hat
    if plugin.kind == "state":
        return None, grid.rfft(out)
    raise ValueError(f"plug-in kind must be 'tendency' or 'state', got {plugin.kind!r}")


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit="step", dynamic_ncols=True, mininterval=0.5)
