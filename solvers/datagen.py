"""Closure training data: batched DNS -> HDF5 (coarse state, exact closure target) pairs.

    python train_closure.py generate --config configs/data_e1_small.yaml          # minutes on a CPU
    torchrun --nproc-per-node K train_closure.py generate --config configs/data_e1.yaml

The file layout is :mod:`solvers.pairs`'s, the config :mod:`solvers.data_config`'s. Targets (the tendency a plug-in must return):

- E1: ``H = -u . grad w + sigma dW/dt``; ``-u . grad w`` is the DNS's own dealiased convection
  (:func:`~solvers.filters.e1_closure_target`), ``sigma dW`` the Q-Wiener increment added in the DNS
  step right after the record time (Euler-Maruyama: ``w(t + dt) = step(w(t)) + sigma dW``), both
  subsampled to the coarse grid; the noise part is also stored alone in ``/target_noise``.
- E2: ``-Pi`` with ``Pi = filter(u . grad w) - u_bar . grad w_bar`` (:func:`~solvers.filters.les_closure_term`).

Records are at ``record.start + k record.dt < record.end`` (half-open: the paper's 200 records from
t = 20 to 40), the reference window at ``reference.start + k reference.dt <= reference.end`` (closed:
an a-posteriori run compares at both ends). Trajectory ``i`` draws its initial state and noise from
its own streams (:class:`~solvers.random.MemberRNG`; member ``i`` of ``simulate.py --ensemble`` with
the same flow and seed). Trajectories are simulated in fixed blocks of ``batch``; ``torchrun`` ranks
take whole blocks, so a block sees the same arithmetic on any rank and rank 0's file equals the
single-process file bit for bit (same device, dtype and threads per process: CPU FFT libraries round
differently with other thread counts). Writing goes to ``<out>.partial`` block by block (``/done``
flags); a rerun of the same resolved config resumes it, a different one is refused; at the end the
train-split statistics are stored and the file is renamed to ``<out>``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from . import parallel
from .config import parse_overrides
from .data_config import DataConfig, WindowConfig, config_hash, data_config_to_yaml, load_data_config, resolve_data_config
from .filters import coarse_grain, e1_closure_target, les_closure_term, subsample
from .pairs import LAYOUT, LAYOUT_VERSION, SPLITS, split_stats
from .random import MemberRNG
from .setup import build_flow, initial_state

__all__ = ["Plan", "make_plan", "simulate_batch", "Summary", "generate", "add_arguments", "run"]

log = logging.getLogger(__name__)
# --------------------------------------------------------------------------------------------
# simulation


@dataclass
class Plan:
    """What every batch shares: the DNS, record / reference steps and the per-trajectory array shapes."""

    cfg: DataConfig
    flow: object  # solvers.setup.Flow (grid, equation, noise, dt)
    step: object
    steps: int  # DNS steps per trajectory
    times: np.ndarray
    record_steps: dict[int, int]
    ref_times: np.ndarray | None
    ref_steps: dict[int, int]
    shapes: dict[str, tuple[int, ...]]  # dataset -> (time, x, y) of one trajectory

    def rows(self, batch: int) -> range:
        """Trajectories of block ``batch``."""
        return range(batch * self.cfg.batch, min((batch + 1) * self.cfg.batch, self.cfg.trajectories))

    def coarse(self, w: torch.Tensor) -> torch.Tensor:
        """DNS ``(B, N, N)`` -> closure grid ``(B, n, n)``."""
        c = self.cfg.coarse
        if c.method == "subsample":
            return subsample(w, self.cfg.dns.n // c.n)
        return coarse_grain(w, c.n, c.method, c.width, length=self.flow.grid.length)

    def target(self, w: torch.Tensor) -> torch.Tensor:
        """Exact deterministic closure tendency on the closure grid (E1: ``-u.grad w``; E2: ``-Pi``)."""
        c = self.cfg.coarse
        if c.method == "subsample":
            return e1_closure_target(w, self.cfg.dns.n // c.n, self.flow.equation)
        return -les_closure_term(w, c.n, c.method, c.width, length=self.flow.grid.length, dealias=c.dealias)


def _window(window: WindowConfig, dt: float, closed: bool) -> tuple[np.ndarray, dict[int, int]]:
    """Times ``start + k dt`` before (or, ``closed``, up to) ``end`` and their DNS steps ``{step: k}``."""
    span = (window.end - window.start) / window.dt
    count = math.floor(span + 1e-9) + 1 if closed else math.ceil(span - 1e-9)
    times = np.round(window.start + window.dt * np.arange(count), 10)
    return times, {round(t / dt): k for k, t in enumerate(times)}


def make_plan(cfg: DataConfig, device: str | torch.device) -> Plan:
    """Build the DNS (grid, equation, noise, stepper) once and lay out the records."""
    from .stepping import make_stepper

    flow = build_flow(cfg.dns, 1, str(device), cfg.dtype, cfg.seed)
    times, record_steps = _window(cfg.record, flow.dt, closed=False)
    ref_times, ref_steps = _window(cfg.reference, flow.dt, closed=True) if cfg.reference else (None, {})
    noisy = flow.noise is not None
    steps = max(max(record_steps) + int(noisy), max(ref_steps, default=0))
    n, big, k = cfg.coarse.n, cfg.dns.n, len(times)
    shapes = {"state": (k, n, n), "target": (k, n, n)}
    shapes.update({"target_noise": (k, n, n)} if noisy else {})
    shapes.update({"dns": (k, big, big)} if cfg.store_dns else {})
    shapes.update({"reference/state": (len(ref_times), n, n)} if cfg.reference else {})
    step = make_stepper(cfg.dns.stepper, flow.equation, flow.dt)
    return Plan(cfg, flow, step, steps, times, record_steps, ref_times, ref_steps, shapes)


def simulate_batch(plan: Plan, rows: range, bar=None) -> dict[str, torch.Tensor]:
    """DNS of trajectories ``rows`` from t = 0: ``{dataset: (len(rows), *plan.shapes[dataset])}`` float32, CPU."""
    cfg, grid, noise, dt = plan.cfg, plan.flow.grid, plan.flow.noise, plan.flow.dt
    w0, _ = initial_state(cfg.dns, grid, cfg.trajectories, MemberRNG(cfg.seed, rows, "cpu", stream="init"))
    rng = MemberRNG(cfg.seed, rows, grid.device, stream="noise")
    out = {name: [] for name in plan.shapes}
    keep = lambda name, x: out[name].append(x.to("cpu", torch.float32))  # noqa: E731
    w_hat, pending = grid.rfft(w0), None
    for n in range(plan.steps + 1):
        if n in plan.record_steps or n in plan.ref_steps:
            w = grid.irfft(w_hat)
            if n in plan.ref_steps:
                keep("reference/state", plan.coarse(w))
            if n in plan.record_steps:
                keep("state", plan.coarse(w))
                if cfg.store_dns:
                    keep("dns", w)
                pending = plan.target(w)
                if noise is None:
                    keep("target", pending)
                    pending = None
        if n == plan.steps:
            break
        w_hat = plan.step(w_hat)  # a new tensor: the noise is added in place, on its band only
        if noise is not None:
            band = noise.band_increment(dt, rng)
            w_hat.view(len(rows), -1)[:, noise.band_index] += band
            if pending is not None:
                part = subsample(grid.irfft(noise.scatter(band)) / dt, cfg.dns.n // cfg.coarse.n)
                keep("target_noise", part)
                keep("target", pending + part)
                pending = None
        if bar is not None:
            bar.update(1)
    return {name: torch.stack(frames, dim=1) for name, frames in out.items()}


# --------------------------------------------------------------------------------------------
# the resumable file


def _partial(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _create(path: Path, plan: Plan) -> None:
    """An empty ``<out>.partial`` with every dataset, the splits, ``/done = 0`` and the attributes."""
    from . import __version__
    from .io import UNITS, git_commit

    cfg, grid = plan.cfg, plan.flow.grid
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = np.repeat(list(SPLITS.values()), dataclasses.astuple(cfg.splits)).astype(np.int8)
    with h5py.File(path, "w") as f:
        for name, shape in plan.shapes.items():
            f.create_dataset(name, (cfg.trajectories, *shape), dtype="float32", chunks=(1, 1, *shape[1:]),
                             compression="gzip", shuffle=True)
        f["time"], f["split"], f["done"] = plan.times, labels, np.zeros(cfg.trajectories, np.int8)
        if plan.ref_times is not None:
            f["reference/time"] = plan.ref_times
        f.attrs.update(dict(
            layout=LAYOUT, layout_version=LAYOUT_VERSION, config=data_config_to_yaml(cfg), config_hash=config_hash(cfg),
            kind=cfg.kind, grid_n=cfg.coarse.n, grid_length=grid.length, fine_n=cfg.dns.n, dt=plan.flow.dt,
            coarse_method=cfg.coarse.method, record_dt=cfg.record.dt, units=UNITS, code_version=__version__,
            git_commit=git_commit(), status="running"))


def _pending(cfg: DataConfig, plan: Plan, overwrite: bool) -> list[int]:
    """Blocks still to simulate; creates, checks or (``overwrite``) replaces ``<out>.partial``."""
    out = Path(cfg.out)
    partial = _partial(out)
    if out.exists() and not overwrite:
        raise ValueError(f"{out} already exists; pass --overwrite to regenerate it or choose another --out")
    if partial.exists() and overwrite:
        partial.unlink()
    blocks = range(math.ceil(cfg.trajectories / cfg.batch))
    if not partial.exists():
        _create(partial, plan)
        return list(blocks)
    try:
        with h5py.File(partial, "r") as f:
            stored, done = f.attrs.get("config_hash"), f["done"][...]
    except (OSError, KeyError) as err:
        raise ValueError(f"cannot resume from {partial} ({err}); delete it or pass --overwrite") from err
    if stored != config_hash(cfg):
        raise ValueError(f"{partial} is an interrupted generation of a different configuration (hash {stored}, "
                         f"this one {config_hash(cfg)}); rerun with its config (its 'config' attribute), pass "
                         f"--overwrite to discard it, or choose another --out")
    pending = [b for b in blocks if not done[plan.rows(b).start:plan.rows(b).stop].all()]
    log.info("resuming %s: %d of %d blocks left", partial, len(pending), len(blocks))
    return pending


def _finish(cfg: DataConfig) -> Path:
    """Train-split statistics, status ``complete``, atomic rename ``<out>.partial`` -> ``<out>``."""
    out = Path(cfg.out)
    with h5py.File(_partial(out), "r+") as f:
        train = np.flatnonzero(f["split"][...] == SPLITS["train"]).tolist()
        stats = split_stats(f["state"][train], f["target"][train])
        if "stats" in f:
            del f["stats"]
        for key, value in stats.items():
            f[f"stats/{key}"] = value
        f.attrs["status"] = "complete"
    os.replace(_partial(out), out)
    return out


# --------------------------------------------------------------------------------------------
# the driver (one process or torchrun ranks)


@dataclass
class Summary:
    """Work done by this run (all processes) and its wall time."""

    out: Path
    trajectories: int
    dns_steps: int  # trajectory-steps: one trajectory advanced by dt
    batch_steps: int  # solver calls on a whole block, summed over processes
    pairs: int
    wall_s: float
    processes: int

    @property
    def rates(self) -> dict[str, float]:
        wall = max(self.wall_s, 1e-9)
        return {"dns_steps_per_s": self.dns_steps / wall, "batch_steps_per_s": self.batch_steps / wall / self.processes,
                "pairs_per_s": self.pairs / wall}


def _broadcast(obj):
    """Rank 0's ``obj`` on every rank (pickled)."""
    if not parallel.is_distributed():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather(plan: Plan, arrays: dict[str, torch.Tensor] | None, device) -> dict[str, torch.Tensor] | None:
    """Every rank's block, each padded to ``batch`` rows, stacked in rank order on rank 0."""
    size, world, out = plan.cfg.batch, parallel.world_size(), {}
    for name, shape in plan.shapes.items():
        local = torch.zeros((size, *shape), dtype=torch.float32, device=device)
        if arrays is not None:
            local[: len(arrays[name])] = arrays[name].to(device)
        out[name] = parallel.gather_rows(local, size * world)
    return out if parallel.is_main() else None


