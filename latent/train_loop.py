"""The training loop of :mod:`latent.training`: one epoch over seeded global batches (DDP-sharded under
``torchrun``), validation, the atomic checkpoints and log, early stopping and ``--stop-after``.

:func:`fit` runs a :class:`Job` (built by :func:`latent.training.prepare`) from its stored epoch to the
configured number, writing ``log.csv``, ``last.pt`` every epoch and ``best.pt`` on a new best validation loss.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from solvers import parallel

from .checkpoint import rng_state, save_checkpoint
from .train_config import TrainConfig, config_to_yaml

__all__ = ["Job", "TrainingDiverged", "fit", "train_epoch", "evaluate"]

@dataclass
class Job:
    """Everything :func:`fit` needs; built by :func:`prepare`."""

    cfg: TrainConfig
    out: Path
    model: nn.Module
    step_model: nn.Module  # the loss module the optimizer steps through (DDP-wrapped under torchrun)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    data: dict[str, tuple[torch.Tensor, torch.Tensor]]  # split -> normalised (state, target)
    meta: dict  # grid, flow, normalization for the checkpoints
    state: dict  # epoch, best_val, best_epoch, bad_epochs, history
    args: argparse.Namespace


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite (last.pt still holds the last finite epoch)."""


class _LossModule(nn.Module):
    """``forward = model.loss`` so DistributedDataParallel's gradient hooks see the loss computation."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, state: torch.Tensor, target: torch.Tensor):
        return self.model.loss(state, target)



def _all_sum(values: torch.Tensor) -> torch.Tensor:
    if parallel.is_distributed():
        dist.all_reduce(values)
    return values


def train_epoch(job: Job, epoch: int, bar) -> dict[str, float]:
    """One pass over a seeded permutation of the train split in global batches; returns mean loss and terms."""
    state, target = job.data["train"]
    n, batch, world = len(state), job.cfg.batch_size, parallel.world_size()
    generator = torch.Generator().manual_seed(job.cfg.seed * 1_000_003 + epoch)  # order depends on (seed, epoch) only
    order = torch.randperm(n, generator=generator).to(state.device)
    job.step_model.train()
    sums, names = None, []
    for start in range(0, n, batch):
        chunk = order[start:start + batch]
        mine = parallel.shard(len(chunk))
        local = chunk[mine.start:mine.stop]
        weight = len(local) * world / len(chunk)  # DDP averages over ranks: sum_r weight_r * mean_r = batch mean
        idx = local if len(local) else chunk[:1]  # an empty slice still joins the gradient all-reduce, weight 0
        job.optimizer.zero_grad(set_to_none=True)
        loss, terms = job.step_model(state[idx], target[idx])
        (loss * weight).backward()
        if job.cfg.optimizer.grad_clip is not None:
            nn.utils.clip_grad_norm_(job.model.parameters(), job.cfg.optimizer.grad_clip)
        job.optimizer.step()
        values = torch.stack([loss.detach(), *(v.detach().reshape(()) for v in terms.values())]) * len(local)
        sums, names = (values if sums is None else sums + values), ["loss", *terms]
        bar.update(1)
    sums = _all_sum(sums) / n
    return dict(zip(names, sums.tolist()))


@torch.no_grad()
def evaluate(job: Job, split: str = "val") -> dict[str, float]:
    """Sample-weighted mean loss and terms over a split, each rank evaluating its contiguous shard."""
    state, target = job.data[split]
    rows, size = parallel.shard(len(state)), job.cfg.batch_size
    job.model.eval()
    with torch.random.fork_rng(devices=[state.device] if state.is_cuda else []):
        # stochastic losses (diffusion noise) draw the same numbers every epoch, and training's stream is untouched
        torch.manual_seed(job.cfg.seed + 7919 * (1 + parallel.rank()))
        return _evaluate_shards(job, state, target, rows, size)


def _evaluate_shards(job: Job, state, target, rows: range, size: int) -> dict[str, float]:
    chunks = [(i, min(i + size, rows.stop)) for i in range(rows.start, rows.stop, size)] or [(0, 0)]
    sums = None
    for lo, hi in chunks:  # an empty shard evaluates one sample with weight 0, to join the all-reduce
        loss, terms = job.model.loss(state[lo:max(hi, lo + 1)], target[lo:max(hi, lo + 1)])
        values = torch.stack([loss, *(v.reshape(()) for v in terms.values())]) * (hi - lo)
        sums = values if sums is None else sums + values
    return dict(zip(["loss", *terms], (_all_sum(sums) / len(state)).tolist()))


def _save(job: Job, name: str) -> None:
    rng = [rng_state()]
    if parallel.is_distributed():  # every rank's stream, so a resumed DDP run continues each one
        rng = [None] * parallel.world_size()
        dist.all_gather_object(rng, rng_state())
    if parallel.is_main():
        save_checkpoint(job.out / name, model=job.model, closure=job.cfg.closure, config=config_to_yaml(job.cfg),
                        epoch=job.state["epoch"], optimizer=job.optimizer, scheduler=job.scheduler, rng=rng,
                        training={k: v for k, v in job.state.items() if k != "epoch"}, **job.meta)


def _write_log(path: Path, history: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        names = list(dict.fromkeys(k for row in history for k in row))  # phases may log different terms
        writer = csv.DictWriter(f, fieldnames=names, restval="")
        writer.writeheader()
        writer.writerows(history)
    tmp.replace(path)


def _tensorboard(job: Job):
    if not (job.args.tensorboard and parallel.is_main()):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("note: --tensorboard skipped: the tensorboard package is not installed (pip install tensorboard)",
              file=sys.stderr)
        return None
    return SummaryWriter(str(job.out / "tensorboard"))


def _epoch(job: Job, epoch: int, show: bool, wall0: float) -> tuple[dict, bool]:
    """Train one epoch, validate, step the schedule; the log row and whether val loss improved."""
    from tqdm.auto import tqdm

    lr, tick, n = job.optimizer.param_groups[0]["lr"], time.perf_counter(), len(job.data["train"][0])
    if job.model.begin_epoch(epoch):  # a new training phase (e.g. two-phase L-CDM): its own best model
        job.state.update(best_val=math.inf, bad_epochs=0)
    with tqdm(total=math.ceil(n / job.cfg.batch_size), disable=not show, leave=False, desc=f"epoch {epoch + 1}",
              unit="batch") as bar:
        train = train_epoch(job, epoch, bar)
    rate = n / (time.perf_counter() - tick)
    if not math.isfinite(train["loss"]):
        raise TrainingDiverged(f"the training loss became {train['loss']} in epoch {epoch + 1}; lower optimizer.lr or "
                               f"set optimizer.grad_clip (last.pt holds epoch {job.state['epoch']})")
    val = evaluate(job)
    job.scheduler.step()
    row = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in train.items()}, **{f"val_{k}": v for k, v in val.items()},
           "lr": lr, "samples_per_s": rate, "wall_s": time.perf_counter() - wall0}
    st = job.state
    st["history"].append(row)
    st["epoch"] = epoch + 1
    improved = val["loss"] < st["best_val"] - job.cfg.early_stopping.min_delta
    if improved:
        st.update(best_val=val["loss"], best_epoch=epoch + 1, bad_epochs=0)
    else:
        st["bad_epochs"] += 1
    return row, improved


def _stop_reason(job: Job, epochs_run: int) -> str:
    patience = job.cfg.early_stopping.patience
    if patience and job.state["bad_epochs"] >= patience:
        return f"early stopping: no val-loss improvement for {patience} epochs"
    if job.args.stop_after and epochs_run >= job.args.stop_after:
        return f"stopped after {job.args.stop_after} epoch(s) as asked; continue with --resume"
    return ""


def fit(job: Job) -> dict:
    """Train from ``job.state["epoch"]`` to ``cfg.epochs`` (or early stop / --stop-after); returns the state."""
    cfg, st, main = job.cfg, job.state, parallel.is_main()
    show = main and not job.args.quiet
    if main:
        job.out.mkdir(parents=True, exist_ok=True)
        (job.out / "config.yaml").write_text(config_to_yaml(cfg))
    board, start, stopped = _tensorboard(job), st["epoch"], ""
    if show:
        print(f"training {cfg.model.name} for closure {cfg.closure!r} on {len(job.data['train'][0])} pairs "
              f"({parallel.world_size()} process(es), {cfg.device}) -> {job.out}")
        print(f"{'epoch':>6} {'train_loss':>12} {'val_loss':>12} {'lr':>10} {'samples/s':>10} {'wall_s':>8}")
    wall0 = time.perf_counter() - (st["history"][-1]["wall_s"] if st["history"] else 0.0)
    for epoch in range(start, cfg.epochs):
        row, improved = _epoch(job, epoch, show, wall0)
        if main:
            _write_log(job.out / "log.csv", st["history"])
        _save(job, "last.pt")
        if improved:
            _save(job, "best.pt")
        for key, value in row.items() if board is not None else ():
            board.add_scalar(key, value, epoch + 1)
        if show:
            print(f"{epoch + 1:>6} {row['train_loss']:>12.4e} {row['val_loss']:>12.4e} {row['lr']:>10.3e} "
                  f"{row['samples_per_s']:>10.1f} {row['wall_s']:>8.1f}")
        stopped = _stop_reason(job, epoch + 1 - start)
        if stopped:
            break
    if board is not None:
        board.close()
    if show:
        best = f"best val loss {st['best_val']:.4e} at epoch {st['best_epoch']}" if st["best_epoch"] else "no epoch run"
        print(f"{stopped + '; ' if stopped else ''}{best}; files in {job.out} (best.pt, last.pt, log.csv, config.yaml)")
    parallel.barrier()
    return st
