"""The config convention: task files read by path with `get_config("method=lora,local")`,
typed `--config.key=value` overrides, and old runs' config.json upgraded in one place."""

from __future__ import annotations

import json
from pathlib import Path

import ml_collections
import pytest

from prefix_jax.config import defaults
from prefix_jax.config.parse import (
    ConfigError,
    apply_overrides,
    load_config,
    override,
    parse_arg,
    split_overrides,
)
from prefix_jax.config.upgrade import load_run_config, upgrade
from prefix_jax.methods import registry

CONFIGS = Path(__file__).parents[1] / "configs"
TASKS = ("e2e", "webnlg", "dart", "xsum")


def config(name: str = "e2e", arg: str = "") -> ml_collections.ConfigDict:
    return load_config(f"{CONFIGS / name}.py" + (f":{arg}" if arg else ""))


def test_config_files_are_one_per_task_and_start_with_their_command():
    assert sorted(p.stem for p in CONFIGS.glob("*.py")) == sorted(TASKS)
    for task in TASKS:
        module_doc = (CONFIGS / f"{task}.py").read_text().split('"""')[1]
        command = module_doc.split("\n\n")[1].strip()
        assert command.startswith(f"prefix-jax train --config configs/{task}.py"), task


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("method", list(registry.METHODS))
def test_method_argument_switches_method_and_its_optimizer(task, method):
    plain, local = config(task, f"method={method}"), config(task, f"method={method},local")
    assert plain.method == local.method == method
    assert local.max_steps == 60 and plain.max_steps == 0
    expected = config(task)  # the prefix-tuning config, then the method's settings on top
    expected.method = method
    expected.optim.update(registry.get(method).optimizer_defaults(local=False))
    assert plain.to_dict() == expected.to_dict()


def test_default_method_is_prefix_with_the_task_settings():
    c = config("webnlg", "local")
    assert c.method == "prefix" and c.data.task == "webnlg" and c.batch_size == 8
    assert c.optim.learning_rate == 1e-3 and config("webnlg").optim.learning_rate == 5e-5
    assert config("e2e", "method=lora").optim.learning_rate == 2e-4


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("lcoal", r"unknown config argument 'lcoal'; known \(with defaults\): method='prefix'"),
        ("method=lora,lcoal", r"unknown config argument 'lcoal'.*local=False"),
        ("method", r"config argument 'method' needs a value"),
        ("local=maybe", r"local is a bool \(true or false\), got 'maybe'"),
    ],
)
def test_bad_config_arguments_name_the_known_keys(arg, message):
    with pytest.raises(ConfigError, match=message):
        config("e2e", arg)


def test_unknown_method_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown method 'lroa'; known: prefix, prompt, lora"):
        config("e2e", "method=lroa")


def test_parse_arg_types_values_by_their_defaults():
    args = parse_arg("n=3, local ,rate=0.5,name=x=y", n=1, local=False, rate=1.0, name="")
    assert args.to_dict() == {"n": 3, "local": True, "rate": 0.5, "name": "x=y"}
    assert parse_arg(None, n=1).n == 1 and parse_arg("", n=1).n == 1
    with pytest.raises(ConfigError, match="n is int, got 'three'"):
        parse_arg("n=three", n=1)


def test_load_config_errors():
    with pytest.raises(ConfigError, match="config file configs/e2e_prefix.py not found"):
        load_config("configs/e2e_prefix.py:local")


def test_overrides_are_typed_by_the_field():
    c = config("e2e", "local")
    apply_overrides(
        c,
        [
            ("optim.learning_rate", "1e-3"),
            ("optim.warmup_steps", "7"),
            ("data.skip_bad", "true"),
            ("lora.targets", "('q','k','v','o')"),
            ("data.buckets", "(48,96)"),
            ("mesh", '(("data",1),("fsdp",-1))'),
            ("prefix.embed_dim", "64"),
            ("prefix.init", "text:table-to-text:"),
            ("meteor_jar", "/x/meteor.jar"),
            ("data.path", "/data/e2e devset.csv"),
        ],
    )
    assert c.optim.learning_rate == 1e-3 and c.optim.warmup_steps == 7 and c.data.skip_bad
    assert c.lora.targets == ("q", "k", "v", "o") and c.data.buckets == (48, 96)
    assert c.mesh == (("data", 1), ("fsdp", -1)) and c.prefix.embed_dim == 64
    assert c.prefix.init == "text:table-to-text:" and c.meteor_jar == "/x/meteor.jar"
    assert c.data.path == "/data/e2e devset.csv"
    override(c, "optim.learning_rate", "1")  # an int for a float field
    assert c.optim.learning_rate == 1.0 and isinstance(c.optim.learning_rate, float)
    override(c, "lora.targets", "q")  # one element alone: a 1-tuple, as ml_collections does
    assert c.lora.targets == ("q",)
    override(c, "prefix.embed_dim", "None")
    assert c.prefix.embed_dim is None


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "optim.lerning_rate",
            "1e-3",
            r"unknown config key 'optim.lerning_rate': config.optim has grad_clip, learning_rate",
        ),
        ("lcoal", "1", r"unknown config key 'lcoal': config has attention, batch_size"),
        ("seed.x", "1", r"unknown config key 'seed.x': config.seed is not a block"),
        ("nope.x", "1", r"unknown config key 'nope.x': config has attention"),
        ("optim", "1", r"config.optim is a block; override its fields"),
        ("max_steps", "many", r"config.max_steps is int, got 'many'"),
        ("data.skip_bad", "yes please", r"config.data.skip_bad is a bool"),
        ("lora.targets", "(q,v)", r"config.lora.targets is a tuple: quote its strings"),
    ],
)
def test_bad_overrides_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        override(config(), key, value)


