"""The parts of a trained ``latent_cdm`` (or ``latent_cdm_two_phase``) model measured alone on a pair file's
test split: where the latent closure loses what the state knows about the closure.

    python benchmarks/cdm_components.py --checkpoint closure/checkpoints/latent_cdm_e1_small.pt --data data/e1_small.h5
    python benchmarks/cdm_components.py --checkpoint runs/e2_les32/latent_cdm/best.pt --data data/e2_les32_small.h5

Correlations with the normalised truth (1 = perfect), on every ``--stride``-th test pair:

- ``mean branch`` (models with one): its ``m(w)`` against ``H``; the latents then hold ``H - m(w)`` and every
  decoded row below adds ``m(w)`` back;
- ``autoencoder``: ``dec_h(enc_h(H))`` against ``H``, the best a latent sample can decode to;
- ``denoiser`` at each noise level ``sigma(t)``: ``x + sigma^2 s(x, t | z_w)`` from ``x = z_H + sigma eps``
  against ``z_H`` (the noisy ``x`` itself beside it): how much the score network adds from the condition;
- ``sample``: one latent draw ``z ~ p(z_H | z_w)`` against ``z_H``, the mean of ``--samples`` draws, and both
  decoded against ``H``; ``spread``: the draws' standard deviation over that of ``z_H``;
- ``drain``: the enstrophy the closure takes from the resolved flow, ``sum_k C(k)`` of the cospectrum of the
  closure and the state (:func:`solvers.diagnostics.cospectrum`) over shells ``1..n/3`` and over the
  near-cutoff band ``n/3 < k <= n/2``, for the autoencoder, one decoded draw and the mean of the draws, as
  a fraction of the true ``H``'s (1 = the right drain; 0 = none, the state-dependent part of the closure
  lost: the small-data E2 models' band spectrum error, ``spectrum k > n/3``, stays at the no-closure level).

A closure whose mean-of-draws correlation stays far below a deterministic model's (the E2 ``fno``) is limited
by its conditional score (or its condition's encoder), not by its sampler. Writes ``results/cdm_components.{json,md}``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from latent.checkpoint import load_checkpoint
from solvers import Grid
from solvers.diagnostics import correlation as corr
from solvers.diagnostics import cospectrum
from solvers.io import missing_input, publish_results
from solvers.pairs import read_attrs, read_pairs

RESULTS = Path(__file__).resolve().parent / "results"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a latent_cdm / latent_cdm_two_phase checkpoint")
    p.add_argument("--data", required=True, help="the pair file it was trained on (its test split is used)")
    p.add_argument("--stride", type=int, default=4, help="use every stride-th test pair")
    p.add_argument("--samples", type=int, default=8, help="draws per pair for the mean of draws")
    p.add_argument("--times", type=float, nargs="+", default=[0.05, 0.2, 0.4], help="SDE times of the denoiser rows")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and the draws")
    p.add_argument("--json", type=Path, default=RESULTS / "cdm_components.json", help="results file")
    return p


def drain_rows(fields: dict[str, torch.Tensor], h: torch.Tensor, w: torch.Tensor, grid: Grid) -> list[dict]:
    """Rows ``drain``: each closure field's enstrophy transfer with the state ``w`` over the resolved shells
    ``1..n/3`` and the band ``n/3 < k <= n/2``, over the true ``h``'s (all ``(batch, x, y)``)."""
    n = grid.n

    def bands(f):
        c = cospectrum(f.double(), w.double(), grid)[1].mean(0)
        return float(c[1:n // 3 + 1].sum()), float(c[n // 3 + 1:].sum())

    truth = bands(h)
    rows = []
    for what, f in fields.items():
        low, band = bands(f)
        rows.append({"part": "drain", "what": f"{what}: k <= n/3 | n/3 < k <= n/2, over H's",
                     "corr": low / truth[0], "band": band / truth[1]})
    return rows


@torch.no_grad()
def measure(model, w: torch.Tensor, h: torch.Tensor, times: list[float], samples: int, seed: int,
            grid: Grid | None = None) -> dict:
    """The table's rows for normalised states ``w`` and targets ``h`` ``(batch, x, y)`` (with ``grid``: the
    ``drain`` rows too)."""
    g = torch.Generator().manual_seed(seed)
    rows, mean = [], 0.0
    if getattr(model, "mean", None) is not None:  # a mean branch: the latents hold the residual H - m(w)
        mean = model.mean(w)
        rows.append({"part": "mean branch", "what": "m(w) vs H", "corr": corr(mean, h)})
    z_h, z_w = model.enc_h(h - mean), model.enc_w(w)
    decode = lambda z: mean + model.dec_h(z)  # noqa: E731
    rows.append({"part": "autoencoder", "what": "dec_h(enc_h(H)) vs H", "corr": corr(decode(z_h), h)})
    for t in times:
        tt = torch.full((z_h.shape[0],), float(t))
        sigma = model.sde.sigma(tt).reshape(-1, *[1] * (z_h.dim() - 1))
        x = z_h + sigma * torch.randn(z_h.shape, generator=g)
        denoised = x + sigma ** 2 * model.score(x, tt, z_w)
        rows.append({"part": f"denoiser t={t:g} (sigma {float(sigma[0]):.3g})", "what": "vs z_H (noisy input)",
                     "corr": corr(denoised, z_h), "input_corr": corr(x, z_h)})
    draws = torch.stack([model.sample_latent(z_w, g) for _ in range(samples)])
    rows += [{"part": "sample", "what": "one draw vs z_H", "corr": corr(draws[0], z_h)},
             {"part": "sample", "what": f"mean of {samples} draws vs z_H", "corr": corr(draws.mean(0), z_h)},
             {"part": "decoded", "what": "one draw vs H", "corr": corr(decode(draws[0]), h)},
             {"part": "decoded", "what": f"mean of {samples} draws vs H", "corr": corr(decode(draws.mean(0)), h)}]
    if grid is not None:
        rows += drain_rows({"autoencoder": decode(z_h), "one draw": decode(draws[0]),
                            f"mean of {samples} draws": decode(draws.mean(0))}, h, w, grid)
    return {"rows": rows, "spread": float(draws.std(0).mean() / z_h.std()), "pairs": int(w.shape[0])}


def table(results: dict) -> str:
    lines = ["| part | what | corr (drain: k <= n/3) | input corr (drain: n/3 < k <= n/2) |", "|---|---|---|---|"]
    for r in results["rows"]:
        other = r.get("input_corr", r.get("band"))
        lines.append(f"| {r['part']} | {r['what']} | {r['corr']:.3f} | {'—' if other is None else f'{other:.3f}'} |")
    return "\n".join(lines) + f"\n\nspread of the draws / std of z_H: {results['spread']:.3f} ({results['pairs']} pairs)\n"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    problem = missing_input([(args.checkpoint, "train one: python train_closure.py train --closure latent_cdm ..."),
                             (args.data, "generate it: python train_closure.py generate --config ...")])
    if problem:
        print(problem)
        return 2
    ckpt = load_checkpoint(args.checkpoint)
    model, norm = ckpt.build_model().eval(), ckpt.normalization
    if not hasattr(model, "enc_h"):
        print(f"error: {args.checkpoint} holds a {type(model).__name__}, not a latent diffusion closure "
              f"(latent_cdm or latent_cdm_two_phase)")
        return 2
    attrs = read_attrs(args.data)
    try:
        ckpt.check_grid(int(attrs["grid_n"]), float(attrs["grid_length"]))
    except ValueError as err:
        print(f"error: {args.data}: {err}")
        return 2
    test = read_pairs(args.data, "test")
    idx = torch.arange(0, len(test.state), args.stride)
    grid = Grid(int(attrs["grid_n"]), float(attrs["grid_length"]), dtype=torch.float64)
    results = measure(model, norm.state(test.state[idx]).float(), norm.target(test.target[idx]).float(),
                      args.times, args.samples, args.seed, grid)
    results.update(checkpoint=str(args.checkpoint), data=str(args.data))
    return publish_results(args.json, results, table(results))


if __name__ == "__main__":
    raise SystemExit(main())
