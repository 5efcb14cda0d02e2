"""The data-generation config (solvers/data_config.py): checked values, the fingerprint that guards resuming."""
import dataclasses

import pytest

from solvers.data_config import config_hash, load_data_config
from test_datagen import config  # writes a YAML of the 32^2 E1 test config (with changes)


@pytest.mark.parametrize("change,match", [
    ({"splits": {"train": 1, "val": 1, "test": 1}}, "must add up to trajectories=4"),
    ({"coarse": {"n": 16, "method": "gaussian"}}, "kind e1 needs coarse.method subsample"),
    ({"coarse": {"n": 12, "method": "subsample"}}, "multiple of it"),
    ({"record": {"start": 0.0205, "end": 0.05, "dt": 0.01}}, "multiples of dns.dt"),
    ({"reference": {"start": 0.1, "end": 0.05, "dt": 0.01}}, "0 <= start < end"),
    ({"bogus": 1}, "unknown config key 'bogus'"),
])
def test_bad_configs_name_the_problem(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        load_data_config(config(tmp_path, **change))


def test_dns_dt_must_be_fixed(tmp_path):
    with pytest.raises(ValueError, match="fixed dns.dt"):
        load_data_config(config(tmp_path), ["dns.dt=null"])


def test_hash_follows_everything_but_the_output_path(tmp_path):
    cfg = load_data_config(config(tmp_path))
    assert config_hash(dataclasses.replace(cfg, out="elsewhere.h5")) == config_hash(cfg)
    assert config_hash(dataclasses.replace(cfg, seed=1)) != config_hash(cfg)
    assert config_hash(load_data_config(config(tmp_path), ["dns.nu=2e-3"])) != config_hash(cfg)
