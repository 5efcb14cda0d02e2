import itertools
import math

import pytest
import torch

from solvers import Grid
from solvers.grid import parse_length


@pytest.mark.parametrize("value,expected", [(1, 1.0), ("2pi", 2 * math.pi), ("2*pi", 2 * math.pi), ("pi", math.pi)])
def test_parse_length(value, expected):
    assert parse_length(value) == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["abc", -1, 0, "nanpi"])
def test_parse_length_rejects(bad):
    with pytest.raises(ValueError, match="length"):
        parse_length(bad)


@pytest.mark.parametrize("n", [3, 7, 2])
def test_grid_rejects_bad_size(n):
    with pytest.raises(ValueError, match="even integer"):
        Grid(n)


def test_wavenumbers_differentiate_exactly():
    grid = Grid(16, 3.0)
    x, y = grid.coordinates()
    k = 2 * math.pi / 3.0 * 2
    f = torch.sin(k * x) * torch.cos(k * y)
    dfdx = grid.irfft(1j * grid.kx * grid.rfft(f))
    torch.testing.assert_close(dfdx, k * torch.cos(k * x) * torch.cos(k * y), atol=1e-12, rtol=0)


@pytest.mark.parametrize("n", [12, 32, 48, 64])
def test_dealias_mask_removes_exactly_the_aliased_band(n):
    """Every product of two kept modes is exact after masking; one more mode would alias."""
    grid = Grid(n, 2 * math.pi)
    kept = [k for k in range(-n // 2, n // 2) if abs(k) < n / 3]
    kmax = max(kept)
    assert 3 * kmax < n <= 3 * (kmax + 1)  # the largest band that cannot alias
    mask = grid.dealias
    kx_int = torch.fft.fftfreq(n, 1 / n)
    ky_int = torch.fft.rfftfreq(n, 1 / n)
    expected = (kx_int.abs()[:, None] < n / 3) & (ky_int.abs()[None, :] < n / 3)
    assert torch.equal(mask.bool(), expected)
    x, _ = grid.coordinates()
    # 1D check along x: (kmax) x (kmax) lands at 2 kmax which aliases to 2 kmax - n, outside the band.
    for a, b in itertools.product([kmax, kmax - 1], repeat=2):
        prod_hat = grid.rfft(torch.cos(a * x) * torch.cos(b * x)) * mask
        exact_hat = grid.rfft(0.5 * torch.cos((a - b) * x) + 0.5 * torch.cos((a + b) * x) * float(a + b < n / 3))
        torch.testing.assert_close(prod_hat, exact_hat, atol=1e-12, rtol=0)
    # With one more mode kept, the product would alias into the kept band.
    assert abs(2 * (kmax + 1) - n) <= kmax + 1


def test_check_field_messages():
    grid = Grid(16)
    with pytest.raises(ValueError, match="spatial shape"):
        grid.check_field(torch.zeros(1, 8, 8))
    bad = torch.zeros(1, 16, 16, dtype=torch.float64)
    bad[0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        grid.check_field(bad)


def test_grid_to_moves_dtype():
    grid = Grid(16).to(dtype=torch.float32)
    assert grid.kx.dtype == torch.float32 and grid.complex_dtype == torch.complex64
