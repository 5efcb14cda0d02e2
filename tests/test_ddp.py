"""DDP training: 2 gloo processes under torchrun follow the 1-process loss curve of the same global batch."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_closure
from latent.checkpoint import load_checkpoint
from test_training import TINY_MODEL, read_log, write_tiny_pairs

SCRIPT = Path(train_closure.__file__).resolve()
# 6 training trajectories x 6 times = 36 pairs in global batches of 5: every batch splits 3 / 2 between
# the ranks (unequal slices test the loss weighting) and the last one 1 / 0 (an empty slice).
ARGS = ["--closure", "fno", "--epochs", "3", "--set", TINY_MODEL, "--set", "batch_size=5", "--set", "optimizer.lr=1e-2"]


@pytest.mark.distributed
def test_two_gloo_processes_match_one_process(tmp_path):
    data = write_tiny_pairs(tmp_path / "pairs.h5", traj=8, times=6)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(SCRIPT),
           "train", "--data", str(data), "--out", "ddp", *ARGS]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 36 pairs (2 process(es), cpu)" in proc.stdout
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train_closure.main(["train", "--data", str(data), "--out", str(tmp_path / "one"), "--quiet", *ARGS]) == 0
    finally:
        torch.set_num_threads(threads)
    ddp, one = read_log(tmp_path / "ddp"), read_log(tmp_path / "one")
    assert len(ddp) == len(one) == 3
    for a, b in zip(ddp, one):
        for key in ("train_loss", "val_loss", "lr"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5), (a["epoch"], key)
    assert float(ddp[-1]["train_loss"]) < 0.9 * float(ddp[0]["train_loss"])  # it did learn
    w_ddp, w_one = (load_checkpoint(tmp_path / run / "last.pt").payload["model"]["state_dict"]
                    for run in ("ddp", "one"))
    flat = [torch.cat([w[k].flatten() for k in sorted(w_one)]) for w in (w_ddp, w_one)]
    assert (flat[0] - flat[1]).norm() < 2e-3 * flat[1].norm()  # Adam amplifies float32 round-off in tiny gradients
    assert len(load_checkpoint(tmp_path / "ddp" / "last.pt").payload["rng"]) == 2  # both ranks' RNG streams
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["best.pt", "config.yaml", "last.pt", "log.csv"]


@pytest.mark.distributed
def test_two_phase_latent_cdm_trains_under_ddp(tmp_path):
    """Each phase leaves one part of the model without gradients: DDP must be told (find_unused)."""
    data = write_tiny_pairs(tmp_path / "pairs.h5", traj=6, times=4)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kwargs = "model.kwargs={ae_epochs: 1, ae_channels: 4, modes: 2, width: 4, layers: 1, hidden: 8, embed: 4}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(SCRIPT),
           "train", "--closure", "latent_cdm_two_phase", "--data", str(data), "--out", "ddp", "--epochs", "2",
           "--set", kwargs, "--set", "batch_size=4"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = read_log(tmp_path / "ddp")
    assert len(log) == 2 and all(float(row["train_loss"]) > 0 for row in log)
