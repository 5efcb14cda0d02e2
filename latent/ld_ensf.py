"""LD-EnSF (seed 003): the ensemble score filter run in the latent space of an ``ld_ensf`` model.

The filtered variable of member ``i`` is ``x_i = [u_i, p_i]`` ``(latent + 1,)``: the standardised
latent ``u = (z - z_mean) / z_std`` and the normalised Reynolds number ``p`` (joint state +
parameter estimation). One cycle (:meth:`LatentFilter.cycle`):

1. forecast: ``z_i <- rk4(f, z_i, p_i, interval)`` (the latent ODE; ``p`` persists, plus a small
   random walk ``param_jitter`` so the parameter ensemble does not collapse);
2. observe: the LSTM reads the new sensor readings (its state carries the history) and returns a
   mean and variance of ``[u, p]``: a direct, noisy observation of the filtered variable, so
   ``H = I`` and ``R = diag(var)``;
3. analysis: :func:`latent.ensf.ensf_analysis` (training-free mixture score, alpha/beta schedule,
   damped or Tweedie likelihood guidance) in ``latent + 1`` dimensions, which is why it is cheap.

``observation = "sensors"`` replaces step 2's latent observation of ``u`` by the sensor readings themselves:
the likelihood ``y ~ N(h(u), R)`` with ``h = sense o decode``, linearised at the forecast ensemble mean
``u_bar`` (``y - h(u_bar) + J u_bar ~ J u``, ``J = dh/du`` ``(sensors, latent)`` by autograd: the decoder
answers any coordinates), ``R = sensor_noise^2 + representation_error^2`` (the noise plus what the
decoder cannot represent at a sensor). The LSTM still observes the parameter. This removes the LSTM's
latent estimate (E3: decoded relative error 0.67-0.89) from the state update: the filter sees the
sensors through the same decoder that produces the analysis.

:class:`LatentFilter` is used two ways: *pure latent* (:func:`run_latent`: the ensemble lives only
in latent space, decoded when a field is wanted; no solver) and *hybrid* (the ``ld_ensf`` plug-in in
:mod:`closure.ld_ensf`: the forecast is the solver's, encoded each cycle, and the analysis goes back
into the solver). Fields here are in the model's normalised units.
"""
from __future__ import annotations

import torch

from .analysis import enkf_analysis, mixture_analysis
from .ensf import GUIDANCE, ensf_analysis

__all__ = ["LatentFilter", "run_latent", "OBSERVATIONS"]

OBSERVATIONS = ("lstm", "sensors")
PARAMETER_UPDATES = ("joint", "separate")