def test_split_overrides_takes_both_spellings():
    rest, overrides = split_overrides(
        ["--config", "c.py", "--config.a=1", "--workdir", "w", "--config.b.c", "x=y"]
    )
    assert rest == ["--config", "c.py", "--workdir", "w"]
    assert overrides == [("a", "1"), ("b.c", "x=y")]
    with pytest.raises(ConfigError, match="--config.a needs a value"):
        split_overrides(["--config.a"])


# ---------------------------------------------------------------------------- upgrade


# What an early version (before the baselines, the attention option, `data.split_seed`,
# `data.tune_sources`, `data.train_examples` and `prefix.parts`) wrote to config.json.
OLD_RUN = {
    "model": "smollm2",
    "param_dtype": "float32",
    "dtype": "float32",
    "remat": "",
    "seed": 3,
    "mesh": [["data", -1], ["fsdp", 1], ["tensor", 1]],
    "sharding_rules": [["batch", ["data", "fsdp"]], ["embed", "fsdp"]],
    "prefix": {
        "length": 5,
        "reparam": "mlp",
        "hidden": 512,
        "embed_dim": None,
        "dropout": 0.0,
        "init": "random",
        "init_scale": 1.0,
        "init_fit_steps": 300,
        "positions": "from_zero",
        "seed": 0,
    },
    "data": {
        "task": "e2e",
        "path": "devset.csv",
        "train_split": "train",
        "eval_split": "validation",
        "eval_sources": 100,
        "train_fraction": 1.0,
        "max_eval_groups": 32,
        "skip_bad": False,
        "separator": "\nTarget:\n",
        "max_source_tokens": 256,
        "max_target_tokens": 128,
        "buckets": [48, 96],
    },
    "batch_size": 8,
    "epochs": 5,
    "max_steps": 60,
    "optim": {"learning_rate": 0.001, "warmup_steps": 5, "weight_decay": 0.0, "grad_clip": 1.0},
    "log_every": 5,
    "eval_every": 0,
    "checkpoint_every": 20,
    "keep_checkpoints": 2,
    "decode": {
        "beam_size": 2,
        "max_new_tokens": 40,
        "min_new_tokens": 0,
        "length_penalty": 1.0,
        "ban_newline": True,
        "batch_size": 16,
    },
    "meteor_jar": None,
}


def test_an_old_run_config_loads_as_todays_schema(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(OLD_RUN))
    c = load_run_config(tmp_path)
    assert c.method == "prefix" and c.attention == "auto" and c.prefix.parts == ""
    assert c.data.split_seed == 3  # held out with `seed` before split_seed existed
    assert c.data.tune_sources == 0 and c.data.train_examples == 0
    assert c.lora.targets == ("q", "v") and c.finetune.top_layers == 0  # today's blocks
    assert c.prefix.length == 5 and c.data.path == "devset.csv" and c.max_steps == 60
    assert c.data.buckets == (48, 96)  # JSON lists retyped by the schema
    assert isinstance(c.mesh, tuple)
    assert c.keys() >= defaults.get_base_config().keys()


def test_a_current_run_config_round_trips(tmp_path):
    c = config("e2e", "method=lora,local")
    (tmp_path / "config.json").write_text(c.to_json_best_effort(indent=2, sort_keys=True))
    loaded = load_run_config(tmp_path)
    assert json.loads(loaded.to_json()) == json.loads(c.to_json())
    assert upgrade({"data": {"split_seed": 1}, "seed": 5}).data.split_seed == 1


def test_bad_run_configs_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a training run directory"):
        load_run_config(tmp_path)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_run_config(tmp_path)
    with pytest.raises(ValueError, match="config.optim must be a block"):
        upgrade({"optim": 3})
