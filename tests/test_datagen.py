"""Closure data generation: exact targets round-trip, splits, statistics, resumable atomic writing."""
import math

import h5py
import numpy as np
import pytest
import torch
import yaml

import train_closure
from solvers import datagen
from solvers.data_config import load_data_config
from solvers.datagen import generate, make_plan
from solvers.filters import coarse_grain, e1_closure_target, les_closure_term, subsample
from solvers.pairs import SPLITS, read_attrs, read_pairs, split_stats
from solvers.stepping import make_stepper

E1 = {  # 32^2 DNS -> 16^2, 4 trajectories in 2 blocks, 3 records, 4 reference frames: ~1 s
    "kind": "e1",
    "dns": {"n": 32, "length": 1.0, "nu": 1e-3, "forcing": {"kind": "fno", "params": {"amplitude": 0.1}},
            "noise": {"alpha": 0.005, "kappa": 10, "sigma": 1e-3}, "init": {"kind": "grf", "params": {}},
            "dt": 1e-3, "stepper": "euler_cn"},
    "coarse": {"n": 16, "method": "subsample"},
    "trajectories": 4, "splits": {"train": 2, "val": 1, "test": 1}, "batch": 2,
    "record": {"start": 0.02, "end": 0.05, "dt": 0.01}, "reference": {"start": 0.0, "end": 0.06, "dt": 0.02},
    "store_dns": True, "device": "cpu", "dtype": "float32",
}
E2 = {
    "kind": "e2",
    "dns": {"n": 32, "length": "2pi", "nu": 1e-3, "drag": 0.1, "forcing": {"kind": "kolmogorov", "params": {"k_f": 4}},
            "init": {"kind": "band_limited", "params": {"k_max": 4, "max_velocity": 1.0}}, "dt": 0.01,
            "stepper": "cn_rk4"},
    "coarse": {"n": 16, "method": "gaussian"},
    "trajectories": 3, "splits": {"train": 1, "val": 1, "test": 1}, "batch": 2,
    "record": {"start": 0.1, "end": 0.4, "dt": 0.1}, "reference": {"start": 0.2, "end": 0.4, "dt": 0.1},
    "store_dns": True, "device": "cpu", "dtype": "float64",
}


@pytest.fixture(autouse=True)
def torch_fft():
    """The FFTW fast path plans with FFTW_MEASURE, whose choice (and rounding) can change from one
    plan to the next; bitwise comparisons use torch's transforms."""
    try:
        from solvers import fft_backend
    except ImportError:
        yield
        return
    before = fft_backend.get_backend()
    fft_backend.set_backend("torch")
    yield
    fft_backend.set_backend(before)


def config(tmp_path, base=E1, name="pairs.h5", **changes):
    data = yaml.safe_load(yaml.safe_dump(base)) | {"out": str(tmp_path / name)} | changes
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def make(tmp_path, base=E1, name="pairs.h5", overwrite=False, **changes):
    cfg = load_data_config(config(tmp_path, base, name, **changes))
    generate(cfg, overwrite=overwrite, progress=False)
    return tmp_path / name


