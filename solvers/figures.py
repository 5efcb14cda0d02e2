"""Figures of a run (matplotlib, Agg canvas, imported lazily): vorticity snapshots, ensemble
mean and spread, energy spectrum, energy / enstrophy time series, errors against a reference.

Each ``plot_*`` function takes arrays and writes one PNG; :func:`plot_run` reads a trajectory file
(:mod:`solvers.io`) and writes every figure as ``<stem>_<name>.png`` next to it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from . import diagnostics
from .grid import Grid

__all__ = ["save_figure", "plot_snapshots", "plot_ensemble", "plot_spectrum", "plot_timeseries", "plot_metrics", "plot_assimilation",
           "plot_run"]


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` atomically (a temporary file beside it, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=dpi)
    tmp.replace(path)
    return path


def _field(ax, w: np.ndarray, length: float, title: str, cmap: str = "RdBu_r", symmetric: bool = True):
    """Draw ``w`` ``(x, y)`` with x to the right and y up."""
    vmax = float(np.abs(w).max()) or 1.0
    limits = dict(vmin=-vmax, vmax=vmax) if symmetric else {}
    image = ax.imshow(w.T, origin="lower", extent=(0, length, 0, length), cmap=cmap, **limits)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return image


def plot_snapshots(frames: np.ndarray, times: np.ndarray, length: float, path: Path) -> Path:
    """A row of vorticity fields ``frames`` ``(time, x, y)`` (one member) at ``times``."""
    fig = _figure(2.4 * len(frames) + 0.6, 2.6)
    axes = fig.subplots(1, len(frames), squeeze=False)[0]
    for ax, w, t in zip(axes, frames, times):
        image = _field(ax, w, length, f"t = {t:.4g}")
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="vorticity")
    return save_figure(fig, path, dpi=100)


def plot_ensemble(members: np.ndarray, t: float, length: float, path: Path) -> Path:
    """Member 0, the ensemble mean and the pointwise spread of ``members`` ``(member, x, y)`` at ``t``."""
    mean = members.mean(axis=0)
    spread_field = np.sqrt(((members - mean) ** 2).mean(axis=0))
    total = float(diagnostics.spread(torch.as_tensor(members, dtype=torch.float64)))
    fig = _figure(8.0, 2.8)
    axes = fig.subplots(1, 3)
    fig.colorbar(_field(axes[0], members[0], length, f"member 0, t = {t:.4g}"), ax=axes[0], shrink=0.8)
    fig.colorbar(_field(axes[1], mean, length, f"mean of {len(members)} members"), ax=axes[1], shrink=0.8)
    fig.colorbar(_field(axes[2], spread_field, length, f"spread (RMS {total:.3g})", "viridis", False),
                 ax=axes[2], shrink=0.8)
    return save_figure(fig, path, dpi=100)


def plot_spectrum(first: np.ndarray, last: np.ndarray, times: tuple[float, float], length: float,
                  path: Path) -> Path:
    """Members' mean energy spectrum ``E(k)`` of ``first`` and ``last`` ``(member, x, y)``, log-log."""
    grid = Grid(first.shape[-1], length, dtype=torch.float64)
    fig = _figure(4.5, 3.5)
    ax = fig.subplots()
    top = 0.0
    for w, t, style in ((first, times[0], "--"), (last, times[1], "-")):
        k, spectrum = diagnostics.energy_spectrum(torch.as_tensor(w, dtype=torch.float64), grid)
        values = spectrum.mean(dim=0)[1:].clamp_min(1e-300).numpy()
        ax.loglog(k[1:].numpy(), values, style, label=f"t = {t:.4g}")
        top = max(top, float(values.max()))
    ax.set_ylim(bottom=top * 1e-12 if top > 0 else None)  # hide round-off floors
    ax.axvline(grid.n / 3, color="gray", lw=0.8, ls=":", label="2/3 cutoff")
    ax.set_xlabel("k (integer shell)")
    ax.set_ylabel("E(k)")
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=100)


def plot_timeseries(times: np.ndarray, series: Mapping[str, np.ndarray], path: Path) -> Path:
    """One panel per ``name: (member, time)`` series: members thin, their mean thick."""
    fig = _figure(4.2 * len(series), 3.2)
    axes = fig.subplots(1, len(series), squeeze=False)[0]
    for ax, (name, values) in zip(axes, series.items()):
        values = np.atleast_2d(values)
        if len(values) > 1:
            ax.plot(times, values.T, color="C0", lw=0.5, alpha=0.4)
        ax.plot(times, values.mean(axis=0), color="C0", lw=1.8)
        ax.set_xlabel("t")
        ax.set_ylabel(name)
    return save_figure(fig, path, dpi=100)


