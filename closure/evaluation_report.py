"""The report of an evaluation (:mod:`closure.evaluation`): markdown tables, figures, merging earlier results.

``write_report(results, out)`` writes ``evaluation.json``, ``table.md`` (a second table for the
long run) and ``evaluation.png`` (``long_run.png``) under ``out``; ``load_results`` / ``merge_results`` let
evaluations of different plug-ins on one dataset run apart and combine.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from solvers.figures import _figure, save_figure
from solvers.io import atomic_write_text

from .statistics import band_spectrum_error

__all__ = ["write_report", "load_results", "merge_results", "markdown_table", "long_run_table"]


def write_report(results: dict, out: str | Path) -> None:
    """``results`` as JSON, markdown and figures under ``out`` (created)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "evaluation.json", json.dumps(results, indent=2))
    has_long = "long_run_reference" in results
    atomic_write_text(out / "table.md", markdown_table(results) + (f"\n{long_run_table(results)}" if has_long else ""))
    _figures(results, out)
    if has_long:
        _long_run_figure(results, out)


def load_results(folder: str | Path, attrs: dict) -> dict:
    """``folder/evaluation.json`` of an earlier run, checked to be on a dataset like ``attrs`` describes."""
    path = Path(folder) / "evaluation.json"
    if not path.is_file():
        raise FileNotFoundError(f"--merge {folder}: no evaluation.json there (run `train_closure.py evaluate "
                                f"--out {folder}` first)")
    try:
        results = json.loads(path.read_text())
        closures, grid_n = results["closures"], int(results["grid_n"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"--merge {folder}: {path} is not an evaluation result ({err})") from None
    if grid_n != int(attrs["grid_n"]) or results.get("kind") != attrs.get("kind"):
        raise ValueError(f"--merge {folder}: evaluated on a {results.get('kind')} {grid_n}^2 dataset, this one is "
                         f"{attrs.get('kind')} {attrs['grid_n']}^2; merge only runs on the same dataset")
    if not closures:
        raise ValueError(f"--merge {folder}: holds no evaluated plug-in")
    return results


def merge_results(parts: list[dict]) -> dict:
    """One result holding every part's plug-ins in order (a later part's entry replaces an earlier one of the
    same name); the first long-run reference found is kept."""
    merged = {**parts[0], "closures": {}}
    for part in parts:
        merged["closures"].update(part["closures"])
        if "long_run_reference" in part and "long_run_reference" not in merged:
            merged["long_run_reference"] = part["long_run_reference"]
    return merged


def _pick_times(times: list[float], count: int = 4) -> list[int]:
    """Indices of ``count`` evenly spaced reference times after the start (E1: t = 35, 40, 45, 50)."""
    idx = np.linspace(0, len(times) - 1, count + 1).round().astype(int)[1:]
    return sorted(set(idx.tolist()))


def markdown_table(results: dict) -> str:
    """One row per plug-in: a-priori metrics, ens_mean_rel_l2 at 4 times, final spread, cost."""
    times = max((r["a_posteriori"]["times"] for r in results["closures"].values()), key=len)
    targets = [times[i] for i in _pick_times(times)]
    head = ["closure", "mse", "rel_l2", "corr"] + [f"ens_mean_rel_l2 t={t:.4g}" for t in targets]
    head += ["spread (end)", "enstrophy err (end)", "rollout s", "closure ms/call", "closure cost / solver"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results["closures"].items():
        prior, post = r["a_priori"], r["a_posteriori"]
        cells = [name] + (["—"] * 3 if prior is None else [f"{prior['mse']:.3g}", f"{prior['rel_l2']:.3g}",
                                                            f"{prior['corr']:.3f}"])
        at = {round(t, 6): e for t, e in zip(post["times"], post["ens_mean_rel_l2"])}
        cells += [f"{at[round(t, 6)]:.3g}" if round(t, 6) in at else "—" for t in targets]
        z_err = abs(post["enstrophy"][-1] - post["enstrophy_ref"][-1]) / post["enstrophy_ref"][-1]
        calls, solver_s = post.get("calls", 0), post["wall_s"] - post["plugin_s"]
        per_call = f"{1e3 * post['plugin_s'] / calls:.3g} (x{post.get('members', 1)})" if calls else "—"
        ratio = f"{post['plugin_s'] / solver_s:.3g}x" if calls and solver_s > 0 else "—"
        cells += [f"{post['spread'][-1]:.3g}", f"{z_err:.3g}", f"{post['wall_s']:.1f}", per_call, ratio]
        if post["blew_up"]:
            cells[-1] = "blew up"
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def long_run_table(results: dict) -> str:
    """One row per plug-in with a long run: statistics errors against the filtered DNS, spread-skill, stability."""
    head = ["closure", "spectrum_error", "spectrum k > n/3", "energy err", "enstrophy err", "pdf W1", "spread/skill",
            "steps run", "blew up"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ref = results.get("long_run_reference", {}).get("spectrum")
    for name, r in results["closures"].items():
        if "long_run" not in r:
            continue
        lr = dict(r["long_run"])
        if "spectrum_error_band" not in lr:  # results written before the band metric: from the stored spectra
            lr["spectrum_error_band"] = (math.nan if lr.get("spectrum") is None or ref is None else
                                         band_spectrum_error(lr["spectrum"], ref))
        cells = [name] + [f"{lr[k]:.3g}" for k in ("spectrum_error", "spectrum_error_band", "energy_rel_err",
                                                   "enstrophy_rel_err", "pdf_wasserstein")]
        cells += [f"{lr['spread_skill']:.3g}" if lr["members"] > 1 else "—", f"{lr['steps_run']}/{lr['steps']}",
                  f"t={lr['blow_up_t']:.4g}" if lr["blew_up"] else "no"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def _figures(results: dict, out: Path) -> None:
    fig = _figure(12, 3.6)
    ax_err, ax_z, ax_spec = fig.subplots(1, 3)
    for i, (name, r) in enumerate(results["closures"].items()):
        post, color, name = r["a_posteriori"], f"C{i}", _label(name)
        ax_err.semilogy(post["times"], np.maximum(post["ens_mean_rel_l2"], 1e-12), color=color, label=name)
        if max(post["spread"]) > 0:
            ax_err.semilogy(post["times"], np.maximum(post["spread"], 1e-12) / _ref_rms(post), color=color, ls=":")
        ax_z.plot(post["times"], post["enstrophy"], color=color, label=name)
        k = np.arange(len(post["spectrum"]))
        ax_spec.loglog(k[1:], np.maximum(post["spectrum"][1:], 1e-30), color=color, label=name)
    ax_z.plot(post["times"], post["enstrophy_ref"], "k--", label="truth")
    ax_spec.loglog(k[1:], np.maximum(post["spectrum_ref"][1:], 1e-30), "k--", label="truth")
    ax_err.set(xlabel="t", ylabel="ens_mean_rel_l2 (solid), spread/rms (dotted)")
    ax_z.set(xlabel="t", ylabel="enstrophy")
    ax_spec.set(xlabel="k", ylabel="E(k) at the last time")
    for ax in (ax_err, ax_z, ax_spec):
        ax.legend(fontsize=7)
    save_figure(fig, out / "evaluation.png", dpi=110)


def _long_run_figure(results: dict, out: Path) -> None:
    """``long_run.png``: mean energy spectra and vorticity PDFs of the long runs against the filtered DNS."""
    fig = _figure(9, 3.6)
    ax_spec, ax_pdf = fig.subplots(1, 2)
    curves = [(_label(name), r["long_run"], f"C{i}", "-") for i, (name, r) in enumerate(results["closures"].items())
              if r.get("long_run", {}).get("spectrum") is not None]
    for name, s, color, ls in curves + [("filtered DNS", results["long_run_reference"], "k", "--")]:
        spectrum = np.asarray(s["spectrum"])
        ax_spec.loglog(np.arange(1, len(spectrum)), np.maximum(spectrum[1:], 1e-30), color=color, ls=ls, label=name)
        pdf = np.asarray(s["pdf"])
        ax_pdf.semilogy(s["pdf_centres"], np.where(pdf > 0, pdf, np.nan), color=color, ls=ls, label=name)
    ax_spec.set(xlabel="k", ylabel="mean E(k)")
    ax_pdf.set(xlabel="vorticity", ylabel="PDF")
    for ax in (ax_spec, ax_pdf):
        ax.legend(fontsize=7)
    save_figure(fig, out / "long_run.png", dpi=110)


def _label(name: str) -> str:
    """A legend label for plug-in ``name`` (matplotlib hides labels that start with an underscore)."""
    return name.lstrip("_") or name


def _ref_rms(post: dict) -> float:
    return float(np.sqrt(2 * np.mean(post["enstrophy_ref"])))
