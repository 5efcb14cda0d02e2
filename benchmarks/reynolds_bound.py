"""How well can the E3 sensors pin the Reynolds number? A Cramer-Rao bound with the state known exactly.

    python benchmarks/reynolds_bound.py                        # data/e3_small.h5, 10 test truths, ~1 min
    python benchmarks/reynolds_bound.py --truths 25 --noise 0.05

For each held-out truth of the parametric data, every frame k is advanced one observation period with
viscosity ``nu`` and ``nu (1 + eps)``; the difference of the two forecasts at the sensors over ``eps`` is
the sensitivity ``J_k = d h / d log nu`` (``(sensors,)``). With the state known at every frame and independent
Gaussian sensor noise of std ``sigma`` (``--noise`` x the data's vorticity std), the Fisher information of
``log Re`` (= ``-log nu``) after K cycles is ``I_K = sum_k |J_k|^2 / sigma^2`` and no unbiased estimator has a
standard error below ``1 / sqrt(I_K)``. A filter that must also estimate the state does worse: this is the
floor under the "Re within 5 %" goal of the E3 twin (``benchmarks/ld_ensf_twin.py``). Reported per truth and
on average: the bound on the relative error of Re after 1, 10, 20 and 40 cycles. JSON and markdown table go
to ``benchmarks/results``.
"""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

import h5py
import torch
import yaml

from solvers.config import build_dataclass
from solvers.io import publish_results
from solvers.observation import ObservationOperator, parse_sensors
from solvers.pairs import read_trajectories
from solvers.parametric import ParametricConfig
from solvers.rollout import rollout
from solvers.setup import build_flow

RESULTS = Path(__file__).resolve().parent / "results"
REPORT = (1, 10, 20, 40)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/e3_small.h5", help="parametric data file (its test split: the truths)")
    p.add_argument("--truths", type=int, default=10, help="the first this many test trajectories")
    p.add_argument("--sensors", default="regular:10x10", help="sensor layout (E3: a 10 x 10 lattice)")
    p.add_argument("--noise", type=float, default=0.1, help="sensor noise std in normalised units (x the data's std)")
    p.add_argument("--eps", type=float, default=0.01, help="relative viscosity step of the finite difference")
    p.add_argument("--json", type=Path, default=RESULTS / "reynolds_bound.json", help="results file")
    return p


def sensitivities(frames: torch.Tensor, reynolds: torch.Tensor, flow, operator, steps: int, stepper: str,
                  eps: float) -> torch.Tensor:
    """``d h / d log nu`` ``(truths, cycles, sensors)`` of one period's forecast from every frame but the last
    (``frames`` ``(truths, time, x, y)``, float64)."""
    eq = flow.equation
    out = []
    for k in range(frames.shape[1] - 1):
        h = []
        for scale in (1.0, 1.0 + eps):
            eq.set_viscosity(scale / reynolds)
            h.append(operator(rollout(frames[:, k].clone(), eq, flow.dt, steps, stepper=stepper).w))
        out.append((h[1] - h[0]) / eps)
    return torch.stack(out, dim=1)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with h5py.File(args.data) as f:
        cfg = build_dataclass(ParametricConfig, yaml.safe_load(f.attrs["config"]))
        std = float(f["stats/state_std"][()])
    test = read_trajectories(args.data, "test")
    count = min(args.truths, len(test.state))
    flow = build_flow(cfg.flow, count, "cpu", "float64", 0)
    operator = ObservationOperator(flow.grid, parse_sensors(args.sensors, flow.grid))
    reynolds = torch.as_tensor(test.params[:count, 0], dtype=torch.float64)
    J = sensitivities(test.state[:count].to(torch.float64), reynolds, flow, operator, cfg.record_every,
                      cfg.flow.stepper, args.eps)
    sigma = args.noise * std
    info = J.pow(2).sum(-1).cumsum(1) / sigma ** 2  # (truths, cycles): I_K of log Re
    bound = info.rsqrt()  # std of log Re ~ relative std of Re
    cycles = [c for c in REPORT if c <= bound.shape[1]]
    rows = [{"reynolds": float(re), **{f"bound_{c}": float(b[c - 1]) for c in cycles}}
            for re, b in zip(reynolds, bound)]
    mean = {f"bound_{c}": float(bound[:, c - 1].mean()) for c in cycles}
    head = ["truth Re"] + [f"after {c} cycle" + ("s" if c > 1 else "") for c in cycles]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows + [{"reynolds": None, **mean}]:
        name = "mean" if r["reynolds"] is None else f"{r['reynolds']:.1f}"
        lines.append("| " + " | ".join([name] + [f"{100 * r[f'bound_{c}']:.2f} %" for c in cycles]) + " |")
    table = ("Lower bound on the relative standard error of Re (state known; "
             f"{operator.count} sensors, noise {args.noise:g} x std):\n\n" + "\n".join(lines) + "\n")
    results = {"setup": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "environment": {"torch": torch.__version__, "cpu": platform.processor() or platform.machine()},
               "truths": rows, "mean": mean, "sensitivity_rms": float(J.pow(2).mean().sqrt() / sigma)}
    return publish_results(args.json, results, table)


if __name__ == "__main__":
    raise SystemExit(main())
