"""The ``vq_forecast`` model (VQ autoencoder, sparse code encoder, block-causal forecaster) and plug-in."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

import train_closure
from closure import make_plugin
from closure.assimilation import Assimilation
from latent.checkpoint import load_checkpoint
from latent.models import build_model
from latent.vq_forecast import VectorQuantizer, block_causal_mask
from solvers import Grid, NavierStokes2D
from solvers.initial_conditions import band_limited
from solvers.pairs import write_pairs
from solvers.rollout import FlowState
from test_training import one_thread  # noqa: F401  (autouse fixture)

TINY = dict(n=32, length=2 * math.pi, frame_dt=0.1, tokens=4, codes=16, dim=4, width=4, sensor_width=16,
            sensor_blocks=1, frequencies=4, min_sensors=8, max_sensors=32, context=3, forecast_width=16,
            forecast_layers=1, heads=2, windows=2)


def tiny_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return build_model("vq_forecast", **{**TINY, **kwargs})


def test_quantizer_picks_the_nearest_code_passes_gradients_straight_through_and_follows_its_vectors():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 3, decay=0.0).train()
    old = torch.randn(8, 3)
    vq.codebook.copy_(old)
    vq.initialized.fill_(1)
    z = torch.randn(5, 7, 3, requires_grad=True)
    q, index, commit = vq(z)  # one EMA step with decay 0
    assert index.shape == (5, 7) and q.shape == z.shape
    flat = z.detach().reshape(-1, 3)
    assigned = torch.cdist(flat, old).argmin(1)
    torch.testing.assert_close(index.reshape(-1), assigned)
    for code in range(8):  # decay 0: a used code moves to the mean of its vectors (Laplace smoothing ~1e-5)
        if (assigned == code).any():
            torch.testing.assert_close(vq.codebook[code], flat[assigned == code].mean(0), rtol=1e-3, atol=1e-3)
        else:  # an unused one restarts at one of the vectors
            assert (flat - vq.codebook[code]).norm(dim=1).min() < 1e-6
    vq.eval()
    q, index, commit = vq(z)
    torch.testing.assert_close(index.reshape(-1), torch.cdist(flat, vq.codebook).argmin(1))
    torch.testing.assert_close(q.detach(), vq.codebook[index])
    (q * torch.arange(3.0)).sum().backward()
    torch.testing.assert_close(z.grad, torch.arange(3.0).expand(5, 7, 3))  # straight through: dq/dz = I
    assert commit.item() == pytest.approx(float((z.detach() - q.detach()).pow(2).mean()), rel=1e-5)


def test_unused_codes_restart_at_data_vectors():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, decay=0.5, restart=0.1).train()
    vq(torch.randn(64, 2))
    vq.codebook[3] = 1e3  # far away: never chosen, its count decays below `restart` and it restarts
    vq.sums[3] = 1e3
    data = torch.randn(64, 2)
    for _ in range(6):
        vq(data)
    assert vq.codebook[3].abs().max() < 10


def test_block_causal_forecaster_reads_only_past_frames():
    mask = block_causal_mask(3, 2)
    assert mask.tolist()[2] == [False, False, False, False, True, True]  # frame 1 sees frames 0 and 1
    model = tiny_model().eval()
    codes = torch.randint(16, (2, 3, 16))
    later = codes.clone()
    later[:, 2] = (later[:, 2] + 1) % 16
    with torch.no_grad():
        a, b = model.forecaster(codes), model.forecaster(later)
    torch.testing.assert_close(a[:, :2], b[:, :2])  # frames 0, 1 do not see frame 2
    assert (a[:, 2] - b[:, 2]).abs().max() > 1e-4


def test_forecast_slides_its_window_and_starts_from_one_frame():
    model = tiny_model().eval()
    start = torch.randint(16, (2, 4, 4))
    with torch.no_grad():
        out = model.forecast(start, 5)
        again = model.step(torch.cat([start[:, None], out[:, :2]], 1))  # frame 3 from frames 0..2
        assert out.shape == (2, 5, 4, 4) and torch.equal(again, out[:, 2])
        assert model.fields(out).shape == (2, 5, 32, 32)
        g = torch.Generator().manual_seed(0)
        hot = model.forecast(start, 3, g, temperature=5.0)
    assert not torch.equal(hot, out[:, :3])  # sampled codes differ from the most likely ones


def test_sensor_encoder_is_order_free_takes_any_count_and_rejects_bad_readings():
    model = tiny_model().eval()
    g = torch.Generator().manual_seed(0)
    values, positions = torch.randn(2, 12, generator=g), torch.rand(12, 2, generator=g)
    perm = torch.randperm(12, generator=g)
    with torch.no_grad():
        a = model.encode_sensors(values, positions)
        torch.testing.assert_close(a, model.encode_sensors(values[:, perm], positions[perm]), rtol=1e-5, atol=1e-5)
        assert model.encode_sensors(values[:, :5], positions[:5]).shape == (2, 4, 4, 4)
    with pytest.raises(ValueError, match="at least one sensor"):
        model.encode_sensors(values[:, :0], positions[:0])
    bad = values.clone()
    bad[0, 3] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        model.encode_sensors(bad, positions)


def test_grid_and_token_mismatches_are_clear_errors():
    with pytest.raises(ValueError, match="tokens x 2"):
        build_model("vq_forecast", n=32, tokens=5)
    from latent.vq_forecast import VQForecast

    with pytest.raises(ValueError, match="frame_dt = 0.2.*--set model.kwargs.frame_dt=0.2"):
        VQForecast.check_data({"grid_n": 64, "grid_length": 1.0}, np.array([0.0, 0.2]), {})


def test_phase_two_leaves_the_autoencoder_and_its_codebook_untouched():
    model = tiny_model()
    w = band_limited(Grid(32, 2 * math.pi), 6, 1, 3, 1.0, generator=torch.Generator().manual_seed(0)).float()
    w = w.reshape(2, 3, 32, 32)
    model.begin_epoch(0)
    model.train()
    model.loss(w)[0].backward()  # phase 1: initialises the codebook
    model.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in model.autoencoder.state_dict().items()}
    model.begin_epoch(TINY.get("ae_epochs", 100))
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        loss, terms = model.loss(w)
        loss.backward()
        opt.step()
    assert set(terms) == {"forecast_ce", "sensor_mse", "sensor_acc"}
    assert all(p.grad is None for p in model.autoencoder.parameters())
    for key, value in model.autoencoder.state_dict().items():
        assert torch.equal(value, before[key]), key


def _travelling_pairs(path, n=32, traj=8, times=10):
    """Band-limited fields moving one token (8 grid steps) along x per frame: the codes of the next frame
    are the rolled codes (the conv encoder is periodic and its stride divides the shift)."""
    grid = Grid(n, 2 * math.pi, dtype=torch.float64)
    w0 = band_limited(grid, traj, 1, 3, 1.0, generator=torch.Generator().manual_seed(0))
    w = torch.stack([w0.roll(8 * t, -2) for t in range(times)], 1).numpy()
    attrs = {"kind": "e1", "grid_n": n, "grid_length": grid.length, "dt": 0.01, "config": ""}
    return write_pairs(path, w, w, np.arange(times) * 0.1, np.array([0] * (traj - 2) + [1, 2]), attrs)


def test_two_phase_training_through_the_pipeline_learns_the_codes_and_their_motion(tmp_path):
    data = _travelling_pairs(tmp_path / "pairs.h5")
    kwargs = "{" + ", ".join(f"{k}: {v}" for k, v in {**TINY, "ae_epochs": 40, "windows": 4}.items()) + "}"
    with torch.random.fork_rng():
        code = train_closure.main(["train", "--closure", "vq_forecast", "--data", str(data), "--out",
                                   str(tmp_path / "run"), "--quiet", "--epochs", "110", "--set",
                                   f"model.kwargs={kwargs}", "--set", "batch_size=6", "--set", "optimizer.lr=3e-3",
                                   "--set", "schedule.kind=none"])
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    recon = [float(r["train_recon"]) for r in rows[:40]]  # training terms: 6 trajectories do not generalise
    forecast = [float(r["train_forecast_ce"]) for r in rows[40:]]
    sensor = [float(r["train_sensor_mse"]) for r in rows[40:]]
    assert np.mean(recon[-3:]) < 0.7 * recon[0]  # phase 1 learns to reconstruct
    assert forecast[0] > 0.9 * math.log(16) and forecast[-1] < 0.5 * forecast[0]  # phase 2: the motion
    assert sensor[-1] < 0.75 * sensor[0]  # and the codes from 8..32 sensors
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ckpt.closure == "vq_forecast" and ckpt.epoch > 40


def _plugin_setup(tmp_path, frames=4, **options):
    grid = Grid(32, 2 * math.pi, dtype=torch.float64)
    eq = NavierStokes2D(grid, nu=1e-2)
    truth = band_limited(grid, frames, 1, 3, 2.0, generator=torch.Generator().manual_seed(0))
    times = [0.2 * i for i in range(frames)]
    obs = Assimilation.example_observations(tmp_path / "truth.h5", grid, truth, times, "random:30", 1e-6)
    cls = __import__("closure").plugin_class("vq_forecast")
    ckpt = str(cls.example_checkpoint(tmp_path / "m.pt", grid, eq))
    plugin = make_plugin("vq_forecast", grid, eq, observations=obs, checkpoint=ckpt, **options)
    return grid, eq, truth, times, obs, plugin


def _call(plugin, grid, eq, w, t):
    return plugin(FlowState(w=w, t=t, step=0, dt=0.01, grid=grid, equation=eq, generator=torch.Generator().manual_seed(0)))


def test_plugin_forecasts_from_the_first_observation_and_replaces_the_state_at_frame_times(tmp_path):
    grid, eq, truth, times, obs, plugin = _plugin_setup(tmp_path)
    w = torch.zeros(3, 32, 32, dtype=torch.float64)
    model, norm = plugin.model, plugin.norm
    first = _call(plugin, grid, eq, w, 0.0)
    positions = (obs.operator.positions / grid.length).float()
    with torch.no_grad():
        codes = model.codes_from_sensors(norm.state(obs.at(0.0).y.float())[None], positions)
        expect = model.fields(codes)
        ahead = model.fields(model.forecast(codes, 2)[:, 1])
    torch.testing.assert_close(first, expect.double().expand(3, -1, -1))
    assert _call(plugin, grid, eq, w, 0.1) is None  # between the frames (0.2 apart) the solver runs on
    assert plugin.history["rel_rmse_f"][0] == pytest.approx(1.0)
    _call(plugin, grid, eq, w, 0.2)
    out = _call(plugin, grid, eq, w, 0.4)  # frame 2: the forecast, the sensors there are not read
    torch.testing.assert_close(out, ahead.double().expand(3, -1, -1))
    assert len(plugin.history["rmse_a"]) == 3


def test_plugin_reobserve_restarts_from_the_sensors_and_sampling_gives_members_their_own_codes(tmp_path):
    grid, eq, truth, times, obs, plugin = _plugin_setup(tmp_path, reobserve=True, temperature=3.0)
    w = torch.zeros(4, 32, 32, dtype=torch.float64)
    out = _call(plugin, grid, eq, w, 0.0)
    assert (out[0] - out[1]).abs().max() > 1e-6  # each member its own sampled codes
    assert plugin.frame == 0
    _call(plugin, grid, eq, w, 0.2)
    assert plugin.frame == 0 and plugin.codes.shape[1] == 1  # re-read: the forecast starts again there


def test_plugin_called_off_its_frames_is_a_clear_error(tmp_path):
    grid, eq, truth, times, obs, plugin = _plugin_setup(tmp_path)
    w = torch.zeros(1, 32, 32, dtype=torch.float64)
    _call(plugin, grid, eq, w, 0.0)
    with pytest.raises(ValueError, match="k x dt dividing 0.2"):
        _call(plugin, grid, eq, w, 0.15)


def test_stride_spaces_the_training_windows_and_short_data_is_a_clear_error():
    model = tiny_model(stride=3, windows=5)
    t = torch.arange(20.0)
    w = t[None, :, None, None].expand(2, 20, 32, 32)  # frame t holds the value t
    win = model._windows(w, 4, 3)[..., 0, 0]  # (10, 4)
    assert win.shape == (10, 4) and (win[:, 1:] - win[:, :-1] == 3).all() and win.max() <= 19
    assert model.step_dt == pytest.approx(0.3)
    from latent.vq_forecast import VQForecast

    with pytest.raises(ValueError, match="windows of 13 frames"):
        VQForecast.check_data({"grid_n": 64, "grid_length": 1.0}, np.arange(10) * 0.1, {"stride": 3})
