"""Gemma 2 and Gemma 3 (text) against transformers: logits, each Gemma switch, prefixes under
sliding windows (PEFT and transformers given our prefix mask), cached decoding, GGUF."""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import hf_logits, padded_batch

from prefix_jax.data.tokens import left_pad
from prefix_jax.infer.decode import greedy
from prefix_jax.methods.prefix import artifact as export
from prefix_jax.models import (
    PrefixKV,
    RopeScaling,
    UnsupportedArchitectureError,
    config_from_hf,
    load,
)

KINDS = ["gemma2", "gemma3"]
LENGTHS = [11, 4, 9]  # longer than the window of 4


@pytest.fixture(scope="module")
def pair(tiny_checkpoints):
    """{kind: (our model, transformers' model)}, loaded once."""
    out = {}
    for kind in KINDS:
        path = tiny_checkpoints[kind]
        model, _ = load(str(path), with_tokenizer=False)
        out[kind] = model, transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    return out


def max_error(model, hf_model, tokens, mask, **kw) -> float:
    ours, _ = model(jnp.asarray(tokens), jnp.asarray(mask), **kw)
    theirs = hf_logits(hf_model, tokens, mask)
    real = mask.astype(bool)
    return float(np.abs(np.asarray(ours)[real] - theirs[real]).max())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_logits_match_transformers(pair, kind, side):
    model, hf_model = pair[kind]
    c = model.config
    assert c.layer_windows() == ((4, 0, 4, 0) if kind == "gemma2" else (4, 4, 0, 4))
    assert (c.attn_softcap, c.final_softcap) == ((2.0, 3.0) if kind == "gemma2" else (0.0, 3.0))
    assert c.query_pre_attn_scalar == 24 and c.qk_norm == (kind == "gemma3")
    tokens, mask = padded_batch(np.random.default_rng(1), c.vocab_size, LENGTHS, side)
    assert max_error(model, hf_model, tokens, mask) < 1e-4  # measured 3e-6 (2), 5e-6 (3)


# Each Gemma switch turned off (or the window/RoPE layout changed) on the same weights.
ABLATIONS = {
    "attn_softcap": dict(attn_softcap=0.0),
    "final_softcap": dict(final_softcap=0.0),
    "embed_scale": dict(embed_scale=False),
    "norm_offset": dict(norm_offset=0.0),
    "post_norms": dict(post_norms=False),
    "query_pre_attn_scalar": dict(query_pre_attn_scalar=0.0),
    "no_window": dict(layer_types=("full_attention",) * 4),
    "every_layer_local": dict(layer_types=()),
    "rope_local_theta": dict(rope_local_theta=0.0),
    "rope_scaling": dict(rope_scaling=RopeScaling()),
    "qk_norm": dict(qk_norm=False),
    "exact_gelu": dict(activation="gelu"),
}
APPLIES = {
    "gemma2": set(ABLATIONS) - {"rope_local_theta", "rope_scaling", "qk_norm"},
    "gemma3": set(ABLATIONS) - {"attn_softcap"},
}


@pytest.mark.slow  # one compile per switch; what it shows holds while the fixtures stay
@pytest.mark.parametrize("kind", KINDS)
def test_every_gemma_switch_is_needed(pair, kind):
    """The parity test catches each feature missing: the error is then >= 1e-3 (10x the
    tolerance; measured 0.6-6 for all but the exact GELU, 1.4e-3 to 1.8e-3)."""
    model, hf_model = pair[kind]
    config = model.config
    tokens, mask = padded_batch(np.random.default_rng(1), config.vocab_size, LENGTHS, "left")
    errors = {}
    try:
        for name in sorted(APPLIES[kind]):
            model.config = dataclasses.replace(config, **ABLATIONS[name])
            errors[name] = max_error(model, hf_model, tokens, mask)
    finally:
        model.config = config
    assert min(errors.values()) > 1e-3, errors


# --- prefixes ------------------------------------------------------------------------------


def random_prefix(config, p: int, batch: int = 1, seed: int = 0) -> PrefixKV:
    shape = (config.num_layers, batch, p, config.num_kv_heads, config.head_dim)
    keys, values = jax.random.normal(jax.random.key(seed), (2, *shape))
    return PrefixKV(keys=keys, values=values)


