"""Run the 2D Navier-Stokes solver with a plug-in: one trajectory or an ensemble -> HDF5 + figures.

    python simulate.py --closure none                       # configs/default.yaml, seconds on a CPU
    python simulate.py --config configs/kolmogorov_les64.yaml --closure smagorinsky --t-end 20
    python simulate.py --config configs/e1_coarse64.yaml --init truth64.h5 --init-frame 60 \\
        --ensemble 100 --reference truth64.h5       # E1 a-posteriori: t = 30 -> 50, 100 members

Writes <out> (HDF5, layout in solvers/io.py), the resolved config <stem>.yaml and figures
<stem>_*.png. Exit codes: 0 done, 2 bad input or a plug-in refusing the running state (message on stderr; the
frames so far stay in <out>.partial), 3 the run blew up (the file
holds the frames so far and the last good state, status "blew_up").

Multi-process: `torchrun --nproc-per-node K simulate.py --ensemble M ...` gives every process a
block of members (solvers.parallel.shard); frames are gathered at each record and rank 0 writes the
one file, figures and tables. Member i's initial state and noise come from its own random stream, so
the file matches the single-process one to round-off (the FFT's rounding depends on the batch size).
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

import closure
from solvers import diagnostics, parallel, twin
from solvers.config import RunConfig, config_to_yaml, load_config, parse_overrides, resolve
from solvers.io import TrajectoryWriter
from solvers.rollout import BlowUpError, rollout
from solvers.setup import Flow, Reference, build_flow, run_length

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"
EXIT_BAD_INPUT, EXIT_BLOW_UP = 2, 3


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (every flag overrides the config file)."""
    intro, examples, outputs = __doc__.split("\n\n")[:3]
    p = argparse.ArgumentParser(prog="simulate.py", description=intro,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"examples:\n{examples}\n\n{outputs}\n"
                                       "Precedence: config file < --set < the flags above.")
    p.add_argument("--config", metavar="FILE", help=f"YAML run config (default: {DEFAULT_CONFIG.name}, the "
                   "Kolmogorov 64^2 LES flow for 5 time units); see configs/")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="set",
                   help="override a config key, value read as YAML; repeatable (--set flow.nu=1e-3 "
                        "--set flow.noise=null)")
    p.add_argument("--closure", metavar="NAME", help=f"plug-in to run; one of: {', '.join(closure.available())}")
    p.add_argument("--ensemble", metavar="M", type=int, help="number of members, run as one batch; random "
                   "initial states are M independent draws, a one-member --init file is copied to all M")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", metavar="K", type=int, help="number of solver steps")
    length.add_argument("--t-end", metavar="T", type=float, dest="t_end",
                        help="end time (absolute: a run from an --init frame at t0 runs to T)")
    p.add_argument("--every", metavar="N", type=int, help="call the plug-in every N steps (default: the "
                   "plug-in's default_every; for plug-ins that read sensors, --obs-every wins)")
    p.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=["float32", "float64"], help="floating-point precision of the solver")
    p.add_argument("--seed", type=int, help="seed for the initial states, noise and plug-in sampling")
    p.add_argument("--init", metavar="FILE", help="initial vorticity: .npy (x, y) or (member, x, y), or a "
                   "project .h5 trajectory (the run then starts at that frame's time)")
    p.add_argument("--init-frame", metavar="I", type=int, help="frame of an --init .h5 file (default -1, the last)")
    p.add_argument("--out", metavar="FILE", help="output .h5 (default runs/<closure>-<timestamp>.h5); "
                   "the resolved config goes to <stem>.yaml and figures to <stem>_*.png")
    p.add_argument("--reference", metavar="FILE", help="project .h5 trajectory to compare with at matching "
                   "times (within dt/2), coarse-grained if finer; prints and stores rel_l2, "
                   "ens_mean_rel_l2 and spread under metrics/")
    obs = p.add_argument_group("twin experiments (assimilation and reconstruction plug-ins: enkf, letkf, interp, "
                               "gappy_pod)")
    obs.add_argument("--observe", metavar="TRUTH.h5", help="truth trajectory (a one-member project .h5, "
                     "coarse-grained if finer) observed by sensors; also the --reference for the error metrics")
    obs.add_argument("--sensors", metavar="LAYOUT", help="sensor layout: regular:NXxNY (default regular:10x10, E3), "
                     "random:COUNT (off-grid), grid:COUNT (random grid points) or a .npy/.csv/.txt file of x, y rows")
    obs.add_argument("--noise", metavar="SIGMA", type=float, help="observation noise standard deviation "
                     "(default 0.1; relative size with --noise-kind multiplicative)")
    obs.add_argument("--noise-kind", choices=["additive", "multiplicative"], dest="noise_kind",
                     help="y = Hw + SIGMA e (default) or y = Hw (1 + SIGMA e)")
    obs.add_argument("--obs-every", metavar="K", type=int, dest="obs_every", help="assimilate every K solver steps "
                     "(the truth must have a frame at those times; default: the plug-in's default_every)")
    obs.add_argument("--obs-seed", metavar="S", type=int, dest="obs_seed", help="seed of the observation noise "
                     "and random layouts, apart from --seed so every method sees the same data (default 0)")
    p.add_argument("--checkpoint", metavar="FILE", help="model file, passed to plug-ins that take a "
                   "'checkpoint' option")
    p.add_argument("--no-figures", action="store_true", help="do not write PNG figures")
    p.add_argument("--quiet", action="store_true", help="no progress bar, tables or log messages")
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Config file, then ``--set`` overrides, then the explicit flags."""
    overrides = parse_overrides(args.set)
    flags = {"closure.name": args.closure, "ensemble": args.ensemble, "closure.every": args.every,
             "device": args.device, "dtype": args.dtype, "seed": args.seed, "out": args.out,
             "steps": args.steps, "t_end": args.t_end, "closure.options.checkpoint": args.checkpoint,
             "observe.truth": args.observe, "observe.sensors": args.sensors, "observe.noise": args.noise,
             "observe.noise_kind": args.noise_kind, "observe.every": args.obs_every, "observe.seed": args.obs_seed}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    if args.init_frame is not None and args.init is None:
        raise ValueError("--init-frame needs --init FILE")
    if args.init is not None:
        frame = -1 if args.init_frame is None else args.init_frame
        overrides["flow.init"] = {"kind": "file", "params": {"path": args.init, "frame": frame}}
    return load_config(args.config or default_config(args.closure), overrides)


def default_config(name: str | None) -> Path:
    """The run config used without --config: the plug-in's own (e.g. latent_cdm's E1 demo run, whose
    flow its shipped model was trained on), else configs/default.yaml."""
    own = getattr(closure.plugin_class(name), "default_config", None) if name in closure.available() else None
    if own is None:
        return DEFAULT_CONFIG
    path = DEFAULT_CONFIG.parent / own
    print(f"simulate: no --config given; using {name}'s default run {path.relative_to(DEFAULT_CONFIG.parent.parent)}",
          file=sys.stderr)
    return path


def make_plugin(cfg: RunConfig, flow: Flow):
    """The configured plug-in and its period (``closure.every`` or the plug-in's ``default_every``)."""
    cls = closure.plugin_class(cfg.closure.name)
    accepted = inspect.signature(cls.__init__).parameters
    if "checkpoint" in cfg.closure.options and "checkpoint" not in accepted:
        raise ValueError(f"closure {cfg.closure.name!r} takes no checkpoint; drop --checkpoint or choose a "
                         f"learned closure")
    options = dict(cfg.closure.options)
    every = cfg.closure.every or cls.default_every
    if getattr(cls, "needs_observations", False):
        if cfg.observe.truth is None:
            raise ValueError(f"closure {cfg.closure.name!r} assimilates sensor data: give the truth trajectory "
                             f"with --observe TRUTH.h5 (make one with simulate.py --ensemble 1)")
        cls.check_members(cfg.ensemble)
        if parallel.world_size() > 1:
            raise ValueError(f"closure {cfg.closure.name!r} analyses the whole ensemble at once; run it in one "
                             f"process (no torchrun)")
        options["observations"] = observations = twin.sensor_data(
            cfg.observe.truth, flow.grid, cfg.observe.sensors, cfg.observe.noise, cfg.observe.noise_kind,
            cfg.observe.seed, flow.dt / 2, cfg.flow.coarse_grain)
        if cfg.observe.every and cfg.closure.every and cfg.observe.every != cfg.closure.every:
            logging.getLogger(__name__).warning(
                "closure %r runs at the observation times: every %d steps (--obs-every), not closure.every = %d",
                cfg.closure.name, cfg.observe.every, cfg.closure.every)
        every = cfg.observe.every or cfg.closure.every or cls.default_every
        _check_observation_times(observations, flow, every, flow.t0 if cfg.t0 is None else cfg.t0)
    plugin = closure.make_plugin(cfg.closure.name, flow.grid, flow.equation, **options)
    return plugin, every


def _check_observation_times(observations, flow: Flow, every: int, t0: float) -> None:
    """The truth must have frames at some of the plug-in's call times ``t0 + j every dt``."""
    times = observations.times()
    calls = [t0 + j * every * flow.dt for j in range(1, 4)]
    if not any(observations.reference.frame_index(t) is not None for t in calls):
        raise ValueError(f"the truth {observations.reference.path} has no frame at the assimilation times "
                         f"{[round(t, 6) for t in calls]} (every {every} steps of dt={flow.dt:g} from t0={t0:g}); "
                         f"its frames run {times[0]:g}..{times[-1]:g} every {times[1] - times[0] if len(times) > 1 else 0:g}: "
                         f"record the truth at those times (--set record_every=K) or change --obs-every")


def _check_device(device: str) -> None:
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")


class GatheredRecords:
    """``on_record`` of a sharded ensemble: gathers every process's members (rank order = member
    order), and rank 0 hands the whole frame ``(ensemble, n, n)`` to ``recorder``."""

    def __init__(self, recorder: "Recorder | None", ensemble: int) -> None:
        self.recorder, self.ensemble, self.last_time = recorder, ensemble, None

    def __call__(self, t: float, w: torch.Tensor) -> None:
        full = parallel.gather_rows(w, self.ensemble)
        self.last_time = t
        if self.recorder is not None:
            self.recorder(t, full)


def _agreement(device: torch.device):
    """``rollout(agree=...)`` for a sharded ensemble: a blow-up on any process stops all of them."""
    if not parallel.is_distributed():
        return None
    import torch.distributed as dist

    def agree(problem: str | None) -> str | None:
        flag = torch.tensor([0 if problem is None else parallel.rank() + 1], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if problem is None and int(flag) > 0:
            problem = f"the members on rank {int(flag) - 1} blew up"
        return problem

    return agree


class Recorder:
    """``on_record`` callback: streams frames and energy / enstrophy, compares with a reference."""

    def __init__(self, writer: TrajectoryWriter, flow: Flow, reference: Reference | None) -> None:
        self.writer, self.grid, self.reference = writer, flow.grid, reference
        self.metrics: dict[str, list[float]] = {"time": [], "rel_l2": [], "ens_mean_rel_l2": [], "spread": []}

    def __call__(self, t: float, w: torch.Tensor) -> None:
        scalars = {"energy": diagnostics.energy(w, self.grid).cpu().numpy(),
                   "enstrophy": diagnostics.enstrophy(w, self.grid).cpu().numpy()}
        self.writer.append(t, w.detach().cpu().numpy(), scalars)
        truth = self.reference.truth(t) if self.reference is not None else None
        if truth is not None:
            w64, truth = w.to(torch.float64), truth.to(torch.float64)
            values = (t, diagnostics.rel_l2(w64, truth), diagnostics.ens_mean_rel_l2(w64, truth.mean(dim=0)),
                      diagnostics.spread(w64))
            for name, value in zip(self.metrics, values):
                self.metrics[name].append(float(value))


def prepare(args: argparse.Namespace):
    """Everything that can fail on bad input, before any output is written."""
    cfg = resolve(config_from_args(args))
    _check_device(cfg.device)
    closure.plugin_class(cfg.closure.name)  # unknown name -> error listing the choices
    parallel.init(cfg.device)
    if parallel.world_size() > cfg.ensemble:
        raise ValueError(f"{parallel.world_size()} processes for an ensemble of {cfg.ensemble}; use --ensemble "
                         f">= the number of processes (torchrun --nproc-per-node)")
    device = str(parallel.local_device(cfg.device))
    flow = build_flow(cfg.flow, cfg.ensemble, device, cfg.dtype, cfg.seed, align=cfg.record_dt,
                      members=parallel.shard(cfg.ensemble))
    t0 = flow.t0 if cfg.t0 is None else cfg.t0
    steps, record_every = run_length(cfg, flow.dt, t0)
    plugin, every = make_plugin(cfg, flow)
    out = Path(cfg.out or f"runs/{cfg.closure.name}-{time.strftime('%Y%m%d-%H%M%S')}.h5")
    cfg = resolve(cfg, flow__dt=flow.dt, t0=t0, closure__every=every, out=str(out))
    observations = getattr(plugin, "observations", None)
    if args.reference is None and observations is not None:
        reference = observations.reference  # the observed truth: one reader for the sensors and the metrics
    else:
        compare = args.reference or cfg.observe.truth
        reference = Reference(compare, flow.grid, cfg.ensemble, flow.dt / 2, cfg.flow.coarse_grain) if compare else None
    return cfg, flow, plugin, steps, record_every, reference


def run(args: argparse.Namespace, prepared: tuple) -> int:
    """Roll out what :func:`prepare` built and write the outputs; returns the exit code."""
    cfg, flow, plugin, steps, record_every, reference = prepared
    out, main = Path(cfg.out), parallel.is_main()
    if main:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".yaml").write_text(config_to_yaml(cfg))
    attrs = dict(config=config_to_yaml(cfg), grid_n=flow.grid.n, grid_length=flow.grid.length, dt=flow.dt,
                 t0=cfg.t0, closure=cfg.closure.name, members=cfg.ensemble)
    status, message, start = "complete", "", time.perf_counter()
    opened = TrajectoryWriter(out, cfg.ensemble, flow.grid.n, attrs) if main else contextlib.nullcontext()
    with opened as writer:
        recorder = Recorder(writer, flow, reference) if main else None
        on_record = GatheredRecords(recorder, cfg.ensemble)
        try:
            result = rollout(flow.w0, flow.equation, flow.dt, steps, stepper=cfg.flow.stepper, plugin=plugin,
                             every=cfg.closure.every, noise=flow.noise, generator=flow.generator, t0=cfg.t0,
                             record_every=record_every, on_record=on_record, cfl_limit=cfg.cfl_limit,
                             progress=not args.quiet and main, agree=_agreement(flow.grid.device))
        except BlowUpError as err:
            if on_record.last_time is None or err.last_good_t > on_record.last_time + flow.dt / 2:
                on_record(err.last_good_t, err.last_good)
            result, status, message = err.result, "blew_up", str(err)
        result.w = parallel.gather_rows(result.w, cfg.ensemble)
        if main and reference is not None:
            writer.write_group("metrics", **{k: np.asarray(v) for k, v in recorder.metrics.items()})
        history = getattr(plugin, "history", None)
        if main and history and history.get("time"):
            writer.write_group("assimilation", **{k: np.asarray(v) for k, v in history.items()})
        reynolds = _reynolds_group(plugin, flow, cfg.ensemble)
        if main and reynolds is not None:
            writer.write_group("reynolds", **reynolds)
        if main:
            writer.close(status, message)
    if not main:
        return EXIT_BLOW_UP if status == "blew_up" else 0
    wall = time.perf_counter() - start
    figures = [] if args.no_figures else _figures(out)
    if not args.quiet:
        _print_metrics(recorder.metrics, reference)
        _print_assimilation(getattr(plugin, "history", None))
        _print_summary(cfg, flow, result, wall, out, figures, plugin)
    if status == "blew_up":
        print(f"error: the run blew up: {message}.\nThe frames so far and the last good state are in {out} "
              f"(status 'blew_up'); reduce dt (flow.dt / flow.cfl) or check the closure.", file=sys.stderr)
        return EXIT_BLOW_UP
    return 0


def _reynolds_group(plugin, flow: Flow, ensemble: int) -> dict[str, np.ndarray] | None:
    """The members' Reynolds numbers ``Re = 1/nu`` ``(ensemble,)`` drawn from the plug-in's ``reynolds_prior``
    (``prior``) and at the end (``final``), gathered over processes; ``None`` without a prior."""
    reynolds = getattr(plugin, "reynolds", None)
    if reynolds is None or reynolds.prior_draws is None:
        return None
    prior = reynolds.prior_draws.to(flow.grid.device)
    both = parallel.gather_rows(torch.stack([prior, reynolds.reynolds(flow.equation, len(prior)).to(prior)], 1),
                                ensemble)
    return None if both is None else {"prior": both[:, 0].cpu().numpy(), "final": both[:, 1].cpu().numpy()}


def _figures(out: Path) -> list[Path]:
    from solvers.figures import plot_run

    return plot_run(out, out.with_suffix(""))


def _print_metrics(metrics: dict[str, list[float]], reference: Reference | None) -> None:
    if reference is None:
        return
    if not metrics["time"]:
        print(f"note: no frame of {reference.path} lies within dt/2 of a recorded time; nothing compared")
        return
    grids = f"{reference.n}^2 coarse-grained to {reference.grid.n}^2" if reference.n > reference.grid.n else "same grid"
    print(f"\ncomparison with {reference.path} ({grids})")
    print(f"{'t':>10} {'rel_l2':>12} {'ens_mean_rel_l2':>16} {'spread':>12}")
    for t, a, b, c in zip(*metrics.values()):
        print(f"{t:10.4g} {a:12.4e} {b:16.4e} {c:12.4e}")


def _print_assimilation(history: dict | None) -> None:
    """Forecast / analysis RMSE and spread at each observation time (DAPPER's view of a twin run)."""
    if not history or not history.get("time"):
        return
    print(f"\nassimilation: {len(history['time'])} analyses")
    re = "reynolds" in history  # joint Reynolds-number estimation: Re = 1/nu, mean and spread
    print(f"{'t':>10} {'rmse_f':>10} {'rmse_a':>10} {'spread_f':>10} {'spread_a':>10} {'rel_rmse_a':>11} {'s':>8}"
          + (f" {'Re_a':>9} {'Re spread':>9}" if re else ""))
    keys = ("time", "rmse_f", "rmse_a", "spread_f", "spread_a", "rel_rmse_a", "seconds")
    for row in zip(*(history[k] for k in keys + (("reynolds", "reynolds_spread") if re else ()))):
        print(f"{row[0]:10.4g} " + " ".join(f"{v:10.4g}" for v in row[1:5]) + f" {row[5]:11.4g} {row[6]:8.3g}"
              + (f" {row[7]:9.4g} {row[8]:9.3g}" if re else ""))


def _print_summary(cfg: RunConfig, flow: Flow, result, wall: float, out: Path, figures: list[Path],
                   plugin=None) -> None:
    w = result.w
    about = plugin.describe().split("), ", 1)[1] if plugin is not None and "), " in plugin.describe() else ""
    rows = [("closure", f"{cfg.closure.name} (every {cfg.closure.every}){', ' + about if about else ''}"),
            ("flow", f"{cfg.flow.name}: {flow.grid.n}^2, dt={flow.dt:.4g}, {cfg.flow.stepper}, {cfg.device} {cfg.dtype}"),
            ("ensemble", str(cfg.ensemble)),
            ("steps", f"{result.steps} (t {cfg.t0:.4g} -> {result.t:.4g})"),
            ("wall time", f"{wall:.2f} s ({result.steps / max(wall, 1e-9):.1f} steps/s)"),
            ("final energy", f"{diagnostics.energy(w, flow.grid).mean():.6g} (member mean)"),
            ("final enstrophy", f"{diagnostics.enstrophy(w, flow.grid).mean():.6g} (member mean)"),
            ("output", f"{out} (+ {out.with_suffix('.yaml').name}, {len(figures)} figures)")]
    print()
    for name, value in rows:
        print(f"{name:>16}  {value}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 bad input, 3 blow-up)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        try:
            prepared = prepare(args)
        except (ValueError, FileNotFoundError) as err:
            if parallel.is_main():
                print(f"error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if not parallel.is_main():
            logging.getLogger().setLevel(logging.WARNING)
        try:
            return run(args, prepared)
        except ValueError as err:  # a plug-in refusing the running state (e.g. a non-finite forecast)
            if parallel.is_main():
                print(f"error: {err}\nThe frames so far are in {prepared[0].out}.partial (status 'interrupted').",
                      file=sys.stderr)
            return EXIT_BAD_INPUT
    finally:
        if parallel.is_distributed():
            import torch.distributed as dist

            dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
