"""Checkpoints (latent/checkpoint.py): atomic writes, a model rebuilt from the file alone, clear refusals."""
import math
import pickle

import pytest
import torch

from latent.checkpoint import (FORMAT, FORMAT_VERSION, compare_flows, flow_fingerprint, load_checkpoint,
                               save_checkpoint)
from latent.models import Normalization, build_model
from solvers import Grid, NavierStokes2D
from solvers.forcing import fno_forcing, kolmogorov_forcing

NORM = {"state_mean": 0.1, "state_std": 2.0, "target_mean": -0.5, "target_std": 3.0}
FLOW = {"kind": "e2", "name": "kolmogorov", "nu": 1e-3, "drag": 0.1,
        "forcing": {"kind": "kolmogorov", "params": {"k_f": 4}}}


def write(path, n=32, flow=FLOW, norm=NORM, **extra):
    torch.manual_seed(0)
    model = build_model("fno", modes=4, width=8, layers=2, hidden=16)
    return save_checkpoint(path, model=model, closure="fno", grid={"n": n, "length": 2 * math.pi}, flow=flow,
                           normalization=norm, config="epochs: 3\n", epoch=3, **extra), model


def test_round_trip_rebuilds_the_model_from_the_file_alone(tmp_path):
    path, model = write(tmp_path / "a.pt")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.loss(torch.randn(2, 32, 32), torch.randn(2, 32, 32))[0].backward()
    optimizer.step()
    save_checkpoint(path, model=model, closure="fno", grid={"n": 32, "length": 2 * math.pi}, flow=FLOW,
                    normalization=NORM, epoch=3, optimizer=optimizer, training={"best_val": 0.5})
    ckpt = load_checkpoint(path, grid=Grid(32, 2 * math.pi), flow=dict(FLOW, name="another label"), normalization=NORM)
    payload = ckpt.payload
    assert (payload["format"], payload["format_version"], ckpt.closure) == (FORMAT, FORMAT_VERSION, "fno")
    assert ckpt.epoch == 3
    assert payload["model"]["kwargs"] == {"modes": 4, "width": 8, "layers": 2, "hidden": 16}
    assert ckpt.normalization == Normalization(**NORM) and ckpt.flow == FLOW and payload["training"]["best_val"] == 0.5
    rebuilt = ckpt.build_model(dtype=torch.float64)
    x = torch.randn(3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(rebuilt(x), model.double()(x))
    fresh = torch.optim.Adam(rebuilt.parameters(), lr=1e-3)
    fresh.load_state_dict(payload["optimizer"])
    assert fresh.state_dict()["state"][0]["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # no temporary file left


def test_failed_write_leaves_the_previous_file(tmp_path):
    path, _ = write(tmp_path / "a.pt")
    with pytest.raises((pickle.PicklingError, AttributeError)):  # a lambda cannot be pickled
        write(tmp_path / "a.pt", training={"not data": lambda: 0})
    assert load_checkpoint(path).epoch == 3 and [p.name for p in tmp_path.iterdir()] == ["a.pt"]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist; train one with `python train_closure.py train"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "text", "flip"])
def test_corrupt_files_are_clear_value_errors(tmp_path, damage):
    path, _ = write(tmp_path / "a.pt")
    data = path.read_bytes()
    damaged = {"truncate": data[: len(data) // 2], "garbage": bytes(range(256)) * 4, "empty": b"",
               "text": b"hello", "flip": data[:200] + bytes(b ^ 0xFF for b in data[200:-400]) + data[-400:]}[damage]
    path.write_bytes(damaged)
    with pytest.raises(ValueError, match=r"a\.pt (is truncated|is corrupt)"):
        load_checkpoint(path)


def test_wrong_contents(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a closure checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    path, _ = write(tmp_path / "a.pt")
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "format_version": FORMAT_VERSION + 1}, tmp_path / "new.pt")
    with pytest.raises(ValueError, match=f"format version {FORMAT_VERSION + 1}.*reads version {FORMAT_VERSION}"):
        load_checkpoint(tmp_path / "new.pt")
    torch.save({k: v for k, v in payload.items() if k != "grid"}, tmp_path / "nogrid.pt")
    with pytest.raises(ValueError, match=r"lacks \['grid'\]"):
        load_checkpoint(tmp_path / "nogrid.pt")
    payload["model"]["state_dict"]["net.lift.weight"] = torch.zeros(3)
    torch.save(payload, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="cannot rebuild model 'fno'"):
        load_checkpoint(tmp_path / "weights.pt").build_model()


def test_grid_mismatch_names_both_grids(tmp_path):
    path, _ = write(tmp_path / "a.pt", n=32)
    with pytest.raises(ValueError, match=r"trained on a 32\^2 grid .* this grid is 16\^2 .*flow.n=32"):
        load_checkpoint(path, grid=Grid(16, 2 * math.pi))
    with pytest.raises(ValueError, match=r"length 6.28319, but this grid is 32\^2 of length 1; .*flow.length=6.28319"):
        load_checkpoint(path, grid=(32, 1.0))


@pytest.mark.parametrize("key, value, shown", [("nu", 2e-3, "nu: checkpoint 0.001, given 0.002"),
                                               ("drag", 0.0, "drag: checkpoint 0.1, given 0.0"),
                                               ("kind", "e1", "kind: checkpoint 'e2', given 'e1'"),
                                               ("forcing", {"kind": "fno", "params": {}}, "forcing: checkpoint")])
def test_flow_mismatch_names_the_key(tmp_path, key, value, shown):
    path, _ = write(tmp_path / "a.pt")
    with pytest.raises(ValueError, match="trained on a different flow") as info:
        load_checkpoint(path, flow={**FLOW, key: value})
    assert shown in str(info.value)
    assert compare_flows(FLOW, {key: FLOW[key]}) == []  # only known keys are compared
    assert compare_flows(FLOW, {"nu": 1e-3 * (1 + 1e-9)}) == []


def test_normalisation_mismatch(tmp_path):
    path, _ = write(tmp_path / "a.pt")
    with pytest.raises(ValueError, match=r"different normalisation \(state_std: checkpoint 2, given 2.5\)"):
        load_checkpoint(path, normalization={**NORM, "state_std": 2.5})
    with pytest.raises(ValueError, match="target_std=0.0 must be finite"):
        write(tmp_path / "b.pt", norm={**NORM, "target_std": 0.0})


def _solver(n=32, nu=1e-3, drag=0.1, forcing=kolmogorov_forcing, convection=True):
    grid = Grid(n, 2 * math.pi, dtype=torch.float32)
    forcing = forcing(grid) if forcing else None
    return grid, NavierStokes2D(grid, nu=nu, drag=drag, forcing=forcing, convection=convection)


@pytest.mark.parametrize("solver, message", [
    (dict(), None),
    (dict(n=16), r"32\^2 grid"),
    (dict(nu=5e-4), "nu: checkpoint 0.001, given 0.0005"),
    (dict(drag=0.0), "drag: checkpoint 0.1, given 0.0"),
    (dict(forcing=fno_forcing), "trained with forcing .*kolmogorov.* the solver's forcing differs"),
    (dict(forcing=None), "the solver's forcing differs"),
    (dict(convection=False), "trained on E2 pairs"),
])
def test_check_solver(tmp_path, solver, message):
    path, _ = write(tmp_path / "a.pt")
    grid, eq = _solver(**solver)
    if message is None:
        load_checkpoint(path).check_solver(grid, eq)
    else:
        with pytest.raises(ValueError, match=message):
            load_checkpoint(path).check_solver(grid, eq)


def test_e2_checkpoint_needs_the_filtered_forcing(tmp_path):
    """E2 data fingerprints record the LES's filtered forcing: the unfiltered one is refused."""
    from solvers.forcing import make_forcing

    forcing = {**FLOW["forcing"], "filter": "gaussian", "filter_width": None}
    path, _ = write(tmp_path / "a.pt", flow={**FLOW, "forcing": forcing})
    filtered = lambda grid: make_forcing(grid, "kolmogorov", filter="gaussian", **FLOW["forcing"]["params"])  # noqa: E731
    load_checkpoint(path).check_solver(*_solver(forcing=filtered))
    with pytest.raises(ValueError, match="the solver's forcing differs"):
        load_checkpoint(path).check_solver(*_solver())


def test_e2_checkpoint_needs_the_les_dealiasing_its_closure_completes(tmp_path):
    path, _ = write(tmp_path / "a.pt", flow={**FLOW, "dealias": "3/2"})
    grid, _ = _solver()
    load_checkpoint(path).check_solver(grid, NavierStokes2D(grid, nu=1e-3, drag=0.1, forcing=kolmogorov_forcing(grid),
                                                            dealias="3/2"))
    with pytest.raises(ValueError, match="3/2 dealiasing, the solver uses 2/3; set flow.dealias"):
        load_checkpoint(path).check_solver(*_solver())


def test_e1_checkpoint_needs_a_solver_without_convection(tmp_path):
    path, _ = write(tmp_path / "a.pt", flow={**FLOW, "kind": "e1"})
    with pytest.raises(ValueError, match="whole convection term.*flow.convection=false"):
        load_checkpoint(path).check_solver(*_solver())
    load_checkpoint(path).check_solver(*_solver(convection=False))


def test_flow_fingerprint_from_dataset_attributes():
    config = ("flow:\n  name: e1\n  nu: 0.001\n  drag: 0.0\n  forcing: {kind: fno, params: {amplitude: 0.1}}\n"
              "  noise: null\n  n: 64\n")
    assert flow_fingerprint({"kind": "e1", "config": config, "grid_n": 64}) == {
        "kind": "e1", "name": "e1", "nu": 1e-3, "drag": 0.0, "forcing": {"kind": "fno", "params": {"amplitude": 0.1}},
        "noise": None}
    data_config = config.replace("flow:", "kind: e1\ndns:") + "coarse: {n: 16}\n"  # solvers.datagen layout
    assert flow_fingerprint({"kind": "e1", "config": data_config})["forcing"] == {"kind": "fno",
                                                                                  "params": {"amplitude": 0.1}}
    assert flow_fingerprint({"config": "not: [valid"}) == {}
    e2 = ("kind: e2\ndns:\n  nu: 0.001\n  forcing: {kind: kolmogorov, params: {k_f: 4}}\n"
          "coarse: {n: 32, method: gaussian, width: null}\n")
    assert flow_fingerprint({"kind": "e2", "config": e2})["forcing"] == {  # the LES forces with f_bar
        "kind": "kolmogorov", "params": {"k_f": 4}, "filter": "gaussian", "filter_width": None}
