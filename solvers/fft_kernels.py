"""numba kernels of the FFTW fast path (:mod:`solvers.fft_backend`); imported only when it runs.

Complex arrays arrive viewed as real ``(..., 2 m)``: entry ``j`` is ``(re, im) = (2 j, 2 j + 1)``.
Operator factors are real, ``(..., kc)``, over the ``kc`` leading columns that the 2/3 rule keeps:
``(w, u, v)_hat = w_hat * (s0, i s1, i s2)`` and ``-div(F)_hat = i (d0 F0 + d1 F1)``. Kernels work
on a range of columns ``[j0, j1)`` or rows ``[i0, i1)`` so that two threads can share a field;
each is one pass over memory. Compiled code is cached next to this file.
"""
import numba

__all__ = ["spread", "product", "terms", "stage"]

_jit = numba.njit(cache=True, nogil=True, boundscheck=False)


@_jit
def spread(w, s, spec, j0, j1):
    """``spec[b] = w[b] * (s0, i s1, i s2)`` on columns ``[j0, j1)``: zero past the kept ones."""
    kc = s.shape[2]
    for b in range(w.shape[0]):
        for i in range(w.shape[1]):
            x, s0, s1, s2 = w[b, i], s[0, i], s[1, i], s[2, i]
            o0, o1, o2 = spec[b, 0, i], spec[b, 1, i], spec[b, 2, i]
            for j in range(j0, min(j1, kc)):
                re, im = x[2 * j], x[2 * j + 1]
                o0[2 * j], o0[2 * j + 1] = re * s0[j], im * s0[j]
                o1[2 * j], o1[2 * j + 1] = -(im * s1[j]), re * s1[j]
                o2[2 * j], o2[2 * j + 1] = -(im * s2[j]), re * s2[j]
            for j in range(2 * max(j0, kc), 2 * j1):
                o0[j] = o1[j] = o2[j] = 0.0


@_jit
def product(fields, i0, i1):
    """``(w, u, v) -> (w, u w, v w)`` in place on rows ``[i0, i1)``, ``fields`` ``(B, 3, n, n)``."""
    for b in range(fields.shape[0]):
        for i in range(i0, i1):
            w, u, v = fields[b, 0, i], fields[b, 1, i], fields[b, 2, i]
            for j in range(w.shape[0]):
                u[j] *= w[j]
                v[j] *= w[j]


@_jit
def _term(f0, f1, d0, d1, fo, j, kc):
    """``(re, im)`` of ``i (d0 F0 + d1 F1) + f`` at entry ``j`` (``f`` alone past the kept columns)."""
    re, im = 2 * j, 2 * j + 1
    if j >= kc:
        return fo[re], fo[im]
    return -(f0[im] * d0[j] + f1[im] * d1[j]) + fo[re], (f0[re] * d0[j] + f1[re] * d1[j]) + fo[im]


@_jit
def terms(flux, d, forcing, out, j0, j1):
    """``out = -div(flux) + forcing`` on columns ``[j0, j1)`` (``forcing`` batch 1 or B)."""
    for b in range(flux.shape[0]):
        fo_b = forcing[b % forcing.shape[0]]
        for i in range(flux.shape[2]):
            f0, f1, d0, d1, fo, o = flux[b, 0, i], flux[b, 1, i], d[0, i], d[1, i], fo_b[i], out[b, i]
            for j in range(j0, j1):
                o[2 * j], o[2 * j + 1] = _term(f0, f1, d0, d1, fo, j, d.shape[2])


@_jit
def stage(flux, d, forcing, gamma, h, a, c, u_in, u_out, j0, j1):
    """Low-storage IMEX stage on columns ``[j0, j1)``: ``h = -div(flux) + forcing + gamma h``,
    ``u_out = a u_in + c h``; ``a``, ``c`` real ``(n, m)``; ``u_out`` may be ``u_in``; ``gamma == 0``
    ignores the old ``h``."""
    for b in range(flux.shape[0]):
        fo_b = forcing[b % forcing.shape[0]]
        for i in range(flux.shape[2]):
            f0, f1, d0, d1, fo = flux[b, 0, i], flux[b, 1, i], d[0, i], d[1, i], fo_b[i]
            hh, ui, uo, ai, ci = h[b, i], u_in[b, i], u_out[b, i], a[i], c[i]
            for j in range(j0, j1):
                re, im = 2 * j, 2 * j + 1
                fr, fi = _term(f0, f1, d0, d1, fo, j, d.shape[2])
                if gamma != 0.0:
                    fr += gamma * hh[re]
                    fi += gamma * hh[im]
                hh[re], hh[im] = fr, fi
                uo[re] = ui[re] * ai[j] + fr * ci[j]
                uo[im] = ui[im] * ai[j] + fi * ci[j]
