"""Conditional diffusion closures (DESIGN.md E1; seed 004): ``p_cdm``, ``latent_cdm``, ``latent_cdm_two_phase``.

All three learn the conditional distribution ``p(H | w)`` of the closure term ``H`` given the
coarse vorticity ``w`` (both ``(batch, x, y)``, normalised) with a VE SDE
(:mod:`latent.diffusion`) and a two-branch :class:`~latent.score.ConditionalScoreNet`:

- ``p_cdm``: the score network works on the physical 64^2 fields (P-CDM);
- ``latent_cdm``: autoencoders map ``w`` and ``H`` to 16^2 latents ``z_w``, ``z_H`` and the score
  network works on ``z_H`` given ``z_w``; trained jointly with the loss
  ``10 recon(H) + 0.1 recon(w) + 0.1 score + 0.01 moment(z_H)``, the score gradient reaching both
  encoders (L-CDM, joint); optionally ``+ w_decoded |dec_H(D(z_H + sigma e)) - H|^2``, the decoded
  denoiser's error in physical space at the samplers' noise levels (``D``: :func:`~latent.diffusion.denoised`),
  so that the score network's latent errors shape the decoder (off by default: E1's loss; no gain measured on
  the E2 32^2 small data, benchmarks/README.md); optionally
  (``mean_branch``) a deterministic FNO predicts ``E[H | w]`` (``+ w_mean |m(w) - H|^2``) and the
  autoencoder and diffusion model the residual ``H - m(w)``, a draw being ``m(w) + dec_H(z)`` (regression
  plus diffusion residual, as CorrDiff, Mardani et al. 2023; off by default);
- ``latent_cdm_two_phase``: the same model trained in two phases, the autoencoders alone for
  ``ae_epochs`` epochs, then the score network on the frozen encoders' latents.

``predict`` draws one sample per batch row (each ensemble member its own) with the sampler chosen
by ``sampler`` / ``steps`` / ``t_max`` / ``t_min`` / ``rho`` (defaults: the E1 setting,
Euler-Maruyama, 10 steps, t from 0.4 to 1e-3, rho = 7), in one batched network call per step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .autoencoder import Decoder, Encoder
from .diffusion import VESDE, available_samplers, denoised, dsm_loss, sample
from .fno import FNO2d
from .models import TrainableModel, register_model
from .score import ConditionalScoreNet

__all__ = ["ConditionalDiffusion", "PhysicalCDM", "LatentCDM", "LatentCDMTwoPhase", "moment_penalty"]


def moment_penalty(z: torch.Tensor) -> torch.Tensor:
    """KL divergence from ``N(mean, var)`` of the batch's latent values to ``N(0, 1)``: keeps the
    latent at unit scale, matched to the SDE's noise levels, and away from collapse."""
    mean, var = z.mean(), z.var().clamp_min(1e-8)
    return 0.5 * (mean ** 2 + var - 1 - var.log())