def plot_metrics(times: np.ndarray, metrics: Mapping[str, np.ndarray], path: Path) -> Path:
    """Relative errors ``rel_l2`` and ``ens_mean_rel_l2`` against a reference (left) and the ensemble
    ``spread`` in vorticity units (right), versus time."""
    fig = _figure(8.5, 3.3)
    left, right = fig.subplots(1, 2)
    for name in ("rel_l2", "ens_mean_rel_l2"):
        if name in metrics:
            left.plot(times, metrics[name], marker=".", label=name)
    left.set_ylabel("relative L2 error vs reference")
    left.legend(fontsize=8)
    if "spread" in metrics:
        right.plot(times, metrics["spread"], marker=".", color="C2")
    right.set_ylabel("spread (RMS about the ensemble mean)")
    for ax in (left, right):
        ax.set_xlabel("t")
    return save_figure(fig, path, dpi=100)


def plot_assimilation(history: Mapping[str, np.ndarray], path: Path) -> Path:
    """Twin experiment, DAPPER-style: forecast and analysis RMSE of the ensemble mean (solid) and spread
    (dotted) at every observation time, as a saw-tooth of forecast -> analysis pairs."""
    fig = _figure(6.5, 3.3)
    ax = fig.subplots()
    t = np.repeat(history["time"], 2)
    for key, ls in (("rmse", "-"), ("spread", ":")):
        saw = np.stack([history[f"{key}_f"], history[f"{key}_a"]], axis=1).ravel()
        ax.plot(t, saw, ls=ls, color="C0" if key == "rmse" else "C1", label=f"{key} (forecast -> analysis)")
    ax.set(xlabel="t", ylabel="vorticity units", yscale="log")
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=100)


def plot_run(path: str | Path, stem: str | Path | None = None, n_snapshots: int = 5) -> list[Path]:
    """Every figure for the trajectory file ``path``, as ``<stem>_<name>.png``; returns the paths."""
    from .io import read_attrs, read_frame, read_group, read_times

    path = Path(path)
    stem = Path(stem) if stem is not None else path.with_suffix("")
    out = lambda name: stem.with_name(f"{stem.name}_{name}.png")  # noqa: E731
    attrs, times = read_attrs(path), read_times(path)
    length = float(attrs.get("grid_length", 1.0))
    picks = sorted({round(i) for i in np.linspace(0, len(times) - 1, min(n_snapshots, len(times)))})
    frames = [read_frame(path, i) for i in picks]
    written = [plot_snapshots(np.stack([f[0] for f in frames]), times[picks], length, out("snapshots")),
               plot_spectrum(frames[0], frames[-1], (times[0], times[-1]), length, out("spectrum"))]
    if frames[-1].shape[0] > 1:
        written.append(plot_ensemble(frames[-1], float(times[-1]), length, out("ensemble")))
    series = read_group(path, "diagnostics") or _diagnostics_from_frames(path, len(times), length)
    written.append(plot_timeseries(times, series, out("energy")))
    metrics = read_group(path, "metrics")
    if metrics.get("time") is not None and len(metrics["time"]):
        written.append(plot_metrics(metrics["time"], metrics, out("metrics")))
    history = read_group(path, "assimilation")
    if history.get("time") is not None and len(history["time"]):
        written.append(plot_assimilation(history, out("assimilation")))
    return written


def _diagnostics_from_frames(path: Path, count: int, length: float) -> dict[str, np.ndarray]:
    """Energy and enstrophy ``(member, time)`` recomputed frame by frame (files without diagnostics)."""
    from .io import read_frame

    values: dict[str, list] = {"energy": [], "enstrophy": []}
    grid = None
    for i in range(count):
        w = torch.as_tensor(read_frame(path, i), dtype=torch.float64)
        grid = grid or Grid(w.shape[-1], length, dtype=torch.float64)
        values["energy"].append(diagnostics.energy(w, grid).numpy())
        values["enstrophy"].append(diagnostics.enstrophy(w, grid).numpy())
    return {k: np.stack(v, axis=1) for k, v in values.items()}
