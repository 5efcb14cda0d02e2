"""Model checkpoints: written atomically, validated on load, refused for another grid, flow or normalisation.

A checkpoint is one ``torch.save`` zip of plain data (loaded with ``weights_only=True``)::

    format "ns-closure-checkpoint", format_version, code_version
    closure        plug-in name the model was trained for (``--closure``)
    model          {name, kwargs, state_dict}: rebuilds itself with latent.models.build_model
    grid           {n, length} of the training data
    flow           fingerprint of the training flow from the dataset attributes: kind ("e1" / "e2"),
                   name, nu, drag, forcing {kind, params}, noise (missing keys were unknown)
    normalization  {state,target}_{mean,std} of the training split
    config         the resolved training config (YAML text)
    epoch          completed epochs; optimizer, scheduler: state dicts (or None)
    rng            per-rank torch RNG states; training: early-stopping state and the loss history
"""
from __future__ import annotations

import logging
import math
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml

from .models import Normalization, TrainableModel, build_model

__all__ = ["FORMAT", "FORMAT_VERSION", "Checkpoint", "save_checkpoint", "load_checkpoint", "flow_fingerprint",
           "compare_flows", "rng_state", "set_rng_state"]

log = logging.getLogger(__name__)

FORMAT, FORMAT_VERSION = "ns-closure-checkpoint", 1
_REQUIRED = ("closure", "model", "grid", "flow", "normalization", "config", "epoch")
_PHYSICS = ("kind", "nu", "drag", "forcing", "noise")  # fingerprint keys compared; "name" is a label
HOW_TO_TRAIN = "train one with `python train_closure.py train --closure fno --data FILE` (writes <out>/best.pt)"


def _code_version() -> str:
    import solvers

    return solvers.__version__