class ConditionalDiffusion(TrainableModel):
    """Score ``s(x, t | c) = net(x, log sigma(t), c) / sigma(t)`` and a sampler for ``x | c``."""

    def __init__(self, net: ConditionalScoreNet, sigma_max: float, sampler: str, steps: int, t_max: float,
                 t_min: float, rho: float) -> None:
        super().__init__()
        if sampler not in available_samplers():
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {available_samplers()}")
        self.net, self.sde = net, VESDE(sigma_max)
        self.sampling = {"sampler": sampler, "steps": steps, "t_max": t_max, "t_min": t_min, "rho": rho}

    def score(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        sigma = self.sde.sigma(t)
        return self.net(x, sigma.log(), c) / sigma.reshape(-1, *[1] * (x.dim() - 1))

    def sample(self, c: torch.Tensor, generator=None, shape: tuple[int, ...] | None = None, **sampling) -> torch.Tensor:
        """One sample of ``x | c`` per row of ``c`` ``(batch, ...)``, ``x`` of ``shape`` (default: ``c``'s);
        ``sampling`` overrides the defaults."""
        unknown = set(sampling) - set(self.sampling)
        if unknown:
            raise ValueError(f"unknown sampling option(s) {sorted(unknown)}; choose from {sorted(self.sampling)}")
        opts = {**self.sampling, **{k: v for k, v in sampling.items() if v is not None}}
        return sample(lambda x, t: self.score(x, t, c), tuple(c.shape) if shape is None else shape, self.sde,
                      generator=generator, device=c.device, dtype=c.dtype, **opts)


def _sampling_defaults(sampler: str, steps: int, t_max: float, t_min: float, rho: float) -> dict:
    return {"sampler": sampler, "steps": steps, "t_max": t_max, "t_min": t_min, "rho": rho}


@register_model("p_cdm")
class PhysicalCDM(ConditionalDiffusion):
    """P-CDM: the score network on the physical fields (E1: modes 6, width 40, 4 layers)."""

    def __init__(self, modes: int = 6, width: int = 40, layers: int = 4, hidden: int = 64, embed: int = 32,
                 sigma_max: float = 30.0, sampler: str = "euler_maruyama", steps: int = 10, t_max: float = 0.4,
                 t_min: float = 1e-3, rho: float = 7.0) -> None:
        super().__init__(ConditionalScoreNet(modes, width, layers, hidden, embed), sigma_max,
                         **_sampling_defaults(sampler, steps, t_max, t_min, rho))

    def loss(self, state, target):
        score = dsm_loss(lambda x, t: self.score(x, t, state), target, self.sde)
        return score, {"score": score.detach()}

    def predict(self, state, generator=None, **sampling):
        return self.sample(state, generator, **sampling)


@register_model("latent_cdm")
class LatentCDM(ConditionalDiffusion):
    """L-CDM trained jointly: autoencoders for ``w`` and ``H`` plus a latent score network.

    ``ae_channels`` / ``levels``: autoencoder width and halvings (64^2 -> 16^2 for 2); ``latent_channels`` /
    ``cond_channels``: channels of the closure's latent ``z_H`` and of the state's ``z_w`` (E1: 1 each; ``4^levels``
    channels keep as many numbers as the field); ``modes``, ``width``, ``layers``, ``hidden``, ``embed``: the
    latent score network (E1: modes 4, width 20); ``w_*``: the loss weights (``w_decoded``: the decoded-denoising
    term, 0 = E1's loss); ``mean_branch``: keyword arguments of an :class:`~latent.fno.FNO2d` for the
    conditional mean (``modes``, ``width``, ``layers``, ``hidden``), ``None`` = E1's model, with weight ``w_mean``."""

    joint = True

    def __init__(self, ae_channels: int = 16, levels: int = 2, modes: int = 4, width: int = 20, layers: int = 4,
                 hidden: int = 64, embed: int = 32, sigma_max: float = 30.0, sampler: str = "euler_maruyama",
                 steps: int = 10, t_max: float = 0.4, t_min: float = 1e-3, rho: float = 7.0,
                 w_recon_h: float = 10.0, w_recon_w: float = 0.1, w_score: float = 0.1,
                 w_moment: float = 0.01, latent_channels: int = 1, cond_channels: int = 1,
                 w_decoded: float = 0.0, mean_branch: dict | None = None, w_mean: float = 10.0) -> None:
        super().__init__(ConditionalScoreNet(modes, width, layers, hidden, embed, latent_channels, cond_channels),
                         sigma_max, **_sampling_defaults(sampler, steps, t_max, t_min, rho))
        if w_decoded < 0 or w_mean < 0:
            raise ValueError(f"w_decoded and w_mean must be >= 0, got {w_decoded}, {w_mean}")
        self.mean = None
        if mean_branch is not None:
            unknown = set(mean_branch) - {"modes", "width", "layers", "hidden"}
            if unknown:
                raise ValueError(f"mean_branch: unknown key(s) {sorted(unknown)}; use modes, width, layers, hidden")
            self.mean = FNO2d(1, 1, **mean_branch)
        self.enc_h, self.dec_h = Encoder(ae_channels, levels, latent_channels), Decoder(ae_channels, levels, latent_channels)
        self.enc_w, self.dec_w = Encoder(ae_channels, levels, cond_channels), Decoder(ae_channels, levels, cond_channels)
        self.weights = {"recon_h": w_recon_h, "recon_w": w_recon_w, "score": w_score, "moment": w_moment}
        if w_decoded:
            self.weights["decoded"] = w_decoded
        if self.mean is not None:
            self.weights["mean"] = w_mean

    def terms(self, state: torch.Tensor, target: torch.Tensor, score: bool = True) -> dict[str, torch.Tensor]:
        """Unweighted loss terms, with their graphs. The score term's latents are detached unless the
        model trains jointly (``self.joint``)."""
        out = {}
        if self.mean is not None:
            mean = self.mean(state)
            out["mean"] = F.mse_loss(mean, target)
            target = target - mean.detach()  # the autoencoder and the diffusion model the residual
        z_h, z_w = self.enc_h(target), self.enc_w(state)
        out.update(recon_h=F.mse_loss(self.dec_h(z_h), target), recon_w=F.mse_loss(self.dec_w(z_w), state),
                   moment=moment_penalty(z_h))
        if score:
            if not self.joint:
                z_h, z_w = z_h.detach(), z_w.detach()
            out["score"] = dsm_loss(lambda x, t: self.score(x, t, z_w), z_h, self.sde)
            if "decoded" in self.weights:
                t_range = (self.sampling["t_min"], self.sampling["t_max"])
                out["decoded"] = F.mse_loss(self.dec_h(denoised(lambda x, t: self.score(x, t, z_w), z_h, self.sde,
                                                                 t_range)), target)
        return out

    def loss(self, state, target):
        terms = self.terms(state, target)
        total = sum(self.weights[k] * v for k, v in terms.items())
        return total, {k: v.detach() for k, v in terms.items()}

    def encode_condition(self, state: torch.Tensor) -> torch.Tensor:
        return self.enc_w(state)

    def sample_latent(self, z_w: torch.Tensor, generator=None, **sampling) -> torch.Tensor:
        """One ``z_H ~ p(z_H | z_w)`` per row of ``z_w``."""
        shape = (z_w.shape[0], *([] if self.net.channels == 1 else [self.net.channels]), *z_w.shape[-2:])
        return self.sample(z_w, generator, shape=shape, **sampling)

    def predict(self, state, generator=None, **sampling):
        draw = self.dec_h(self.sample_latent(self.enc_w(state), generator, **sampling))
        return draw if self.mean is None else self.mean(state) + draw


@register_model("latent_cdm_two_phase")
class LatentCDMTwoPhase(LatentCDM):
    """L-CDM trained in two phases: for epochs ``< ae_epochs`` the autoencoders alone
    (``10 recon(H) + 0.1 recon(w) + 0.01 moment``), then the latent score network alone on the
    frozen encoders' latents (``0.1 score``). The score gradient never reaches the encoders."""

    joint = False
    ddp_find_unused = True  # each phase leaves one part without gradients

    def __init__(self, ae_epochs: int = 100, ae_channels: int = 16, levels: int = 2, modes: int = 4, width: int = 20,
                 layers: int = 4, hidden: int = 64, embed: int = 32, sigma_max: float = 30.0,
                 sampler: str = "euler_maruyama", steps: int = 10, t_max: float = 0.4, t_min: float = 1e-3,
                 rho: float = 7.0, w_recon_h: float = 10.0, w_recon_w: float = 0.1, w_score: float = 0.1,
                 w_moment: float = 0.01, latent_channels: int = 1, cond_channels: int = 1) -> None:
        super().__init__(ae_channels, levels, modes, width, layers, hidden, embed, sigma_max, sampler, steps, t_max,
                         t_min, rho, w_recon_h, w_recon_w, w_score, w_moment, latent_channels, cond_channels)
        if ae_epochs < 0:
            raise ValueError(f"ae_epochs must be >= 0, got {ae_epochs}")
        self.ae_epochs, self.phase = ae_epochs, 1 if ae_epochs > 0 else 2

    def begin_epoch(self, epoch: int) -> bool:
        self.phase = 1 if epoch < self.ae_epochs else 2  # the other part runs under no_grad (no gradient at all)
        return epoch == self.ae_epochs and epoch > 0

    def loss(self, state, target):
        if self.phase == 1:
            terms = self.terms(state, target, score=False)
            total = sum(self.weights[k] * v for k, v in terms.items())
            with torch.no_grad():  # logged only, so every epoch's log row has the same columns
                terms["score"] = self.terms_score(state, target)
        else:
            with torch.no_grad():
                terms = self.terms(state, target, score=False)
            terms["score"] = self.terms_score(state, target)
            total = self.weights["score"] * terms["score"]
        return total, {k: v.detach() for k, v in terms.items()}

    def terms_score(self, state: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z_h, z_w = self.enc_h(target), self.enc_w(state)
        return dsm_loss(lambda x, t: self.score(x, t, z_w), z_h, self.sde)
