"""Cost of one EnSF analysis against the state's dimension: LD-EnSF's latent space vs physical grids (issue 5).

    python benchmarks/ensf_scaling.py                       # latent 128 + 1 vs 64^2, 128^2, 256^2 grids
    python benchmarks/ensf_scaling.py --sizes 64 128 --members 20 --repeats 5

One :func:`latent.ensf.ensf_analysis` (damped guidance, 100 pseudo-time steps, ``--members`` members, one
``torch.Generator``) on random ensembles: in LD-EnSF's latent space (``--latent`` + 1 dimensions, every
component observed, ``H = None``) and in physical space on ``n^2`` grids plus one parameter, observed by
``--sensors`` grid points. The issue's goal is an LD-EnSF cycle 100x cheaper than a full-space EnSF cycle;
both loops do per-dimension work over the same steps, so the ratio follows the ratio of the dimensions.
Writes ``results/ensf_scaling.{json,md}``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from latent.ensf import ensf_analysis
from solvers.io import publish_results

RESULTS = Path(__file__).resolve().parent / "results"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latent", type=int, default=128, help="LD-EnSF latent size (the shipped config: 128)")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], help="physical grids n (n^2 points)")
    p.add_argument("--sensors", type=int, default=100, help="observed grid points in physical space (E3: 10x10)")
    p.add_argument("--members", type=int, default=20, help="ensemble size (E3: 20)")
    p.add_argument("--steps", type=int, default=100, help="pseudo-time steps (E3: 100)")
    p.add_argument("--repeats", type=int, default=3, help="timed analyses per case (after one warm-up)")
    p.add_argument("--json", type=Path, default=RESULTS / "ensf_scaling.json", help="results file")
    return p


def seconds_per_analysis(dim: int, sensors: int | None, args) -> float:
    """Mean wall time of one analysis of a random ``(members, dim)`` ensemble; ``sensors = None``: ``H = I``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.members, dim, generator=g, dtype=torch.float64)
    H = None
    if sensors is not None:
        H = torch.zeros(sensors, dim, dtype=torch.float64)
        H[torch.arange(sensors), torch.randperm(dim - 1, generator=g)[:sensors]] = 1.0
    obs = dim if H is None else sensors
    y, r = torch.randn(obs, generator=g, dtype=torch.float64), torch.full((obs,), 0.1, dtype=torch.float64)
    ensf_analysis(x, y, H, r, g, steps=args.steps)  # warm-up
    start = time.perf_counter()
    for _ in range(args.repeats):
        ensf_analysis(x, y, H, r, g, steps=args.steps)
    return (time.perf_counter() - start) / args.repeats


def run(args) -> dict:
    latent = seconds_per_analysis(args.latent + 1, None, args)
    rows = [{"space": "latent", "dim": args.latent + 1, "seconds": latent, "ratio": 1.0}]
    print(f"latent {args.latent + 1}: {1e3 * latent:.1f} ms", flush=True)
    for n in args.sizes:
        s = seconds_per_analysis(n * n + 1, args.sensors, args)
        rows.append({"space": f"physical {n}^2", "dim": n * n + 1, "seconds": s, "ratio": s / latent})
        print(f"{n}^2 + 1: {1e3 * s:.1f} ms, {s / latent:.1f}x the latent analysis", flush=True)
    return {"members": args.members, "steps": args.steps, "sensors": args.sensors, "threads": torch.get_num_threads(),
            "rows": rows}


def table(results: dict) -> str:
    lines = [f"{results['members']} members, {results['steps']} pseudo-time steps, damped guidance, "
             f"{results['threads']} thread(s)\n", "| space | dimensions | ms / analysis | x latent |", "|---|---|---|---|"]
    lines += [f"| {r['space']} | {r['dim']} | {1e3 * r['seconds']:.1f} | {r['ratio']:.1f} |" for r in results["rows"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = run(args)
    return publish_results(args.json, results, table(results))


if __name__ == "__main__":
    raise SystemExit(main())