class LatentFilter:
    """A latent ensemble ``x`` ``(members, latent + 1)`` with the LSTM's observation history.

    ``steps``, ``eps_alpha``, ``eps_beta``, ``clip``, ``guidance``: the EnSF analysis (E3: 100 steps,
    eps_alpha 0.01, damped ``h(t) = 1 - t``); ``inflation``: multiplicative, on the forecast anomalies;
    ``param_jitter``: standard deviation of the parameter's random walk per cycle (normalised units,
    where the prior is U(-1, 1)); ``observation``: ``lstm`` (the LSTM's latent, the paper's) or ``sensors``
    (module docstring) with ``sensor_noise`` (default: the model's ``obs_noise``) and ``representation_error``,
    both standard deviations in normalised units; ``kernel``: the EnSF prior's Gaussian kernel on the latent
    components (standardised units; :func:`latent.ensf.ensf_analysis`; the parameter gets none), so the
    analysis can leave the span of the members; ``implicit``: the damped guidance's stable step (many precise
    sensors make the explicit one diverge); ``reproject``: after each analysis, every member's latent is
    replaced by the code of its decoded field, ``u <- standardize(encode(decode(u)))``: back onto the codes the
    latent ODE was trained on (the kernel's analysis may leave them); ``parameter`` (sensor observation):
    ``joint`` (the EnSF analyses ``[u, p]`` together: ``p`` moves by the mixture weights, which many precise
    sensors make nearly one-hot, so ``p`` jumps to one member's) or ``separate`` (the EnSF analyses ``u``; ``p``
    gets a stochastic EnKF update from the LSTM's observation of it alone); ``kernel_scale``: ``fixed`` (``kernel``
    in standardised units, the same for every component) or ``spread`` (``kernel`` times each component's ensemble
    standard deviation: the per-dimension bandwidth of a kernel density estimate); ``sampler``: ``ensf`` (the score
    filter's reverse SDE) or ``exact`` (the sensors' linearised likelihood makes the kernel-dressed prior's
    posterior a Gaussian mixture, sampled in closed form by :func:`latent.analysis.mixture_analysis`: the
    reference the EnSF approximates, at one ``obs x obs`` Cholesky per analysis)."""

    def __init__(self, model, members: int, generator: torch.Generator | None = None, steps: int = 100,
                 eps_alpha: float = 0.01, eps_beta: float = 0.0, clip: float | None = None,
                 guidance: str = "tweedie", inflation: float = 1.0, param_jitter: float = 0.02,
                 observation: str = "lstm", sensor_noise: float | None = None,
                 representation_error: float = 0.3, kernel: float = 0.0, implicit: bool = False,
                 reproject: bool = False, parameter: str = "joint", kernel_scale: str = "fixed",
                 sampler: str = "ensf") -> None:
        if observation not in OBSERVATIONS:
            raise ValueError(f"unknown LD-EnSF observation {observation!r}; choose one of {list(OBSERVATIONS)}")
        if sampler not in ("ensf", "exact") or (sampler == "exact" and (observation != "sensors" or kernel <= 0)):
            raise ValueError(f"sampler must be 'ensf' or 'exact' (exact: with observation='sensors' and kernel > 0); "
                             f"got {sampler!r}, {observation!r}, kernel {kernel}")
        if kernel_scale not in ("fixed", "spread"):
            raise ValueError(f"unknown kernel_scale {kernel_scale!r}; choose 'fixed' or 'spread'")
        if parameter not in PARAMETER_UPDATES:
            raise ValueError(f"unknown LD-EnSF parameter update {parameter!r}; choose one of {list(PARAMETER_UPDATES)}")
        if guidance not in GUIDANCE:
            raise ValueError(f"unknown EnSF guidance {guidance!r}; choose one of {list(GUIDANCE)}")
        if implicit and (guidance != "damped" or clip is not None):
            raise ValueError("implicit is the damped guidance's step (without clip); drop it or use guidance='damped'")
        if members < 2 or inflation < 1 or param_jitter < 0 or kernel < 0:
            raise ValueError(f"need members >= 2, inflation >= 1, param_jitter >= 0, kernel >= 0; got {members}, "
                             f"{inflation}, {param_jitter}, {kernel}")
        self.model, self.members, self.generator = model, members, generator
        self.options = dict(steps=steps, eps_alpha=eps_alpha, eps_beta=eps_beta, clip=clip, guidance=guidance,
                            implicit=bool(implicit))
        self.inflation, self.param_jitter, self.kernel = inflation, param_jitter, float(kernel)
        self.kernel_scale, self.sampler = kernel_scale, sampler
        self.observation, self.reproject, self.parameter = observation, bool(reproject), parameter
        noise = getattr(model, "obs_noise", 0.1) if sensor_noise is None else sensor_noise
        if noise < 0 or representation_error < 0 or noise + representation_error == 0:
            raise ValueError(f"need sensor_noise, representation_error >= 0, not both 0; got {noise}, "
                             f"{representation_error}")
        self.noise_var, self.representation_var = float(noise) ** 2, float(representation_error) ** 2
        self.x: torch.Tensor | None = None
        self.lstm_state = None
        self.last_observation: tuple[torch.Tensor, torch.Tensor] | None = None

    def _randn(self, *shape) -> torch.Tensor:
        ref = self.model.z_mean
        return torch.randn(*shape, generator=self.generator, dtype=torch.float64).to(ref.device)

    @torch.no_grad()
    def initialize(self, fields: torch.Tensor) -> None:
        """Start from normalised fields ``(members, x, y)`` (encoded) and parameters from the prior U(-1, 1)."""
        if fields.shape[0] != self.members:
            raise ValueError(f"need {self.members} initial fields, got {fields.shape[0]}")
        u = self.model.standardize(self.model.encode(fields.to(self.model.z_mean))).to(torch.float64)
        p = 2 * torch.rand(self.members, 1, generator=self.generator, dtype=torch.float64).to(u.device) - 1
        self.x = torch.cat([u, p], 1)

    @torch.no_grad()
    def set_latent(self, fields: torch.Tensor) -> None:
        """Replace the latent part by the codes of normalised fields ``(members, x, y)`` (hybrid: the solver's
        forecast); the parameters are kept."""
        u = self.model.standardize(self.model.encode(fields.to(self.model.z_mean))).to(torch.float64)
        self.x = torch.cat([u, self.x[:, -1:]], 1)

    @torch.no_grad()
    def forecast(self, interval: float) -> None:
        """Advance every member by ``interval`` time units with the latent ODE at its own parameter."""
        m = self.model
        z = m.unstandardize(self.x[:, :-1].to(m.z_mean))
        z = m.advance(z, self.x[:, -1:].to(z), interval)
        if not bool(torch.isfinite(z).all()):
            raise FloatingPointError(f"the latent forecast over {interval:g} time units gave non-finite codes: the "
                                     "latent ODE diverged from the analysis members (a neural ODE off its training "
                                     "codes, or too few RK4 steps: raise model.kwargs.ode_substeps)")
        self.x = torch.cat([m.standardize(z).to(torch.float64), self.x[:, -1:]], 1)
        self.jitter_parameters()

    def jitter_parameters(self) -> None:
        """The parameters' random walk over one cycle: ``p += param_jitter * N(0, 1)`` per member."""
        self.x[:, -1:] += self.param_jitter * self._randn(self.members, 1)

    @torch.no_grad()
    def observe(self, readings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed normalised sensor readings ``(sensors,)`` to the LSTM; its mean and variance of ``[u, p]``."""
        ref = self.model.z_mean
        mean, var, self.lstm_state = self.model.observe(readings.to(ref)[None, None], self.lstm_state)
        self.last_observation = (mean[0, 0].to(torch.float64), var[0, 0].to(torch.float64))
        return self.last_observation

    @torch.no_grad()
    def analysis(self, mean: torch.Tensor, var: torch.Tensor, H: torch.Tensor | None = None,
                 latent_only: bool = False) -> None:
        """EnSF update of the ensemble with observations ``mean`` of noise ``var`` ``(obs,)`` of ``H x``
        ``(obs, latent + 1)``; ``H = None``: the LSTM's latent observation, every component observed.
        ``latent_only``: the EnSF sees ``u`` alone (``H`` ``(obs, latent)``), ``p`` is left as it is."""
        x = self.x[:, :-1] if latent_only else self.x
        if self.inflation > 1:
            center = x.mean(0)
            x = center + self.inflation ** 0.5 * (x - center)
        gen = self.generator if self.generator is None or self.generator.device == x.device else None
        kernel = None
        if self.kernel > 0:  # the latent components only
            kernel = torch.full((x.shape[1],), self.kernel, dtype=x.dtype, device=x.device)
            if self.kernel_scale == "spread":
                kernel = kernel * x.std(0)
            if not latent_only:
                kernel[-1] = 0.0
        scale = 1e3 * (1 + max(float(x.abs().max()), float(mean.abs().max())))  # posteriors lie near prior and data
        if self.sampler == "exact":
            x = mixture_analysis(x, mean, H, var, kernel, gen)
        else:
            x = ensf_analysis(x, mean, H, var, gen, kernel=kernel, **self.options)
        if not bool(torch.isfinite(x).all()) or float(x.abs().max()) > scale:
            raise FloatingPointError(
                "the LD-EnSF analysis diverged (members non-finite or 1000x the forecast's and data's size): the "
                "damped guidance's explicit steps are unstable for a stiff likelihood (many sensors, small variance); "
                "use implicit=True or guidance='tweedie', or raise steps or representation_error")
        self.x = torch.cat([x, self.x[:, -1:]], 1) if latent_only else x

    @torch.no_grad()
    def parameter_update(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Stochastic EnKF update (:func:`latent.analysis.enkf_analysis`, centred perturbations) of the members'
        parameters ``p`` by one direct observation ``mean`` of variance ``var`` (scalars: the LSTM's)."""
        p = self.x[:, -1:]
        gen = self.generator if self.generator is None or self.generator.device == p.device else None
        self.x[:, -1:] = enkf_analysis(p, mean.reshape(1), p, var.reshape(1), gen)

    def sensor_likelihood(self, readings: torch.Tensor, lstm: tuple[torch.Tensor, torch.Tensor],
                          noise_var: torch.Tensor | None = None, offset: torch.Tensor | None = None):
        """The linearised sensor observation (module docstring) of normalised ``readings`` ``(sensors,)``
        joined to the LSTM's observation of the parameter: ``(y, var, H)`` for :meth:`analysis`. ``noise_var``:
        the readings' noise variances ``(sensors,)`` when known (default: ``sensor_noise^2``); ``offset``
        ``(sensors,)``: a known part of the readings the latent does not carry, ``h(u) = sense(decode(u)) + offset``
        (hybrid: the solver members' mean unresolved part at the sensors, :mod:`closure.ld_ensf`)."""
        m = self.model
        u_bar = self.x[:, :-1].mean(0)

        def h(u):  # (latent,) -> (sensors,), twice: the Jacobian's output and its value at u_bar
            out = m.sense_latent(m.unstandardize(u.to(m.z_mean))[None])[0].to(torch.float64)
            return out, out.detach()

        J, h_bar = torch.func.jacrev(h, has_aux=True)(u_bar)  # (sensors, latent): 2.4x faster than autograd's jacobian
        s, d = J.shape[0], self.x.shape[1]
        H = torch.zeros(s + 1, d, dtype=torch.float64, device=J.device)
        H[:s, :-1], H[s, -1] = J, 1.0
        if offset is not None:
            readings = readings - offset.to(readings)
        y = torch.cat([readings.to(J) - h_bar + J @ u_bar, lstm[0][-1:]])
        noise = torch.full((s,), self.noise_var) if noise_var is None else noise_var
        var = torch.cat([noise.to(J) + self.representation_var, lstm[1][-1:]])
        return y, var, H

    def assimilate(self, readings: torch.Tensor, noise_var: torch.Tensor | None = None,
                   offset: torch.Tensor | None = None) -> None:
        """``observe`` the readings (the LSTM's history), ``analysis`` with the chosen ``observation`` (``noise_var``,
        ``offset``: :meth:`sensor_likelihood`), ``reproject``."""
        lstm = self.observe(readings)
        if self.observation == "lstm":
            self.analysis(*lstm)
        elif self.parameter == "joint":
            self.analysis(*self.sensor_likelihood(readings, lstm, noise_var, offset))
        else:
            y, var, H = self.sensor_likelihood(readings, lstm, noise_var, offset)
            self.analysis(y[:-1], var[:-1], H[:-1, :-1], latent_only=True)
            self.parameter_update(y[-1], var[-1])
        if self.reproject:
            self.set_latent(self.fields())

    def cycle(self, readings: torch.Tensor, interval: float | None) -> None:
        """``forecast`` (skipped when ``interval`` is None: the first observation) and :meth:`assimilate`."""
        if interval is not None:
            self.forecast(interval)
        self.assimilate(readings)

    @torch.no_grad()
    def fields(self, n: int | None = None) -> torch.Tensor:
        """The members decoded, normalised ``(members, n, n)``."""
        m = self.model
        return m.decode(m.unstandardize(self.x[:, :-1].to(m.z_mean)), n)

    def reynolds(self) -> torch.Tensor:
        """Every member's Reynolds number ``(members,)``."""
        return self.model.reynolds_from(self.x[:, -1])


def run_latent(model, readings: torch.Tensor, times: list[float], initial: torch.Tensor,
               generator: torch.Generator | None = None, **options) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Pure-latent LD-EnSF over a sequence of sensor readings ``(cycles, sensors)`` (normalised) at ``times``:
    no solver. Returns the decoded ensemble mean at every observation time ``(cycles, n, n)``, the
    Reynolds ensembles ``(cycles, members)`` and the wall time of each cycle (forecast + observe +
    analysis; decoding for the diagnostics is not counted)."""
    import time

    filt = LatentFilter(model, initial.shape[0], generator, **options)
    filt.initialize(initial)
    means, reynolds, seconds = [], [], []
    for k, y in enumerate(readings):
        start = time.perf_counter()
        filt.cycle(y, None if k == 0 else times[k] - times[k - 1])
        seconds.append(time.perf_counter() - start)
        means.append(filt.fields().mean(0))
        reynolds.append(filt.reynolds())
    return torch.stack(means), torch.stack(reynolds), seconds
