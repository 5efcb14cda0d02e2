"""Can a learned latent ODE represent these latent dynamics? Fits to the exact projected tendency (issue 5).

    python benchmarks/latent_tendency_fit.py --checkpoint runs/ld_ensf_galerkin/best.pt --width 256 1024

A POD-Galerkin ``ld_ensf`` model (``dynamics: galerkin``, :mod:`latent.galerkin`) gives the exact tendency
``dz/dt = P N(decode(z); Re)`` of every code. Here that tendency is the regression target, on the codes of the
parametric data's training frames (each at its trajectory's Re), and each fit is scored on the test frames by
its relative tendency error ``|f - f_exact| / |f_exact|`` (mean over frames) and by the one-frame forecast it
gives (RK4 over the frame spacing, decoded, relative error against the next frame, at frames 1, 10, 20, 40):

- ``linear``: least squares of ``f`` on ``[z, 1, p]`` (ridge ``1e-2`` x the features' mean square);
- ``mlp W``: the ``ld_ensf`` latent vector field's MLP (two hidden layers of width ``W``) on standardised codes,
  Adam, cosine schedule, ``--epochs``;
- ``exact``: the projection itself (the forecast error is then the POD's and the time step's).

Persistence's forecast error is the reference a latent ODE must beat. On the E3 data (6 150 training codes, 512
POD modes) neither fit comes near the exact tendency, which is why the neural ODE forecasts no better than
persistence (``benchmarks/README.md``, "Latent dynamics").
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from latent.checkpoint import load_checkpoint
from latent.latent_ode import LatentVectorField, rk4
from solvers.io import publish_results
from solvers.pairs import read_trajectories

RESULTS = Path(__file__).resolve().parent / "results"
FRAMES = (1, 10, 20, 40)


def codes(model, norm, data: str, split: str):
    """Normalised fields ``(traj, time, x, y)``, their codes ``(traj, time, latent)``, normalised Re ``(traj, 1)``."""
    d = read_trajectories(data, split)
    w = norm.state(d.state).float()
    with torch.no_grad():
        z = model.encode(w.flatten(0, 1)).reshape(*w.shape[:2], -1)
    return w, z, model.normalize_params(d.params.float())


def exact_tendency(model, z: torch.Tensor, p: torch.Tensor, chunk: int = 500) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.vector_field(z[i:i + chunk], p[i:i + chunk]) for i in range(0, len(z), chunk)])


def fit_linear(z, p, target):
    """``f(z, p) = [z, 1, p] A`` by ridge least squares."""
    X = torch.cat([z, torch.ones_like(z[:, :1]), p], 1).double()
    ridge = 1e-2 * X.pow(2).mean() * len(X)
    A = torch.linalg.solve(X.T @ X + ridge * torch.eye(X.shape[1], dtype=X.dtype), X.T @ target.double()).float()
    return lambda z, p: torch.cat([z, torch.ones_like(z[:, :1]), p], 1) @ A


def fit_mlp(z, p, target, width: int, epochs: int, seed: int):
    """The latent vector field's MLP on standardised codes and targets (Adam 1e-3, cosine, batches of 64)."""
    torch.manual_seed(seed)
    zs, ts = z.std(0).clamp_min(1e-8), target.std(0).clamp_min(1e-8)
    net = LatentVectorField(z.shape[1], p.shape[1], width)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
    for _ in range(epochs):
        for idx in torch.randperm(len(z)).split(64):
            loss = (net(z[idx] / zs, p[idx]) - target[idx] / ts).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    net.eval()
    return lambda z, p: net(z / zs, p) * ts


