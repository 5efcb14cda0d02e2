"""Parametric trajectory data (E3): whole trajectories of one flow, each at its own Reynolds number.

    python train_closure.py generate-parametric --config configs/data_e3_small.yaml

Trajectory ``i`` starts from member ``i`` of the flow's initial-condition distribution (the same
streams as ``simulate.py --ensemble``), runs at ``Re_i = 1 / nu_i`` drawn uniformly from
``reynolds`` (E3: U(500, 1500)), and is recorded every ``record_every`` solver steps. The file has
the closure-pair layout of :mod:`solvers.pairs` (``/state`` = ``/target`` = the frames, so the
normalisation statistics are the vorticity's) plus

    /params  (traj, 1)  Re of every trajectory; root attribute ``param_names = ["reynolds"]``

and ``kind = "e3"``. Trajectory models (``latent.ld_ensf``) read it with
:func:`solvers.pairs.read_trajectories`. Written atomically once complete.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from .config import FlowConfig, build_dataclass, check, parse_overrides, read_yaml_mapping, set_dotted
from .pairs import SPLITS, write_pairs
from .rollout import rollout
from .setup import build_flow

__all__ = ["ReynoldsRange", "ParametricConfig", "load_parametric_config", "draw_reynolds", "generate", "add_arguments", "run"]


@dataclass(frozen=True)
class ReynoldsRange:
    """Re = 1 / nu ~ U(min, max), one draw per trajectory (E3: U(500, 1500))."""

    min: float = 50.0
    max: float = 150.0

    def __post_init__(self) -> None:
        check(0 < self.min < self.max, f"reynolds needs 0 < min < max, got min={self.min}, max={self.max}")


@dataclass(frozen=True)
class ParametricConfig:
    """One parametric dataset (see configs/data_e3_small.yaml)."""

    flow: FlowConfig = field(default_factory=FlowConfig)  # flow.nu is unused: every trajectory has its own
    reynolds: ReynoldsRange = field(default_factory=ReynoldsRange)
    trajectories: int = 160
    splits: dict = field(default_factory=lambda: {"train": 120, "val": 20, "test": 20})
    record_every: int = 20  # solver steps between frames
    frames: int = 41  # frames per trajectory, the first at t = 0
    batch: int = 40  # trajectories simulated together
    seed: int = 0
    device: str | None = None
    dtype: str = "float32"
    out: str = "data/e3_small.h5"

    def __post_init__(self) -> None:
        check(self.flow.dt is not None, "flow.dt must be fixed (frames must land on solver steps)")
        check(set(self.splits) == set(SPLITS) and all(v >= 0 for v in self.splits.values())
              and sum(self.splits.values()) == self.trajectories,
              f"splits must give train/val/test counts summing to trajectories={self.trajectories}, got {self.splits}")
        check(self.splits["train"] >= 1 and self.splits["val"] >= 1, "need at least one train and one val trajectory")
        check(self.record_every >= 1 and self.frames >= 2 and self.batch >= 1,
              f"need record_every >= 1, frames >= 2, batch >= 1; got {self.record_every}, {self.frames}, {self.batch}")


def load_parametric_config(path: str | Path, overrides: list[str] | dict = ()) -> ParametricConfig:
    """Read a parametric data YAML and apply ``"dotted.key=value"`` overrides; unknown keys are an error."""
    data = read_yaml_mapping(path, "parametric data config", "configs/data_e3_small.yaml")
    items = parse_overrides(overrides).items() if isinstance(overrides, list) else dict(overrides).items()
    for key, value in items:
        set_dotted(data, key, value)
    try:
        return build_dataclass(ParametricConfig, data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def draw_reynolds(reynolds: ReynoldsRange, count: int, seed: int) -> np.ndarray:
    """``count`` Reynolds numbers ``(count,)`` uniform on ``reynolds`` from a stream of ``seed`` alone."""
    return np.random.default_rng([seed, 3]).uniform(reynolds.min, reynolds.max, count)


def generate(cfg: ParametricConfig, progress: bool = True) -> Path:
    """Simulate every trajectory (blocks of ``cfg.batch``) and write ``cfg.out``; returns its path."""
    from tqdm import tqdm

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    reynolds = draw_reynolds(cfg.reynolds, cfg.trajectories, cfg.seed)
    steps = cfg.record_every * (cfg.frames - 1)
    blocks = []
    for start in tqdm(range(0, cfg.trajectories, cfg.batch), desc="trajectories", unit="block", disable=not progress):
        members = range(start, min(start + cfg.batch, cfg.trajectories))
        flow = build_flow(cfg.flow, cfg.trajectories, device, cfg.dtype, cfg.seed, members=members)
        flow.equation.set_viscosity(torch.as_tensor(1.0 / reynolds[start:members.stop]))
        result = rollout(flow.w0, flow.equation, flow.dt, steps, stepper=cfg.flow.stepper, noise=flow.noise,
                         generator=flow.generator, record_every=cfg.record_every, cfl_limit=2.0)
        blocks.append(result.trajectory().numpy())
    state = np.concatenate(blocks)  # (traj, time, x, y)
    times = flow.dt * cfg.record_every * np.arange(cfg.frames)
    split = np.repeat([SPLITS[s] for s in ("train", "val", "test")], [cfg.splits[s] for s in ("train", "val", "test")])
    attrs = {"kind": "e3", "grid_n": cfg.flow.n, "grid_length": flow.grid.length, "fine_n": cfg.flow.n,
             "dt": flow.dt, "config": yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False),
             "param_names": ["reynolds"], "reynolds_range": [cfg.reynolds.min, cfg.reynolds.max]}
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_pairs(out, state, state, times, split, attrs, extra={"params": reynolds[:, None]})


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="parametric data YAML (configs/data_e3_small.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, value read as YAML (--set trajectories=16); repeatable")
    p.add_argument("--out", help="output HDF5 file (default: the config's out)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """``train_closure.py generate-parametric``: 0 when written, 2 on bad input."""
    import sys

    try:
        cfg = load_parametric_config(args.config, args.set)
        if args.out:
            cfg = dataclasses.replace(cfg, out=args.out)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = generate(cfg, progress=not args.quiet)
    print(f"wrote {path}: {cfg.trajectories} trajectories x {cfg.frames} frames, Re ~ U({cfg.reynolds.min:g}, {cfg.reynolds.max:g})")
    return 0
