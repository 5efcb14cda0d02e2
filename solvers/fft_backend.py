"""Optional CPU fast path for :class:`~solvers.navier_stokes.NavierStokes2D`: FFTW + numba.

The torch path runs a stage of the low-storage IMEX stepper as ~15 tensor operations, each
allocating and sweeping memory. Here a stage runs on preallocated, aligned buffers
(:mod:`solvers.fft_workspace`) as

    spread   w_hat -> (w, u, v)_hat                               (numba, one pass)
    inverse  c2c along x on the kept columns, then c2r along y     (FFTW plans)
    product  (u w, v w) in place of (u, v)                        (numba, one pass)
    forward  r2c along y, then c2c along x on the kept columns     (FFTW plans)
    stage    h = -div(flux) + f + gamma h;  u = a u + b h          (numba, one pass)

The 2/3 rule zeroes the columns ``ky >= n / 3`` of every spectral operand, so the x-transforms
skip them ("pruned" 2D transforms: 1/6 fewer flops than full ones). Operators are read from the
equation's own tensors, so results equal the torch path to round-off, and they do not depend on
the thread count or on the rest of an ensemble. The path is taken for CPU tensors that need no
gradient when pyfftw and numba are installed and the backend (:func:`set_backend` or the
``NS_FFT_BACKEND`` environment variable) is ``"auto"`` or ``"fftw"``. Buffers are cached per
equation, so one equation must not be stepped from several threads at once. FFTW picks its
algorithms by a fixed heuristic (planner ``"estimate"``, the default: bitwise reproducible from
run to run) unless the planner (:func:`set_planner`, ``NS_FFTW_PLANNER``) is ``"measure"``
(timed: up to 30 % faster, but processes may differ at round-off): see :func:`set_planner`.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import torch

from . import fft_workspace
from .fft_workspace import Workspace, as_array, each_member, halves, real_view

__all__ = ["BACKENDS", "PLANNERS", "set_backend", "get_backend", "set_planner", "get_planner", "fftw_available",
           "uses_fftw", "fuses_step", "full_plans", "explicit_terms", "LowStorageStep", "padded_flux"]

BACKENDS = ("auto", "torch", "fftw")
PLANNERS = ("measure", "estimate")
_state = {"backend": os.environ.get("NS_FFT_BACKEND", "auto"), "planner": os.environ.get("NS_FFTW_PLANNER", "estimate")}
_AVAILABLE = all(importlib.util.find_spec(name) is not None for name in ("pyfftw", "numba"))


def set_backend(name: str) -> None:
    """Choose the CPU transform backend: ``"auto"`` (FFTW when available), ``"torch"`` or ``"fftw"``."""
    if name not in BACKENDS:
        raise ValueError(f"unknown FFT backend {name!r}; choose one of {list(BACKENDS)}")
    if name == "fftw" and not _AVAILABLE:
        raise ValueError("FFT backend 'fftw' needs pyfftw and numba: pip install -e '.[fast]'")
    _state["backend"] = name


def get_backend() -> str:
    return _state["backend"]


def set_planner(name: str) -> None:
    """How FFTW picks algorithms for plans made from now on: ``"measure"`` (by timing them: fastest,
    but two processes may pick differently and differ at round-off, which chaotic flows amplify) or
    ``"estimate"`` (by a fixed heuristic: bitwise reproducible run to run, 0-30 % slower). Set it
    before the first plan of the process: FFTW reuses what it has measured."""
    if name not in PLANNERS:
        raise ValueError(f"unknown FFTW planner {name!r}; choose one of {list(PLANNERS)}")
    _state["planner"] = name


def get_planner() -> str:
    return _state["planner"]


def fftw_available() -> bool:
    return _AVAILABLE


def _fftw_enabled() -> bool:
    """FFTW is installed and the backend allows it (a bad ``NS_FFT_BACKEND`` value raises, naming it)."""
    backend = _state["backend"]
    if backend not in BACKENDS or (backend == "fftw" and not _AVAILABLE):
        set_backend(backend)
    return backend != "torch" and _AVAILABLE


def uses_fftw(equation, w_hat: torch.Tensor, extra_hat: torch.Tensor | None = None) -> bool:
    """Whether the fast path applies: CPU, FFTW enabled, no autograd, shapes and dtypes as the grid's."""
    grid = equation.grid
    if not _fftw_enabled() or not equation.convection or grid.device.type != "cpu":
        return False
    if getattr(equation, "dealias", "2/3") == "3/2":  # the padded product: padded_flux instead
        return False
    grad = torch.is_grad_enabled()
    for t in (w_hat, extra_hat):
        if t is not None and (t.device.type != "cpu" or t.dtype != grid.complex_dtype or (grad and t.requires_grad)):
            return False
    if tuple(w_hat.shape[-2:]) != grid.spectral_shape:
        return False
    return extra_hat is None or torch.broadcast_shapes(extra_hat.shape, w_hat.shape) == w_hat.shape


_PADDED_PLANS: dict = {}


