"""Closed-loop runs of a closure plug-in on the coarse model of a pair dataset (:mod:`closure.evaluation`).

- :func:`coarse_flow`: the coarse model a closure completes (E1: no convection; E2: the LES with the
  filtered forcing) and its time step;
- :func:`a_posteriori`: ensemble rollouts from the test trajectories' coarse truth over the reference
  window, errors, spread, enstrophy, spectra and the plug-in's cost;
- :func:`long_run`: one long closed-loop run per start state, reduced on the fly to flow statistics.

Closure specs are ``NAME[@LABEL]`` (:func:`plugin_name`); the pseudo-name ``resolved`` runs the coarse
grid with its own convection and no plug-in.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
import yaml

from solvers import diagnostics
from solvers.config import FlowConfig, build_dataclass
from solvers.random import MemberRNG
from solvers.rollout import BlowUpError, rollout
from solvers.setup import build_flow

from . import statistics
from .registry import make_plugin

__all__ = ["RESOLVED", "coarse_flow", "setup_coarse", "plugin_name", "make", "PosterioriResult", "a_posteriori",
           "long_run"]

log = logging.getLogger(__name__)
RESOLVED = "resolved"


def coarse_flow(attrs: dict) -> tuple[FlowConfig, float]:
    """The coarse model a closure completes, and its time step, from a pair file's attributes.

    E1: the DNS physics on the coarse grid without convection and without noise (the closure target
    holds both); E2: the DNS physics on the LES grid with the filtered forcing and the data's LES
    dealiasing (``coarse.dealias``), so that the exact closure ``-Pi`` makes the LES exact
    (:mod:`solvers.filters`). The coarse step keeps the DNS's CFL number.
    """
    cfg = yaml.safe_load(attrs["config"])
    dns = build_dataclass(FlowConfig, cfg["dns"], "dns.")
    n_coarse, n_fine = int(attrs["grid_n"]), int(attrs["fine_n"])
    kind = attrs.get("kind", cfg.get("kind"))
    forcing, dealias = dns.forcing, dns.dealias
    if kind != "e1":
        coarse = cfg.get("coarse") or {}
        forcing = replace(forcing, filter=coarse.get("method", "gaussian"), filter_width=coarse.get("width"))
        dealias = coarse.get("dealias", True)
    flow = replace(dns, n=n_coarse, noise=None, convection=(kind != "e1"), forcing=forcing, dealias=dealias,
                   name=f"{dns.name}_coarse{n_coarse}")
    dt = float(attrs["dt"])
    return flow, dt if kind == "e1" else dt * n_fine / n_coarse


def setup_coarse(attrs: dict, device: str, dtype: str, resolved: bool = False):
    """The coarse flow (with its own convection for ``resolved``), built once; the init is a placeholder."""
    flow_cfg, dt = coarse_flow(attrs)
    if resolved:
        flow_cfg = replace(flow_cfg, convection=True)
    flow = build_flow(replace(flow_cfg, init=replace(flow_cfg.init, kind="taylor_green", params={})),
                      1, device, dtype)
    return flow_cfg, flow, dt


def plugin_name(spec: str) -> str:
    """The registry name of a ``NAME[@LABEL]`` closure spec (labels tell apart runs of one plug-in)."""
    return spec.partition("@")[0]


def make(name: str, flow, options: dict):
    name = plugin_name(name)
    return None if name in (RESOLVED, "none") else make_plugin(name, flow.grid, flow.equation, **options)


class _Timed:
    """Wraps a plug-in and accumulates the wall time of its calls."""

    def __init__(self, plugin):
        self.plugin, self.kind, self.seconds, self.calls = plugin, plugin.kind, 0.0, 0

    def __call__(self, state):
        self.calls += 1
        start = time.perf_counter()
        out = self.plugin(state)
        if state.w.is_cuda:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - start
        return out


@dataclass
class PosterioriResult:
    times: np.ndarray  # (rtime,)
    rel_l2: np.ndarray  # (rtime,) member-mean rel_l2, averaged over test trajectories
    ens_mean_rel_l2: np.ndarray
    spread: np.ndarray
    enstrophy: np.ndarray  # (rtime,) model (member and trajectory mean)
    enstrophy_ref: np.ndarray
    spectrum: np.ndarray  # (k,) at the last time, model
    spectrum_ref: np.ndarray
    wall_s: float
    plugin_s: float
    blew_up: bool
    calls: int = 0  # plug-in calls, all trajectories
    members: int = 1
    ens_mean_rmse: np.ndarray | None = None  # (rtime,) absolute RMS error of the ensemble mean (spread-skill)


def a_posteriori(name: str, options: dict, attrs: dict, reference: np.ndarray, ref_times: np.ndarray,
                 ensemble: int, every: int | None, device: str, dtype: str, seed: int) -> PosterioriResult:
    """Closed-loop rollouts from ``reference[:, 0]`` (``(traj, rtime, x, y)``) over the reference window."""
    flow_cfg, flow, dt = setup_coarse(attrs, device, dtype, resolved=name == RESOLVED)
    grid, eq = flow.grid, flow.equation
    plugin = make(name, flow, options)
    members = ensemble if getattr(plugin, "stochastic", False) else 1
    every = every or (plugin.default_every if plugin is not None else 1)
    interval = float(ref_times[1] - ref_times[0])
    steps_per = max(1, round(interval / dt))
    sums = {k: np.zeros(len(ref_times)) for k in ("rel_l2", "ens", "rmse", "spread", "z", "zref")}
    spec = spec_ref = 0.0
    wall = plug = 0.0
    calls = 0
    blew_up = False
    for traj in range(reference.shape[0]):
        truth = torch.as_tensor(reference[traj]).to(grid.device, grid.dtype)  # (rtime, x, y)
        w = truth[0].expand(members, -1, -1).clone()
        timed = _Timed(plugin) if plugin is not None else None
        gen = MemberRNG(seed + traj, members, device=grid.device)  # each member its own stream
        start = time.perf_counter()
        for i in range(len(ref_times)):
            if i > 0 and not blew_up:
                try:
                    w = rollout(w, eq, dt, steps_per, stepper=flow_cfg.stepper, plugin=timed, every=every,
                                generator=gen, t0=float(ref_times[i - 1]), check_every=steps_per).w
                except Exception as err:  # BlowUpError or a plug-in failure: record and stop this run
                    log.warning("%s blew up on test trajectory %d at t=%.3g: %s", name, traj, ref_times[i], err)
                    blew_up = True
            if blew_up:
                w = torch.full_like(w, float("nan"))
            sums["rel_l2"][i] += float(diagnostics.rel_l2(w, truth[i].expand_as(w)))
            sums["ens"][i] += float(diagnostics.ens_mean_rel_l2(w, truth[i]))
            sums["rmse"][i] += float(torch.sqrt(((w.mean(0) - truth[i]) ** 2).mean()))
            sums["spread"][i] += float(diagnostics.spread(w))
            sums["z"][i] += float(diagnostics.enstrophy(w, grid).mean())
            sums["zref"][i] += float(diagnostics.enstrophy(truth[i], grid))
        wall += time.perf_counter() - start
        plug += timed.seconds if timed is not None else 0.0
        calls += timed.calls if timed is not None else 0
        spec = spec + diagnostics.energy_spectrum(w, grid)[1].mean(0).double().cpu().numpy()
        spec_ref = spec_ref + diagnostics.energy_spectrum(truth[-1:], grid)[1][0].double().cpu().numpy()
    n = reference.shape[0]
    return PosterioriResult(ref_times, sums["rel_l2"] / n, sums["ens"] / n, sums["spread"] / n, sums["z"] / n,
                            sums["zref"] / n, spec / n, spec_ref / n, wall, plug, blew_up, calls, members,
                            sums["rmse"] / n)


def long_run(name: str, options: dict, attrs: dict, w0: np.ndarray, steps: int, every: int | None, device: str,
             dtype: str, seed: int, members: int, sample_every: int, t0: float = 0.0) -> dict:
    """A long closed-loop run from ``w0`` ``(traj, x, y)``: flow statistics after a 10 % spin-up, blow-up, cost.

    Stochastic plug-ins run ``members`` members per start state, each with its own random stream. The
    run advances in chunks of ``sample_every`` steps (rounded up to a multiple of the plug-in period);
    each chunk's end state after the spin-up is a snapshot, reduced at once by
    :func:`closure.statistics.run_statistics`. A non-finite state (BlowUpError) stops the run. Returns
    ``stats`` (``FlowStatistics`` or ``None``), ``steps``, ``steps_run``, ``blew_up``, ``blow_up_t``,
    ``snapshots``, ``members``, ``wall_s``, ``plugin_s``.
    """
    flow_cfg, flow, dt = setup_coarse(attrs, device, dtype, resolved=name == RESOLVED)
    plugin = make(name, flow, options)
    members = members if getattr(plugin, "stochastic", False) else 1
    every = every or (plugin.default_every if plugin is not None else 1)
    chunk = every * -(-sample_every // every)
    w = torch.as_tensor(w0).to(flow.grid.device, flow.grid.dtype).repeat_interleave(members, 0)
    gen = MemberRNG(seed, w.shape[0], device=flow.grid.device)
    timed = _Timed(plugin) if plugin is not None else None
    info = {"steps": steps, "steps_run": 0, "blew_up": False, "blow_up_t": None, "snapshots": 0, "members": members}

    def snapshots():
        nonlocal w
        while info["steps_run"] < steps:
            done, n = info["steps_run"], min(chunk, steps - info["steps_run"])
            try:
                w = rollout(w, flow.equation, dt, n, stepper=flow_cfg.stepper, plugin=timed, every=every,
                            generator=gen, t0=t0 + done * dt, check_every=min(n, 100)).w
            except BlowUpError as err:
                log.warning("%s blew up in the long run: %s", name, err)
                info.update(blew_up=True, blow_up_t=t0 + (done + err.result.steps) * dt,
                            steps_run=round((err.last_good_t - t0) / dt))
                return
            info["steps_run"] = done + n
            if info["steps_run"] > steps // 10:
                info["snapshots"] += 1
                yield w

    start = time.perf_counter()
    info["stats"] = statistics.run_statistics(snapshots(), flow.grid)
    info.update(wall_s=time.perf_counter() - start, plugin_s=timed.seconds if timed is not None else 0.0)
    return info
