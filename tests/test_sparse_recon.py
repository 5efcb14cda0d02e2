"""The Senseiver-style reconstruction model (latent/sparse_recon.py) and its plug-in ``sparse_recon``."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import train_closure
from closure import make_plugin
from closure.assimilation import Assimilation
from latent.checkpoint import load_checkpoint
from latent.models import build_model
from latent.sparse_recon import correlated_noise, fourier_features, grid_coordinates, shift_fields
from solvers import Grid, NavierStokes2D
from solvers.initial_conditions import band_limited
from solvers.observation import ObservationOperator, random_sensors, sample_fields
from solvers.pairs import read_pairs, write_pairs
from solvers.reconstruction import cubic_interpolate
from solvers.rollout import FlowState
from test_training import one_thread  # noqa: F401  (autouse fixture)

TINY = dict(latents=8, width=16, heads=2, blocks=1, frequencies=4)


def tiny_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return build_model("sparse_recon", **{**TINY, **kwargs}).double().eval()


def sensors(count, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, count, generator=g, dtype=torch.float64), torch.rand(count, 2, generator=g,
                                                                                  dtype=torch.float64)


def test_fourier_features_are_periodic_and_sampling_matches_the_operator():
    p = torch.rand(5, 2, dtype=torch.float64)
    assert torch.allclose(fourier_features(p, 1.0, 3), fourier_features(p + 1.0, 1.0, 3), atol=1e-12)
    grid = Grid(16, 2.0, dtype=torch.float64)
    w = band_limited(grid, 3, 1, 5, 1.0, generator=torch.Generator().manual_seed(1))
    positions = torch.rand(3, 7, 2, dtype=torch.float64) * 2.0  # a layout per sample
    per_sample = torch.stack([ObservationOperator(grid, positions[b])(w[b:b + 1])[0] for b in range(3)])
    assert torch.allclose(sample_fields(w, positions, 2.0), per_sample, atol=1e-12)


@torch.no_grad()
def test_output_does_not_depend_on_sensor_order_or_padding():
    model = tiny_model()
    values, positions = sensors(30)
    mean, std = model.reconstruct(values, positions, 16)
    order = torch.randperm(30)
    mean_p, std_p = model.reconstruct(values[:, order], positions[order], 16)
    assert torch.allclose(mean, mean_p, atol=1e-12) and torch.allclose(std, std_p, atol=1e-12)
    garbage = torch.cat([values, 1e3 * torch.ones(2, 5, dtype=torch.float64)], 1)  # padded sensors are ignored
    padded_pos = torch.cat([positions, torch.rand(5, 2, dtype=torch.float64)])
    pad = torch.arange(35)[None].expand(2, -1) >= 30
    assert torch.allclose(model.reconstruct(garbage, padded_pos, 16, pad)[0], mean, atol=1e-12)


@torch.no_grad()
@pytest.mark.parametrize("count", [1, 7, 200])
def test_any_sensor_count_works_without_retraining(count):
    mean, std = tiny_model().reconstruct(*sensors(count), 16)
    assert mean.shape == std.shape == (2, 16, 16)
    assert torch.isfinite(mean).all() and (std > 0).all()


def test_no_sensors_or_nan_readings_are_clear_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match="at least one sensor"):
        model.reconstruct(torch.zeros(1, 0, dtype=torch.float64), torch.zeros(0, 2, dtype=torch.float64), 16)
    values, positions = sensors(10)
    values[1, 3] = float("nan")
    with pytest.raises(ValueError, match="1 sensor reading.*NaN"):
        model.reconstruct(values, positions, 16)
    with pytest.raises(ValueError, match="do not match"):
        model.reconstruct(values, positions[:5], 16)


@torch.no_grad()
def test_decoder_on_the_grid_matches_and_off_the_grid_is_smooth():
    model = tiny_model(frequencies=6)
    values, positions = sensors(20)
    mean, std = model.reconstruct(values, positions, 16)
    fine = grid_coordinates(64, 1.0, values)  # 4x finer: every 4th point (in x and y) is a 16^2 grid point
    mean_f, std_f = model.query(values, positions, fine)
    mean_f = mean_f.reshape(2, 64, 64)
    assert torch.allclose(mean_f[:, ::4, ::4], mean, atol=1e-12) and torch.isfinite(mean_f).all()
    # smooth: the largest jump between neighbours halves when the spacing halves (Lipschitz, no kinks at scale)
    jump = [(mean_f[:, ::s].roll(-1, 1) - mean_f[:, ::s]).abs().max().item() for s in (2, 1)]
    assert 1.6 < jump[0] / jump[1] < 2.4


def test_correlated_noise_has_unit_variance_and_the_requested_correlation():
    white = torch.randn(400, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xi = correlated_noise(white, 1.0, 0.1)
    assert xi.var().item() == pytest.approx(1.0, rel=0.05)
    lag = 3 / 32  # Gaussian correlation exp(-r^2 / (2 scale^2)) at r = 3 dx
    corr = (xi * xi.roll(3, -1)).mean().item()
    assert corr == pytest.approx(math.exp(-lag**2 / (2 * 0.1**2)), abs=0.05)


def test_shift_augmentation_respects_the_flow_symmetry():
    i = torch.arange(16, dtype=torch.float64)
    diagonal = torch.sin(2 * math.pi * (i[:, None] + i[None, :]) / 16).expand(8, -1, -1)  # E1 forcing: f(x + y)
    kolmogorov = torch.cos(4 * 2 * math.pi * i / 16)[None, :].expand(16, -1).expand(8, -1, -1)  # f(y)
    assert torch.allclose(shift_fields(diagonal, "diagonal"), diagonal)
    assert torch.allclose(shift_fields(kolmogorov, "x"), kolmogorov)
    w = torch.randn(8, 16, 16, dtype=torch.float64)
    moved = shift_fields(w, "xy")
    assert torch.equal(moved.flatten(1).sort(1).values, w.flatten(1).sort(1).values) and not torch.equal(moved, w)
    assert shift_fields(w, "none") is w
    with pytest.raises(ValueError, match="unknown shifts"):
        build_model("sparse_recon", shifts="rotate")


def _family_pairs(path, n=32, traj=40, times=25):
    """Fields in a 4-dimensional family (random combinations of 4 fixed |k| <= 3 fields): learnable quickly."""
    grid = Grid(n, 2 * math.pi, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    basis = band_limited(grid, 4, 1, 3, 1.0, generator=g)
    w = torch.einsum("bj,jxy->bxy", torch.randn(traj * times, 4, generator=g, dtype=torch.float64), basis)
    attrs = {"kind": "e1", "grid_n": n, "grid_length": grid.length, "dt": 0.01, "config": ""}
    w = w.reshape(traj, times, n, n).numpy()
    return grid, write_pairs(path, w, w, np.arange(times) * 0.1, np.array([0] * (traj - 2) + [1, 2]), attrs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for 20 epochs (~25 s) with the shared pipeline (train_closure.py train)."""
    root = tmp_path_factory.mktemp("sparse_recon")
    grid, data = _family_pairs(root / "pairs.h5")
    kwargs = "{latents: 16, width: 32, heads: 2, blocks: 1, frequencies: 4, min_sensors: 8, max_sensors: 24, " \
             "noise: 0.0, queries: 128}"
    with torch.random.fork_rng():
        code = train_closure.main(["train", "--closure", "sparse_recon", "--data", str(data), "--out",
                                   str(root / "run"), "--quiet", "--epochs", "20", "--set", f"model.kwargs={kwargs}",
                                   "--set", "batch_size=32", "--set", "optimizer.lr=2e-3", "--set", "schedule.kind=none"])
    assert code == 0
    return grid, data, root / "run" / "best.pt"


