"""The shipped default `latent_cdm` model: it loads, matches its manifest, and improves on no closure."""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import torch

import closure
import simulate
from closure.learned import SHIPPED
from latent.checkpoint import load_checkpoint
from solvers.config import load_config
from solvers.diagnostics import rel_l2
from solvers.random import MemberRNG
from solvers.rollout import rollout
from solvers.setup import build_flow
from test_training import one_thread  # noqa: F401  (autouse fixture)

MANIFEST = SHIPPED / "latent_cdm_e1_small.json"


def test_shipped_checkpoint_matches_its_manifest():
    manifest = json.loads(MANIFEST.read_text())
    path = SHIPPED / manifest["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest["file_sha256"]
    ckpt = load_checkpoint(path)
    assert ckpt.closure == "latent_cdm" == closure.plugin_class("latent_cdm").name
    assert hashlib.sha256(ckpt.payload["config"].encode()).hexdigest() == manifest["config_sha256"]
    assert {"name": ckpt.payload["model"]["name"], "kwargs": ckpt.payload["model"]["kwargs"]} == manifest["model"]
    assert path.stat().st_size < 5e6  # a few MB at most


def test_shipped_latent_cdm_rollout_beats_no_closure():
    """200 steps of the default E1 run from the shipped held-out truth at t = 30: finite, and closer
    than `none` to the resolved 64^2 physics (which stays within ~1e-4 of the E1 truth, DESIGN.md)."""
    cfg = load_config(simulate.default_config("latent_cdm"), {"ensemble": 2})
    flow = build_flow(cfg.flow, 2, "cpu", "float32", seed=0)
    truth_flow = build_flow(replace(cfg.flow, convection=True), 1, "cpu", "float32", seed=0)
    truth = rollout(truth_flow.w0, truth_flow.equation, 1e-3, 200, stepper="euler_cn").w
    plugin = closure.make_plugin("latent_cdm", flow.grid, flow.equation)
    assert plugin.shipped
    w = rollout(flow.w0, flow.equation, 1e-3, 200, stepper="euler_cn", plugin=plugin, every=5,
                generator=MemberRNG(0, 2)).w
    bare = rollout(flow.w0, flow.equation, 1e-3, 200, stepper="euler_cn").w
    assert torch.isfinite(w).all()
    err, err_none = float(rel_l2(w.mean(0, keepdim=True), truth)), float(rel_l2(bare[:1], truth))
    assert err < 0.5 * err_none, (err, err_none)


def test_simulate_runs_latent_cdm_with_no_other_argument(tmp_path, capsys, caplog):
    caplog.set_level("INFO")
    code = simulate.main(["--closure", "latent_cdm", "--steps", "10", "--out", str(tmp_path / "run.h5")])
    assert code == 0
    out = capsys.readouterr()
    assert "e1_latent_cdm.yaml" in out.err and "shipped default model" in out.out


def test_export_writes_a_loadable_weights_file_and_a_matching_manifest(tmp_path):
    """``train_closure.py export``: weights-only copy + manifest whose hashes match, written atomically."""
    import hashlib
    import json
    import math

    from closure import make_plugin, plugin_class
    from latent.export import export
    from solvers import Grid, NavierStokes2D

    grid = Grid(32, 2 * math.pi)
    eq = NavierStokes2D(grid, nu=1e-3)
    src = plugin_class("latent_cdm").example_checkpoint(tmp_path / "src.pt", grid, eq)
    manifest = export(src, tmp_path / "out" / "model.pt", command="test")
    saved = json.loads((tmp_path / "out" / "model.json").read_text())
    assert saved == json.loads(json.dumps(manifest, default=str))
    assert saved["file_sha256"] == hashlib.sha256((tmp_path / "out" / "model.pt").read_bytes()).hexdigest()
    assert saved["closure"] == "latent_cdm" and not list((tmp_path / "out").glob("*.tmp"))
    plugin = make_plugin("latent_cdm", grid, eq, checkpoint=str(tmp_path / "out" / "model.pt"))
    assert plugin is not None
