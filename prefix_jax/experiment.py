"""From a config to the pieces of a run: model, data splits, method. Shared by the CLIs."""

from __future__ import annotations

import dataclasses
import logging

import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from prefix_jax import sharding
from prefix_jax.data import EncodeConfig, Example, load_task, split_by_source
from prefix_jax.methods import (
    FinetuneConfig,
    LoraConfig,
    LoraLM,
    LoraParam,
    PrefixConfig,
    PrefixLM,
    PrefixParam,
    PromptConfig,
    PromptLM,
    PromptParam,
    create_finetune,
    create_lora,
    create_prefix,
    create_prompt,
)
from prefix_jax.models import Transformer, load

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
METHODS = ("prefix", "prompt", "lora", "full")


def dtype(name: str):
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; known: {', '.join(DTYPES)}")
    return DTYPES[name]


def make_mesh(config: ml_collections.ConfigDict) -> Mesh | None:
    """The config's mesh over all devices; an empty `config.mesh` means one device, no mesh."""
    if not config.mesh:
        return None
    return sharding.make_mesh([tuple(axis) for axis in config.mesh])


def sharding_rules(config: ml_collections.ConfigDict) -> tuple:
    return tuple(
        (name, tuple(t) if isinstance(t, list) else t) for name, t in config.sharding_rules
    )


def load_model(config: ml_collections.ConfigDict, mesh: Mesh | None = None):
    """Model and tokenizer; with a mesh the weights are created sharded by the config rules."""
    return load(
        config.model,
        param_dtype=dtype(config.param_dtype),
        dtype=dtype(config.dtype),
        remat_policy=config.remat or None,
        attention=config.get("attention", "auto"),
        mesh=mesh,
        rules=sharding_rules(config) if mesh is not None else sharding.DEFAULT_RULES,
    )


def encode_config(config: ml_collections.ConfigDict) -> EncodeConfig:
    d = config.data
    return EncodeConfig(
        separator=d.separator,
        max_source_tokens=d.max_source_tokens,
        max_target_tokens=d.max_target_tokens,
    )


def load_splits(config: ml_collections.ConfigDict) -> tuple[list[Example], list[Example]]:
    """(train, validation) examples; validation is held out by source when configured."""
    d = config.data
    train = _load(d, d.train_split)
    if d.eval_sources:
        train, evaluation = split_by_source(train, d.eval_sources, seed=config.seed)
    else:
        evaluation = _load(d, d.eval_split)
    if d.train_fraction < 1.0:
        train = _keep_fraction_of_sources(train, d.train_fraction, config.seed)
    return train, evaluation


def _load(d: ml_collections.ConfigDict, split: str) -> list[Example]:
    result = load_task(d.task, d.path, split=split, skip_bad=d.skip_bad)
    if result.n_skipped:
        log.warning("%s[%s]: skipped %d bad records", d.path, split, result.n_skipped)
    return result.examples


def _keep_fraction_of_sources(examples: list[Example], fraction: float, seed: int):
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"data.train_fraction must be in (0, 1], got {fraction}")
    sources = list(dict.fromkeys(e.source for e in examples))
    n = max(1, round(fraction * len(sources)))
    keep = {sources[i] for i in np.random.default_rng([seed, 1]).permutation(len(sources))[:n]}
    return [e for e in examples if e.source in keep]


def method_config(config: ml_collections.ConfigDict, field: str, cls):
    """The dataclass `cls` from the config's `field` sub-config, rejecting unknown keys."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(config[field].keys()) - names
    if unknown:
        raise ValueError(f"unknown config.{field} fields: {sorted(unknown)}")
    return cls(**config[field].to_dict())


def prefix_config(config: ml_collections.ConfigDict) -> PrefixConfig:
    return method_config(config, "prefix", PrefixConfig)


def build_method(config: ml_collections.ConfigDict, model: Transformer, tokenizer):
    """(trainable model, trainable filter, init info) for `config.method`.

    prefix, prompt and lora wrap the frozen model with their own variable type; full
    fine-tunes every weight, or only the last `config.finetune.top_layers` layers.
    """
    if config.method not in METHODS:
        raise ValueError(f"unknown method {config.method!r}; known: {', '.join(METHODS)}")
    if config.method == "prefix":
        prefix, info = create_prefix(model, prefix_config(config), tokenizer)
        return PrefixLM(model, prefix), PrefixParam, info
    if config.method == "prompt":
        prompt, info = create_prompt(
            model, method_config(config, "prompt", PromptConfig), tokenizer
        )
        return PromptLM(model, prompt), PromptParam, info
    if config.method == "lora":
        lora, info = create_lora(model, method_config(config, "lora", LoraConfig))
        return LoraLM(model, lora), LoraParam, info
    finetune = method_config(config, "finetune", FinetuneConfig)
    lm, info = create_finetune(model, finetune)
    return lm, finetune.trainable, info
