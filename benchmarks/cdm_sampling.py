"""Cost of one closure call of the diffusion closures: latent (L-CDM) vs physical (P-CDM) sampling.

    python benchmarks/cdm_sampling.py                         # ensembles 1, 4, 16, 100; 10 EM steps
    python benchmarks/cdm_sampling.py --quick                 # smoke run
    python benchmarks/cdm_sampling.py --device cuda --members 100 400

Each case times ``model.predict`` (the plug-in's work per call: encode the condition, run the
sampler, decode) with the shipped latent_cdm architecture (closure/checkpoints/*.json; else
configs/train_latent_cdm.yaml) and the p_cdm of configs/train_p_cdm.yaml at
equal sampler and step count, on the E1 64^2 grid, for an ensemble of M members (one batched call),
plus the bare coarse solver's cost for the 5 steps the closure is held (E1: called every 5 steps).
Reports ms per call, the latent speed-up over P-CDM (the issue's goal: >= 10x) and the closure
cost per rollout as a multiple of the bare solver. Weights are random (cost does not depend on
them). Best of repeated timings; ratios are from the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from latent.models import build_model
from latent.train_config import CONFIG_DIR, load_train_config
from solvers import Grid, NavierStokes2D
from solvers.forcing import make_forcing
from solvers.io import atomic_write_text
from solvers.stepping import make_stepper

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "cdm_sampling.json"
SHIPPED_MANIFEST = Path(__file__).resolve().parent.parent / "closure" / "checkpoints" / "latent_cdm_e1_small.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, nargs="+", default=[1, 4, 16, 100], help="ensemble sizes")
    p.add_argument("--sampler", default="euler_maruyama", help="euler_maruyama | heun")
    p.add_argument("--steps", type=int, default=10, help="sampler steps (equal for both models)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seconds", type=float, default=3.0, help="timing budget per case")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"output file (default: {DEFAULT_JSON})")
    p.add_argument("--quick", action="store_true", help="smoke run: members 1 and 4, 0.3 s per case")
    return p


def best_time(fn, seconds: float, sync) -> float:
    fn()
    sync()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds or best == float("inf"):
        tick = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - tick)
    return best


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.members, args.seconds = [1, 4], 0.3
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    models = {}
    for name in ("latent_cdm", "p_cdm"):
        kwargs = load_train_config(CONFIG_DIR / f"train_{name}.yaml").model.kwargs
        if name == "latent_cdm" and SHIPPED_MANIFEST.is_file():
            kwargs = json.loads(SHIPPED_MANIFEST.read_text())["model"]["kwargs"]
        models[name] = build_model(name, **kwargs).to(device).eval()
    grid = Grid(64, 1.0, device=device)
    eq = NavierStokes2D(grid, nu=1e-3, forcing=make_forcing(grid, "fno", amplitude=0.1), convection=False)
    step = make_stepper("euler_cn", eq, 1e-3)
    rows = []
    for m in args.members:
        w = torch.randn(m, 64, 64, device=device)
        w_hat = grid.rfft(w)
        extra = torch.zeros_like(w_hat)
        with torch.no_grad():
            cost = {name: best_time(lambda mod=mod: mod.predict(w, sampler=args.sampler, steps=args.steps),
                                    args.seconds, sync) for name, mod in models.items()}
        solver = best_time(lambda: [step(w_hat, extra) for _ in range(5)], args.seconds, sync)
        rows.append({"members": m, "latent_cdm_ms": 1e3 * cost["latent_cdm"], "p_cdm_ms": 1e3 * cost["p_cdm"],
                     "speedup": cost["p_cdm"] / cost["latent_cdm"], "solver_5_steps_ms": 1e3 * solver,
                     "latent_cdm_cost_x_solver": cost["latent_cdm"] / solver, "p_cdm_cost_x_solver": cost["p_cdm"] / solver})
    head = f"{'members':>8} {'latent_cdm ms':>14} {'p_cdm ms':>10} {'speed-up':>9} {'solver 5 steps ms':>18} " \
           f"{'latent/solver':>14} {'p_cdm/solver':>13}"
    print(f"closure call cost, {args.sampler} x{args.steps}, 64^2, {device}, threads {torch.get_num_threads()}")
    print(head)
    for r in rows:
        print(f"{r['members']:>8} {r['latent_cdm_ms']:>14.2f} {r['p_cdm_ms']:>10.2f} {r['speedup']:>8.2f}x "
              f"{r['solver_5_steps_ms']:>18.3f} {r['latent_cdm_cost_x_solver']:>13.1f}x {r['p_cdm_cost_x_solver']:>12.1f}x")
    meta = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.machine(), "cpus": os.cpu_count(), "sampler": args.sampler, "steps": args.steps,
            "models": {name: m.spec for name, m in models.items()}}
    atomic_write_text(args.json, json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
