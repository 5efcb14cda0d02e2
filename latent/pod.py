"""Gappy POD: a linear reconstruction baseline for sparse sensors (Everson & Sirovich 1995), with
QR-pivoted sensor placement (Manohar et al. 2018, the method of PySensors' ``QR`` selector).

Kept in a few lines of torch rather than depending on PySensors: the whole method is one SVD, one
pivoted QR (``scipy.linalg.qr(pivoting=True)``) and one least-squares solve, and it then runs on
the solver's device and dtype with any sensor positions (through
:class:`solvers.observation.ObservationOperator`), not only grid points.

Fields are ``(batch, x, y)``; the basis is ``(modes, x*y)`` (orthonormal rows) about a mean field.

Sensor placement from the command line (writes a file for ``simulate.py --sensors``)::

    python -m latent.pod --data runs/train.h5 --modes 20 --count 40 --out sensors.npy
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

__all__ = ["PODBasis", "fit_pod", "posterior_ridge", "qr_sensors", "gappy_reconstruct", "ForecastErrorScale",
           "gappy_coefficients", "load_snapshots", "main"]


@dataclass(frozen=True)
class PODBasis:
    mean: torch.Tensor  # (x*y,)
    modes: torch.Tensor  # (modes, x*y), orthonormal rows
    energy: torch.Tensor  # (modes,) singular values squared / (snapshots - 1)
    shape: tuple[int, int]
    tail: float = 0.0  # variance per grid point left outside the modes (snapshot anomalies)

    def truncate(self, modes: int) -> "PODBasis":
        """The leading ``modes`` modes; the dropped ones' variance joins ``tail``."""
        dropped = float(self.energy[modes:].sum()) / self.modes.shape[1]
        return PODBasis(self.mean, self.modes[:modes], self.energy[:modes], self.shape, self.tail + dropped)

    def sensor_variance(self, sensor_rows: torch.Tensor) -> float:
        """The snapshots' variance summed over the sensors ``sensor_rows`` ``(sensors, x*y)``: ``tr(H C H^T)`` with
        ``C`` the modes' covariance plus ``tail`` on the diagonal."""
        A = sensor_rows @ self.modes.T  # (sensors, modes)
        return float((A.pow(2) * self.energy).sum()) + self.tail * sensor_rows.shape[0]

    def project(self, w: torch.Tensor) -> torch.Tensor:
        """Coefficients ``(batch, modes)`` of ``w`` ``(batch, x, y)``."""
        return (w.reshape(w.shape[0], -1) - self.mean) @ self.modes.T

    def expand(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Fields ``(batch, x, y)`` from coefficients ``(batch, modes)``."""
        return (self.mean + coeffs @ self.modes).reshape(-1, *self.shape)


def fit_pod(snapshots: torch.Tensor, modes: int) -> PODBasis:
    """The leading ``modes`` POD modes of ``snapshots`` ``(count, x, y)`` (thin SVD of the anomalies)."""
    count = snapshots.shape[0]
    if not 1 <= modes <= count:
        raise ValueError(f"need 1 <= modes <= number of snapshots ({count}), got {modes}")
    flat = snapshots.reshape(count, -1)
    mean = flat.mean(0)
    _, s, vh = torch.linalg.svd(flat - mean, full_matrices=False)
    energy = s ** 2 / max(count - 1, 1)
    return PODBasis(mean, vh[:modes], energy[:modes], tuple(snapshots.shape[1:]),
                    float(energy[modes:].sum()) / flat.shape[1])


def posterior_ridge(basis: PODBasis, noise_var: float | torch.Tensor) -> float | torch.Tensor:
    """The ``ridge`` that makes :func:`gappy_reconstruct` the posterior mean of the coefficients under the
    Gaussian prior ``N(0, diag(energy))`` the snapshots define, for sensors with noise variance ``noise_var``
    (field units squared): the noise variance plus the variance the modes leave out (``tail``), which the
    sensors see as noise too. A known noise level then needs no tuning (E1, 41 sensors, noise 0.1 x RMS:
    rel_l2 0.132 at 20 or 400 modes, against 0.142-0.275 for fixed ridges 1e-3..1e-4 at 20-41 modes)."""
    return noise_var + basis.tail  # a tensor of noise variances gives one ridge per sample


def qr_sensors(basis: PODBasis, count: int) -> torch.Tensor:
    """Grid-point indices ``(count,)`` (flattened ``x*y``) chosen by QR with column pivoting of the
    basis: the points that best condition the gappy least-squares problem."""
    if count < 1:
        raise ValueError(f"need at least one sensor, got {count}")
    _, _, pivots = scipy.linalg.qr(basis.modes.detach().cpu().double().numpy(), pivoting=True, mode="economic")
    if count > len(pivots):
        extra = np.setdiff1d(np.arange(basis.modes.shape[1]), pivots[:len(pivots)])[: count - len(pivots)]
        pivots = np.concatenate([pivots, extra])
    return torch.as_tensor(pivots[:count].copy(), device=basis.modes.device)


def gappy_reconstruct(basis: PODBasis, values: torch.Tensor, sensor_rows: torch.Tensor,
                      ridge: float | torch.Tensor = 0.0, background: torch.Tensor | None = None) -> torch.Tensor:
    """Least-squares fit of the POD coefficients to sensor ``values`` ``(batch, sensors)``, then the
    full field ``(batch, x, y)``. ``sensor_rows`` ``(sensors, x*y)`` maps a flattened field to the
    sensors (``ObservationOperator.matrix()``, or one-hot rows for grid points); ``ridge`` adds
    Tikhonov regularisation scaled by the modes' energy (for noisy or fewer-than-modes sensors; a ``(batch,)``
    tensor: one per sample).

    ``background`` ``(batch, x*y)``: fit the modes to the misfit of this field instead of the snapshots' mean
    and add them to it (with :func:`posterior_ridge`, the optimal-interpolation / 3D-Var analysis of a forecast
    with the snapshots' covariance as its error covariance; cycled with the solver it uses the sensors' history)."""
    if values.shape[-1] != sensor_rows.shape[0]:
        raise ValueError(f"{values.shape[-1]} sensor values for {sensor_rows.shape[0]} sensor rows")
    A = sensor_rows @ basis.modes.T  # (sensors, modes)
    if background is None:
        return basis.expand(gappy_coefficients(A, values - (sensor_rows @ basis.mean)[None], basis.energy, ridge))
    background = background.reshape(values.shape[0], -1)
    coeffs = gappy_coefficients(A, values - background @ sensor_rows.T, basis.energy, ridge)
    return (background + coeffs @ basis.modes).reshape(-1, *basis.shape)


class ForecastErrorScale:
    """Adaptive ``forecast_error`` for gappy POD about a forecast: the forecast's error covariance as a fraction
    ``a`` of the snapshots' (modes and ``tail``), estimated from the innovations ``d = y - H w_f`` at every analysis.
    ``E|d|^2 = a tr(H C H^T) + sensors noise_var`` (:meth:`PODBasis.sensor_variance`; innovation statistics, as in
    adaptive inflation); each estimate is clipped to ``[floor, 1]`` and a stream
    (a member, a window) uses the mean of its last ``window`` estimates. As the estimate converges the gain falls
    and the readings average out; a growing forecast error raises it again. E1 at 1 % with noise 0.1: rel_l2
    0.024-0.033 over cycles 20-39 against 0.062-0.066 for a fixed 0.3 (``benchmarks/reconstruction_history.py``)."""

    def __init__(self, basis: PODBasis, window: int = 10, floor: float = 1e-4) -> None:
        if window < 1 or not 0 < floor <= 1:
            raise ValueError(f"need window >= 1 and 0 < floor <= 1, got {window}, {floor}")
        self.basis, self.window, self.floor = basis, int(window), float(floor)
        self.history: dict = {}

    def update(self, key, innovation: torch.Tensor, noise_var: float, sensor_variance: float) -> float:
        """Add the estimate from an innovation ``(sensors,)`` to stream ``key`` and return the stream's current ``a``;
        ``sensor_variance``: :meth:`PODBasis.sensor_variance` of these sensors (fixed sensors: compute it once)."""
        count = innovation.shape[-1]
        estimate = (float(innovation.pow(2).sum()) - count * noise_var) / max(sensor_variance, 1e-300)
        value = min(max(estimate, self.floor), 1.0)
        recent = (self.history.get(key, []) + [value])[-self.window:]
        self.history[key] = recent
        return sum(recent) / len(recent)


def gappy_coefficients(A: torch.Tensor, b: torch.Tensor, energy: torch.Tensor,
                       ridge: float | torch.Tensor = 0.0) -> torch.Tensor:
    """POD coefficients ``(batch, modes)`` fitting anomalies ``b`` ``(batch, sensors)`` through the modes' values at
    the sensors ``A``, one ``(sensors, modes)`` for all or ``(batch, sensors, modes)`` per sample: least squares,
    or with ``ridge > 0`` (one, or ``(batch,)``: one per sample) Tikhonov scaled by the modes' ``energy``
    (``ridge / energy`` on the diagonal)."""
    ridge = torch.as_tensor(ridge, dtype=b.dtype, device=b.device)
    if bool((ridge > 0).all()):
        At, inverse_energy = A.transpose(-1, -2), 1 / energy.clamp_min(1e-30)
        if ridge.dim() == 0 and A.dim() == 2:  # one system, many right-hand sides
            return torch.linalg.solve(At @ A + torch.diag(ridge * inverse_energy), At @ b.T).T
        M = At @ A + torch.diag_embed(ridge.reshape(-1, 1) * inverse_energy)  # (batch or 1, modes, modes)
        return torch.linalg.solve(M, At @ b[..., None])[..., 0]
    A = A.expand(b.shape[0], -1, -1) if A.dim() == 2 else A
    return torch.linalg.lstsq(A, b[..., None]).solution[..., 0]


def load_snapshots(path, grid) -> torch.Tensor:
    """Every frame of every member of a project .h5 trajectory, or the train split's states of a pair file
    (``train_closure.py generate``), ``(count, x, y)`` float64 on ``grid``'s device."""
    import h5py

    from solvers.io import read_trajectory
    from solvers.pairs import LAYOUT, read_pairs

    try:
        with h5py.File(path, "r") as f:
            pairs = f.attrs.get("layout") in (LAYOUT, LAYOUT.encode())
    except OSError:  # missing or not HDF5: read_trajectory says which
        pairs = False
    if pairs:
        frames = read_pairs(path, "train").state.to(torch.float64)
    else:
        frames = torch.as_tensor(read_trajectory(path).vorticity, dtype=torch.float64)  # (member, time, x, y)
    if frames.shape[-1] != grid.n:
        raise ValueError(f"snapshots in {path} are {frames.shape[-1]}^2, the run is {grid.n}^2; fit the basis on a "
                         f"trajectory of this grid")
    return frames.reshape(-1, grid.n, grid.n).to(grid.device)