def generate(cfg: DataConfig, overwrite: bool = False, progress: bool = True) -> Summary:
    """Simulate every pending block and write the dataset ``cfg.out`` (resolved config; see module doc)."""
    from tqdm.auto import tqdm

    parallel.init(cfg.device)
    device = parallel.local_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    plan, main, world = make_plan(cfg, device), parallel.is_main(), parallel.world_size()
    pending = _broadcast(_prepare(cfg, plan, overwrite) if main else None)
    if isinstance(pending, str):
        raise ValueError(pending)
    blocks = [[pending[i] for i in parallel.shard(len(pending), r)] for r in range(world)]  # rank -> its blocks
    mine = blocks[parallel.rank()]
    bar = tqdm(total=len(mine) * plan.steps, disable=not (progress and main), unit="step", desc="DNS",
               dynamic_ncols=True, mininterval=0.5)
    written, start = 0, time.perf_counter()
    with h5py.File(_partial(Path(cfg.out)), "r+") if main else contextlib.nullcontext() as f:
        for k in range(len(blocks[0])):  # round k: every rank simulates its k-th block, rank 0 writes them
            arrays = simulate_batch(plan, plan.rows(mine[k]), bar) if k < len(mine) else None
            gathered = _gather(plan, arrays, device)
            problem = None
            if main:
                problem = _check_finite(gathered)
                written += 0 if problem else _write_round(f, plan, gathered, {r: b[k] for r, b in enumerate(blocks)
                                                                             if k < len(b)})
            if problem := _broadcast(problem):
                raise ValueError(problem)
    bar.close()
    wall = time.perf_counter() - start
    out = _finish(cfg) if main else Path(cfg.out)
    parallel.barrier()
    return Summary(out, written, written * plan.steps, sum(map(len, blocks)) * plan.steps, written * len(plan.times),
                   wall, world)


