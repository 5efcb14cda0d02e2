"""The training config (latent/train_config.py): YAML round trip, checked values, the schedule in closed form."""
from __future__ import annotations

import math

import pytest

from latent.train_config import CONFIG_DIR, TrainConfig, config_to_yaml as train_yaml, load_train_config, lr_factor


@pytest.mark.parametrize("kind, expected", [("none", [1, 1, 1, 1]), ("step", [1, 1, 0.5, 0.5]),
                                            ("cosine", [0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])])
def test_lr_schedules(kind, expected):
    cfg = load_train_config(None, {"schedule.kind": kind, "schedule.step_size": 2, "epochs": 4})
    assert [lr_factor(cfg, e) for e in range(4)] == pytest.approx(expected)


def test_config_file_round_trip(tmp_path):
    cfg = load_train_config(CONFIG_DIR / "train_fno.yaml")
    assert cfg.model.kwargs == {"modes": 12, "width": 32, "layers": 4, "hidden": 128}
    assert (cfg.optimizer.lr, cfg.schedule.kind, cfg.schedule.step_size, cfg.schedule.gamma) == (1e-3, "step", 100, 0.5)
    assert (cfg.epochs, cfg.batch_size, cfg.early_stopping.patience) == (500, 64, 50)
    assert load_train_config(None) == TrainConfig()  # every key has a default
    (tmp_path / "c.yaml").write_text(train_yaml(cfg))
    assert load_train_config(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("overrides, message", [({"optimizer.lr": 0}, "optimizer.lr > 0"),
                                                ({"schedule.kind": "linear"}, "unknown schedule.kind"),
                                                ({"dtype": "float16"}, "dtype must be one of"),
                                                ({"epochs": -1}, "epochs >= 0")])
def test_bad_values_are_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_train_config(None, overrides)


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("train_*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_training_config_builds_its_model(path):
    """A key the model does not take (a typo, a renamed argument) fails here, not in a user's first run."""
    from latent.models import build_model

    cfg = load_train_config(path, {})
    assert path.stem == f"train_{cfg.closure}" or path.stem.startswith(f"train_{cfg.closure}_")  # a variant
    model = build_model(cfg.model.name, **cfg.model.kwargs)
    assert sum(p.numel() for p in model.parameters()) > 0
