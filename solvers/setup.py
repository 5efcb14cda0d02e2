"""Turn a :class:`~solvers.config.FlowConfig` into the objects a run needs.

``build_flow`` returns a :class:`Flow`: grid, equation, optional Q-Wiener noise, the initial
ensemble ``(member, n, n)``, its start time, the time step and the members' noise generator.
Ensemble members from a random generator are *independent* draws, member ``i`` from its own stream
(:class:`~solvers.random.MemberRNG`, seeded by ``(seed, i)``), so a member's initial state and noise
do not depend on the ensemble size, the batch or the ``torchrun`` rank it is simulated on; a file with
one member is broadcast to every member, a file with as many members as the ensemble is used as is.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from . import initial_conditions as ics
from .config import FlowConfig, RunConfig
from .diagnostics import max_velocity
from .forcing import QWienerNoise, make_forcing
from .grid import Grid
from .navier_stokes import NavierStokes2D
from .random import MemberRNG
from .stepping import stable_time_step

__all__ = ["Flow", "Reference", "build_flow", "initial_state", "time_step", "run_length", "torch_dtype"]

log = logging.getLogger(__name__)


@dataclass
class Flow:
    """Everything physical a rollout needs."""

    grid: Grid
    equation: NavierStokes2D
    noise: QWienerNoise | None
    w0: torch.Tensor  # (member, n, n) on the grid's device and dtype: the members held here
    t0: float
    dt: float
    members: range | None = None  # global indices of the rows of w0 (None: all)
    generator: MemberRNG | None = None  # their noise / plug-in stream, on the grid's device


def torch_dtype(name: str) -> torch.dtype:
    """``"float32"`` / ``"float64"`` -> the torch dtype."""
    dtypes = {"float32": torch.float32, "float64": torch.float64}
    if name not in dtypes:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(dtypes)}")
    return dtypes[name]


def build_flow(flow: FlowConfig, ensemble: int = 1, device: str = "cpu", dtype: str = "float32",
               seed: int = 0, align: float | None = None, members: range | None = None) -> Flow:
    """Grid, equation, noise, initial ensemble ``(len(members), n, n)``, start time, ``dt``, generator.

    ``align``: a CFL time step is shortened to divide this interval (e.g. ``record_dt``).
    ``members``: the block of the ``ensemble`` this process simulates (default: all of it, see
    :func:`solvers.parallel.shard`); the CFL step is taken over the whole ensemble, so every block
    gets the same ``dt``.
    """
    grid = Grid(flow.n, flow.length, device=device, dtype=torch_dtype(dtype))
    forcing = make_forcing(grid, flow.forcing.kind, filter=flow.forcing.filter, filter_width=flow.forcing.filter_width,
                           **flow.forcing.params)
    equation = NavierStokes2D(grid, flow.nu, flow.drag, forcing, dealias=flow.dealias,
                              convection=flow.convection)
    noise = None
    if flow.noise is not None:
        noise = QWienerNoise(grid, flow.noise.alpha, flow.noise.kappa, flow.noise.sigma)
    members = range(ensemble) if members is None else members
    if len(members) == 0 or members.start < 0 or members.stop > ensemble:
        raise ValueError(f"members {members} is not a non-empty block of the {ensemble}-member ensemble; "
                         f"use at least as many members as processes")
    w0, t0 = initial_state(flow, grid, ensemble, MemberRNG(seed, range(ensemble), "cpu", stream="init"))
    dt = time_step(flow, grid, w0, align)
    rows = slice(members.start, members.stop)
    return Flow(grid, equation, noise, w0[rows].clone(), t0, dt, members, MemberRNG(seed, members, device))


def initial_state(flow: FlowConfig, grid: Grid, ensemble: int, rng: MemberRNG) -> tuple[torch.Tensor, float]:
    """Initial vorticity ``(len(rng), n, n)`` of members ``rng.members`` of an ``ensemble`` and its time
    (the file frame's time, else 0). Member ``i`` is drawn from ``rng``'s stream ``i`` alone."""
    params = dict(flow.init.params)
    kind = flow.init.kind
    if kind == "file":
        w0, t0 = _from_file(grid, ensemble, params)
        return w0[list(rng.members)], t0
    builders = {"grf": ics.gaussian_random_field, "band_limited": ics.band_limited,
                "taylor_green": ics.taylor_green}
    try:
        if kind == "taylor_green":
            return builders[kind](grid, batch=len(rng), **params), 0.0
        return torch.cat([builders[kind](grid, batch=1, generator=g, **params) for g in rng.generators]), 0.0
    except TypeError as err:
        raise ValueError(f"bad flow.init.params {params} for init kind {kind!r}: {err}") from err


PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def _from_file(grid: Grid, ensemble: int, params: dict) -> tuple[torch.Tensor, float]:
    path, frame = Path(params.pop("path")), params.pop("frame", -1)
    if not path.is_absolute() and not path.exists() and (PACKAGE_ROOT / path).exists():
        path = PACKAGE_ROOT / path  # files shipped with the package (e.g. the latent_cdm demo's initial state)
    if params:
        raise ValueError(f"init kind 'file' takes params path and frame only, got extra {sorted(params)}")
    if frame is None:
        frame = -1
    w0 = ics.from_file(path, grid, int(frame))
    t0 = 0.0
    if path.suffix in (".h5", ".hdf5"):
        from .io import read_times

        t0 = float(read_times(path)[int(frame)])
    members = w0.shape[0]
    if members == 1:
        return w0.expand(ensemble, -1, -1).clone(), t0
    if members != ensemble:
        raise ValueError(f"initial-condition file {path} holds {members} members but the ensemble has "
                         f"{ensemble}; use --ensemble {members} or a file with a single member")
    return w0, t0


def time_step(flow: FlowConfig, grid: Grid, w0: torch.Tensor, align: float | None = None) -> float:
    """``flow.dt``, or the CFL step for the larger of ``flow.max_velocity`` and ``w0``'s peak speed,
    shortened to ``align / ceil(align / dt)`` when ``align`` is given so records land on exact times."""
    if flow.dt is not None:
        return float(flow.dt)
    speed = float(max_velocity(w0, grid).max())
    if flow.max_velocity is not None:
        speed = max(speed, float(flow.max_velocity))
    if not speed > 0:
        raise ValueError("cannot pick a CFL time step for a fluid at rest; set flow.dt or flow.max_velocity")
    dt = stable_time_step(speed, grid.dx, flow.cfl, flow.nu)
    if align is not None:
        dt = align / math.ceil(align / dt * (1 - 1e-12))
    log.info("CFL time step dt=%.4g (max velocity %.3g, cfl %.2f)", dt, speed, flow.cfl)
    return dt


def run_length(cfg: RunConfig, dt: float, t0: float) -> tuple[int, int]:
    """Number of steps and the record period in steps, from ``steps | t_end`` and ``record_every | record_dt``.

    ``t_end`` is an absolute time (a run from a file frame at ``t0`` ends there); with neither
    record key only the first and last states are recorded.
    """
    if cfg.steps is not None:
        steps = cfg.steps
    elif cfg.t_end is not None:
        if cfg.t_end <= t0:
            raise ValueError(f"t_end={cfg.t_end} is not after the start time t0={t0:.6g}; "
                             f"pass a later --t-end or --steps")
        steps = max(1, round((cfg.t_end - t0) / dt))
    else:
        raise ValueError("the run length is not set: give steps or t_end (--steps K or --t-end T)")
    if cfg.record_every is not None:
        every = cfg.record_every
    elif cfg.record_dt is not None:
        every = max(1, round(cfg.record_dt / dt))
        if not math.isclose(every * dt, cfg.record_dt, rel_tol=1e-6):
            log.warning("record_dt=%g is not a multiple of dt=%g; recording every %d steps (%g)",
                        cfg.record_dt, dt, every, every * dt)
    else:
        every = max(steps, 1)
    return steps, every


class Reference:
    """A reference trajectory file read frame by frame at the run's times, on the run's grid.

    A frame matches time ``t`` when ``|t_ref - t| <= tol``; a finer reference is brought to the run's
    grid by ``method``: ``"subsample"`` (E1: every stride-th point) or a filter name for
    :func:`solvers.filters.coarse_grain` (filter, then spectral truncation; E2: ``"gaussian"``). The reference
    holds one member (the truth for every member) or as many members as the run (member-wise;
    the ensemble mean is then compared with the reference's member mean).
    """

    def __init__(self, path: str | Path, grid: Grid, members: int, tol: float, method: str = "gaussian") -> None:
        from .io import read_attrs, read_frame, read_times

        self.path, self.grid, self.tol, self.method = Path(path), grid, tol, method
        self._last: tuple[int, torch.Tensor] | None = None  # (frame index, frame on the run's grid)
        self.times = read_times(self.path)
        length = float(read_attrs(self.path).get("grid_length", grid.length))
        shape = read_frame(self.path, 0).shape  # (member, n, n)
        self.members, self.n = shape[0], shape[-1]
        if not math.isclose(length, grid.length, rel_tol=1e-6):
            raise ValueError(f"reference {self.path} is on a box of length {length:.6g}, the run on "
                             f"{grid.length:.6g}; use a reference of the same flow")
        if self.n < grid.n:
            raise ValueError(f"reference {self.path} is on a {self.n}^2 grid, coarser than the run's "
                             f"{grid.n}^2; use a reference at least as fine as the run")
        if self.members not in (1, members):
            raise ValueError(f"reference {self.path} holds {self.members} members and the run {members}; "
                             f"use a single-member reference or --ensemble {self.members}")

    def frame_index(self, t: float) -> int | None:
        """Index of the reference frame at time ``t`` (within ``tol``), or ``None``."""
        if not len(self.times):
            return None
        k = int(abs(self.times - t).argmin())
        return k if abs(self.times[k] - t) <= self.tol * (1 + 1e-9) else None

    def truth(self, t: float) -> torch.Tensor | None:
        """Reference ``(member, n, n)`` at time ``t`` on the run's grid, or ``None`` if no frame matches.
        The last frame is kept: callers sharing this reference at one time (the metrics and the sensors
        of a twin experiment) read and coarse-grain it once. Do not modify the returned tensor."""
        from .io import read_frame

        k = self.frame_index(t)
        if k is None:
            return None
        if self._last is not None and self._last[0] == k:
            return self._last[1]
        w = torch.as_tensor(read_frame(self.path, k)).to(device=self.grid.device, dtype=self.grid.dtype)
        if self.n > self.grid.n:
            from .filters import coarse_grain, subsample

            if self.method == "subsample":
                if self.n % self.grid.n:
                    raise ValueError(f"reference {self.path} ({self.n}^2) cannot be subsampled to {self.grid.n}^2; "
                                     f"use flow.coarse_grain=gaussian or a reference whose size is a multiple")
                w = subsample(w, self.n // self.grid.n)
            else:
                w = coarse_grain(w, self.grid.n, filter=self.method)
        self._last = (k, w)
        return w
