"""Published architectures by name, so a fit check needs neither weights nor a download.

Each entry is the model's public Hugging Face `config.json` (the fields this project
reads), translated by the same `config_from_hf` as a real checkpoint directory:
- `smollm2-135m`: HuggingFaceTB/SmolLM2-135M-Instruct (the project's test model);
- `llama-3-8b`, `llama-3-70b`: meta-llama/Meta-Llama-3-8B and Meta-Llama-3-70B;
- `phi-3-mini-4k`: microsoft/Phi-3-mini-4k-instruct (fused weights, split when loaded).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefix_jax.models.config import ModelConfig, config_from_hf

_LLAMA_3 = {
    "model_type": "llama",
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
}

PUBLIC_CONFIGS: dict[str, dict[str, Any]] = {
    "smollm2-135m": {
        "model_type": "llama",
        "vocab_size": 49152,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
    },
    "llama-3-8b": {
        **_LLAMA_3,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
    },
    "llama-3-70b": {
        **_LLAMA_3,
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
    },
    "phi-3-mini-4k": {
        "model_type": "phi3",
        "vocab_size": 32064,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 4096,
        "original_max_position_embeddings": 4096,
        "sliding_window": 2047,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
    },
}


def model_config(name_or_path: str) -> ModelConfig:
    """A ModelConfig from a public name (case-insensitive), a `config.json` or its directory."""
    key = name_or_path.lower()
    if key in PUBLIC_CONFIGS:
        return config_from_hf(PUBLIC_CONFIGS[key], name=key)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{name_or_path!r} is neither a known architecture ({', '.join(PUBLIC_CONFIGS)}) "
            "nor a config.json file or a directory holding one"
        )
    return config_from_hf(json.loads(path.read_text()), name=path.parent.name)
