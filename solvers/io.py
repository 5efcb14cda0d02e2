"""HDF5 trajectory files: a streaming, atomic writer and checked readers.

Layout (layout_version 1)::

    /vorticity            float32 (member, time, x, y), chunks (1, 1, x, y), gzip + shuffle
    /time                 float64 (time,), the time of each frame
    /diagnostics/energy   float64 (member, time), <|u|^2>/2 per frame   (optional)
    /diagnostics/enstrophy float64 (member, time), <w^2>/2 per frame    (optional)
    /metrics/time         float64 (k,), times compared with a reference   (optional)
    /metrics/rel_l2, /metrics/ens_mean_rel_l2, /metrics/spread   float64 (k,)   (optional)
    /assimilation/*       float64 (analyses,), the assimilation plug-ins' log (closure.assimilation)  (optional)
    /reynolds/prior, /reynolds/final   float64 (member,), each member's Re = 1/nu drawn from a plug-in's
                          reynolds_prior and at the end (joint parameter estimation)   (optional)

    root attributes:
      layout_version   1
      config           the resolved run configuration, a YAML string (solvers.config)
      grid_n, grid_length, dt, t0
      units            what the numbers mean
      code_version     solvers.__version__;  git_commit  the repository's HEAD (or "unknown")
      status           "running" while written, then "complete", "blew_up" or "interrupted"
      status_message   why a run stopped early ("" when complete)
      closure, members the plug-in name and ensemble size (written by simulate.py)

Grid points are ``x_i = i L / n`` and ``y_j = j L / n``. The writer streams frames into
``<out>.tmp`` and renames it to ``<out>`` on :meth:`TrajectoryWriter.close` (also after a
blow-up, whose last good state is the final frame); an exception inside ``with`` leaves the data
so far in ``<out>.partial`` with status ``interrupted`` and never a partial file at ``<out>``.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

__all__ = ["TrajectoryWriter", "Trajectory", "read_frame", "read_times", "read_attrs",
           "read_group", "read_trajectory", "git_commit", "atomic_write_text", "write_results", "publish_results",
           "missing_input", "UNITS"]

log = logging.getLogger(__name__)

LAYOUT_VERSION = 1
UNITS = ("nondimensional: lengths in units of the box (x in [0, L)), time in the units of nu and dt; "
         "vorticity in 1/time")


def git_commit() -> str:
    """The HEAD commit of the repository holding this package, or ``"unknown"``."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


class TrajectoryWriter:
    """Stream frames ``(member, n, n)`` of one run into ``path`` (see the module doc for the layout)."""

    def __init__(self, path: str | Path, members: int, n: int, attrs: Mapping[str, Any] | None = None,
                 compression: str = "gzip") -> None:
        from . import __version__

        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.members, self.n, self.frames, self.last_time = members, n, 0, None
        self._file = h5py.File(self.tmp, "w")
        self._file.create_dataset("vorticity", shape=(members, 0, n, n), maxshape=(members, None, n, n),
                                  dtype="float32", chunks=(1, 1, n, n), compression=compression, shuffle=True)
        self._file.create_dataset("time", shape=(0,), maxshape=(None,), dtype="float64", chunks=(256,))
        info = dict(layout_version=LAYOUT_VERSION, units=UNITS, code_version=__version__,
                    git_commit=git_commit(), status="running", status_message="")
        info.update(attrs or {})
        for key, value in info.items():
            self._file.attrs[key] = "null" if value is None else value

    def append(self, t: float, w: np.ndarray, scalars: Mapping[str, np.ndarray] | None = None) -> None:
        """Add the frame ``w`` ``(member, n, n)`` at time ``t``; ``scalars`` ``{name: (member,)}`` go to
        ``diagnostics/<name>``."""
        w = np.asarray(w, dtype=np.float32)
        if w.shape != (self.members, self.n, self.n):
            raise ValueError(f"frame has shape {w.shape}; {self.path} holds {(self.members, self.n, self.n)}")
        k = self.frames
        vort, time = self._file["vorticity"], self._file["time"]
        vort.resize(k + 1, axis=1)
        time.resize(k + 1, axis=0)
        vort[:, k] = w
        time[k] = t
        for name, values in (scalars or {}).items():
            data = self._file.require_group("diagnostics")
            if name not in data:
                data.create_dataset(name, shape=(self.members, 0), maxshape=(self.members, None),
                                    dtype="float64", chunks=(self.members, 256))
            data[name].resize(k + 1, axis=1)
            data[name][:, k] = np.asarray(values, dtype=np.float64).reshape(self.members)
        self.frames, self.last_time = k + 1, float(t)

    def write_group(self, group: str, **arrays: np.ndarray) -> None:
        """Store whole arrays under ``group/`` (e.g. ``metrics``), replacing any of the same name."""
        grp = self._file.require_group(group)
        for name, values in arrays.items():
            if name in grp:
                del grp[name]
            grp.create_dataset(name, data=np.asarray(values))

    def close(self, status: str = "complete", message: str = "") -> Path:
        """Finish the file and move it to its final path atomically; returns that path."""
        self._finish(status, message)
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self, message: str) -> Path:
        """Close with status ``interrupted`` and keep what was written as ``<out>.partial``."""
        self._finish("interrupted", message)
        partial = self.path.with_name(self.path.name + ".partial")
        os.replace(self.tmp, partial)
        log.warning("run interrupted (%s); partial data kept in %s", message, partial)
        return partial

    @property
    def closed(self) -> bool:
        return not self._file.id.valid

    def _finish(self, status: str, message: str) -> None:
        if self.closed:
            raise ValueError(f"the writer for {self.path} is already closed")
        self._file.attrs["status"] = status
        self._file.attrs["status_message"] = message
        self._file.close()

    def __enter__(self) -> "TrajectoryWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.closed:
            return
        if exc_type is None:
            self.close()
        else:
            self.abort(f"{exc_type.__name__}: {exc}")


