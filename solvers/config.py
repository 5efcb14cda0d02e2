"""Run configurations: YAML files read into frozen dataclasses, dotted overrides, YAML out.

A file holds one :class:`RunConfig` (see ``configs/*.yaml`` for commented examples)::

    flow: {name, n, length, nu, drag, forcing, noise, init, dt, cfl, max_velocity, stepper, ...}
    closure: {name, every, options}
    observe: {truth, sensors, noise, noise_kind, every, seed}     (twin experiments)
    ensemble, steps | t_end, t0, record_every | record_dt, seed, device, dtype, cfl_limit, out

Every key is checked: an unknown one is a ``ValueError`` naming it and the valid keys. Overrides are
``"dotted.key=value"`` strings whose value is read as YAML (``--set flow.nu=1e-3``,
``--set flow.noise=null``, ``--set "flow.init={kind: taylor_green, params: {}}"``). Free-form
``params`` / ``options`` mappings are passed to the named builder, which checks them.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .filters import FILTERS
from .spectral import DEALIASING
from .grid import parse_length
from .observation import NOISE_KINDS
from .stepping import STEPPERS

__all__ = [
    "ForcingConfig", "NoiseConfig", "InitConfig", "FlowConfig", "ClosureConfig", "ObserveConfig", "RunConfig",
    "load_config", "parse_overrides", "apply_overrides", "resolve",
    "config_from_dict", "config_to_dict", "config_to_yaml", "config_from_yaml",
    "build_dataclass", "set_dotted", "check", "read_yaml_mapping",
]

FORCINGS = ("kolmogorov", "fno", "none")
INITS = ("grf", "band_limited", "taylor_green", "file")
DTYPES = ("float32", "float64")
_EXCLUSIVE = (("steps", "t_end"), ("record_every", "record_dt"))


def check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class ForcingConfig:
    """Deterministic forcing: ``kind`` with keyword ``params`` for :func:`solvers.forcing.make_forcing`;
    ``filter`` / ``filter_width``: the filtered forcing an LES of filtered DNS needs (``none``: as given)."""

    kind: str = "none"
    params: dict = field(default_factory=dict)
    filter: str = "none"
    filter_width: float | None = None

    def __post_init__(self) -> None:
        check(self.kind in FORCINGS, f"unknown flow.forcing.kind {self.kind!r}; choose one of {list(FORCINGS)}")
        check(self.filter in FILTERS, f"unknown flow.forcing.filter {self.filter!r}; choose one of {list(FILTERS)}")
        check(self.filter_width is None or self.filter_width > 0,
              f"flow.forcing.filter_width must be positive or null (2 L / n), got {self.filter_width}")


@dataclass(frozen=True)
class NoiseConfig:
    """Additive Q-Wiener noise (:class:`solvers.forcing.QWienerNoise`)."""

    alpha: float = 0.005
    kappa: int = 10
    sigma: float = 5e-5


@dataclass(frozen=True)
class InitConfig:
    """Initial vorticity: a generator from :mod:`solvers.initial_conditions` or ``file`` (``path``, ``frame``)."""

    kind: str = "grf"
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(self.kind in INITS, f"unknown flow.init.kind {self.kind!r}; choose one of {list(INITS)}")
        if self.kind == "file":
            check("path" in self.params, "flow.init.kind 'file' needs params.path (or use --init FILE)")


COARSE_GRAININGS = ("subsample", "gaussian", "sharp", "box", "none")


@dataclass(frozen=True)
class FlowConfig:
    """Physics and grid of one flow; ``dt: null`` means a CFL time step from the initial state."""

    name: str = "flow"
    n: int = 64
    length: float | str = 1.0
    nu: float = 1e-3
    drag: float = 0.0
    forcing: ForcingConfig = field(default_factory=ForcingConfig)
    noise: NoiseConfig | None = None
    init: InitConfig = field(default_factory=InitConfig)
    dt: float | None = None
    cfl: float = 0.5
    max_velocity: float | None = None
    stepper: str = "cn_rk4"
    dealias: bool | str = True
    convection: bool = True
    coarse_grain: str = "gaussian"

    def __post_init__(self) -> None:
        parse_length(self.length)
        check(self.coarse_grain in COARSE_GRAININGS,
               f"unknown flow.coarse_grain {self.coarse_grain!r}; choose one of {list(COARSE_GRAININGS)}")
        check(self.n >= 4 and self.n % 2 == 0, f"flow.n must be an even integer >= 4, got {self.n}")
        check(self.nu >= 0 and self.drag >= 0, f"flow.nu and flow.drag must be >= 0, got {self.nu}, {self.drag}")
        check(self.dt is None or self.dt > 0, f"flow.dt must be positive or null (CFL), got {self.dt}")
        check(self.cfl > 0, f"flow.cfl must be positive, got {self.cfl}")
        check(self.stepper in STEPPERS, f"unknown flow.stepper {self.stepper!r}; choose one of {sorted(STEPPERS)}")
        check(self.dealias in (True, False, *DEALIASING),
              f"unknown flow.dealias {self.dealias!r}; use true (2/3 rule), false, or one of {list(DEALIASING)}")


@dataclass(frozen=True)
class ClosureConfig:
    """Plug-in by registry name; ``every: null`` means the plug-in's ``default_every``."""

    name: str = "none"
    every: int | None = None
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(self.every is None or self.every >= 1, f"closure.every must be >= 1 or null, got {self.every}")