def flow_fingerprint(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The flow a pair dataset was made from, read from its root attributes: ``kind`` and the flow
    section of the resolved YAML ``config`` (``dns`` of a :mod:`solvers.datagen` config, ``flow`` of a
    run config); keys that cannot be found are left out (unknown)."""
    fingerprint: dict[str, Any] = {}
    if attrs.get("kind") is not None:
        fingerprint["kind"] = str(attrs["kind"])
    try:
        config = yaml.safe_load(attrs.get("config") or "") or {}
    except yaml.YAMLError:
        config = {}
    flow = (config.get("flow") or config.get("dns")) if isinstance(config, dict) else None  # run / data config
    for key in ("name", *_PHYSICS[1:]):
        if isinstance(flow, dict) and key in flow:
            fingerprint[key] = flow[key]
    coarse = config.get("coarse") if isinstance(config, dict) else None
    if fingerprint.get("kind") == "e2" and isinstance(coarse, dict) and isinstance(fingerprint.get("forcing"), dict):
        # the LES of E2 data forces with the filtered forcing (solvers.filters, module doc)
        fingerprint["forcing"] = {**fingerprint["forcing"], "filter": coarse.get("method", "gaussian"),
                                  "filter_width": coarse.get("width")}
        fingerprint["dealias"] = coarse.get("dealias", True)  # the LES's, which -Pi completes
    return fingerprint


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)
    return a == b


def compare_flows(saved: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """``"key: saved X, given Y"`` for every physics key known to both fingerprints that differs."""
    return [f"{key}: checkpoint {saved[key]!r}, given {given[key]!r}" for key in _PHYSICS
            if key in saved and key in given and not _same(saved[key], given[key])]


def rng_state() -> dict[str, Any]:
    """This process's torch RNG states (CPU and every CUDA device)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Checkpoint:
    """A loaded, validated checkpoint file (``payload`` is the dict described in the module doc)."""

    path: Path
    payload: dict

    @property
    def closure(self) -> str:
        return self.payload["closure"]

    @property
    def grid(self) -> dict:
        return self.payload["grid"]

    @property
    def flow(self) -> dict:
        return self.payload["flow"]

    @property
    def normalization(self) -> Normalization:
        return Normalization.from_stats(self.payload["normalization"])

    @property
    def epoch(self) -> int:
        return int(self.payload["epoch"])

    def build_model(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> TrainableModel:
        """The model rebuilt from its name and constructor kwargs, with the stored weights."""
        spec = self.payload["model"]
        try:
            model = build_model(spec["name"], **spec["kwargs"])
            model.load_state_dict(spec["state_dict"])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"checkpoint {self.path}: cannot rebuild model {spec.get('name')!r} "
                             f"({err}); the file is corrupt or from an incompatible version; {HOW_TO_TRAIN}") from err
        return model.to(device=device, dtype=dtype)

    def check_grid(self, n: int, length: float) -> None:
        saved_n, saved_length = int(self.grid["n"]), float(self.grid["length"])
        if saved_n != n or not math.isclose(saved_length, length, rel_tol=1e-9):
            fix = f"flow.n={saved_n}" if saved_n != n else f"flow.length={saved_length:.6g}"
            raise ValueError(f"checkpoint {self.path} was trained on a {saved_n}^2 grid of box length "
                             f"{saved_length:.6g}, but this grid is {n}^2 of length {length:.6g}; run on the "
                             f"training grid (simulate.py: --set {fix}) or train on data from this grid")

    def check_flow(self, fingerprint: Mapping[str, Any]) -> None:
        problems = compare_flows(self.flow, fingerprint)
        if problems:
            raise ValueError(f"checkpoint {self.path} was trained on a different flow ({'; '.join(problems)}); "
                             f"use a checkpoint trained on this flow's data")

    def check_normalization(self, stats: Mapping[str, float] | Normalization) -> None:
        given = stats.as_dict() if isinstance(stats, Normalization) else dict(stats)
        saved = self.normalization.as_dict()
        bad = [f"{k}: checkpoint {saved[k]:.6g}, given {given.get(k)!r}" for k in saved
               if not isinstance(given.get(k), (int, float)) or not math.isclose(saved[k], given[k], rel_tol=1e-6)]
        if bad:
            raise ValueError(f"checkpoint {self.path} uses a different normalisation ({'; '.join(bad)}): it was "
                             f"trained on another dataset; use the training dataset or retrain")

    def check_solver(self, grid, equation) -> None:
        """Refuse a solver whose grid, viscosity, drag, forcing or convection differ from the training flow."""
        from solvers.forcing import make_forcing
        from solvers.spectral import dealias_mode

        self.check_grid(grid.n, grid.length)
        self.check_flow({"nu": equation.nu, "drag": equation.drag})
        forcing = self.flow.get("forcing")
        if isinstance(forcing, Mapping):
            ref = grid.to(device="cpu", dtype=torch.float64)
            expected = make_forcing(ref, forcing.get("kind"), filter=forcing.get("filter") or "none",
                                    filter_width=forcing.get("filter_width"), **(forcing.get("params") or {}))
            expected = torch.zeros(ref.shape, dtype=torch.float64) if expected is None else expected
            actual = torch.zeros_like(expected) if equation.forcing_hat is None else \
                grid.irfft(equation.forcing_hat).to("cpu", torch.float64)
            gap = float((expected - actual).abs().max())
            if gap > 1e-5 * max(1.0, float(expected.abs().max())):
                raise ValueError(f"checkpoint {self.path} was trained with forcing {dict(forcing)}, but the solver's "
                                 f"forcing differs (max difference {gap:.3g}); set flow.forcing to the training flow's")
        if "dealias" in self.flow and hasattr(equation, "dealias") and \
                dealias_mode(self.flow["dealias"]) != dealias_mode(equation.dealias):
            raise ValueError(f"checkpoint {self.path} completes an LES with {dealias_mode(self.flow['dealias'])} "
                             f"dealiasing, the solver uses {dealias_mode(equation.dealias)}; set flow.dealias to "
                             f"{self.flow['dealias']!r}")
        kind, convection = self.flow.get("kind"), getattr(equation, "convection", None)
        if kind == "e1" and convection:
            raise ValueError(f"checkpoint {self.path} was trained on E1 pairs whose target is the whole convection "
                             f"term; run the coarse model without it (--set flow.convection=false)")
        if kind == "e2" and convection is False:
            raise ValueError(f"checkpoint {self.path} was trained on E2 pairs (a subgrid correction to the resolved "
                             f"convection); run with flow.convection=true")


def save_checkpoint(path: str | Path, *, model: TrainableModel, closure: str, grid: Mapping[str, Any],
                    flow: Mapping[str, Any], normalization: Normalization | Mapping[str, float], config: str = "",
                    epoch: int = 0, optimizer: torch.optim.Optimizer | None = None, scheduler=None,
                    rng: list | None = None, training: Mapping[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically (``<path>.tmp`` then rename; a failed write leaves ``path`` as it was)."""
    path = Path(path)
    norm = normalization if isinstance(normalization, Normalization) else Normalization.from_stats(normalization)
    payload = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "code_version": _code_version(), "closure": closure,
        "model": {"name": model.spec["name"], "kwargs": dict(model.spec["kwargs"]),
                  "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}},
        "grid": {"n": int(grid["n"]), "length": float(grid["length"])}, "flow": dict(flow),
        "normalization": norm.as_dict(), "config": config, "epoch": int(epoch),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng or [], "training": dict(training or {}),
    }
    return write_payload(path, payload)


def write_payload(path: str | Path, payload: dict) -> Path:
    """``torch.save`` a checkpoint payload atomically (``<path>.tmp``, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _read(path: Path, map_location) -> Any:
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a truncated one has no directory
        raise ValueError(f"checkpoint {path} is truncated or not a checkpoint file (no intact zip archive); "
                         f"use another copy (<out>/best.pt or last.pt) or {HOW_TO_TRAIN}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, pickle.UnpicklingError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"checkpoint {path} is corrupt or not a checkpoint ({first}); {HOW_TO_TRAIN}") from err


def load_checkpoint(path: str | Path, *, grid=None, flow: Mapping[str, Any] | None = None,
                    normalization: Normalization | Mapping[str, float] | None = None,
                    map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read and validate a checkpoint; with ``grid`` (a :class:`~solvers.grid.Grid` or ``(n, length)``),
    ``flow`` (a fingerprint) or ``normalization`` given, refuse a checkpoint that does not match them.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the problem otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; {HOW_TO_TRAIN}")
    payload = _read(path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} is a torch file but not a closure checkpoint (format {found!r}); {HOW_TO_TRAIN}")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"checkpoint {path} has format version {version!r}, this code (ns-closure "
                         f"{_code_version()}) reads version {FORMAT_VERSION}; retrain with this version")
    missing = [key for key in _REQUIRED if key not in payload]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {missing}; the file is corrupt; {HOW_TO_TRAIN}")
    if payload.get("code_version") != _code_version():
        log.info("checkpoint %s was written by ns-closure %s (this is %s)", path, payload.get("code_version"),
                 _code_version())
    ckpt = Checkpoint(path, payload)
    ckpt.normalization  # noqa: B018  (validates the stored statistics)
    if grid is not None:
        n, length = (grid.n, grid.length) if hasattr(grid, "n") else grid
        ckpt.check_grid(int(n), float(length))
    if flow is not None:
        ckpt.check_flow(flow)
    if normalization is not None:
        ckpt.check_normalization(normalization)
    return ckpt
