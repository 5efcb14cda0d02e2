"""Buffers, FFTW plans and threads of the CPU fast path (:mod:`solvers.fft_backend`).

One :class:`Workspace` holds a field's buffers and its transforms split into halves: the
x-transforms (pruned to the ``kc`` columns that the 2/3 rule keeps) by columns, the y-transforms
by rows. A stage is three phases, each two independent halves:

    load(j)     spread w_hat -> (w, u, v)_hat, inverse x-transform     columns half j
    convect(i)  inverse y-transform, u w and v w, forward y-transform  rows half i
    finish(j)   forward x-transform, then the caller's kernel          columns half j

so two threads can share one field with two synchronisations a stage, and the halves are the same
whoever runs them: results do not depend on the thread count or on the rest of the batch.

Threads (``torch.get_num_threads()``): a lone field of 256^2 points or more runs its halves on two
threads (1.4-1.9x on an idle 2-core machine; below 256^2 the hand-over, ~20 us, costs what it
saves); an ensemble runs its members one at a time (each in cache), shared among the threads. Both
take work from a queue, so a thread that another process holds off takes less: on a busy machine
they ran at 0.5-1.3x one thread's speed. FFTW's own threads are not used: they synchronise inside every
transform, and with other processes busy each such call could stall for a scheduler time slice
(~8 ms: 10-40x slower than one thread).
"""
from __future__ import annotations

import importlib
import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

__all__ = ["Workspace", "workspace", "each_member", "halves", "full_plans"]

# A lone field of at least this many points shares its halves between two threads (results are
# identical either way; below, the hand-over costs what it saves).
_MIN_SPLIT_POINTS = 256 * 256
_pool: dict = {}  # the extra threads, their number and the process that made them
_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # equation -> {key: Workspace}


def modules():
    """``(pyfftw, solvers.fft_kernels)``, imported on first use (numba and pyfftw take ~1 s)."""
    return importlib.import_module("pyfftw"), importlib.import_module(".fft_kernels", __package__)


def real_view(a: np.ndarray) -> np.ndarray:
    """Complex ``(..., m)`` as real ``(..., 2 m)``, entry ``j`` at ``(2 j, 2 j + 1)``."""
    return a.view(a.real.dtype)


def as_array(t: torch.Tensor) -> np.ndarray:
    return t.detach().resolve_conj().contiguous().numpy()


@dataclass
class Workspace:
    """One field's buffers, half plans and real operator factors (see the module doc).

    ``spec`` ``(1, 3, n, m)`` complex -> ``fields`` ``(1, 3, n, n)`` real (w, u, v; then w, u w,
    v w) -> ``flux`` ``(1, 2, n, m)`` complex, valid in the first ``kc`` columns; ``spread``
    ``(3, n, kc)``, ``neg_div`` ``(2, n, kc)`` (with the forward ``1 / n^2`` folded in) and
    ``forcing`` ``(1, n, 2 m)`` as in :mod:`solvers.fft_kernels`. Complex arrays the kernels see
    are real views; ``columns`` and ``rows`` are the halves' ``(start, stop)``.
    """

    spec: np.ndarray
    fields: np.ndarray
    flux: np.ndarray
    plans: dict  # name -> (plan for half 0, plan for half 1)
    columns: tuple
    rows: tuple
    spread: np.ndarray
    neg_div: np.ndarray
    forcing: np.ndarray
    kernels: object

    def load(self, w_hat: np.ndarray, j: int) -> None:
        """Columns half ``j`` of ``(w, u, v)`` transformed along x, from ``w_hat`` ``(1, n, 2 m)``."""
        self.kernels.spread(w_hat, self.spread, self.spec, *self.columns[j])
        self.plans["inverse_x"][j].execute()

    def convect(self, i: int) -> None:
        """Rows half ``i``: to the grid, products ``u w, v w``, back along y."""
        self.plans["inverse_y"][i].execute()
        self.kernels.product(self.fields, *self.rows[i])
        self.plans["forward_y"][i].execute()

    def finish(self, j: int) -> None:
        """Columns half ``j`` of the unnormalised ``(u w, v w)_hat`` is ready in ``flux``."""
        self.plans["forward_x"][j].execute()



def workspace(equation, planner: str, worker: int = 0) -> Workspace:
    """The cached :class:`Workspace` of ``equation`` for pool thread ``worker`` (planned once,
    0.01-1 s; FFTW planning is not thread-safe, so it happens before any thread starts)."""
    cache = _cache.setdefault(equation, {})
    if (worker, planner) not in cache:
        cache[worker, planner] = _build(equation, planner)
    return cache[worker, planner]


def each_member(equation, planner: str, batch: int, work: Callable[[Workspace, int, bool], None]) -> None:
    """``work(space, member, split)`` for every member: a member at a time on each thread, or, for a
    lone field, with ``split`` telling :func:`halves` to use two threads."""
    threads = torch.get_num_threads()
    if batch == 1 or threads == 1:
        split = batch == 1 and threads > 1 and equation.grid.n ** 2 >= _MIN_SPLIT_POINTS
        space = workspace(equation, planner)
        for member in range(batch):
            work(space, member, split)
        return
    workers = min(threads, batch)
    spaces = [workspace(equation, planner, w) for w in range(workers)]
    _share(workers, batch, lambda thread, member: work(spaces[thread], member, False))


