"""Data-generation throughput: the E1 small preset (128^2 euler_cn DNS, batch 8) over a short window.

    python benchmarks/datagen_throughput.py                   # 400 DNS steps, a few seconds
    python benchmarks/datagen_throughput.py --steps 2000 --config configs/data_e2_les64_small.yaml

Times ``solvers.datagen.simulate_batch`` (the DNS of one block with its records and exact targets,
nearly all of ``generate``'s cost) on the preset with the record window moved to the first ``--steps``
DNS steps (the preset's record spacing kept, no reference window), after one untimed warm-up run
(FFTW planning, numba compilation), ``--repeats`` times; reports the best and the median run:

- DNS steps/s: trajectory-steps per second (one trajectory advanced by dt), all trajectories;
- batch-steps/s: solver steps of a whole block per second (per process);
- pairs/s: (state, target) pairs per second in this window, and projected for the whole preset (its
  burn-in and reference tail add steps without pairs). ``generate`` prints the end-to-end figures.

Writes ``benchmarks/results/datagen_throughput.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from solvers.data_config import load_data_config, resolve_data_config
from solvers.datagen import make_plan, simulate_batch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "datagen_throughput.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "data_e1_small.yaml", help="data preset")
    p.add_argument("--steps", type=int, default=400, help="DNS steps per trajectory to time")
    p.add_argument("--repeats", type=int, default=3, help="timed runs")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"output file (default: {DEFAULT_JSON})")
    return p


def short_window(config: Path, steps: int, device: str):
    """``(preset, preset with records over its first steps DNS steps at the same spacing, no reference)``."""
    full = resolve_data_config(load_data_config(config, {"device": device}))
    overrides = {"record.start": full.record.dt, "record.end": round((steps + 1) * full.dns.dt, 10), "reference": None,
                 "device": device}
    return full, load_data_config(config, overrides)


def time_block(plan, rows: range, repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` runs of one block after a warm-up run."""
    simulate_batch(plan, rows)
    walls = []
    for _ in range(repeats):
        if plan.flow.grid.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        simulate_batch(plan, rows)
        if plan.flow.grid.device.type == "cuda":
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - start)
    return walls


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    full, cfg = short_window(args.config, args.steps, args.device)
    plan, rows = make_plan(cfg, args.device), range(min(cfg.batch, cfg.trajectories))
    walls = time_block(plan, rows, args.repeats)
    rate = {name: plan.steps / wall for name, wall in (("best", min(walls)), ("median", statistics.median(walls)))}
    pairs_per_step = len(rows) * len(plan.times) / plan.steps
    full_plan = make_plan(full, args.device)
    blocks = -(-full.trajectories // full.batch)
    projected_wall = blocks * full_plan.steps / rate["best"]
    pairs = full.trajectories * len(full_plan.times)
    result = {
        "preset": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
        "dns": f"{full.dns.n}^2 {full.dns.stepper}", "batch": len(rows), "device": args.device, "dtype": full.dtype,
        "threads": torch.get_num_threads(), "steps_timed": plan.steps, "repeats": args.repeats,
        "batch_steps_per_s": rate["best"], "batch_steps_per_s_median": rate["median"],
        "dns_steps_per_s": rate["best"] * len(rows), "pairs_per_s_window": rate["best"] * pairs_per_step,
        "preset_projection": {"dns_steps": full.trajectories * full_plan.steps, "pairs": pairs,
                              "wall_s": projected_wall, "pairs_per_s": pairs / projected_wall},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg_1min": os.getloadavg()[0]},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    _print(result, full)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


def _print(r: dict, full) -> None:
    print(f"{r['preset']}: {r['dns']} DNS, block of {r['batch']}, {r['device']} {r['dtype']}, {r['threads']} threads, "
          f"{r['steps_timed']} steps x {r['repeats']} (load average {r['machine']['load_avg_1min']:.1f})")
    print(f"  DNS steps/s     {r['dns_steps_per_s']:10.1f}   (trajectory-steps)")
    print(f"  batch-steps/s   {r['batch_steps_per_s']:10.1f}   (median {r['batch_steps_per_s_median']:.1f})")
    print(f"  pairs/s         {r['pairs_per_s_window']:10.2f}   (a pair per trajectory every "
          f"{round(full.record.dt / full.dns.dt)} steps)")
    proj = r["preset_projection"]
    print(f"  whole preset    {proj['wall_s']:10.1f} s  ({proj['dns_steps']} DNS steps, {proj['pairs']} pairs: "
          f"{proj['pairs_per_s']:.2f} pairs/s)")


if __name__ == "__main__":
    raise SystemExit(main())
