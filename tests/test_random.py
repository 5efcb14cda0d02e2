"""Per-member random streams: a member's numbers do not depend on its batch, rank or grid."""
import math

import pytest
import torch

from solvers import Grid
from solvers.forcing import QWienerNoise
from solvers.random import MemberRNG, member_seed, normal_like


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64])
def test_member_draws_do_not_depend_on_batch_composition(dtype):
    whole = MemberRNG(7, range(6)).randn((5, 4), dtype)
    assert whole.shape == (6, 5, 4) and whole.dtype == dtype
    blocks = torch.cat([MemberRNG(7, range(0, 2)).randn((5, 4), dtype), MemberRNG(7, range(2, 6)).randn((5, 4), dtype)])
    assert torch.equal(whole, blocks)
    assert torch.equal(MemberRNG(7, [4, 1]).randn((5, 4), dtype), whole[[4, 1]])


def test_streams_seeds_and_members_differ():
    base = MemberRNG(1, range(3)).randn((8,))
    assert not torch.equal(base[0], base[1])
    assert not torch.equal(base, MemberRNG(2, range(3)).randn((8,)))
    assert not torch.equal(base, MemberRNG(1, range(3), stream="init").randn((8,)))
    assert len({member_seed(0, m, s) for m in range(50) for s in ("init", "noise")}) == 100


def test_successive_draws_advance_each_stream():
    rng = MemberRNG(3, range(2))
    first, second = rng.randn((4,)), rng.randn((4,))
    assert not torch.equal(first, second)
    replay = MemberRNG(3, [1])
    replay.randn((4,))
    assert torch.equal(replay.randn((4,))[0], second[1])


def test_normal_like_and_subset():
    rng = MemberRNG(0, range(4))
    x = torch.zeros(4, 3, 3, dtype=torch.float64)
    eps = rng.normal_like(x, std=2.0)
    assert eps.shape == x.shape and eps.dtype == torch.float64
    with pytest.raises(ValueError, match="holds 4 members"):
        rng.normal_like(torch.zeros(3, 2))
    sub = MemberRNG(0, range(4)).subset(slice(2, 4))
    assert sub.members == (2, 3) and torch.equal(sub.normal_like(x[:2], 2.0), eps[2:])


def test_normal_like_accepts_every_generator_kind():
    x = torch.zeros(2, 4, dtype=torch.float64)
    assert torch.equal(normal_like(x, MemberRNG(1, range(2))), MemberRNG(1, range(2)).normal_like(x))
    assert torch.equal(normal_like(x, torch.Generator().manual_seed(1)), normal_like(x, torch.Generator().manual_seed(1)))
    assert normal_like(x).shape == x.shape and normal_like(x, std=0.0).abs().max() == 0


@pytest.mark.parametrize("bad", [dict(seed=-1), dict(stream="bogus"), dict(members=[1, 1])])
def test_bad_arguments_are_rejected(bad):
    kwargs = dict(seed=0, members=range(2)) | bad
    with pytest.raises(ValueError):
        MemberRNG(**kwargs)


def test_q_wiener_member_noise_independent_of_batch_and_grid():
    """A member's noise lives on integer modes |k| <= kappa: the same on a 16^2 and a 32^2 grid."""
    coarse, fine = Grid(16, 1.0), Grid(32, 1.0)
    a = QWienerNoise(coarse, kappa=3, sigma=0.1).increment(3, 1e-3, MemberRNG(5, range(3)))
    b = QWienerNoise(coarse, kappa=3, sigma=0.1).increment(1, 1e-3, MemberRNG(5, [2]))
    assert torch.equal(a[2:], b)
    c = QWienerNoise(fine, kappa=3, sigma=0.1).increment(3, 1e-3, MemberRNG(5, range(3)))
    rows = list(range(4)) + list(range(-3, 0))
    torch.testing.assert_close(c[:, rows, :4], a[:, rows, :4], rtol=0, atol=1e-12)
    assert c.abs().sum().item() == pytest.approx(a.abs().sum().item(), rel=1e-6)  # nothing outside the band
    with pytest.raises(ValueError, match="batch has 2"):
        QWienerNoise(coarse).increment(2, 1e-3, MemberRNG(5, range(3)))


def test_q_wiener_member_noise_variance():
    """Per-mode variance sigma^2 q_k dt as for a torch.Generator (one member, 3000 steps; 5 s.e.)."""
    grid, alpha, sigma, dt, samples = Grid(16, 1.0, dtype=torch.float64), 0.005, 0.5, 0.01, 3000
    noise, rng = QWienerNoise(grid, alpha=alpha, kappa=3, sigma=sigma), MemberRNG(0, [0])
    dw = grid.irfft(torch.cat([noise.increment(1, dt, rng) for _ in range(samples)]))
    x, y = grid.coordinates()
    for kx, ky in [(1, 0), (0, 2), (2, 3), (-3, 1)]:
        basis = math.sqrt(2) * torch.cos(2 * math.pi * (kx * x + ky * y))
        var = ((dw * basis).sum(dim=(-2, -1)) * grid.dx**2).var().item()
        expected = sigma**2 * dt * math.exp(-alpha * (2 * math.pi) ** 2 * (kx**2 + ky**2))
        assert abs(var - expected) < 5 * expected * math.sqrt(2 / samples), (kx, ky, var, expected)
