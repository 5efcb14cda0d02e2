"""The reconstruction plug-ins (``interp``, ``gappy_pod``) on sensor data of a known truth."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from closure import make_plugin
from closure.assimilation import Assimilation
from latent import pod
from solvers import Grid, NavierStokes2D
from solvers.initial_conditions import band_limited
from solvers.observation import load_sensors
from solvers.rollout import FlowState


def _setup(tmp_path, frames=6, sensors="random:120", noise=1e-9):
    grid = Grid(32, 2 * math.pi, dtype=torch.float64)
    eq = NavierStokes2D(grid, nu=1e-2)
    truth = band_limited(grid, frames, 1, 3, 2.0, generator=torch.Generator().manual_seed(0))  # |k| <= 3
    times = [0.1 * i for i in range(frames)]
    obs = Assimilation.example_observations(tmp_path / "truth.h5", grid, truth, times, sensors, noise)
    return grid, eq, truth, times, obs


def _call(plugin, grid, eq, w, t):
    return plugin(FlowState(w=w, t=t, step=0, dt=0.01, grid=grid, equation=eq))


def test_interp_fourier_and_gappy_pod_recover_fields_in_their_span(tmp_path):
    grid, eq, truth, times, obs = _setup(tmp_path)
    start = torch.zeros(2, 32, 32, dtype=torch.float64)
    fourier = make_plugin("interp", grid, eq, observations=obs, method="fourier", modes=3)
    out = _call(fourier, grid, eq, start, times[2])
    assert torch.allclose(out, truth[2].expand(2, -1, -1), atol=1e-6)  # band-limited to |k| <= 3: exact
    assert fourier.history["rel_rmse_a"][-1] < 1e-6 and fourier.history["rel_rmse_f"][-1] == pytest.approx(1.0)
    gappy = make_plugin("gappy_pod", grid, eq, observations=obs, basis=str(tmp_path / "truth.h5"), modes=6, ridge=0)
    out = _call(gappy, grid, eq, start, times[4])
    assert torch.allclose(out, truth[4].expand(2, -1, -1), atol=1e-6)  # in the span of the 6 snapshots
    cubic = make_plugin("interp", grid, eq, observations=obs)  # smooth field, 120 random sensors: ~12 % error
    out = _call(cubic, grid, eq, start, times[1])
    assert (out[0] - truth[1]).norm() / truth[1].norm() < 0.2


def test_nudge_moves_part_of_the_way_and_other_times_are_left_alone(tmp_path):
    grid, eq, truth, times, obs = _setup(tmp_path)
    start = torch.ones(1, 32, 32, dtype=torch.float64)
    half = make_plugin("interp", grid, eq, observations=obs, method="fourier", modes=3, nudge=0.5)
    out = _call(half, grid, eq, start, times[3])
    assert torch.allclose(out, 0.5 * (start + truth[3]), atol=1e-6)
    assert _call(half, grid, eq, start, 0.05) is None  # no observation at t = 0.05


def test_reconstruction_input_errors(tmp_path):
    grid, eq, truth, times, obs = _setup(tmp_path)
    with pytest.raises(ValueError, match="basis=TRAJECTORY.h5"):
        make_plugin("gappy_pod", grid, eq, observations=obs)
    with pytest.raises(ValueError, match="nudge"):
        make_plugin("interp", grid, eq, observations=obs, nudge=0)
    with pytest.raises(ValueError, match="--observe TRUTH.h5"):
        make_plugin("interp", grid, eq)
    other = Grid(16, 2 * math.pi, dtype=torch.float64)
    with pytest.raises(ValueError, match="16\\^2"):
        pod.load_snapshots(tmp_path / "truth.h5", other)


def test_qr_placement_cli_writes_a_sensor_file(tmp_path, capsys):
    grid, eq, truth, times, obs = _setup(tmp_path)
    out = tmp_path / "sensors.csv"
    assert pod.main(["--data", str(tmp_path / "truth.h5"), "--modes", "6", "--count", "12", "--out", str(out)]) == 0
    positions = load_sensors(out, grid.length)
    assert positions.shape == (12, 2) and torch.allclose(positions / grid.dx, (positions / grid.dx).round())
    assert pod.main(["--data", str(tmp_path / "none.h5"), "--count", "3", "--out", str(out)]) == 2
    assert "none.h5" in capsys.readouterr().err


def test_letkf_nudge_is_a_fraction_of_the_analysis_increment(tmp_path):
    grid, eq, truth, times, obs = _setup(tmp_path, sensors="regular:6x6", noise=0.1)
    ens = band_limited(grid, 6, 1, 3, 2.0, generator=torch.Generator().manual_seed(5))
    full = _call(make_plugin("letkf", grid, eq, observations=obs), grid, eq, ens, times[1])
    third = _call(make_plugin("letkf", grid, eq, observations=obs, nudge=1 / 3), grid, eq, ens, times[1])
    assert torch.allclose(third, ens + (full - ens) / 3, atol=1e-10)
    with pytest.raises(ValueError, match="nudge"):
        make_plugin("enkf", grid, eq, observations=obs, nudge=1.5)


def test_gappy_pod_posterior_ridge_uses_the_observations_noise(tmp_path):
    from latent.pod import fit_pod, gappy_reconstruct, load_snapshots, posterior_ridge

    grid, eq, truth, times, obs = _setup(tmp_path, sensors="random:20", noise=0.3)
    plugin = make_plugin("gappy_pod", grid, eq, observations=obs, basis=str(tmp_path / "truth.h5"), modes=4,
                         ridge="posterior")
    out = _call(plugin, grid, eq, torch.zeros(1, 32, 32, dtype=torch.float64), times[2])
    basis = fit_pod(load_snapshots(str(tmp_path / "truth.h5"), grid), 4)
    o = obs.at(times[2])
    expect = gappy_reconstruct(basis, o.y[None].double(), obs.operator.matrix().double(),
                               posterior_ridge(basis, float(o.r.mean())))
    assert float(o.r.mean()) > 0 and basis.tail > 0
    torch.testing.assert_close(out, expect)
    with pytest.raises(ValueError, match="'posterior'"):
        make_plugin("gappy_pod", grid, eq, observations=obs, basis=str(tmp_path / "truth.h5"), ridge="auto")


def test_gappy_pod_shifted_snapshots_recover_a_shifted_field_the_plain_basis_misses(tmp_path):
    """One snapshot and its x-shifts: the plain 1-mode basis cannot hold a shifted copy, the augmented one can."""
    grid = Grid(32, 2 * math.pi, dtype=torch.float64)
    eq = NavierStokes2D(grid, nu=1e-2)
    w = band_limited(grid, 1, 1, 2, 1.0, generator=torch.Generator().manual_seed(0))
    truth = torch.cat([w, w.roll(5, -2)])  # the second frame: the first moved along x
    obs = Assimilation.example_observations(tmp_path / "truth.h5", grid, truth, [0.0, 0.1], "random:60", 1e-9)
    from solvers.io import TrajectoryWriter

    with TrajectoryWriter(tmp_path / "basis.h5", 1, grid.n, {"grid_length": grid.length, "grid_n": grid.n}) as out:
        out.append(0.0, w.numpy())
    plain = make_plugin("gappy_pod", grid, eq, observations=obs, basis=str(tmp_path / "basis.h5"), modes=1, ridge=0)
    shifted = make_plugin("gappy_pod", grid, eq, observations=obs, basis=str(tmp_path / "basis.h5"), ridge=0,
                          modes=16, shifts="x", copies=64)
    start = torch.zeros(1, 32, 32, dtype=torch.float64)
    err = [float((_call(p, grid, eq, start, 0.1)[0] - truth[1]).norm() / truth[1].norm()) for p in (plain, shifted)]
    assert err[0] > 0.5 and err[1] < 1e-6


def _shell_fields(grid, count, shells, seed):
    """``count`` random fields ``(count, x, y)`` of the Fourier modes with ``|k|^2`` in ``shells``."""
    x, y = grid.coordinates()
    waves = [(kx, ky) for kx in range(-3, 4) for ky in range(0, 4) if kx * kx + ky * ky in shells and (ky > 0 or kx > 0)]
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(count, len(waves), 2, generator=g, dtype=torch.float64)
    return sum(a[:, i, 0, None, None] * torch.cos(kx * x + ky * y) + a[:, i, 1, None, None] * torch.sin(kx * x + ky * y)
               for i, (kx, ky) in enumerate(waves)) / math.sqrt(len(waves))


def test_gappy_pod_about_the_forecast_averages_noisy_sensors_over_time_in_closed_loop(tmp_path):
    """A steady Euler flow (one shell, ``w = 5 psi``) seen by noisy sensors: cycled with the solver
    (``background: forecast``) the forecast carries the earlier readings and the error falls over the frames: with a
    fixed ``forecast_error`` to a floor it sets (a constant gain), with ``auto`` (estimated from the innovations)
    further; the snapshot reconstruction (``background: mean``) stays as noisy as one frame's readings."""
    from solvers.io import TrajectoryWriter
    from solvers.rollout import rollout

    grid = Grid(32, 2 * math.pi, dtype=torch.float64)
    eq = NavierStokes2D(grid, nu=0.0)
    truth = _shell_fields(grid, 1, {5}, seed=0)  # steady: the convection of a single shell vanishes
    dt, every, frames = 0.01, 1, 40
    assert torch.allclose(rollout(truth, eq, dt, 10).w, truth, atol=1e-10)
    with TrajectoryWriter(tmp_path / "basis.h5", 1, grid.n, {"grid_length": grid.length, "grid_n": grid.n}) as out:
        for i, w in enumerate(_shell_fields(grid, 300, {1, 2, 4, 5}, seed=1)):  # the prior: 20 directions
            out.append(float(i), w[None].numpy())
    times = [i * every * dt for i in range(frames)]
    obs = Assimilation.example_observations(tmp_path / "truth.h5", grid, truth.expand(frames, -1, -1), times,
                                            "random:30", 0.5)
    errors, described = {}, {}
    for name, background, forecast_error in (("mean", "mean", "auto"), ("fixed", "forecast", 0.1),
                                             ("auto", "forecast", "auto")):
        plugin = make_plugin("gappy_pod", grid, eq, observations=obs, basis=str(tmp_path / "basis.h5"), modes=20,
                             ridge="posterior", background=background, forecast_error=forecast_error)
        rollout(plugin.basis.mean.reshape(1, 32, 32).clone(), eq, dt, every * (frames - 1), plugin=plugin, every=every)
        errors[name], described[name] = np.asarray(plugin.history["rel_rmse_a"]), plugin.describe()
    assert len(errors["mean"]) == frames - 1  # the plug-in runs before each step: not at the last frame
    assert errors["fixed"][0] == pytest.approx(errors["mean"][0])  # the first estimate: from the sensors alone
    late = slice(frames // 2, None)
    mean, fixed, auto = (errors[k][late].mean() for k in ("mean", "fixed", "auto"))
    assert fixed < 0.6 * mean and auto < 0.9 * fixed  # measured 0.39, 0.155, 0.127
    assert "background forecast (forecast_error 0.1)" in described["fixed"]
    assert "background forecast (forecast_error auto)" in described["auto"]
    with pytest.raises(ValueError, match="background"):
        make_plugin("gappy_pod", grid, eq, observations=obs, basis=str(tmp_path / "basis.h5"), background="truth")
    with pytest.raises(ValueError, match="forecast_error"):
        make_plugin("gappy_pod", grid, eq, observations=obs, basis=str(tmp_path / "basis.h5"), forecast_error=0)
    with pytest.raises(ValueError, match="forecast_error"):
        make_plugin("gappy_pod", grid, eq, observations=obs, basis=str(tmp_path / "basis.h5"), forecast_error="adaptive")
