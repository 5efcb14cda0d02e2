"""Config-driven training of learned closure plug-ins (``python train_closure.py train``).

    python train_closure.py train --closure fno --data data/e1.h5 --out runs/fno
    python train_closure.py train --closure fno --data data/e1.h5 --set optimizer.lr=3e-4 --epochs 50
    python train_closure.py train --out runs/fno --resume          # continue an interrupted run
    torchrun --nproc-per-node 4 train_closure.py train --closure fno --data data/e1.h5   # DDP

Writes to <out>: config.yaml (the resolved config), log.csv (one row per epoch: losses and their
named terms, learning rate, samples/s, wall time), last.pt (every epoch) and best.pt (lowest
validation loss), all atomically; --resume continues from last.pt exactly as if never stopped. This module
resolves the config and builds the job (:func:`prepare`); the loop itself is :mod:`latent.train_loop`.
batch_size is the GLOBAL batch: under torchrun every rank takes its contiguous slice of each batch
and losses are weighted so the averaged DDP gradient is the full-batch gradient.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch import nn

from solvers import pairs, parallel
from solvers.config import check, parse_overrides
from solvers.setup import torch_dtype

from .checkpoint import flow_fingerprint, load_checkpoint, set_rng_state
from .models import Normalization, build_model, model_class
from .train_config import CONFIG_DIR, TrainConfig, load_train_config, lr_factor
from .train_loop import Job, TrainingDiverged, _LossModule, fit

__all__ = ["add_arguments", "run", "fit", "prepare"]

log = logging.getLogger(__name__)
EXIT_BAD_INPUT, EXIT_DIVERGED = 2, 3


# --------------------------------------------------------------------------------------------
# CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``train_closure.py train`` (precedence: config file < --set < flags)."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "examples:\n" + __doc__.split("\n\n", 1)[1]
    p.add_argument("--closure", metavar="NAME",
                   help="learned plug-in to train, e.g. fno (default config: configs/train_NAME.yaml)")
    p.add_argument("--config", metavar="FILE",
                   help="YAML training config (model, optimizer, schedule, epochs, batch_size, ...)")
    p.add_argument("--data", metavar="FILE",
                   help="closure-pair HDF5 dataset (solvers/pairs.py layout) with train and val splits")
    p.add_argument("--out", metavar="DIR", help="output directory (default runs/<closure>)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override a config key, value read as YAML; repeatable (--set optimizer.lr=3e-4)")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out>/last.pt with its stored config (--set and flags still apply)")
    p.add_argument("--epochs", type=int, metavar="E", help="total number of epochs (on --resume: extend the run)")
    p.add_argument("--stop-after", type=int, metavar="K",
                   help="end this invocation after K epochs (resume later with --resume)")
    p.add_argument("--device",
                   help="torch device (default: cuda if available, else cpu; cuda:LOCAL_RANK under torchrun)")
    p.add_argument("--seed", type=int, help="seed for the model initialisation and the data order")
    p.add_argument("--tensorboard", action="store_true",
                   help="also log scalars to <out>/tensorboard (needs the tensorboard package)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, table or log messages")


def _resolve_config(args: argparse.Namespace) -> tuple[TrainConfig, Path]:
    overrides = parse_overrides(args.set)
    flags = {"closure": args.closure, "data": args.data, "out": args.out, "epochs": args.epochs,
             "device": args.device, "seed": args.seed}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    if args.resume:
        check(args.config is None,
               "--resume takes the config stored in the checkpoint; change keys with --set, not --config")
        check(args.out is not None or args.closure is not None, "--resume needs --out DIR (the run to continue)")
        out = Path(args.out or f"runs/{args.closure}")
        stored = yaml.safe_load(load_checkpoint(out / "last.pt").payload["config"]) or {}
        return load_train_config(None, overrides, base=stored), out
    check(args.closure is not None or args.config is not None, "give --closure NAME (e.g. fno) or --config FILE")
    if args.config is None:
        _check_learned(args.closure)
    path = args.config or CONFIG_DIR / f"train_{args.closure}.yaml"
    cfg = load_train_config(path, overrides)
    out = Path(cfg.out or f"runs/{cfg.closure}")
    check(not (out / "last.pt").exists(),
           f"{out} already holds a training run; continue it with --resume or choose another --out")
    return cfg, out


def _load_data(cfg: TrainConfig, device: torch.device, dtype: torch.dtype) -> tuple[dict, dict]:
    """Normalised ``(state, target)`` per split: pairs ``(sample, x, y)`` twice, or, for models whose
    ``samples`` is ``"trajectories"``, whole trajectories ``(traj, time, x, y)`` and their raw parameters
    ``(traj, params)`` (float64, e.g. Re), after the model's ``check_data(attrs)``."""
    check(cfg.data is not None, "no dataset: pass --data FILE (a closure-pair HDF5 file)")
    model_cls = model_class(cfg.model.name)
    if getattr(model_cls, "samples", "pairs") == "trajectories":
        return _load_trajectories(cfg, model_cls, device, dtype)
    splits = {name: pairs.read_pairs(cfg.data, name) for name in ("train", "val")}
    meta = _meta(cfg, splits["train"])
    norm = meta["normalization"]
    data = {name: (norm.state(d.state).to(device, dtype), norm.target(d.target).to(device, dtype))
            for name, d in splits.items()}
    return data, meta


