"""torch.distributed helpers: one process per device, launched by ``torchrun``.

Everything degrades to a single process when ``torchrun`` did not launch us (no ``WORLD_SIZE``), so
the same code runs in a notebook, in a test and on a cluster. CPU runs use the ``gloo`` backend,
CUDA runs ``nccl``.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["init", "is_distributed", "rank", "world_size", "is_main", "shard", "barrier", "gather_rows",
           "local_device"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def init(device: str | torch.device = "cpu") -> bool:
    """Join the process group if launched by torchrun (``WORLD_SIZE > 1``); returns whether we did."""
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def local_device(device: str | torch.device) -> torch.device:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun; other devices are returned as they are."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def shard(n_items: int, rank_: int | None = None, world: int | None = None) -> range:
    """Contiguous block of ``range(n_items)`` owned by ``rank_`` (blocks differ in size by at most 1)."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    base, extra = divmod(n_items, world)
    start = rank_ * base + min(rank_, extra)
    return range(start, start + base + (1 if rank_ < extra else 0))


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def gather_rows(local: torch.Tensor, n_total: int) -> torch.Tensor | None:
    """Concatenate every rank's ``local`` block ``(rows_r, ...)`` along dim 0 in rank order.

    Blocks must follow :func:`shard` of ``n_total`` rows. Returns the ``(n_total, ...)`` tensor on the
    main rank and ``None`` elsewhere; with one process it returns ``local``.
    """
    if not is_distributed():
        return local
    sizes = [len(shard(n_total, r)) for r in range(world_size())]
    padded = torch.zeros((max(sizes), *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in sizes] if is_main() else None
    dist.gather(padded, parts, dst=0)
    if not is_main():
        return None
    return torch.cat([p[:s] for p, s in zip(parts, sizes)], dim=0)