def _prepare(cfg: DataConfig, plan: Plan, overwrite: bool) -> list[int] | str:
    """Rank 0: the pending blocks (output checked, ``<out>.partial`` ready, config written), or an error."""
    try:
        pending = _pending(cfg, plan, overwrite)
        Path(cfg.out).with_suffix(".yaml").write_text(data_config_to_yaml(cfg))
        return pending
    except (ValueError, OSError) as err:
        return str(err)


def _write_round(f: h5py.File, plan: Plan, gathered: dict[str, torch.Tensor], blocks: dict[int, int]) -> int:
    """Write block ``blocks[r]`` of each rank ``r`` (rows ``r * batch ...`` of ``gathered``), mark it done, flush."""
    written = 0
    for r, b in blocks.items():
        rows, first = plan.rows(b), r * plan.cfg.batch
        for name, x in gathered.items():
            f[name][rows.start:rows.stop] = x[first:first + len(rows)].cpu().numpy()
        f["done"][rows.start:rows.stop] = 1
        written += len(rows)
    f.flush()
    return written


def _check_finite(gathered: dict[str, torch.Tensor]) -> str | None:
    bad = [name for name, x in gathered.items() if not torch.isfinite(x).all()]
    return f"the DNS became non-finite ({', '.join(bad)}); reduce dns.dt and rerun with --overwrite" if bad else None


