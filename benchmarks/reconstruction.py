"""E4 baselines: reconstruction of 64^2 vorticity fields from sparse sensors (relative L2).

    python benchmarks/reconstruction.py                         # E1 small data, 0.25 / 1 / 3 % sensors
    python benchmarks/reconstruction.py --data data/e2_les64_small.h5 --fields 20

Fields: ``--fields`` states of the test split of a pair file (``train_closure.py generate``); the POD
basis comes from its train split. For each sensor fraction, layout and noise level, every method
reconstructs every field from the sensors alone and is scored by ``rel_l2`` (``||w_rec - w|| / ||w||``,
mean over fields) and milliseconds per field:

- layouts: ``fixed`` (one uniform random off-grid layout for all fields), ``changing`` (a new one per
  field), and for gappy POD ``qr`` (pivoted-QR grid points of the basis, fixed);
- noise: 0 and ``--noise`` (default 0.1) times the fields' RMS, additive Gaussian;
- methods: ``cubic`` (periodic Clough-Tocher), ``fourier`` (ridge fit of the modes ``|k| <= m`` with
  ``(2m+1)^2 <= sensors / 2``), ``gappy_pod`` (``sensors // 2`` modes, at most 100, Tikhonov ridge
  1e-3), ``gappy_pod_posterior`` (the posterior mean for the known noise level,
  :func:`latent.pod.posterior_ridge`, in 100 modes of the train states and ``--copies - 1`` copies of them
  shifted along the flow's symmetry ``--shifts``; 50-300 modes agree within 0.01), ``sparse_recon``
  (the learned model of ``--checkpoint``, one model for every count and layout), ``vq_forecast`` (the
  sensor encoder of ``--vq-checkpoint``: the dense field's codes from the sensors, decoded).

For ``sparse_recon`` the table also gives the calibration of its uncertainty: ``coverage90``, the
fraction of grid values inside the predicted central 90 % band (mean +- 1.645 std; calibrated: 0.90),
and ``std_ratio``, the mean predicted std over the actual RMS error (calibrated: ~1).
The issue's goal for ``sparse_recon`` is ``rel_l2 <= 0.10`` at 1 % sensors. Writes
``results/reconstruction.{json,md}``.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from latent.pod import fit_pod, gappy_reconstruct, posterior_ridge, qr_sensors
from solvers.symmetry import SHIFTS, augment_shifts
from latent.sparse_recon import Z90
from solvers.grid import Grid
from solvers.io import missing_input, publish_results
from solvers.observation import ObservationOperator, grid_positions, random_sensors
from solvers.pairs import read_pairs
from solvers.reconstruction import cubic_interpolate, fourier_fit

RESULTS = Path(__file__).resolve().parent / "results"
SHIPPED = Path(__file__).resolve().parent.parent / "closure" / "checkpoints" / "sparse_recon_e1_small.pt"
VQ_DEFAULT = "none"  # not shipped (11 MB): train one, see the README
POSTERIOR_MODES = 100


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/e1_small.h5", help="pair file (train split: POD basis; test: fields)")
    p.add_argument("--fields", type=int, default=40, help="test fields to reconstruct (evenly spaced)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.25, 1.0, 3.0], help="sensors, %% of grid points")
    p.add_argument("--noise", type=float, default=0.1, help="noise standard deviation / field RMS (default 0.1)")
    p.add_argument("--snapshots", type=int, default=2000, help="train states used for the POD basis")
    p.add_argument("--checkpoint", default=str(SHIPPED),
                   help="sparse_recon checkpoint (train_closure.py train --closure sparse_recon); 'none' skips it")
    p.add_argument("--shifts", default="diagonal", choices=SHIFTS,
                   help="symmetry of the flow for gappy_pod_posterior's snapshots (E1: diagonal)")
    p.add_argument("--copies", type=int, default=4, help="shifted copies of the snapshots (1: none)")
    p.add_argument("--vq-checkpoint", default=str(VQ_DEFAULT),
                   help="vq_forecast checkpoint (its sensor encoder + decoder reconstruct); 'none' skips it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=RESULTS / "reconstruction.json", help="results file")
    return p


def _fourier_modes(count: int) -> int:
    """Largest ``m`` with ``(2m+1)^2 <= count / 2``: two sensors per unknown keep the fit well posed."""
    return max(0, int((math.sqrt(count / 2) - 1) // 2))


INTERPOLATIONS = {  # name -> reconstruct(values (1, sensors), operator) -> (1, x, y)
    "cubic": lambda v, op: cubic_interpolate(v, op.positions, op.grid),
    "fourier": lambda v, op: fourier_fit(v, op.positions, op.grid, _fourier_modes(op.count), 1e-3 * op.count),
}


def load_model(path: str, grid: Grid):
    """``(model, normalization)`` of a checkpoint that must fit ``grid``: float32, eval mode, on the CPU."""
    from latent.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, grid=(grid.n, grid.length))
    return ckpt.build_model("cpu", torch.float32).eval(), ckpt.normalization


def load_learned(path: str, grid: Grid):
    """``reconstruct(values (1, sensors), operator, noise_var=None) -> (mean, std)`` ``(1, x, y)`` of a sparse_recon
    checkpoint (``noise_var``: the readings' noise variance, physical units, for a model's POD prior)."""
    model, norm = load_model(path, grid)

    @torch.no_grad()
    def reconstruct(values, op, noise_var=None):
        scaled = None if noise_var is None else noise_var / norm.state_std ** 2
        mean, std = model.reconstruct(norm.state(values).float(), (op.positions / grid.length).float(), grid.n,
                                      noise_var=scaled)
        return mean.double() * norm.state_std + norm.state_mean, std.double() * norm.state_std

    return reconstruct


def load_vq(path: str, grid: Grid):
    """``reconstruct(values (1, sensors), operator) -> (1, x, y)`` by a vq_forecast checkpoint's sensor
    encoder (most likely codes) and decoder."""
    model, norm = load_model(path, grid)

    @torch.no_grad()
    def reconstruct(values, op):
        codes = model.codes_from_sensors(norm.state(values).float(), (op.positions / grid.length).float())
        return model.fields(codes).double() * norm.state_std + norm.state_mean

    return reconstruct


def _score(rec, w, std=None) -> dict:
    out = {"rel_l2": float((rec[0] - w).norm() / w.norm())}
    if std is not None:
        err = (rec[0] - w).abs()
        out.update(coverage90=float((err <= Z90 * std[0]).double().mean()),
                   std_ratio=float(std[0].mean() / err.pow(2).mean().sqrt()))
    return out


def run(args) -> dict:
    torch.manual_seed(args.seed)
    train, test = read_pairs(args.data, "train"), read_pairs(args.data, "test")
    n = test.state.shape[-1]
    length = float(test.attrs.get("grid_length", 1.0))
    grid = Grid(n, length, dtype=torch.float64)
    pick = np.linspace(0, len(train.state) - 1, min(args.snapshots, len(train.state))).round().astype(int)
    full = fit_pod(train.state[pick].double(), min(100, len(pick)))
    augmented = augment_shifts(train.state[pick].double(), args.shifts, args.copies, args.seed)
    prior = fit_pod(augmented, min(POSTERIOR_MODES, len(augmented)))
    learned = None if args.checkpoint == "none" else load_learned(args.checkpoint, grid)
    vq = None if args.vq_checkpoint == "none" else load_vq(args.vq_checkpoint, grid)
    fields = test.state[np.linspace(0, len(test.state) - 1, args.fields).round().astype(int)].double()
    rms = float(fields.pow(2).mean().sqrt())
    g = torch.Generator().manual_seed(args.seed)
    rows = []
    for fraction in args.fractions:
        count = max(3, round(fraction / 100 * n * n))
        k = min(100, max(1, count // 2))
        basis = full.truncate(k)
        methods = {**INTERPOLATIONS,
                   "gappy_pod": lambda v, op: gappy_reconstruct(basis, v, op.matrix().double(), ridge=1e-3),
                   "gappy_pod_posterior": lambda v, op: gappy_reconstruct(
                       prior, v, op.matrix().double(), ridge=posterior_ridge(prior, (noise * rms) ** 2))}
        if learned is not None:  # told the noise level, like gappy_pod_posterior
            methods["sparse_recon"] = lambda v, op: learned(v, op, (noise * rms) ** 2)
        if vq is not None:
            methods["vq_forecast"] = vq
        fixed = random_sensors(count, length, g)
        qr = grid_positions(grid, qr_sensors(basis, count))
        for noise in (0.0, args.noise):
            for layout in ("fixed", "changing", "qr"):
                names = ["gappy_pod"] if layout == "qr" else list(methods)
                ops = {"fixed": ObservationOperator(grid, fixed), "qr": ObservationOperator(grid, qr)}
                scores = {name: [] for name in names}
                for w in fields:
                    op = ops.get(layout) or ObservationOperator(grid, random_sensors(count, length, g))
                    y = op(w[None]) + noise * rms * torch.randn(1, count, generator=g, dtype=torch.float64)
                    for name in names:
                        tick = time.perf_counter()
                        out = methods[name](y, op)
                        spent = time.perf_counter() - tick
                        rec, std = out if isinstance(out, tuple) else (out, None)
                        scores[name].append({**_score(rec, w, std), "seconds": spent})
                for name, per_field in scores.items():
                    rows.append(_row(fraction, count, noise, layout, name, per_field, k, prior.modes.shape[0]))
                    print(f"{fraction:5.2f}% {count:4d} noise {noise:.2f} {layout:8s} {name:12s} "
                          f"rel_l2 {rows[-1]['rel_l2']:.3f}", flush=True)
    return {"data": str(args.data), "grid_n": n, "fields": args.fields, "field_rms": rms,
            "checkpoint": args.checkpoint, "vq_checkpoint": args.vq_checkpoint, "shifts": args.shifts,
            "copies": args.copies, "rows": rows}


def _row(fraction, count, noise, layout, name, per_field, k, prior_modes) -> dict:
    mean = {key: float(np.mean([f[key] for f in per_field])) for key in per_field[0]}
    detail = {"fourier": f"modes {_fourier_modes(count)}", "gappy_pod": f"{k} POD modes",
              "gappy_pod_posterior": f"{prior_modes} POD modes, shifted snapshots"}.get(name, "")
    return {"fraction_pct": fraction, "sensors": count, "noise": noise, "layout": layout, "method": name,
            "rel_l2": mean["rel_l2"], "rel_l2_std": float(np.std([f["rel_l2"] for f in per_field])),
            "ms_per_field": 1e3 * mean["seconds"], "coverage90": mean.get("coverage90"),
            "std_ratio": mean.get("std_ratio"), "detail": detail}


def table(results: dict) -> str:
    lines = ["| sensors | noise | layout | method | rel_l2 | 90 % band coverage | std / rmse | ms / field | detail |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        calib = (f"{r['coverage90']:.3f} | {r['std_ratio']:.2f}" if r.get("coverage90") is not None else "— | —")
        lines.append(f"| {r['fraction_pct']:g} % ({r['sensors']}) | {r['noise']:g} | {r['layout']} | {r['method']} | "
                     f"{r['rel_l2']:.3f} ± {r['rel_l2_std']:.3f} | {calib} | {r['ms_per_field']:.3g} | {r['detail']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    error = missing_input([
        (args.data, "make it with `python train_closure.py generate --config configs/data_e1_small.yaml`"),
        (args.checkpoint, f"train one with `python train_closure.py train --closure sparse_recon --data {args.data}` "
                          f"or pass --checkpoint none"),
        (args.vq_checkpoint, f"train one with `python train_closure.py train --closure vq_forecast --data {args.data} "
                             f"--out runs/vq_forecast_e1_small` or pass --vq-checkpoint none")])
    if error:
        print(error)
        return 2
    results = run(args)
    return publish_results(args.json, results, table(results))


if __name__ == "__main__":
    raise SystemExit(main())