def main(argv: list[str] | None = None) -> int:
    """Place ``--count`` sensors by pivoted QR of the POD basis of a trajectory; write ``x, y`` positions."""
    import argparse
    import sys
    from pathlib import Path

    from solvers.grid import Grid
    from solvers.io import read_attrs, read_frame
    from solvers.observation import grid_positions

    p = argparse.ArgumentParser(prog="python -m latent.pod", description=main.__doc__)
    p.add_argument("--data", required=True, help="project .h5 trajectory (its frames are the snapshots)")
    p.add_argument("--modes", type=int, default=20, help="POD modes (default 20)")
    p.add_argument("--count", type=int, required=True, help="number of sensors")
    p.add_argument("--out", required=True, help="output .npy or .csv of x, y rows (for simulate.py --sensors)")
    args = p.parse_args(argv)
    try:
        attrs = read_attrs(args.data)
        if "grid_length" not in attrs:
            raise ValueError(f"{args.data} has no grid_length attribute: use a simulate.py output")
        grid = Grid(int(read_frame(args.data, 0).shape[-1]), float(attrs["grid_length"]), dtype=torch.float64)
        basis = fit_pod(load_snapshots(args.data, grid), args.modes)
        positions = grid_positions(grid, qr_sensors(basis, args.count)).numpy()
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, positions)
    else:
        np.savetxt(out, positions, delimiter=",", header="x, y")
    print(f"wrote {len(positions)} QR-placed sensors ({100 * len(positions) / grid.n ** 2:.3g} % of the grid) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
