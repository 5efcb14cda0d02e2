"""Long-run statistics of a flow against filtered DNS, and spread-skill (DESIGN.md E2, "Metrics").

A chaotic flow forgets its initial state after a few Lyapunov times, so an LES closure is judged by
the statistics of long closed-loop runs against those of the filtered DNS:

- :func:`reference_statistics`: filtered-DNS frames ``(frames, x, y)`` (a pair file's /state);
- :func:`run_statistics`: a rollout's snapshots ``(member, x, y)``, averaged over members and time;
- :func:`compare`: ``spectrum_error`` (mean |log10 E/E_ref| over shells 1..n/3), ``spectrum_error_band``
  (the same over the near-cutoff band n/3 < k <= n/2, which a 3/2-rule LES resolves and where the filtered
  DNS's energy falls steeply: the closure must drain what the resolved cascade brings), relative errors of
  the mean energy and enstrophy, ``pdf_wasserstein`` (W1 of the vorticity samples over the reference
  std) and ``pdf_kl`` (histogram KL(ref || model));
- :func:`spread_skill`: ensemble spread over ensemble-mean RMS error in a window after the start
  (1 = calibrated).
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from solvers import diagnostics
from solvers.grid import Grid

__all__ = ["FlowStatistics", "METRICS", "field_statistics", "merge_statistics", "reference_statistics",
           "run_statistics", "compare", "spectrum_error", "band_spectrum_error", "spread_skill"]

METRICS = ("spectrum_error", "spectrum_error_band", "energy_rel_err", "enstrophy_rel_err", "pdf_wasserstein", "pdf_kl")
SUBSAMPLE = 8  # keep one vorticity value in SUBSAMPLE (at random) for the PDF
MAX_VALUES = 1_000_000  # cap on the merged vorticity sample


@dataclass
class FlowStatistics:
    """Frame-averaged statistics of a set of vorticity fields."""

    spectrum: np.ndarray  # (n//2+1,) mean shell energy spectrum E(k)
    energy: float  # mean kinetic energy per unit area
    enstrophy: float  # mean enstrophy per unit area
    vorticity: np.ndarray  # (sample,) float32 random sample of the vorticity values (for PDFs)
    frames: int  # fields averaged


def _sample(values: torch.Tensor, count: int, seed: int = 0) -> np.ndarray:
    """``count`` values of the flat ``values`` drawn at random (with replacement, seeded), float32."""
    values = values.reshape(-1).detach().to("cpu", torch.float32)
    if count >= values.numel():
        return values.numpy().copy()
    idx = torch.randint(values.numel(), (count,), generator=torch.Generator().manual_seed(seed))
    return values[idx].numpy()


def field_statistics(w: torch.Tensor, grid: Grid, subsample: int = SUBSAMPLE) -> FlowStatistics:
    """Statistics of the fields ``w`` ``(..., x, y)``; every leading index is one frame."""
    w = w.reshape(-1, *w.shape[-2:]).to(grid.device, grid.dtype)
    spectrum = diagnostics.energy_spectrum(w, grid)[1].double().mean(0).cpu().numpy()
    return FlowStatistics(spectrum, float(diagnostics.energy(w, grid).double().mean()),
                          float(diagnostics.enstrophy(w, grid).double().mean()),
                          _sample(w, max(1, w.numel() // subsample)), w.shape[0])


def merge_statistics(parts: Iterable[FlowStatistics], max_values: int = MAX_VALUES) -> FlowStatistics | None:
    """Frame-weighted average of ``parts``, their vorticity samples pooled (``None`` if there are none)."""
    parts = list(parts)
    if not parts:
        return None
    frames = np.array([p.frames for p in parts], dtype=np.float64)
    weight = frames / frames.sum()
    spectrum = sum(wi * p.spectrum for wi, p in zip(weight, parts))
    vorticity = np.concatenate([p.vorticity for p in parts])
    if vorticity.size > max_values:
        vorticity = _sample(torch.from_numpy(vorticity), max_values, seed=1)
    return FlowStatistics(spectrum, float(weight @ [p.energy for p in parts]),
                          float(weight @ [p.enstrophy for p in parts]), vorticity, int(frames.sum()))


def reference_statistics(state: torch.Tensor | np.ndarray, grid: Grid, chunk: int = 256) -> FlowStatistics:
    """Statistics of filtered-DNS frames ``state`` ``(frames, x, y)``, computed ``chunk`` frames at a time."""
    state = torch.as_tensor(state)
    return merge_statistics(field_statistics(state[i:i + chunk], grid) for i in range(0, len(state), chunk))


def run_statistics(snapshots: Iterable[torch.Tensor], grid: Grid) -> FlowStatistics | None:
    """Member- and time-averaged statistics of a rollout's snapshots, each ``(member, x, y)``.

    ``snapshots`` may be a generator (a running rollout): each is reduced as it arrives, none is kept.
    ``None`` when there is no snapshot (a run that blew up during spin-up).
    """
    return merge_statistics(field_statistics(w, grid) for w in snapshots)


def _histogram_kl(p_values: np.ndarray, q_values: np.ndarray, bins: int = 64, floor: float = 1e-6) -> float:
    """KL(p || q) of two samples' histograms on shared bins; empty bins get probability ``floor``."""
    lo, hi = min(p_values.min(), q_values.min()), max(p_values.max(), q_values.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    p, q = (np.histogram(v, edges)[0].astype(np.float64) for v in (p_values, q_values))
    p, q = np.maximum(p / p.sum(), floor), np.maximum(q / q.sum(), floor)
    return float(np.sum(p * np.log(p / q)))


def spectrum_error(spectrum, ref, k_min: int = 1, k_max: int | None = None) -> float:
    """Mean ``|log10(E / E_ref)|`` over shells ``k_min..k_max`` of two shell spectra ``(n // 2 + 1,)``
    (``k_max`` default: the 2/3-rule cutoff ``n // 3``, ``n = 2 (len(E) - 1)``). A band with no modes
    (``k_min > k_max``) is NaN; empty shells count as ``tiny``, so a model missing energy there scores large."""
    spectrum, ref = np.asarray(spectrum, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    k_max = (2 * (len(ref) - 1)) // 3 if k_max is None else min(k_max, len(ref) - 1)
    if k_min > k_max:
        return math.nan
    tiny = np.finfo(np.float64).tiny
    ratio = np.maximum(spectrum[k_min:k_max + 1], tiny) / np.maximum(ref[k_min:k_max + 1], tiny)
    return float(np.mean(np.abs(np.log10(ratio))))


def band_spectrum_error(spectrum, ref, k_cut: int | None = None) -> float:
    """:func:`spectrum_error` over the shells above ``k_cut`` (default ``n // 3``) up to the Nyquist ``n // 2``."""
    k_cut = (2 * (len(ref) - 1)) // 3 if k_cut is None else k_cut
    return spectrum_error(spectrum, ref, k_cut + 1, len(ref) - 1)


def compare(stats: FlowStatistics | None, ref: FlowStatistics, k_max: int | None = None) -> dict[str, float]:
    """Errors of ``stats`` against ``ref`` (the :data:`METRICS`); all NaN when ``stats`` is ``None``.

    ``spectrum_error`` is :func:`spectrum_error` over shells ``1..k_max``, by default the dealiased cutoff
    ``n // 3`` of the grid the spectra come from (``n = 2 (len(E) - 1)``); ``spectrum_error_band`` covers the
    shells above it up to the Nyquist ``n // 2``.
    """
    from scipy.stats import wasserstein_distance

    if stats is None or not np.isfinite(stats.vorticity).all() or not np.isfinite(stats.spectrum).all():
        return dict.fromkeys(METRICS, math.nan)
    k_max = k_max or (2 * (len(ref.spectrum) - 1)) // 3
    return {
        "spectrum_error": spectrum_error(stats.spectrum, ref.spectrum, 1, k_max),
        "spectrum_error_band": band_spectrum_error(stats.spectrum, ref.spectrum, k_max),
        "energy_rel_err": abs(stats.energy - ref.energy) / ref.energy,
        "enstrophy_rel_err": abs(stats.enstrophy - ref.enstrophy) / ref.enstrophy,
        "pdf_wasserstein": float(wasserstein_distance(stats.vorticity, ref.vorticity) / ref.vorticity.std()),
        "pdf_kl": _histogram_kl(ref.vorticity, stats.vorticity),
    }


def spread_skill(ens_mean_err: np.ndarray, spread: np.ndarray, times: np.ndarray, t0: float, horizon: float,
                 members: int | None = None) -> float:
    """Mean over ``times`` in ``(t0, t0 + horizon]`` of ``spread / ens_mean_err`` (all ``(time,)``).

    ``ens_mean_err`` is the absolute RMS error of the ensemble mean, ``spread`` the RMS of the members
    about their mean. 1 means calibrated, below 1 over-confident, 0 a collapsed (deterministic)
    ensemble. With ``members = M`` the finite-ensemble factor ``sqrt((M + 1) / (M - 1))`` is applied, so
    that an ensemble whose members and truth are draws from one distribution scores 1 (Fortin et al.
    2014); without it the ratio of such an ensemble is ``sqrt((M - 1) / (M + 1))``. NaN if no time fits.
    """
    times, err, spread = (np.asarray(a, dtype=np.float64) for a in (times, ens_mean_err, spread))
    keep = (times > t0 + 1e-9) & (times <= t0 + horizon + 1e-9)
    if not keep.any():
        return math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = float(np.mean(spread[keep] / err[keep]))
    return ratio * math.sqrt((members + 1) / (members - 1)) if members and members > 1 else ratio