@dataclass(frozen=True)
class ObserveConfig:
    """Twin experiment: noisy sensor data of a ``truth`` trajectory (.h5) every ``every`` steps.

    ``sensors``: ``regular:NXxNY`` (a lattice, E3's ``regular:10x10``), ``random:COUNT`` (uniform,
    off-grid), ``grid:COUNT`` (distinct random grid points) or a file of ``x, y`` rows (.npy/.csv/.txt).
    ``noise``: standard deviation (additive) or relative size (multiplicative); ``seed`` draws the
    noise (and random layouts), apart from the run's seed, so every method sees the same data.
    ``every: null``: the assimilation plug-in's ``default_every``.
    """

    truth: str | None = None
    sensors: str = "regular:10x10"
    noise: float = 0.1
    noise_kind: str = "additive"
    every: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.noise >= 0, f"observe.noise must be >= 0, got {self.noise}")
        check(self.noise_kind in NOISE_KINDS,
              f"unknown observe.noise_kind {self.noise_kind!r}; choose one of {list(NOISE_KINDS)}")
        check(self.every is None or self.every >= 1, f"observe.every must be >= 1 or null, got {self.every}")


@dataclass(frozen=True)
class RunConfig:
    """One run: a flow, a plug-in, the ensemble size, run length, recording and numerics."""

    flow: FlowConfig = field(default_factory=FlowConfig)
    closure: ClosureConfig = field(default_factory=ClosureConfig)
    observe: ObserveConfig = field(default_factory=ObserveConfig)
    ensemble: int = 1
    steps: int | None = None
    t_end: float | None = None
    t0: float | None = None
    record_every: int | None = None
    record_dt: float | None = None
    seed: int = 0
    device: str | None = None
    dtype: str = "float32"
    cfl_limit: float | None = 2.0
    out: str | None = None

    def __post_init__(self) -> None:
        check(self.ensemble >= 1, f"ensemble must be >= 1, got {self.ensemble}")
        check(self.steps is None or self.t_end is None,
               f"give either steps ({self.steps}) or t_end ({self.t_end}), not both; set the other to null")
        check(self.steps is None or self.steps >= 0, f"steps must be >= 0, got {self.steps}")
        check(self.record_every is None or self.record_dt is None,
               "give either record_every (steps) or record_dt (time), not both; set the other to null")
        check(self.record_every is None or self.record_every >= 1, f"record_every must be >= 1, got {self.record_every}")
        check(self.record_dt is None or self.record_dt > 0, f"record_dt must be positive, got {self.record_dt}")
        check(self.dtype in DTYPES, f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")


# --------------------------------------------------------------------------------------------
# dict <-> dataclass


def _coerce_scalar(kind: type, value: Any, key: str) -> Any:
    """``value`` as ``kind`` (YAML reads ``1e-3`` as a string, so numbers in strings are accepted)."""
    if kind is bool:
        check(isinstance(value, bool), f"config key {key!r} must be true or false, got {value!r}")
        return value
    if kind is str:
        check(isinstance(value, str), f"config key {key!r} must be a string, got {value!r}")
        return value
    if kind is dict:
        check(isinstance(value, Mapping), f"config key {key!r} must be a mapping, got {value!r}")
        return copy.deepcopy(dict(value))
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    check(number is not None, f"config key {key!r} must be a number, got {value!r}")
    if kind is int:
        check(number.is_integer(), f"config key {key!r} must be an integer, got {value!r}")
        return int(number)
    return number


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check / convert ``value`` against the type hint ``hint`` of config key ``key``."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if value is None:
            check(type(None) in args, f"config key {key!r} cannot be null")
            return None
        options = [a for a in args if a is not type(None)]
        if float in options and str in options:  # a length: number or "2pi"
            parse_length(value)
            return value if isinstance(value, str) else float(value)
        if bool in options and str in options:  # a switch with named modes (the dataclass checks the name)
            check(isinstance(value, (bool, str)), f"config key {key!r} must be true, false or a name, got {value!r}")
            return value
        hint = options[0]
    check(value is not None, f"config key {key!r} cannot be null")
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, key + ".")
    return _coerce_scalar(hint, value, key)


