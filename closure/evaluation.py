"""Evaluate closure plug-ins on a pair dataset: a-priori and a-posteriori (closed loop).

    python train_closure.py evaluate --data data/e1_small.h5 --closure none fno \\
        --checkpoint fno=runs/fno/best.pt --out runs/eval_e1

- a-priori, on the test split: the plug-in's tendency against the exact closure target:
  ``mse``, ``rel_l2`` and the Pearson correlation ``corr``;
- a-posteriori, from each test trajectory's coarse truth at the start of the dataset's reference
  window: closed-loop rollouts of the coarse model with the plug-in (an ensemble for stochastic
  plug-ins), compared with the coarse truth at every reference time: ``rel_l2`` (member mean),
  ``ens_mean_rel_l2``, ``ens_mean_rmse``, ``spread``, enstrophy, and the energy spectrum at the last
  time; the wall-clock cost of the plug-in's calls against the bare solver's;
- long run (``--long-steps N``, for chaotic E2 flows): ``N`` closed-loop steps from the same starts,
  statistics after a 10 % spin-up against those of the filtered DNS (every frame of /state, see
  :mod:`closure.statistics`), blow-up, and spread-skill over ``--lyapunov`` time units of the
  a-posteriori window.

The pseudo-name ``resolved`` runs the coarse grid with its own resolved convection and no plug-in:
for E1 ("missing physics") it is the physics baseline a learned closure is measured against.
Writes ``<out>/evaluation.json``, ``<out>/table.md`` (a second table for the long run) and PNG figures
(:mod:`closure.evaluation_report`).
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import yaml

from solvers import diagnostics
from solvers.config import FlowConfig, build_dataclass
from solvers.pairs import PairData, read_attrs, read_pairs
from solvers.random import MemberRNG
from solvers.rollout import BlowUpError, rollout
from solvers.setup import build_flow

from . import statistics
from .evaluation_report import load_results, long_run_table, markdown_table, merge_results, write_report
from .registry import available, make_plugin

__all__ = ["coarse_flow", "plugin_name", "a_priori", "a_posteriori", "long_run", "evaluate", "parse_options", "add_arguments", "run"]

log = logging.getLogger(__name__)
RESOLVED = "resolved"


def coarse_flow(attrs: dict) -> tuple[FlowConfig, float]:
    """The coarse model a closure completes, and its time step, from a pair file's attributes.

    E1: the DNS physics on the coarse grid without convection and without noise (the closure target
    holds both); E2: the DNS physics on the LES grid with the filtered forcing (the filtered DNS's, so
    that the exact closure ``-Pi`` makes the LES exact, :mod:`solvers.filters`). The coarse step keeps
    the DNS's CFL number.
    """
    cfg = yaml.safe_load(attrs["config"])
    dns = build_dataclass(FlowConfig, cfg["dns"], "dns.")
    n_coarse, n_fine = int(attrs["grid_n"]), int(attrs["fine_n"])
    kind = attrs.get("kind", cfg.get("kind"))
    forcing = dns.forcing
    if kind != "e1":
        coarse = cfg.get("coarse") or {}
        forcing = replace(forcing, filter=coarse.get("method", "gaussian"), filter_width=coarse.get("width"))
    flow = replace(dns, n=n_coarse, noise=None, convection=(kind != "e1"), forcing=forcing,
                   name=f"{dns.name}_coarse{n_coarse}")
    dt = float(attrs["dt"])
    return flow, dt if kind == "e1" else dt * n_fine / n_coarse


def _setup(attrs: dict, device: str, dtype: str, resolved: bool = False):
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


def _make(name: str, flow, options: dict):
    name = plugin_name(name)
    return None if name in (RESOLVED, "none") else make_plugin(name, flow.grid, flow.equation, **options)


@torch.no_grad()
def a_priori(plugin, data: PairData, flow, batch: int = 64) -> dict[str, float]:
    """``mse``, ``rel_l2``, ``corr`` of the plug-in's tendency against ``data.target`` (test split)."""
    from solvers.rollout import FlowState

    preds = []
    for start in range(0, len(data.state), batch):
        w = data.state[start:start + batch].to(flow.grid.device, flow.grid.dtype)
        state = FlowState(w=w, t=0.0, step=0, dt=0.0, grid=flow.grid, equation=flow.equation,
                          generator=torch.Generator(device=w.device).manual_seed(start))
        out = None if plugin is None else plugin(state)
        preds.append(torch.zeros_like(w) if out is None else out)
    pred = torch.cat(preds).double().cpu()
    target = data.target.double().cpu()
    return {"mse": float(((pred - target) ** 2).mean()), "rel_l2": float(diagnostics.rel_l2(pred, target)),
            "corr": diagnostics.correlation(pred, target)}


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
    flow_cfg, flow, dt = _setup(attrs, device, dtype, resolved=name == RESOLVED)
    grid, eq = flow.grid, flow.equation
    plugin = _make(name, flow, options)
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
    flow_cfg, flow, dt = _setup(attrs, device, dtype, resolved=name == RESOLVED)
    plugin = _make(name, flow, options)
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


