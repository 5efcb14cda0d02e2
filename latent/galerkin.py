"""The vorticity equation's right-hand side in a model's normalised units: the physics of POD-Galerkin latent dynamics.

With a linear autoencoder (``ld_ensf``'s POD kept fixed: ``w = mean + D z``, ``z = P (w - mean)``, ``P D = I``)
the exact dynamics of a field in the span are ``dz/dt = P N(mean + D z; Re)``, ``N`` the solver's right-hand
side (advection, viscosity ``1 / Re``, drag, forcing): the Galerkin projection, the classical reduced-order
model. It is evaluated pseudo-spectrally, by decoding to the grid, the solver's own terms
(:class:`solvers.navier_stokes.NavierStokes2D`, 2/3 dealiasing) and projecting, so it is exact for fields the
latent represents; what it drops is the unresolved scales' effect on the resolved ones (a closure), which
``ld_ensf``'s learned vector field adds (:mod:`latent.ld_model`, ``dynamics = "galerkin"``)::

    tendency = VorticityTendency(64, 2 * math.pi, drag=0.1, forcing={"kind": "kolmogorov", "params": {"k_f": 4}})
    tendency.set_normalization(mean, std)     # the training data's: fields are (w - mean) / std
    dw_dt = tendency(w, reynolds)             # (batch, x, y) normalised, (batch,) -> (batch, x, y) normalised

Normalised units: ``w_n = (w - mean) / std`` evolves as ``dw_n/dt = N(std w_n + mean) / std``. Differentiable
(torch FFTs when autograd records), on the fields' device and dtype.
"""
from __future__ import annotations

import math

import torch
import yaml
from torch import nn

from solvers import spectral
from solvers.config import build_dataclass
from solvers.forcing import make_forcing
from solvers.grid import Grid
from solvers.navier_stokes import NavierStokes2D

__all__ = ["VorticityTendency", "check_galerkin_flow", "CFL"]

CFL = 4.0  # RK4 substeps: dt max|u| k_max / substeps at most this (VorticityTendency.substeps)