def datasets(path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.update({name: obj[()]}) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_e1_target_round_trips_from_the_stored_dns(tmp_path):
    path = make(tmp_path)
    d = datasets(path)
    plan = make_plan(load_data_config(tmp_path / "pairs.h5.yaml"), "cpu")
    dns = torch.from_numpy(d["dns"])  # (traj, time, 32, 32)
    deterministic = e1_closure_target(dns, 2, plan.flow.equation).numpy()
    scale = np.abs(deterministic).max()
    np.testing.assert_allclose(d["target"] - d["target_noise"], deterministic, rtol=0, atol=1e-5 * scale)
    np.testing.assert_array_equal(d["state"], d["dns"][..., ::2, ::2])
    assert 0.01 < np.abs(d["target_noise"]).max() / scale < 100  # both parts matter in this test
    assert d["state"].shape == (4, 3, 16, 16) and np.allclose(d["time"], [0.02, 0.03, 0.04])


def test_e1_noise_part_is_the_increment_added_after_the_record(tmp_path):
    """Records every step: dns[k + 1] = step(dns[k]) + sigma dW_k and target_noise[k] = sub(sigma dW_k / dt)."""
    path = make(tmp_path, record={"start": 0.01, "end": 0.014, "dt": 0.001}, dtype="float64")
    d = datasets(path)
    plan = make_plan(load_data_config(tmp_path / "pairs.h5.yaml"), "cpu")
    grid, dt = plan.flow.grid, plan.flow.dt
    step = make_stepper("euler_cn", plan.flow.equation, dt)
    dns = torch.from_numpy(d["dns"]).double()
    added = (dns[:, 1:] - grid.irfft(step(grid.rfft(dns[:, :-1])))) / dt
    np.testing.assert_allclose(subsample(added, 2).numpy(), d["target_noise"][:, :-1], rtol=0,
                               atol=2e-3 * np.abs(d["target_noise"]).max())


def test_e2_target_is_minus_pi_of_the_stored_dns(tmp_path):
    d = datasets(make(tmp_path, E2))
    dns = torch.from_numpy(d["dns"]).double()
    pi = les_closure_term(dns, 16, "gaussian", length=2 * math.pi).numpy()
    np.testing.assert_allclose(d["target"], -pi, rtol=0, atol=1e-5 * np.abs(pi).max())
    np.testing.assert_allclose(d["state"], coarse_grain(dns, 16).numpy(), rtol=0, atol=1e-5)
    assert "target_noise" not in d and read_attrs(tmp_path / "pairs.h5")["kind"] == "e2"


@pytest.mark.parametrize("dealias", [True, "3/2"])
def test_e2_les_model_plus_stored_target_is_the_filtered_dns_tendency(tmp_path, dealias):
    """End to end: the LES that evaluation builds from the file (closure.closed_loop.coarse_flow, with
    the filtered forcing and the data's LES dealiasing) plus the stored target has the filtered DNS's
    tendency at every record."""
    from dataclasses import replace

    from closure.closed_loop import coarse_flow
    from solvers.config import FlowConfig, build_dataclass
    from solvers.setup import build_flow

    path = make(tmp_path, E2, coarse={**E2["coarse"], "dealias": dealias})
    d, attrs = datasets(path), read_attrs(path)
    les_cfg, _ = coarse_flow(attrs)
    assert les_cfg.forcing.filter == "gaussian" and les_cfg.dealias == dealias
    dns_cfg = build_dataclass(FlowConfig, yaml.safe_load(attrs["config"])["dns"], "dns.")

    def tendency(cfg, w):
        eq = build_flow(replace(cfg, init=replace(cfg.init, kind="taylor_green", params={})), 1, "cpu", "float64").equation
        w_hat = eq.grid.rfft(w)
        return eq.grid.irfft(eq.explicit_terms(w_hat) + eq.implicit_terms(w_hat))

    dns = torch.from_numpy(d["dns"]).double().flatten(0, 1)
    exact = coarse_grain(tendency(dns_cfg, dns), 16)
    model = tendency(les_cfg, torch.from_numpy(d["state"]).double().flatten(0, 1)) + \
        torch.from_numpy(d["target"]).double().flatten(0, 1)
    assert float((model - exact).abs().max()) < 1e-6 * float(exact.abs().max())  # the file stores float32
    unfiltered = tendency(replace(les_cfg, forcing=replace(les_cfg.forcing, filter="none")),
                          torch.from_numpy(d["state"]).double().flatten(0, 1))
    assert float((unfiltered - model + torch.from_numpy(d["target"]).double().flatten(0, 1)).abs().max()) > 1e-3


@pytest.mark.parametrize("base, readable", [(E1, True), (E2, False)], ids=["e1", "e2"])
def test_version_1_files_read_only_where_the_target_did_not_change(tmp_path, base, readable):
    """Layout 2 changed E2's target (no longer 2/3-dealiased): a version-1 E2 file is refused with
    the fix, a version-1 E1 file still reads."""
    path = make(tmp_path, base)
    with h5py.File(path, "r+") as f:
        f.attrs["layout_version"] = 1
    if readable:
        assert read_attrs(path)["kind"] == "e1"
    else:
        with pytest.raises(ValueError, match="old 2/3-dealiased -Pi.*regenerate"):
            read_attrs(path)


@pytest.mark.parametrize("base", [E1, E2], ids=["e1", "e2"])
def test_reference_window_holds_the_coarse_truth(tmp_path, base):
    d = datasets(make(tmp_path, base))
    shared = [t for t in d["reference/time"] if np.isclose(d["time"], t).any()]
    assert len(shared) >= 2 and d["reference/state"].shape[:2] == (base["trajectories"], len(d["reference/time"]))
    for t in shared:
        k, r = np.flatnonzero(np.isclose(d["time"], t))[0], np.flatnonzero(np.isclose(d["reference/time"], t))[0]
        np.testing.assert_array_equal(d["reference/state"][:, r], d["state"][:, k])


def test_splits_are_disjoint_whole_trajectories_and_stats_use_train_only(tmp_path):
    path = make(tmp_path)
    d = datasets(path)
    assert list(d["split"]) == [0, 0, 1, 2] and d["done"].all()
    seen = {}
    for split in SPLITS:
        pairs = read_pairs(path, split)
        assert pairs.state.shape == (len(set(pairs.trajectories)) * 3, 16, 16) == pairs.target.shape
        seen[split] = set(pairs.trajectories)
    assert seen == {"train": {0, 1}, "val": {2}, "test": {3}}
    expected = split_stats(d["state"][:2], d["target"][:2])
    assert {k: d[f"stats/{k}"] for k in expected} == pytest.approx(expected, rel=1e-12)
    assert split_stats(d["state"], d["target"])["state_std"] != pytest.approx(expected["state_std"], rel=1e-6)


def test_interrupted_generation_resumes_to_the_same_file(tmp_path, monkeypatch):
    whole = make(tmp_path, name="whole.h5")
    real, calls = datagen.simulate_batch, []

    def crash_on_second_block(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(datagen, "simulate_batch", crash_on_second_block)
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path, name="resumed.h5")
    partial = tmp_path / "resumed.h5.partial"
    assert not (tmp_path / "resumed.h5").exists()
    with h5py.File(partial, "r") as f:
        assert list(f["done"][...]) == [1, 1, 0, 0] and f.attrs["status"] == "running"
    with pytest.raises(ValueError):  # readers refuse it
        read_attrs(partial)
    monkeypatch.setattr(datagen, "simulate_batch", real)
    resumed = make(tmp_path, name="resumed.h5")
    assert len(calls) == 2 and not partial.exists()  # only the second block was simulated again
    a, b = datasets(whole), datasets(resumed)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    attrs_a, attrs_b = read_attrs(whole), read_attrs(resumed)
    assert {k: v for k, v in attrs_a.items() if k != "config"} == {k: v for k, v in attrs_b.items() if k != "config"}


def test_resume_with_another_config_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(datagen, "simulate_batch", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="different configuration.*--overwrite"):
        make(tmp_path, seed=1)
    assert read_attrs(make(tmp_path, seed=1, overwrite=True))["status"] == "complete"


def test_complete_file_is_not_overwritten_without_flag(tmp_path, capsys):
    path = config(tmp_path)
    assert train_closure.main(["generate", "--config", str(path), "--quiet"]) == 0
    before = datasets(tmp_path / "pairs.h5")
    assert train_closure.main(["generate", "--config", str(path), "--quiet", "--set", "seed=3"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err
    assert np.array_equal(datasets(tmp_path / "pairs.h5")["state"], before["state"])
    code = train_closure.main(["generate", "--config", str(path), "--set", "seed=3", "--overwrite"])
    printed = capsys.readouterr().out
    assert code == 0 and "DNS steps/s" in printed and "pairs/s" in printed
    assert not np.array_equal(datasets(tmp_path / "pairs.h5")["state"], before["state"])


def test_batch_size_changes_only_round_off(tmp_path):
    """Trajectory i's initial state and noise come from its own streams, whatever its block."""
    a = datasets(make(tmp_path, name="b1.h5", batch=1))
    b = datasets(make(tmp_path, name="b4.h5", batch=4))
    np.testing.assert_allclose(a["state"], b["state"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(a["reference/state"][:, 0], b["reference/state"][:, 0], rtol=0, atol=1e-6)  # t = 0


def test_shipped_data_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    small = load_data_config(root / "data_e1_small.yaml")
    full = load_data_config(root / "data_e1.yaml")
    assert (small.coarse.n, full.coarse.n, full.dns.n // full.coarse.n, full.trajectories) == (64, 64, 4, 100)
    assert small.record == full.record and len(make_plan(small, "cpu").times) == 200
    for name in ("data_e2_les64_small", "data_e2_les32_small", "data_e2_les64", "data_e2_les32"):
        cfg = load_data_config(root / f"{name}.yaml")
        assert cfg.kind == "e2" and cfg.coarse.method == "gaussian" and cfg.dns.noise is None