def build_dataclass(cls: type, data: Any, prefix: str = "") -> Any:
    """Construct dataclass ``cls`` from a mapping; unknown keys are an error naming them."""
    where = prefix.rstrip(".") or "the top level"
    check(isinstance(data, Mapping), f"config section {where!r} must be a mapping, got {data!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ValueError(f"unknown config key {prefix + str(unknown[0])!r}; valid keys in {where}: {names}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(hints[k], v, prefix + k) for k, v in data.items()})


def config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    """A :class:`RunConfig` from a nested mapping; missing keys take their defaults."""
    return build_dataclass(RunConfig, data or {})


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Nested plain-dict form of ``cfg`` (YAML-serialisable; :func:`config_from_dict` inverts it)."""
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: RunConfig) -> str:
    """``cfg`` as a YAML document."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


def config_from_yaml(text: str, source: str = "<string>") -> RunConfig:
    """Parse a YAML document into a :class:`RunConfig`; ``source`` names it in errors."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{source} is not valid YAML: {err}") from err
    try:
        return config_from_dict(data or {})
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from err


# --------------------------------------------------------------------------------------------
# overrides and loading


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["flow.nu=1e-3", ...]`` -> ``{"flow.nu": 0.001, ...}``; values are read as YAML."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not of the form key=value (e.g. flow.nu=1e-3)")
        try:
            parsed[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise ValueError(f"cannot read the value of override {item!r} as YAML: {err}") from err
    return parsed


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ValueError(f"cannot set {key!r}: {'.'.join(parts[:i + 1])!r} is {child!r}, not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(cfg: RunConfig | Mapping[str, Any], overrides: Mapping[str, Any]) -> RunConfig:
    """``cfg`` with every ``{"dotted.key": value}`` replaced, re-validated; setting ``steps`` clears
    ``t_end`` (and ``record_every`` clears ``record_dt``) unless both are given, and vice versa."""
    data = config_to_dict(cfg) if isinstance(cfg, RunConfig) else copy.deepcopy(dict(cfg))
    for key, value in overrides.items():
        set_dotted(data, key, value)
    for pair in _EXCLUSIVE:  # setting one of a pair clears the other unless both are given
        for key, other in (pair, pair[::-1]):
            if overrides.get(key) is not None and other not in overrides:
                data[other] = None
    return config_from_dict(data)


def read_yaml_mapping(path: str | Path, what: str = "config file", examples: str = "configs/") -> dict[str, Any]:
    """The mapping in a YAML file; clear errors for a missing file, invalid YAML or a non-mapping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist; see {examples} for examples")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{what} {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None, overrides: Iterable[str] | Mapping[str, Any] = ()) -> RunConfig:
    """Read a YAML config (``None``: all defaults) and apply dotted overrides (strings or a mapping)."""
    data = read_yaml_mapping(path, "config file", "configs/") if path is not None else {}
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    try:
        return apply_overrides(data, overrides)
    except ValueError as err:
        raise ValueError(f"{path}: {err}" if path else str(err)) from err


def resolve(cfg: RunConfig, **values: Any) -> RunConfig:
    """``cfg`` with run-time values filled in: ``device`` (``null`` -> cuda if available, else cpu)
    and any ``"dotted.key"`` given as keyword with ``__`` for dots (``flow__dt=0.01``)."""
    changes = {k.replace("__", "."): v for k, v in values.items()}
    if cfg.device is None and "device" not in changes:
        import torch

        changes["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return apply_overrides(cfg, changes) if changes else cfg
