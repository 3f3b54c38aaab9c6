"""Prefix-tuning (Li & Liang, 2021): the trainable prefix (`core`) and its artifact
(`artifact`: the collapsed key/value table, ours and PEFT's format)."""

from prefix_jax.methods.prefix.core import (
    Prefix,
    PrefixConfig,
    PrefixLM,
    PrefixParam,
    PrefixParts,
    create_prefix,
)

__all__ = [
    "Prefix",
    "PrefixConfig",
    "PrefixLM",
    "PrefixParam",
    "PrefixParts",
    "create_prefix",
]
