"""LD-EnSF (issue 5): latent ODE integrator, parametric data, the ld_ensf model and training, the latent
filter (joint state + parameter estimation) and the hybrid plug-in."""
from __future__ import annotations

import math
import shutil

import h5py
import numpy as np
import pytest
import torch

import train_closure
from closure import make_plugin, plugin_class
from latent.checkpoint import load_checkpoint
from latent.ld_ensf import LatentFilter
from latent.latent_ode import rk4
from latent.models import build_model
from solvers import Grid, NavierStokes2D
from solvers.forcing import kolmogorov_forcing
from solvers.initial_conditions import band_limited
from solvers.pairs import read_trajectories
from solvers.parametric import load_parametric_config
from solvers.rollout import rollout
from test_training import one_thread  # noqa: F401  (autouse fixture)

DATA_CONFIG = "configs/data_e3_small.yaml"


def test_rk4_is_fourth_order_on_a_linear_ode():
    """dz/dt = A z (rotation + decay, per-member rates p): the error against expm(A t) falls 2^4 per halving."""
    A = torch.tensor([[-0.3, 2.0], [-2.0, -0.3]], dtype=torch.float64)
    z0 = torch.tensor([[1.0, 0.5], [0.2, -1.0]], dtype=torch.float64)
    p = torch.tensor([[1.0], [0.5]], dtype=torch.float64)

    def f(z, p):
        return p * (z @ A.T)

    exact = torch.stack([torch.linalg.matrix_exp(A * float(s) * 1.5) @ z for s, z in zip(p[:, 0], z0)])
    errors = [(rk4(f, z0, p, 1.5, substeps) - exact).abs().max().item() for substeps in (8, 16, 32)]
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(3.8 < o < 4.2 for o in orders), (errors, orders)
    with pytest.raises(ValueError, match="substeps"):
        rk4(f, z0, p, 1.0, 0)


def tiny_model(n=32, **kwargs):
    options = dict(latent=6, width=4, modes=6, hidden=32, ode_hidden=16, lstm_hidden=16, n=n, length=2 * math.pi,
                   sensors="regular:4x4", window=3, dynamics_epochs=2)
    torch.manual_seed(0)
    return build_model("ld_ensf", **{**options, **kwargs})


def test_decoder_is_band_limited_and_answers_any_coordinate():
    """The decoded field has no energy beyond its modes; queried at grid points it equals the grid decode, and
    off the grid it equals the field's Fourier series evaluated directly."""
    model = tiny_model().double()
    z = torch.randn(3, 6, dtype=torch.float64)
    w = model.decode(z)
    spectrum = torch.fft.rfft2(w).abs()
    k = torch.fft.fftfreq(32, 1 / 32).abs()
    outside = (k[:, None] > 6) | (torch.arange(17)[None, :] > 6)
    assert spectrum[:, outside].max() < 1e-10 * spectrum.max()
    x = torch.arange(32, dtype=torch.float64) * (2 * math.pi / 32)
    grid_points = torch.cartesian_prod(x, x)
    assert torch.allclose(model.query(z, grid_points), w.reshape(3, -1), atol=1e-12)
    q = torch.rand(50, 2, dtype=torch.float64) * 2 * math.pi
    c = model.decoder.spectrum(z, 32)  # direct sum of the Fourier series (rfft half plane, weights 1 / 2)
    kx = torch.fft.fftfreq(32, 1 / 32, dtype=torch.float64)
    ky = torch.arange(17, dtype=torch.float64)
    phase = torch.exp(1j * (q[:, 0, None, None] * kx[:, None] + q[:, 1, None, None] * ky))  # (q, kx, ky)
    weight = torch.where(ky == 0, 1.0, 2.0)
    direct = torch.einsum("bkl,qkl,l->bq", c, phase, weight.to(c.dtype)).real
    assert torch.allclose(model.query(z, q), direct, atol=1e-10)


def test_sense_latent_equals_sensing_the_decoded_field():
    """The grid-free sensor readings of a code (amplitudes times a cached map) equal ``sense(decode(z))`` to
    round-off, in float64 and float32, for a nonlinear decoder."""
    model = tiny_model(latent=5).double()
    z = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(model.sense_latent(z), model.sense(model.decode(z)), rtol=1e-10, atol=1e-10)
    model = model.float()
    torch.testing.assert_close(model.sense_latent(z.float()), model.sense(model.decode(z.float())),
                               rtol=1e-4, atol=1e-5)


