"""E4 with time history: sparse sensors read every frame, cycled with the solver (gappy POD about the forecast).

    python benchmarks/reconstruction_history.py                      # E1 small data: 0.25 / 1 / 3 %, 40 frames
    python benchmarks/reconstruction_history.py --data data/e2_les64_small.h5 --shifts x --json \\
        benchmarks/results/reconstruction_history_e2_les64.json

A snapshot method sees one frame's sensors; SDIFT (seed 002) reconstructs the field's evolution from the
sensors of every frame. Here the state is estimated the way ``gappy_pod`` with ``background: forecast`` does it
inside ``simulate.py --observe``: at frame 0 the posterior mean of gappy POD (the snapshot reconstruction, about
the snapshots' mean), then at every frame the flow's own 64^2 solver (its physics with convection, no closure;
``forecast.py``'s model) forecasts the state to the next frame and gappy POD fits the misfit of the forecast at
the new sensors (optimal interpolation with the snapshots' covariance scaled by ``--forecast-error``, by default
estimated from the innovations: :class:`latent.pod.ForecastErrorScale`; :func:`latent.pod.gappy_reconstruct`
with ``background``). ``--starts`` windows of ``--frames`` frames of the test trajectory run as one batch.

For each sensor fraction, noise level (0 and ``--noise`` x the fields' RMS) and layout (``fixed``: one random
off-grid layout per window; ``changing``: a new one every frame) the table gives ``rel_l2`` of the estimate
after 0 (the snapshot reconstruction), 1, 5, 10, 20 and the last cycles, its mean over the second half, the
analysis milliseconds and solver seconds per frame. ``floor``: the RMS fraction of the test fields at
wavenumbers ``|k| > sqrt(sensors / pi)`` (the disc holding as many modes as there are sensors): what a linear
reconstruction from one frame cannot see; it explains why the Kolmogorov flows stay near 0.8 at 1 %.
Writes ``results/reconstruction_history.{json,md,png}``.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from forecast import prior_basis, resolved_model
from latent.pod import ForecastErrorScale, gappy_reconstruct, posterior_ridge
from solvers.diagnostics import rel_l2
from solvers.figures import _figure, save_figure
from solvers.io import missing_input, publish_results
from solvers.observation import ObservationOperator, random_sensors
from solvers.pairs import read_pairs
from solvers.rollout import rollout
from solvers.symmetry import SHIFTS

RESULTS = Path(__file__).resolve().parent / "results"
SHOW = (0, 1, 5, 10, 20)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/e1_small.h5", help="pair file (test trajectory: truth; train: POD prior)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.25, 1.0, 3.0], help="sensors, %% of grid points")
    p.add_argument("--noise", type=float, default=0.1, help="noise standard deviation / field RMS (default 0.1)")
    p.add_argument("--frames", type=int, default=40, help="frames (observation times) per window")
    p.add_argument("--starts", type=int, default=3, help="windows, from evenly spaced test frames")
    p.add_argument("--modes", type=int, default=100, help="POD modes of the prior (default 100)")
    p.add_argument("--shifts", default="diagonal", choices=SHIFTS,
                   help="symmetry of the flow: the prior's snapshots get shifted copies (E1: diagonal, E2: x)")
    p.add_argument("--copies", type=int, default=4, help="shifted copies of the snapshots (1: none)")
    p.add_argument("--forecast-error", type=_forecast_error, default="auto",
                   help="the forecast's error variance as a fraction of the snapshots' (gappy_pod's forecast_error), "
                   "or auto (default): estimated from the innovations, latent.pod.ForecastErrorScale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=RESULTS / "reconstruction_history.json", help="results file")
    return p


def _forecast_error(text: str) -> float | str:
    if text == "auto":
        return text
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--forecast-error must be auto or > 0, got {text}")
    return value


def spectral_floor(fields: torch.Tensor, count: int) -> float:
    """RMS fraction of ``fields`` ``(batch, x, y)`` at integer wavenumbers ``|k| > sqrt(count / pi)``."""
    n = fields.shape[-1]
    power = torch.fft.fft2(fields).abs().pow(2).mean(0)
    k = torch.fft.fftfreq(n, 1 / n, dtype=fields.dtype)
    radius = (k[:, None] ** 2 + k[None, :] ** 2).sqrt()
    return float((power[radius > math.sqrt(count / math.pi)].sum() / power.sum()).sqrt())


def cycle(truth: torch.Tensor, basis, model, count: int, noise_std: float, changing: bool,
          g: torch.Generator, forecast_error: float | str = "auto") -> dict:
    """Cycle gappy POD about the forecast over ``truth`` ``(window, frame, x, y)``: ``rel_l2`` per frame of the
    analysis (mean over windows), analysis and solver seconds per frame; ``forecast_error``: a fraction of the
    snapshots' covariance, or ``auto`` (:class:`latent.pod.ForecastErrorScale`, one stream per window)."""
    flow_cfg, flow, dt, steps = model
    windows, frames = truth.shape[:2]
    scale = ForecastErrorScale(basis) if forecast_error == "auto" else None
    grid = flow.grid

    def layouts():  # one random layout per window: its operator and rows (sensors, x*y)
        ops = [ObservationOperator(grid, random_sensors(count, grid.length, g)) for _ in range(windows)]
        return [(op, op.matrix().double()) for op in ops]

    sensors = layouts()
    variances = [basis.sensor_variance(rows) for _, rows in sensors] if scale is not None else None
    w = basis.mean.expand(windows, -1).reshape(windows, grid.n, grid.n).clone()  # frame 0: about the mean
    errors, analysis_s, solver_s = [], 0.0, 0.0
    for i in range(frames):
        if i > 0:
            tick = time.perf_counter()
            w = rollout(w, flow.equation, dt, steps, stepper=flow_cfg.stepper, check_every=steps).w
            solver_s += time.perf_counter() - tick
            if changing:
                sensors = layouts()
                variances = [basis.sensor_variance(rows) for _, rows in sensors] if scale is not None else None
        tick = time.perf_counter()
        analyses = []
        for j, (op, rows) in enumerate(sensors):
            y = op(truth[j, i][None]) + noise_std * torch.randn(1, count, generator=g, dtype=torch.float64)
            a = 1.0 if i == 0 else (forecast_error if scale is None else  # frame 0: about the snapshots' mean
                                    scale.update(j, y[0] - rows @ w[j].reshape(-1), noise_std ** 2, variances[j]))
            analyses.append(gappy_reconstruct(basis, y, rows, posterior_ridge(basis, noise_std ** 2 / a),
                                              background=w[j][None]))
        w = torch.cat(analyses)
        analysis_s += time.perf_counter() - tick
        errors.append(float(rel_l2(w, truth[:, i])))
    return {"rel_l2": errors, "analysis_ms": 1e3 * analysis_s / frames / windows,
            "solver_s": solver_s / max(frames - 1, 1)}