def _load_trajectories(cfg: TrainConfig, model_cls, device, dtype) -> tuple[dict, dict]:
    splits = {name: pairs.read_trajectories(cfg.data, name) for name in ("train", "val")}
    meta = _meta(cfg, splits["train"])
    model_cls.check_data(splits["train"].attrs, splits["train"].times, cfg.model.kwargs)
    norm = meta["normalization"]
    data = {name: (norm.state(d.state).to(device, dtype), d.params.to(device)) for name, d in splits.items()}
    return data, meta


def _meta(cfg: TrainConfig, train) -> dict:
    """Grid, flow fingerprint and normalisation of the train split (pairs or trajectories), checking the
    file's grid attributes against its fields."""
    attrs = train.attrs
    check("grid_n" in attrs and "grid_length" in attrs,
           f"{cfg.data} lacks the grid_n / grid_length attributes; regenerate it")
    n = int(attrs["grid_n"])
    check(train.state.shape[-1] == n, f"{cfg.data}: fields are {tuple(train.state.shape[-2:])} but grid_n={n}")
    return {"grid": {"n": n, "length": float(attrs["grid_length"])}, "flow": flow_fingerprint(attrs),
            "normalization": Normalization.from_stats(train.stats)}


def _check_learned(name: str) -> None:
    import closure

    learned = [n for n in closure.available() if getattr(closure.plugin_class(n), "requires_checkpoint", False)]
    check(name in learned, f"closure {name!r} has no trainable model; choose one of {learned}")


def _warm_start(model: nn.Module, path: str) -> None:
    """Load the weights (and buffers) of checkpoint ``path`` into ``model``: the same registry model whose
    tensors all have the same shapes (training-only kwargs such as a phase length may differ)."""
    saved = load_checkpoint(path).payload["model"]
    check(saved["name"] == model.spec["name"],
           f"init_from {path} holds a {saved['name']!r} model, this run trains {model.spec['name']!r}")
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"init_from {path}: its weights do not fit this model.kwargs ({err}); keep the "
                         f"architecture keys of {saved['kwargs']}") from None
    log.info("warm start from %s (%s)", path, saved["kwargs"])


def _restore(path: Path, meta: dict, model, optimizer, scheduler, state: dict) -> None:
    """--resume: check the checkpoint against the data and model, then restore every piece of state."""
    ckpt = load_checkpoint(path, grid=(meta["grid"]["n"], meta["grid"]["length"]), flow=meta["flow"],
                           normalization=meta["normalization"])
    saved = ckpt.payload["model"]
    check(saved["name"] == model.spec["name"] and saved["kwargs"] == model.spec["kwargs"],
           f"the model section differs from the checkpoint's ({saved['name']} {saved['kwargs']}); "
           f"it cannot change on --resume")
    model.load_state_dict(saved["state_dict"])
    optimizer.load_state_dict(ckpt.payload["optimizer"])
    scheduler.load_state_dict(ckpt.payload["scheduler"])
    state.update(ckpt.payload["training"], epoch=ckpt.epoch)
    rngs = ckpt.payload["rng"]
    if len(rngs) == parallel.world_size():
        set_rng_state(rngs[parallel.rank()])
    else:
        log.warning("checkpoint holds RNG states of %d ranks, this run has %d: random streams restart",
                    len(rngs), parallel.world_size())


def prepare(args: argparse.Namespace) -> Job:
    """Config, data, model, optimizer and (on --resume) the restored state; every input error raises here."""
    cfg, out = _resolve_config(args)
    _check_learned(cfg.closure)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check(torch.device(device).type != "cuda" or torch.cuda.is_available(),
           f"device {device!r} requested but CUDA is not available; use --device cpu")
    check(args.stop_after is None or args.stop_after >= 1, f"--stop-after must be >= 1, got {args.stop_after}")
    parallel.init(device)
    device = parallel.local_device(device)
    cfg = dataclasses.replace(cfg, device=str(device), out=str(out))
    dtype = torch_dtype(cfg.dtype)
    data, meta = _load_data(cfg, device, dtype)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.name, **cfg.model.kwargs).to(device, dtype)
    if not args.resume:
        model.fit_normalization(meta["normalization"])
        model.fit_data(*data["train"])  # data statistics in buffers (a warm start or --resume then overrides them)
    if cfg.init_from and not args.resume:
        _warm_start(model, cfg.init_from)
    with torch.no_grad():  # a model that does not fit the data fails here, before any file is written
        model.loss(data["train"][0][:1], data["train"][1][:1])
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(cfg, epoch))
    state = {"epoch": 0, "best_val": math.inf, "best_epoch": None, "bad_epochs": 0, "history": []}
    torch.manual_seed(cfg.seed + 1 + parallel.rank())  # per-rank stream for stochastic losses
    if args.resume:
        _restore(out / "last.pt", meta, model, optimizer, scheduler, state)
    step_model = _LossModule(model)
    if parallel.is_distributed():
        ids = [device.index] if device.type == "cuda" else None
        step_model = nn.parallel.DistributedDataParallel(step_model, device_ids=ids,
                                                         find_unused_parameters=model.ddp_find_unused)
    return Job(cfg, out, model, step_model, optimizer, scheduler, data, meta, state, args)


def run(args: argparse.Namespace) -> int:
    """``train_closure.py train``: 0 when done, 2 on bad input, 3 if the loss diverged (message on stderr)."""
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        try:
            job = prepare(args)
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        fit(job)
        return 0
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_DIVERGED
    finally:
        if parallel.is_distributed():
            dist.destroy_process_group()
