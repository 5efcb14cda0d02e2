"""Trainable closure models, registered by name, and the normalisation they work in.

Every model is a :class:`TrainableModel`: one object owns ``loss()`` (used by
:mod:`latent.training`) and ``predict()`` (used by the plug-in), so training and inference cannot
drift apart (k-diffusion style). Both work in *normalised* units (:class:`Normalization`).
``build_model(name, **kwargs)`` builds one and records ``model.spec = {"name", "kwargs"}`` (every
constructor argument, defaults filled in) so a checkpoint rebuilds the model from the file alone.

Stochastic models (conditional diffusion) implement the same two methods: ``loss`` returns the
weighted total and its named terms, ``predict`` draws a sample with the given generator.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from solvers.registry import Registry

from .fno import FNO2d

__all__ = ["TrainableModel", "Normalization", "check_trajectory_grid", "register_model", "model_class", "available_models",
           "build_model", "FNOClosureModel"]

_MODELS = Registry("model", "argument(s)")


class TrainableModel(nn.Module):
    """Interface of a trainable closure model (all tensors ``(batch, x, y)``, normalised units)."""

    name: str = ""
    spec: dict
    ddp_find_unused: bool = False  # True when some parameters get no gradient in some steps (DDP must know)
    samples: str = "pairs"  # "pairs": (state, target) fields; "trajectories": whole trajectories and parameters

    @classmethod
    def check_data(cls, attrs: dict, times, kwargs: dict) -> None:
        """Trajectory models: ``ValueError`` when the dataset (root ``attrs``, record ``times``) does not fit
        a model built with ``kwargs``."""

    def loss(self, state: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scalar training loss (mean over the batch) and its named terms (detached scalars)."""
        raise NotImplementedError

    def predict(self, state: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The closure term for ``state`` (a sample for stochastic models)."""
        raise NotImplementedError

    def fit_normalization(self, norm: "Normalization") -> None:
        """Called once by the trainer with the train split's normalisation before :meth:`fit_data` (not on
        ``--resume``): models that need the data's physical units keep them in buffers here."""

    def fit_data(self, state: torch.Tensor, target: torch.Tensor) -> None:
        """Called once by the trainer with the normalised train split before training (not on ``--resume``):
        models with statistics of the data in their buffers (e.g. a POD prior) fit them here."""

    def begin_epoch(self, epoch: int) -> bool:
        """Called by the trainer before each epoch (0-based). Returns True when the loss changes its
        definition here (a new training phase), so the best validation loss is reset."""
        return False


def check_trajectory_grid(cls, attrs: dict, times, kwargs: dict) -> dict:
    """For trajectory models' ``check_data``: ``ValueError`` naming the ``--set`` fix unless the data's frame
    spacing, grid size and box side (root ``attrs``, record ``times``) equal model ``cls``'s ``frame_dt``,
    ``n``, ``length`` from ``kwargs`` (or their defaults). Returns the constructor's defaults."""
    defaults = {k: v.default for k, v in inspect.signature(cls.__init__).parameters.items()}
    given = {key: float(kwargs.get(key, defaults[key])) for key in ("frame_dt", "n", "length")}
    found = {"frame_dt": float(times[1] - times[0]) if len(times) > 1 else math.nan,
             "n": float(attrs["grid_n"]), "length": float(attrs["grid_length"])}
    for key, value in found.items():
        if not math.isclose(given[key], value, rel_tol=1e-6):
            raise ValueError(f"the data has {key} = {value:g} but model.kwargs.{key} is {given[key]:g}; set "
                             f"--set model.kwargs.{key}={value:g}")
    return defaults


@dataclass(frozen=True)
class Normalization:
    """Scalar affine normalisation of state and target: ``(x - mean) / std`` (train-split stats)."""

    state_mean: float
    state_std: float
    target_mean: float
    target_std: float

    def __post_init__(self) -> None:
        for key, value in asdict(self).items():
            if not math.isfinite(value) or (key.endswith("std") and not value > 0):
                raise ValueError(f"normalisation {key}={value!r} must be finite (std > 0); "
                                 f"the dataset's train split is empty or constant")

    @classmethod
    def from_stats(cls, stats: dict) -> "Normalization":
        """From a ``{state,target}_{mean,std}`` mapping (``PairData.stats``, a checkpoint)."""
        missing = [k for k in ("state_mean", "state_std", "target_mean", "target_std") if k not in stats]
        if missing:
            raise ValueError(f"normalisation statistics lack {missing}; regenerate the dataset")
        return cls(*(float(stats[k]) for k in ("state_mean", "state_std", "target_mean", "target_std")))

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def state(self, w: torch.Tensor) -> torch.Tensor:
        return (w - self.state_mean) / self.state_std

    def target(self, h: torch.Tensor) -> torch.Tensor:
        return (h - self.target_mean) / self.target_std

    def denormalize_target(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.target_std + self.target_mean


register_model = _MODELS.register  # class decorator: buildable as ``model.name: <name>`` in a training config
available_models = _MODELS.available
model_class = _MODELS.get


def build_model(name: str, **kwargs) -> TrainableModel:
    """Model ``name`` with constructor ``kwargs``; unknown kwargs are an error naming the valid ones."""
    cls = model_class(name)
    _MODELS.check_options(name, kwargs)
    signature = inspect.signature(cls.__init__)
    bound = signature.bind_partial(None, **kwargs)
    bound.apply_defaults()
    resolved = {k: v for k, v in bound.arguments.items() if k != "self"}
    try:
        model = cls(**resolved)
    except TypeError as err:
        raise ValueError(f"bad arguments for model {name!r}: {err}") from err
    model.spec = {"name": name, "kwargs": resolved}
    return model


@register_model("fno")
class FNOClosureModel(TrainableModel):
    """Deterministic closure: an :class:`~latent.fno.FNO2d` from the normalised coarse state to the
    normalised closure term, trained by mean squared error."""

    def __init__(self, modes: int = 12, width: int = 32, layers: int = 4, hidden: int = 128) -> None:
        super().__init__()
        self.net = FNO2d(1, 1, modes=modes, width=width, layers=layers, hidden=hidden)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state)

    def loss(self, state: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mse = F.mse_loss(self(state), target)
        return mse, {"mse": mse.detach()}

    def predict(self, state: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self(state)


from . import cdm as _cdm  # noqa: E402,F401  registers p_cdm, latent_cdm, latent_cdm_two_phase
from . import sparse_recon as _sparse_recon  # noqa: E402,F401  registers sparse_recon
from . import ld_model as _ld_model  # noqa: E402,F401  registers ld_ensf
from . import vq_forecast as _vq_forecast  # noqa: E402,F401  registers vq_forecast
