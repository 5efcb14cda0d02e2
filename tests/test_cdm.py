"""Conditional diffusion closures: gradient routing of joint vs two-phase training, per-member
sampling, seeds, the optional loss terms and mean branch, training through the shared pipeline
(the shipped default model: test_shipped_model.py)."""
from __future__ import annotations

import pytest
import torch

import closure
import train_closure
from closure.learned import SHIPPED
from latent.checkpoint import load_checkpoint
from latent.models import build_model
from solvers import Grid, NavierStokes2D
from solvers.random import MemberRNG
from solvers.rollout import rollout
from test_training import one_thread, read_log, write_tiny_pairs  # noqa: F401  (one_thread: autouse fixture)

TINY = dict(ae_channels=4, modes=2, width=8, layers=2, hidden=16, embed=8)
MULTI = dict(TINY, levels=1, latent_channels=4, cond_channels=3)  # (16, 16) fields <-> (4 | 3, 8, 8) latents


def _batch(n=16, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, n, generator=g), torch.randn(b, n, n, generator=g)


def _encoder_grads(model, w, h):
    model.zero_grad(set_to_none=True)
    model.terms(w, h)["score"].backward()
    norm = lambda m: sum(float(p.grad.abs().sum()) for p in m.parameters() if p.grad is not None)  # noqa: E731
    return norm(model.enc_h), norm(model.enc_w), norm(model.net)


@pytest.mark.parametrize("kw", [TINY, MULTI], ids=["one-channel", "multi-channel"])
def test_joint_score_gradient_reaches_both_encoders_two_phase_does_not(kw):
    w, h = _batch()
    joint = build_model("latent_cdm", **kw)
    enc_h, enc_w, net = _encoder_grads(joint, w, h)
    assert enc_h > 0 and enc_w > 0 and net > 0
    two = build_model("latent_cdm_two_phase", ae_epochs=1, **kw)
    enc_h, enc_w, net = _encoder_grads(two, w, h)
    assert enc_h == 0 and enc_w == 0 and net > 0


def test_decoded_denoising_term_is_optional_and_trains_score_and_decoder_together():
    w, h = _batch()
    assert "decoded" not in build_model("latent_cdm", **TINY).terms(w, h)  # E1's loss by default
    model = build_model("latent_cdm", w_decoded=1.0, **MULTI)
    terms = model.terms(w, h)
    model.zero_grad(set_to_none=True)
    terms["decoded"].backward()
    grads = [sum(float(p.grad.abs().sum()) for p in m.parameters() if p.grad is not None)
             for m in (model.net, model.dec_h, model.enc_h, model.enc_w)]
    assert all(g > 0 for g in grads), grads
    _, logged = model.loss(w, h)
    assert set(logged) == {"recon_h", "recon_w", "moment", "score", "decoded"}
    with pytest.raises(ValueError, match="w_decoded"):
        build_model("latent_cdm", w_decoded=-1.0, **TINY)


def test_mean_branch_predicts_the_mean_and_the_diffusion_models_the_residual():
    w, h = _batch()
    model = build_model("latent_cdm", mean_branch=dict(modes=2, width=4, layers=1, hidden=8), **MULTI)
    terms = model.terms(w, h)
    assert set(terms) == {"mean", "recon_h", "recon_w", "moment", "score"}
    model.zero_grad(set_to_none=True)
    terms["recon_h"].backward()  # the residual's target is detached from the mean branch
    assert all(p.grad is None for p in model.mean.parameters())
    model.zero_grad(set_to_none=True)
    terms = model.terms(w, h)
    terms["mean"].backward()
    assert sum(float(p.grad.abs().sum()) for p in model.mean.parameters()) > 0
    with torch.no_grad():  # a draw is the mean plus a decoded residual
        torch.nn.init.zeros_(model.dec_h.net[-1].weight)
        torch.nn.init.zeros_(model.dec_h.net[-1].bias)
        torch.testing.assert_close(model.predict(w, torch.Generator().manual_seed(0)), model.mean(w))
    with pytest.raises(ValueError, match="mean_branch"):
        build_model("latent_cdm", mean_branch={"depth": 2}, **TINY)


def test_two_phase_trains_the_autoencoder_then_only_the_score_network():
    w, h = _batch()
    model = build_model("latent_cdm_two_phase", ae_epochs=2, **TINY)
    assert model.begin_epoch(0) is False and model.begin_epoch(1) is False
    loss, _ = model.loss(w, h)
    loss.backward()
    assert model.net.noisy.lift.weight.grad is None and model.enc_h.net[0].weight.grad is not None
    assert model.begin_epoch(2) is True  # phase 2 starts: the trainer resets its best val loss
    model.zero_grad(set_to_none=True)
    loss, terms = model.loss(w, h)
    loss.backward()
    assert model.enc_h.net[0].weight.grad is None and model.net.noisy.lift.weight.grad is not None
    assert loss.item() == pytest.approx(0.1 * float(terms["score"]))


@pytest.mark.parametrize("name, kw", [("latent_cdm", TINY), ("latent_cdm", MULTI),
                                      ("p_cdm", dict(modes=2, width=8, layers=1, hidden=8, embed=8))],
                         ids=["latent_cdm", "latent_cdm-multi-channel", "p_cdm"])
def test_members_get_their_own_samples_and_seeds_repeat(name, kw):
    model = build_model(name, **kw)
    w = _batch(b=1)[0].expand(3, -1, -1)  # three members in the same state
    with torch.no_grad():
        a = model.predict(w, MemberRNG(0, 3))
        b = model.predict(w, MemberRNG(0, 3))
        c = model.predict(w[1:2], MemberRNG(0, range(1, 2)))  # member 1 alone: the same draw
    assert a.shape == w.shape and a.dtype == w.dtype
    assert not torch.allclose(a[0], a[1]) and not torch.allclose(a[1], a[2])
    assert torch.equal(a, b)
    assert torch.allclose(a[1], c[0], atol=1e-5)


