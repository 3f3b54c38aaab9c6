"""Decoder-only transformers (GPT-2 and Llama families) and their checkpoint loaders."""

from prefix_jax.models.config import (
    SUPPORTED_ARCHITECTURES,
    ModelConfig,
    RopeScaling,
    UnsupportedArchitectureError,
    config_from_hf,
)
from prefix_jax.models.loading import CheckpointError, build, load, model_identity, resolve
from prefix_jax.models.transformer import KVCache, PrefixKV, Transformer

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "CheckpointError",
    "KVCache",
    "ModelConfig",
    "PrefixKV",
    "RopeScaling",
    "Transformer",
    "UnsupportedArchitectureError",
    "build",
    "config_from_hf",
    "load",
    "model_identity",
    "resolve",
]
