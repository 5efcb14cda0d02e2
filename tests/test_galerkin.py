"""POD-Galerkin latent dynamics (issue 5): the projected vorticity equation in a model's normalised units, checked
against the solver itself, and ``ld_ensf``'s ``dynamics = "galerkin"`` option."""
from __future__ import annotations

import math

import pytest
import torch
import yaml

from latent.galerkin import VorticityTendency, check_galerkin_flow
from latent.models import build_model
from solvers import Grid, NavierStokes2D
from solvers.forcing import kolmogorov_forcing
from solvers.rollout import rollout
from test_ld_ensf import tiny_data  # noqa: F401  (fixture)
from test_training import one_thread  # noqa: F401  (autouse fixture)

N, MEAN, STD = 32, 0.3, 2.0
FORCING = {"kind": "kolmogorov", "params": {"k_f": 4, "amplitude": 1.0}}


def galerkin_model(basis: torch.Tensor):
    """A tiny ``ld_ensf`` model whose fixed linear autoencoder is ``basis`` ``(latent, N, N)`` (orthonormal rows
    over the grid, normalised units) about the normalised mean ``-MEAN / STD`` (physical mean zero)."""
    torch.manual_seed(0)
    model = build_model("ld_ensf", latent=len(basis), width=4, modes=6, hidden=16, ode_hidden=16, lstm_hidden=8, n=N,
                        sensors="regular:4x4", pod=True, freeze_autoencoder=True, dynamics="galerkin", drag=0.1,
                        forcing=FORCING, ode_substeps=8).double()
    model.fit_normalization(type("Norm", (), {"state_mean": MEAN, "state_std": STD}))
    mean = torch.full((N, N), -MEAN / STD, dtype=torch.float64)
    model.encoder.init_linear(mean.flatten(), basis.flatten(1))
    model.decoder.init_linear(mean, basis)
    return model.requires_grad_(False)


def fourier_basis(wavevectors) -> torch.Tensor:
    """cos and sin of each integer wavevector, orthonormal over the N x N grid ``(2 k, N, N)``."""
    x = torch.arange(N, dtype=torch.float64) * 2 * math.pi / N
    X, Y = torch.meshgrid(x, x, indexing="ij")
    fields = [f(kx * X + ky * Y) for kx, ky in wavevectors for f in (torch.cos, torch.sin)]
    return torch.stack([f / f.norm() for f in fields])


def physical(model, z):
    return model.decode(z) * STD + MEAN


def test_latent_galerkin_follows_the_solver_exactly_on_an_invariant_shell():
    """Fields on the |k| = 4 shell (the forcing's) stay on it: advection vanishes there, so the 4-mode Galerkin
    model is exact, and its latent forecast must match the solver's run at each member's own Re."""
    model = galerkin_model(fourier_basis([(4, 0), (0, 4)]))
    z0 = torch.tensor([[3.0, -1.0, 2.0, 0.5], [-2.0, 1.5, 0.0, 1.0]], dtype=torch.float64)
    reynolds = torch.tensor([60.0, 140.0], dtype=torch.float64)
    z1 = model.advance(z0, model.normalize_params(reynolds)[:, None], 0.4)
    grid = Grid(N, 2 * math.pi)
    eq = NavierStokes2D(grid, 0.01, 0.1, kolmogorov_forcing(grid, 4, 1.0))
    eq.set_viscosity(1.0 / reynolds)
    truth = rollout(physical(model, z0), eq, 0.002, 200).w
    assert (truth - physical(model, z0)).abs().max() > 0.1  # it moved
    assert torch.allclose(physical(model, z1), truth, atol=1e-7 * float(truth.abs().max()))