def test_multi_channel_latents_have_their_shapes_and_one_channel_keeps_the_e1_layout():
    w, h = _batch()
    multi = build_model("latent_cdm", **MULTI)
    assert multi.enc_h(h).shape == (4, 4, 8, 8) and multi.enc_w(w).shape == (4, 3, 8, 8)
    assert multi.dec_h(multi.enc_h(h)).shape == h.shape
    with torch.no_grad():
        assert multi.sample_latent(multi.enc_w(w)).shape == (4, 4, 8, 8)
    with pytest.raises(ValueError, match=r"\(batch, 4, x, y\) latents"):
        multi.dec_h(torch.zeros(4, 8, 8))
    one = build_model("latent_cdm", **TINY)  # E1 / the shipped model: (batch, x, y) latents, same parameters
    assert one.enc_h(h).shape == (4, 4, 4)
    shipped = torch.load(SHIPPED / "latent_cdm_e1_small.pt", map_location="cpu", weights_only=False)["model"]
    assert {k: v.shape for k, v in build_model("latent_cdm", **shipped["kwargs"]).state_dict().items()} == \
        {k: v.shape for k, v in shipped["state_dict"].items()}


def test_sampler_options_reach_the_model_and_bad_ones_are_refused(tmp_path):
    grid = Grid(16, 1.0)
    eq = NavierStokes2D(grid, nu=1e-3)
    cls = closure.plugin_class("latent_cdm")
    ckpt = str(cls.example_checkpoint(tmp_path / "m.pt", grid, eq))
    plugin = closure.make_plugin("latent_cdm", grid, eq, checkpoint=ckpt, sampler="heun", steps=3)
    assert plugin.predict_kwargs() == {"sampler": "heun", "steps": 3} and "heun x3" in plugin.describe()
    with pytest.raises(ValueError, match="unknown sampler 'rk45'"):
        closure.make_plugin("latent_cdm", grid, eq, checkpoint=ckpt, sampler="rk45")
    with pytest.raises(ValueError, match="trained for closure 'latent_cdm', not 'p_cdm'"):
        closure.make_plugin("p_cdm", grid, eq, checkpoint=ckpt)


def test_stochastic_ensemble_rollout_differs_per_member_and_repeats_per_seed(tmp_path):
    grid = Grid(16, 1.0, dtype=torch.float32)
    eq = NavierStokes2D(grid, nu=1e-3)
    ckpt = str(closure.plugin_class("latent_cdm").example_checkpoint(tmp_path / "m.pt", grid, eq))
    plugin = closure.make_plugin("latent_cdm", grid, eq, checkpoint=ckpt, steps=2)
    w0 = torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(0)).expand(2, -1, -1).clone()
    runs = [rollout(w0, eq, 1e-3, 10, plugin=plugin, every=5, generator=MemberRNG(seed, 2)).w for seed in (0, 0, 1)]
    assert not torch.equal(runs[0][0], runs[0][1])  # the untrained model's closure is ~1e-3: tiny differences
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_latent_cdm_and_two_phase_train_through_the_pipeline(tmp_path):
    data = write_tiny_pairs(tmp_path / "pairs.h5")
    kwargs = "{ae_channels: 4, modes: 2, width: 8, layers: 2, hidden: 16, embed: 8}"
    for name, extra in (("latent_cdm", []), ("latent_cdm_two_phase", ["--set", "model.kwargs.ae_epochs=2"])):
        out = tmp_path / name
        code = train_closure.main(["train", "--closure", name, "--data", str(data), "--out", str(out), "--quiet",
                                   "--epochs", "4", "--set", f"model.kwargs={kwargs}", "--set", "batch_size=8",
                                   *extra])
        assert code == 0
        log = read_log(out)
        assert float(log[-1]["train_recon_h"]) < float(log[0]["train_recon_h"])
        ckpt = load_checkpoint(out / "best.pt")
        assert ckpt.closure == name
    two = read_log(tmp_path / "latent_cdm_two_phase")
    assert float(two[3]["train_recon_h"]) == pytest.approx(float(two[2]["train_recon_h"]), rel=1e-4)  # AE frozen
    assert float(two[1]["train_recon_h"]) != pytest.approx(float(two[0]["train_recon_h"]), rel=1e-2)  # AE trains
    assert load_checkpoint(tmp_path / "latent_cdm_two_phase" / "best.pt").epoch >= 3  # best of phase 2


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["latent_cdm", "latent_cdm_two_phase", "p_cdm"])
def test_cdm_plugins_keep_the_contract_on_cuda(name, tmp_path):
    grid = Grid(16, 1.0, device="cuda", dtype=torch.float32)
    eq = NavierStokes2D(grid, nu=1e-3)
    ckpt = str(closure.plugin_class(name).example_checkpoint(tmp_path / "m.pt", grid, eq))
    plugin = closure.make_plugin(name, grid, eq, checkpoint=ckpt, steps=2)
    w0 = torch.randn(3, 16, 16, device="cuda")
    out = rollout(w0, eq, 1e-3, 10, plugin=plugin, every=5, generator=MemberRNG(0, 3, device="cuda")).w
    assert out.device.type == "cuda" and out.dtype == torch.float32 and out.shape == w0.shape
    assert torch.isfinite(out).all() and not torch.equal(out[0], out[1])
