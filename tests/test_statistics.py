"""Long-run statistics and spread-skill (closure/statistics.py) and `evaluate --long-steps` on a tiny E2 file."""
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml

import train_closure
from closure import Plugin, register
from closure.evaluation import evaluate
from closure.statistics import compare, reference_statistics, run_statistics, spectrum_error, spread_skill
from solvers import Grid, diagnostics
from solvers.data_config import load_data_config
from solvers.datagen import generate
from solvers.initial_conditions import band_limited
from solvers.random import normal_like
from test_datagen import E2  # 32^2 Kolmogorov DNS -> 16^2 LES, 3 trajectories (1/1/1), reference t = 0.2..0.4

BLOW_UP_T = 0.7  # _test_nan_late returns NaN from this time on: step 25 of a long run from t = 0.2 (dt 0.02)


@register("_test_noisy")
class Noisy(Plugin):
    """A stochastic tendency: white noise from each member's own stream."""

    stochastic = True

    def __call__(self, state):
        return normal_like(state.w, state.generator, std=0.5)


@register("_test_nan_late")
class NanLate(Plugin):
    """No correction until BLOW_UP_T, NaN from then on: a closure that blows up mid-run."""

    def __call__(self, state):
        return torch.full_like(state.w, math.nan) if state.t >= BLOW_UP_T - 1e-9 else None


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def e2_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2")
    path = tmp / "e2.yaml"
    path.write_text(yaml.safe_dump(E2 | {"out": str(tmp / "e2.h5")}))
    generate(load_data_config(path), progress=False)
    return tmp / "e2.h5"


@pytest.fixture
def frames():
    grid = Grid(16, 2 * math.pi, dtype=torch.float64)
    return grid, band_limited(grid, 6, 1, 4, 2.0, generator=torch.Generator().manual_seed(0))  # (6, 16, 16)


def test_identical_statistics_compare_to_zero_and_run_averages_frames(frames):
    grid, w = frames
    ref = reference_statistics(w, grid, chunk=4)
    assert ref.frames == 6 and ref.spectrum.shape == (9,)
    assert all(v == pytest.approx(0.0, abs=1e-12) for v in compare(ref, ref).values())
    assert ref.energy == pytest.approx(float(diagnostics.energy(w, grid).mean()), rel=1e-12)
    assert ref.spectrum.sum() == pytest.approx(ref.energy, rel=1e-10)
    run = run_statistics(iter(w.reshape(3, 2, 16, 16)), grid)  # 3 snapshots of 2 members: the same frames
    assert run.frames == 6 and run.enstrophy == pytest.approx(ref.enstrophy, rel=1e-12)
    np.testing.assert_allclose(run.spectrum, ref.spectrum, rtol=1e-12)
    assert run_statistics(iter([]), grid) is None
    assert all(math.isnan(v) for v in compare(None, ref).values())


@pytest.mark.parametrize("shift", [0.1, -0.7, 2.0])
def test_shifted_vorticity_sample_has_wasserstein_shift_over_std(frames, shift):
    grid, w = frames
    ref = reference_statistics(w, grid)
    err = compare(replace(ref, vorticity=ref.vorticity + shift), ref)
    assert err["pdf_wasserstein"] == pytest.approx(abs(shift) / ref.vorticity.std(), rel=1e-5)
    assert err["pdf_kl"] > 0 and err["spectrum_error"] == 0.0


