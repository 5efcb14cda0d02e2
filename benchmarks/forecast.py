"""E4 forecasting: error vs horizon of reconstruct-then-simulate from sparse sensors (issue 6).

    python benchmarks/forecast.py                         # E1 small data, 1 % sensors, noise 0.1, 30 frames
    python benchmarks/forecast.py --fraction 3 --noise 0 --starts 10

For ``--starts`` start frames of the test trajectory of a pair file: the sensors (``--fraction`` % of
the grid points at uniform random off-grid positions, a new layout per start, additive noise
``--noise`` x the fields' RMS) are read at the start frame, the state is reconstructed from them, and
the flow's own 64^2 solver (E1's physics with its convection: the "resolved" model, within ~1e-3 of
the truth over 20 time units when started from the true state) forecasts ``--horizon`` frames
(0.1 time units each). Scored by ``rel_l2`` against the test frames at every horizon, averaged over
starts; ``persist`` holds the reconstruction fixed (the trivial forecast). Initial states:

- ``truth``: the exact state (the solver's own error: the bound);
- ``sparse_recon`` (``--checkpoint``), ``gappy_pod`` (posterior mean, basis: the train split and
  shifted copies, see ``reconstruction.py``), ``cubic``.

Against them, the pure-latent forecaster ``vq_forecast`` (``--vq-checkpoint``; seed 001): the same sensors
give the dense field's codes, its transformer forecasts the codes frame by frame from that one frame, and
the decoder turns them into fields (no solver); a model whose forecast step spans ``stride`` frames is
scored in between by linear interpolation in time. Its row ``truth`` starts from the exact state's codes
instead (the forecaster's own error, without the sparse encoder's).

Writes ``results/forecast.{json,md,png}``.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from closure.closed_loop import coarse_flow
from latent.pod import fit_pod, gappy_reconstruct, posterior_ridge
from reconstruction import SHIPPED, load_learned, load_model
from solvers.diagnostics import rel_l2
from solvers.figures import _figure, save_figure
from solvers.io import missing_input, publish_results
from solvers.observation import ObservationOperator, random_sensors
from solvers.pairs import read_pairs
from solvers.reconstruction import cubic_interpolate
from solvers.rollout import rollout
from solvers.setup import build_flow
from solvers.symmetry import SHIFTS, augment_shifts

RESULTS = Path(__file__).resolve().parent / "results"
SHOW = (0, 1, 5, 10, 20, 30)
VQ_DEFAULT = "none"  # not shipped (11 MB): train one, see the README


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/e1_small.h5", help="pair file (test trajectory: truth; train: POD)")
    p.add_argument("--checkpoint", default=str(SHIPPED), help="sparse_recon checkpoint; 'none' skips it")
    p.add_argument("--vq-checkpoint", default=str(VQ_DEFAULT),
                   help="vq_forecast checkpoint (python train_closure.py train --closure vq_forecast); 'none' skips it")
    p.add_argument("--fraction", type=float, default=1.0, help="sensors, %% of grid points (default 1)")
    p.add_argument("--noise", type=float, default=0.1, help="noise standard deviation / field RMS (default 0.1)")
    p.add_argument("--starts", type=int, default=6, help="forecasts, from evenly spaced test frames")
    p.add_argument("--horizon", type=int, default=30, help="frames forecast (0.1 time units each)")
    p.add_argument("--modes", type=int, default=100, help="gappy POD modes (posterior mean; default 100)")
    p.add_argument("--shifts", default="diagonal", choices=SHIFTS,
                   help="symmetry of the flow: gappy POD's snapshots get shifted copies (E1: diagonal)")
    p.add_argument("--copies", type=int, default=4, help="shifted copies of the snapshots (1: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=RESULTS / "forecast.json", help="results file")
    return p


def resolved_model(attrs: dict, interval: float):
    """``(flow config, flow, dt, steps)`` of a pair file's 64^2 model with its own convection, float64 on the
    CPU: ``steps`` steps of ``dt`` (the file's coarse step, shortened to divide it) span ``interval``."""
    flow_cfg, dt = coarse_flow(attrs)
    flow_cfg = replace(flow_cfg, convection=True)
    flow = build_flow(replace(flow_cfg, init=replace(flow_cfg.init, kind="taylor_green", params={})), 1, "cpu",
                      "float64")
    steps = max(1, math.ceil(interval / dt - 1e-6))
    return flow_cfg, flow, interval / steps, steps


def prior_basis(train, modes: int, shifts: str, copies: int, seed: int):
    """The POD prior of gappy POD's posterior mean: ``modes`` modes of (at most 2000 of) the train states and
    ``copies - 1`` copies of them shifted along the flow's symmetry ``shifts``."""
    pick = np.linspace(0, len(train.state) - 1, min(2000, len(train.state))).round().astype(int)
    return fit_pod(augment_shifts(train.state[pick].double(), shifts, copies, seed), modes)


def reconstructors(args, train, grid, noise_var: float) -> dict:
    """name -> ``f(y (1, sensors), operator) -> (1, x, y)``; gappy POD: the posterior mean for sensors of
    noise variance ``noise_var`` in ``--modes`` modes of the train states and shifted copies of them."""
    basis = prior_basis(train, args.modes, args.shifts, args.copies, args.seed)
    ridge = posterior_ridge(basis, noise_var)
    methods = {"cubic": lambda y, op: cubic_interpolate(y, op.positions, grid),
               "gappy_pod": lambda y, op: gappy_reconstruct(basis, y, op.matrix().double(), ridge=ridge)}
    if args.checkpoint != "none":
        learned = load_learned(args.checkpoint, grid)
        methods["sparse_recon"] = lambda y, op: learned(y, op, noise_var)[0]
    return methods


def run(args) -> dict:
    train, test = read_pairs(args.data, "train"), read_pairs(args.data, "test")
    interval = float(test.times[1] - test.times[0])
    flow_cfg, flow, dt, steps_per = resolved_model(test.attrs, interval)
    grid, eq = flow.grid, flow.equation
    truth = test.state.double()
    starts = np.linspace(0, len(truth) - args.horizon - 1, args.starts).round().astype(int)
    count = max(3, round(args.fraction / 100 * grid.n ** 2))
    rms = float(truth.pow(2).mean().sqrt())
    g = torch.Generator().manual_seed(args.seed)
    methods = reconstructors(args, train, grid, (args.noise * rms) ** 2)
    initial = {name: [] for name in ["truth", *methods]}
    recon_s = {name: 0.0 for name in initial}
    readings = []
    for s in starts:
        op = ObservationOperator(grid, random_sensors(count, grid.length, g))
        y = op(truth[s][None]) + args.noise * rms * torch.randn(1, count, generator=g, dtype=torch.float64)
        readings.append((y, op))
        initial["truth"].append(truth[s][None])
        for name, f in methods.items():
            tick = time.perf_counter()
            initial[name].append(f(y, op))
            recon_s[name] += time.perf_counter() - tick
    target = torch.stack([truth[starts + h] for h in range(args.horizon + 1)], 1)  # (start, horizon, x, y)
    curves = {}
    rollout(truth[:1], eq, dt, 2, stepper=flow_cfg.stepper)  # warm-up: FFT plans, first-call overheads
    for name, w0 in initial.items():
        w0 = torch.cat(w0)
        tick = time.perf_counter()
        result = rollout(w0, eq, dt, args.horizon * steps_per, stepper=flow_cfg.stepper, record_every=steps_per)
        sim_s = time.perf_counter() - tick
        frames = torch.stack([torch.as_tensor(f, dtype=torch.float64) for f in result.frames], 1)
        curves[name] = {"rel_l2": [float(rel_l2(frames[:, h], target[:, h])) for h in range(args.horizon + 1)],
                        "persist": [float(rel_l2(w0, target[:, h])) for h in range(args.horizon + 1)],
                        "reconstruct_s": recon_s[name] / len(starts), "simulate_s": sim_s / len(starts)}
        print(f"{name:12s} rel_l2 at h=0 {curves[name]['rel_l2'][0]:.3f}, h={args.horizon} "
              f"{curves[name]['rel_l2'][-1]:.3f}", flush=True)
    if args.vq_checkpoint != "none":
        curves.update(latent_forecasts(args.vq_checkpoint, grid, truth, starts, readings, target))
    return {"data": str(args.data), "sensors": count, "fraction_pct": args.fraction, "noise": args.noise,
            "starts": starts.tolist(), "frame_dt": interval, "solver_dt": dt, "checkpoint": args.checkpoint,
            "vq_checkpoint": args.vq_checkpoint, "curves": curves}


@torch.no_grad()
def latent_forecasts(path, grid, truth, starts, readings, target) -> dict:
    """Curves of ``vq_forecast`` from the sensors (``readings``: ``(y, operator)`` per start) and from the
    exact start frames' codes: ``rel_l2`` per horizon against ``target`` ``(start, horizon, x, y)``."""
    model, norm = load_model(path, grid)
    horizon, out = target.shape[1] - 1, {}
    for name in ("vq_forecast", "vq_forecast_truth"):
        codes, encode_s, forecast_s = [], 0.0, 0.0
        for s, (y, op) in zip(starts, readings):
            tick = time.perf_counter()
            if name == "vq_forecast":
                codes.append(model.codes_from_sensors(norm.state(y).float(), (op.positions / grid.length).float()))
            else:
                codes.append(model.autoencoder.codes(norm.state(truth[s][None]).float()))
            encode_s += time.perf_counter() - tick
        tick = time.perf_counter()
        start = torch.cat(codes)
        steps = math.ceil(horizon / model.stride)  # a step spans `stride` frames; frames between: linear in time
        frames = frames_between(model.fields(torch.cat([start[:, None], model.forecast(start, steps)], 1)),
                                model.stride)[:, :horizon + 1]
        forecast_s = time.perf_counter() - tick
        frames = frames.double() * norm.state_std + norm.state_mean
        out[name] = {"rel_l2": [float(rel_l2(frames[:, h], target[:, h])) for h in range(horizon + 1)],
                     "persist": [float(rel_l2(frames[:, 0], target[:, h])) for h in range(horizon + 1)],
                     "reconstruct_s": encode_s / len(starts), "simulate_s": forecast_s / len(starts),
                     "forecast": "latent", "stride": model.stride}
        print(f"{name:12s} rel_l2 at h=0 {out[name]['rel_l2'][0]:.3f}, h={horizon} {out[name]['rel_l2'][-1]:.3f}",
              flush=True)
    return out


def frames_between(fields: torch.Tensor, stride: int) -> torch.Tensor:
    """``(batch, steps + 1, x, y)`` fields ``stride`` frames apart -> ``(batch, stride * steps + 1, x, y)``
    every frame, linear in time between the steps."""
    if stride == 1:
        return fields
    weight = torch.arange(stride, dtype=fields.dtype) / stride  # (stride,)
    a, b = fields[:, :-1, None], fields[:, 1:, None]  # (batch, steps, 1, x, y)
    inner = (a + weight[:, None, None] * (b - a)).flatten(1, 2)  # (batch, steps * stride, x, y)
    return torch.cat([inner, fields[:, -1:]], 1)


def table(results: dict) -> str:
    horizons = [h for h in SHOW if h < len(next(iter(results["curves"].values()))["rel_l2"])]
    head = " | ".join(f"h={h}" for h in horizons)
    lines = [f"{results['sensors']} sensors ({results['fraction_pct']:g} %), noise {results['noise']:g}, "
             f"{len(results['starts'])} starts; a frame is {results['frame_dt']:g} time units; vq_forecast rows: "
             f"codes from the sensors (vq_forecast) or from the exact state (vq_forecast_truth), then the latent "
             f"forecast (no solver)\n",
             f"| initial state | forecast | {head} | s / forecast (reconstruct + simulate or latent forecast) |",
             "|---|---|" + "---|" * len(horizons) + "---|"]
    for name, c in results["curves"].items():
        cost = f"{c['reconstruct_s']:.3g} + {c['simulate_s']:.3g}"
        for kind in ("rel_l2", "persist"):
            if kind == "persist" and name == "truth":
                continue
            label = c.get("forecast", "solver") if kind == "rel_l2" else "persistence"
            values = " | ".join(f"{c[kind][h]:.3f}" for h in horizons)
            lines.append(f"| {name} | {label} | {values} | {cost if kind == 'rel_l2' else '—'} |")
    return "\n".join(lines) + "\n"


def figure(results: dict, path: Path) -> None:
    fig = _figure(6, 4)
    ax = fig.subplots()
    for name, c in results["curves"].items():
        line, = ax.plot(c["rel_l2"], label=f"{name} + {c.get('forecast', 'solver')}")
        if name != "truth":
            ax.plot(c["persist"], ls=":", color=line.get_color(), label=f"{name}, persistence")
    ax.set(xlabel="horizon (frames)", ylabel="rel_l2", yscale="log",
           title=f"reconstruct-then-simulate vs latent, {results['sensors']} sensors")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    error = missing_input([
        (args.data, "make it with `python train_closure.py generate --config configs/data_e1_small.yaml`"),
        (args.checkpoint, "make it with `python train_closure.py train --closure sparse_recon --data DATA` "
                          "(or give 'none')"),
        (args.vq_checkpoint, "make it with `python train_closure.py train --closure vq_forecast --data DATA "
                             "--out runs/vq_forecast_e1_small` (or give 'none')")])
    if error:
        print(error)
        return 2
    results = run(args)
    return publish_results(args.json, results, table(results), lambda png: figure(results, png))


if __name__ == "__main__":
    raise SystemExit(main())
