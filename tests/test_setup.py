import math

import numpy as np
import pytest
import torch

from solvers.config import load_config
from solvers.diagnostics import max_velocity
from solvers.setup import Reference, build_flow, run_length

KOLMOGOROV = ["flow.n=32", "flow.length=2pi", "flow.drag=0.1", "flow.forcing={kind: kolmogorov, params: {k_f: 4}}",
              "flow.init={kind: band_limited, params: {k_max: 4, max_velocity: 1.0}}"]


def test_build_flow_shapes_and_independent_members():
    cfg = load_config(None, KOLMOGOROV + ["flow.dt=0.01", "flow.noise={sigma: 1e-3}"])
    flow = build_flow(cfg.flow, ensemble=3, dtype="float64", seed=1)
    assert flow.w0.shape == (3, 32, 32) and flow.w0.dtype == torch.float64
    assert flow.dt == 0.01 and flow.t0 == 0.0 and flow.noise is not None
    assert not torch.allclose(flow.w0[0], flow.w0[1])
    again = build_flow(cfg.flow, ensemble=3, dtype="float64", seed=1)
    assert torch.equal(flow.w0, again.w0)


def test_cfl_time_step_uses_the_larger_velocity_and_aligns():
    cfg = load_config(None, KOLMOGOROV + ["flow.cfl=0.5"])
    flow = build_flow(cfg.flow, dtype="float64")
    dx = 2 * math.pi / 32
    assert flow.dt == pytest.approx(0.5 * dx / float(max_velocity(flow.w0, flow.grid).max()))
    bounded = build_flow(load_config(None, KOLMOGOROV + ["flow.max_velocity=7"]).flow, dtype="float64", align=0.1)
    steps = 0.1 / bounded.dt
    assert bounded.dt <= 0.5 * dx / 7 and steps == pytest.approx(round(steps), abs=1e-9)


def test_file_init_broadcasts_one_member(tmp_path):
    path = tmp_path / "w.npy"
    np.save(path, np.random.default_rng(0).standard_normal((32, 32)))
    cfg = load_config(None, KOLMOGOROV + ["flow.dt=0.01", f"flow.init={{kind: file, params: {{path: {path}}}}}"])
    flow = build_flow(cfg.flow, ensemble=4, dtype="float64")
    assert flow.w0.shape == (4, 32, 32) and torch.equal(flow.w0[0], flow.w0[3])
    with pytest.raises(ValueError, match="holds 4 members but the ensemble has 3"):
        np.save(path, np.zeros((4, 32, 32)))
        build_flow(cfg.flow, ensemble=3)


@pytest.mark.parametrize("items,expected", [(["steps=10"], (10, 10)), (["steps=10", "record_every=3"], (10, 3)),
                                            (["t_end=1.0", "record_dt=0.25"], (100, 25))])
def test_run_length(items, expected):
    assert run_length(load_config(None, items), dt=0.01, t0=0.0) == expected


def test_run_length_errors():
    with pytest.raises(ValueError, match="not after the start time"):
        run_length(load_config(None, ["t_end=1.0"]), dt=0.01, t0=2.0)
    with pytest.raises(ValueError, match="run length is not set"):
        run_length(load_config(None), dt=0.01, t0=0.0)


def test_reference_rejects_coarser_grid(tmp_path):
    from solvers.io import TrajectoryWriter

    with TrajectoryWriter(tmp_path / "ref.h5", 1, 16, {"grid_length": 1.0}) as writer:
        writer.append(0.0, np.zeros((1, 16, 16)))
    flow = build_flow(load_config(None, ["flow.n=32", "flow.dt=0.01"]).flow)
    with pytest.raises(ValueError, match="coarser than the run's 32"):
        Reference(tmp_path / "ref.h5", flow.grid, 1, 0.005)


def test_reference_subsampling_for_e1(tmp_path):
    """E1 compares with the DNS by stride subsampling (no filter): a 64^2 reference of a rough field
    seen by a 32^2 run equals its every-other point exactly."""
    import numpy as np
    from solvers.grid import Grid
    from solvers.setup import Reference
    import h5py

    fine = np.random.default_rng(0).standard_normal((1, 2, 64, 64)).astype(np.float32)
    path = tmp_path / "ref.h5"
    with h5py.File(path, "w") as f:
        f["vorticity"] = fine
        f["time"] = np.array([0.0, 0.1])
        f.attrs["grid_length"] = 1.0
    grid = Grid(32, 1.0, dtype=torch.float32)
    sub = Reference(path, grid, 1, 0.01, method="subsample").truth(0.1)
    assert np.array_equal(sub.numpy(), fine[:, 1, ::2, ::2])
    filtered = Reference(path, grid, 1, 0.01, method="gaussian").truth(0.1)
    assert not np.allclose(filtered.numpy(), sub.numpy())
    with pytest.raises(ValueError, match="cannot be subsampled"):
        Reference(path, Grid(24, 1.0), 1, 0.01, method="subsample").truth(0.1)