def _parse_checkpoints(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--checkpoint takes NAME=FILE (e.g. fno=runs/fno/best.pt), got {item!r}")
        out[name] = path
    return out


def parse_options(items: list[str]) -> dict[str, dict]:
    """``["NAME.KEY=VALUE", ...]`` (values read as YAML) -> ``{NAME: {KEY: VALUE}}``."""
    out: dict[str, dict] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        name, dot, option = key.partition(".")
        if not sep or not dot or not name or not option:
            raise ValueError(f"--option takes NAME.KEY=VALUE (e.g. latent_cdm.steps=5), got {item!r}")
        out.setdefault(name, {})[option] = yaml.safe_load(value)
    return out


def evaluate(data: str | Path, closures: list[str], checkpoints: dict[str, str], out: str | Path,
             ensemble: int = 8, every: int | None = None, device: str = "cpu", dtype: str = "float32",
             seed: int = 0, max_test: int | None = None, options: dict[str, dict] | None = None,
             t_end: float | None = None, long_steps: int = 0, long_every: int = 50, lyapunov: float = 5.0,
             merge: list[str | Path] | None = None) -> dict:
    """Run both evaluations (and with ``long_steps`` the long run) for every plug-in; write JSON,
    markdown and figures under ``out``. ``merge`` lists earlier output folders on the same dataset whose
    plug-ins join the table first (in the order given): long evaluations can run apart and combine."""
    unknown = [c for c in closures if c != RESOLVED and plugin_name(c) not in available()]
    if unknown:
        raise ValueError(f"unknown closure(s) {unknown}; choose from {available() + [RESOLVED]}")
    if long_steps < 0 or long_every < 1:
        raise ValueError(f"need --long-steps >= 0 and --long-every >= 1, got {long_steps} and {long_every}")
    attrs = read_attrs(data)
    test = read_pairs(data, "test")
    reference, ref_times = _reference(data, test, max_test)
    if t_end is not None:
        keep = ref_times <= t_end + 1e-9
        if keep.sum() < 2:
            raise ValueError(f"--t-end {t_end} leaves fewer than 2 reference times (window {ref_times[0]}..{ref_times[-1]})")
        reference, ref_times = reference[:, keep], ref_times[keep]
    _, flow, _ = _setup(attrs, device, dtype)
    results = {"data": str(data), "kind": attrs.get("kind"), "grid_n": int(attrs["grid_n"]), "closures": {}}
    if long_steps:
        ref_stats, long_stats = _dns_statistics(data, flow.grid), {}
        results["long_run_reference"] = _stats_json(ref_stats)
    for name in closures:
        options = {**({"checkpoint": checkpoints[name]} if name in checkpoints else {}), **(options or {}).get(name, {})}
        log.info("evaluating %s", name)
        prior = a_priori(_make(name, flow, options), test, flow) if name != RESOLVED else None
        post = a_posteriori(name, options, attrs, reference, ref_times, ensemble, every, device, dtype, seed)
        results["closures"][name] = {"a_priori": prior, "a_posteriori": _jsonable(post)}
        if long_steps:
            run = long_run(name, options, attrs, reference[:, 0], long_steps, every, device, dtype, seed, ensemble,
                           long_every, float(ref_times[0]))
            long_stats[name] = stats = run.pop("stats")
            skill = statistics.spread_skill(post.ens_mean_rmse, post.spread, ref_times, float(ref_times[0]),
                                            lyapunov, post.members)
            results["closures"][name]["long_run"] = {**statistics.compare(stats, ref_stats), "spread_skill": skill,
                                                     **run, **_stats_json(stats)}
    if long_steps:
        _add_pdfs(results, ref_stats, long_stats)
    if merge:
        results = merge_results([load_results(m, attrs) for m in merge] + [results])
    write_report(results, out)
    return results


def _dns_statistics(data, grid) -> statistics.FlowStatistics:
    """Statistics of the filtered DNS: every frame of /state, all splits, one trajectory at a time."""
    import h5py

    with h5py.File(data, "r") as f:
        return statistics.merge_statistics(statistics.reference_statistics(f["state"][i], grid)
                                           for i in range(f["state"].shape[0]))


def _stats_json(stats: statistics.FlowStatistics | None) -> dict:
    """Mean energy, enstrophy and spectrum (``None`` for a run without statistics)."""
    if stats is None:
        return {"energy": None, "enstrophy": None, "spectrum": None}
    return {"energy": stats.energy, "enstrophy": stats.enstrophy, "spectrum": stats.spectrum.tolist()}


def _add_pdfs(results: dict, ref: statistics.FlowStatistics, runs: dict, bins: int = 81) -> None:
    """Vorticity PDFs of the filtered DNS and the long runs on shared bins: the range of all samples, at
    most the reference's range widened by its span on each side."""
    values = [ref.vorticity] + [s.vorticity for s in runs.values() if s is not None]
    lo, hi = float(ref.vorticity.min()), float(ref.vorticity.max())
    span = hi - lo
    lo, hi = max(lo - span, min(float(v.min()) for v in values)), min(hi + span, max(float(v.max()) for v in values))
    entries = [(results["long_run_reference"], ref)] + [(results["closures"][n]["long_run"], s) for n, s in runs.items()]
    for entry, stats in entries:
        pdf = None if stats is None else diagnostics.vorticity_pdf(torch.from_numpy(stats.vorticity), bins, (lo, hi))
        entry.update(pdf_centres=None if pdf is None else pdf[0].tolist(), pdf=None if pdf is None else pdf[1].tolist())


def _reference(data, test: PairData, max_test: int | None) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    trajs = sorted(set(test.trajectories.tolist()))[:max_test]
    with h5py.File(data, "r") as f:
        if "reference" not in f:
            raise ValueError(f"{data} has no /reference window; regenerate it with a `reference:` section")
        return f["reference/state"][trajs], f["reference/time"][...]


def _jsonable(post: PosterioriResult) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in post.__dict__.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="FILE", help="closure-pair dataset (train_closure.py generate)")
    parser.add_argument("--closure", nargs="*", default=None, metavar="NAME[@LABEL]",
                        help=f"plug-ins to compare, plus '{RESOLVED}' (coarse model with its own convection); a label "
                             "tells apart two runs of one plug-in (latent_cdm@multi, with --checkpoint "
                             "latent_cdm@multi=FILE and --option latent_cdm@multi.KEY=VALUE); "
                             "default: none, or no new run when --merge is given")
    parser.add_argument("--merge", action="append", default=[], metavar="DIR",
                        help="also put the plug-ins of an earlier evaluation folder (same dataset) in the table and "
                             "figures, before this run's (repeatable; runs can be split and combined)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=FILE",
                        help="checkpoint for a learned plug-in, e.g. fno=runs/fno/best.pt (repeatable)")
    parser.add_argument("--ensemble", type=int, default=8, help="members for stochastic plug-ins (default 8)")
    parser.add_argument("--every", type=int, default=None, help="plug-in period in steps (default: each plug-in's)")
    parser.add_argument("--max-test", type=int, default=None, help="use only the first K test trajectories")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="solver precision")
    parser.add_argument("--seed", type=int, default=0, help="seed for stochastic plug-ins")
    parser.add_argument("--option", action="append", default=[], metavar="NAME.KEY=VALUE",
                        help="plug-in option, value read as YAML, e.g. latent_cdm.steps=5 or latent_cdm.sampler=heun "
                             "(repeatable)")
    parser.add_argument("--t-end", type=float, default=None, metavar="T",
                        help="end the a-posteriori window at time T (default: the dataset's whole reference window)")
    parser.add_argument("--long-steps", type=int, default=0, metavar="N",
                        help="also run N closed-loop steps per closure and compare long-run statistics with the "
                             "filtered DNS (default 0: off)")
    parser.add_argument("--long-every", type=int, default=50, metavar="K",
                        help="long run: snapshot period in steps (default 50)")
    parser.add_argument("--lyapunov", type=float, default=5.0, metavar="T",
                        help="spread-skill horizon in time units after the window start (default 5.0)")
    parser.add_argument("--out", default="runs/evaluation", metavar="DIR", help="output folder (JSON, table.md, PNG)")


def run(args: argparse.Namespace) -> int:
    import sys

    try:
        closures = args.closure if args.closure is not None else ([] if args.merge else ["none"])
        if not closures and not args.merge:
            raise ValueError("nothing to evaluate: name plug-ins with --closure or earlier runs with --merge")
        results = evaluate(args.data, closures, _parse_checkpoints(args.checkpoint), args.out, args.ensemble,
                           args.every, args.device, args.dtype, args.seed, args.max_test,
                           parse_options(args.option), args.t_end, args.long_steps, args.long_every,
                           args.lyapunov, args.merge)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown_table(results))
    if args.long_steps:
        print(long_run_table(results))
    print(f"wrote {Path(args.out) / 'evaluation.json'}, table.md and evaluation.png"
          + (" and long_run.png" if args.long_steps else ""))
    return 0
