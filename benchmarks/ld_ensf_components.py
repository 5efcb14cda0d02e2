"""The parts of a trained ``ld_ensf`` model measured alone on held-out trajectories (what bounds LD-EnSF).

    python benchmarks/ld_ensf_components.py --checkpoint runs/ld_ensf/best.pt

On the test split of the parametric data: the autoencoder's relative error (encode -> decode), the
one-frame latent ODE forecast from the encoded truth beside persistence (the decoded code of the frame before:
what the ODE must beat) and from the code perturbed by ``--start-noise`` x each component's std (does the ODE
bring an analysis-like perturbed state back?), the LSTM's latent observation decoded (noise
``--noise`` in normalised units), each at a few frame indices, and the LSTM's Re at the last frame
against the truth. The filter cannot beat the autoencoder's error; the Re error of the LSTM is what
the latent analysis has to work with.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from latent.checkpoint import load_checkpoint
from solvers.io import publish_results
from solvers.pairs import read_trajectories

RESULTS = Path(__file__).resolve().parent / "results"


def rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Relative RMSE per field ``(..., x, y) -> (...)``."""
    return ((a - b).pow(2).mean((-2, -1)) / b.pow(2).mean((-2, -1))).sqrt()


@torch.no_grad()
def measure(checkpoint: str, data: str, noise: float, count: int, seed: int, start_noise: float = 0.2) -> dict:
    ckpt = load_checkpoint(checkpoint)
    model, norm = ckpt.build_model().eval(), ckpt.normalization
    test = read_trajectories(data, "test")
    w = norm.state(test.state[:count]).float()  # (traj, time, x, y)
    batch, frames = w.shape[:2]
    z = model.encode(w.flatten(0, 1))
    auto = rel(model.decode(z).reshape(w.shape), w)
    p = model.normalize_params(test.params[:count].float()).repeat_interleave(frames - 1, 0)
    zf = model.advance(z.reshape(batch, frames, -1)[:, :-1].flatten(0, 1), p)
    shape = (batch, frames - 1, *w.shape[-2:])
    forecast = rel(model.decode(zf).reshape(shape), w[:, 1:])
    z0 = z.reshape(batch, frames, -1)[:, :-1].flatten(0, 1)
    persistence = rel(model.decode(z0).reshape(shape), w[:, 1:])
    torch.manual_seed(seed)  # a code perturbed by start_noise x each component's std: does the ODE return?
    zn = z0 + start_noise * z.std(0) * torch.randn_like(z0)
    noisy = rel(model.decode(model.advance(zn, p)).reshape(shape), w[:, 1:])
    y = model.sense(w)
    mean, var, _ = model.observe(y + noise * torch.randn_like(y))
    lstm = rel(model.decode(model.unstandardize(mean[..., :-1].flatten(0, 1))).reshape(w.shape), w)
    re = model.reynolds_from(mean[:, -1, -1])
    truth = test.params[:count, 0].float()
    picks = [0, frames // 4, frames // 2, frames - 1]
    return {"frames": picks, "autoencoder": auto.mean(0)[picks].tolist(),
            "ode_one_frame": [float(forecast.mean(0)[max(k - 1, 0)]) for k in picks],
            "persistence": [float(persistence.mean(0)[max(k - 1, 0)]) for k in picks],
            "ode_noisy_start": [float(noisy.mean(0)[max(k - 1, 0)]) for k in picks], "start_noise": start_noise,
            "lstm_decoded": lstm.mean(0)[picks].tolist(),
            "lstm_reynolds": re.tolist(), "truth_reynolds": truth.tolist(),
            "lstm_reynolds_rel_error": float(((re - truth).abs() / truth).mean()),
            "prior_mean_rel_error": float(((truth.new_tensor(sum(model.reynolds) / 2) - truth).abs() / truth).mean())}


def table(r: dict) -> str:
    lines = ["| part | " + " | ".join(f"frame {k}" for k in r["frames"]) + " |", "|---|" + "---|" * len(r["frames"])]
    rows = [("autoencoder", "autoencoder rel. error"), ("ode_one_frame", "latent ODE, one frame"),
            ("persistence", "persistence (decoded code), one frame"),
            ("ode_noisy_start", f"latent ODE, one frame from code + {r.get('start_noise')} std noise"),
            ("lstm_decoded", "LSTM observation, decoded")]
    for key, name in rows:
        if key not in r:
            continue
        lines.append(f"| {name} | " + " | ".join(f"{v:.3g}" for v in r[key]) + " |")
    lines.append(f"\nLSTM Re at the last frame: mean relative error {100 * r['lstm_reynolds_rel_error']:.1f} % "
                 f"(the prior mean's: {100 * r['prior_mean_rel_error']:.1f} %)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="trained ld_ensf model")
    p.add_argument("--data", default="data/e3_small.h5", help="parametric data file (its test split is used)")
    p.add_argument("--noise", type=float, default=0.1, help="sensor noise std, normalised units (E3: 0.1)")
    p.add_argument("--count", type=int, default=8, help="test trajectories")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--start-noise", type=float, default=0.2,
                   help="perturbation of the codes (x each component's std) for the noisy-start ODE row")
    p.add_argument("--json", type=Path, default=RESULTS / "ld_ensf_components.json", help="results file")
    args = p.parse_args(argv)
    results = {"setup": {k: str(v) for k, v in vars(args).items()},
               **measure(args.checkpoint, args.data, args.noise, args.count, args.seed, args.start_noise)}
    return publish_results(args.json, results, table(results))


if __name__ == "__main__":
    raise SystemExit(main())
