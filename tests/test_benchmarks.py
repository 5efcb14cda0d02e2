"""The E4 benchmark scripts run end to end on a tiny generated E1 dataset (no checkpoints): a smoke test that
keeps them in step with the library (their figures come from real runs in benchmarks/results/)."""
import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from solvers import Grid
from solvers.data_config import load_data_config
from solvers.datagen import generate
from test_evaluation import E1 as TINY_E1

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
E1 = TINY_E1 | {  # test_evaluation's 32^2 -> 16^2 E1 flow, 4 trajectories (2/1/1), 10 records 0.02 apart
    "trajectories": 4, "splits": {"train": 2, "val": 1, "test": 1}, "batch": 4,
    "record": {"start": 0.0, "end": 0.2, "dt": 0.02}, "reference": {"start": 0.0, "end": 0.2, "dt": 0.1},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    (tmp / "e1.yaml").write_text(yaml.safe_dump(E1 | {"out": str(tmp / "e1.h5")}))
    generate(load_data_config(tmp / "e1.yaml"), progress=False)
    return tmp / "e1.h5"


def benchmark(name: str):
    """The script ``benchmarks/<name>.py`` imported as a module."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def scripts():
    return benchmark("reconstruction"), benchmark("reconstruction_history"), benchmark("forecast")


def test_reconstruction_table_covers_every_fraction_layout_and_noise(data, scripts, tmp_path):
    out = tmp_path / "r.json"
    assert scripts[0].main(["--data", str(data), "--fields", "3", "--fractions", "10", "30", "--checkpoint", "none",
                            "--snapshots", "20", "--copies", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    # per fraction and noise: 4 methods x (fixed, changing) + gappy_pod on the QR layout
    assert len(rows) == 2 * 2 * (4 * 2 + 1) and all(math.isfinite(r["rel_l2"]) for r in rows)
    assert out.with_suffix(".md").read_text().count("gappy_pod_posterior") == 2 * 2 * 2


def test_history_cycles_every_frame_and_writes_its_figure(data, scripts, tmp_path):
    out = tmp_path / "h.json"
    assert scripts[1].main(["--data", str(data), "--fractions", "20", "--frames", "6", "--starts", "2",
                            "--modes", "20", "--copies", "2", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert [(r["noise"], r["layout"]) for r in results["rows"]] == [(0.0, "fixed"), (0.0, "changing"),
                                                                   (0.1, "fixed"), (0.1, "changing")]
    assert all(len(r["rel_l2"]) == 6 and 0 <= r["floor"] < 1 for r in results["rows"])
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="fewer than --frames 99"):
        scripts[1].main(["--data", str(data), "--frames", "99", "--json", str(out)])


def test_forecast_runs_from_every_start_over_the_horizon(data, scripts, tmp_path):
    out = tmp_path / "f.json"
    assert scripts[2].main(["--data", str(data), "--starts", "2", "--horizon", "4", "--modes", "10", "--copies", "2",
                            "--checkpoint", "none", "--json", str(out)]) == 0
    curves = json.loads(out.read_text())["curves"]
    assert set(curves) == {"truth", "cubic", "gappy_pod"}
    assert all(len(c["rel_l2"]) == 5 for c in curves.values())
    assert curves["truth"]["rel_l2"][0] == 0.0
    assert scripts[2].main(["--data", str(tmp_path / "missing.h5"), "--json", str(out)]) == 2


def test_ensf_scaling_times_latent_and_physical_analyses(tmp_path):
    ensf_scaling = benchmark("ensf_scaling")
    out = tmp_path / "s.json"
    assert ensf_scaling.main(["--latent", "8", "--sizes", "8", "16", "--sensors", "5", "--members", "4",
                              "--steps", "5", "--repeats", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["dim"] for r in rows] == [9, 65, 257] and rows[0]["ratio"] == 1.0
    assert all(r["seconds"] > 0 for r in rows)


def test_spinup_finds_where_a_relaxing_history_settles():
    spinup = benchmark("spinup")
    times = np.linspace(0.0, 40.0, 401)
    z = (10 + 20 * np.exp(-times / 5))[:, None] * np.array([0.9, 1.1])  # two runs about one relaxing mean
    summary = spinup.summarise(times, z, window=10.0, steady_from=20.0, tolerance=0.2)
    # window [s, s + 10] holds 10 + 8.65 exp(-s / 5) against a level of 10.09: within 20 % from s = 10, not s = 5
    assert summary["settled_from"] == 10.0 and summary["steady_level"] == pytest.approx(10.09, abs=0.01)
    assert summary["windows"][0]["over_steady"] > 1.5
    never = spinup.summarise(times, z[::-1], window=10.0, steady_from=20.0, tolerance=0.2)  # still changing at the end
    assert never["settled_from"] is None


def test_spinup_runs_a_data_configs_dns(data, tmp_path):
    spinup = benchmark("spinup")
    out = tmp_path / "s.json"
    assert spinup.main(["--config", str(data.with_suffix(".yaml")), "--t-end", "0.2", "--every", "0.05",
                        "--window", "0.1", "--members", "2", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert len(results["times"]) == 5 and np.isfinite(results["enstrophy"]).all()
    assert np.shape(results["enstrophy"]) == (5, 2) and out.with_suffix(".png").is_file()


def test_cdm_components_measure_each_part_of_a_latent_closure(data, tmp_path, capsys):
    import closure
    from closure.closed_loop import setup_coarse as _setup
    from solvers.pairs import read_attrs

    cdm_components = benchmark("cdm_components")
    _, flow, _ = _setup(read_attrs(data), "cpu", "float32")
    ckpt = closure.plugin_class("latent_cdm").example_checkpoint(tmp_path / "m.pt", flow.grid, flow.equation)
    out = tmp_path / "c.json"
    assert cdm_components.main(["--checkpoint", str(ckpt), "--data", str(data), "--stride", "1", "--samples", "2",
                                "--times", "0.1", "0.4", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["part"].split()[0] for r in rows] == (["autoencoder", "denoiser", "denoiser"] + ["sample"] * 2
                                                    + ["decoded"] * 2 + ["drain"] * 3)
    assert all(-1 <= r["corr"] <= 1 for r in rows if r["part"] != "drain")
    assert all(np.isfinite([r["corr"], r["band"]]).all() for r in rows if r["part"] == "drain")
    # the drain rows: a closure's enstrophy transfer over the true one's, per band
    w, h = (torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(s)) for s in (0, 1))
    grid = Grid(16)
    drain = cdm_components.drain_rows({"truth": h, "half": 0.5 * h, "none": 0 * h}, h, w, grid)
    assert [(r["corr"], r["band"]) for r in drain] == [pytest.approx((1.0, 1.0)), pytest.approx((0.5, 0.5)), (0.0, 0.0)]
    # the denoiser's noisy input loses correlation with the latent as the noise grows
    assert rows[1]["input_corr"] > rows[2]["input_corr"]
    fno = closure.plugin_class("fno").example_checkpoint(tmp_path / "f.pt", flow.grid, flow.equation)
    assert cdm_components.main(["--checkpoint", str(fno), "--data", str(data), "--json", str(out)]) == 2
    assert "not a latent diffusion closure" in capsys.readouterr().out


def test_e2_exact_closure_beats_none_and_is_the_floor(tmp_path):
    """A tiny E2 flow (32^2 DNS -> 16^2 LES, 3/2 rule): the LES driven by the running DNS's exact closure
    has only its time-stepping error, far below no closure's and below the held and layout-1 variants;
    so has the 2/3-rule LES with its own exact closure."""
    from test_datagen import E2

    config = tmp_path / "e2.yaml"
    config.write_text(yaml.safe_dump(E2 | {"out": str(tmp_path / "unused.h5"), "coarse": {**E2["coarse"], "dealias": "3/2"}}))
    out = tmp_path / "x.json"
    assert benchmark("e2_exact_closure").main(["--config", str(config), "--grids", "16", "--members", "1",
                                               "--start", "0.4", "--times", "0.4", "0.8", "--json", str(out)]) == 0
    errors = json.loads(out.read_text())["rel_l2"]
    for grid in ("16",):
        e = {k: np.array(v) for k, v in errors[grid].items()}
        assert (e["exact"] < 0.1 * e["none"]).all(), e
        assert e["exact"][-1] < min(e["exact, every 5"][-1], e["2/3 LES: dealiased -Pi, unfiltered f"][-1]), e
        assert (e["2/3 LES: exact"] < 0.1 * e["2/3 LES: none"]).all(), e


def test_reynolds_bound_sensitivity_is_the_exact_derivative_of_viscous_decay():
    """benchmarks/reynolds_bound.py on a Stokes flow (no advection, no forcing): ``w_hat(t) = exp(-(nu k^2 + drag) t)
    w_hat(0)``, so ``d w / d log nu = -nu t lap_k(w(t))``, sensed at grid points; the finite difference matches it
    to the time stepper's and the difference's accuracy."""
    from types import SimpleNamespace

    from solvers import NavierStokes2D
    from solvers.initial_conditions import band_limited
    from solvers.observation import ObservationOperator, parse_sensors

    bound = benchmark("reynolds_bound")
    grid = Grid(16, 2 * math.pi, dtype=torch.float64)
    eq = NavierStokes2D(grid, nu=0.02, drag=0.1, convection=False)
    w0 = band_limited(grid, 2, 1, 4, 1.0, generator=torch.Generator().manual_seed(0))
    frames = torch.stack([w0, w0], dim=1)  # (truths, time, x, y): one cycle from w0
    op = ObservationOperator(grid, parse_sensors("grid:12", grid, seed=1))
    reynolds = torch.tensor([50.0, 80.0], dtype=torch.float64)
    J = bound.sensitivities(frames, reynolds, SimpleNamespace(equation=eq, dt=0.005), op, 40, "cn_rk4", 1e-5)
    t, nu = 0.2, 1 / reynolds
    decay = torch.exp(-(nu[:, None, None] * grid.k2 + 0.1) * t)
    exact = op(grid.irfft(-nu[:, None, None] * t * grid.k2 * decay * grid.rfft(w0)))  # (truths, sensors)
    assert J.shape == (2, 1, 12)
    assert torch.allclose(J[:, 0], exact, atol=1e-4 * exact.abs().max())
