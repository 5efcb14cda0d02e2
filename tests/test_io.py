import json

import h5py
import numpy as np
import pytest
import torch

import solvers
from solvers import Grid
from solvers.config import config_from_yaml, config_to_yaml, load_config
from solvers.initial_conditions import from_file
from solvers.io import TrajectoryWriter, read_attrs, read_frame, read_group, read_times, read_trajectory


def _write(path, members=2, frames=3, n=8, attrs=None):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((members, frames, n, n)).astype(np.float32)
    with TrajectoryWriter(path, members, n, attrs or {}) as writer:
        for k in range(frames):
            writer.append(0.5 * k, data[:, k], {"energy": np.arange(members) + k})
    return data


def test_round_trip_is_exact(tmp_path):
    data = _write(tmp_path / "t.h5")
    traj = read_trajectory(tmp_path / "t.h5")
    assert traj.vorticity.dtype == np.float32 and np.array_equal(traj.vorticity, data)
    assert np.array_equal(traj.time, [0.0, 0.5, 1.0])
    assert np.array_equal(read_frame(tmp_path / "t.h5", 1), data[:, 1])
    assert np.array_equal(read_frame(tmp_path / "t.h5", -1), data[:, -1])
    assert np.array_equal(traj.diagnostics["energy"], [[0, 1, 2], [1, 2, 3]])
    assert traj.attrs["status"] == "complete" and traj.attrs["code_version"] == solvers.__version__
    assert "git_commit" in traj.attrs and "units" in traj.attrs


def test_layout_is_chunked_per_frame_and_compressed(tmp_path):
    _write(tmp_path / "t.h5", members=2, frames=2, n=8)
    with h5py.File(tmp_path / "t.h5") as f:
        assert f["vorticity"].chunks == (1, 1, 8, 8) and f["vorticity"].compression is not None
        assert f["vorticity"].maxshape == (2, None, 8, 8)


def test_attributes_hold_a_config_that_reloads_equal(tmp_path):
    cfg = load_config(None, ["flow.n=8", "flow.length=2pi", "steps=3", "flow.noise={sigma: 1e-4}"])
    _write(tmp_path / "t.h5", attrs={"config": config_to_yaml(cfg), "grid_n": 8, "dt": 0.01})
    attrs = read_attrs(tmp_path / "t.h5")
    assert config_from_yaml(attrs["config"]) == cfg and attrs["grid_n"] == 8 and attrs["dt"] == 0.01


def test_groups_are_stored(tmp_path):
    with TrajectoryWriter(tmp_path / "t.h5", 1, 8) as writer:
        writer.append(0.0, np.zeros((1, 8, 8)))
        writer.write_group("metrics", time=np.array([0.0]), rel_l2=np.array([0.25]))
    assert read_group(tmp_path / "t.h5", "metrics")["rel_l2"].tolist() == [0.25]
    assert read_group(tmp_path / "t.h5", "nothing") == {}


def test_final_path_appears_only_on_close(tmp_path):
    path = tmp_path / "t.h5"
    writer = TrajectoryWriter(path, 1, 8)
    writer.append(0.0, np.zeros((1, 8, 8)))
    assert not path.exists() and writer.tmp.exists()
    writer.close("blew_up", "because")
    assert path.exists() and not writer.tmp.exists()
    assert read_attrs(path)["status"] == "blew_up" and read_attrs(path)["status_message"] == "because"


def test_exception_leaves_no_file_at_the_final_path(tmp_path):
    path = tmp_path / "t.h5"
    with pytest.raises(RuntimeError, match="boom"):
        with TrajectoryWriter(path, 1, 8) as writer:
            writer.append(0.0, np.ones((1, 8, 8)))
            raise RuntimeError("boom")
    partial = tmp_path / "t.h5.partial"
    assert not path.exists() and not writer.tmp.exists() and partial.exists()
    assert read_attrs(partial)["status"] == "interrupted" and "boom" in read_attrs(partial)["status_message"]
    assert np.array_equal(read_frame(partial, 0), np.ones((1, 8, 8)))


def test_append_rejects_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match=r"frame has shape \(1, 4, 4\)"):
        with TrajectoryWriter(tmp_path / "t.h5", 1, 8) as writer:
            writer.append(0.0, np.zeros((1, 4, 4)))


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        read_frame("missing.h5")


def test_not_hdf5(tmp_path):
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="junk.h5 is not a readable HDF5 file"):
        read_times(tmp_path / "junk.h5")


@pytest.mark.parametrize("build,match", [
    (lambda f: f.create_dataset("time", data=[0.0]), "no dataset 'vorticity'"),
    (lambda f: f.create_dataset("vorticity", data=np.zeros((2, 8, 8))), "expected \\(member, time, n, n\\)"),
    (lambda f: f.create_dataset("vorticity", data=np.zeros((1, 2, 8, 8))), "needs a dataset 'time' of shape \\(2,\\)"),
])
def test_malformed_files_are_named(tmp_path, build, match):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        build(f)
    with pytest.raises(ValueError, match=match) as info:
        read_trajectory(path)
    assert "bad.h5" in str(info.value)


def test_frame_out_of_range(tmp_path):
    _write(tmp_path / "t.h5", frames=3)
    with pytest.raises(ValueError, match="frame 3 is out of range.*3 frames"):
        read_frame(tmp_path / "t.h5", 3)


def test_initial_conditions_from_file_reads_a_frame(tmp_path):
    data = _write(tmp_path / "t.h5", members=2, frames=3, n=8)
    w = from_file(tmp_path / "t.h5", Grid(8, dtype=torch.float32), frame=1)
    assert w.shape == (2, 8, 8) and np.array_equal(w.numpy(), data[:, 1])


def test_published_results_are_printed_written_and_listed(tmp_path, capsys):
    from solvers.io import missing_input, publish_results

    drawn = []
    out = tmp_path / "bench.json"
    assert publish_results(out, {"a": 1}, "| a |\n", figure=lambda png: drawn.append(png) or png.write_bytes(b"x")) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| a |") and f"wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')}" in printed
    assert json.loads(out.read_text()) == {"a": 1} and out.with_suffix(".md").read_text() == "| a |\n"
    assert drawn == [out.with_suffix(".png")]
    assert missing_input([(out, "x"), ("none", "not needed")]) is None
    assert missing_input([(out, "x"), (tmp_path / "no.h5", "make it with `y`")]) == \
        f"error: {tmp_path / 'no.h5'} does not exist; make it with `y`"
