"""The ``vq_forecast`` plug-in: a pure-latent forecast from sparse sensors, in place of the solver.

At the first observation time (``simulate.py --observe TRUTH.h5 --sensors ...``) the sensor values give
the dense field's code tokens (:class:`latent.vq_forecast.VQForecast`, the sensor encoder); from then on,
at every call that lands on a whole number of the model's forecast steps (``step_dt``: ``stride`` data
frames of ``frame_dt``) after it, the forecaster
advances the codes by those frames and the decoded field replaces every member's state. The solver's own
steps in between are discarded: the run *is* the latent forecast, written by ``simulate.py`` like any run,
to be compared with reconstruct-then-simulate (``--closure sparse_recon --set
closure.options.ensemble=first`` re-initialises once, then the solver forecasts). Call it every ``k``
solver steps with ``k dt`` dividing ``step_dt``.

``temperature``: 0 takes the most likely codes (every member the same forecast); above 0 every member
samples its own codes (a stochastic ensemble): the first frame's with probability ``exp(-|z - e_j|^2 /
(dim temperature))`` around the sensor encoder's latent ``z``, the forecast's from the softmax of its
logits over ``temperature``. ``reobserve``: also re-read the sensors at every later
observation time (a reconstruction, the forecast restarting from it). ``seed``: the stream of the
code draws (one stream for all members, each member its own draws from it). Observation times log the usual
scores of :mod:`closure.assimilation` (``rmse_f``: the state before, ``rmse_a``: after).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

import torch

from .reconstruction import Reconstruction
from .registry import register

__all__ = ["VQForecastPlugin"]


@register("vq_forecast")
class VQForecastPlugin(Reconstruction):
    """Sparse sensors -> codes -> autoregressive code forecast -> fields (see the module doc); ``checkpoint``
    from ``train_closure.py train --closure vq_forecast``, on ``device``."""

    requires_checkpoint: ClassVar[bool] = True

    def __init__(self, grid, equation, observations=None, checkpoint: str | None = None, device=None,
                 temperature: float = 0.0, reobserve: bool = False, seed: int = 0) -> None:
        super().__init__(grid, equation, observations, 1.0)
        from .learned import load_plugin_model

        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0: the most likely codes), got {temperature}")
        ckpt, self.device, self.model = load_plugin_model(
            self.name, checkpoint, grid, device, "`python train_closure.py train --closure vq_forecast --data FILE`")
        self.norm, self.checkpoint = ckpt.normalization, str(checkpoint)
        self.temperature, self.reobserve = float(temperature), bool(reobserve)
        self.codes: torch.Tensor | None = None  # (members, frames, tokens, tokens): the context window
        self.t0, self.frame, self.last_t = 0.0, 0, None
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))  # code draws (temperature > 0)

    def _start(self, y: torch.Tensor, members: int) -> None:
        """Codes of every member from sensor values ``y`` ``(sensors,)``."""
        positions = (self.observations.operator.positions / self.grid.length).to(self.device, torch.float32)
        values = self.norm.state(y.to(self.device, torch.float32))[None]
        guess = self.model.encode_sensors(values, positions)[0]  # (tokens, tokens, dim)
        quantizer = self.model.autoencoder.quantizer
        if self.temperature == 0:
            codes = quantizer.nearest(guess).expand(members, -1, -1)
        else:  # P(code j) ~ exp(-|guess - e_j|^2 / (dim temperature))
            dist = (guess[..., None, :] - quantizer.codebook).pow(2).sum(-1)  # (tokens, tokens, codes)
            probs = torch.softmax(-dist / (quantizer.dim * self.temperature), -1).flatten(0, 1)
            draws = torch.multinomial(probs, members, replacement=True, generator=self.generator)
            codes = draws.t().reshape(members, *guess.shape[:2])
        self.codes = codes[:, None]

    def _fields(self, like: torch.Tensor) -> torch.Tensor:
        w = self.model.fields(self.codes[:, -1]) * self.norm.state_std + self.norm.state_mean
        return w.reshape(like.shape).to(like)

    @torch.no_grad()
    def __call__(self, state):
        members = state.w.shape[0]
        obs = self.observations.at(state.t)
        if self.codes is None and obs is None:
            return None  # before the first observation the solver runs on
        start = time.perf_counter()
        if self.codes is None or (self.reobserve and obs is not None):
            self._start(obs.y, members)
            self.t0, self.frame = state.t, 0
        else:
            self._check_period(state.t)
            frames = (state.t - self.t0) / self.model.step_dt
            due = round(frames)
            if abs(frames - due) > 1e-6 * max(1.0, frames) or due <= self.frame:
                self.last_t = state.t
                return None  # between frames: the solver's step stands until the next frame time
            new = self.model.forecast(self.codes, due - self.frame, self.generator, self.temperature)
            self.codes = torch.cat([self.codes, new], 1)[:, -self.model.context:]
            self.frame = due
        self.last_t = state.t
        out = self._fields(state.w)
        if obs is not None:
            X = state.w.reshape(members, -1).to(torch.float64)
            self._log(obs, X, out.reshape(members, -1).to(torch.float64), time.perf_counter() - start)
        return out

    def _check_period(self, t: float) -> None:
        """The calls must land on the model's frames: ``ValueError`` naming the fix at the second call otherwise."""
        if self.last_t is None or self.frame > 0 or self.last_t != self.t0:
            return
        period, frame_dt = t - self.last_t, self.model.step_dt
        ratio = frame_dt / period
        if period <= 0 or abs(ratio - round(ratio)) > 1e-6 * ratio:
            raise ValueError(f"vq_forecast steps {frame_dt:g} time units per frame, but it is called every {period:g}: "
                             f"call it every k solver steps (--every k) with k x dt dividing {frame_dt:g}")

    @classmethod
    def example_checkpoint(cls, path: str | Path, grid, equation, seed: int = 0) -> Path:
        """An untrained tiny model that fits ``grid`` (contract tests, smoke runs); frames 0.2 apart."""
        from latent.models import build_model

        from .learned import save_example_checkpoint

        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = build_model(cls.name, n=grid.n, length=grid.length, frame_dt=0.2, tokens=grid.n // 8, codes=16,
                                dim=4, width=4, sensor_width=8, sensor_blocks=1, frequencies=2, context=2,
                                forecast_width=8, forecast_layers=1, heads=2)
        return save_example_checkpoint(path, cls.name, model, grid, equation)

    def describe(self) -> str:
        mode = "re-reads the sensors" if self.reobserve else "sensors at the first observation only"
        return f"{super().describe()}, checkpoint {self.checkpoint}, {mode}, temperature {self.temperature:g}"
