"""Pretrained language models in Flax NNX, and the readers of their checkpoints.

Decoder-only (`Transformer`): GPT-2, Llama (with Llama 3.1 RoPE scaling), Mistral,
Qwen2, Qwen3, Phi-3 and Gemma 2/3, from Hugging Face safetensors directories or GGUF files
(llama, qwen2/3, phi3, gemma2/3). Encoder-decoder (`EncoderDecoder`): BART and T5 (v1.0,
v1.1 / Flan-T5), from safetensors directories. `load` takes a path or a catalog name
(`catalog.CATALOG`, e.g. `smollm2`).

Layout: `config` / `seq2seq_config` (shapes and switches), `layers` (blocks both kinds
share), `kv` (prefixes, caches), `rope`, `attention` (masks and kernels), `transformer`,
`seq2seq`, `weights/` (checkpoint readers), `pretrained` (build and place), `catalog`.
"""

from prefix_jax.models.catalog import resolve
from prefix_jax.models.config import (
    SUPPORTED_ARCHITECTURES,
    ModelConfig,
    RopeScaling,
    UnsupportedArchitectureError,
    config_from_hf,
)
from prefix_jax.models.kv import KVCache, PrefixKV
from prefix_jax.models.pretrained import build, load, model_identity
from prefix_jax.models.transformer import Transformer
from prefix_jax.models.weights import CheckpointError

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