def halves(work: Callable[[int], None], split: bool) -> None:
    """``work(0)`` and ``work(1)``, on two threads when ``split``."""
    if split:
        _share(2, 2, lambda thread, half: work(half))
    else:
        work(0)
        work(1)


def _share(workers: int, count: int, task: Callable[[int, int], None]) -> None:
    """``task(thread, item)`` for items ``0 .. count-1`` taken from a shared queue by ``workers``
    threads, the caller's (thread 0) among them."""
    queue = iter(range(count))  # next() on a range iterator is atomic under the GIL

    def drain(thread: int) -> None:
        for item in queue:
            task(thread, item)

    futures = [_executor(workers - 1).submit(drain, thread) for thread in range(1, workers)]
    try:
        drain(0)
    finally:  # never leave a thread writing into the buffers
        errors = [future.exception() for future in futures]
    if any(errors):
        raise next(e for e in errors if e)


def _executor(threads: int) -> ThreadPoolExecutor:
    """The shared pool of ``threads`` extra threads (a new one in a forked child, which has none)."""
    if _pool.get("key") != (threads, os.getpid()):
        if "executor" in _pool and _pool["key"][1] == os.getpid():
            _pool["executor"].shutdown(wait=False)
        _pool.update(key=(threads, os.getpid()), executor=ThreadPoolExecutor(threads, thread_name_prefix="ns-fftw"))
    return _pool["executor"]


def _options(planner: str, threads: int = 1) -> dict:
    return dict(flags=(f"FFTW_{planner.upper()}", "FFTW_DESTROY_INPUT"), threads=threads)


def _buffers(pyfftw, batch: int, n: int, real: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    complex_ = np.result_type(real, np.complex64)
    return (pyfftw.empty_aligned((batch, 3, n, n // 2 + 1), complex_), pyfftw.empty_aligned((batch, 3, n, n), real),
            pyfftw.empty_aligned((batch, 2, n, n // 2 + 1), complex_))


def full_plans(batch: int, n: int, dtype: str, threads: int = 1, planner: str = "measure") -> tuple:
    """Unpruned, unsplit 2D plans ``(inverse, forward)`` of one stage's transforms (the FFT bound)."""
    pyfftw, _ = modules()
    spec, fields, flux = _buffers(pyfftw, batch, n, np.dtype(dtype))
    options = _options(planner, threads)
    inverse = pyfftw.FFTW(spec, fields, axes=(-2, -1), direction="FFTW_BACKWARD", normalise_idft=False, **options)
    forward = pyfftw.FFTW(fields[:, 1:], flux, axes=(-2, -1), direction="FFTW_FORWARD", **options)
    spec[:], fields[:] = 0, 0
    return inverse, forward


def _imaginary(z: torch.Tensor, what: str) -> torch.Tensor:
    if z.real.abs().max() != 0:
        raise ValueError(f"the {what} must be purely imaginary on the FFTW path; use set_backend('torch')")
    return z.imag


def _build(equation, planner: str) -> Workspace:
    pyfftw, kernels = modules()
    grid, to_fields = equation.grid, equation._to_fields
    n, m = grid.spectral_shape
    used = torch.cat([to_fields, equation._divergence]).abs().amax(dim=(0, 1)).nonzero()
    kc = max(2, int(used.max()) + 1 if len(used) else 1)
    spread = torch.stack([to_fields[0].real, _imaginary(to_fields[1], "u operator"),
                          _imaginary(to_fields[2], "v operator")])
    neg_div = _imaginary(-equation._divergence / (n * n), "divergence operator")
    forcing = equation.forcing_hat if equation.forcing_hat is not None else torch.zeros(n, m, dtype=grid.complex_dtype)
    spec, fields, flux = _buffers(pyfftw, 1, n, np.dtype(str(grid.dtype).removeprefix("torch.")))
    cut, half = kc // 2, n // 2
    cols, rows = (slice(0, cut), slice(cut, kc)), (slice(0, half), slice(half, n))
    back = dict(direction="FFTW_BACKWARD", normalise_idft=False, **_options(planner))
    ahead = dict(direction="FFTW_FORWARD", **_options(planner))
    plans = {"inverse_x": tuple(pyfftw.FFTW(spec[..., c], spec[..., c], axes=(-2,), **back) for c in cols),
             "inverse_y": tuple(pyfftw.FFTW(spec[:, :, r], fields[:, :, r], axes=(-1,), **back) for r in rows),
             "forward_y": tuple(pyfftw.FFTW(fields[:, 1:, r], flux[:, :, r], axes=(-1,), **ahead) for r in rows),
             "forward_x": tuple(pyfftw.FFTW(flux[..., c], flux[..., c], axes=(-2,), **ahead) for c in cols)}
    return Workspace(real_view(spec), fields, real_view(flux), plans, columns=((0, cut), (cut, m)),
                     rows=((0, half), (half, n)), spread=as_array(spread[..., :kc]),
                     neg_div=as_array(neg_div[..., :kc]), forcing=real_view(as_array(forcing).reshape(1, n, m)),
                     kernels=kernels)
