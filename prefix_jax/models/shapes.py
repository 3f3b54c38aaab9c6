"""Published architectures by name, so a fit check needs neither weights nor a download.

Each entry is the model's public Hugging Face `config.json` (the fields this project
reads), translated by the same `config_from_hf` as a real checkpoint directory:
- `smollm2-135m`: HuggingFaceTB/SmolLM2-135M-Instruct (the project's test model);
- `llama-3-8b`, `llama-3-70b`: meta-llama/Meta-Llama-3-8B and Meta-Llama-3-70B;
- `phi-3-mini-4k`: microsoft/Phi-3-mini-4k-instruct (fused weights, split when loaded);
- `gemma-2-2b`, `gemma-3-1b`: google/gemma-2-2b and google/gemma-3-1b-pt;
- encoder-decoders (`seq2seq_config_from_hf`): `bart-large` (facebook/bart-large, Li &
  Liang's summarization model), `t5-base` (google-t5/t5-base, Lester et al.'s smallest
  prompt-tuning model family) and `flan-t5-base` (google/flan-t5-base, T5 v1.1 layout).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefix_jax.models.config import ModelConfig, config_from_hf
from prefix_jax.models.seq2seq import SEQ2SEQ_ARCHITECTURES, Seq2SeqConfig, seq2seq_config_from_hf

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
    "gemma-2-2b": {
        "model_type": "gemma2",
        "vocab_size": 256000,
        "hidden_size": 2304,
        "intermediate_size": 9216,
        "num_hidden_layers": 26,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "query_pre_attn_scalar": 256,
        "sliding_window": 4096,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": True,
    },
    "gemma-3-1b": {
        "model_type": "gemma3_text",
        "vocab_size": 262144,
        "hidden_size": 1152,
        "intermediate_size": 6912,
        "num_hidden_layers": 26,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "query_pre_attn_scalar": 256,
        "sliding_window": 512,
        "sliding_window_pattern": 6,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": True,
    },
}


_T5 = {
    "model_type": "t5",
    "vocab_size": 32128,
    "d_model": 768,
    "d_kv": 64,
    "num_layers": 12,
    "num_heads": 12,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}
PUBLIC_CONFIGS.update(
    {
        "bart-large": {
            "model_type": "bart",
            "vocab_size": 50265,
            "d_model": 1024,
            "encoder_layers": 12,
            "decoder_layers": 12,
            "encoder_attention_heads": 16,
            "decoder_attention_heads": 16,
            "encoder_ffn_dim": 4096,
            "decoder_ffn_dim": 4096,
            "max_position_embeddings": 1024,
            "activation_function": "gelu",
            "scale_embedding": False,
            "pad_token_id": 1,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "decoder_start_token_id": 2,
        },
        "t5-base": {**_T5, "d_ff": 3072, "feed_forward_proj": "relu"},
        "flan-t5-base": {
            **_T5,
            "d_ff": 2048,
            "feed_forward_proj": "gated-gelu",
            "tie_word_embeddings": False,
        },
    }
)


def model_config(name_or_path: str) -> ModelConfig | Seq2SeqConfig:
    """A model config from a public name (case-insensitive), a `config.json` or its
    directory: a `Seq2SeqConfig` for BART / T5, else a `ModelConfig`."""
    key = name_or_path.lower()
    if key in PUBLIC_CONFIGS:
        return _from_hf(PUBLIC_CONFIGS[key], key)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{name_or_path!r} is neither a known architecture ({', '.join(PUBLIC_CONFIGS)}) "
            "nor a config.json file or a directory holding one"
        )
    return _from_hf(json.loads(path.read_text()), path.parent.name)


def _from_hf(hf: dict[str, Any], name: str) -> ModelConfig | Seq2SeqConfig:
    if hf.get("model_type") in SEQ2SEQ_ARCHITECTURES:
        return seq2seq_config_from_hf(hf, name=name)
    return config_from_hf(hf, name=name)