@pytest.mark.parametrize("count", [12, 24])
def test_briefly_trained_model_beats_cubic_interpolation_on_held_out_fields(trained, count):
    grid, data, path = trained
    ckpt = load_checkpoint(path)
    model, norm = ckpt.build_model("cpu", torch.float64).eval(), ckpt.normalization
    g = torch.Generator().manual_seed(1)
    ours, cubic = [], []
    for w in read_pairs(data, "test").state.double()[::4]:  # held out: the test trajectory
        positions = random_sensors(count, grid.length, g)
        y = ObservationOperator(grid, positions)(w[None])
        with torch.no_grad():
            mean = model.reconstruct(norm.state(y), positions / grid.length, grid.n)[0]
        ours.append(float((mean[0] * norm.state_std + norm.state_mean - w).norm() / w.norm()))
        cubic.append(float((cubic_interpolate(y, positions, grid)[0] - w).norm() / w.norm()))
    assert np.mean(ours) < 0.7 and np.mean(ours) < 0.8 * np.mean(cubic)


def test_plugin_replaces_samples_and_checks_its_inputs(trained, tmp_path):
    grid, data, path = trained
    eq = NavierStokes2D(grid, nu=1e-2)
    truth = read_pairs(data, "test").state.double()[:3]
    obs = Assimilation.example_observations(tmp_path / "truth.h5", grid, truth, [0.0, 0.1, 0.2], "random:24", 1e-6)
    start = torch.zeros(4, grid.n, grid.n, dtype=torch.float64)

    def call(plugin, t):
        return plugin(FlowState(w=start, t=t, step=0, dt=0.01, grid=grid, equation=eq,
                                generator=torch.Generator().manual_seed(0)))

    mean_plugin = make_plugin("sparse_recon", grid, eq, observations=obs, checkpoint=str(path))
    out = call(mean_plugin, 0.1)
    assert torch.allclose(out, out[:1].expand_as(out))  # every member to the mean
    assert mean_plugin.history["rel_rmse_a"][-1] < 0.85 < mean_plugin.history["rel_rmse_f"][-1]  # 20 epochs: ~0.8
    first = make_plugin("sparse_recon", grid, eq, observations=obs, checkpoint=str(path), ensemble="first")
    drawn = call(first, 0.0)
    assert (drawn[0] - drawn[1]).abs().max() > 1e-3 and first.history["spread_a"][-1] > 0  # an ensemble from std
    assert torch.allclose(call(first, 0.1), out)  # then the mean
    with pytest.raises(ValueError, match="ensemble mode"):
        make_plugin("sparse_recon", grid, eq, observations=obs, checkpoint=str(path), ensemble="all")
    with pytest.raises(ValueError, match="needs a trained model"):
        make_plugin("sparse_recon", grid, eq, observations=obs)
    with pytest.raises(ValueError, match="grid"):
        make_plugin("sparse_recon", Grid(16, 2 * math.pi, dtype=torch.float64), eq, observations=obs,
                    checkpoint=str(path))


