"""Evaluation of plug-ins on a tiny generated E1 dataset: a-priori metrics, closed loop, outputs."""
import json

import numpy as np
import pytest
import torch
import yaml

import train_closure
from closure import Plugin, register
from closure.closed_loop import coarse_flow
from closure.evaluation import a_priori, evaluate
from solvers.data_config import load_data_config
from solvers.datagen import generate
from solvers.pairs import read_attrs, read_pairs

E1 = {  # 32^2 DNS -> 16^2, 3 trajectories (1/1/1), reference window of 6 frames
    "kind": "e1",
    "dns": {"n": 32, "length": 1.0, "nu": 1e-3, "forcing": {"kind": "fno", "params": {"amplitude": 0.1}},
            "noise": None, "init": {"kind": "grf", "params": {}}, "dt": 2e-3, "stepper": "euler_cn"},
    "coarse": {"n": 16, "method": "subsample"},
    "trajectories": 3, "splits": {"train": 1, "val": 1, "test": 1}, "batch": 3,
    "record": {"start": 0.0, "end": 0.1, "dt": 0.02}, "reference": {"start": 0.0, "end": 1.0, "dt": 0.2},
    "store_dns": False, "device": "cpu", "dtype": "float64",
}


@register("_test_coarse_convection")
class CoarseConvection(Plugin):
    """-u.grad w on the coarse grid: E1's missing physics computed from the resolved field."""

    def __call__(self, state):
        from solvers.spectral import advection

        return -state.grid.irfft(advection(state.grid.rfft(state.w), state.grid))


@pytest.fixture(scope="module")
def e1_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    path = tmp / "e1.yaml"
    path.write_text(yaml.safe_dump(E1 | {"out": str(tmp / "e1.h5")}))
    generate(load_data_config(path), progress=False)
    return tmp / "e1.h5"


def test_coarse_flow_is_e1_model_without_convection(e1_data):
    flow, dt = coarse_flow(read_attrs(e1_data))
    assert flow.n == 16 and not flow.convection and flow.noise is None and dt == pytest.approx(2e-3)


def test_a_priori_metrics(e1_data):
    from closure.closed_loop import setup_coarse as _setup

    attrs = read_attrs(e1_data)
    _, flow, _ = _setup(attrs, "cpu", "float64")
    test = read_pairs(e1_data, "test")
    none = a_priori(None, test, flow)
    assert none["rel_l2"] == pytest.approx(1.0) and none["corr"] == 0.0
    assert none["mse"] == pytest.approx(float((test.target.double() ** 2).mean()))
    physics = a_priori(CoarseConvection(flow.grid, flow.equation), test, flow)
    # the 16^2 grid misses part of the rough GRF's 32^2 content, so the coarse physics is close, not exact
    assert physics["corr"] > 0.8 and physics["rel_l2"] < 0.7 * none["rel_l2"]


def test_closed_loop_resolved_beats_none_and_outputs_are_written(e1_data, tmp_path):
    results = evaluate(e1_data, ["none", "resolved", "_test_coarse_convection"], {}, tmp_path, device="cpu",
                       dtype="float64")
    post = {k: v["a_posteriori"] for k, v in results["closures"].items()}
    assert post["none"]["ens_mean_rel_l2"][0] == pytest.approx(0.0, abs=1e-6)  # starts from the truth
    assert post["resolved"]["ens_mean_rel_l2"][-1] < 0.2 * post["none"]["ens_mean_rel_l2"][-1]
    # the plug-in computing the coarse convection is the resolved model, called every step
    np.testing.assert_allclose(post["_test_coarse_convection"]["ens_mean_rel_l2"],
                               post["resolved"]["ens_mean_rel_l2"], rtol=1e-6, atol=1e-9)
    assert post["_test_coarse_convection"]["plugin_s"] > 0
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert set(saved["closures"]) == {"none", "resolved", "_test_coarse_convection"}
    table = (tmp_path / "table.md").read_text()
    assert table.count("\n") == 2 + 3 and "ens_mean_rel_l2 t=1" in table
    assert (tmp_path / "evaluation.png").stat().st_size > 10_000


def test_labelled_runs_of_one_plugin_sit_side_by_side(e1_data, tmp_path):
    results = evaluate(e1_data, ["_test_coarse_convection", "_test_coarse_convection@again"], {}, tmp_path,
                       device="cpu", dtype="float64", t_end=0.4)["closures"]
    assert set(results) == {"_test_coarse_convection", "_test_coarse_convection@again"}
    assert results["_test_coarse_convection@again"]["a_priori"] == results["_test_coarse_convection"]["a_priori"]
    with pytest.raises(ValueError, match="unknown closure"):
        evaluate(e1_data, ["nonexistent@x"], {}, tmp_path, device="cpu", dtype="float64")


def test_cli_errors(e1_data, tmp_path, capsys):
    assert train_closure.main(["evaluate", "--data", str(e1_data), "--closure", "magic", "--out", str(tmp_path)]) == 2
    assert "unknown closure(s) ['magic']" in capsys.readouterr().err
    assert train_closure.main(["evaluate", "--data", str(e1_data), "--checkpoint", "fno", "--out", str(tmp_path)]) == 2
    assert "NAME=FILE" in capsys.readouterr().err
    assert train_closure.main(["evaluate", "--data", str(tmp_path / "nope.h5"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_split_runs_merge_into_one_table(e1_data, tmp_path):
    """Runs evaluated apart (one over a shorter window) combine into one table, in the order given."""
    evaluate(e1_data, ["none", "resolved"], {}, tmp_path / "a", device="cpu", dtype="float64")
    evaluate(e1_data, ["_test_coarse_convection"], {}, tmp_path / "b", device="cpu", dtype="float64", t_end=0.4)
    assert train_closure.main(["evaluate", "--data", str(e1_data), "--merge", str(tmp_path / "b"),
                               "--merge", str(tmp_path / "a"), "--out", str(tmp_path / "c")]) == 0
    saved = json.loads((tmp_path / "c" / "evaluation.json").read_text())
    assert list(saved["closures"]) == ["_test_coarse_convection", "none", "resolved"]
    rows = (tmp_path / "c" / "table.md").read_text().splitlines()
    assert "ens_mean_rel_l2 t=1" in rows[0]
    short = rows[2].split(" | ")  # the short run has its t = 0.4 entry, dashes after its window
    assert short[-6] == "—" and any(c.strip() not in ("—", "") for c in short[4:6])
    assert train_closure.main(["evaluate", "--data", str(e1_data), "--merge", str(tmp_path / "nope"),
                               "--out", str(tmp_path / "d")]) == 2


def test_merge_refuses_another_dataset(e1_data, tmp_path):
    from closure.evaluation_report import load_results

    evaluate(e1_data, ["none"], {}, tmp_path, device="cpu", dtype="float64")
    with pytest.raises(ValueError, match="same dataset"):
        load_results(tmp_path, {**read_attrs(e1_data), "grid_n": 32})
