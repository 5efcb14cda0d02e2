"""Symmetry shifts: allowed directions only, shared across a trajectory's frames, reproducible augmentation."""
from __future__ import annotations

import pytest
import torch

from solvers.symmetry import augment_shifts, shift_fields


def test_shifts_move_only_along_the_allowed_directions_and_keep_frames_together():
    n = 8
    x = torch.arange(n, dtype=torch.float64)
    along_x = x[:, None].expand(n, n)  # varies along x only
    w = torch.stack([along_x.roll(1, 1), along_x.T]).expand(3, 2, n, n).clone()  # (batch, frames, x, y)
    moved = shift_fields(w, "y", torch.Generator().manual_seed(0))
    assert torch.equal(moved[:, 0], w[:, 0])  # a field constant in y does not change under y-shifts
    for traj, orig in zip(moved, w):  # both frames of a trajectory rolled by the same amount
        s = [k for k in range(n) if torch.equal(orig[1].roll(k, -1), traj[1])]
        assert s
    diagonal = (x[:, None] + x[None, :]).remainder(n)  # depends on x + y: invariant under (s, -s)
    assert torch.equal(shift_fields(diagonal.expand(4, n, n), "diagonal"), diagonal.expand(4, n, n))
    with pytest.raises(ValueError, match="unknown shifts"):
        shift_fields(w, "z")


def test_augmentation_is_reproducible_and_keeps_the_originals_first():
    w = torch.randn(5, 8, 8, generator=torch.Generator().manual_seed(0))
    a, b = augment_shifts(w, "xy", 3, seed=1), augment_shifts(w, "xy", 3, seed=1)
    assert a.shape == (15, 8, 8) and torch.equal(a, b) and torch.equal(a[:5], w)
    assert not torch.equal(a[5:10], w)
    assert augment_shifts(w, "none", 3) is w and augment_shifts(w, "xy", 1) is w
    with pytest.raises(ValueError, match="copies"):
        augment_shifts(w, "xy", 0)
