"""E3-style twin experiment: free ensemble vs assimilation plug-ins on a Kolmogorov flow.

    python benchmarks/assimilation_twin.py                 # 64^2, 10x10 sensors, noise 0.1, 20 members, 40 cycles
    python benchmarks/assimilation_twin.py --quick         # 32^2, 8x8 sensors, 10 cycles: a smoke run
    python benchmarks/assimilation_twin.py --methods none letkf --option letkf.radius=1.0
    python benchmarks/assimilation_twin.py --reynolds-prior 50 150 --truth-nu 0.008333333  # unknown Re

A truth run (``--truth-seed``) is observed by ``--sensors`` with Gaussian noise every ``--obs-every``
solver steps; each method runs ``simulate.py --closure METHOD --observe truth.h5`` from the same
``--members`` independent initial draws (the climatology, far from the truth). Printed and written
(JSON + PNG): the relative RMSE of the ensemble mean (``ens_mean_rel_l2``) at the end and averaged over
the second half, the spread over the RMSE there (calibration, 1 is ideal), the forecast / analysis
RMSE of the last cycles and the wall time per analysis. The flow is configs/kolmogorov_les64.yaml
(drag 0.1, k_f = 4, L = 2 pi) at ``--nu`` (default 1e-2); E3's fields are normalised, so ``--noise`` is a
fraction of the truth's vorticity RMS.

``--reynolds-prior LO HI``: joint state + parameter estimation. The truth runs at ``--truth-nu``, every
method (``none`` included, as the free baseline) gets ``reynolds_prior: [LO, HI]``: each member its own
``Re = 1/nu`` drawn log-uniformly (the same draws for every method), estimated by the filters. Printed
and written too: the final ensemble-mean Re, its spread and the relative error against ``1/truth_nu``
(for ``none``: the prior draws' mean, never updated).
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import h5py
import numpy as np
import torch

import simulate
from closure.evaluation import parse_options
from solvers.io import publish_results

RESULTS = Path(__file__).resolve().parent / "results"
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "kolmogorov_les64.yaml"
DEFAULT_OPTIONS = {"enkf": {"radius": 1.5, "inflation": 1.5}, "letkf": {"radius": 1.5, "inflation": 1.5}}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["none", "enkf", "letkf"], help="plug-ins ('none': free run)")
    p.add_argument("--n", type=int, default=64, help="grid points per direction")
    p.add_argument("--members", type=int, default=20, help="ensemble size (E3: 20)")
    p.add_argument("--sensors", default="regular:10x10", help="sensor layout (E3: a 10x10 lattice)")
    p.add_argument("--noise", type=float, default=0.1, help="observation noise standard deviation as a fraction "
                   "of the truth's vorticity RMS (E3: 0.1 in normalised units)")
    p.add_argument("--obs-every", type=int, default=20, help="solver steps between observations")
    p.add_argument("--cycles", type=int, default=40, help="assimilation cycles (E3: 40)")
    p.add_argument("--dt", type=float, default=0.01, help="time step")
    p.add_argument("--nu", type=float, default=1e-2, help="viscosity (default 1e-2: with 1e-3 the vorticity has "
                   "scales finer than the 10x10 sensor spacing and the physical-space filters diverge)")
    p.add_argument("--truth-nu", type=float, help="the truth's viscosity (default --nu); Re = 1/nu")
    p.add_argument("--reynolds-prior", type=float, nargs=2, metavar=("LO", "HI"), help="unknown Reynolds number: "
                   "every member's Re = 1/nu drawn log-uniformly from [LO, HI] and estimated (default: all at --nu)")
    p.add_argument("--truth-seed", type=int, default=100, help="seed of the truth's initial state")
    p.add_argument("--seed", type=int, default=1, help="seed of the ensemble's initial draws")
    p.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help=f"plug-in option, value read as YAML (defaults {DEFAULT_OPTIONS})")
    p.add_argument("--out", type=Path, default=Path("runs/assimilation_twin"), help="folder for the runs")
    p.add_argument("--json", type=Path, help="results file (default results/assimilation_twin.json, with "
                   "--reynolds-prior results/assimilation_twin_reynolds.json)")
    p.add_argument("--quick", action="store_true", help="32^2, 8x8 sensors, 10 cycles")
    return p


def run(args: argparse.Namespace) -> dict:
    if args.quick:
        args.n, args.sensors, args.cycles, args.members, args.dt = 32, "regular:8x8", 10, 10, 0.01
    args.out.mkdir(parents=True, exist_ok=True)
    steps = args.obs_every * args.cycles
    flow = ["--config", str(CONFIG), "--set", f"flow.n={args.n}", "--set", f"flow.dt={args.dt}", "--set", f"flow.nu={args.nu}",
            "--set", f"record_every={args.obs_every}", "--steps", str(steps), "--quiet"]
    truth = args.out / "truth.h5"
    truth_nu = args.nu if args.truth_nu is None else args.truth_nu
    if simulate.main(flow + ["--seed", str(args.truth_seed), "--set", f"flow.nu={truth_nu}", "--no-figures",
                             "--out", str(truth)]) != 0:
        raise SystemExit("the truth run failed")
    with h5py.File(truth) as f:
        rms = float(np.sqrt(np.mean(f["vorticity"][0].astype(np.float64) ** 2)))
    sigma = args.noise * rms
    given = parse_options(args.option)
    options = {m: {**DEFAULT_OPTIONS.get(m, {}), **given.get(m, {})} for m in args.methods}
    if args.reynolds_prior is not None:
        for m in args.methods:
            options[m].setdefault("reynolds_prior", list(args.reynolds_prior))
    rows = {}
    for method in args.methods:
        path = args.out / f"{method}.h5"
        sets = [a for k, v in options.get(method, {}).items() for a in ("--set", f"closure.options.{k}={v}")]
        twin = ["--ensemble", str(args.members), "--seed", str(args.seed), "--observe", str(truth),
                "--sensors", args.sensors, "--noise", f"{sigma:.6g}", "--obs-every", str(args.obs_every)]
        start = time.perf_counter()
        code = simulate.main(flow + twin + sets + ["--closure", method, "--no-figures", "--out", str(path)])
        rows[method] = _summary(path, time.perf_counter() - start, code, options.get(method, {}), 1 / truth_nu)
    setup = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return {"setup": {**setup, "truth_rms": rms, "noise_std": sigma, "truth_reynolds": 1 / truth_nu},
            "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                            "cpu": platform.processor() or platform.machine()},
            "methods": rows}


def _summary(path: Path, wall: float, code: int, options: dict, truth_reynolds: float) -> dict:
    with h5py.File(path) as f:
        m = {k: f["metrics"][k][:] for k in f["metrics"]}
        a = {k: f["assimilation"][k][:] for k in f["assimilation"]} if "assimilation" in f else None
        re = {k: f["reynolds"][k][:] for k in f["reynolds"]} if "reynolds" in f else None
        status = f.attrs["status"]
    half = len(m["time"]) // 2
    err, spread = m["ens_mean_rel_l2"], m["spread"]
    row = {"status": status, "exit": code, "options": options, "wall_s": wall, "time": m["time"].tolist(),
           "ens_mean_rel_l2": err.tolist(), "spread": spread.tolist(), "final_rel": float(err[-1]),
           "mean_rel_2nd_half": float(err[half:].mean())}
    if a is not None:
        last = slice(len(a["time"]) // 2, None)
        row.update(rmse_f=float(a["rmse_f"][last].mean()), rmse_a=float(a["rmse_a"][last].mean()),
                   spread_a=float(a["spread_a"][last].mean()), s_per_cycle=float(np.median(a["seconds"])),
                   spread_skill=float(a["spread_f"][last].mean() / a["rmse_f"][last].mean()))
    if re is not None:
        row.update(_reynolds_summary(re["prior"], re["final"], truth_reynolds))
        if a is not None and "reynolds" in a:
            row.update(reynolds_time=a["time"].tolist(), reynolds_mean=a["reynolds"].tolist())
    return row


def _reynolds_summary(prior: np.ndarray, final: np.ndarray, truth: float) -> dict:
    """Members' Re ``(members,)`` at the start and the end against the truth's: mean, spread (std), relative error."""
    return {"reynolds_prior_mean": float(prior.mean()), "reynolds_prior_error": float(abs(prior.mean() - truth) / truth),
            "reynolds_final": float(final.mean()), "reynolds_spread": float(final.std(ddof=1)),
            "reynolds_error": float(abs(final.mean() - truth) / truth),
            "reynolds_spread_rel": float(final.std(ddof=1) / truth)}


def table(results: dict) -> str:
    reynolds = any("reynolds_final" in r for r in results["methods"].values())
    head = ["method", "rel RMSE end", "rel RMSE 2nd half", "rmse_f", "rmse_a", "spread/rmse (f)", "s / analysis",
            "run s", "status"]
    head += ["Re end (truth {:.4g})".format(results["setup"]["truth_reynolds"]), "Re rel error (spread)"] * reynolds
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results["methods"].items():
        cells = [name, f"{r['final_rel']:.3g}", f"{r['mean_rel_2nd_half']:.3g}"]
        cells += [f"{r[k]:.3g}" if k in r else "—" for k in ("rmse_f", "rmse_a", "spread_skill", "s_per_cycle")]
        cells += [f"{r['wall_s']:.1f}", r["status"]]
        if reynolds and "reynolds_final" in r:
            fixed = "" if "reynolds_mean" in r else " (prior, fixed)"
            cells += [f"{r['reynolds_final']:.4g} ± {r['reynolds_spread']:.2g}{fixed}",
                      f"{100 * r['reynolds_error']:.1f} % ({100 * r['reynolds_spread_rel']:.1f} %)"]
        elif reynolds:
            cells += ["—", "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(results: dict, path: Path) -> None:
    from solvers.figures import _figure, save_figure

    reynolds = any("reynolds_final" in r for r in results["methods"].values())
    fig = _figure(11 if reynolds else 7, 3.5)
    axes = fig.subplots(1, 2 if reynolds else 1, squeeze=False)[0]
    for i, (name, r) in enumerate(results["methods"].items()):
        axes[0].semilogy(r["time"], r["ens_mean_rel_l2"], color=f"C{i}", label=name)
        if reynolds and "reynolds_mean" in r:
            axes[1].plot(r["reynolds_time"], r["reynolds_mean"], color=f"C{i}", label=name)
        elif reynolds and "reynolds_final" in r:
            axes[1].axhline(r["reynolds_final"], color=f"C{i}", ls=":", label=f"{name} (prior mean)")
    axes[0].set(xlabel="t", ylabel="ens_mean_rel_l2 vs truth" + ("" if reynolds else
                                                               " (at observation times, before the analysis)"))
    if reynolds:
        axes[1].axhline(results["setup"]["truth_reynolds"], color="k", ls="--", label="truth")
        axes[1].set(xlabel="t", ylabel="ensemble-mean Re = 1/nu (analysis)")
        axes[1].legend(fontsize=8)
    axes[0].legend(fontsize=8)
    save_figure(fig, path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.json is None:
        args.json = RESULTS / ("assimilation_twin.json" if args.reynolds_prior is None else "assimilation_twin_reynolds.json")
    results = run(args)
    return publish_results(args.json, results, table(results), lambda png: figure(results, png))


if __name__ == "__main__":
    raise SystemExit(main())
