"""FNO building blocks (latent/fno.py), the `fno` model and the `fno` plug-in (closure/fno.py)."""
import math

import numpy as np
import pytest
import torch

import simulate
import train_closure
from closure import make_plugin
from latent.fno import FNO2d, SpectralConv2d
from latent.models import build_model
from solvers import Grid, NavierStokes2D
from solvers.forcing import kolmogorov_forcing
from solvers.initial_conditions import band_limited
from solvers.io import read_trajectory
from solvers.pairs import read_pairs
from solvers.rollout import FlowState
from test_training import one_thread, write_tiny_pairs  # noqa: F401  (one_thread: autouse fixture)


def net(**kwargs) -> FNO2d:
    torch.manual_seed(0)
    return FNO2d(**{"modes": 6, "width": 16, "layers": 4, "hidden": 32, **kwargs}).double()


def smooth(n: int, batch: int = 3) -> torch.Tensor:
    """Band-limited fields sampled on n^2: one continuous function for every n (same seed, 64^2 base)."""
    w = band_limited(Grid(64, 2 * math.pi), batch, 1, 4, 1.0, generator=torch.Generator().manual_seed(0))
    return w[:, :: 64 // n, :: 64 // n]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("shape, channels, out_shape", [((2, 16, 16), (1, 1), (2, 16, 16)),
                                                         ((2, 1, 16, 16), (1, 1), (2, 1, 16, 16)),
                                                         ((2, 2, 16, 24), (2, 3), (2, 3, 16, 24))])
def test_shapes(shape, channels, out_shape):
    model = net(in_channels=channels[0], out_channels=channels[1], modes=4)
    assert model(torch.randn(shape, dtype=torch.float64)).shape == out_shape