# --------------------------------------------------------------------------------------------
# reading


@dataclass
class Trajectory:
    """A whole file in memory: ``vorticity`` ``(member, time, x, y)``, ``time`` ``(time,)``."""

    vorticity: np.ndarray
    time: np.ndarray
    attrs: dict[str, Any]
    diagnostics: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, np.ndarray] = field(default_factory=dict)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through ``<path>.tmp`` and a rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_results(path: str | Path, results: dict, table: str) -> tuple[Path, Path]:
    """A benchmark's results: ``path`` (JSON) and the markdown ``table`` beside it (``.md``), both atomically."""
    path = Path(path)
    return (atomic_write_text(path, json.dumps(results, indent=1)),
            atomic_write_text(path.with_suffix(".md"), table))


def publish_results(path: str | Path, results: dict, table: str, figure=None) -> int:
    """A benchmark's last step: print ``table``, write ``path`` (JSON) and the ``.md`` beside it (and with
    ``figure(png_path)`` the ``.png``), say what was written; returns 0, the exit status."""
    print(table)
    written = list(write_results(path, results, table))
    if figure is not None:
        written.append(Path(path).with_suffix(".png"))
        figure(written[-1])
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def missing_input(requirements) -> str | None:
    """``error: ...`` for the first ``(path, how to make it)`` whose file does not exist (``"none"``: not needed)."""
    for path, how in requirements:
        if str(path) != "none" and not Path(path).is_file():
            return f"error: {path} does not exist; {how}"
    return None


def _open(path: str | Path) -> h5py.File:
    """Open a project trajectory file, checking the layout; clear errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trajectory file {path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path} is not a readable HDF5 file ({err}); pass a file written by simulate.py") from err
    problem = None
    if "vorticity" not in f or not isinstance(f["vorticity"], h5py.Dataset):
        problem = "has no dataset 'vorticity'"
    elif f["vorticity"].ndim != 4 or f["vorticity"].shape[2] != f["vorticity"].shape[3]:
        problem = f"has 'vorticity' of shape {f['vorticity'].shape}, expected (member, time, n, n)"
    elif "time" not in f or f["time"].shape != (f["vorticity"].shape[1],):
        problem = f"needs a dataset 'time' of shape ({f['vorticity'].shape[1]},) matching the frames"
    if problem:
        f.close()
        raise ValueError(f"{path} {problem}; see solvers.io for the trajectory layout")
    return f


def read_times(path: str | Path) -> np.ndarray:
    """Frame times ``(time,)``."""
    with _open(path) as f:
        return f["time"][:]


def read_attrs(path: str | Path) -> dict[str, Any]:
    """Root attributes as plain Python values."""
    with _open(path) as f:
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}


def read_frame(path: str | Path, frame: int = -1) -> np.ndarray:
    """Vorticity at time index ``frame`` (negative counts from the end): ``(member, x, y)`` float32."""
    with _open(path) as f:
        count = f["vorticity"].shape[1]
        if not -count <= frame < count:
            raise ValueError(f"frame {frame} is out of range for {path}, which holds {count} frames "
                             f"(use 0..{count - 1} or -1 for the last)")
        return f["vorticity"][:, frame % count]


def read_group(path: str | Path, group: str) -> dict[str, np.ndarray]:
    """Every dataset of ``group`` (``"diagnostics"``, ``"metrics"``) as arrays; ``{}`` if absent."""
    with _open(path) as f:
        return {k: v[:] for k, v in f[group].items()} if group in f else {}


def read_trajectory(path: str | Path) -> Trajectory:
    """The whole file: frames, times, attributes, diagnostics and metrics."""
    with _open(path) as f:
        groups = {name: {k: v[:] for k, v in f[name].items()} if name in f else {}
                  for name in ("diagnostics", "metrics")}
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        return Trajectory(f["vorticity"][:], f["time"][:], attrs, groups["diagnostics"], groups["metrics"])
