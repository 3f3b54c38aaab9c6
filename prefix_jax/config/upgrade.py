"""A finished run's `config.json`, whichever version wrote it, read as today's config.

Older versions wrote fewer fields (the baselines' blocks, `attention`, `data.split_seed`,
`data.tune_sources`, `data.train_examples`, `prefix.parts` came later), and JSON turns
tuples into lists. Reading a run is done here, once: today's defaults are filled in where
they mean what the old run did, a field whose meaning changed gets the old behaviour, and
values are retyped by today's schema, so the code that evaluates, loads or serves a run
reads `config.x` directly with no fallbacks of its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_collections

from prefix_jax.config.defaults import get_base_config


def upgrade(saved: dict[str, Any]) -> ml_collections.ConfigDict:
    """Today's config for the saved dict of an old (or current) run.

    Fields the run lacks take today's defaults, except where an old run behaved otherwise:
    a run saved before `data.split_seed` existed held out its sources with `seed`. Fields
    today's schema does not know are kept as saved.
    """
    saved = json.loads(json.dumps(saved))  # a deep copy that the steps below may edit
    data = saved.get("data")
    if isinstance(data, dict) and "split_seed" not in data:
        data["split_seed"] = saved.get("seed", 0)
    config = get_base_config()
    _merge(config, saved, "config")
    return config


def load_run_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The upgraded config of the training run in `workdir` (its `config.json`)."""
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {workdir} is not a training run directory")
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path} does not hold a config object")
    return upgrade(saved)


def _merge(config: ml_collections.ConfigDict, saved: dict[str, Any], where: str) -> None:
    for key, value in saved.items():
        if key in config and isinstance(config[key], ml_collections.ConfigDict):
            if not isinstance(value, dict):
                raise ValueError(f"{where}.{key} must be a block, got {value!r}")
            _merge(config[key], value, f"{where}.{key}")
            continue
        try:
            config[key] = value
        except TypeError as e:
            raise ValueError(f"{where}.{key}: {e}") from None
