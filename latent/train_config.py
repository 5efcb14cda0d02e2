"""The training run's config: model, optimizer, learning-rate schedule, early stopping (``configs/train_*.yaml``).

``load_train_config(path, overrides)`` reads a YAML file (unknown keys are errors, values are checked);
``lr_factor`` is the schedule in closed form, so a resumed run follows the same curve.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from solvers.config import DTYPES, build_dataclass, check, read_yaml_mapping, set_dotted  # the project's YAML -> dataclass helpers

__all__ = ["CONFIG_DIR", "ModelConfig", "OptimizerConfig", "ScheduleConfig", "EarlyStoppingConfig", "TrainConfig",
           "load_train_config", "config_to_yaml", "lr_factor"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class ModelConfig:
    name: str = "fno"  # a latent.models registry name
    kwargs: dict = field(default_factory=dict)  # constructor arguments, stored in every checkpoint


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float | None = None  # max global gradient norm; null: no clipping

    def __post_init__(self) -> None:
        check(self.name == "adam", f"unknown optimizer.name {self.name!r}; choose one of ['adam']")
        check(self.lr > 0 and self.weight_decay >= 0,
               f"need optimizer.lr > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")


@dataclass(frozen=True)
class ScheduleConfig:
    kind: str = "step"  # none | step (lr * gamma^(epoch // step_size)) | cosine (lr -> min_lr over epochs)
    step_size: int = 100
    gamma: float = 0.5
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        check(self.kind in ("none", "step", "cosine"),
               f"unknown schedule.kind {self.kind!r}; choose one of ['none', 'step', 'cosine']")
        check(self.step_size >= 1 and self.gamma > 0,
               f"need schedule.step_size >= 1 and gamma > 0, got {self.step_size}, {self.gamma}")


@dataclass(frozen=True)
class EarlyStoppingConfig:
    patience: int | None = None  # stop after this many epochs without a val-loss improvement; null: never
    min_delta: float = 0.0  # an improvement must lower the best val loss by more than this


@dataclass(frozen=True)
class TrainConfig:
    """One training run (see configs/train_fno.yaml for a commented example)."""

    closure: str = "fno"
    data: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    epochs: int = 100
    batch_size: int = 32
    seed: int = 0
    device: str | None = None
    dtype: str = "float32"
    out: str | None = None
    init_from: str | None = None  # warm start: the model weights of this checkpoint (same model; kwargs may differ)

    def __post_init__(self) -> None:
        check(self.epochs >= 0 and self.batch_size >= 1,
               f"need epochs >= 0 and batch_size >= 1, got {self.epochs}, {self.batch_size}")
        check(self.dtype in DTYPES, f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")


def load_train_config(path: str | Path | None, overrides: Mapping[str, Any] = (),
                      base: Mapping | None = None) -> TrainConfig:
    """YAML file (or ``base`` mapping) then ``{"dotted.key": value}`` overrides; unknown keys are errors."""
    data = dict(base or {})
    if path is not None:
        data = read_yaml_mapping(path, "training config", "configs/train_*.yaml")
    for key, value in dict(overrides).items():
        set_dotted(data, key, value)
    try:
        return build_dataclass(TrainConfig, data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}" if path else str(err)) from err


def config_to_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, default_flow_style=None)


def lr_factor(cfg: TrainConfig, epoch: int) -> float:
    """Learning-rate multiplier for ``epoch`` (closed form, so a resumed run follows the same curve)."""
    s = cfg.schedule
    if s.kind == "step":
        return s.gamma ** (epoch // s.step_size)
    if s.kind == "cosine":
        floor = s.min_lr / cfg.optimizer.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(epoch, cfg.epochs) / max(cfg.epochs, 1)))
    return 1.0
