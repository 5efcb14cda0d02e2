import math

import numpy as np
import pytest
import torch

import closure
import simulate
from solvers.config import config_from_yaml, load_config
from solvers.io import read_attrs, read_group, read_trajectory
from solvers.rollout import BlowUpError, RolloutResult

# The default config (Kolmogorov flow) on a 32^2 grid with a fixed step: a few steps take milliseconds.
TINY = ["--set", "flow.n=32", "--set", "flow.dt=0.01", "--set", "record_every=2", "--device", "cpu", "--quiet"]


def run(tmp_path, *extra, name="out.h5", figures=False):
    out = tmp_path / name
    argv = [*TINY, "--out", str(out), *([] if figures else ["--no-figures"]), *extra]
    return simulate.main(argv), out


def test_default_run_writes_file_config_and_figures(tmp_path):
    code, out = run(tmp_path, "--steps", "4", figures=True)
    assert code == 0
    traj = read_trajectory(out)
    assert traj.vorticity.shape == (1, 3, 32, 32) and np.allclose(traj.time, [0.0, 0.02, 0.04])
    assert traj.attrs["status"] == "complete" and traj.attrs["grid_n"] == 32
    assert np.isfinite(traj.vorticity).all()
    cfg = config_from_yaml(traj.attrs["config"])
    assert cfg == load_config(tmp_path / "out.yaml")  # resolved config stored in both places
    assert (cfg.flow.n, cfg.flow.dt, cfg.steps, cfg.device, cfg.closure.every) == (32, 0.01, 4, "cpu", 1)
    for name in ("snapshots", "spectrum", "energy"):
        assert (tmp_path / f"out_{name}.png").stat().st_size > 0
    assert not (tmp_path / "out_ensemble.png").exists()


def test_ensemble_shape_and_figures(tmp_path):
    code, out = run(tmp_path, "--steps", "2", "--ensemble", "3", figures=True)
    assert code == 0
    traj = read_trajectory(out)
    assert traj.vorticity.shape == (3, 2, 32, 32) and traj.diagnostics["energy"].shape == (3, 2)
    assert not np.allclose(traj.vorticity[0], traj.vorticity[1])  # independent random members
    assert (tmp_path / "out_ensemble.png").stat().st_size > 0


def test_same_seed_gives_identical_vorticity(tmp_path):
    _, a = run(tmp_path, "--steps", "4", "--seed", "5", "--set", "flow.noise={sigma: 1e-3}", name="a.h5")
    _, b = run(tmp_path, "--steps", "4", "--seed", "5", "--set", "flow.noise={sigma: 1e-3}", name="b.h5")
    _, c = run(tmp_path, "--steps", "4", "--seed", "6", "--set", "flow.noise={sigma: 1e-3}", name="c.h5")
    va, vb, vc = (read_trajectory(p).vorticity for p in (a, b, c))
    assert np.array_equal(va, vb) and not np.array_equal(va, vc)


def test_reference_against_itself_is_zero(tmp_path, capsys):
    _, ref = run(tmp_path, "--steps", "4", name="ref.h5")
    capsys.readouterr()
    out = tmp_path / "cmp.h5"
    code = simulate.main([*TINY[:-1], "--steps", "4", "--out", str(out), "--no-figures", "--reference", str(ref)])
    assert code == 0
    metrics = read_group(out, "metrics")
    assert np.allclose(metrics["time"], [0.0, 0.02, 0.04])
    assert np.all(metrics["rel_l2"] == 0) and np.all(metrics["ens_mean_rel_l2"] == 0)
    assert np.all(metrics["spread"] == 0)
    printed = capsys.readouterr().out
    assert "rel_l2" in printed and "ens_mean_rel_l2" in printed and "0.0000e+00" in printed


def test_finer_reference_is_coarse_grained(tmp_path):
    # Taylor-Green (|k|^2 = 2) is an exact steady mode shape: the only difference between a 64^2
    # reference and a 32^2 run is the Gaussian filter exp(-Delta^2 |k|^2 / 24), Delta = 2 L / 32.
    tg = ["--set", "flow.forcing={kind: none}", "--set", "flow.init={kind: taylor_green, params: {k: 1}}"]
    _, ref = run(tmp_path, "--steps", "2", "--set", "flow.n=64", *tg, name="ref.h5")
    code, out = run(tmp_path, "--steps", "2", "--reference", str(ref), *tg)
    gain = math.exp(-((4 * math.pi / 32) ** 2) * 2 / 24)
    expected = (1 - gain) / gain  # ||w - g w|| / ||g w||
    assert code == 0 and np.allclose(read_group(out, "metrics")["rel_l2"], expected, rtol=1e-3)


def test_init_from_previous_output_continues(tmp_path):
    _, whole = run(tmp_path, "--steps", "8", name="whole.h5")
    _, first = run(tmp_path, "--steps", "4", name="first.h5")
    code, second = run(tmp_path, "--steps", "4", "--init", str(first), name="second.h5")
    assert code == 0
    a, b, c = (read_trajectory(p) for p in (whole, first, second))
    assert np.array_equal(c.vorticity[:, 0], b.vorticity[:, -1])  # starts from the last frame ...
    assert np.allclose(c.time, a.time[2:]) and c.attrs["t0"] == pytest.approx(0.04)  # ... at its time
    assert np.allclose(c.vorticity[:, -1], a.vorticity[:, -1], rtol=1e-4, atol=1e-4)


