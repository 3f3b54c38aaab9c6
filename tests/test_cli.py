"""The `prefix-jax` console script: its commands, its argument errors, and a quiet libtpu on
a machine without a TPU."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from prefix_jax.cli import main as cli
from prefix_jax.cli.accelerator import TOPOLOGY_VARIABLES, tpu_attached

REPO = Path(__file__).parents[1]
OWN_COMMANDS = ("train", "evaluate", "generate", "serve", "demo", "aot")
LIBTPU_NOISE = ("host bounds", "unexpected worker hostname", "E0000", "Source Location Trace")


def run_cli(*args: str, env: dict | None = None, timeout: int = 300):
    return subprocess.run(
        [sys.executable, "-m", "prefix_jax.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    names = ("train", "evaluate", "generate", "serve", "demo", "aot", "launch", "report")
    assert all(f"\n  {name} " in out for name in (*names, "archive"))
    assert cli.main([]) == 2
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_each_command_is_a_module_with_main():
    for name in OWN_COMMANDS:
        module = importlib.import_module(f"prefix_jax.cli.{name}")
        assert callable(module.main), name
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"prefix-jax": "prefix_jax.cli.main:main"}


def test_library_modules_parse_no_argv():
    """Argument parsing lives in prefix_jax/cli/ alone."""
    parsing = [
        str(path.relative_to(REPO))
        for path in (REPO / "prefix_jax").rglob("*.py")
        if "cli" not in path.relative_to(REPO).parts
        and any(s in path.read_text() for s in ("argparse", "absl", "sys.argv"))
    ]
    assert parsing == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--config", "configs/e2e.py:lcoal"],
            "unknown config argument 'lcoal'; known (with defaults): method='prefix', local=False",
        ),
        (
            ["--config", "configs/e2e.py:local", "--config.optim.lerning_rate=1"],
            "unknown config key 'optim.lerning_rate': config.optim has grad_clip, learning_rate",
        ),
        (["--config", "configs/e2e_prefix.py"], "config file configs/e2e_prefix.py not found"),
    ],
)
def test_train_rejects_bad_configs_before_starting(tmp_path, args, message):
    done = run_cli("train", *args, "--workdir", str(tmp_path / "run"))
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not (tmp_path / "run").exists()


def test_unreachable_hub_dataset_is_one_line_naming_the_path_option(tiny, tmp_path):
    """The default configs read E2E from the hub; offline, the user gets the option to
    give a local file instead of a `datasets` traceback."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = run_cli(
        "train", "--config", "configs/e2e.py:local", "--workdir", str(tmp_path / "run"),
        f"--config.model={tiny['model']}", env=env,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("prefix-jax train: hub dataset 'e2e_nlg'") and (
        "--config.data.path=PATH" in last
    ), last


def test_evaluate_names_a_missing_run(tmp_path):
    done = run_cli("evaluate", "--workdir", str(tmp_path))
    assert done.returncode == 2
    assert "config.json not found" in done.stderr and "not a training run" in done.stderr


def _cpu_env_with_libtpu_free() -> dict:
    """The environment of a fresh CPU machine: no TPU variables, and libtpu free to start
    (no other process holding its lock file)."""
    env = {k: v for k, v in os.environ.items() if k not in TOPOLOGY_VARIABLES}
    env.pop("JAX_PLATFORMS", None)
    return {**env, "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


needs_libtpu_without_tpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None or tpu_attached(),
    reason="needs libtpu installed on a machine without a TPU",
)


@needs_libtpu_without_tpu
def test_jax_backends_start_quietly_with_libtpu_installed():
    code = (
        "from prefix_jax.cli.accelerator import quiet_libtpu_without_tpu\n"
        "assert quiet_libtpu_without_tpu()\n"
        "import jax\n"
        "print(jax.devices()[0].platform)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=_cpu_env_with_libtpu_free(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() != "tpu"
    assert not [line for line in done.stderr.splitlines() if any(n in line for n in LIBTPU_NOISE)]


@needs_libtpu_without_tpu
def test_aot_compiles_for_a_tpu_topology_quietly(tmp_path):
    """libtpu's compiler still works for an abstract slice, and says nothing alarming."""
    from prefix_jax.models.catalog import CATALOG

    model = tmp_path / "config.json"
    model.write_text(json.dumps({**CATALOG["smollm2-135m"].config, "num_hidden_layers": 2}))
    done = run_cli(
        "aot",
        "--config",
        "configs/e2e.py",
        f"--config.model={model}",
        "--topology",
        "v5e-4",
        "--no-train",
        "--decode-batch",
        "8",
        "--cache-length",
        "32",
        env=_cpu_env_with_libtpu_free(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "v5e-4 (4 chips" in done.stdout and "| decode | prefix | 8 x 32 |" in done.stdout
    noise = [line for line in done.stderr.splitlines() if any(n in line for n in LIBTPU_NOISE)]
    assert not noise, noise
