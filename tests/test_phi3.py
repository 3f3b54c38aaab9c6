"""Phi-3 (model_type / GGUF architecture `phi3`) against transformers, PEFT and its GGUF.

Phi-3 is Llama with fused q/k/v and gate/up weights, which the loaders split, plus three
switches the tiny checkpoints here cover: a sliding window, partial rotary embeddings
(Phi-4-mini rotates 3/4 of each head) and LongRoPE (Phi-3-mini-128k, Phi-3.5-mini).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import hf_logits, padded_batch
from flax import nnx

from prefix_jax.methods.prefix.core import table_to_prefix
from prefix_jax.models import CheckpointError, UnsupportedArchitectureError, load
from prefix_jax.models.catalog import model_config
from prefix_jax.models.config import config_from_hf

# head_dim 8; LongRoPE with 3/4 rotary: 6 rotated dims, 3 frequencies, original context 8.
LONGROPE = {
    "rope_type": "longrope",
    "rope_theta": 10000.0,
    "partial_rotary_factor": 0.75,
    "short_factor": [1.0, 1.3, 2.0],
    "long_factor": [2.5, 5.0, 9.0],
}
VARIANTS = {
    "phi3_window": {"sliding_window": 4},  # shorter than the test rows
    "phi3_partial": {
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 500.0,
            "partial_rotary_factor": 0.5,
        }
    },
    "phi3_longrope": {"original_max_position_embeddings": 8, "rope_parameters": LONGROPE},
}


def _save_phi3(root: Path, kind: str) -> transformers.Phi3ForCausalLM:
    torch.manual_seed(0)
    config = transformers.Phi3Config(
        vocab_size=101,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **VARIANTS[kind],
    )
    model = transformers.Phi3ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # random norms: a wrong norm mapping cannot hide behind ones
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            if "qkv_proj" in name:  # peaked attention, so that positions (RoPE) matter
                p.mul_(12.0)
    model.save_pretrained(root / kind)
    return model.eval()


@pytest.fixture(scope="module")
def phi3(tmp_path_factory) -> dict[str, tuple[Path, transformers.Phi3ForCausalLM]]:
    """{kind: (checkpoint directory, the transformers model written there)}."""
    root = tmp_path_factory.mktemp("phi3")
    return {kind: (root / kind, _save_phi3(root, kind)) for kind in VARIANTS}


@pytest.fixture(scope="module")
def loaded(phi3):
    """{kind: (ours, transformers')}, loaded once."""
    return {
        kind: (load(str(path), with_tokenizer=False)[0], hf) for kind, (path, hf) in phi3.items()
    }


@nnx.jit
def _jitted_logits(model, tokens, mask, prefix):
    return model(tokens, mask, prefix=prefix)[0]


def _logits(model, tokens, mask, prefix=None) -> np.ndarray:
    """Compiled once per model and shape (eager calls retrace the layer scan every time)."""
    return np.asarray(_jitted_logits(model, jnp.asarray(tokens), jnp.asarray(mask), prefix))


def _max_error(ours, theirs, mask) -> float:
    real = mask.astype(bool)
    return float(np.abs(np.asarray(ours)[real] - theirs[real]).max())


# --- config ----------------------------------------------------------------------------------


def test_configs_read_like_transformers(loaded):
    for kind, (ours, hf) in loaded.items():
        c = ours.config
        assert c.family == "phi3" and not c.tie_embeddings and not c.qkv_bias
        assert c.num_params() == sum(p.numel() for p in hf.parameters()), kind
    assert loaded["phi3_window"][0].config.sliding_window == 4
    assert loaded["phi3_partial"][0].config.sliding_window == 0
    assert loaded["phi3_partial"][0].config.rope_dim == 4
    c = loaded["phi3_longrope"][0].config
    assert (c.rope_dim, c.rope_scaling.rope_type) == (6, "longrope")
    assert c.rope_scaling.original_max_position_embeddings == 8
    # The factor on cos/sin is transformers' own: sqrt(1 + ln(64 / 8) / ln(8)).
    hf_scale = loaded["phi3_longrope"][1].model.rotary_emb.attention_scaling
    assert c.rope_scaling.attention_factor == pytest.approx(hf_scale)
    assert hf_scale == pytest.approx(math.sqrt(2))


def _hf_phi3_config(**overrides) -> dict:
    return {
        "model_type": "phi3",
        "vocab_size": 101,
        "hidden_size": 48,
        "intermediate_size": 80,
        "num_hidden_layers": 2,
        "num_attention_heads": 6,
        "max_position_embeddings": 64,
        **overrides,
    }


def test_rope_scaling_types_phi3_cannot_take_are_named():
    with pytest.raises(UnsupportedArchitectureError, match="rope scaling type 'dynamic'"):
        config_from_hf(_hf_phi3_config(rope_scaling={"type": "dynamic", "factor": 2.0}))
    with pytest.raises(ValueError, match="longrope needs rope_dim / 2 = 4 short and long"):
        config_from_hf(_hf_phi3_config(rope_scaling={**LONGROPE, "partial_rotary_factor": 1.0}))


def test_early_phi3_longrope_names_and_default_original_context():
    """Phi-3's first configs call LongRoPE `su`; without a top-level original context
    transformers uses Phi3Config's 4096."""
    factors = {"short_factor": [1.0] * 4, "long_factor": [2.0] * 4}
    c = config_from_hf(
        _hf_phi3_config(max_position_embeddings=16384, rope_scaling={"type": "su", **factors})
    )
    assert c.rope_scaling.rope_type == "longrope"
    assert c.rope_scaling.original_max_position_embeddings == 4096
    assert c.rope_scaling.attention_factor == pytest.approx(
        math.sqrt(1 + math.log(4) / math.log(4096))
    )


def test_phi3_mini_4k_public_shape():
    """The published size (3,821,079,552 parameters) and its 2047-token window."""
    c = model_config("phi-3-mini-4k")
    assert c.num_params() == 3_821_079_552
    assert (c.sliding_window, c.num_kv_heads, c.rope_dim) == (2047, 32, 96)


# --- parity with transformers -----------------------------------------------------------------


@pytest.mark.parametrize("kind", list(VARIANTS))
@pytest.mark.parametrize("side", ["left", "right"])
def test_logits_match_transformers(loaded, kind, side):
    ours_model, hf_model = loaded[kind]
    # Rows of 9 tokens: past the window of 4, and past LongRoPE's original context of 8.
    tokens, mask = padded_batch(np.random.default_rng(1), 101, [9, 4, 7], side)
    ours = _logits(ours_model, tokens, mask)
    error = _max_error(ours, hf_logits(hf_model, tokens, mask), mask)
    assert error < 1e-4, error


@pytest.mark.parametrize("side", ["left", "right"])
def test_longrope_short_factors_within_the_original_context(loaded, side):
    """Rows of at most 8 tokens stay on the short factors; 9 switch to the long ones."""
    ours_model, hf_model = loaded["phi3_longrope"]
    tokens, mask = padded_batch(np.random.default_rng(2), 101, [8, 3, 6], side)
    ours = _logits(ours_model, tokens, mask)
    error = _max_error(ours, hf_logits(hf_model, tokens, mask), mask)
    assert error < 1e-4, error
    # One more token after the full row: its first 8 logits change (long factors now).
    longer = np.concatenate([tokens, np.full((3, 1), 5)], 1)
    longer_mask = np.concatenate([mask, np.ones((3, 1), mask.dtype)], 1)
    longer_logits = _logits(ours_model, longer, longer_mask)
    assert np.abs(np.asarray(longer_logits)[0, :8] - np.asarray(ours)[0]).max() > 1e-3


# --- parity with PEFT prefix-tuning -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["phi3_partial", "phi3_longrope"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_prefix_matches_peft(phi3, loaded, kind, side):
    """PEFT's prefix sits at positions 0..p-1 (so LongRoPE counts it); ours is told so.
    (No window here: PEFT's prefix would slide out of it, ours stays visible.)"""
    import peft

    ours_model, c, length = loaded[kind][0], loaded[kind][0].config, 3
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(phi3[kind][0])
    config = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=length)
    peft_model = peft.get_peft_model(hf_model, config).eval()
    rng = np.random.default_rng(4)
    table = rng.normal(size=(length, 2 * c.num_layers * c.kv_dim)).astype(np.float32)
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(torch.from_numpy(table))
    tokens, mask = padded_batch(rng, c.vocab_size, [8, 5, 6], side)
    prefix = table_to_prefix(jnp.asarray(table), c, after_prefix=True)
    ours = _logits(ours_model, tokens, mask, prefix)
    error = _max_error(ours, hf_logits(peft_model, tokens, mask), mask)
    assert error < 1e-4, error


# --- GGUF --------------------------------------------------------------------------------------


def _write_phi3_gguf(hf_dir: Path, path: Path, split_qkv: bool = False) -> None:
    """The tiny Phi-3 as llama.cpp's converter writes it (gguf's own tensor and metadata
    names): fused attn_qkv and ffn_up (gate rows, then up), rope factor tensors for LongRoPE,
    sliding window 0 when there is none. `split_qkv` writes attn_q/k/v instead, which
    llama.cpp's phi3 loader also takes."""
    import gguf
    from safetensors.numpy import load_file

    hf = json.loads((hf_dir / "config.json").read_text())
    tensors = load_file(hf_dir / "model.safetensors")
    rope = hf["rope_parameters"]
    heads, d = hf["num_attention_heads"], hf["hidden_size"]
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.PHI3])
    writer.add_context_length(hf["max_position_embeddings"])
    writer.add_rope_scaling_orig_ctx_len(hf["original_max_position_embeddings"])
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(hf["intermediate_size"])
    writer.add_block_count(hf["num_hidden_layers"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(hf["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(hf["rms_norm_eps"])
    writer.add_rope_dimension_count(int(rope["partial_rotary_factor"] * d) // heads)
    writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_sliding_window(hf["sliding_window"] or 0)
    names, T = gguf.TENSOR_NAMES, gguf.MODEL_TENSOR
    if rope["rope_type"] == "longrope":
        original = hf["original_max_position_embeddings"]
        scale = hf["max_position_embeddings"] / original
        writer.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)))
        for tensor, key in (
            (T.ROPE_FACTORS_LONG, "long_factor"),
            (T.ROPE_FACTORS_SHORT, "short_factor"),
        ):
            writer.add_tensor(names[tensor] + ".weight", np.asarray(rope[key], np.float32))
    top = {T.TOKEN_EMBD: "model.embed_tokens", T.OUTPUT_NORM: "model.norm", T.OUTPUT: "lm_head"}
    for tensor, hf_name in top.items():
        writer.add_tensor(names[tensor] + ".weight", tensors[hf_name + ".weight"])
    per_layer = {
        T.ATTN_NORM: "input_layernorm",
        T.ATTN_QKV: "self_attn.qkv_proj",
        T.ATTN_OUT: "self_attn.o_proj",
        T.FFN_NORM: "post_attention_layernorm",
        T.FFN_UP: "mlp.gate_up_proj",
        T.FFN_DOWN: "mlp.down_proj",
    }
    for i in range(hf["num_hidden_layers"]):
        for tensor, hf_name in per_layer.items():
            weight = tensors[f"model.layers.{i}.{hf_name}.weight"]
            if tensor == T.ATTN_QKV and split_qkv:
                head_dim = d // heads
                q, kv = heads * head_dim, hf["num_key_value_heads"] * head_dim
                parts = np.split(weight, [q, q + kv])
                for part, w in zip((T.ATTN_Q, T.ATTN_K, T.ATTN_V), parts, strict=True):
                    writer.add_tensor(names[part].format(bid=i) + ".weight", w)
                continue
            writer.add_tensor(names[tensor].format(bid=i) + ".weight", weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("kind", ["phi3_window", "phi3_longrope"])
def test_gguf_loads_like_its_hf_checkpoint(phi3, loaded, kind, tmp_path):
    path = tmp_path / f"tiny-{kind}.gguf"
    _write_phi3_gguf(phi3[kind][0], path)
    from_gguf, _ = load(str(path), with_tokenizer=False)
    from_hf = loaded[kind][0]
    assert from_gguf.config.sliding_window == from_hf.config.sliding_window
    assert from_gguf.config.rope_dim == from_hf.config.rope_dim
    ours, theirs = from_gguf.config.rope_scaling, from_hf.config.rope_scaling
    assert ours.rope_type == theirs.rope_type
    if kind == "phi3_longrope":  # GGUF holds the factors in float32
        assert ours.original_max_position_embeddings == theirs.original_max_position_embeddings
        for field in ("short_factor", "long_factor", "attention_factor"):
            np.testing.assert_allclose(getattr(ours, field), getattr(theirs, field), rtol=1e-6)
    tokens, mask = padded_batch(np.random.default_rng(0), 101, [9, 4, 7], "left")
    a, b = _logits(from_gguf, tokens, mask), _logits(from_hf, tokens, mask)
    error = _max_error(a, np.asarray(b), mask)
    assert error < 1e-5, error


def test_gguf_with_separate_qkv_loads_the_same_weights(phi3, loaded, tmp_path):
    path = tmp_path / "tiny-split.gguf"
    _write_phi3_gguf(phi3["phi3_partial"][0], path, split_qkv=True)
    from_gguf, _ = load(str(path), with_tokenizer=False)
    from_hf = loaded["phi3_partial"][0]
    for name in ("q", "k", "v", "gate", "up"):
        a, b = getattr(from_gguf.layers, name)[...], getattr(from_hf.layers, name)[...]
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- bad checkpoints ---------------------------------------------------------------------------


def test_bad_fused_weight_shape_names_the_tensor(phi3, tmp_path):
    from safetensors.numpy import load_file, save_file

    dst = shutil.copytree(phi3["phi3_partial"][0], tmp_path / "ckpt")
    tensors = load_file(dst / "model.safetensors")
    name = "model.layers.1.self_attn.qkv_proj.weight"
    tensors[name] = tensors[name][:-8]  # one value head short
    save_file(tensors, dst / "model.safetensors")
    with pytest.raises(
        CheckpointError,
        match=rf"fused tensor '{name}' has shape \(72, 48\); the config implies \(80, 48\) "
        r"\(48 \+ 16 \+ 16 rows",
    ):
        load(str(dst), with_tokenizer=False)