def test_latent_galerkin_tendency_is_the_projected_solver_tendency():
    """Off the shell, with advection: the latent vector field equals the projection of the solver's own change
    over a short time, ``P (w(dt) - w(0)) / dt`` (finite differences in time, extrapolated to O(dt^2))."""
    model = galerkin_model(fourier_basis([(1, 0), (0, 1), (1, 1), (2, -1), (0, 4), (3, 2)]))
    z = 60 * torch.randn(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    reynolds = torch.tensor([55.0, 100.0, 150.0], dtype=torch.float64)
    rate = model.vector_field(z, model.normalize_params(reynolds)[:, None])
    assert model._projection(z) is not None  # the band-coefficient projection, not the grid fallback
    grid = Grid(N, 2 * math.pi)
    eq = NavierStokes2D(grid, 0.01, 0.1, kolmogorov_forcing(grid, 4, 1.0))
    eq.set_viscosity(1.0 / reynolds)
    w0, dt = physical(model, z), 1e-5

    def change(steps):  # P (w(steps dt) - w(0))
        return model.encode((rollout(w0, eq, dt, steps).w - MEAN) / STD) - model.encode((w0 - MEAN) / STD)

    expected = (4 * change(1) - change(2)) / (2 * dt)  # Richardson: O(dt^2)
    eq.convection = False  # advection dominates these amplitudes: without it the rate is far off
    assert not torch.allclose(rate, change(1) / dt, atol=0.1 * float(rate.abs().max()))
    assert torch.allclose(rate, expected, atol=1e-5 * float(rate.abs().max()))


def test_the_learned_part_starts_at_zero_and_adds_to_the_projection():
    model = galerkin_model(fourier_basis([(1, 0), (0, 1)]))
    z, p = torch.randn(2, 4, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64)
    projected = model.vector_field(z, p)
    assert torch.equal(model.field(z, p), torch.zeros_like(z))
    with torch.no_grad():
        model.field.net[-1].bias.fill_(0.5)
    assert torch.allclose(model.vector_field(z, p), projected + 0.5)


def test_galerkin_options_are_checked_against_the_model_and_the_data():
    with pytest.raises(ValueError, match="freeze_autoencoder"):
        build_model("ld_ensf", latent=4, n=N, sensors="regular:4x4", dynamics="galerkin")
    with pytest.raises(ValueError, match="dynamics"):
        build_model("ld_ensf", latent=4, n=N, sensors="regular:4x4", dynamics="spectral")
    with pytest.raises(ValueError, match="forcing"):
        VorticityTendency(N, forcing={"kind": "bogus"})
    tendency = VorticityTendency(N, drag=0.1, forcing=FORCING)
    with pytest.raises(ValueError, match="std > 0"):
        tendency.set_normalization(0.0, 0.0)
    with pytest.raises(ValueError, match=r"\(batch,\)"):
        tendency(torch.zeros(2, N, N), torch.ones(3))
    flow = {"flow": {"drag": 0.1, "dt": 0.01, "forcing": FORCING}}
    attrs = {"config": yaml.safe_dump(flow)}
    check_galerkin_flow(attrs, {"drag": 0.1, "forcing": FORCING})
    with pytest.raises(ValueError, match="model.kwargs.drag=0.1"):
        check_galerkin_flow(attrs, {"drag": 0.2, "forcing": FORCING})
    with pytest.raises(ValueError, match="forcing"):
        check_galerkin_flow(attrs, {"drag": 0.1})
    noisy = {"config": yaml.safe_dump({"flow": {**flow["flow"], "noise": {"sigma": 0.1}}})}
    with pytest.raises(ValueError, match="deterministic"):
        check_galerkin_flow(noisy, {"drag": 0.1, "forcing": FORCING})
    with pytest.raises(ValueError, match="regenerate"):  # no flow recorded
        check_galerkin_flow({"config": "flow: {dt: null}"}, {"drag": 0.1, "forcing": FORCING})


def test_substeps_follow_the_flows_speed():
    """``w = A cos(3 x)`` has the speed ``|v| = |A sin(3 x) / 3|``, at most ``A / 3``; the RK4 substeps over ``dt``
    are ``ceil(dt (A / 3) k_max / CFL)`` with ``k_max = N // 3`` (box 2 pi)."""
    from latent.galerkin import CFL

    tendency = VorticityTendency(N, drag=0.1, forcing=FORCING)
    tendency.set_normalization(MEAN, STD)
    x = torch.arange(N, dtype=torch.float64) * 2 * math.pi / N
    wave = torch.cos(3 * x)[:, None].expand(N, N)
    for amplitude in (3.7, 37.0, 370.0):
        w_hat = torch.fft.rfft2(((amplitude * wave - MEAN) / STD)[None], norm="forward")
        assert float(tendency.max_speed(w_hat)) == pytest.approx(amplitude / 3, rel=1e-10)
        assert tendency.substeps(w_hat, 0.2) == math.ceil(0.2 * amplitude / 3 * (N // 3) / CFL)


def test_projection_falls_back_to_the_grid_for_rows_outside_the_band():
    """Encoder rows with energy beyond the decoder's band cannot be applied to band coefficients: the grid path,
    ``P irfft(dw_hat)``; inside the band both paths agree."""
    import torch.nn.functional as F

    model = galerkin_model(fourier_basis([(1, 0), (0, 2)]))
    z, p = torch.randn(3, 4, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64)
    band = model.vector_field(z, p)
    dw = model.tendency(model.decode(z), model.reynolds_from(p[:, 0]))
    assert torch.allclose(band, F.linear(dw.flatten(1), model.encoder.linear_weight), atol=1e-12)
    with torch.no_grad():  # one row gains a k = 8 component (the decoder keeps |k| <= 6)
        model.encoder.linear_weight[0] += fourier_basis([(8, 0)])[0].flatten()
    assert model._projection(z) is None
    assert torch.allclose(model.vector_field(z, p), F.linear(dw.flatten(1), model.encoder.linear_weight), atol=1e-12)


def test_training_a_galerkin_model_records_the_datas_units_and_checks_its_flow(tiny_data, tmp_path, capsys):
    """Through the shared pipeline: both phases run, the checkpoint's projected equations carry the data's
    normalisation, and a model whose drag is not the data's is refused naming the fix."""
    import train_closure
    from latent.checkpoint import load_checkpoint

    kwargs = ("model.kwargs={latent: 4, width: 4, modes: 6, hidden: 16, ode_hidden: 16, lstm_hidden: 8, n: 32, "
              "length: 6.283185307179586, window: 3, dynamics_epochs: 1, sensors: 'regular:4x4', pod: true, "
              "freeze_autoencoder: true, dynamics: galerkin, drag: %s, "
              "forcing: {kind: kolmogorov, params: {k_f: 4, amplitude: 1.0}}}")
    common = ["train", "--config", "configs/train_ld_ensf_galerkin.yaml", "--data", str(tiny_data), "--quiet",
              "--epochs", "2", "--set", "batch_size=2"]
    assert train_closure.main([*common, "--set", kwargs % 0.1, "--out", str(tmp_path / "run")]) == 0
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    model = ckpt.build_model()
    assert float(model.tendency.state_std) == pytest.approx(ckpt.normalization.state_std, rel=1e-6)
    assert float(model.tendency.state_mean) == pytest.approx(ckpt.normalization.state_mean, abs=1e-6)
    assert train_closure.main([*common, "--set", kwargs % 0.3, "--out", str(tmp_path / "bad")]) == 2
    assert "model.kwargs.drag=0.1" in capsys.readouterr().err
    from test_benchmarks import benchmark  # fits to the exact tendency: the projection itself fits it exactly

    fit = benchmark("latent_tendency_fit")
    out = tmp_path / "fit.json"
    assert fit.main(["--checkpoint", str(tmp_path / "run" / "last.pt"), "--data", str(tiny_data), "--width", "8",
                     "--epochs", "1", "--json", str(out)]) == 0
    import json

    rows = json.loads(out.read_text())["rows"]
    assert rows["exact"]["tendency_rel_error"] == 0 and 0 < rows["linear"]["tendency_rel_error"]
    assert set(rows) == {"persistence", "exact", "linear", "mlp 8"} and len(rows["exact"]["one_frame"]) == 1


@pytest.mark.gpu
def test_latent_galerkin_runs_on_cuda_as_on_cpu():
    """The projected equations build their grid on the codes' device: the CUDA forecast equals the CPU one."""
    model = galerkin_model(fourier_basis([(1, 0), (0, 1), (1, 1), (0, 4)]))
    z = 20 * torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    p = torch.tensor([[-0.5], [0.0], [0.7]], dtype=torch.float64)
    cpu = model.advance(z, p, 0.2)
    gpu = model.to("cuda").advance(z.cuda(), p.cuda(), 0.2)
    assert gpu.device.type == "cuda" and torch.allclose(gpu.cpu(), cpu, rtol=1e-9, atol=1e-9)
