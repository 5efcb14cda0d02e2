"""Closure training data: HDF5 files of (coarse state, exact closure target) pairs.

Layout (``layout = "closure-pairs"``, ``layout_version = 1``; float32 fields, gzip, one chunk per frame):

    /state      (traj, time, x, y)  coarse vorticity on the closure's grid
    /target     (traj, time, x, y)  exact closure tendency on the same grid, the correction to
                                    dw/dt a tendency plug-in should return (E1: H = -u.grad w +
                                    sigma dW/dt; E2: -Pi, see solvers.filters)
    /time       (time,)             record times (float64)
    /split      (traj,)             0 = train, 1 = validation, 2 = test (whole trajectories)
    /done       (traj,)             1 once a trajectory is fully written (resume marker)
    /stats/{state,target}_{mean,std}  scalars over the train split (normalisation)
    optional:
    /target_noise (traj, time, x, y)  the stochastic part of /target (E1), so that
                                      target - target_noise is recomputable from /dns
    /dns          (traj, time, X, Y)  fine-grid vorticity at the same times
    /reference/state (traj, rtime, x, y), /reference/time (rtime,)
                                      coarse truth over the a-posteriori window, every trajectory
    root attributes: layout, layout_version, config (resolved YAML), kind ("e1" / "e2"), grid_n,
    grid_length, fine_n, dt, code_version, git_commit, status ("running" / "complete").

Readers refuse files that are not complete, name the missing piece and say how to regenerate.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

__all__ = ["LAYOUT", "LAYOUT_VERSION", "SPLITS", "PairData", "TrajectoryData", "read_pairs", "read_trajectories", "read_attrs", "split_stats",
           "write_pairs"]

LAYOUT, LAYOUT_VERSION = "closure-pairs", 2
# Older layouts still read, by dataset kind. Version 2 changed only E2's target: -Pi is no longer
# 2/3-dealiased (solvers.filters.les_closure_term), so version-1 E1 files and E3 files (trajectories,
# no closure term: solvers.parametric) are still valid.
_STILL_VALID = {1: ("e1", "e3")}
SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass
class PairData:
    """One split in memory: ``state``/``target`` ``(sample, x, y)`` float32 plus bookkeeping."""

    state: torch.Tensor
    target: torch.Tensor
    trajectories: np.ndarray  # (sample,) trajectory index of each sample
    times: np.ndarray  # (sample,) record time of each sample
    stats: dict[str, float]
    attrs: dict


def _open(path: str | Path) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"closure dataset {path} does not exist; create it with "
                                f"`python train_closure.py generate --config configs/<data>.yaml`")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path} is not a readable HDF5 file ({err}); regenerate it") from err


def read_attrs(path: str | Path) -> dict:
    """Root attributes of a pair file, validated (layout, version, completeness)."""
    with _open(path) as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        missing = [name for name in ("state", "target", "time", "split", "stats") if name not in f]
    if attrs.get("layout") != LAYOUT:
        raise ValueError(f"{path} is not a closure-pair dataset (layout={attrs.get('layout')!r}); "
                         f"simulate.py trajectories cannot be used for training directly")
    version = int(attrs.get("layout_version", -1))
    if version != LAYOUT_VERSION and attrs.get("kind") not in _STILL_VALID.get(version, ()):
        why = (" (its E2 target is the old 2/3-dealiased -Pi, which does not make the LES exact)"
               if version == 1 else "")
        raise ValueError(f"{path} has layout version {version}{why}, this code reads {LAYOUT_VERSION}; "
                         f"regenerate the data with this version (the same `train_closure.py generate` command)")
    if missing:
        raise ValueError(f"{path} lacks dataset(s) {missing}; regenerate it")
    if attrs.get("status") != "complete":
        raise ValueError(f"{path} is incomplete (status={attrs.get('status')!r}); rerun the same "
                         f"`train_closure.py generate` command to resume it")
    return attrs


def read_pairs(path: str | Path, split: str, device: str | torch.device = "cpu") -> PairData:
    """Load one split (``"train"``, ``"val"`` or ``"test"``) of a complete pair file into memory."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    attrs = read_attrs(path)
    with _open(path) as f:
        state, target = f["state"], f["target"]
        if state.shape != target.shape or state.ndim != 4:
            raise ValueError(f"{path}: state {state.shape} and target {target.shape} must be equal (traj, time, x, y)")
        trajs = np.flatnonzero(f["split"][...] == SPLITS[split])
        if trajs.size == 0:
            raise ValueError(f"{path} has no trajectory in split {split!r}")
        s, t = state[trajs.tolist()], target[trajs.tolist()]
        times = f["time"][...]
        stats = {k: float(v[()]) for k, v in f["stats"].items()}
    n_time = s.shape[1]
    return PairData(
        state=torch.from_numpy(s.reshape(-1, *s.shape[2:])).to(device),
        target=torch.from_numpy(t.reshape(-1, *t.shape[2:])).to(device),
        trajectories=np.repeat(trajs, n_time),
        times=np.tile(times, trajs.size),
        stats=stats,
        attrs=attrs,
    )