def test_pod_option_starts_the_autoencoder_at_the_band_limited_pod():
    """With ``pod``, ``fit_data`` makes decode(encode(w)) the projection of w's band-limited part onto the
    leading POD modes of the (shifted) training frames: exact on a field in their span, orthogonal
    residual otherwise; the output stays band-limited and the nonlinear paths start at zero."""
    torch.manual_seed(1)
    n, m, latent = 32, 6, 5
    k = torch.fft.fftfreq(n, 1 / n).abs()
    band = ((k[:, None] <= m) & (torch.arange(n // 2 + 1)[None, :] <= m)).double()
    def smooth(count):  # band-limited random fields
        return torch.fft.irfft2(torch.randn(count, n, n // 2 + 1, dtype=torch.complex128) * band, s=(n, n))
    model = tiny_model(n=n, latent=latent, modes=m, pod=True, shifts="none").double()
    assert not model.decoder.net[-1].weight.detach().any() and not model.encoder.head.weight.detach().any()
    assert not any("linear" in name for name, _ in model.named_parameters())  # fixed: buffers, not trained
    basis_fields = smooth(latent)  # the training frames span a 5-dimensional affine space
    coeff = torch.randn(3, 10, latent, dtype=torch.float64)
    train = 0.3 + torch.einsum("btl,lxy->btxy", coeff, basis_fields)
    model.fit_data(train, torch.zeros(3, 1))
    inside = 0.3 + torch.einsum("bl,lxy->bxy", torch.randn(4, latent, dtype=torch.float64), basis_fields)
    assert torch.allclose(model.predict(inside), inside, atol=1e-9)
    outside = smooth(4) + 0.3
    recon = model.predict(outside).detach()
    residual = (outside - recon).flatten(1)
    span = (basis_fields.flatten(1)).T  # residual is orthogonal to the modes' span
    assert float((residual @ span).abs().max()) < 1e-8 * float(residual.norm() * span.norm())
    spectrum = torch.fft.rfft2(model.decode(torch.randn(2, latent, dtype=torch.float64))).abs()
    assert spectrum[:, band == 0].max() < 1e-10 * spectrum.max()
    with pytest.raises(ValueError, match="grid differs"):
        model.fit_data(torch.zeros(1, 2, 16, 16), None)


def test_observer_loss_weighs_the_parameter_by_param_weight():
    """Phase 2's loss: latent MSE (mean over components) + param_weight x the parameter's MSE + the NLL."""
    w, re = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.tensor([[60.0], [140.0]], dtype=torch.float64)
    losses = []
    for weight in (1.0, 5.0):
        model = tiny_model(param_weight=weight, shifts="none").double()
        model.begin_epoch(5)  # phase 2
        torch.manual_seed(3)
        total, terms = model.loss(w, re)
        losses.append((float(total.detach()), terms))
    (l1, t1), (l5, t5) = losses
    assert float(t1["re_mse"]) > 0 and float(t1["re_mse"]) == float(t5["re_mse"])
    assert l1 == pytest.approx(float(t1["mse"] + t1["re_mse"] + t1["nll"]), rel=1e-12)
    assert l5 - l1 == pytest.approx(4 * float(t1["re_mse"]), rel=1e-9)


def test_latent_noise_perturbs_only_the_training_rollouts_start():
    """Phase 1 with ``latent_noise``: in training the rollout starts from the first frame's code plus noise (so the
    forecast and latent terms change, the reconstruction does not); in evaluation the loss is the noiseless one."""
    w, re = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.tensor([[60.0], [140.0]], dtype=torch.float64)

    def terms(noise, training):
        model = tiny_model(latent_noise=noise, shifts="none").double().train(training)
        model.begin_epoch(0)  # phase 1
        torch.manual_seed(3)
        return {k: float(v) for k, v in model.loss(w, re)[1].items()}

    clean, noisy = terms(0.0, True), terms(0.5, True)
    assert noisy["recon"] == clean["recon"]
    assert noisy["latent"] > clean["latent"] and noisy["forecast"] != clean["forecast"]
    assert terms(0.5, False) == terms(0.0, False)
    with pytest.raises(ValueError, match="latent_noise"):
        tiny_model(latent_noise=-0.1)


def test_windows_draws_several_windows_per_trajectory():
    """``windows = 2`` on one trajectory is the phase-1 loss of that trajectory twice (same random draws)."""
    w, re = torch.randn(1, 6, 32, 32, dtype=torch.float64), torch.tensor([[90.0]], dtype=torch.float64)

    def loss(windows, w, re):
        model = tiny_model(windows=windows, shifts="none").double()
        model.begin_epoch(0)
        torch.manual_seed(4)
        return float(model.loss(w, re)[0].detach())

    twice = loss(1, w.expand(2, -1, -1, -1), re.expand(2, 1))
    assert loss(2, w, re) == pytest.approx(twice, rel=1e-12) and twice != pytest.approx(loss(1, w, re), rel=1e-6)
    with pytest.raises(ValueError, match="windows"):
        tiny_model(windows=0)


def test_decoder_skips_its_zero_mlp_only_where_no_gradient_needs_it():
    """A POD-started decoder's MLP outputs zero: skipped at inference (same amplitudes), kept while it trains (its
    output layer gets a gradient), used again once it is nonzero."""
    model = tiny_model(pod=True).double()
    dec, z = model.decoder, torch.randn(3, 6, dtype=torch.float64)
    with torch.no_grad():
        assert dec._net_is_zero() and torch.equal(dec.amplitudes(z), dec.net(z) + dec.amplitudes(z))
    dec.amplitudes(z).sum().backward()
    assert dec.net[-1].weight.grad is not None and dec.net[-1].weight.grad.abs().sum() > 0
    with torch.no_grad():
        dec.net[-1].bias.fill_(0.25)
        assert not dec._net_is_zero()
        linear = torch.nn.functional.linear(z, dec.linear_weight, dec.linear_bias)
        assert torch.allclose(dec.amplitudes(z), dec.net(z) + linear)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """4 trajectories x 4 frames of a 32^2 Kolmogorov flow, Re ~ U(50, 150)."""
    out = tmp_path_factory.mktemp("e3") / "e3.h5"
    code = train_closure.main(["generate-parametric", "--config", DATA_CONFIG, "--quiet", "--out", str(out),
                               "--set", "flow.n=32", "--set", "trajectories=4", "--set", "frames=4",
                               "--set", "splits={train: 2, val: 1, test: 1}", "--set", "batch=3"])
    assert code == 0
    return out


def test_parametric_data_matches_a_direct_run_at_each_reynolds_number(tiny_data):
    cfg = load_parametric_config(DATA_CONFIG, ["flow.n=32"])
    with h5py.File(tiny_data) as f:
        re, state, times = f["params"][:, 0], f["state"][...], f["time"][...]
        assert list(f.attrs["param_names"]) == ["reynolds"] and f.attrs["kind"] == "e3"
    assert np.all((re >= 50) & (re <= 150)) and len(set(re.round(6))) == 4
    assert np.allclose(times, [0.0, 0.2, 0.4, 0.6])
    grid = Grid(32, 2 * math.pi)
    from solvers.random import MemberRNG
    from solvers.setup import initial_state

    w0, _ = initial_state(cfg.flow, grid, 4, MemberRNG(cfg.seed, [3], stream="init"))
    eq = NavierStokes2D(grid, 1.0 / re[3], 0.1, kolmogorov_forcing(grid, k_f=4, amplitude=1.0))
    frames = rollout(w0, eq, 0.01, 60, record_every=20).trajectory()[0].numpy()  # trajectory 3 = member 3
    assert np.abs(frames - state[3]).max() < 1e-5 * np.abs(state[3]).max()
    test = read_trajectories(tiny_data, "test")
    assert test.state.shape == (1, 4, 32, 32) and test.params.shape == (1, 1)
    with pytest.raises(ValueError, match="min < max"):
        load_parametric_config(DATA_CONFIG, ["reynolds={min: 100, max: 50}"])


def test_version_1_e3_files_still_read(tiny_data, tmp_path):
    """Layout 2 changed only E2's closure target; E3 files hold trajectories, so version 1 still reads."""
    old = tmp_path / "old.h5"
    shutil.copy(tiny_data, old)
    with h5py.File(old, "r+") as f:
        f.attrs["layout_version"] = 1
    np.testing.assert_array_equal(read_trajectories(old, "test").state, read_trajectories(tiny_data, "test").state)


def test_training_runs_both_phases_and_checks_the_data(tiny_data, tmp_path, capsys):
    common = ["train", "--config", "configs/train_ld_ensf.yaml", "--data", str(tiny_data), "--quiet",
              "--epochs", "3", "--set", "batch_size=2", "--set", "model.kwargs={latent: 4, width: 4, modes: 6, "
              "hidden: 16, ode_hidden: 16, lstm_hidden: 8, n: 32, length: 6.283185307179586, window: 3, "
              "dynamics_epochs: 2, sensors: 'regular:4x4'}"]
    assert train_closure.main([*common, "--out", str(tmp_path / "run")]) == 0
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert "train_forecast" in log[0] and "train_re_mse" in log[0] and len(log) == 4
    model = load_checkpoint(tmp_path / "run" / "last.pt").build_model()
    assert bool(model.z_fitted) and (model.z_std > 0).all()  # phase 2 fitted the standardisation
    bad = [*common[:-1], common[-1].replace("n: 32", "n: 64"), "--out", str(tmp_path / "bad")]
    assert train_closure.main(bad) == 2
    assert "model.kwargs.n" in capsys.readouterr().err
    e1_like = [*common, "--set", "model.kwargs.frame_dt=0.1", "--out", str(tmp_path / "bad2")]
    assert train_closure.main(e1_like) == 2
    assert "frame_dt" in capsys.readouterr().err


def test_freeze_autoencoder_trains_the_latent_ode_on_a_fixed_pod(tiny_data, tmp_path):
    """``freeze_autoencoder``: the encoder / decoder stay the POD start (their nonlinear paths' zero output
    layers stay zero; one and two phase-1 epochs leave them equal) while the latent vector field moves; it
    needs ``pod``."""
    kwargs = ("model.kwargs={latent: 4, width: 4, modes: 6, hidden: 16, ode_hidden: 16, lstm_hidden: 8, n: 32, "
              "length: 6.283185307179586, window: 3, dynamics_epochs: 2, sensors: 'regular:4x4', pod: true, "
              "freeze_autoencoder: true}")
    common = ["train", "--config", "configs/train_ld_ensf.yaml", "--data", str(tiny_data), "--quiet",
              "--set", "batch_size=2", "--set", kwargs]
    assert train_closure.main([*common, "--epochs", "1", "--out", str(tmp_path / "a")]) == 0
    assert train_closure.main([*common, "--epochs", "2", "--out", str(tmp_path / "b")]) == 0
    start = load_checkpoint(tmp_path / "a" / "last.pt").build_model().state_dict()
    trained = load_checkpoint(tmp_path / "b" / "last.pt").build_model().state_dict()
    for name, value in start.items():
        if name.startswith(("encoder.", "decoder.")):
            assert torch.equal(value, trained[name]), name
    assert any(not torch.equal(start[k], trained[k]) for k in start if k.startswith("field."))
    assert not trained["decoder.net.4.weight"].any() and not trained["encoder.head.weight"].any()
    with pytest.raises(ValueError, match="pod=true"):
        tiny_model(freeze_autoencoder=True)


class LinearLatentModel:
    """A stand-in ``ld_ensf`` model with known dynamics: ``dz/dt = -(1 + p) z`` rotating in pairs, identity
    encoder / decoder (``z`` is the field), and an observer returning the truth plus known noise."""

    reynolds = (50.0, 150.0)

    def __init__(self, latent=4, noise=0.3, seed=0):
        self.z_mean, self.z_std = torch.zeros(latent, dtype=torch.float64), torch.ones(latent, dtype=torch.float64)
        self.noise, self.truth = noise, None
        self.generator = torch.Generator().manual_seed(seed)

    def standardize(self, z):
        return z

    def unstandardize(self, u):
        return u

    def encode(self, w):
        return w.reshape(w.shape[0], -1).to(torch.float64)

    def decode(self, z, n=None):
        return z

    def reynolds_from(self, p):
        return 100 + 50 * p

    def advance(self, z, p, dt=None):
        rot = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
        A = torch.block_diag(*[rot] * (z.shape[1] // 2))
        return rk4(lambda z, p: 0.5 * z @ A.T - 0.2 * (1 + p) * z + 0.3 * (1 + p) * torch.roll(z, 1, 1) ** 2 * 0,
                   z, p, dt, 8)

    def observe(self, y, state=None):
        x = self.truth  # (latent + 1,)
        mean = x + self.noise * torch.randn(x.shape, generator=self.generator, dtype=torch.float64)
        var = torch.full_like(x, self.noise ** 2)
        var[-1] = 0.5 ** 2  # the parameter is observed poorly: it has to come from the dynamics too
        mean[-1] = x[-1] + 0.5 * torch.randn((), generator=self.generator, dtype=torch.float64)
        return mean[None, None], var[None, None], state


def test_latent_filter_tracks_the_state_and_estimates_the_parameter():
    """On a known latent model the LD-EnSF cycle keeps the ensemble mean near the truth (much closer than the
    free ensemble) and the parameter ensemble contracts toward the true value."""
    torch.manual_seed(0)
    model = LinearLatentModel()
    true_p = torch.tensor([[0.6]], dtype=torch.float64)
    z = torch.tensor([[1.5, -1.0, 0.5, 2.0]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    filt = LatentFilter(model, 20, gen, steps=50, guidance="tweedie", param_jitter=0.01)
    filt.initialize(torch.randn(20, 4, generator=gen, dtype=torch.float64) * 2)
    free = filt.x.clone()
    errors, free_errors = [], []
    for k in range(30):
        if k:
            z = model.advance(z, true_p, 0.2)
            free = torch.cat([model.advance(free[:, :-1], free[:, -1:], 0.2), free[:, -1:]], 1)
        model.truth = torch.cat([z[0], true_p[0]])
        filt.cycle(torch.zeros(1), None if k == 0 else 0.2)
        errors.append((filt.x[:, :-1].mean(0) - z[0]).norm().item())
        free_errors.append((free[:, :-1].mean(0) - z[0]).norm().item())
    assert np.mean(errors[10:]) < 0.5 * np.mean(free_errors[10:])
    assert np.mean(errors[10:]) < 2 * model.noise  # within the observation noise
    re = filt.reynolds()
    assert abs(re.mean().item() - 130.0) < 10.0 and re.std().item() < 20.0  # truth Re = 100 + 50 * 0.6


def _linear_decoder_model(latent=8):
    """A tiny ``pod`` model whose decoder is exactly linear (random fixed modes, nonlinear path zero)."""
    model = tiny_model(latent=latent, pod=True).double()
    g = torch.Generator().manual_seed(5)
    model.decoder.linear_weight.copy_(torch.randn(model.decoder.linear_weight.shape, generator=g,
                                                  dtype=torch.float64) / 4)
    return model


def test_sensor_observation_linearises_the_decoder_at_the_sensors():
    """With a linear decoder, ``y - H x`` of :meth:`LatentFilter.sensor_likelihood` equals the readings minus the
    sensed decoded member for every member (the Jacobian is exact), the parameter row is the LSTM's, and the
    variance is the noise's plus the representation error's."""
    model = _linear_decoder_model()
    gen = torch.Generator().manual_seed(2)
    filt = LatentFilter(model, 6, gen, observation="sensors", sensor_noise=0.1, representation_error=0.2)
    filt.x = torch.randn(6, 9, generator=gen, dtype=torch.float64)
    readings = torch.randn(16, generator=gen, dtype=torch.float64)
    lstm = (torch.randn(9, dtype=torch.float64), torch.full((9,), 0.3, dtype=torch.float64))
    y, var, H = filt.sensor_likelihood(readings, lstm)
    assert H.shape == (17, 9) and bool((H[:16, -1] == 0).all()) and bool((H[16, :-1] == 0).all()) and H[16, -1] == 1
    sensed = model.sense(model.decode(filt.x[:, :-1]))
    torch.testing.assert_close((y - filt.x @ H.T)[:, :16], readings - sensed, rtol=1e-9, atol=1e-9)
    assert y[16] == lstm[0][-1] and var[16] == lstm[1][-1]
    torch.testing.assert_close(var[:16], torch.full((16,), 0.05, dtype=torch.float64))
    offset = torch.randn(16, generator=gen, dtype=torch.float64)  # h(u) = sense(decode(u)) + offset
    y2, _, _ = filt.sensor_likelihood(readings, lstm, offset=offset)
    torch.testing.assert_close((y2 - filt.x @ H.T)[:, :16], readings - offset - sensed, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="observation"):
        LatentFilter(model, 6, observation="decoder")
    with pytest.raises(ValueError, match="implicit"):
        LatentFilter(model, 6, guidance="tweedie", implicit=True)


def test_kernel_lets_the_sensor_analysis_leave_the_members_span():
    """Truth ``decode(z)``, ``z ~ N(0, I)`` (8 latents), 5 members from the same prior, 16 sensors with small
    noise: with a unit kernel (the true prior around each member) the analysis mean's latent error falls well
    below the prior's; without one it stays in the members' 4-dimensional span and keeps most of the error."""
    model = _linear_decoder_model()
    errors = {}
    for kernel in (0.0, 1.0):
        prior, post = [], []
        for seed in range(6):
            g = torch.Generator().manual_seed(seed)
            z = torch.randn(8, generator=g, dtype=torch.float64)
            readings = model.sense(model.decode(z[None]))[0] + 0.01 * torch.randn(16, generator=g, dtype=torch.float64)
            filt = LatentFilter(model, 5, g, steps=100, guidance="tweedie", observation="sensors", sensor_noise=0.01,
                                representation_error=0.0, kernel=kernel)
            filt.x = torch.cat([torch.randn(5, 8, generator=g, dtype=torch.float64), torch.zeros(5, 1,
                                                                                                 dtype=torch.float64)], 1)
            prior.append((filt.x[:, :-1].mean(0) - z).norm().item())
            filt.assimilate(readings)
            post.append((filt.x[:, :-1].mean(0) - z).norm().item())
        errors[kernel] = (np.mean(prior), np.mean(post))
    assert errors[1.0][1] < 0.3 * errors[1.0][0], errors
    assert errors[0.0][1] > 0.5 * errors[0.0][0], errors


def test_separate_parameter_update_is_the_kalman_update_by_the_lstm():
    """``parameter = "separate"``: the EnSF analyses the latent alone and the parameters get the stochastic EnKF
    update by the LSTM's observation: their mean moves by the Kalman gain (300 members: within sampling error)."""
    model = _linear_decoder_model()
    gen = torch.Generator().manual_seed(3)
    filt = LatentFilter(model, 300, gen, steps=5, guidance="tweedie", observation="sensors", sensor_noise=0.1,
                        parameter="separate")
    filt.x = torch.randn(300, 9, generator=gen, dtype=torch.float64)
    filt.x[:, -1] = 0.5 + 0.2 * filt.x[:, -1]
    p_mean, p_var = float(filt.x[:, -1].mean()), float(filt.x[:, -1].var())
    lstm = (torch.full((9,), -0.3, dtype=torch.float64), torch.full((9,), 0.04, dtype=torch.float64))
    filt.observe = lambda readings: lstm  # the LSTM's answer, fixed
    filt.assimilate(torch.zeros(16, dtype=torch.float64))
    gain = p_var / (p_var + 0.04)
    expected = p_mean + gain * (-0.3 - p_mean)
    assert abs(float(filt.x[:, -1].mean()) - expected) < 0.03, (float(filt.x[:, -1].mean()), expected)
    assert abs(float(filt.x[:, -1].var()) - (1 - gain) * p_var) < 0.3 * (1 - gain) * p_var
    with pytest.raises(ValueError, match="parameter update"):
        LatentFilter(model, 4, parameter="both")


def test_spread_kernel_scales_with_each_components_ensemble_spread(monkeypatch):
    """``kernel_scale = "spread"``: the EnSF gets ``kernel x`` each latent component's ensemble std (the parameter
    none); ``fixed``: ``kernel`` everywhere; anything else is a clear error."""
    import latent.ld_ensf as ld

    seen = {}

    def capture(x, y, H, r, generator, kernel=None, **options):
        seen["kernel"] = kernel
        return x

    monkeypatch.setattr(ld, "ensf_analysis", capture)
    model = _linear_decoder_model()
    x = torch.randn(6, 9, dtype=torch.float64) * torch.arange(1, 10, dtype=torch.float64)
    for scale, expected in (("spread", 0.5 * x.std(0)), ("fixed", torch.full((9,), 0.5, dtype=torch.float64))):
        filt = LatentFilter(model, 6, observation="sensors", kernel=0.5, kernel_scale=scale)
        filt.x = x.clone()
        filt.analysis(torch.zeros(9, dtype=torch.float64), torch.ones(9, dtype=torch.float64))
        expected[-1] = 0.0
        torch.testing.assert_close(seen["kernel"], expected)
    with pytest.raises(ValueError, match="kernel_scale"):
        LatentFilter(model, 6, kernel_scale="adaptive")


def test_exact_sampler_leaves_the_members_span_like_the_kernel_ensf():
    """``sampler = "exact"`` (the Gaussian-mixture posterior in closed form) on the kernel test's problem: the
    analysis mean's latent error falls well below the prior's; it needs sensors and a kernel."""
    model = _linear_decoder_model()
    prior, post = [], []
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(8, generator=g, dtype=torch.float64)
        readings = model.sense(model.decode(z[None]))[0] + 0.01 * torch.randn(16, generator=g, dtype=torch.float64)
        filt = LatentFilter(model, 5, g, observation="sensors", sensor_noise=0.01, representation_error=0.0,
                            kernel=1.0, sampler="exact", parameter="separate")
        filt.x = torch.cat([torch.randn(5, 8, generator=g, dtype=torch.float64), torch.zeros(5, 1, dtype=torch.float64)], 1)
        prior.append((filt.x[:, :-1].mean(0) - z).norm().item())
        filt.assimilate(readings)
        post.append((filt.x[:, :-1].mean(0) - z).norm().item())
    assert np.mean(post) < 0.3 * np.mean(prior), (prior, post)
    with pytest.raises(ValueError, match="exact"):
        LatentFilter(model, 5, observation="sensors", kernel=0.0, sampler="exact")


def test_reproject_re_encodes_the_decoded_analysis():
    """``reproject``: the analysis members' latents become the codes of their decoded fields (same draws
    otherwise), the parameters untouched."""
    model = _linear_decoder_model()
    x = torch.randn(5, 9, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    readings = torch.randn(16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    out = []
    for reproject in (False, True):
        filt = LatentFilter(model, 5, torch.Generator().manual_seed(1), steps=20, observation="sensors", kernel=0.5,
                            reproject=reproject)
        filt.x = x.clone()
        filt.assimilate(readings)
        out.append(filt.x)
    codes = model.standardize(model.encode(model.decode(model.unstandardize(out[0][:, :-1])))).to(torch.float64)
    torch.testing.assert_close(out[1][:, :-1], codes)
    torch.testing.assert_close(out[1][:, -1], out[0][:, -1])
    assert (codes - out[0][:, :-1]).abs().max() > 1e-3  # the re-encoding changed something


def test_a_diverging_analysis_is_a_clear_error():
    """The damped guidance's explicit pseudo-time steps blow up on a stiff likelihood (16 sensors of noise 1e-3,
    10 steps): the filter says so and how to fix it instead of handing the solver a 1e70 field."""
    model = _linear_decoder_model()
    g = torch.Generator().manual_seed(0)
    filt = LatentFilter(model, 5, g, steps=10, guidance="damped", observation="sensors", sensor_noise=1e-3,
                        representation_error=0.0, kernel=1.0)
    filt.x = torch.randn(5, 9, generator=g, dtype=torch.float64)
    readings = torch.randn(16, generator=g, dtype=torch.float64)
    start = filt.x.clone()
    with pytest.raises(FloatingPointError, match="tweedie"):
        filt.assimilate(readings)
    filt.x = start
    filt.options["implicit"] = True  # the implicit step is the fix
    filt.assimilate(readings)
    assert bool(torch.isfinite(filt.x).all()) and filt.x.abs().max() < 100


def test_a_diverging_latent_forecast_is_a_clear_error(monkeypatch):
    """A latent ODE that blows up (here: one returning inf) stops the filter naming the forecast, and the members
    are left as they were, not handed on as NaN to the analysis."""
    model = _linear_decoder_model()
    filt = LatentFilter(model, 5, torch.Generator().manual_seed(0), steps=10)
    filt.x = torch.randn(5, 9, dtype=torch.float64)
    start = filt.x.clone()
    monkeypatch.setattr(model, "advance", lambda z, p, dt=None: z * float("inf"))
    with pytest.raises(FloatingPointError, match="latent ODE diverged"):
        filt.forecast(0.2)
    assert torch.equal(filt.x, start)


@pytest.mark.parametrize("reynolds", ["likelihood", "latent"])
def test_plugin_runs_hybrid_sets_viscosities_and_checks_sensors(tmp_path, reynolds):
    """Both Re estimates (``latent``, the default: the filter's; ``likelihood``: the base class's grid likelihood)."""
    grid = Grid(32, 2 * math.pi)
    eq = NavierStokes2D(grid, 1e-2, 0.1, kolmogorov_forcing(grid, k_f=4, amplitude=1.0))
    cls = plugin_class("ld_ensf")
    ckpt = str(cls.example_checkpoint(tmp_path / "m.pt", grid, eq))
    truth = band_limited(grid, batch=1, k_min=1, k_max=4, max_velocity=7.0, generator=torch.Generator().manual_seed(3))
    times = [0.0, 0.2, 0.4]
    truths = rollout(truth, eq, 0.01, 40, record_every=20).trajectory()[0]
    obs = cls.example_observations(tmp_path / "truth.h5", grid, truths, times, sensors="regular:4x4")
    w0 = band_limited(grid, batch=4, k_min=1, k_max=4, max_velocity=7.0, generator=torch.Generator().manual_seed(4))
    plugin = make_plugin("ld_ensf", grid, eq, observations=obs, checkpoint=ckpt, steps=10, reynolds=reynolds)
    result = rollout(w0, eq, 0.01, 50, plugin=plugin, every=20)  # calls at steps 0, 20, 40
    assert torch.isfinite(result.w).all() and len(plugin.history["reynolds"]) == 3
    if reynolds == "likelihood":  # two likelihood terms (the first analysis has no previous mean)
        assert plugin.likelihood.cycles == 2 and plugin.history["reynolds"][-1] == plugin.likelihood.scores()[0]
        assert (plugin.likelihood.lo, plugin.likelihood.hi) == plugin.model.reynolds
    else:
        assert plugin.likelihood is None
    assert isinstance(eq.nu, torch.Tensor) and eq.nu.shape == (4,)  # one viscosity per member
    re = 1 / eq.nu.double()
    assert torch.all((re > 25) & (re < 300))
    other = cls.example_observations(tmp_path / "t2.h5", grid, truths, times, sensors="regular:5x5")
    with pytest.raises(ValueError, match="regular:4x4"):
        make_plugin("ld_ensf", grid, eq, observations=other, checkpoint=ckpt)
    with pytest.raises(ValueError, match="needs a trained model"):
        make_plugin("ld_ensf", grid, eq, observations=obs)
    with pytest.raises(ValueError, match=r"unknown reynolds estimate 'lstm'; choose one of \['latent', 'likelihood'\]"):
        make_plugin("ld_ensf", grid, eq, observations=obs, checkpoint=ckpt, reynolds="lstm")


def test_plugin_leaves_a_perfect_forecast_alone_only_with_unresolved(tmp_path):
    """Every member equal to the truth, noise-free sensors: with ``unresolved`` the innovation is zero (the
    decoder's misfit at the sensors is the members' own), so the analysis mean keeps the state (up to the EnSF's
    sampling of the kernel's spread); without it the latent is pulled toward the truth's unresolved part."""
    grid = Grid(32, 2 * math.pi)
    eq = NavierStokes2D(grid, 1e-2, 0.1, kolmogorov_forcing(grid, k_f=4, amplitude=1.0))
    cls = plugin_class("ld_ensf")
    ckpt = str(cls.example_checkpoint(tmp_path / "m.pt", grid, eq))
    truth = band_limited(grid, batch=1, k_min=1, k_max=4, max_velocity=7.0, generator=torch.Generator().manual_seed(3))
    obs = cls.example_observations(tmp_path / "truth.h5", grid, truth, [0.0], sensors="regular:4x4", noise=1e-6)
    moved = {}
    for unresolved in (True, False):
        plugin = make_plugin("ld_ensf", grid, eq, observations=obs, checkpoint=ckpt, steps=20, unresolved=unresolved,
                             estimate_reynolds=False)
        rollout(truth.repeat(8, 1, 1), eq, 0.01, 1, plugin=plugin, every=20)
        assert plugin.history["rel_rmse_f"][0] < 1e-6
        moved[unresolved] = plugin.history["rel_rmse_a"][0]  # the analysis mean's relative error
    assert moved[True] < 0.25 * moved[False], moved


def test_warm_start_loads_the_weights_and_rejects_another_architecture(tiny_data, tmp_path, capsys):
    """``init_from``: a new run (here with a different phase length: straight to phase 2, which freezes the
    autoencoder and ODE) starts from a checkpoint's weights."""
    kwargs = ("model.kwargs={latent: 4, width: 4, modes: 6, hidden: 16, ode_hidden: 16, lstm_hidden: 8, n: 32, "
              "length: 6.283185307179586, window: 3, dynamics_epochs: %d, sensors: 'regular:4x4'}")
    common = ["train", "--config", "configs/train_ld_ensf.yaml", "--data", str(tiny_data), "--quiet",
              "--set", "batch_size=2"]
    assert train_closure.main([*common, "--epochs", "1", "--set", kwargs % 1, "--out", str(tmp_path / "a")]) == 0
    first = load_checkpoint(tmp_path / "a" / "last.pt").payload["model"]["state_dict"]
    warm = [*common, "--epochs", "1", "--set", kwargs % 0, "--set", f"init_from={tmp_path / 'a' / 'last.pt'}"]
    assert train_closure.main([*warm, "--out", str(tmp_path / "b")]) == 0
    second = load_checkpoint(tmp_path / "b" / "last.pt").payload["model"]["state_dict"]
    frozen = [k for k in first if k.split(".")[0] in ("encoder", "decoder", "field")]  # phase 2 from epoch 0
    assert frozen and all(torch.equal(first[k], second[k]) for k in frozen)
    wider = [w.replace("latent: 4", "latent: 5") for w in warm]
    assert train_closure.main([*wider, "--out", str(tmp_path / "c")]) == 2
    assert "init_from" in capsys.readouterr().err


def test_twin_benchmark_runs_every_method_and_records_its_setup(tiny_data, tmp_path):
    """``benchmarks/ld_ensf_twin.py`` end to end at toy size (a 2-epoch model, 4 members, 3 cycles): every method
    gets a row with a relative-error curve per cycle, the free run stays near 1, and the JSON records the options."""
    from test_benchmarks import benchmark

    common = ["train", "--config", "configs/train_ld_ensf.yaml", "--data", str(tiny_data), "--quiet",
              "--epochs", "2", "--set", "batch_size=2", "--set", "model.kwargs={latent: 4, width: 4, modes: 6, "
              "hidden: 16, ode_hidden: 16, lstm_hidden: 8, n: 32, length: 6.283185307179586, window: 3, "
              "dynamics_epochs: 1, sensors: 'regular:4x4'}"]
    assert train_closure.main([*common, "--out", str(tmp_path / "run")]) == 0
    out = tmp_path / "twin.json"
    twin = benchmark("ld_ensf_twin")
    assert twin.main(["--checkpoint", str(tmp_path / "run" / "last.pt"), "--data", str(tiny_data), "--truths", "0",
                      "--members", "4", "--cycles", "3", "--steps", "5", "--observation", "sensors", "--kernel", "0.2",
                      "--parameter", "separate", "--json", str(out)]) == 0
    import json

    result = json.loads(out.read_text())
    assert set(result["methods"]) == set(twin.METHODS)
    assert result["setup"]["parameter"] == "separate" and result["setup"]["kernel"] == 0.2
    for name, row in result["methods"].items():
        assert len(row["rel_curve"]) == 4, name
        if name not in ("none", "ld_ensf_latent"):  # a whole cycle holds the analysis and the solver's forecast
            assert row["s_per_full_cycle"] > row["s_per_cycle"] > 0, name
    assert 0.5 < result["methods"]["none"]["rel_end"] < 2
    assert np.isfinite(result["methods"]["ld_ensf"]["rel_end"]) and out.with_suffix(".md").exists()
    still = tmp_path / "still.json"  # the persistence baseline: the same filter, the latent unchanged between cycles
    assert twin.main(["--checkpoint", str(tmp_path / "run" / "last.pt"), "--data", str(tiny_data), "--truths", "0",
                      "--members", "4", "--cycles", "3", "--steps", "5", "--observation", "sensors", "--kernel", "0.2",
                      "--parameter", "separate", "--methods", "ld_ensf_latent", "--latent-forecast", "persistence",
                      "--json", str(still)]) == 0
    still = json.loads(still.read_text())
    assert still["setup"]["latent_forecast"] == "persistence"
    curve, moved = still["methods"]["ld_ensf_latent"]["rel_curve"], result["methods"]["ld_ensf_latent"]["rel_curve"]
    assert curve[0] == pytest.approx(moved[0]) and curve[1:] != pytest.approx(moved[1:])  # the first cycle has no forecast
    parts = benchmark("ld_ensf_components")  # the same model's parts; without a start perturbation the two ODE
    for noise in (0.0, 1.0):                 # rows agree, with one they differ; persistence is its own row
        assert parts.main(["--checkpoint", str(tmp_path / "run" / "last.pt"), "--data", str(tiny_data), "--count", "1",
                           "--start-noise", str(noise), "--json", str(tmp_path / f"parts{noise}.json")]) == 0
        row = json.loads((tmp_path / f"parts{noise}.json").read_text())
        assert (row["ode_noisy_start"] == row["ode_one_frame"]) == (noise == 0.0)
        assert row["persistence"] != row["ode_one_frame"] and all(np.isfinite(row["persistence"]))