def test_prefix_matches_peft_where_the_window_does_not_bite(tiny_checkpoints, tmp_path):
    """PEFT 0.21.2 builds Gemma 2's prefix cache with transformers 5.25; it puts the prefix at
    positions 0..p-1, where a sliding window slides past it (ours keeps it visible). With
    the window widened past p + T, everything else (soft-caps, scale, norms) must agree."""
    import peft

    wide = shutil.copytree(tiny_checkpoints["gemma2"], tmp_path / "gemma2_wide")
    config = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**config, "sliding_window": 64}))
    model, _ = load(str(wide), with_tokenizer=False)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(wide)
    p, c = 3, model.config
    peft_model = peft.get_peft_model(
        hf_model, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=p)
    ).eval()
    rng = np.random.default_rng(4)
    table = rng.normal(size=(p, 2 * c.num_layers * c.kv_dim)).astype(np.float32)
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(torch.from_numpy(table))
    exported = export.ExportedPrefix(
        table=table,
        num_layers=c.num_layers,
        num_kv_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        positions_after_prefix=True,
        model={},
    )
    for side in ("left", "right"):
        tokens, mask = padded_batch(rng, c.vocab_size, [8, 5, 6], side)
        prefix = exported.to_prefix_kv(model)
        error = max_error(model, peft_model, tokens, mask, prefix=prefix)
        assert error < 1e-4, (side, error)  # measured 3e-6 to 5e-6


def prefix_masks(config, mask: np.ndarray, p: int) -> dict[str, torch.Tensor]:
    """transformers' additive masks [B, 1, T, p + T] per layer type with our choice: the
    prefix is seen by every query, the window slides over the tokens only."""
    b, t = mask.shape
    query, key = np.arange(t)[:, None], np.arange(t)[None, :]
    tokens = (key <= query)[None] & mask.astype(bool)[:, None, :]
    out = {}
    for kind, window in (("full_attention", t), ("sliding_attention", config.sliding_window)):
        seen = tokens & (key > query - window)[None]
        seen = np.concatenate([np.ones((b, t, p), bool), seen], axis=2)
        out[kind] = torch.from_numpy(np.where(seen, 0.0, np.finfo(np.float32).min)[:, None])
    return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_prefix_under_windows_matches_transformers_given_our_mask(pair, kind, side):
    """transformers with the prefix in its cache and our prefix masks (PEFT's own mask hides
    the prefix from sliding layers once the window passes it): rows of 11 tokens, window 4."""
    model, hf_model = pair[kind]
    c, p = model.config, 3
    prefix = random_prefix(c, p)
    tokens, mask = padded_batch(np.random.default_rng(2), c.vocab_size, LENGTHS, side)
    cache = transformers.DynamicCache()  # full layers: keeps every prefix slot
    for layer in range(c.num_layers):
        k, v = (
            torch.from_numpy(np.array(x[layer]).transpose(0, 2, 1, 3)).expand(3, -1, -1, -1)
            for x in (prefix.keys, prefix.values)
        )
        cache.update(k.contiguous(), v.contiguous(), layer)
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        theirs = hf_model(
            input_ids=torch.from_numpy(tokens),
            attention_mask=prefix_masks(c, mask, p),
            position_ids=torch.from_numpy(positions),
            cache=cache,
        ).logits.numpy()
    ours, _ = model(jnp.asarray(tokens), jnp.asarray(mask), prefix=prefix)
    real = mask.astype(bool)
    assert np.abs(np.asarray(ours)[real] - theirs[real]).max() < 1e-4  # measured ~4e-6
    # Without the prefix the logits move: the test is not passing on token keys alone.
    plain, _ = model(jnp.asarray(tokens), jnp.asarray(mask))
    assert np.abs(np.asarray(plain)[real] - theirs[real]).max() > 1e-2


@pytest.mark.parametrize("kind", KINDS)
def test_cached_greedy_with_prefix_equals_full_forwards(pair, kind):
    """Cached decoding (prefix in the cache's first slots) past the window of 4, with local
    and global layers, equals no-cache forwards over the whole sequence (right-padded to
    one width, so that they compile once)."""
    model, _ = pair[kind]
    prefix = random_prefix(model.config, 3, seed=1)
    prompts, new = [[5, 9, 3, 7, 2, 8], [11, 2]], 7
    tokens, mask = left_pad(prompts, pad_id=0)
    out = np.asarray(greedy(model, tokens, mask, max_new_tokens=new, prefix=prefix))
    width = max(map(len, prompts)) + new
    forward = jax.jit(lambda t, m: model(t, m, prefix=prefix)[0])
    for row, prompt in enumerate(prompts):
        seq = list(prompt)
        for _ in range(new):
            padded = np.zeros((1, width), np.int32)
            padded[0, : len(seq)] = seq
            logits = forward(jnp.asarray(padded), jnp.asarray(padded > 0))
            seq.append(int(np.argmax(logits[0, len(seq) - 1])))
        assert out[row].tolist() == seq[len(prompt) :]