def test_spectrum_error_is_mean_abs_log10_up_to_the_dealiased_cutoff(frames):
    grid, w = frames
    ref = reference_statistics(w, grid)
    scaled = ref.spectrum * 10
    scaled[16 // 3 + 1:] *= 1e6  # shells above n/3 do not count
    err = compare(replace(ref, spectrum=scaled, energy=1.1 * ref.energy, enstrophy=0.5 * ref.enstrophy), ref)
    assert err["spectrum_error"] == pytest.approx(1.0, rel=1e-12)
    assert err["energy_rel_err"] == pytest.approx(0.1) and err["enstrophy_rel_err"] == pytest.approx(0.5)
    assert compare(replace(ref, spectrum=scaled), ref, k_max=8)["spectrum_error"] > 2
    assert err["spectrum_error_band"] == pytest.approx(7.0, rel=1e-12)  # shells 6..8: 10 * 1e6


def test_spectrum_band_error_charges_missing_near_cutoff_energy(frames):
    """A 2/3-rule LES has no energy above n/3: the band error is huge, the 1..n/3 error untouched."""
    grid, w = frames
    ref = reference_statistics(w, grid)
    masked = ref.spectrum.copy()
    masked[16 // 3 + 1:] = 0.0
    err = compare(replace(ref, spectrum=masked), ref)
    assert err["spectrum_error"] == 0.0 and err["spectrum_error_band"] > 100
    assert math.isnan(spectrum_error(ref.spectrum, ref.spectrum, 9, 8))  # no shell in the band


def _ensemble_scores(members: torch.Tensor, truth: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per time: ensemble-mean RMS error and spread, as `a_posteriori` computes them; members (time, member, p)."""
    rmse = torch.sqrt(((members.mean(1) - truth) ** 2).mean(-1)).numpy()
    spread = np.array([float(diagnostics.spread(m[..., None])) for m in members])
    return rmse, spread


def test_spread_skill_is_one_for_a_calibrated_ensemble_and_zero_for_a_collapsed_one():
    g = torch.Generator().manual_seed(0)
    n_time, m, points = 21, 8, 4000
    times = np.linspace(0.0, 2.0, n_time)
    scale = torch.linspace(0.1, 2.0, n_time)[:, None, None]  # uncertainty growing with time
    centre = torch.randn(n_time, 1, points, generator=g, dtype=torch.float64)
    draws = centre + scale * torch.randn(n_time, m + 1, points, generator=g, dtype=torch.float64)
    truth, members = draws[:, 0], draws[:, 1:]  # truth and members exchangeable: a calibrated ensemble
    rmse, spread = _ensemble_scores(members, truth)
    spread[times > 1.5] = 100.0  # outside (t0, t0 + horizon]: ignored
    # tolerance: 3 % (4000 points x 15 times: the estimate's sampling error is ~0.3 %)
    assert spread_skill(rmse, spread, times, 0.0, 1.5, members=m) == pytest.approx(1.0, abs=0.03)
    # the bare ratio of a calibrated M-member ensemble is sqrt((M - 1) / (M + 1))
    assert spread_skill(rmse, spread, times, 0.0, 1.5) == pytest.approx(math.sqrt((m - 1) / (m + 1)), abs=0.03)
    collapsed = members[:, :1].expand(-1, m, -1)  # all members equal: no spread, same error
    rmse_c, spread_c = _ensemble_scores(collapsed, truth)
    assert spread_skill(rmse_c, spread_c, times, 0.0, 1.5, members=m) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(spread_skill(rmse, spread, times, 5.0, 1.0))


def test_evaluate_long_run_writes_statistics_table_and_figure(e2_data, tmp_path):
    results = evaluate(e2_data, ["none", "_test_noisy"], {}, tmp_path, ensemble=4, device="cpu", dtype="float64",
                       long_steps=60, long_every=10, lyapunov=1.0)
    ref = results["long_run_reference"]
    assert ref["energy"] > 0 and len(ref["spectrum"]) == 9 and len(ref["pdf"]) == len(ref["pdf_centres"])
    none, noisy = (results["closures"][k]["long_run"] for k in ("none", "_test_noisy"))
    for lr in (none, noisy):
        assert lr["steps_run"] == 60 and not lr["blew_up"] and lr["snapshots"] == 6  # 6 spin-up steps skipped
        assert all(np.isfinite(lr[k]) and lr[k] >= 0 for k in ("spectrum_error", "spectrum_error_band", "energy_rel_err",
                                                               "enstrophy_rel_err", "pdf_wasserstein", "pdf_kl"))
    assert none["members"] == 1 and noisy["members"] == 4 and noisy["plugin_s"] > 0
    assert noisy["spread_skill"] > 0 and none["spread_skill"] == 0.0
    post = results["closures"]["none"]["a_posteriori"]
    assert post["ens_mean_rmse"][0] == pytest.approx(0.0, abs=1e-6) and post["ens_mean_rmse"][-1] > 0
    assert "long_run" in json.loads((tmp_path / "evaluation.json").read_text())["closures"]["none"]
    table = (tmp_path / "table.md").read_text()
    assert ("| closure | spectrum_error | spectrum k > n/3 | energy err | enstrophy err | pdf W1 | spread/skill | "
            "steps run | blew up |") in table
    assert "| none |" in table and "| 60/60 | no |" in table
    assert (tmp_path / "long_run.png").stat().st_size > 10_000


def test_closure_that_blows_up_is_reported_not_raised(e2_data, tmp_path, capsys):
    argv = ["evaluate", "--data", str(e2_data), "--closure", "_test_nan_late", "--device", "cpu", "--out", str(tmp_path),
            "--long-steps", "100", "--long-every", "10"]
    assert train_closure.main(argv) == 0
    lr = json.loads((tmp_path / "evaluation.json").read_text())["closures"]["_test_nan_late"]["long_run"]
    # NaN from step 25 on, found at the check closing the chunk of steps 21..30; last good state at step 20
    assert lr["blew_up"] and lr["steps_run"] == 20 and lr["blow_up_t"] == pytest.approx(0.2 + 30 * 0.02)
    assert lr["snapshots"] == 1 and np.isfinite(lr["spectrum_error"])  # the snapshot at step 20 (spin-up: 10)
    assert "| 20/100 | t=0.8 |" in capsys.readouterr().out
    assert train_closure.main(argv + ["--long-every", "0"]) == 2


def test_long_run_table_computes_the_band_error_of_older_results_from_their_spectra():
    from closure.evaluation_report import long_run_table

    ref = [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1e-2, 1e-3, 1e-4]  # n = 16: band shells 6..8
    run = [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1e-1, 1e-2, 1e-3]  # ten times the reference there
    lr = {"spectrum_error": 0.0, "energy_rel_err": 0.0, "enstrophy_rel_err": 0.0, "pdf_wasserstein": 0.0,
          "spread_skill": 0.0, "members": 1, "steps_run": 10, "steps": 10, "blew_up": False, "spectrum": run}
    table = long_run_table({"long_run_reference": {"spectrum": ref}, "closures": {"old": {"long_run": lr}}})
    assert "| old | 0 | 1 | 0 | 0 | 0 | — | 10/10 | no |" in table
