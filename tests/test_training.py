"""The training loop (latent/training.py) through `train_closure.py train`, on a tiny 16^2 dataset (config: test_train_config.py).

The dataset's target is the exact convection term -u.grad w of its state (E1's closure target), a
smooth function of the state an FNO can learn. ``write_tiny_pairs`` is shared with the other
training tests.
"""
import csv
import math

import numpy as np
import pytest
import torch
import yaml

import simulate
import train_closure
from latent.checkpoint import load_checkpoint
from latent.train_config import load_train_config
from solvers import Grid, NavierStokes2D
from solvers.config import config_to_yaml, load_config
from solvers.forcing import kolmogorov_forcing
from solvers.initial_conditions import band_limited
from solvers.pairs import write_pairs

TINY_MODEL = "model.kwargs={modes: 5, width: 16, layers: 3, hidden: 32}"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: OpenMP threads only add overhead (and spin badly on a shared 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_tiny_pairs(path, n=16, traj=10, times=8, nu=1e-3, seed=0, kind="e1"):
    """A complete pair file: band-limited states (max speed 3, so state std ~3 and target std ~6 and
    a missing (de-)normalisation shows) on the default Kolmogorov flow's n^2 grid, targets -u.grad w;
    trajectories split train / val / test = traj-2 / 1 / 1."""
    grid = Grid(n, 2 * math.pi, dtype=torch.float64)
    eq = NavierStokes2D(grid, nu=nu, drag=0.1, forcing=kolmogorov_forcing(grid))
    w = band_limited(grid, traj * times, 1, 4, 3.0, generator=torch.Generator().manual_seed(seed))
    h = -grid.irfft(eq.advection(grid.rfft(w)))
    cfg = load_config(simulate.DEFAULT_CONFIG, {"flow.n": n, "flow.nu": nu, "flow.convection": False})
    split = np.array([0] * (traj - 2) + [1, 2])
    shape = (traj, times, n, n)
    attrs = {"config": config_to_yaml(cfg), "kind": kind, "grid_n": n, "grid_length": grid.length, "dt": 0.01}
    return write_pairs(path, w.reshape(shape).numpy(), h.reshape(shape).numpy(), np.arange(times) * 0.1, split, attrs)


def train(data, out, *extra, epochs=8):
    """Run `train_closure.py train` in-process with the tiny model; returns the exit code."""
    argv = ["train", "--closure", "fno", "--data", str(data), "--out", str(out), "--quiet", "--epochs", str(epochs),
            "--set", TINY_MODEL, "--set", "batch_size=4", "--set", "optimizer.lr=5e-3", *extra]
    return train_closure.main(argv)


def read_log(out):
    with open(out / "log.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_pairs(tmp_path_factory.mktemp("data") / "pairs.h5")


def untrained_val_loss(data, seed=0):
    from latent.models import Normalization, build_model
    from solvers.pairs import read_pairs

    val, train_split = read_pairs(data, "val"), read_pairs(data, "train")
    norm = Normalization.from_stats(train_split.stats)
    torch.manual_seed(seed)
    model = build_model("fno", modes=5, width=16, layers=3, hidden=32)
    with torch.no_grad():
        return model.loss(norm.state(val.state), norm.target(val.target))[0].item()


def test_loss_falls_ten_fold_and_outputs_are_complete(dataset, tmp_path):
    out = tmp_path / "run"
    assert train(dataset, out) == 0
    rows = read_log(out)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))
    assert list(rows[0]) == ["epoch", "train_loss", "train_mse", "val_loss", "val_mse", "lr", "samples_per_s", "wall_s"]
    val = [float(r["val_loss"]) for r in rows]
    assert val[-1] < untrained_val_loss(dataset) / 10  # the stated factor: 10x below the untrained model in 8 epochs
    assert all(float(r["samples_per_s"]) > 0 for r in rows)
    cfg = load_train_config(out / "config.yaml")
    assert (cfg.closure, cfg.device, cfg.epochs, cfg.batch_size, cfg.out) == ("fno", "cpu", 8, 4, str(out))
    assert cfg.model.kwargs == {"modes": 5, "width": 16, "layers": 3, "hidden": 32}
    last, best = load_checkpoint(out / "last.pt"), load_checkpoint(out / "best.pt")
    assert last.epoch == 8 and best.epoch == 1 + int(np.argmin(val))
    assert load_train_config(None, base=yaml.safe_load(last.payload["config"])) == cfg
    assert last.grid == {"n": 16, "length": pytest.approx(2 * math.pi)}
    assert last.flow["kind"] == "e1" and last.flow["nu"] == pytest.approx(1e-3)
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.yaml", "last.pt", "log.csv"]