def test_cached_steps_equal_full_forward_logits(pair):
    """One-token cached steps past the window: logits, not only argmaxes, agree."""
    model, _ = pair["gemma3"]
    rng = np.random.default_rng(3)
    tokens, mask = padded_batch(rng, model.config.vocab_size, [6, 3], "left")
    extra = rng.integers(1, model.config.vocab_size, (2, 5))
    full, _ = model(
        jnp.asarray(np.concatenate([tokens, extra], 1)),
        jnp.asarray(np.concatenate([mask, np.ones_like(extra)], 1)),
    )
    run = jax.jit(lambda t, m, cache: model(t, m, cache=cache))
    cache = model.init_cache(2, tokens.shape[1] + extra.shape[1])
    logits, cache = run(jnp.asarray(tokens), jnp.asarray(mask, bool), cache)
    steps = [logits[:, -1]]
    for j in range(extra.shape[1]):
        logits, cache = run(jnp.asarray(extra[:, j : j + 1]), jnp.ones((2, 1), bool), cache)
        steps.append(logits[:, -1])
    want = np.asarray(full)[:, tokens.shape[1] - 1 :]
    np.testing.assert_allclose(np.stack(steps, 1), want, atol=1e-5)


def test_bfloat16_compute_is_close_to_float32(pair, tiny_checkpoints):
    f32, _ = pair["gemma2"]
    bf16, _ = load(
        str(tiny_checkpoints["gemma2"]),
        with_tokenizer=False,
        param_dtype=jnp.bfloat16,
        dtype=jnp.bfloat16,
    )
    tokens = jnp.asarray(np.random.default_rng(3).integers(1, 97, (2, 9)))
    a, _ = f32(tokens)
    b, _ = bf16(tokens)
    assert b.dtype == jnp.float32
    assert np.abs(np.asarray(a) - np.asarray(b)).max() < 0.15
    assert np.mean(np.argmax(a, -1) == np.argmax(b, -1)) > 0.8


# --- GGUF ------------------------------------------------------------------------------------


