"""Sharding over torchrun ranks: one file, equal to the single-process one for the same seed.

The distributed tests spawn ``python -m torch.distributed.run --standalone --nproc-per-node 2`` (gloo
on CPU) on 32^2 grids. Every process, the single-process reference included, runs with one thread and
torch's FFT: CPU FFT libraries round differently with other thread counts, and FFTW_MEASURE plans can
differ between processes.
"""
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from solvers.config import load_config
from solvers.io import read_trajectory
from solvers.setup import build_flow

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NS_FFT_BACKEND": "torch", "MPLBACKEND": "Agg"}


def launch(*argv: str, ranks: int = 1, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python argv`` (ranks = 1) or ``torchrun --nproc-per-node ranks argv``, from the repository root."""
    runner = [] if ranks == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    return subprocess.run([sys.executable, *runner, *argv], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def datasets(path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.update({name: obj[()]}) if isinstance(obj, h5py.Dataset) else None)
        out["attrs"] = {k: v for k, v in f.attrs.items() if k != "config"}  # config holds the out path
    return out


def test_build_flow_members_are_rows_of_the_whole_ensemble():
    cfg = load_config(None, ["flow.n=32", "flow.noise={sigma: 1e-3}", "flow.max_velocity=2"])
    whole = build_flow(cfg.flow, ensemble=4, dtype="float64", seed=3, align=0.1)
    part = build_flow(cfg.flow, ensemble=4, dtype="float64", seed=3, align=0.1, members=range(1, 3))
    assert torch.equal(part.w0, whole.w0[1:3]) and part.dt == whole.dt and part.members == range(1, 3)
    assert part.generator.members == (1, 2)
    noise = torch.equal(whole.noise.increment(4, 0.01, whole.generator)[1:3], part.noise.increment(2, 0.01, part.generator))
    assert noise
    with pytest.raises(ValueError, match="at least as many members as processes"):
        build_flow(cfg.flow, ensemble=2, members=range(2, 2))


@pytest.mark.distributed
def test_generate_on_two_ranks_writes_the_single_process_file(tmp_path):
    from test_datagen import E1

    cfg = E1 | {"trajectories": 5, "splits": {"train": 3, "val": 1, "test": 1}}  # blocks 2 + 2 + 1: uneven ranks
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(cfg))
    runs = {name: launch("train_closure.py", "generate", "--config", str(path), "--out", str(tmp_path / f"{name}.h5"),
                         "--quiet", ranks=ranks) for name, ranks in (("one", 1), ("two", 2))}
    for run in runs.values():
        assert run.returncode == 0, run.stderr[-2000:]
    one, two = datasets(tmp_path / "one.h5"), datasets(tmp_path / "two.h5")
    assert one["attrs"] == two["attrs"] and one.keys() == two.keys()
    for key in one:
        if key != "attrs":
            assert np.array_equal(one[key], two[key]), key
    assert one["done"].all() and not (tmp_path / "two.h5.partial").exists()


SIMULATE = ["simulate.py", "--set", "flow.n=32", "--set", "flow.dt=0.01", "--set", "record_every=2",
            "--set", "flow.noise.sigma=0.01", "--device", "cpu", "--dtype", "float64", "--no-figures", "--quiet"]


@pytest.mark.distributed
def test_simulate_ensemble_on_two_ranks_matches_one_process(tmp_path):
    """Ranks simulate blocks of 2 and 1 members, one process all 3: equal to FFT round-off."""
    for name, ranks in (("one", 1), ("two", 2)):
        run = launch(*SIMULATE, "--steps", "6", "--ensemble", "3", "--out", str(tmp_path / f"{name}.h5"), ranks=ranks)
        assert run.returncode == 0, run.stderr[-2000:]
    one, two = read_trajectory(tmp_path / "one.h5"), read_trajectory(tmp_path / "two.h5")
    assert two.vorticity.shape == (3, 4, 32, 32) and np.allclose(two.time, one.time)
    np.testing.assert_allclose(two.vorticity, one.vorticity, rtol=1e-6, atol=1e-6 * np.abs(one.vorticity).max())
    np.testing.assert_allclose(two.diagnostics["energy"], one.diagnostics["energy"], rtol=1e-6)
    assert not np.allclose(two.vorticity[0], two.vorticity[2])  # independent members
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.h5", "one.yaml", "two.h5", "two.yaml"]


@pytest.mark.distributed
def test_blow_up_on_one_rank_stops_every_rank(tmp_path):
    w = np.zeros((2, 32, 32))
    w[1] = 50 * np.random.default_rng(0).standard_normal((32, 32))  # only rank 1's member blows up
    np.save(tmp_path / "w.npy", w)
    run = launch(*SIMULATE, "--steps", "20", "--ensemble", "2", "--init", str(tmp_path / "w.npy"),
                 "--set", "flow.dt=0.05", "--out", str(tmp_path / "out.h5"), ranks=2, timeout=90)
    assert run.returncode != 0 and "blew up" in run.stderr
    traj = read_trajectory(tmp_path / "out.h5")
    assert traj.attrs["status"] == "blew_up" and "rank 1" in traj.attrs["status_message"]
    assert np.array_equal(traj.vorticity[0, -1], np.zeros((32, 32), np.float32))