def score(f, model, z_test, p_test, target_test, w_test, z_pairs, p_pairs, exact: bool = False) -> dict:
    """Relative tendency error on the test codes and the one-frame forecast error at FRAMES (RK4, the model's
    substeps; ``exact``: the model's own ``advance``, whose steps follow the flow's speed)."""
    with torch.no_grad():
        tendency = ((f(z_test, p_test) - target_test).norm(dim=1) / target_test.norm(dim=1)).mean()
        batch, frames = w_test.shape[:2]
        ahead = (model.advance(z_pairs, p_pairs) if exact
                 else rk4(f, z_pairs, p_pairs, model.frame_dt, model.ode_substeps))
        forecast = model.decode(ahead)
        truth = w_test[:, 1:].flatten(0, 1)
        rel = ((forecast - truth).pow(2).mean((-2, -1)) / truth.pow(2).mean((-2, -1))).sqrt()
        rel = rel.reshape(batch, frames - 1).mean(0)
    return {"tendency_rel_error": float(tendency), "one_frame": [float(rel[k - 1]) for k in FRAMES if k < frames]}


def measure(checkpoint: str, data: str, widths: list[int], epochs: int, seed: int) -> dict:
    ckpt = load_checkpoint(checkpoint)
    model, norm = ckpt.build_model().eval(), ckpt.normalization
    if getattr(model, "tendency", None) is None:
        raise SystemExit(f"{checkpoint} has no projected equations: train one with "
                         f"configs/train_ld_ensf_galerkin.yaml (model.kwargs.dynamics: galerkin)")
    _, z_train, p_train = codes(model, norm, data, "train")
    w_test, z_test, p_test = codes(model, norm, data, "test")
    z = z_train.flatten(0, 1)
    p = p_train.repeat_interleave(z_train.shape[1], 0)
    target = exact_tendency(model, z, p)
    zt, pt = z_test.flatten(0, 1), p_test.repeat_interleave(z_test.shape[1], 0)
    target_test = exact_tendency(model, zt, pt)
    z_pairs = z_test[:, :-1].flatten(0, 1)
    p_pairs = p_test.repeat_interleave(z_test.shape[1] - 1, 0)
    args = (model, zt, pt, target_test, w_test, z_pairs, p_pairs)
    with torch.no_grad():
        still = model.decode(z_pairs)
        truth = w_test[:, 1:].flatten(0, 1)
        persistence = ((still - truth).pow(2).mean((-2, -1)) / truth.pow(2).mean((-2, -1))).sqrt()
        persistence = persistence.reshape(w_test.shape[0], -1).mean(0)
    rows = {"persistence": {"tendency_rel_error": 1.0,
                            "one_frame": [float(persistence[k - 1]) for k in FRAMES if k < w_test.shape[1]]},
            "exact": score(model.vector_field, *args, exact=True), "linear": score(fit_linear(z, p, target), *args)}
    for width in widths:
        rows[f"mlp {width}"] = score(fit_mlp(z, p, target, width, epochs, seed), *args)
    return {"training_codes": len(z), "latent": z.shape[1], "frames": [k for k in FRAMES if k < w_test.shape[1]],
            "rows": rows}


def table(r: dict) -> str:
    frames = r["frames"]
    lines = ["| latent tendency | rel. error (test) | " + " | ".join(f"one frame, frame {k}" for k in frames) + " |",
             "|---|---|" + "---|" * len(frames)]
    for name, row in r["rows"].items():
        lines.append(f"| {name} | {row['tendency_rel_error']:.3g} | "
                     + " | ".join(f"{v:.3g}" for v in row["one_frame"]) + " |")
    lines.append(f"\n{r['training_codes']} training codes, {r['latent']} latent dimensions")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="an ld_ensf model with dynamics: galerkin")
    p.add_argument("--data", default="data/e3_small.h5", help="parametric data file (train and test splits)")
    p.add_argument("--width", type=int, nargs="*", default=[256, 1024], help="MLP widths to fit")
    p.add_argument("--epochs", type=int, default=20, help="epochs of each MLP fit")
    p.add_argument("--seed", type=int, default=0, help="MLP initialisation and batch order")
    p.add_argument("--json", type=Path, default=RESULTS / "latent_tendency_fit.json", help="results file")
    args = p.parse_args(argv)
    results = {"setup": {k: str(v) for k, v in vars(args).items()},
               **measure(args.checkpoint, args.data, args.width, args.epochs, args.seed)}
    return publish_results(args.json, results, table(results))


if __name__ == "__main__":
    raise SystemExit(main())
