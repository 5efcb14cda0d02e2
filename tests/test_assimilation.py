"""Twin experiments end to end: sensor data of a truth run, EnKF / LETKF plug-ins through simulate.py.

A 32^2 Kolmogorov flow (nu = 1e-2) is the truth; the ensemble starts from 16 independent draws (the
climatology), so the free ensemble mean stays ~100 % wrong. 8x8 sensors (6 % of the grid), noise 0.5
(about 10 % of the vorticity RMS), an analysis every 10 steps.
"""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import simulate
from solvers.grid import Grid
from solvers.observation import parse_sensors

FLOW = ["--set", "flow.n=32", "--set", "flow.dt=0.02", "--set", "flow.nu=1e-2", "--set", "record_every=10",
        "--t-end", "5", "--quiet"]
TWIN = ["--ensemble", "16", "--seed", "1", "--sensors", "regular:8x8", "--noise", "0.5", "--obs-every", "10"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("twin")
    truth = tmp / "truth.h5"
    assert simulate.main(FLOW + ["--no-figures", "--seed", "100", "--out", str(truth)]) == 0
    out = {"truth": truth}
    for name, options in (("none", []), ("enkf", ["radius=1.5", "inflation=1.5"]), ("letkf", ["inflation=1.5"])):
        out[name] = tmp / f"{name}.h5"
        sets = [a for o in options for a in ("--set", f"closure.options.{o}")]
        figures = [] if name == "letkf" else ["--no-figures"]
        assert simulate.main(FLOW + TWIN + sets + figures + ["--closure", name, "--observe", str(truth),
                                                           "--out", str(out[name])]) == 0, name
    return out


def _final_error(path) -> float:
    with h5py.File(path) as f:
        return float(f["metrics/ens_mean_rel_l2"][-1])


def test_assimilation_beats_the_free_ensemble(runs):
    free = _final_error(runs["none"])
    assert free > 0.7  # the free ensemble mean does not know the truth's phase
    for name in ("enkf", "letkf"):
        assert _final_error(runs[name]) < 0.4 * free, name
        with h5py.File(runs[name]) as f:
            a = {k: f["assimilation"][k][:] for k in f["assimilation"]}
        assert len(a["time"]) == 25  # t = 0, 0.2, ..., 4.8 (no call after the last step)
        assert (a["rmse_a"] < a["rmse_f"]).mean() > 0.75 and a["rmse_a"].mean() < a["rmse_f"].mean()  # analysis helps
        assert a["rmse_a"][-5:].mean() < 0.3 * a["rmse_f"][0]
        assert (a["spread_a"] > 0).all() and np.isfinite(a["seconds"]).all()
    assert runs["letkf"].with_name("letkf_assimilation.png").stat().st_size > 5_000


def test_sensor_data_is_the_same_for_every_method(runs):
    from solvers.twin import sensor_data

    grid = Grid(32, 2 * np.pi)
    a = sensor_data(str(runs["truth"]), grid, "random:50", 0.5, "additive", seed=3, tol=0.01)
    b = sensor_data(str(runs["truth"]), grid, "random:50", 0.5, "additive", seed=3, tol=0.01)
    oa, ob = a.at(1.0), b.at(1.0)
    assert torch.equal(oa.y, ob.y) and torch.equal(a.operator.positions, b.operator.positions)
    assert a.at(1.05) is None  # no truth frame there
    # the noise has the stated standard deviation: 26 frames x 50 sensors, within 4 standard errors
    errors = torch.cat([a.at(t).y - a.operator(a.at(t).truth[None])[0].double() for t in np.arange(0, 5.01, 0.2)])
    assert len(errors) == 1300
    assert errors.std().item() == pytest.approx(0.5, rel=4 / np.sqrt(2 * 1300))
    assert abs(errors.mean().item()) < 4 * 0.5 / np.sqrt(1300)
    c = sensor_data(str(runs["truth"]), grid, "random:50", 0.5, "additive", seed=4, tol=0.01)
    assert not torch.equal(c.at(1.0).y, oa.y)


def test_twin_experiment_input_errors(runs, tmp_path, capsys):
    base = FLOW + ["--no-figures", "--out", str(tmp_path / "x.h5")]
    assert simulate.main(base + ["--closure", "letkf", "--ensemble", "4"]) == 2
    assert "--observe TRUTH.h5" in capsys.readouterr().err
    assert simulate.main(base + ["--closure", "enkf", "--observe", str(runs["truth"])]) == 2
    assert "at least 2 members" in capsys.readouterr().err
    assert simulate.main(base + ["--closure", "enkf", "--ensemble", "4", "--observe", str(runs["truth"]),
                                 "--obs-every", "7"]) == 2
    assert "no frame at the assimilation times" in capsys.readouterr().err
    assert simulate.main(base + ["--closure", "enkf", "--ensemble", "4", "--observe", str(runs["truth"]),
                                 "--sensors", "ring:5"]) == 2
    assert "regular:NXxNY" in capsys.readouterr().err
    assert simulate.main(base + ["--closure", "enkf", "--ensemble", "4", "--observe", str(tmp_path / "no.h5")]) == 2
    assert "no.h5" in capsys.readouterr().err


def test_parse_sensors():
    grid = Grid(16, 1.0)
    assert parse_sensors("regular:4x2", grid).shape == (8, 2)
    on_grid = parse_sensors("grid:10", grid, seed=1)
    assert torch.allclose(on_grid / grid.dx, (on_grid / grid.dx).round()) and len(set(map(tuple, on_grid.tolist()))) == 10
    assert torch.equal(parse_sensors("random:7", grid, seed=2), parse_sensors("random:7", grid, seed=2))
    for bad in ("regular:4", "random:many", "hexagon:3", "layout.json"):
        with pytest.raises(ValueError, match="sensor layout|unsupported"):
            parse_sensors(bad, grid)