class VorticityTendency(nn.Module):
    """``dw/dt`` ``(batch, n, n)`` of normalised vorticity fields at per-field Reynolds numbers (module
    docstring). ``forcing``: ``{"kind": ..., "params": {...}}`` as a flow config's
    (:func:`solvers.forcing.make_forcing`) or None; the normalisation lives in buffers (saved with the model)."""

    def __init__(self, n: int, length: float = 2 * math.pi, drag: float = 0.0, forcing: dict | None = None) -> None:
        super().__init__()
        forcing = dict(forcing or {"kind": "none"})
        if set(forcing) - {"kind", "params"}:
            raise ValueError(f"forcing takes 'kind' and 'params', got {sorted(forcing)}")
        self.n, self.length, self.drag = int(n), float(length), float(drag)
        self.forcing = {"kind": forcing.get("kind", "none"), "params": dict(forcing.get("params") or {})}
        self._build(Grid(self.n, self.length))  # a bad forcing or drag fails at construction, not at the first step
        self.register_buffer("state_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("state_std", torch.ones((), dtype=torch.float64))
        self._cache: tuple | None = None

    def _build(self, grid: Grid) -> NavierStokes2D:
        force = make_forcing(grid, self.forcing["kind"], **self.forcing["params"])
        return NavierStokes2D(grid, 0.0, self.drag, force)

    @torch.no_grad()
    def set_normalization(self, mean: float, std: float) -> None:
        """Fields are ``(w - mean) / std`` (the training data's state normalisation)."""
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ValueError(f"need a finite mean and std > 0, got {mean}, {std}")
        self.state_mean.fill_(mean)
        self.state_std.fill_(std)

    def equation(self, like: torch.Tensor) -> tuple[Grid, NavierStokes2D]:
        """The grid and equation on ``like``'s device and dtype (built once per device and dtype)."""
        key = (like.device, like.dtype)
        if self._cache is None or self._cache[0] != key:
            grid = Grid(self.n, self.length, device=like.device, dtype=like.dtype)
            self._cache = (key, grid, self._build(grid))
        return self._cache[1], self._cache[2]

    def max_speed(self, w_hat: torch.Tensor) -> torch.Tensor:
        """The largest velocity magnitude ``(batch,)``, physical units, of normalised fields given by their rfft2
        arrays (``norm="forward"``) ``(batch, n, n // 2 + 1)`` (the mean adds no velocity)."""
        grid, _ = self.equation(w_hat.real)
        u_hat, v_hat = spectral.velocity_hat(w_hat * self.state_std.to(w_hat.real.dtype), grid)
        return (grid.irfft(u_hat).pow(2) + grid.irfft(v_hat).pow(2)).sqrt().amax((-2, -1))

    def substeps(self, w_hat: torch.Tensor, dt: float, cfl: float = CFL) -> int:
        """RK4 steps over ``dt`` for fields ``w_hat`` (as :meth:`max_speed`): ``dt max|u| k_max / substeps <= cfl`` with
        ``k_max`` the 2/3 rule's largest wavenumber (``CFL`` 4, above RK4's 2.8 on the imaginary axis because the
        fields' energy sits well below ``k_max``: on the E3 training frames, whose speed reaches 9, 8 steps per
        0.2 time units never blew up in four-frame rollouts and 4 did on 5 of 150 trajectories)."""
        k_max = (self.n // 3) * 2 * math.pi / self.length
        return max(1, math.ceil(dt * float(self.max_speed(w_hat).max()) * k_max / cfl))
    def forward(self, w: torch.Tensor, reynolds: torch.Tensor) -> torch.Tensor:
        if w.shape[-2:] != (self.n, self.n) or w.dim() != 3 or reynolds.shape != w.shape[:1]:
            raise ValueError(f"need fields (batch, {self.n}, {self.n}) and one Re each (batch,); got "
                             f"{tuple(w.shape)} and {tuple(reynolds.shape)}")
        grid, _ = self.equation(w)
        return grid.irfft(self.spectral(grid.rfft(w), reynolds))

    def spectral(self, w_hat: torch.Tensor, reynolds: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` on rfft2 arrays (``norm="forward"``) ``(batch, n, n // 2 + 1)``: no transforms of the
        input or output (the latent model's spectral decoder and projection use them directly)."""
        if w_hat.shape[-2:] != (self.n, self.n // 2 + 1) or w_hat.dim() != 3 or reynolds.shape != w_hat.shape[:1]:
            raise ValueError(f"need rfft2 arrays (batch, {self.n}, {self.n // 2 + 1}) and one Re each (batch,); got "
                             f"{tuple(w_hat.shape)} and {tuple(reynolds.shape)}")
        grid, eq = self.equation(w_hat.real)
        eq.set_viscosity(1.0 / reynolds.detach().to(torch.float64))
        dtype = w_hat.real.dtype
        mean, std = self.state_mean.to(dtype), self.state_std.to(dtype)
        offset = torch.zeros(w_hat.shape[-2:], dtype=w_hat.dtype, device=w_hat.device)
        offset[0, 0] = mean
        w_hat = w_hat * std + offset
        return (eq.explicit_terms(w_hat) + eq.implicit_terms(w_hat)) / std


def check_galerkin_flow(attrs: dict, kwargs: dict) -> None:
    """``ValueError`` naming the ``--set`` fix unless the model kwargs' ``drag`` and ``forcing`` are those of the
    dataset's flow (root ``attrs``' resolved config), which must be deterministic and 2/3-dealiased: the projected
    equations must be the ones that made the data."""
    from solvers.parametric import ParametricConfig

    try:
        flow = build_dataclass(ParametricConfig, yaml.safe_load(attrs.get("config") or "")).flow
    except (ValueError, TypeError, yaml.YAMLError) as err:
        raise ValueError(f"dynamics 'galerkin' needs the data's flow (drag, forcing), but its recorded config does not "
                         f"read ({err}); regenerate it with train_closure.py generate-parametric") from None
    if flow.noise or flow.dealias not in (True, "2/3") or flow.forcing.filter != "none":
        raise ValueError("dynamics 'galerkin' projects a deterministic, 2/3-dealiased flow with an unfiltered forcing; "
                         f"this data's flow has noise {flow.noise}, dealias {flow.dealias}, forcing filter "
                         f"{flow.forcing.filter}: use model.kwargs.dynamics=neural")

    def floats(params):
        return {k: float(v) for k, v in (params or {}).items()}

    spec = kwargs.get("forcing") or {}
    want = {"drag": float(flow.drag), "forcing": {"kind": flow.forcing.kind, "params": floats(flow.forcing.params)}}
    given = {"drag": float(kwargs.get("drag", 0.0)),
             "forcing": {"kind": spec.get("kind", "none"), "params": floats(spec.get("params"))}}
    if want != given:
        raise ValueError(f"dynamics 'galerkin' must project the data's equations: the data has drag {want['drag']} and "
                         f"forcing {want['forcing']}, the model {given['drag']} and {given['forcing']}; set "
                         f"model.kwargs.drag={want['drag']} and model.kwargs.forcing to the data's")