@dataclass
class TrajectoryData:
    """One split of a parametric file (:mod:`solvers.parametric`) as whole trajectories."""

    state: torch.Tensor  # (traj, time, x, y) float32
    params: torch.Tensor  # (traj, params) float64, e.g. Re; (traj, 0) when the file has none
    times: np.ndarray  # (time,) record times
    trajectories: np.ndarray  # (traj,) trajectory indices in the file
    stats: dict[str, float]
    attrs: dict


def read_trajectories(path: str | Path, split: str, device: str | torch.device = "cpu") -> TrajectoryData:
    """Load one split of a complete pair file keeping the trajectories whole, with their ``/params``."""
    data = read_pairs(path, split, device)
    trajs = np.unique(data.trajectories)
    n_time = len(data.state) // len(trajs)
    with _open(path) as f:
        params = f["params"][...][trajs] if "params" in f else np.zeros((len(trajs), 0))
    return TrajectoryData(state=data.state.reshape(len(trajs), n_time, *data.state.shape[1:]),
                          params=torch.from_numpy(np.asarray(params, np.float64)).to(device),
                          times=data.times[:n_time], trajectories=trajs, stats=data.stats, attrs=data.attrs)


def split_stats(state: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Scalar mean / std of the train split's state and target (float64 accumulation)."""
    out = {}
    for name, array in (("state", state), ("target", target)):
        a = np.asarray(array, dtype=np.float64)
        out[f"{name}_mean"], out[f"{name}_std"] = float(a.mean()), float(a.std())
    return out


def write_pairs(path: str | Path, state: np.ndarray, target: np.ndarray, times: np.ndarray,
                split: np.ndarray, attrs: dict, extra: dict[str, np.ndarray] | None = None) -> Path:
    """Write a complete pair file in one go, atomically (``<path>.tmp`` then rename).

    Small datasets and tests use this directly; the resumable generator in :mod:`solvers.datagen`
    writes the same layout incrementally. ``extra`` maps further dataset paths to arrays.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    state, target = np.asarray(state, np.float32), np.asarray(target, np.float32)
    split = np.asarray(split, np.int8)
    stats = split_stats(state[split == 0], target[split == 0])
    with h5py.File(tmp, "w") as f:
        chunks = (1, 1, *state.shape[2:])
        f.create_dataset("state", data=state, chunks=chunks, compression="gzip")
        f.create_dataset("target", data=target, chunks=chunks, compression="gzip")
        f["time"], f["split"] = np.asarray(times, np.float64), split
        f["done"] = np.ones(len(split), np.int8)
        for key, value in stats.items():
            f[f"stats/{key}"] = value
        for key, value in (extra or {}).items():
            f[key] = value
        f.attrs.update({"layout": LAYOUT, "layout_version": LAYOUT_VERSION, "status": "complete", **attrs})
    tmp.replace(path)
    return path