def test_shape_errors():
    with pytest.raises(ValueError, match=r"modes=6 needs a grid of at least 12\^2 points, got 8x8"):
        net()(torch.randn(1, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expects \(batch, 2, x, y\), got \(1, 16, 16\)"):
        net(in_channels=2)(torch.randn(1, 16, 16, dtype=torch.float64))


def test_spectral_layer_is_the_fourier_layer_definition():
    """Equals rfft2 -> multiply modes |k_x| < m, 0 <= k_y < m by R(k), zero the rest -> irfft2."""
    torch.manual_seed(0)
    m, layer = 5, SpectralConv2d(3, 4, 5).double()
    v = torch.randn(2, 3, 16, 20, dtype=torch.float64)
    v_hat, r = torch.fft.rfft2(v, norm="forward"), torch.view_as_complex(layer.weight)
    out = v_hat.new_zeros(2, 4, 16, 11)
    out[..., :m, :m] = torch.einsum("bixy,xyio->boxy", v_hat[..., :m, :m], r[:m])
    out[..., -(m - 1):, :m] = torch.einsum("bixy,xyio->boxy", v_hat[..., -(m - 1):, :m], r[m:])
    torch.testing.assert_close(layer(v), torch.fft.irfft2(out, s=(16, 20), norm="forward"), atol=1e-13, rtol=0)
    x = torch.arange(16, dtype=torch.float64)[:, None] * 2 * math.pi / 16
    assert layer(torch.cos(m * x).expand(1, 3, 16, 20)).abs().max() < 1e-13  # |k_x| = m: outside the band
    assert layer(torch.cos((m - 1) * x).expand(1, 3, 16, 20)).abs().max() > 1e-3  # |k_x| = m - 1: inside


@pytest.mark.parametrize("shift", [(1, 0), (0, 3), (5, 7)])
def test_translation_equivariance(shift):
    """Shifting the input by whole grid points shifts the output the same way (periodic grid)."""
    model, w = net(), smooth(32)
    rolled_out = model(torch.roll(w, shift, dims=(-2, -1)))
    torch.testing.assert_close(rolled_out, torch.roll(model(w), shift, dims=(-2, -1)), atol=1e-12, rtol=0)
    assert (rolled_out - model(w)).abs().max() > 1e-3  # the output does depend on position


def test_resolution_consistency():
    """One set of weights on 16^2, 32^2, 64^2 samples of one smooth field gives samples of one output field."""
    model = net()
    out = {n: model(smooth(n)) for n in (16, 32, 64)}
    assert rel(out[32], out[64][:, ::2, ::2]) < 1e-6
    assert rel(out[16], out[64][:, ::4, ::4]) < 1e-3  # only the GELU harmonics alias at 16^2
    layer = SpectralConv2d(1, 2, 6).double()
    coarse, fine = layer(smooth(16)[:, None]), layer(smooth(64)[:, None])
    torch.testing.assert_close(coarse, fine[..., ::4, ::4], atol=1e-12, rtol=0)
    conv = torch.nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular").double()  # a grid-bound operator fails this
    assert rel(conv(smooth(32)[:, None]), conv(smooth(64)[:, None])[..., ::2, ::2]) > 0.05


def test_every_parameter_is_trained():
    model = build_model("fno", modes=4, width=8, layers=2, hidden=16)
    model.loss(torch.randn(2, 16, 16), torch.randn(2, 16, 16))[0].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert model.spec == {"name": "fno", "kwargs": {"modes": 4, "width": 8, "layers": 2, "hidden": 16}}
    assert build_model("fno").spec["kwargs"] == {"modes": 12, "width": 32, "layers": 4, "hidden": 128}


# --------------------------------------------------------------------------------------------
# the plug-in


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data file, checkpoint) of a tiny FNO trained 8 epochs on 16^2 E1-style pairs (target -u.grad w)."""
    root = tmp_path_factory.mktemp("fno")
    data = write_tiny_pairs(root / "pairs.h5")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    argv = ["train", "--closure", "fno", "--data", str(data), "--out", str(root / "run"), "--quiet", "--epochs", "8",
            "--set", "model.kwargs={modes: 5, width: 16, layers: 3, hidden: 32}", "--set", "batch_size=4",
            "--set", "optimizer.lr=5e-3"]
    try:
        assert train_closure.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return data, root / "run" / "best.pt"


def solver(n=16, nu=1e-3, convection=False, dtype=torch.float32):
    grid = Grid(n, 2 * math.pi, dtype=dtype)
    return grid, NavierStokes2D(grid, nu=nu, drag=0.1, forcing=kolmogorov_forcing(grid), convection=convection)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_plugin_predicts_the_closure_on_held_out_states(trained, dtype):
    data, ckpt = trained
    grid, eq = solver(dtype=dtype)
    plugin = make_plugin("fno", grid, eq, checkpoint=str(ckpt))
    test = read_pairs(data, "test")
    w = test.state.to(dtype)
    out = plugin(FlowState(w=w, t=0.0, step=0, dt=0.01, grid=grid, equation=eq))
    assert out.shape == w.shape and out.dtype == dtype and out.device == w.device and torch.isfinite(out).all()
    assert rel(out.double(), test.target.double()) < 0.35  # ~0.19; a missing (de-)normalisation gives > 0.8
    assert "checkpoint" in plugin.describe()


def test_plugin_needs_a_checkpoint():
    grid, eq = solver()
    with pytest.raises(ValueError, match=r"needs a trained model: pass --checkpoint FILE.*train_closure.py train"):
        make_plugin("fno", grid, eq)


@pytest.mark.parametrize("setup, message", [(dict(n=32), r"trained on a 16\^2 grid"),
                                            (dict(nu=1e-4), "nu: checkpoint 0.001, given 0.0001"),
                                            (dict(convection=True), "whole convection term")])
def test_plugin_refuses_another_flow(trained, setup, message):
    grid, eq = solver(**setup)
    with pytest.raises(ValueError, match=message):
        make_plugin("fno", grid, eq, checkpoint=str(trained[1]))


def test_simulate_runs_the_trained_closure(trained, tmp_path, capsys):
    out = tmp_path / "run.h5"
    argv = ["--closure", "fno", "--checkpoint", str(trained[1]), "--set", "flow.n=16", "--set", "flow.convection=false",
            "--set", "flow.dt=0.01", "--set", "record_every=2", "--steps", "4", "--device", "cpu", "--quiet",
            "--no-figures", "--out", str(out)]
    assert simulate.main(argv) == 0
    traj = read_trajectory(out)
    assert traj.vorticity.shape == (1, 3, 16, 16) and np.isfinite(traj.vorticity).all()
    assert "fno" in traj.attrs["config"] and str(trained[1]) in traj.attrs["config"]
    assert simulate.main([a for a in argv if a not in ("--checkpoint", str(trained[1]))]) == 2
    assert "needs a trained model" in capsys.readouterr().err