# --------------------------------------------------------------------------------------------
# CLI: train_closure.py generate


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", required=True, help="data config, e.g. configs/data_e1_small.yaml")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="set",
                   help="override a config key, value read as YAML; repeatable (--set trajectories=4)")
    p.add_argument("--out", metavar="FILE", help="output .h5 (default: the config's out)")
    p.add_argument("--device", help="torch device (default: the config's; null means cuda if available)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output or interrupted run")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def run(args: argparse.Namespace) -> int:
    """``train_closure.py generate``: 0 done, 2 bad input or refused (message on stderr), 130 interrupted."""
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    flags = {"out": args.out, "device": args.device}
    try:
        overrides = {**parse_overrides(args.set), **{k: v for k, v in flags.items() if v is not None}}
        cfg = resolve_data_config(load_data_config(args.config, overrides))
        summary = generate(cfg, overwrite=args.overwrite, progress=not args.quiet)
    except (ValueError, FileNotFoundError) as err:
        if parallel.is_main():
            print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume (finished blocks are kept)", file=sys.stderr)
        return 130
    finally:
        if parallel.is_distributed():
            torch.distributed.destroy_process_group()
    if parallel.is_main() and not args.quiet:
        _print_summary(cfg, summary)
    return 0


def _print_summary(cfg: DataConfig, s: Summary) -> None:
    rates, size = s.rates, s.out.stat().st_size / 1e6
    rows = [("dataset", f"{cfg.kind}: {cfg.dns.n}^2 {cfg.dns.stepper} DNS -> {cfg.coarse.n}^2 ({cfg.coarse.method}), "
                        f"{cfg.trajectories} trajectories {dataclasses.astuple(cfg.splits)} train/val/test"),
            ("this run", f"{s.trajectories} trajectories, {s.pairs} pairs, {s.dns_steps} DNS steps, "
                         f"{s.processes} process(es), batch {cfg.batch}, {cfg.device} {cfg.dtype}"),
            ("throughput", f"{rates['dns_steps_per_s']:.1f} DNS steps/s, {rates['batch_steps_per_s']:.1f} "
                           f"batch-steps/s per process, {rates['pairs_per_s']:.2f} pairs/s"),
            ("wall time", f"{s.wall_s:.1f} s"),
            ("output", f"{s.out} ({size:.1f} MB) + {s.out.with_suffix('.yaml').name}")]
    print()
    for name, value in rows:
        print(f"{name:>12}  {value}")
