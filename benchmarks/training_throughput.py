"""Training throughput of the `fno` closure model: samples/s of the real training loop at 64^2.

    python benchmarks/training_throughput.py                    # batch sizes 8, 32, 128; ~10 s per case
    python benchmarks/training_throughput.py --quick            # smoke run: batch 8 and 32, 1 s per case
    python benchmarks/training_throughput.py --batch-sizes 64 --threads 1 --device cuda

Each case runs latent.train_loop.train_epoch (seeded permutation, global batch, forward, backward,
Adam step: exactly what `train_closure.py train` does per epoch) on random normalised 64^2 pairs
with the model of configs/train_fno.yaml, float32, after one warm-up epoch; an epoch is 4 batches.
Epochs are repeated until the case's time budget is spent; samples/s is from the best epoch (the
median is reported too). `predict` is the no-grad forward the plug-in runs per solver call.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from argparse import Namespace
from pathlib import Path

import torch

from latent.models import build_model
from latent.train_config import CONFIG_DIR, load_train_config
from latent.train_loop import Job, _LossModule, train_epoch
from solvers.io import atomic_write_text

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "training_throughput.json"


class _NoBar:
    def update(self, n: int) -> None:
        pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128])
    p.add_argument("--n", type=int, default=64, help="grid size")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seconds", type=float, default=10.0, help="timing budget per case")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"output file (default: {DEFAULT_JSON})")
    p.add_argument("--quick", action="store_true", help="smoke run: batch sizes 8 and 32, 1 s per case")
    return p


def make_job(batch: int, n: int, device: str) -> Job:
    """A training job on random pairs (4 batches per epoch) with the configured fno model."""
    cfg = load_train_config(CONFIG_DIR / "train_fno.yaml", {"batch_size": batch, "device": device})
    torch.manual_seed(0)
    model = build_model(cfg.model.name, **cfg.model.kwargs).to(device)
    data = {"train": (torch.randn(4 * batch, n, n, device=device), torch.randn(4 * batch, n, n, device=device))}
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr)
    return Job(cfg, Path("."), model, _LossModule(model), optimizer, None, data, {}, {}, Namespace())


def timed(fn, seconds: float, sync) -> list[float]:
    fn()  # warm-up
    sync()
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def run_case(batch: int, args: argparse.Namespace) -> dict:
    job = make_job(batch, args.n, args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    samples = len(job.data["train"][0])
    epoch = [0]

    def train() -> None:
        train_epoch(job, epoch[0], _NoBar())
        epoch[0] += 1

    x = job.data["train"][0][:batch]

    def predict() -> None:
        with torch.no_grad():
            job.model.predict(x)

    train_times = timed(train, args.seconds * 0.8, sync)
    predict_times = timed(predict, args.seconds * 0.2, sync)
    return {"batch_size": batch, "samples_per_s": samples / min(train_times),
            "samples_per_s_median": samples / statistics.median(train_times),
            "step_ms": 1e3 * min(train_times) / 4, "predict_samples_per_s": batch / min(predict_times),
            "epochs_timed": len(train_times)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.batch_sizes, args.seconds = [8, 32], 1.0
    if args.threads:
        torch.set_num_threads(args.threads)
    model_kwargs = load_train_config(CONFIG_DIR / "train_fno.yaml").model.kwargs
    params = sum(p.numel() for p in build_model("fno", **model_kwargs).parameters())
    print(f"fno {model_kwargs} ({params / 1e6:.2f} M parameters), {args.n}^2, float32, {args.device}, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"{'batch':>6} {'samples/s':>10} {'(median)':>10} {'ms/step':>9} {'predict samples/s':>18}")
    results = []
    for batch in args.batch_sizes:
        r = run_case(batch, args)
        results.append(r)
        print(f"{batch:>6} {r['samples_per_s']:>10.1f} {r['samples_per_s_median']:>10.1f} {r['step_ms']:>9.1f} "
              f"{r['predict_samples_per_s']:>18.1f}")
    report = {"benchmark": "training_throughput", "model": "fno", "model_kwargs": model_kwargs, "parameters": params,
              "n": args.n, "dtype": "float32", "device": args.device, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None, "results": results}
    atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
