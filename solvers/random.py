"""Per-member random streams: member ``i`` draws the same numbers whatever batch or process runs it.

An ensemble member (or a data-generation trajectory) is identified by its global index. Its numbers
come from its own ``torch.Generator``, seeded from ``(seed, stream, member)`` through
:class:`numpy.random.SeedSequence`, so simulating members ``[0, 8)`` as one batch, as two batches of
four, or on two ``torchrun`` ranks draws identical numbers for every member. Streams separate the uses
of one seed: ``"init"`` (initial conditions, always on the CPU) and ``"noise"`` (stochastic forcing
and plug-in sampling, on the run's device). Streams are device-specific: a CUDA generator draws other
numbers than a CPU one for the same seed.

    rng = MemberRNG(seed=0, members=range(4, 8), device="cpu")
    xi = rng.randn((3, 3))                # (4, 3, 3): rows are members 4, 5, 6, 7
    eps = rng.normal_like(w)              # w: (4, x, y)

A stochastic plug-in gets the run's generator as ``FlowState.generator`` (a ``MemberRNG`` in
``simulate.py``, possibly a ``torch.Generator`` elsewhere); :func:`normal_like` accepts either.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["MemberRNG", "STREAMS", "member_seed", "normal_like"]

STREAMS = {"init": 0, "noise": 1}


def member_seed(seed: int, member: int, stream: str | int = "noise") -> int:
    """64-bit seed of ``member``'s generator in ``stream`` (a name of :data:`STREAMS` or an int >= 0)."""
    stream_id = STREAMS.get(stream, stream) if isinstance(stream, str) else stream
    if isinstance(stream_id, str):
        raise ValueError(f"unknown random stream {stream!r}; choose one of {list(STREAMS)} or an integer >= 0")
    for name, value in (("seed", seed), ("member", member), ("stream", stream_id)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    words = np.random.SeedSequence(int(seed), spawn_key=(int(stream_id), int(member))).generate_state(2, np.uint32)
    return int(words[0]) | (int(words[1]) << 32)


class MemberRNG:
    """One generator per member; draws are stacked along a leading member axis.

    Args:
        seed: the run's seed (>= 0).
        members: global member indices held here (an ``int`` ``M`` means ``range(M)``).
        device: where the generators live and the numbers are drawn.
        stream: ``"init"``, ``"noise"`` (default) or an integer, to keep independent uses apart.
    """

    def __init__(self, seed: int, members: int | range | Sequence[int], device: str | torch.device = "cpu",
                 stream: str | int = "noise") -> None:
        self.members = tuple(range(members) if isinstance(members, int) else (int(m) for m in members))
        if len(set(self.members)) != len(self.members):
            raise ValueError(f"members must be distinct, got {list(self.members)}")
        self.seed, self.stream, self.device = seed, stream, torch.device(device)
        self.generators = [torch.Generator(device=self.device).manual_seed(member_seed(seed, m, stream))
                           for m in self.members]

    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        return f"MemberRNG(seed={self.seed}, members={_short(self.members)}, device={self.device}, stream={self.stream!r})"

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal draws ``(members, *shape)``; complex dtypes have ``E|z|^2 = 1`` as ``torch.randn``."""
        if not self.members:
            return torch.empty((0, *shape), dtype=dtype, device=self.device)
        return torch.stack([torch.randn(tuple(shape), generator=g, dtype=dtype, device=self.device)
                            for g in self.generators])

    def normal_like(self, x: torch.Tensor, std: float = 1.0) -> torch.Tensor:
        """``std`` times standard normal noise shaped like ``x`` ``(members, ...)``, on ``x``'s device."""
        if x.shape[0] != len(self):
            raise ValueError(f"tensor has {x.shape[0]} rows but this MemberRNG holds {len(self)} members "
                             f"{_short(self.members)}; pass one row per member")
        return (std * self.randn(x.shape[1:], x.dtype)).to(x.device)

    def subset(self, rows: Sequence[int] | slice) -> "MemberRNG":
        """The generators of some rows (shared, not copied: drawing from one advances the other)."""
        picked = list(range(len(self)))[rows] if isinstance(rows, slice) else list(rows)
        out = object.__new__(MemberRNG)
        out.seed, out.stream, out.device = self.seed, self.stream, self.device
        out.members = tuple(self.members[i] for i in picked)
        out.generators = [self.generators[i] for i in picked]
        return out


def normal_like(x: torch.Tensor, generator: MemberRNG | torch.Generator | None = None, std: float = 1.0) -> torch.Tensor:
    """Gaussian noise shaped like ``x`` ``(batch, ...)`` from a :class:`MemberRNG` (row i from member i's
    stream), a ``torch.Generator`` or the global generator (``None``)."""
    if isinstance(generator, MemberRNG):
        return generator.normal_like(x, std)
    return std * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def _short(members: tuple[int, ...]) -> str:
    if members and members == tuple(range(members[0], members[-1] + 1)):
        return f"[{members[0]}..{members[-1]}]"
    return str(list(members))
