"""Train closures from solver output: ``generate`` data, ``train`` a plug-in, ``evaluate`` plug-ins.

    python train_closure.py generate --config configs/data_e1_small.yaml
    python train_closure.py generate-parametric --config configs/data_e3_small.yaml
    python train_closure.py train --closure fno --data data/e1_small.h5
    python train_closure.py evaluate --data data/e1_small.h5 --closure none fno --checkpoint fno=runs/fno/best.pt
    python train_closure.py export --checkpoint runs/fno/best.pt --out models/fno.pt

Every subcommand has its own ``--help``. Multi-process runs: ``torchrun --nproc-per-node K
train_closure.py <subcommand> ...`` (data generation shards trajectories, training is DDP).
"""
from __future__ import annotations

import argparse
import sys


def _subcommands():
    """``name -> (module, help)``; modules expose ``add_arguments(parser)`` and ``run(args) -> int``."""
    return {
        "generate": ("solvers.datagen", "run DNS and write (coarse state, exact closure) pairs to HDF5"),
        "generate-parametric": ("solvers.parametric", "simulate whole trajectories, each at its own Reynolds number "
                                "(E3 data for trajectory models such as ld_ensf)"),
        "train": ("latent.training", "train a learned closure plug-in on a pair dataset"),
        "evaluate": ("closure.evaluation", "a-priori and a-posteriori evaluation of plug-ins"),
        "export": ("latent.export", "weights-only copy of a trained checkpoint plus a manifest, for shipping"),
    }


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="train_closure.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{generate,generate-parametric,train,evaluate,export}")
    for name, (module, text) in _subcommands().items():
        sp = sub.add_parser(name, help=text, description=text)
        sp.set_defaults(_module=module)
        try:
            importlib.import_module(module).add_arguments(sp)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
            sp.set_defaults(_missing=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    import importlib

    args = build_parser().parse_args(argv)
    if getattr(args, "_missing", False):
        print(f"error: `{args.command}` is not available in this version", file=sys.stderr)
        return 2
    return importlib.import_module(args._module).run(args)


if __name__ == "__main__":
    raise SystemExit(main())
