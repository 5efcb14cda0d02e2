"""How close can any closure bring an E2 LES to the filtered DNS? LES runs driven by the exact closure.

    python benchmarks/e2_exact_closure.py                     # E2 small preset (128^2 DNS), 64^2 and 32^2, ~5 min
    python benchmarks/e2_exact_closure.py --config configs/data_e2_les64.yaml --members 4

Runs the ``dns:`` flow of a data config (its seed and initial states, ``--members`` runs) to ``--start``, then
steps it together with LES runs on each ``--grids`` size started from the filtered DNS (the data's
coarse-graining), every LES variant the same flow with the LES time step ``dt_dns n_dns / n_les`` of
:func:`closure.evaluation.coarse_flow`:

- ``none``: no closure (the filtered forcing and the data's LES dealiasing, ``coarse.dealias``);
- ``exact``: ``-Pi`` (:func:`solvers.filters.les_closure_term`) of the running DNS at every LES step: the closure
  every learned model is trained to reproduce. Its error is the LES time discretisation alone: the floor no
  closure can beat;
- ``exact, every 5``: the same term held for 5 LES steps (the learned plug-ins' default period);
- ``2/3 LES: none`` and ``2/3 LES: exact``: the same with the 2/3 rule in the LES (the layout-2 default);
- ``2/3 LES: dealiased -Pi`` and ``..., unfiltered f``: the layout-1 closure term (its part above the LES's 2/3
  cutoff removed), with the filtered and the unfiltered forcing: what the E2 data and LES held before.

Prints (and writes to ``results/e2_exact_closure.{json,md,png}``) the member-mean rel_l2 against the filtered
DNS at ``--times`` after the start.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from solvers import diagnostics
from solvers.data_config import load_data_config
from solvers.figures import _figure, save_figure
from solvers.filters import coarse_grain, les_closure_term
from solvers.io import missing_input, publish_results
from solvers.rollout import rollout
from solvers.setup import build_flow

RESULTS = Path(__file__).resolve().parent / "results"
# name: (LES dealiasing: the data's or the 2/3 rule, filtered forcing, closure)
VARIANTS = {"none": ("data", True, "none"), "exact": ("data", True, "exact"), "exact, every 5": ("data", True, "held"),
            "2/3 LES: none": ("2/3", True, "none"), "2/3 LES: exact": ("2/3", True, "exact"),
            "2/3 LES: dealiased -Pi": ("2/3", True, "masked"),
            "2/3 LES: dealiased -Pi, unfiltered f": ("2/3", False, "masked")}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=Path("configs/data_e2_les64_small.yaml"),
                   help="E2 data config whose dns: flow and coarse-graining are used (default: the small preset)")
    p.add_argument("--grids", type=int, nargs="+", default=[64, 32], help="LES grid sizes (each divides dns.n)")
    p.add_argument("--members", type=int, default=2, help="independent DNS runs (the config's first trajectories)")
    p.add_argument("--start", type=float, default=30.0, help="time the LES runs start (after the DNS burn-in)")
    p.add_argument("--times", type=float, nargs="+", default=[0.1, 0.5, 1, 2, 5, 10],
                   help="times after the start at which the errors are reported (the last is the run length)")
    p.add_argument("--json", type=Path, default=RESULTS / "e2_exact_closure.json", help="results file")
    return p


class _Tendency:
    """A plug-in returning a fixed tendency ``(batch, x, y)``."""

    kind = "tendency"

    def __init__(self, value: torch.Tensor | None) -> None:
        self.value = value

    def __call__(self, state):
        return self.value


def run(cfg, grids: list[int], members: int, start: float, times: list[float]) -> dict:
    """rel_l2 ``{grid: {variant: (len(times),)}}`` of the LES variants against the filtered DNS."""
    dns = build_flow(cfg.dns, ensemble=members, dtype="float64", seed=cfg.seed)
    if dns.dt * round(start / dns.dt) != start:
        start = dns.dt * round(start / dns.dt)
    w = rollout(dns.w0, dns.equation, dns.dt, round(start / dns.dt), stepper=cfg.dns.stepper).w
    method, width, length = cfg.coarse.method, cfg.coarse.width, dns.grid.length
    les, state, ratio = {}, {}, {}
    for n in grids:
        if cfg.dns.n % n:
            raise ValueError(f"LES grid {n} must divide the DNS grid {cfg.dns.n}")
        ratio[n] = cfg.dns.n // n
        base = replace(cfg.dns, n=n, init=replace(cfg.dns.init, kind="taylor_green", params={}))
        les[n] = {}
        for v, (dealias, filtered, _) in VARIANTS.items():
            forcing = replace(cfg.dns.forcing, filter=method, filter_width=width) if filtered else cfg.dns.forcing
            mode = cfg.coarse.dealias if dealias == "data" else dealias
            les[n][v] = build_flow(replace(base, forcing=forcing, dealias=mode), 1, dtype="float64").equation
        w_bar = coarse_grain(w, n, method, width, length=length)
        state[n] = {v: w_bar.clone() for v in VARIANTS}
    unit = int(np.lcm.reduce(list(ratio.values())))  # report where every LES has reached the DNS's time
    marks = {max(1, round(t / (dns.dt * unit))) * unit: i for i, t in enumerate(times)}
    errors = {n: {v: np.zeros(len(times)) for v in VARIANTS} for n in grids}
    held = {n: None for n in grids}
    for step in range(max(marks) + 1):
        for n in grids:
            if step % ratio[n]:
                continue
            les_step, dt = step // ratio[n], dns.dt * ratio[n]
            data_pi = -les_closure_term(w, n, method, width, length=length, dealias=cfg.coarse.dealias)
            two_thirds = data_pi if cfg.coarse.dealias in (True, "2/3") else \
                -les_closure_term(w, n, method, width, length=length, dealias="2/3")
            if les_step % 5 == 0:
                held[n] = data_pi
            grid = les[n]["none"].grid
            masked = grid.irfft(grid.rfft(two_thirds) * grid.dealias)
            for v, (dealias, _, kind) in VARIANTS.items():
                exact = data_pi if dealias == "data" else two_thirds
                tendency = {"none": None, "exact": exact, "held": held[n], "masked": masked}[kind]
                state[n][v] = rollout(state[n][v], les[n][v], dt, 1, stepper=cfg.dns.stepper, plugin=_Tendency(tendency),
                                      check_every=10 ** 9).w
        w = rollout(w, dns.equation, dns.dt, 1, stepper=cfg.dns.stepper, check_every=10 ** 9).w
        if step + 1 in marks:
            i = marks[step + 1]
            for n in grids:
                truth = coarse_grain(w, n, method, width, length=length)
                for v in VARIANTS:
                    errors[n][v][i] = float(diagnostics.rel_l2(state[n][v], truth))
            print(f"t = {start + times[i]:6.2f}  " + "  ".join(
                f"{n}^2 none {errors[n]['none'][i]:.3f} exact {errors[n]['exact'][i]:.2e}" for n in grids), flush=True)
    return {str(n): {v: e.tolist() for v, e in errors[n].items()} for n in grids}


def table(errors: dict, times: list[float]) -> str:
    lines = []
    for n, rows in errors.items():
        lines += [f"LES {n}^2, rel_l2 against the filtered DNS, time after the start:", "",
                  "| LES variant | " + " | ".join(f"t + {t:g}" for t in times) + " |",
                  "|---|" + "---|" * len(times)]
        lines += [f"| {v} | " + " | ".join(f"{e:.3g}" for e in rows[v]) + " |" for v in VARIANTS]
        lines.append("")
    return "\n".join(lines)


def figure(errors: dict, times: list[float]):
    def draw(path):
        fig = _figure(4 * len(errors), 3.2)
        for ax, (n, rows) in zip(np.atleast_1d(fig.subplots(1, len(errors))), errors.items()):
            for v in VARIANTS:
                ax.plot(times, np.maximum(rows[v], 1e-12), marker="o", ms=3, label=v)
            ax.set(xscale="log", yscale="log", xlabel="time after start", ylabel="rel_l2 vs filtered DNS",
                   title=f"LES {n}^2")
        ax.legend(fontsize=6)
        save_figure(fig, path, dpi=110)
    return draw


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    problem = missing_input([(args.config, "pass an E2 data config such as configs/data_e2_les64_small.yaml")])
    if problem:
        print(problem)
        return 2
    cfg = load_data_config(args.config)
    if cfg.kind != "e2" or args.members < 1 or sorted(args.times) != args.times or args.times[0] <= 0:
        print(f"error: need an E2 config (got kind {cfg.kind}), --members >= 1 and increasing --times > 0")
        return 2
    errors = run(cfg, args.grids, args.members, args.start, args.times)
    results = {"config": str(args.config), "members": args.members, "start": args.start, "times": args.times,
               "rel_l2": errors}
    return publish_results(args.json, results, table(errors, args.times), figure(errors, args.times))


if __name__ == "__main__":
    raise SystemExit(main())