def padded_flux(fields_hat: torch.Tensor, n_fine: int) -> torch.Tensor | None:
    """The 3/2 rule's product by FFTW: ``(w, u, v)_hat`` on the padded grid ``(..., 3, n_fine, n_fine//2+1)``
    -> ``(u w, v w)_hat`` ``(..., 2, n_fine, n_fine//2+1)``, forward-normalised like :class:`~solvers.grid.Grid`;
    ``None`` where the torch path must run (backend "torch", no pyfftw, not CPU, or a gradient needed)."""
    if not _fftw_enabled() or fields_hat.device.type != "cpu" or (torch.is_grad_enabled() and fields_hat.requires_grad):
        return None
    import pyfftw.builders

    shape, dtype = tuple(fields_hat.shape), fields_hat.dtype
    key = (shape, dtype, _planner())
    if key not in _PADDED_PLANS:
        spec = np.zeros(shape, dtype=np.complex128 if dtype == torch.complex128 else np.complex64)
        effort = f"FFTW_{_planner().upper()}"
        inverse = pyfftw.builders.irfft2(spec, s=(n_fine, n_fine), norm="forward", planner_effort=effort, threads=1)
        real = np.zeros((*shape[:-3], 2, n_fine, n_fine), dtype=inverse.output_array.dtype)
        forward = pyfftw.builders.rfft2(real, norm="forward", planner_effort=effort, threads=1)
        _PADDED_PLANS[key] = (inverse, forward)
    inverse, forward = _PADDED_PLANS[key]
    fields = inverse(fields_hat.resolve_conj().numpy())  # (..., 3, n_fine, n_fine), the plan's own buffer
    flux = forward(fields[..., 1:, :, :] * fields[..., :1, :, :])
    return torch.from_numpy(flux.copy())


def _plain_navier_stokes(equation) -> bool:
    """A :class:`NavierStokes2D` whose explicit part is not overridden (any other equation: torch path)."""
    from .navier_stokes import NavierStokes2D

    kind = type(equation)
    return isinstance(equation, NavierStokes2D) and all(
        getattr(kind, name) is getattr(NavierStokes2D, name) for name in ("explicit_terms", "advection"))


def fuses_step(equation, w_hat: torch.Tensor, extra_hat: torch.Tensor | None) -> bool:
    """Whether :class:`LowStorageStep` may run a stepper's stages on these operands."""
    return _plain_navier_stokes(equation) and uses_fftw(equation, w_hat, extra_hat)


def full_plans(batch: int, n: int, dtype: str, threads: int = 1) -> tuple:
    """Unpruned 2D FFTW_MEASURE plans ``(inverse, forward)`` of one stage's transforms (the FFT bound)."""
    return fft_workspace.full_plans(batch, n, dtype, threads, "measure")


def _planner() -> str:
    if _state["planner"] not in PLANNERS:
        raise ValueError(f"NS_FFTW_PLANNER={_state['planner']!r}; choose one of {list(PLANNERS)}")
    return _state["planner"]


def _complex_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.view(np.result_type(a.dtype, np.complex64)))


def explicit_terms(equation, w_hat: torch.Tensor) -> torch.Tensor:
    """``-u . grad w + f`` like :meth:`NavierStokes2D.explicit_terms`, on the fast path."""
    n, m = equation.grid.spectral_shape
    w = real_view(as_array(w_hat).reshape(-1, n, m))
    out = np.empty_like(w)

    def work(space: Workspace, i: int, split: bool) -> None:
        def close(j: int) -> None:
            space.finish(j)
            space.kernels.terms(space.flux, space.neg_div, space.forcing, out[i:i + 1], *space.columns[j])

        halves(lambda j: space.load(w[i:i + 1], j), split)
        halves(space.convect, split)
        halves(close, split)

    each_member(equation, _planner(), w.shape[0], work)
    return _complex_tensor(out).reshape(w_hat.shape)


class LowStorageStep:
    """A :func:`solvers.stepping.low_storage_imex` step on the fast path: one fused kernel a stage.

    ``a``, ``b``: the stepper's real ``(n, m)`` factors (``u = a u + b h``); ``gammas``: its ``h``
    recursion coefficients. Each member runs all its stages before the next one starts.
    """

    def __init__(self, equation, a: list[torch.Tensor], b: list[torch.Tensor], gammas: list[float]) -> None:
        self.equation, self.gammas, self.a, self.b = equation, gammas, None, None
        if _plain_navier_stokes(equation) and equation.grid.device.type == "cpu" and equation.linear.dim() == 2:
            self.a, self.b = [as_array(x) for x in a], [as_array(x) for x in b]

    def applies(self, w_hat: torch.Tensor, extra_hat: torch.Tensor | None) -> bool:
        return self.a is not None and uses_fftw(self.equation, w_hat, extra_hat)

    def __call__(self, w_hat: torch.Tensor, extra_hat: torch.Tensor | None = None) -> torch.Tensor:
        equation = self.equation
        n, m = equation.grid.spectral_shape
        u_in = real_view(as_array(w_hat).reshape(-1, n, m))
        forcing = None
        if extra_hat is not None:
            total = extra_hat if equation.forcing_hat is None else equation.forcing_hat + extra_hat
            forcing = real_view(as_array(total.expand(w_hat.shape)).reshape(-1, n, m))
        u, h = np.empty_like(u_in), np.empty_like(u_in)

        def work(space: Workspace, i: int, split: bool) -> None:
            one = slice(i, i + 1)
            self._member(space, split, u_in[one], u[one], h[one], space.forcing if forcing is None else forcing[one])

        each_member(equation, _planner(), u_in.shape[0], work)
        return _complex_tensor(u).reshape(w_hat.shape)

    def _member(self, space: Workspace, split: bool, u_in, u, h, forcing) -> None:
        """All stages for one member (real views ``(1, n, 2 m)``), each as three pairs of halves."""
        real, last = u.dtype.type, len(self.gammas) - 1
        halves(lambda j: space.load(u_in, j), split)
        for k, gamma in enumerate(self.gammas):
            source = u_in if k == 0 else u

            def close(j: int) -> None:
                space.finish(j)
                space.kernels.stage(space.flux, space.neg_div, forcing, real(gamma if k else 0.0), h,
                                    self.a[k], self.b[k], source, u, *space.columns[j])
                if k < last:
                    space.load(u, j)

            halves(space.convect, split)
            halves(close, split)
