from pathlib import Path

import pytest

from solvers.config import (RunConfig, apply_overrides, config_from_yaml, config_to_dict, config_to_yaml,
                            load_config, parse_overrides, resolve)

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")
                 if not p.name.startswith(("data_", "train_")))  # run configs only; data/training have their own schemas


def test_shipped_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"default.yaml", "e1_coarse64.yaml", "e1_dns256.yaml", "kolmogorov_les64.yaml",
            "kolmogorov_les32.yaml", "kolmogorov_dns256.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_round_trip(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert config_from_yaml(config_to_yaml(cfg)) == cfg


def test_e1_and_e2_parameters():
    e1 = load_config(CONFIGS[0].parent / "e1_coarse64.yaml")
    assert (e1.flow.n, e1.flow.length, e1.flow.nu, e1.flow.dt, e1.flow.stepper) == (64, 1.0, 1e-3, 1e-3, "euler_cn")
    assert e1.flow.noise.sigma == 5e-5 and e1.flow.noise.kappa == 10 and e1.flow.init.params["tau"] == 7.0
    e2 = load_config(CONFIGS[0].parent / "kolmogorov_les32.yaml")
    assert (e2.flow.n, e2.flow.length, e2.flow.drag, e2.flow.dt, e2.flow.forcing.params["k_f"]) == (32, "2pi", 0.1, None, 4)


@pytest.mark.parametrize("text,key", [("flow: {nuu: 1}", "flow.nuu"), ("colsure: {}", "colsure"),
                                      ("flow: {forcing: {knd: fno}}", "flow.forcing.knd")])
def test_unknown_key_in_file_names_it_and_the_valid_keys(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"unknown config key '{key}'") as info:
        load_config(path)
    assert "valid keys" in str(info.value) and str(path) in str(info.value)


def test_unknown_key_in_override_names_it():
    with pytest.raises(ValueError, match="unknown config key 'flow.viscosity'.*'nu'"):
        load_config(None, ["flow.viscosity=1"])


@pytest.mark.parametrize("item,path,expected", [
    ("flow.nu=1e-3", ("flow", "nu"), 1e-3),              # YAML reads 1e-3 as a string: coerced
    ("flow.n=32", ("flow", "n"), 32),
    ("flow.length=2pi", ("flow", "length"), "2pi"),
    ("flow.noise.sigma=2e-4", ("flow", "noise", "sigma"), 2e-4),
    ("flow.forcing.params.k_f=2", ("flow", "forcing", "params", "k_f"), 2),
    ("closure.options={a: 1}", ("closure", "options"), {"a": 1}),
    ("cfl_limit=null", ("cfl_limit",), None),
])
def test_override_changes_the_value(item, path, expected):
    value = config_to_dict(load_config(None, [item]))
    for part in path:
        value = value[part]
    assert value == expected and type(value) is type(expected)


def test_override_of_a_file_value(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("flow: {nu: 0.01, n: 16}\nsteps: 3\n")
    cfg = load_config(path, ["flow.nu=2.5e-3"])
    assert cfg.flow.nu == 2.5e-3 and cfg.flow.n == 16 and cfg.steps == 3


def test_exclusive_pairs():
    cfg = load_config(None, ["t_end=2", "record_dt=0.5"])
    cfg = apply_overrides(cfg, parse_overrides(["steps=10", "record_every=5"]))
    assert (cfg.steps, cfg.t_end, cfg.record_every, cfg.record_dt) == (10, None, 5, None)
    with pytest.raises(ValueError, match="either steps"):
        load_config(None, ["steps=1", "t_end=2"])


@pytest.mark.parametrize("item,match", [
    ("flow.nu=abc", "'flow.nu' must be a number"),
    ("flow.n=33", "flow.n must be an even integer"),
    ("flow.n=32.5", "'flow.n' must be an integer"),
    ("flow.dealias=1", "'flow.dealias' must be true, false or a name"), ("flow.dealias=3/4", "unknown flow.dealias '3/4'"),
    ("flow.stepper=rk9", "unknown flow.stepper 'rk9'"),
    ("flow.forcing.kind=magic", "unknown flow.forcing.kind"),
    ("flow.length=-1", "length"),
    ("dtype=float16", "dtype must be one of"),
    ("flow.init={kind: file}", "needs params.path"),
    ("novalue", "key=value"),
])
def test_bad_values_are_named(item, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [item])


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        load_config("nowhere.yaml")


def test_resolve_fills_device_and_dotted_values():
    cfg = resolve(load_config(None), flow__dt=0.01, closure__every=3)
    assert cfg.device in ("cpu", "cuda") and cfg.flow.dt == 0.01 and cfg.closure.every == 3
    assert resolve(cfg) == cfg


def test_config_is_frozen():
    cfg = load_config(None)
    with pytest.raises(AttributeError):
        cfg.flow.nu = 1.0  # type: ignore[misc]
