"""Prefix-tuning as a registered method: its config block, wrapper and artifact."""

from __future__ import annotations

from pathlib import Path

import ml_collections
from flax import nnx

from prefix_jax.methods.api import Loaded, Method, Model, Writer
from prefix_jax.methods.prefix import artifact
from prefix_jax.methods.prefix.core import (
    PrefixConfig,
    PrefixLM,
    PrefixParam,
    create_prefix,
)


class PrefixMethod(Method):
    """Li & Liang's prefix: p trainable keys/values in front of every attention layer.

    The defaults are the paper's for table-to-text: p=10, MLP reparameterization with
    hidden width 512. `parts` (encoder-decoders) picks which of "encoder,decoder,cross"
    get a prefix; "" = all the model has (a decoder-only model has "decoder" alone).
    """

    name = "prefix"
    config_block = "prefix"
    config_class = PrefixConfig
    seed_keys = ("prefix.seed",)

    def default_config(self) -> dict:
        # A fresh placeholder per config, so `--config.prefix.embed_dim=64` can set the
        # None default (and two configs never share one reference).
        embed_dim = ml_collections.config_dict.placeholder(int)
        return {**super().default_config(), "embed_dim": embed_dim}

    def create(self, model: Model, config: ml_collections.ConfigDict, tokenizer=None):
        prefix, info = create_prefix(model, self.read_config(config), tokenizer)
        return PrefixLM(model, prefix), PrefixParam, info

    def export(self, lm: nnx.Module, model: Model, training: dict) -> dict[str, Writer]:
        """The collapsed table (MLP evaluated); PEFT's copy when PEFT can hold it exactly
        (positions after the prefix, and a layout PEFT has: see `artifact.peft_exportable`)."""
        exported = artifact.collapse(lm.prefix, model, training)
        writers = {"export": lambda d: artifact.save(exported, d)}
        parts = getattr(exported, "parts", {"decoder": exported}).values()
        if artifact.peft_exportable(exported) and all(e.positions_after_prefix for e in parts):
            writers["export_peft"] = lambda d: artifact.save_peft(exported, d)
        return writers

    def load(self, directory: str | Path, model: Model) -> Loaded:
        """The base model itself and the prefix, passed to the decoder (ours or PEFT's)."""
        return Loaded(model, artifact.load(directory, model).to_prefix_kv(model))

    def extra_key_positions(self, config: ml_collections.ConfigDict) -> int:
        return config.prefix.length
