"""GGUF files (llama.cpp): the config from the metadata, tensors dequantized, and the
name map from llama.cpp's tensor names to `Transformer` parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prefix_jax.models.config import ModelConfig, RopeScaling, UnsupportedArchitectureError
from prefix_jax.models.weights.base import CheckpointError, Stacker, heads_in, tensor, unfuse

GGUF_ARCHITECTURES = ("llama", "phi3", "qwen2", "qwen3", "gemma2", "gemma3")
PHI3_GGUF_FUSED = {  # llama.cpp keeps HF's row order (its ffn_up holds gate, then up)
    "attn_qkv.weight": (("attn_q.weight", "q"), ("attn_k.weight", "kv"), ("attn_v.weight", "kv")),
    "ffn_up.weight": (("ffn_gate.weight", "mlp"), ("ffn_up.weight", "mlp")),
}
# Our family for a GGUF architecture name, where they differ.
_GGUF_FAMILIES = {"gemma3": "gemma3_text"}
# Our layer norms <- llama.cpp tensor names (`blk.N.<name>.weight`).
_GGUF_NORMS = {"attn_norm": "attn_norm", "mlp_norm": "ffn_norm"}
_GGUF_POST_NORMS = {
    "attn_norm": "attn_norm",
    "attn_post_norm": "post_attention_norm",
    "mlp_norm": "ffn_norm",
    "mlp_post_norm": "post_ffw_norm",
}


def read_gguf(path: Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """Config and our-named tensors of a GGUF file (dequantized to float arrays)."""
    import gguf

    reader = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.")}
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"{path.name}: unsupported GGUF architecture {arch!r}; supported: "
            f"{', '.join(GGUF_ARCHITECTURES)}"
        )
    raw = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}
    config = _gguf_config(meta, arch, raw, name=meta.get("general.name") or path.stem)
    if arch == "phi3":
        raw = unfuse(raw, config, "blk.{i}.", PHI3_GGUF_FUSED)
    s = Stacker(config.num_layers)

    def norm(name: str) -> np.ndarray:
        # llama.cpp's converter stores Gemma's RMSNorm weights as 1 + w (its norm multiplies
        # by the weight alone); we keep transformers' w and add `norm_offset` when applying.
        w = tensor(raw, name)
        return w - np.asarray(config.norm_offset, w.dtype) if config.norm_offset else w

    s.top["embed"] = tensor(raw, "token_embd.weight")
    s.top["final_norm_scale"] = norm("output_norm.weight")
    if not config.tie_embeddings:
        s.top["lm_head"] = tensor(raw, "output.weight").T
    d = config.hidden_size
    # llama.cpp stores Llama's q/k rows interleaved for its RoPE; qwen2/3, phi3 and Gemma use
    # its NeoX RoPE (rotate halves, as transformers) and are stored as is.
    unpermute = arch == "llama"
    norms = _GGUF_POST_NORMS if config.post_norms else _GGUF_NORMS
    for i in range(config.num_layers):
        p = f"blk.{i}."
        for ours, theirs in norms.items():
            s.put(f"{ours}_scale", i, norm(p + f"{theirs}.weight"))
        for ours, heads in (
            ("q", config.num_heads),
            ("k", config.num_kv_heads),
            ("v", config.num_kv_heads),
        ):
            name = p + f"attn_{ours}.weight"
            w = tensor(raw, name)
            if unpermute and ours != "v":
                w = _undo_rope_permute(w, heads)
            s.put(ours, i, heads_in(w, heads, name, d))
            if config.qkv_bias:
                s.put(f"{ours}_bias", i, tensor(raw, p + f"attn_{ours}.bias").reshape(heads, -1))
        if config.qk_norm:
            s.put("q_norm_scale", i, norm(p + "attn_q_norm.weight"))
            s.put("k_norm_scale", i, norm(p + "attn_k_norm.weight"))
        s.put("o", i, tensor(raw, p + "attn_output.weight").T.reshape(config.num_heads, -1, d))
        s.put("gate", i, tensor(raw, p + "ffn_gate.weight").T)
        s.put("up", i, tensor(raw, p + "ffn_up.weight").T)
        s.put("down", i, tensor(raw, p + "ffn_down.weight").T)
    return config, s.result()


def _undo_rope_permute(w: np.ndarray, heads: int) -> np.ndarray:
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_config(meta: dict, arch: str, raw: dict[str, np.ndarray], name: str) -> ModelConfig:
    def key(k: str):
        full = f"{arch}.{k}"
        if full not in meta:
            raise CheckpointError(f"GGUF metadata lacks {full!r}")
        return meta[full]

    heads = int(key("attention.head_count"))
    d = int(key("embedding_length"))
    head_dim = int(meta.get(f"{arch}.attention.key_length") or d // heads)
    rope_dim = int(meta.get(f"{arch}.rope.dimension_count") or head_dim)
    context = int(key("context_length"))
    gemma = _gguf_gemma(meta, arch, heads, d, head_dim) if arch.startswith("gemma") else {}
    window = 0  # phi3 slides on every layer, Gemma on its sliding layers (llama.cpp: 4096)
    if arch == "phi3" or gemma:
        window = int(meta.get(f"{arch}.attention.sliding_window", 4096 if gemma else 0) or 0)
    return ModelConfig(
        family=_GGUF_FAMILIES.get(arch, arch),
        vocab_size=int(raw["token_embd.weight"].shape[0]),
        hidden_size=d,
        num_layers=int(key("block_count")),
        num_heads=heads,
        num_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv") or heads),
        head_dim=head_dim,
        intermediate_size=int(key("feed_forward_length")),
        max_position_embeddings=context,
        norm_eps=float(key("attention.layer_norm_rms_epsilon")),
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        rope_scaling=_gguf_rope_scaling(meta, arch, raw),
        qkv_bias=arch == "qwen2",
        qk_norm=arch in ("qwen3", "gemma3"),
        rotary_dim=0 if rope_dim == head_dim else rope_dim,
        sliding_window=0 if window >= context else window,
        tie_embeddings="output.weight" not in raw,
        name=name,
        **gemma,
    )


def _gguf_rope_scaling(meta: dict, arch: str, raw: dict[str, np.ndarray]) -> RopeScaling:
    """Linear scaling from metadata; LongRoPE (phi3) from its factor tensors, which llama.cpp
    writes with the attention factor and original context in metadata but no scaling type."""
    if "rope_factors_long.weight" in raw:
        original = int(meta[f"{arch}.rope.scaling.original_context_length"])
        return RopeScaling(
            "longrope",
            short_factor=np.asarray(tensor(raw, "rope_factors_short.weight")).ravel(),
            long_factor=np.asarray(raw["rope_factors_long.weight"]).ravel(),
            original_max_position_embeddings=original,
            factor=int(meta[f"{arch}.context_length"]) / original,
            attention_factor=float(meta.get(f"{arch}.rope.scaling.attn_factor", 1.0)),
        )
    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling == "linear":
        return RopeScaling("linear", factor=float(meta[f"{arch}.rope.scaling.factor"]))
    if scaling != "none":
        raise UnsupportedArchitectureError(f"unsupported GGUF rope scaling {scaling!r}")
    return RopeScaling()


def _gguf_gemma(meta: dict, arch: str, heads: int, d: int, head_dim: int) -> dict:
    """Gemma 2/3 switches of a GGUF (the window size aside), read or defaulted as llama.cpp's
    loader does: sliding layers every other layer (Gemma 2) or 5 of every 6 (Gemma 3)
    unless the file lists them; the local RoPE base 10000 (Gemma 3); the attention scale
    1/sqrt(head_dim), but 1/sqrt(hidden / heads) for the 27B models (46 or 62 layers), which
    GGUF does not store."""
    layers = int(meta[f"{arch}.block_count"])
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern", 2 if arch == "gemma2" else 6)
    if isinstance(pattern, list):
        sliding = [bool(x) for x in pattern]
    else:
        sliding = [i % int(pattern) < int(pattern) - 1 for i in range(layers)]
    big = layers == (46 if arch == "gemma2" else 62)
    default_softcaps = (50.0, 30.0) if arch == "gemma2" else (0.0, 0.0)
    return {
        "activation": "gelu_tanh",
        "layer_types": tuple("sliding_attention" if x else "full_attention" for x in sliding),
        "rope_local_theta": (
            float(meta.get(f"{arch}.rope.freq_base_swa", 10_000.0)) if arch == "gemma3" else 0.0
        ),
        "norm_offset": 1.0,
        "post_norms": True,
        "embed_scale": True,
        "query_pre_attn_scalar": float(d // heads if big else head_dim),
        "attn_softcap": (
            float(meta.get(f"{arch}.attn_logit_softcapping", default_softcaps[0]))
            if arch == "gemma2"
            else 0.0
        ),
        "final_softcap": float(meta.get(f"{arch}.final_logit_softcapping", default_softcaps[1])),
    }
