"""Export a trained checkpoint for shipping: weights only, plus a JSON manifest (``train_closure.py export``).

    python train_closure.py export --checkpoint runs/latent_cdm_e1_small/best.pt \\
        --out closure/checkpoints/latent_cdm_e1_small.pt --command "python train_closure.py train ..."

The exported file keeps what inference and validation need (model name, constructor kwargs and
weights, grid, flow fingerprint, normalisation, the resolved training config, the epoch) and drops
the optimizer, schedule and RNG state (a shipped model is not resumed). The manifest
``<out>.json`` records the file's SHA-256, the SHA-256 of the training config text stored inside,
the model spec, the epoch, the best validation loss and the command that reproduces it; the test
suite checks the shipped file against it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from solvers.io import atomic_write_text

from .checkpoint import load_checkpoint, write_payload

__all__ = ["export", "add_arguments", "run"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def export(src: str | Path, dst: str | Path, command: str = "") -> dict:
    """Write the weights-only copy of ``src`` to ``dst`` and its manifest to ``dst`` + ``.json``."""
    ckpt = load_checkpoint(src)
    payload = {**ckpt.payload, "optimizer": None, "scheduler": None, "rng": [],
               "training": {k: v for k, v in ckpt.payload.get("training", {}).items() if k in ("best_val", "best_epoch")}}
    dst = write_payload(dst, payload)
    load_checkpoint(dst)  # the exported file must load
    manifest = {"file": dst.name, "closure": ckpt.closure, "file_sha256": sha256(dst.read_bytes()),
                "config_sha256": sha256(ckpt.payload["config"].encode()),
                "model": {"name": ckpt.payload["model"]["name"], "kwargs": ckpt.payload["model"]["kwargs"]},
                "epoch": ckpt.epoch, "best_val": payload["training"].get("best_val"),
                "grid": ckpt.grid, "flow": ckpt.flow, "command": command}
    atomic_write_text(dst.with_suffix(".json"), json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="trained checkpoint (e.g. runs/NAME/best.pt)")
    p.add_argument("--out", required=True, metavar="FILE", help="exported weights-only checkpoint (.pt)")
    p.add_argument("--command", default="", help="the command that trained it, recorded in the manifest")


def run(args: argparse.Namespace) -> int:
    try:
        manifest = export(args.checkpoint, args.out, args.command)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    size = Path(args.out).stat().st_size / 1e6
    print(f"wrote {args.out} ({size:.2f} MB, epoch {manifest['epoch']}) and {Path(args.out).with_suffix('.json')}")
    return 0