def test_resume_continues_bit_for_bit(dataset, tmp_path):
    cosine = ("--set", "schedule={kind: cosine, min_lr: 1.0e-4}")
    assert train(dataset, tmp_path / "full", *cosine, epochs=5) == 0
    part = tmp_path / "part"
    assert train(dataset, part, *cosine, "--stop-after", "2", epochs=5) == 0
    assert len(read_log(part)) == 2
    assert train_closure.main(["train", "--out", str(part), "--resume", "--quiet", "--stop-after", "1"]) == 0
    assert train_closure.main(["train", "--out", str(part), "--resume", "--quiet"]) == 0
    full, resumed = read_log(tmp_path / "full"), read_log(part)
    keys = ["epoch", "train_loss", "train_mse", "val_loss", "val_mse", "lr"]
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in full]
    a, b = (load_checkpoint(p / "last.pt").payload for p in (tmp_path / "full", part))
    for key, value in a["model"]["state_dict"].items():
        assert torch.equal(value, b["model"]["state_dict"][key]), key
    assert a["optimizer"]["state"][0]["exp_avg_sq"].equal(b["optimizer"]["state"][0]["exp_avg_sq"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 5


def test_seed_fixes_the_run(dataset, tmp_path):
    runs = [read_log(tmp_path / name) for name, seed in (("a", 1), ("b", 1), ("c", 2))
            if train(dataset, tmp_path / name, "--seed", str(seed), epochs=2) == 0]
    losses = [[r["train_loss"] for r in rows] for rows in runs]
    assert losses[0] == losses[1] and losses[0] != losses[2]


def test_early_stopping(dataset, tmp_path, capsys):
    # min_delta larger than any loss: only the first epoch counts as an improvement.
    code = train(dataset, tmp_path / "run", "--set", "early_stopping={patience: 2, min_delta: 10.0}", epochs=8)
    assert code == 0 and len(read_log(tmp_path / "run")) == 3
    assert load_checkpoint(tmp_path / "run" / "best.pt").epoch == 1


def test_step_schedule_in_log(dataset, tmp_path):
    assert train(dataset, tmp_path / "run", "--set", "schedule={kind: step, step_size: 1, gamma: 0.5}", epochs=3) == 0
    assert [float(r["lr"]) for r in read_log(tmp_path / "run")] == pytest.approx([5e-3, 2.5e-3, 1.25e-3])


@pytest.mark.parametrize("extra, message", [
    (["--set", "optimiser.lr=1"], "unknown config key 'optimiser'"),
    (["--set", "model.name=unet"], "unknown model 'unet'; choose one of ['fno'"),
    (["--set", "model.kwargs={depth: 3}"], "model 'fno' got unknown argument(s) ['depth']"),
    (["--set", "schedule.kind=linear"], "unknown schedule.kind 'linear'"),
    (["--closure", "smagorinsky"], "closure 'smagorinsky' has no trainable model"),
    (["--set", "model.kwargs={modes: 12}"], "needs a grid of at least 24^2 points"),
])
def test_bad_config_is_a_clear_error(dataset, tmp_path, capsys, extra, message):
    assert train(dataset, tmp_path / "run", *extra, epochs=1) == 2
    assert message in capsys.readouterr().err


def test_dataset_errors(dataset, tmp_path, capsys):
    assert train(tmp_path / "missing.h5", tmp_path / "a", epochs=1) == 2
    assert "missing.h5 does not exist" in capsys.readouterr().err
    incomplete = write_tiny_pairs(tmp_path / "incomplete.h5", traj=3, times=2)
    import h5py

    with h5py.File(incomplete, "a") as f:
        f.attrs["status"] = "running"
    assert train(incomplete, tmp_path / "b", epochs=1) == 2
    assert "is incomplete (status='running')" in capsys.readouterr().err
    assert train_closure.main(["train", "--closure", "fno", "--out", str(tmp_path / "c"), "--quiet"]) == 2
    assert "no dataset: pass --data FILE" in capsys.readouterr().err


def test_out_dir_and_resume_errors(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(dataset, out, epochs=1) == 0
    assert train(dataset, out, epochs=1) == 2
    assert "already holds a training run; continue it with --resume" in capsys.readouterr().err
    assert train_closure.main(["train", "--out", str(tmp_path / "none"), "--resume", "--quiet"]) == 2
    assert "last.pt does not exist" in capsys.readouterr().err
    other = write_tiny_pairs(tmp_path / "nu.h5", nu=2e-3)  # same grid, another viscosity
    argv = ["train", "--out", str(out), "--resume", "--data", str(other), "--epochs", "2", "--quiet"]
    assert train_closure.main(argv) == 2
    err = capsys.readouterr().err
    assert "different flow" in err and "nu: checkpoint 0.001, given 0.002" in err
    assert train_closure.main(["train", "--out", str(out), "--resume", "--set", "model.kwargs.width=8", "--quiet"]) == 2
    assert "cannot change on --resume" in capsys.readouterr().err


def test_tensorboard_is_optional(dataset, tmp_path, capsys):
    assert train(dataset, tmp_path / "run", "--tensorboard", epochs=1) == 0
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert "the tensorboard package is not installed" in capsys.readouterr().err
    else:
        assert any((tmp_path / "run" / "tensorboard").iterdir())


def test_divergence_is_reported(dataset, tmp_path, capsys):
    assert train(dataset, tmp_path / "run", "--set", "optimizer.lr=1e15", epochs=3) == 3
    assert "the training loss became" in capsys.readouterr().err
