"""When does a data preset's DNS become statistically steady? Enstrophy against time from its initial state.

    python benchmarks/spinup.py                                  # E2 small preset (128^2 DNS), t = 0..80, 3 runs
    python benchmarks/spinup.py --config configs/data_e2_les64.yaml --t-end 100 --members 4

Runs the ``dns:`` flow of a data config (``train_closure.py generate``'s, its seed and initial state) for
``--members`` independent runs and records the enstrophy ``0.5 <w^2>`` every ``--every`` time units. Long-run
statistics compare LES runs with the filtered DNS's frames, so those frames must come from the statistically
steady state: the table gives the mean over ``--window``-long windows, each over the steady level (the mean from
``--steady-from`` on), and the first window start after which every window stays within ``--tolerance`` of it,
beside the config's ``record.start``. Writes ``results/spinup.{json,md,png}``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from solvers import diagnostics
from solvers.data_config import load_data_config
from solvers.figures import _figure, save_figure
from solvers.io import missing_input, publish_results
from solvers.rollout import rollout
from solvers.setup import build_flow

RESULTS = Path(__file__).resolve().parent / "results"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=Path("configs/data_e2_les64_small.yaml"),
                   help="data config whose dns: flow runs (default: the E2 small preset)")
    p.add_argument("--t-end", type=float, default=80.0, help="run length in time units from t = 0")
    p.add_argument("--members", type=int, default=3, help="independent runs (the config's first trajectories)")
    p.add_argument("--every", type=float, default=1.0, help="time between enstrophy samples")
    p.add_argument("--window", type=float, default=10.0, help="averaging window of the table")
    p.add_argument("--steady-from", type=float, default=None,
                   help="the steady level is the mean from this time on (default: the second half of the run)")
    p.add_argument("--tolerance", type=float, default=0.2, help="a window within this fraction of the steady level "
                                                                "counts as steady")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="solver precision")
    p.add_argument("--json", type=Path, default=RESULTS / "spinup.json", help="results file")
    return p


def enstrophy_history(cfg, t_end: float, members: int, every: float, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Times ``(samples,)`` and enstrophy ``(samples, members)`` of the config's DNS from its initial state."""
    flow = build_flow(cfg.dns, ensemble=members, dtype=dtype, seed=cfg.seed, align=every)
    per = max(1, round(every / flow.dt))
    w, times, values = flow.w0, [0.0], [diagnostics.enstrophy(flow.w0, flow.grid).tolist()]
    for k in range(1, round(t_end / (per * flow.dt)) + 1):
        w = rollout(w, flow.equation, flow.dt, per, stepper=cfg.dns.stepper, noise=flow.noise, generator=flow.generator,
                    t0=times[-1]).w
        times.append(k * per * flow.dt)
        values.append(diagnostics.enstrophy(w, flow.grid).tolist())
        print(f"t = {times[-1]:6.1f}  enstrophy {np.mean(values[-1]):7.3f}", flush=True)
    return np.array(times), np.array(values)


def summarise(times: np.ndarray, z: np.ndarray, window: float, steady_from: float, tolerance: float) -> dict:
    """Window means of the member-mean enstrophy over its steady level, and where the flow settles."""
    mean = z.mean(1)
    level = float(mean[times >= steady_from].mean())
    starts = np.arange(0.0, times[-1] - window + 1e-9, window / 2)
    rows = [{"start": float(s), "end": float(s + window),
             "enstrophy": float(mean[(times > s) & (times <= s + window)].mean())} for s in starts]
    for r in rows:
        r["over_steady"] = r["enstrophy"] / level
    settled = next((r["start"] for i, r in enumerate(rows)
                    if all(abs(q["over_steady"] - 1) <= tolerance for q in rows[i:])), None)
    return {"steady_level": level, "steady_from": steady_from, "settled_from": settled, "windows": rows}


def table(summary: dict, record_start: float, tolerance: float) -> str:
    lines = ["| window | mean enstrophy | / steady level |", "|---|---|---|"]
    lines += [f"| {r['start']:.0f}-{r['end']:.0f} | {r['enstrophy']:.3g} | {r['over_steady']:.2f} |"
              for r in summary["windows"]]
    settled = summary["settled_from"]
    lines += ["", f"steady level (mean from t = {summary['steady_from']:.0f}): {summary['steady_level']:.3g}; "
                  f"every window within {tolerance:.0%} of it from t = "
                  f"{'never' if settled is None else f'{settled:.0f}'}; the config records from t = {record_start:g}"]
    return "\n".join(lines) + "\n"


def figure(times: np.ndarray, z: np.ndarray, summary: dict, record_start: float):
    def draw(path):
        fig = _figure(6, 3.4)
        ax = fig.subplots()
        ax.plot(times, z, lw=0.8, alpha=0.6)
        ax.plot(times, z.mean(1), "k", lw=1.5, label="mean of runs")
        ax.axhline(summary["steady_level"], color="k", ls="--", lw=0.8, label="steady level")
        ax.axvline(record_start, color="C3", ls=":", label="record.start")
        ax.set(xlabel="t", ylabel="enstrophy 0.5 <w^2>")
        ax.legend(fontsize=7)
        save_figure(fig, path, dpi=110)
    return draw


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    problem = missing_input([(args.config, "pass a data config such as configs/data_e2_les64_small.yaml")])
    if problem:
        print(problem)
        return 2
    if args.t_end <= args.window or args.every <= 0 or args.members < 1:
        print(f"error: need --t-end > --window, --every > 0 and --members >= 1 "
              f"(got {args.t_end}, {args.window}, {args.every}, {args.members})")
        return 2
    cfg = load_data_config(args.config)
    times, z = enstrophy_history(cfg, args.t_end, args.members, args.every, args.dtype)
    steady_from = args.t_end / 2 if args.steady_from is None else args.steady_from
    summary = summarise(times, z, args.window, steady_from, args.tolerance)
    results = {"config": str(args.config), "members": args.members, "record_start": cfg.record.start,
               "times": times.tolist(), "enstrophy": z.tolist(), **summary}
    return publish_results(args.json, results, table(summary, cfg.record.start, args.tolerance),
                           figure(times, z, summary, cfg.record.start))


if __name__ == "__main__":
    raise SystemExit(main())