def test_blow_up_returns_3_and_keeps_the_last_good_state(tmp_path, capsys):
    code, out = run(tmp_path, "--steps", "50", "--set", "flow.dt=0.5", "--set", "cfl_limit=null",
                    "--set", "record_every=1")
    assert code == 3
    assert "blew up" in capsys.readouterr().err
    traj = read_trajectory(out)
    assert traj.attrs["status"] == "blew_up" and "non-finite" in traj.attrs["status_message"]
    assert traj.vorticity.shape[1] >= 2 and np.isfinite(traj.vorticity).all()


def test_blow_up_on_cfl_limit(tmp_path):
    code, out = run(tmp_path, "--steps", "4", "--set", "flow.dt=0.1", "--set", "cfl_limit=1.0",
                    "--set", "record_every=1")
    assert code == 3 and "CFL number" in read_attrs(out)["status_message"]


def test_blow_up_appends_an_unrecorded_last_good_state(tmp_path, monkeypatch):
    def blowing_rollout(w0, *args, on_record, t0, **kwargs):
        on_record(t0, w0)  # the only recorded frame; the last good state comes later
        raise BlowUpError("boom", RolloutResult(w=w0 + 1.0, t=t0 + 0.07, steps=7), w0 + 1.0, t0 + 0.07)

    monkeypatch.setattr(simulate, "rollout", blowing_rollout)
    code, out = run(tmp_path, "--steps", "10", "--set", "record_every=100")
    traj = read_trajectory(out)
    assert code == 3 and np.allclose(traj.time, [0.0, 0.07]) and traj.attrs["status"] == "blew_up"
    assert np.allclose(traj.vorticity[:, 1], traj.vorticity[:, 0] + 1.0)


def test_crash_mid_run_leaves_no_output_file(tmp_path, monkeypatch):
    def crashing_rollout(w0, *args, on_record, t0, **kwargs):
        on_record(t0, w0)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(simulate, "rollout", crashing_rollout)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run(tmp_path, "--steps", "4")
    assert not (tmp_path / "out.h5").exists() and not (tmp_path / "out.h5.tmp").exists()
    assert read_attrs(tmp_path / "out.h5.partial")["status"] == "interrupted"


def test_plugin_refusing_the_state_mid_run_exits_2_with_the_partial_file(tmp_path, monkeypatch, capsys):
    def refusing_rollout(w0, *args, on_record, t0, **kwargs):
        on_record(t0, w0)
        raise ValueError("enkf: the forecast ensemble is not finite")

    monkeypatch.setattr(simulate, "rollout", refusing_rollout)
    code, out = run(tmp_path, "--steps", "4")
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "forecast ensemble is not finite" in err and "out.h5.partial" in err
    assert read_attrs(tmp_path / "out.h5.partial")["status"] == "interrupted"


def _bad(tmp_path, capsys, *extra):
    code, out = run(tmp_path, "--steps", "2", *extra)
    assert code == 2 and not out.exists()
    return capsys.readouterr().err


def test_nan_init_is_rejected(tmp_path, capsys):
    w = np.zeros((32, 32))
    w[3, 4] = np.nan
    np.save(tmp_path / "nan.npy", w)
    err = _bad(tmp_path, capsys, "--init", str(tmp_path / "nan.npy"))
    assert "NaN" in err and "nan.npy" in err and "Traceback" not in err


def test_wrong_grid_size_init_is_rejected(tmp_path, capsys):
    np.save(tmp_path / "small.npy", np.zeros((16, 16)))
    err = _bad(tmp_path, capsys, "--init", str(tmp_path / "small.npy"))
    assert "(16, 16)" in err and "(32, 32)" in err


def test_unknown_closure_lists_the_available_ones(tmp_path, capsys):
    err = _bad(tmp_path, capsys, "--closure", "nonsense")
    assert "unknown closure 'nonsense'" in err and all(name in err for name in closure.available())


@pytest.mark.parametrize("extra,match", [
    (["--set", "flow.viscosity=1"], "unknown config key 'flow.viscosity'"),
    (["--config", "no/such.yaml"], "no/such.yaml does not exist"),
    (["--init", "no/such.npy"], "no/such.npy does not exist"),
    (["--reference", "no/such.h5"], "no/such.h5 does not exist"),
    (["--checkpoint", "model.pt"], "closure 'none' takes no checkpoint"),
    (["--init-frame", "3"], "--init-frame needs --init"),
])
def test_bad_input_exits_2_with_a_message(tmp_path, capsys, extra, match):
    assert match in _bad(tmp_path, capsys, *extra)


def test_steps_and_t_end_are_exclusive(tmp_path):
    with pytest.raises(SystemExit) as info:
        run(tmp_path, "--steps", "2", "--t-end", "1.0")
    assert info.value.code == 2


def test_help_lists_the_closures(capsys):
    with pytest.raises(SystemExit) as info:
        simulate.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert all(name in text for name in closure.available()) and "--reference" in text


def test_t_end_sets_the_number_of_steps(tmp_path):
    code, out = run(tmp_path, "--t-end", "0.05")
    assert code == 0 and read_trajectory(out).time[-1] == pytest.approx(0.05)
    assert torch.get_default_dtype() == torch.float32  # the CLI leaves global torch state alone
