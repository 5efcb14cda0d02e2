"""The data-generation config (``configs/data_*.yaml``): DNS flow, closure grid, trajectories, splits, windows.

``load_data_config(path, overrides)`` reads a YAML file (unknown keys are errors, values checked against each
other: the windows must land on DNS steps, E1 subsamples, E2 filters); ``config_hash`` fingerprints what shapes
the data, so :mod:`solvers.datagen` resumes a partial file only for the same resolved config.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from .config import DTYPES, FlowConfig, build_dataclass, check, parse_overrides, read_yaml_mapping, set_dotted
from .filters import FILTERS

__all__ = ["METHODS", "CoarseConfig", "WindowConfig", "SplitConfig", "DataConfig", "load_data_config",
           "resolve_data_config", "data_config_to_yaml", "config_hash"]

METHODS = ("subsample",) + tuple(f for f in FILTERS if f != "none")


@dataclass(frozen=True)
class CoarseConfig:
    """Closure grid: ``n`` points a side; ``subsample`` (E1) or a filter of ``width`` (default 2L/n) + truncation.
    ``dealias``: the E2 LES's convection dealiasing (``true`` = 2/3 rule, ``"3/2"``: every mode to the
    Nyquist), which the closure term completes (:func:`solvers.filters.les_closure_term`)."""

    n: int = 64
    method: str = "subsample"
    width: float | None = None
    dealias: bool | str = True

    def __post_init__(self) -> None:
        check(self.dealias is True or self.dealias in ("2/3", "3/2"),
              f"coarse.dealias must be true (2/3 rule), '2/3' or '3/2', got {self.dealias!r}")
        check(self.method in METHODS, f"unknown coarse.method {self.method!r}; choose one of {list(METHODS)}")
        check(self.n >= 4 and self.n % 2 == 0, f"coarse.n must be an even integer >= 4, got {self.n}")
        check(self.width is None or self.width > 0, f"coarse.width must be positive or null, got {self.width}")


@dataclass(frozen=True)
class WindowConfig:
    """Times ``start, start + dt, ...`` up to ``end`` (records: ``< end``; reference: ``<= end``)."""

    start: float = 0.0
    end: float = 1.0
    dt: float = 0.1

    def __post_init__(self) -> None:
        check(0 <= self.start < self.end and self.dt > 0,
               f"a time window needs 0 <= start < end and dt > 0, got {self.start}, {self.end}, {self.dt}")


@dataclass(frozen=True)
class SplitConfig:
    """Trajectories per split, in this order (whole trajectories: no split shares one)."""

    train: int = 1
    val: int = 0
    test: int = 0

    def __post_init__(self) -> None:
        check(self.train >= 1 and self.val >= 0 and self.test >= 0,
               f"splits need train >= 1, val >= 0, test >= 0, got {self.train}, {self.val}, {self.test}")


@dataclass(frozen=True)
class DataConfig:
    """One dataset: DNS flow, coarse grid, trajectories, splits, windows, numerics, output."""

    kind: str = "e1"
    dns: FlowConfig = field(default_factory=FlowConfig)
    coarse: CoarseConfig = field(default_factory=CoarseConfig)
    trajectories: int = 1
    splits: SplitConfig = field(default_factory=SplitConfig)
    batch: int = 1
    record: WindowConfig = field(default_factory=WindowConfig)
    reference: WindowConfig | None = None
    store_dns: bool = False
    seed: int = 0
    device: str | None = None
    dtype: str = "float32"
    out: str = "data/pairs.h5"

    def __post_init__(self) -> None:
        e1, dns = self.kind == "e1", self.dns
        check(self.kind in ("e1", "e2"), f"kind must be 'e1' or 'e2', got {self.kind!r}")
        check((self.coarse.method == "subsample") == e1, f"kind {self.kind} needs coarse.method "
               f"{'subsample' if e1 else 'gaussian (or sharp, box)'}, got {self.coarse.method!r}")
        check(dns.n > self.coarse.n and (not e1 or dns.n % self.coarse.n == 0),
               f"dns.n={dns.n} must be larger than coarse.n={self.coarse.n}{' and a multiple of it' if e1 else ''}")
        check(dns.dt is not None, "data generation needs a fixed dns.dt (a CFL step would depend on the batch)")
        check(dns.convection and dns.init.kind != "file", "the DNS needs convection: true and a random init")
        check(e1 or dns.noise is None, "E2 targets have no noise part; set dns.noise: null")
        check(sum(dataclasses.astuple(self.splits)) == self.trajectories, f"splits {self.splits} must add up "
               f"to trajectories={self.trajectories}")
        check(self.batch >= 1 and self.seed >= 0, f"need batch >= 1 and seed >= 0, got {self.batch}, {self.seed}")
        check(self.dtype in DTYPES, f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        for name in ("record", "reference"):
            window = getattr(self, name)
            for t in () if window is None else (window.start, window.dt):
                check(math.isclose(t / dns.dt, round(t / dns.dt), rel_tol=0, abs_tol=1e-6),
                       f"{name} times must be multiples of dns.dt={dns.dt}; got {t}")


def load_data_config(path: str | Path, overrides: list[str] | dict = ()) -> DataConfig:
    """Read a data YAML and apply ``"dotted.key=value"`` overrides; unknown keys are an error."""
    path = Path(path)
    data = read_yaml_mapping(path, "data config", "configs/data_*.yaml")
    for key, value in (overrides if isinstance(overrides, dict) else parse_overrides(overrides)).items():
        set_dotted(data, key, value)
    try:
        return build_dataclass(DataConfig, data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def resolve_data_config(cfg: DataConfig) -> DataConfig:
    """``device: null`` -> ``cuda`` if available, else ``cpu``."""
    return cfg if cfg.device else dataclasses.replace(cfg, device="cuda" if torch.cuda.is_available() else "cpu")


def data_config_to_yaml(cfg: DataConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, default_flow_style=None)


def config_hash(cfg: DataConfig) -> str:
    """Fingerprint of everything that shapes the data (all keys but ``out``)."""
    return hashlib.sha256(data_config_to_yaml(dataclasses.replace(cfg, out="")).encode()).hexdigest()[:16]