def test_shipped_model_matches_its_manifest_and_beats_cubic_on_a_held_out_state():
    """The shipped E1 model on the shipped held-out truth (test trajectory, t = 30), 41 sensors (1 %)."""
    import hashlib
    import json

    from closure.learned import SHIPPED

    manifest = json.loads((SHIPPED / "sparse_recon_e1_small.json").read_text())
    path = SHIPPED / manifest["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest["file_sha256"]
    ckpt = load_checkpoint(path)
    assert ckpt.closure == "sparse_recon" and path.stat().st_size < 3e6  # 0.64 MB of weights + 1.6 MB prior basis
    model, norm = ckpt.build_model("cpu", torch.float32).eval(), ckpt.normalization
    w = torch.from_numpy(np.load(SHIPPED / "e1_small_t30.npy")).double()
    grid = Grid(64, 1.0, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    ours, cubic = [], []
    for _ in range(4):
        positions = random_sensors(41, 1.0, g)
        y = ObservationOperator(grid, positions)(w[None])
        with torch.no_grad():
            mean = model.reconstruct(norm.state(y).float(), positions.float(), 64)[0].double()
        ours.append(float((mean[0] * norm.state_std + norm.state_mean - w).norm() / w.norm()))
        cubic.append(float((cubic_interpolate(y, positions, grid)[0] - w).norm() / w.norm()))
    assert np.mean(ours) < 0.5 * np.mean(cubic) and np.mean(ours) < 0.10  # the goal at 1 %


def _prior_model(grid, seed=0):
    """A tiny model with a 6-mode POD prior fitted to band-limited snapshots (and x-shifted copies)."""
    snaps = band_limited(grid, 40, 1, 3, 1.0, generator=torch.Generator().manual_seed(seed))
    model = tiny_model(prior_modes=6, prior_noise=0.1, prior_copies=2, n=grid.n, shifts="x")
    model.fit_data(snaps, snaps)
    return model, snaps


@torch.no_grad()
def test_untrained_prior_model_is_the_gaussian_posterior_of_gappy_pod_on_and_off_the_grid():
    from latent.pod import fit_pod, gappy_reconstruct, posterior_ridge
    from solvers.symmetry import augment_shifts

    grid = Grid(16, 1.0, dtype=torch.float64)
    model, snaps = _prior_model(grid)
    basis = fit_pod(augment_shifts(snaps, "x", 2), 6)
    op = ObservationOperator(grid, random_sensors(20, 1.0, torch.Generator().manual_seed(4)))
    truth = band_limited(grid, 2, 1, 3, 1.0, generator=torch.Generator().manual_seed(9))
    y = op(truth)
    expect = gappy_reconstruct(basis, y, op.matrix(), posterior_ridge(basis, 0.1 ** 2))
    mean, std = model.reconstruct(y, op.positions, 16)
    torch.testing.assert_close(mean, expect, rtol=1e-8, atol=1e-8)  # the correction starts at zero
    off = torch.rand(9, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(model.query(y, op.positions, off)[0], sample_fields(expect, off, 1.0),
                               rtol=1e-8, atol=1e-8)
    told = gappy_reconstruct(basis, y, op.matrix(), posterior_ridge(basis, 0.5))  # another noise level
    torch.testing.assert_close(model.reconstruct(y, op.positions, 16, noise_var=0.5)[0], told, rtol=1e-8, atol=1e-8)
    order = torch.randperm(20, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(model.reconstruct(y[:, order], op.positions[order], 16)[0], mean)
    with pytest.raises(ValueError, match="NaN"):
        model.reconstruct(torch.full_like(y, math.nan), op.positions, 16)


def test_prior_is_fitted_by_the_pipeline_and_travels_in_the_checkpoint(tmp_path):
    grid, data = _family_pairs(tmp_path / "pairs.h5", traj=6, times=10)
    kwargs = "{latents: 4, width: 8, heads: 2, blocks: 1, frequencies: 2, prior_modes: 4, n: 32, max_sensors: 24}"
    with torch.random.fork_rng():
        code = train_closure.main(["train", "--closure", "sparse_recon", "--data", str(data), "--out",
                                   str(tmp_path / "run"), "--quiet", "--epochs", "1", "--set", f"model.kwargs={kwargs}"])
    assert code == 0
    model = load_checkpoint(tmp_path / "run" / "best.pt").build_model("cpu", torch.float64)
    assert model.prior_basis.abs().sum() > 0 and (model.prior_energy > 0).all()
    basis = model.prior_basis.reshape(4, -1)
    torch.testing.assert_close(basis @ basis.T, torch.eye(4, dtype=torch.float64), atol=1e-5, rtol=0)


@torch.no_grad()
def test_plugin_tells_the_prior_the_observations_noise(tmp_path):
    """The sparse_recon plug-in with a POD prior reconstructs with the sensors' own noise variance."""
    grid = Grid(16, 1.0, dtype=torch.float64)
    model, snaps = _prior_model(grid)
    from latent.checkpoint import save_checkpoint
    from latent.models import Normalization

    path = save_checkpoint(tmp_path / "m.pt", model=model, closure="sparse_recon", grid={"n": 16, "length": 1.0},
                           flow={"name": "example", "nu": 1e-2, "drag": 0.0},
                           normalization=Normalization(0.0, 2.0, 0.0, 1.0), config="# test\n")
    eq = NavierStokes2D(grid, nu=1e-2)
    truth = snaps[:2]
    obs = Assimilation.example_observations(tmp_path / "truth.h5", grid, truth, [0.0, 0.1], "random:20", 0.3)
    plugin = make_plugin("sparse_recon", grid, eq, observations=obs, checkpoint=str(path))
    out = plugin(FlowState(w=torch.zeros(1, 16, 16, dtype=torch.float64), t=0.1, step=0, dt=0.01, grid=grid,
                           equation=eq, generator=torch.Generator().manual_seed(0)))
    o = obs.at(0.1)
    positions = (obs.operator.positions / grid.length).float()
    m32 = load_checkpoint(path).build_model("cpu", torch.float32).eval()
    told = m32.reconstruct((o.y[None] / 2).float(), positions, 16, noise_var=float(o.r.mean()) / 4)[0] * 2
    default = m32.reconstruct((o.y[None] / 2).float(), positions, 16)[0] * 2
    torch.testing.assert_close(out, told.double(), rtol=1e-5, atol=1e-5)
    assert (told - default).abs().max() > 1e-3  # the noise level matters
