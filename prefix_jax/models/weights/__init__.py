"""Checkpoint readers: a Hugging Face safetensors directory or a GGUF file -> our config
and our-named tensors, one name map per family.

`read_checkpoint` picks the reader: a directory's `config.json` says whether it holds an
encoder-decoder (BART, T5: `hf_seq2seq`) or a decoder-only model (`hf`); a `.gguf` file
goes to `gguf`. The readers only map names and layouts (as views of memory-mapped files);
`prefix_jax.models.pretrained` builds the model and places the tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from prefix_jax.models.config import ModelConfig
from prefix_jax.models.seq2seq_config import SEQ2SEQ_ARCHITECTURES, Seq2SeqConfig
from prefix_jax.models.weights.base import CheckpointError, StackedLayers
from prefix_jax.models.weights.gguf import read_gguf
from prefix_jax.models.weights.hf import read_decoder_dir
from prefix_jax.models.weights.hf_seq2seq import read_seq2seq_dir
from prefix_jax.models.weights.safetensors import map_safetensors


def read_checkpoint(path: Path) -> tuple[ModelConfig | Seq2SeqConfig, dict[str, np.ndarray]]:
    """Config and our-named tensors of a checkpoint directory or a .gguf file."""
    if path.is_dir():
        return read_hf_dir(path)
    if path.suffix == ".gguf":
        return read_gguf(path)
    raise CheckpointError(f"{path} is neither a checkpoint directory nor a .gguf file")


def read_hf_dir(path: Path) -> tuple[ModelConfig | Seq2SeqConfig, dict[str, np.ndarray]]:
    """Config and our-named tensors of a Hugging Face checkpoint directory."""
    config_file = path / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{path} has no config.json")
    hf = json.loads(config_file.read_text())
    if hf.get("model_type") in SEQ2SEQ_ARCHITECTURES:
        return read_seq2seq_dir(path, hf)
    return read_decoder_dir(path, hf)


__all__ = [
    "CheckpointError",
    "StackedLayers",
    "map_safetensors",
    "read_checkpoint",
    "read_gguf",
    "read_hf_dir",
]
