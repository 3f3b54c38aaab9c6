"""Name maps from Hugging Face decoder-only checkpoints to `Transformer` parameters:
Llama-style names (Llama, Mistral, Qwen2/3, Gemma 2/3, and Phi-3 once its fused weights are
split) and GPT-2's."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from prefix_jax.models.config import ModelConfig, config_from_hf
from prefix_jax.models.weights.base import CheckpointError, Stacker, heads_in, tensor, unfuse
from prefix_jax.models.weights.safetensors import read_safetensors


def read_decoder_dir(path: Path, hf: dict[str, Any]) -> tuple[ModelConfig, dict]:
    """Config and our-named tensors of a decoder-only checkpoint directory."""
    config = config_from_hf(hf, name=path.name)
    raw = read_safetensors(path)
    if config.family == "gpt2":
        return config, _map_gpt2(raw, config)
    if config.family == "phi3":
        raw = unfuse(raw, config, "model.layers.{i}.", PHI3_HF_FUSED)
    return config, _map_llama(raw, config)


# Phi-3 fuses rows of Llama's projections into one weight: {fused: ((part, rows), ...)},
# parts in row order and named as the Llama map reads them; rows: "q" (heads * head_dim),
# "kv" (kv_heads * head_dim) or "mlp" (intermediate_size).
PHI3_HF_FUSED = {
    "self_attn.qkv_proj.weight": (
        ("self_attn.q_proj.weight", "q"),
        ("self_attn.k_proj.weight", "kv"),
        ("self_attn.v_proj.weight", "kv"),
    ),
    "mlp.gate_up_proj.weight": (("mlp.gate_proj.weight", "mlp"), ("mlp.up_proj.weight", "mlp")),
}


# Our layer norms <- HF module names. Llama's `post_attention_layernorm` is the norm before
# the MLP; with Gemma's four norms it is the one on the attention output.
_HF_NORMS = {
    "attn_norm": "input_layernorm",
    "mlp_norm": "post_attention_layernorm",
}
_HF_POST_NORMS = {
    "attn_norm": "input_layernorm",
    "attn_post_norm": "post_attention_layernorm",
    "mlp_norm": "pre_feedforward_layernorm",
    "mlp_post_norm": "post_feedforward_layernorm",
}


def _map_llama(raw: dict[str, np.ndarray], c: ModelConfig) -> dict[str, np.ndarray]:
    """Llama-style HF names (Llama, Mistral, Qwen2/3, Gemma 2/3)."""
    raw = {re.sub(r"^model\.", "", k): v for k, v in raw.items()}
    s = Stacker(c.num_layers)
    s.top["embed"] = tensor(raw, "embed_tokens.weight")
    s.top["final_norm_scale"] = tensor(raw, "norm.weight")
    if not c.tie_embeddings:
        s.top["lm_head"] = tensor(raw, "lm_head.weight").T
    d = c.hidden_size
    norms = _HF_POST_NORMS if c.post_norms else _HF_NORMS
    for i in range(c.num_layers):
        p = f"layers.{i}."
        for ours, theirs in norms.items():
            s.put(f"{ours}_scale", i, tensor(raw, p + f"{theirs}.weight"))
        for ours, theirs, heads in (
            ("q", "q_proj", c.num_heads),
            ("k", "k_proj", c.num_kv_heads),
            ("v", "v_proj", c.num_kv_heads),
        ):
            name = p + f"self_attn.{theirs}.weight"
            s.put(ours, i, heads_in(tensor(raw, name), heads, name, d))
            if c.qkv_bias:
                bias = tensor(raw, p + f"self_attn.{theirs}.bias")
                s.put(f"{ours}_bias", i, bias.reshape(heads, -1))
        if c.qk_norm:
            s.put("q_norm_scale", i, tensor(raw, p + "self_attn.q_norm.weight"))
            s.put("k_norm_scale", i, tensor(raw, p + "self_attn.k_norm.weight"))
        o = tensor(raw, p + "self_attn.o_proj.weight")  # [d, heads * hd] -> [heads, hd, d]
        s.put("o", i, o.reshape(d, c.num_heads, -1).transpose(1, 2, 0))
        if c.out_bias:
            s.put("o_bias", i, tensor(raw, p + "self_attn.o_proj.bias"))
        s.put("gate", i, tensor(raw, p + "mlp.gate_proj.weight").T)
        s.put("up", i, tensor(raw, p + "mlp.up_proj.weight").T)
        s.put("down", i, tensor(raw, p + "mlp.down_proj.weight").T)
        if c.mlp_bias:
            s.put("up_bias", i, tensor(raw, p + "mlp.up_proj.bias"))
            s.put("down_bias", i, tensor(raw, p + "mlp.down_proj.bias"))
    return s.result()


def _map_gpt2(raw: dict[str, np.ndarray], c: ModelConfig) -> dict[str, np.ndarray]:
    raw = {re.sub(r"^transformer\.", "", k): v for k, v in raw.items()}
    s = Stacker(c.num_layers)
    d, H = c.hidden_size, c.num_heads
    s.top["embed"] = tensor(raw, "wte.weight")
    s.top["pos_embed"] = tensor(raw, "wpe.weight")
    s.top["final_norm_scale"] = tensor(raw, "ln_f.weight")
    s.top["final_norm_bias"] = tensor(raw, "ln_f.bias")
    if not c.tie_embeddings:
        s.top["lm_head"] = tensor(raw, "lm_head.weight").T
    for i in range(c.num_layers):
        p = f"h.{i}."
        for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            s.put(f"{ours}_scale", i, tensor(raw, p + f"{theirs}.weight"))
            s.put(f"{ours}_bias", i, tensor(raw, p + f"{theirs}.bias"))
        name = p + "attn.c_attn.weight"
        w = tensor(raw, name)  # Conv1D layout: [in, out] = [d, 3d]
        if w.shape != (d, 3 * d):
            raise CheckpointError(f"tensor {name!r} has shape {w.shape}; expected {(d, 3 * d)}")
        b = tensor(raw, p + "attn.c_attn.bias")
        for j, ours in enumerate(("q", "k", "v")):
            s.put(ours, i, w[:, j * d : (j + 1) * d].reshape(d, H, -1))
            s.put(f"{ours}_bias", i, b[j * d : (j + 1) * d].reshape(H, -1))
        s.put("o", i, tensor(raw, p + "attn.c_proj.weight").reshape(H, -1, d))
        s.put("o_bias", i, tensor(raw, p + "attn.c_proj.bias"))
        s.put("up", i, tensor(raw, p + "mlp.c_fc.weight"))
        s.put("up_bias", i, tensor(raw, p + "mlp.c_fc.bias"))
        s.put("down", i, tensor(raw, p + "mlp.c_proj.weight"))
        s.put("down_bias", i, tensor(raw, p + "mlp.c_proj.bias"))
    return s.result()
