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
(:mod:`closure.evaluation_report`); the closed-loop runs themselves are :mod:`closure.closed_loop`.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
import yaml

from solvers import diagnostics
from solvers.pairs import PairData, read_attrs, read_pairs

from . import statistics
from .closed_loop import RESOLVED, PosterioriResult, a_posteriori, long_run, make, plugin_name, setup_coarse
from .evaluation_report import load_results, long_run_table, markdown_table, merge_results, write_report
from .registry import available

__all__ = ["a_priori", "evaluate", "parse_options", "add_arguments", "run"]

log = logging.getLogger(__name__)


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
    _, flow, _ = setup_coarse(attrs, device, dtype)
    results = {"data": str(data), "kind": attrs.get("kind"), "grid_n": int(attrs["grid_n"]), "closures": {}}
    if long_steps:
        ref_stats, long_stats = _dns_statistics(data, flow.grid), {}
        results["long_run_reference"] = _stats_json(ref_stats)
    for name in closures:
        options = {**({"checkpoint": checkpoints[name]} if name in checkpoints else {}), **(options or {}).get(name, {})}
        log.info("evaluating %s", name)
        prior = a_priori(make(name, flow, options), test, flow) if name != RESOLVED else None
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
