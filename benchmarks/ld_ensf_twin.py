"""E3 twin with an unknown Reynolds number: free run, EnKF, LETKF, full-space EnSF, LD-EnSF (hybrid, pure latent).

    python benchmarks/ld_ensf_twin.py --checkpoint runs/ld_ensf/best.pt        # data/e3_small.h5 test trajectories
    python benchmarks/ld_ensf_twin.py --checkpoint M --truths 0 1 2 --methods none letkf ld_ensf ld_ensf_latent

The truth is a held-out test trajectory of the parametric data (``--data``, made by
``train_closure.py generate-parametric``) at its own Re; it is observed on the model's sensor lattice
(E3: 10 x 10) with Gaussian noise ``--noise`` x the data's vorticity std (E3: 0.1 in normalised units)
every frame (0.2 time units) for 40 cycles. Every method starts from the same ``--members``
climatological draws (the twin's band-limited initial fields); every filter estimates Re jointly
with the state from a prior over the data's range (the physical-space filters through
``reynolds_prior``, log-uniform; LD-EnSF uniform; ``--fixed-reynolds``: the physical filters keep the
free run's per-member draws; ``--reynolds likelihood``, the default: every filter by the grid likelihood of its
analysis mean's solver forecasts, :mod:`closure.reynolds_likelihood`; ``own``: the physical filters by state
augmentation, LD-EnSF by its latent filter) and, except the pure-latent mode, runs each member at its analysed Re. Reported per method, averaged over the truths: relative RMSE of the ensemble mean
(``sqrt(mean err^2 / mean truth^2)``, LD-EnSF's metric) after the analysis at the end and over the
second half, the final relative error of the ensemble-mean Re, and the wall time per assimilation
cycle: the analysis for the solver-forecast methods, forecast + observe + analysis for the pure-latent
mode (no solver), and, to compare whole cycles, with the forecast (solver methods: the run's wall time over
its cycles). LD-EnSF's state observation is the LSTM's latent (``--observation lstm``, the paper's)
or the sensors through the decoder (``sensors``, with ``--kernel``, ``--representation-error``,
``--implicit``, ``--reproject``: :mod:`latent.ld_ensf`); a method that diverges is recorded as such.
JSON, markdown table and a figure go to ``benchmarks/results``.
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

import closure
from latent.checkpoint import load_checkpoint
from latent.ld_ensf import run_latent
from solvers.config import build_dataclass
from solvers.io import TrajectoryWriter, publish_results
from solvers.pairs import read_trajectories
from solvers.parametric import ParametricConfig
from solvers.rollout import BlowUpError, rollout
from solvers.setup import build_flow
from solvers.twin import sensor_data

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("none", "enkf", "letkf", "ensf", "ld_ensf", "ld_ensf_latent")
OPTIONS = {"enkf": {"radius": 1.5, "inflation": 1.5}, "letkf": {"radius": 1.5, "inflation": 1.5}, "ensf": {}}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="trained ld_ensf model (train_closure.py train --closure ld_ensf)")
    p.add_argument("--data", default="data/e3_small.h5", help="parametric data file; its test split holds the truths")
    p.add_argument("--truths", type=int, nargs="+", default=[0, 1, 2], help="test trajectories used as truths")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="methods to run")
    p.add_argument("--members", type=int, default=20, help="ensemble size (E3: 20)")
    p.add_argument("--cycles", type=int, default=40, help="assimilation cycles (E3: 40)")
    p.add_argument("--noise", type=float, default=0.1, help="sensor noise std in normalised units (x the data's std)")
    p.add_argument("--seed", type=int, default=1, help="seed of the initial draws and the members' prior Re")
    p.add_argument("--guidance", default="tweedie", help="LD-EnSF likelihood guidance: damped (paper) or tweedie")
    p.add_argument("--inject", default="increment", help="LD-EnSF hybrid: increment or replace")
    p.add_argument("--observation", default="lstm", choices=["lstm", "sensors"],
                   help="LD-EnSF's state observation: the LSTM's latent (paper) or the sensors through the decoder")
    p.add_argument("--representation-error", type=float, default=0.3,
                   help="LD-EnSF --observation sensors: decoder error std at a sensor (normalised units)")
    p.add_argument("--kernel", type=float, default=0.0,
                   help="LD-EnSF: Gaussian kernel std around each member in the EnSF prior (standardised latent)")
    p.add_argument("--implicit", action="store_true", help="LD-EnSF damped guidance: the stable implicit step")
    p.add_argument("--steps", type=int, default=100, help="LD-EnSF: EnSF pseudo-time steps per analysis (E3: 100)")
    p.add_argument("--parameter", default="joint", choices=["joint", "separate"],
                   help="LD-EnSF sensors: Re analysed with the latent (joint) or by the LSTM alone (separate)")
    p.add_argument("--sampler", default="ensf", choices=["ensf", "exact"],
                   help="LD-EnSF sensors: the EnSF's reverse SDE or the exact Gaussian-mixture posterior (reference)")
    p.add_argument("--inflation", type=float, default=1.0,
                   help="LD-EnSF: multiplicative inflation of the latent forecast anomalies (1: none)")
    p.add_argument("--kernel-scale", default="fixed", choices=["fixed", "spread"],
                   help="LD-EnSF kernel: fixed (standardised units) or spread (x each component's ensemble std)")
    p.add_argument("--no-unresolved", action="store_true",
                   help="LD-EnSF hybrid: do not add the members' unresolved part at the sensors to h (closure/ld_ensf.py)")
    p.add_argument("--reproject", action="store_true", help="LD-EnSF: re-encode the decoded analysis members")
    p.add_argument("--reynolds", default="likelihood", choices=["likelihood", "own"],
                   help="how the filters estimate Re: the grid likelihood of the analysis mean's forecasts "
                        "(closure/reynolds_likelihood.py), or each method's own (state augmentation; LD-EnSF's latent)")
    p.add_argument("--fixed-reynolds", action="store_true", help="physical-space filters keep the members' prior Re "
                   "(default: they estimate it jointly, closure.options.reynolds_prior)")
    p.add_argument("--latent-forecast", default="model", choices=["model", "persistence"],
                   help="LD-EnSF pure latent: the model's latent ODE, or persistence (z unchanged between "
                        "observations: the baseline a latent ODE must beat)")
    p.add_argument("--json", type=Path, default=RESULTS / "ld_ensf_twin.json", help="results file")
    return p


class Persistence:
    """A model whose latent forecast is persistence (``advance`` returns ``z``); everything else is ``model``'s."""

    def __init__(self, model) -> None:
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def advance(self, z: torch.Tensor, p: torch.Tensor, dt: float | None = None) -> torch.Tensor:
        return z


