"""Name maps from Hugging Face BART / T5 checkpoints to `EncoderDecoder` parameters."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from prefix_jax.models.seq2seq_config import Seq2SeqConfig, seq2seq_config_from_hf
from prefix_jax.models.weights.base import CheckpointError, Stacker, heads_in, tensor
from prefix_jax.models.weights.safetensors import read_safetensors


def read_seq2seq_dir(path: Path, hf: dict[str, Any]) -> tuple[Seq2SeqConfig, dict]:
    """Config and our-named tensors of a BART / T5 checkpoint directory."""
    config = seq2seq_config_from_hf(hf, name=path.name)
    raw = read_safetensors(path)
    if config.family == "bart":
        return config, _map_bart(raw, config)
    return config, _map_t5(raw, config)


def _stacks(c: Seq2SeqConfig) -> dict[str, Stacker]:
    return {"encoder": Stacker(c.num_encoder_layers), "decoder": Stacker(c.num_decoder_layers)}


def _merge(top: dict, stacks: dict[str, Stacker]) -> dict:
    """Our names: `encoder_layers.q`, `decoder_layers.cross_o`, top-level names as given."""
    out = dict(top)
    for stack, stacker in stacks.items():
        for name, value in stacker.result().items():
            out[f"{stack}_{name}"] = value
    return out


def _attention(s: Stacker, i: int, raw, name: str, ours: str, c: Seq2SeqConfig, names: dict):
    """q/k/v/o (and biases) of one attention block; `names` maps q, k, v, o to theirs."""
    d, H = c.hidden_size, c.num_heads
    for proj in ("q", "k", "v"):
        weight = f"{name}.{names[proj]}.weight"
        s.put(ours + proj, i, heads_in(tensor(raw, weight), H, weight, d))
        if c.bias:
            s.put(f"{ours}{proj}_bias", i, tensor(raw, f"{name}.{names[proj]}.bias").reshape(H, -1))
    weight = f"{name}.{names['o']}.weight"
    o = tensor(raw, weight)  # [d, heads * hd] -> [heads, hd, d]
    if o.shape != (d, H * c.head_dim):
        raise CheckpointError(
            f"tensor {weight!r} has shape {o.shape}; expected {(d, H * c.head_dim)}"
        )
    s.put(ours + "o", i, o.reshape(d, H, -1).transpose(1, 2, 0))
    if c.bias:
        s.put(f"{ours}o_bias", i, tensor(raw, f"{name}.{names['o']}.bias"))


def _norm(s: Stacker, i: int, raw, name: str, ours: str, c: Seq2SeqConfig) -> None:
    s.put(f"{ours}_scale", i, tensor(raw, f"{name}.weight"))
    if c.norm == "layer":
        s.put(f"{ours}_bias", i, tensor(raw, f"{name}.bias"))


_BART_ATTENTION = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}
_T5_ATTENTION = {"q": "q", "k": "k", "v": "v", "o": "o"}


def _map_bart(raw: dict[str, np.ndarray], c: Seq2SeqConfig) -> dict:
    raw = {re.sub(r"^model\.", "", k): v for k, v in raw.items()}
    top: dict[str, Any] = {"embed": tensor(raw, "shared.weight")}
    top["final_logits_bias"] = tensor(raw, "final_logits_bias").reshape(-1)
    if not c.tie_embeddings:
        top["lm_head"] = tensor(raw, "lm_head.weight").T
    stacks = _stacks(c)
    for stack, s in stacks.items():
        top[f"{stack}_pos_embed"] = tensor(raw, f"{stack}.embed_positions.weight")
        top[f"{stack}_embed_norm_scale"] = tensor(raw, f"{stack}.layernorm_embedding.weight")
        top[f"{stack}_embed_norm_bias"] = tensor(raw, f"{stack}.layernorm_embedding.bias")
        for i in range(s.num_layers):
            p = f"{stack}.layers.{i}."
            _attention(s, i, raw, p + "self_attn", "", c, _BART_ATTENTION)
            _norm(s, i, raw, p + "self_attn_layer_norm", "attn_norm", c)
            if stack == "decoder":
                _attention(s, i, raw, p + "encoder_attn", "cross_", c, _BART_ATTENTION)
                _norm(s, i, raw, p + "encoder_attn_layer_norm", "cross_norm", c)
            s.put("up", i, tensor(raw, p + "fc1.weight").T)
            s.put("up_bias", i, tensor(raw, p + "fc1.bias"))
            s.put("down", i, tensor(raw, p + "fc2.weight").T)
            s.put("down_bias", i, tensor(raw, p + "fc2.bias"))
            _norm(s, i, raw, p + "final_layer_norm", "mlp_norm", c)
    return _merge(top, stacks)


def _map_t5(raw: dict[str, np.ndarray], c: Seq2SeqConfig) -> dict:
    top: dict[str, Any] = {"embed": tensor(raw, "shared.weight")}
    if not c.tie_embeddings:
        top["lm_head"] = tensor(raw, "lm_head.weight").T
    stacks = _stacks(c)
    for stack, s in stacks.items():
        # transformers keeps each stack's bias table in its block 0; all blocks share it.
        bias = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        top[f"{stack}_relative_bias"] = tensor(raw, bias)
        top[f"{stack}_final_norm_scale"] = tensor(raw, f"{stack}.final_layer_norm.weight")
        for i in range(s.num_layers):
            p = f"{stack}.block.{i}.layer."
            _attention(s, i, raw, p + "0.SelfAttention", "", c, _T5_ATTENTION)
            _norm(s, i, raw, p + "0.layer_norm", "attn_norm", c)
            ff = 1
            if stack == "decoder":
                _attention(s, i, raw, p + "1.EncDecAttention", "cross_", c, _T5_ATTENTION)
                _norm(s, i, raw, p + "1.layer_norm", "cross_norm", c)
                ff = 2
            dense = f"{p}{ff}.DenseReluDense."
            if c.gated_mlp:
                s.put("gate", i, tensor(raw, dense + "wi_0.weight").T)
                s.put("up", i, tensor(raw, dense + "wi_1.weight").T)
            else:
                s.put("up", i, tensor(raw, dense + "wi.weight").T)
            s.put("down", i, tensor(raw, dense + "wo.weight").T)
            _norm(s, i, raw, f"{p}{ff}.layer_norm", "mlp_norm", c)
    return _merge(top, stacks)