def _write_gemma_gguf(hf_dir, path, kind: str) -> None:
    """A float32 GGUF with the gguf package's own tensor and metadata names, norm weights
    stored as 1 + w as llama.cpp's converter writes them (its RMSNorm has no offset)."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((hf_dir / "config.json").read_text())
    tensors = load_file(hf_dir / "model.safetensors")
    arch = gguf.MODEL_ARCH.GEMMA2 if kind == "gemma2" else gguf.MODEL_ARCH.GEMMA3
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_key_length(config["head_dim"])
    writer.add_value_length(config["head_dim"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_sliding_window(config["sliding_window"])
    writer.add_final_logit_softcapping(config["final_logit_softcapping"])
    rope = config["rope_parameters"]
    if kind == "gemma2":
        writer.add_rope_freq_base(rope["rope_theta"])
        writer.add_attn_logit_softcapping(config["attn_logit_softcapping"])
    else:
        writer.add_rope_freq_base(rope["full_attention"]["rope_theta"])
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["full_attention"]["factor"])
        layer_types = config["layer_types"]
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in layer_types])
    t = gguf.MODEL_TENSOR
    hf_names = {
        t.ATTN_NORM: "input_layernorm",
        t.ATTN_Q: "self_attn.q_proj",
        t.ATTN_K: "self_attn.k_proj",
        t.ATTN_V: "self_attn.v_proj",
        t.ATTN_OUT: "self_attn.o_proj",
        t.ATTN_POST_NORM: "post_attention_layernorm",
        t.FFN_PRE_NORM: "pre_feedforward_layernorm",
        t.FFN_POST_NORM: "post_feedforward_layernorm",
        t.FFN_GATE: "mlp.gate_proj",
        t.FFN_UP: "mlp.up_proj",
        t.FFN_DOWN: "mlp.down_proj",
    }
    if kind == "gemma3":
        hf_names |= {t.ATTN_Q_NORM: "self_attn.q_norm", t.ATTN_K_NORM: "self_attn.k_norm"}

    def add(name: str, weight: np.ndarray, hf_name: str) -> None:
        writer.add_tensor(name, weight + 1 if hf_name.endswith("norm.weight") else weight)

    names = gguf.TENSOR_NAMES
    add(names[t.TOKEN_EMBD] + ".weight", tensors["model.embed_tokens.weight"], "embed")
    add(names[t.OUTPUT_NORM] + ".weight", tensors["model.norm.weight"], "model.norm.weight")
    for i in range(config["num_hidden_layers"]):
        for tensor, hf in hf_names.items():
            hf_name = f"model.layers.{i}.{hf}.weight"
            add(names[tensor].format(bid=i) + ".weight", tensors[hf_name], hf_name)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("kind", KINDS)
def test_gguf_loads_like_its_hf_checkpoint(tiny_checkpoints, tmp_path, kind):
    """GGUF stores neither query_pre_attn_scalar (llama.cpp uses head_dim, or hidden / heads
    for the 27B models) nor Gemma 3's local RoPE base (10000): the HF side is set to those."""
    hf_dir = shutil.copytree(tiny_checkpoints[kind], tmp_path / kind)
    config = json.loads((hf_dir / "config.json").read_text())
    config["query_pre_attn_scalar"] = config["head_dim"]
    if kind == "gemma3":
        config["rope_parameters"]["sliding_attention"]["rope_theta"] = 10000.0
    (hf_dir / "config.json").write_text(json.dumps(config))
    path = tmp_path / f"tiny-{kind}.gguf"
    _write_gemma_gguf(hf_dir, path, kind)
    from_gguf, _ = load(str(path), with_tokenizer=False)
    from_hf, _ = load(str(hf_dir), with_tokenizer=False)
    ours, theirs = from_gguf.config, from_hf.config
    assert ours.norm_eps == pytest.approx(theirs.norm_eps)  # a float32 in GGUF
    assert ours == dataclasses.replace(theirs, name=ours.name, norm_eps=ours.norm_eps)
    gguf_norms, hf_norms = from_gguf.layers.mlp_post_norm_scale, from_hf.layers.mlp_post_norm_scale
    np.testing.assert_allclose(gguf_norms[...], hf_norms[...], atol=1e-6)  # 1 + w shifted back
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 97, (2, 11)))
    np.testing.assert_allclose(from_gguf(tokens)[0], from_hf(tokens)[0], atol=1e-5)


# --- configs -------------------------------------------------------------------------------


def test_parameter_count_matches_transformers(pair):
    for model, hf_model in pair.values():
        assert model.config.num_params() == sum(p.numel() for p in hf_model.parameters())


def test_transformers_4_gemma3_config_keys(tiny_checkpoints):
    """Older Gemma 3 configs: rope_theta / rope_scaling for global layers,
    rope_local_base_freq for local ones, sliding_window_pattern instead of layer_types."""
    config = json.loads((tiny_checkpoints["gemma3"] / "config.json").read_text())
    for key in ("rope_parameters", "layer_types"):
        config.pop(key)
    config |= {
        "rope_theta": 1e6,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        "rope_local_base_freq": 10000.0,
        "sliding_window_pattern": 2,
    }
    c = config_from_hf(config)
    assert (c.rope_theta, c.rope_scaling.factor, c.rope_local_theta) == (1e6, 8.0, 10000.0)
    assert c.layer_windows() == (4, 0, 4, 0)


def test_unsupported_gemma_configs_are_named(tiny_checkpoints):
    config = json.loads((tiny_checkpoints["gemma3"] / "config.json").read_text())
    with pytest.raises(UnsupportedArchitectureError, match="multimodal.*gemma3_text"):
        config_from_hf({"model_type": "gemma3", "text_config": config})
    with pytest.raises(UnsupportedArchitectureError, match="unknown layer types.*chunked"):
        config_from_hf({**config, "layer_types": ["chunked_attention"] * 4})
    with pytest.raises(UnsupportedArchitectureError, match="bidirectional"):
        config_from_hf({**config, "use_bidirectional_attention": True})
    local_yarn = {**config["rope_parameters"], "sliding_attention": {"rope_type": "yarn"}}
    with pytest.raises(UnsupportedArchitectureError, match="'yarn' for gemma3_text sliding"):
        config_from_hf({**config, "rope_parameters": local_yarn})