def _flow(data: str):
    import h5py

    with h5py.File(data) as f:
        cfg = build_dataclass(ParametricConfig, yaml.safe_load(f.attrs["config"]))
    return cfg


def _prior(cfg, members: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lo, hi = cfg.reynolds.min, cfg.reynolds.max
    return lo + (hi - lo) * torch.rand(members, generator=g, dtype=torch.float64)


def _filter_options(args) -> dict:
    """LD-EnSF's observation options (both modes)."""
    return dict(observation=args.observation, sensor_noise=args.noise, representation_error=args.representation_error,
                kernel=args.kernel, implicit=args.implicit, reproject=args.reproject, steps=args.steps,
                parameter=args.parameter, kernel_scale=args.kernel_scale, inflation=args.inflation,
                sampler=args.sampler)


def _run_method(method, args, cfg, flow, obs, model, norm, model_path, times, truth64, scale) -> dict:
    """One method's row on one truth (:func:`run_truth`)."""
    grid, eq, every = flow.grid, flow.equation, cfg.record_every
    if method == "ld_ensf_latent":
        readings = torch.stack([norm.state(obs.at(t).y.float()) for t in times])
        gen = torch.Generator().manual_seed(args.seed)
        latent = Persistence(model) if args.latent_forecast == "persistence" else model
        means, res, secs = run_latent(latent, readings, times, norm.state(flow.w0.float()), gen,
                                      guidance=args.guidance, **_filter_options(args))
        fields = means.double() * norm.state_std + norm.state_mean
        rel = ((fields - truth64).pow(2).mean((-2, -1)).sqrt() / scale).numpy()
        return {"rel": rel.tolist(), "reynolds": res.mean(1).tolist(), "s_per_cycle": float(np.median(secs[1:]))}
    options = dict(OPTIONS.get(method, {}))
    if method == "ld_ensf":
        options.update(checkpoint=model_path, guidance=args.guidance, inject=args.inject,
                       unresolved=not args.no_unresolved, reynolds="latent" if args.reynolds == "own" else "likelihood",
                       **_filter_options(args))
    elif method != "none" and not args.fixed_reynolds:
        options.update(reynolds_prior=[cfg.reynolds.min, cfg.reynolds.max],
                       reynolds_update="average" if args.reynolds == "own" else "likelihood")
    plugin = None
    if method != "none":
        plugin = closure.make_plugin(method, grid, eq, observations=obs, **options)
    start = time.perf_counter()
    result = rollout(flow.w0.clone(), eq, flow.dt, every * args.cycles + 1, stepper=cfg.flow.stepper,
                     plugin=plugin, every=every, generator=flow.generator, record_every=every)
    wall = time.perf_counter() - start
    if plugin is None:
        traj = result.trajectory()[:, : len(times)].to(torch.float64)  # (member, time, x, y): frames 0, every, ...
        rel = ((traj.mean(0) - truth64).pow(2).mean((-2, -1)).sqrt() / scale).numpy()
        row = {"rel": rel.tolist(), "s_per_cycle": 0.0}
    else:
        h = plugin.history
        row = {"rel": h["rel_rmse_a"], "rel_f": h["rel_rmse_f"], "s_per_cycle": float(np.median(h["seconds"][1:]))}
        if "reynolds" in h:
            row["reynolds"] = h["reynolds"]
    row["wall_s"] = wall
    return row


def run_truth(args, cfg, truth: torch.Tensor, reynolds: float, model_path: str, folder: Path) -> dict:
    """Every method on one truth ``(time, x, y)`` (physical units); returns method -> metrics."""
    ckpt = load_checkpoint(model_path)
    norm = ckpt.normalization
    frames = truth[: args.cycles + 1]
    every = cfg.record_every
    flow = build_flow(cfg.flow, args.members, "cpu", "float64", args.seed)
    grid, eq = flow.grid, flow.equation
    path = folder / "truth.h5"
    times = [k * every * flow.dt for k in range(len(frames))]
    with TrajectoryWriter(path, 1, grid.n, {"grid_length": grid.length, "grid_n": grid.n}) as writer:
        for t, w in zip(times, frames):
            writer.append(float(t), w[None].numpy())
    model = ckpt.build_model("cpu", torch.float32).eval()
    sigma = args.noise * norm.state_std
    obs = sensor_data(str(path), grid, model.sensors, sigma, "additive", seed=7, tol=flow.dt / 2)
    prior = _prior(cfg, args.members, args.seed)
    truth64 = frames.to(torch.float64)
    scale = truth64.pow(2).mean((-2, -1)).sqrt()  # (time,)
    out = {}
    for method in args.methods:
        eq.set_viscosity(1.0 / prior)
        try:
            out[method] = _run_method(method, args, cfg, flow, obs, model, norm, model_path, times, truth64, scale)
        except (BlowUpError, FloatingPointError) as err:  # recorded, not fatal: the other methods still run
            print(f"  {method} failed: {err}")
            out[method] = {"rel": [float("nan")] * len(frames), "reynolds": [float("nan")], "s_per_cycle": float("nan"),
                           "failed": str(err)}
    for row in out.values():
        if "reynolds" in row:
            row["reynolds_error"] = abs(row["reynolds"][-1] - reynolds) / reynolds
        else:  # the members keep their prior Re
            row["reynolds_error"] = abs(float(prior.mean()) - reynolds) / reynolds
            row["reynolds_fixed"] = True
    return out


def _full_cycle(row: dict) -> float:
    """Seconds per cycle with the forecast: the whole run's wall time over its cycles (solver methods), the
    pure-latent cycle (which already holds its latent forecast)."""
    return row["wall_s"] / max(1, len(row["rel"]) - 1) if "wall_s" in row else row["s_per_cycle"]


def summarise(per_truth: list[dict]) -> dict:
    rows = {}
    for method in per_truth[0]:
        rel = np.array([t[method]["rel"] for t in per_truth])  # (truths, time)
        half = rel.shape[1] // 2
        rows[method] = {"rel_end": float(rel[:, -1].mean()), "rel_2nd_half": float(rel[:, half:].mean()),
                        "rel_curve": rel.mean(0).tolist(),
                        "reynolds_error": float(np.mean([t[method]["reynolds_error"] for t in per_truth])),
                        "reynolds_estimated": "reynolds_fixed" not in per_truth[0][method],
                        "s_per_cycle": float(np.median([t[method]["s_per_cycle"] for t in per_truth])),
                        "s_per_full_cycle": float(np.median([_full_cycle(t[method]) for t in per_truth])),
                        "failed": sum("failed" in t[method] for t in per_truth), "truths": len(per_truth)}
    return rows


def table(rows: dict) -> str:
    head = ["method", "rel RMSE end", "rel RMSE 2nd half", "Re error end", "s / cycle", "s / cycle with forecast"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        re = f"{100 * r['reynolds_error']:.1f} %" + ("" if r["reynolds_estimated"] else " (prior mean, fixed)")
        if r.get("failed"):
            name = f"{name} (diverged on {r['failed']} of {r['truths']} truths)"
        lines.append(f"| {name} | {r['rel_end']:.3g} | {r['rel_2nd_half']:.3g} | {re} | {r['s_per_cycle']:.3g} | "
                     f"{r.get('s_per_full_cycle', float('nan')):.3g} |")
    return "\n".join(lines) + "\n"


def figure(rows: dict, times: list[float], path: Path) -> None:
    from solvers.figures import _figure, save_figure

    fig = _figure(7, 3.5)
    ax = fig.subplots()
    for i, (name, r) in enumerate(rows.items()):
        ax.semilogy(times[: len(r["rel_curve"])], r["rel_curve"], color=f"C{i}", label=name)
    ax.set(xlabel="t", ylabel="relative RMSE of the ensemble mean (analysis)")
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = _flow(args.data)
    test = read_trajectories(args.data, "test")
    per_truth = []
    with tempfile.TemporaryDirectory() as folder:
        for k in args.truths:
            re = float(test.params[k, 0])
            print(f"truth {k}: Re = {re:.1f}")
            per_truth.append(run_truth(args, cfg, test.state[k], re, args.checkpoint, Path(folder)))
    rows = summarise(per_truth)
    times = [float(t) for t in test.times]
    results = {"setup": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "truth_reynolds": [float(test.params[k, 0]) for k in args.truths],
               "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                               "cpu": platform.processor() or platform.machine()},
               "methods": rows, "per_truth": per_truth}
    return publish_results(args.json, results, table(rows), lambda png: figure(rows, times, png))


if __name__ == "__main__":
    raise SystemExit(main())