def run(args) -> dict:
    train, test = read_pairs(args.data, "train"), read_pairs(args.data, "test")
    interval = float(test.times[1] - test.times[0])
    model = resolved_model(test.attrs, interval)
    n = model[1].grid.n
    trajectory = test.state[test.trajectories == test.trajectories[0]].double()  # the first test trajectory
    if len(trajectory) < args.frames:
        raise SystemExit(f"error: the test trajectory has {len(trajectory)} frames, fewer than --frames {args.frames}")
    starts = np.linspace(0, len(trajectory) - args.frames, args.starts).round().astype(int)
    truth = torch.stack([trajectory[s:s + args.frames] for s in starts])  # (window, frame, x, y)
    rms = float(truth.pow(2).mean().sqrt())
    basis = prior_basis(train, args.modes, args.shifts, args.copies, args.seed)
    rollout(truth[:, 0], model[1].equation, model[2], 2, stepper=model[0].stepper)  # warm-up (FFT plans)
    g = torch.Generator().manual_seed(args.seed)
    rows = []
    for fraction in args.fractions:
        count = max(3, round(fraction / 100 * n * n))
        floor = spectral_floor(trajectory, count)
        for noise in (0.0, args.noise):
            for layout in ("fixed", "changing"):
                out = cycle(truth, basis, model, count, noise * rms, layout == "changing", g, args.forecast_error)
                half = out["rel_l2"][len(out["rel_l2"]) // 2:]
                rows.append({"fraction_pct": fraction, "sensors": count, "noise": noise, "layout": layout,
                             "floor": floor, "second_half": float(np.mean(half)), **out})
                print(f"{fraction:5.2f}% {count:4d} noise {noise:.2f} {layout:8s} rel_l2 frame 0 "
                      f"{out['rel_l2'][0]:.3f} -> last {out['rel_l2'][-1]:.3f} (2nd half {rows[-1]['second_half']:.3f})",
                      flush=True)
    return {"data": str(args.data), "grid_n": n, "frame_dt": interval, "solver_dt": model[2],
            "starts": starts.tolist(), "frames": args.frames, "field_rms": rms, "modes": args.modes,
            "shifts": args.shifts, "copies": args.copies, "forecast_error": args.forecast_error, "rows": rows}


def table(results: dict) -> str:
    shown = [i for i in SHOW if i < results["frames"] - 1] + [results["frames"] - 1]
    head = " | ".join(f"{i}" for i in shown)
    lines = [f"{results['data']}: {len(results['starts'])} windows of {results['frames']} frames "
             f"({results['frame_dt']:g} time units apart), gappy POD posterior ({results['modes']} modes, shifts "
             f"{results['shifts']} x {results['copies']}) about the solver's forecast (forecast error "
             f"{results.get('forecast_error', 1.0)} x the snapshots' covariance after frame 0); rel_l2 after N cycles "
             f"(0: the snapshot reconstruction)\n",
             f"| sensors | noise | layout | floor | {head} | 2nd half | analysis ms | solver s / frame |",
             "|---|---|---|---|" + "---|" * len(shown) + "---|---|---|"]
    for r in results["rows"]:
        values = " | ".join(f"{r['rel_l2'][i]:.3f}" for i in shown)
        lines.append(f"| {r['fraction_pct']:g} % ({r['sensors']}) | {r['noise']:g} | {r['layout']} | {r['floor']:.3f} | "
                     f"{values} | {r['second_half']:.3f} | {r['analysis_ms']:.3g} | {r['solver_s']:.3g} |")
    return "\n".join(lines) + "\n"


def figure(results: dict, path: Path) -> None:
    fig = _figure(6, 4)
    ax = fig.subplots()
    colors = {}
    for r in results["rows"]:
        if r["layout"] != "changing":
            continue
        color = colors.setdefault(r["fraction_pct"], f"C{len(colors)}")
        ax.plot(r["rel_l2"], color=color, ls="-" if r["noise"] == 0 else "--",
                label=f"{r['fraction_pct']:g} %, noise {r['noise']:g}")
    ax.axhline(0.10, color="k", lw=0.5, ls=":")
    ax.set(xlabel="cycles (frames observed - 1)", ylabel="rel_l2", yscale="log",
           title=f"gappy POD cycled with the solver, {Path(results['data']).stem}, changing layouts")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    error = missing_input([(args.data, "make it with `python train_closure.py generate --config "
                                       "configs/data_e1_small.yaml`")])
    if error:
        print(error)
        return 2
    results = run(args)
    return publish_results(args.json, results, table(results), lambda png: figure(results, png))


if __name__ == "__main__":
    raise SystemExit(main())
