"""The encoder-decoder (BART, T5) against transformers, PEFT and a float64 NumPy reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import seq2seq_batch as _batch
from conftest import seq2seq_hf_logits as _hf_logits
from flax import nnx

from prefix_jax.models import load
from prefix_jax.models.config import UnsupportedArchitectureError
from prefix_jax.models.pretrained import model_identity
from prefix_jax.models.seq2seq import EncoderDecoder
from prefix_jax.models.seq2seq_config import Seq2SeqConfig, seq2seq_config_from_hf
from prefix_jax.models.weights import CheckpointError

KINDS = ["bart", "t5_v1", "t5_v11"]
_LOADED: dict = {}


def _load(checkpoints, kind):
    """Ours and transformers' model of one tiny checkpoint, loaded once per session."""
    if kind not in _LOADED:
        path = checkpoints[kind]
        ours, _ = load(str(path), with_tokenizer=False)
        theirs = transformers.AutoModelForSeq2SeqLM.from_pretrained(path).eval()
        _LOADED[kind] = (ours, theirs)
    return _LOADED[kind]


@nnx.jit
def _jit_forward(model, src, src_mask, tgt, tgt_mask, prefix):
    return model(src, src_mask, tgt, tgt_mask, prefix=prefix)


def _forward(model, src, src_mask, tgt, tgt_mask=None, prefix=None) -> jax.Array:
    """Teacher-forced logits, compiled (much faster than op-by-op on this CPU)."""
    as_jnp = (None if a is None else jnp.asarray(a) for a in (src, src_mask, tgt, tgt_mask))
    return _jit_forward(model, *as_jnp, prefix)


@pytest.mark.parametrize("kind", KINDS)
def test_logits_match_transformers(tiny_seq2seq_checkpoints, kind):
    model, hf = _load(tiny_seq2seq_checkpoints, kind)
    c = model.config
    if kind == "t5_v11":
        assert c.gated_mlp and not c.tie_embeddings and not c.scale_decoder_outputs
    if kind == "t5_v1":
        assert c.activation == "relu" and c.tie_embeddings and c.scale_decoder_outputs
    src, src_mask, tgt, tgt_mask = _batch()
    ours = np.asarray(_forward(model, src, src_mask, tgt, tgt_mask))
    theirs = _hf_logits(hf, src, src_mask, tgt, tgt_mask)
    real = tgt_mask.astype(bool)
    err = np.abs(ours[real] - theirs[real]).max()
    print(f"{kind} logits max abs error {err:.2e}")
    assert err < 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_config_param_count_and_identity(tiny_seq2seq_checkpoints, kind):
    model, hf = _load(tiny_seq2seq_checkpoints, kind)
    ours = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert model.config.num_params() == ours
    theirs = sum(p.numel() for p in hf.parameters())  # tied weights counted once
    theirs += hf.final_logits_bias.numel() if kind == "bart" else 0  # a buffer there
    assert ours == theirs
    assert Seq2SeqConfig.from_dict(model.config.to_dict()) == model.config
    identity = model_identity(model)
    assert identity["family"] == kind.split("_")[0] and identity["num_decoder_layers"] == 3


def test_config_errors():
    with pytest.raises(UnsupportedArchitectureError, match="mbart"):
        seq2seq_config_from_hf({"model_type": "mbart"})
    with pytest.raises(UnsupportedArchitectureError, match="feed_forward_proj"):
        seq2seq_config_from_hf(
            {"model_type": "t5", "feed_forward_proj": "gated-gelu-x", "vocab_size": 8}
        )
    with pytest.raises(ValueError, match="num_heads"):
        Seq2SeqConfig("t5", 8, 8, 1, 1, 0, 4, 8, positions="relative")


def test_missing_tensor_is_a_clear_error(tiny_seq2seq_checkpoints, tmp_path):
    from safetensors.numpy import load_file, save_file

    src = tiny_seq2seq_checkpoints["t5_v1"]
    tensors = load_file(src / "model.safetensors")
    del tensors["decoder.block.1.layer.1.EncDecAttention.k.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    with pytest.raises(CheckpointError, match="EncDecAttention.k.weight"):
        load(str(tmp_path), with_tokenizer=False)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load(str(tmp_path), with_tokenizer=False)


def test_bfloat16_runs_close_to_float32(tiny_seq2seq_checkpoints):
    path = str(tiny_seq2seq_checkpoints["t5_v11"])
    f32, _ = _load(tiny_seq2seq_checkpoints, "t5_v11")
    bf16, _ = load(path, with_tokenizer=False, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    assert isinstance(bf16, EncoderDecoder)
    args = _batch()
    a, b = np.asarray(_forward(f32, *args)), np.asarray(_forward(bf16, *args))
    assert b.dtype == np.float32
    real = args[3].astype(bool)
    assert np.abs(a - b)[real].max() < 0.05 * np.abs(a[real]).max()
    assert np.mean(a.argmax(-1)[real] == b.argmax(-1)[real]) > 0.9


# --- prefixes --------------------------------------------------------------------------------


def _random_prefix(rng, layers, batch, length, model, scale=0.5, masked=False):
    from prefix_jax.models.kv import PrefixKV

    c = model.config
    shape = (layers, batch, length, c.num_heads, c.head_dim)
    mask = None
    if masked:  # rows with prefixes of different lengths
        mask = np.arange(length)[None, :] < rng.integers(1, length + 1, (batch, 1))
        mask = jnp.asarray(mask)
    return PrefixKV(
        keys=jnp.asarray(scale * rng.standard_normal(shape), jnp.float32),
        values=jnp.asarray(scale * rng.standard_normal(shape), jnp.float32),
        mask=mask,
    )


def _three_prefixes(model, batch=1, seed=5, masked=False):
    from prefix_jax.models.seq2seq import Seq2SeqPrefix

    rng = np.random.default_rng(seed)
    c = model.config
    return Seq2SeqPrefix(
        encoder=_random_prefix(rng, c.num_encoder_layers, batch, 3, model, masked=masked),
        decoder=_random_prefix(rng, c.num_decoder_layers, batch, 2, model, masked=masked),
        cross=_random_prefix(rng, c.num_decoder_layers, batch, 4, model, masked=masked),
    )


@pytest.mark.parametrize("kind", ["bart", "t5_v11"])
def test_cached_steps_match_full_forward_with_three_prefixes(tiny_seq2seq_checkpoints, kind):
    """One-token decoder steps against the cache (prefixes in it) equal teacher forcing."""
    model, _ = _load(tiny_seq2seq_checkpoints, kind)
    src, src_mask, _, _ = _batch()
    tgt = np.random.default_rng(3).integers(2, 61, (3, 3))
    prefix = _three_prefixes(model, batch=3, masked=True)
    full = _forward(model, src, src_mask, tgt, None, prefix)

    @nnx.jit
    def steps(model, src, src_mask, tgt):
        encoded = model.encode(src, src_mask, prefix=prefix.encoder)
        cache = model.init_cache(
            encoded, src_mask, tgt.shape[1], cross_prefix=prefix.cross, self_prefix=prefix.decoder
        )
        out = []
        for j in range(tgt.shape[1]):
            logits, cache = model.decode(tgt[:, j : j + 1], None, None, None, cache=cache)
            out.append(logits[:, 0])
        return jnp.stack(out, 1)

    cached = steps(model, jnp.asarray(src), jnp.asarray(src_mask), jnp.asarray(tgt))
    np.testing.assert_allclose(np.asarray(cached), np.asarray(full), atol=1e-5)


def test_greedy_and_beam_match_full_forward(tiny_seq2seq_checkpoints, monkeypatch):
    """Decoding with all three prefixes equals teacher forcing token for token (BART; T5's
    cached decoder bias is covered by the cached-steps test)."""
    from prefix_jax.infer.seq2seq_decode import beam_search_seq2seq, greedy_seq2seq
    from prefix_jax.models.seq2seq import EncoderDecoder

    model, _ = _load(tiny_seq2seq_checkpoints, "bart")
    src, src_mask, _, _ = _batch(seed=1)
    prefix = _three_prefixes(model, batch=1)
    n = 6
    calls = {"encode": 0, "cross": 0}
    for name, key in (("encode", "encode"), ("_cross_keys_values", "cross")):
        original = getattr(EncoderDecoder, name)

        def counted(self, *args, _original=original, _key=key, **kwargs):
            calls[_key] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(EncoderDecoder, name, counted)
    # eos banned throughout (min_new_tokens = n), so every row generates n tokens
    tokens = np.asarray(
        greedy_seq2seq(model, src, src_mask, max_new_tokens=n, prefix=prefix, min_new_tokens=n)
    )
    assert calls == {"encode": 1, "cross": 1}  # traced once: neither runs inside the loop
    start = np.full((3, 1), model.config.decoder_start_id)
    teacher = np.concatenate([start, tokens[:, :-1]], 1)
    full = np.array(_forward(model, src, src_mask, teacher, None, prefix))
    eos = model.config.eos_id
    full[:, :, eos] = -np.inf  # banned during decoding
    np.testing.assert_array_equal(full.argmax(-1), tokens)

    beams, scores = beam_search_seq2seq(
        model, src, src_mask, beam_size=3, max_new_tokens=n, prefix=prefix, min_new_tokens=n
    )
    beams = np.asarray(beams)
    teacher = np.concatenate([start, beams[:, :-1]], 1)
    full = _forward(model, src, src_mask, teacher, None, prefix)
    logp = np.asarray(jax.nn.log_softmax(full, -1))  # eos is banned, not renormalized away
    chosen = np.take_along_axis(logp, beams[:, :, None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(scores), chosen.sum(1) / n, atol=1e-4)


def test_bart_decoder_prefix_matches_peft(tiny_seq2seq_checkpoints):
    """PEFT 0.21.2 (SEQ_2_SEQ_LM, transformers 5.25) injects the prefix into the decoder's
    self-attention only: it builds an EncoderDecoderCache and then replaces its
    cross-attention part with an empty cache. Its decoder positions start after the prefix
    (BART numbers positions from the cache length). Ours: decoder prefix with
    `positions_after_prefix`, no cross prefix, no encoder prefix."""
    import peft

    from prefix_jax.models.kv import PrefixKV
    from prefix_jax.models.seq2seq import Seq2SeqPrefix

    model, _ = _load(tiny_seq2seq_checkpoints, "bart")
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(tiny_seq2seq_checkpoints["bart"])
    c = model.config
    p = 4
    config = peft.PrefixTuningConfig(
        task_type="SEQ_2_SEQ_LM",
        num_virtual_tokens=p,
        num_layers=c.num_decoder_layers,
        token_dim=c.hidden_size,
        num_attention_heads=c.num_heads,
    )
    peft_model = peft.get_peft_model(hf, config)
    torch.manual_seed(1)
    with torch.no_grad():
        embedding = peft_model.prompt_encoder["default"].embedding.weight
        embedding.copy_(0.5 * torch.randn_like(embedding))
    peft_model.eval()
    cache = peft_model.get_prompt(batch_size=1)
    assert cache.cross_attention_cache.get_seq_length() == 0  # cross part dropped
    self_cache = cache.self_attention_cache
    keys = np.stack(
        [layer.keys[0].detach().numpy() for layer in self_cache.layers]
    )  # [L, H, p, hd]
    values = np.stack([layer.values[0].detach().numpy() for layer in self_cache.layers])
    prefix = PrefixKV(
        keys=jnp.asarray(keys.transpose(0, 2, 1, 3)[:, None]),
        values=jnp.asarray(values.transpose(0, 2, 1, 3)[:, None]),
        positions_after_prefix=True,
    )
    src, src_mask, tgt, tgt_mask = _batch(seed=2)
    theirs = _hf_logits(peft_model, src, src_mask, tgt, tgt_mask)
    ours = np.asarray(_forward(model, src, src_mask, tgt, tgt_mask, Seq2SeqPrefix(decoder=prefix)))
    real = tgt_mask.astype(bool)
    err = np.abs(ours[real] - theirs[real]).max()
    print(f"PEFT bart decoder prefix max abs error {err:.2e}")
    assert err < 1e-4


# --- an independent float64 NumPy reference ----------------------------------------------


def _np_rms(x, w, eps):
    return w * x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps)


def _np_layer_norm(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    return w * (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) + b


def _np_attention(q, k, v, visible, bias=None, scale=True):
    """q [T, H, hd], k/v [S, H, hd], visible [T, S]; bias [H, T, S]."""
    scores = np.einsum("thd,shd->hts", q, k)
    if scale:
        scores = scores / np.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    scores = np.where(visible[None], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs = probs / probs.sum(-1, keepdims=True)
    return np.einsum("hts,shd->thd", probs, v)


def _np_bucket(rel, bidirectional, buckets, max_distance):
    """T5's relative position buckets, from the paper's description (Mesh TF)."""
    out = np.zeros_like(rel)
    if bidirectional:
        buckets //= 2
        out = np.where(rel > 0, buckets, 0)
        rel = np.abs(rel)
    else:
        rel = np.maximum(-rel, 0)
    exact = buckets // 2
    with np.errstate(divide="ignore"):
        large = exact + (
            np.log(rel / exact) / np.log(max_distance / exact) * (buckets - exact)
        ).astype(np.int64)
    return out + np.where(rel < exact, rel, np.minimum(large, buckets - 1))


def _weights(hf) -> dict[str, np.ndarray]:
    return {k: v.detach().double().numpy() for k, v in hf.state_dict().items()}


def _np_t5_encoder(w, c, x, valid, pk, pv):
    """T5 v1.1 encoder of one row from input embeddings x [S, d], with a prefix
    pk/pv [L, p, H, hd] that every token sees, without position bias."""
    s, p, heads = x.shape[0], pk.shape[1], c.num_heads
    table = w["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    rel = np.arange(s)[None, :] - np.arange(s)[:, None]
    bucket = _np_bucket(rel, True, c.relative_buckets, c.relative_max_distance)
    bias = np.concatenate([np.zeros((heads, s, p)), table[bucket].transpose(2, 0, 1)], -1)
    visible = np.broadcast_to(np.concatenate([np.ones(p, bool), valid]), (s, p + s))
    for i in range(c.num_encoder_layers):
        blk = f"encoder.block.{i}.layer."
        h = _np_rms(x, w[blk + "0.layer_norm.weight"], c.norm_eps)
        q, k, v = (
            (h @ w[f"{blk}0.SelfAttention.{n}.weight"].T).reshape(s, heads, -1) for n in "qkv"
        )
        k, v = np.concatenate([pk[i], k]), np.concatenate([pv[i], v])
        out = _np_attention(q, k, v, visible, bias, scale=False).reshape(s, -1)
        x = x + out @ w[blk + "0.SelfAttention.o.weight"].T
        h = _np_rms(x, w[blk + "1.layer_norm.weight"], c.norm_eps)
        gate = h @ w[blk + "1.DenseReluDense.wi_0.weight"].T
        gelu = 0.5 * gate * (1 + np.tanh(np.sqrt(2 / np.pi) * (gate + 0.044715 * gate**3)))
        x = x + (gelu * (h @ w[blk + "1.DenseReluDense.wi_1.weight"].T)) @ (
            w[blk + "1.DenseReluDense.wo.weight"].T
        )
    return _np_rms(x, w["encoder.final_layer_norm.weight"], c.norm_eps)


def _np_bart_decoder(w, c, tokens, encoded, enc_valid, self_prefix, cross_prefix):
    """BART decoder logits of one row; self_prefix/cross_prefix: (k, v) [L, p, H, hd]."""
    from scipy.special import erf

    t, heads = tokens.shape[0], c.num_heads
    d = "model.decoder."
    x = w["model.shared.weight"][tokens] * c.embed_scale
    x = x + w[d + "embed_positions.weight"][np.arange(t) + 2]
    x = _np_layer_norm(x, w[d + "layernorm_embedding.weight"], w[d + "layernorm_embedding.bias"])

    def linear(name, h):
        return h @ w[name + ".weight"].T + w[name + ".bias"]

    def block(x, name, source, prefix, visible):
        q = linear(f"{name}.q_proj", x).reshape(x.shape[0], heads, -1)
        k = linear(f"{name}.k_proj", source).reshape(source.shape[0], heads, -1)
        v = linear(f"{name}.v_proj", source).reshape(source.shape[0], heads, -1)
        k, v = np.concatenate([prefix[0], k]), np.concatenate([prefix[1], v])
        out = _np_attention(q, k, v, visible).reshape(x.shape[0], -1)
        return linear(f"{name}.out_proj", out)

    def norm(x, name):
        return _np_layer_norm(x, w[name + ".weight"], w[name + ".bias"])

    ps, pc = self_prefix[0].shape[1], cross_prefix[0].shape[1]
    causal = np.concatenate([np.ones((t, ps), bool), np.tril(np.ones((t, t), bool))], 1)
    cross = np.broadcast_to(
        np.concatenate([np.ones(pc, bool), enc_valid]), (t, pc + len(enc_valid))
    )
    for i in range(c.num_decoder_layers):
        layer = f"{d}layers.{i}."
        own = tuple(a[i] for a in self_prefix)
        x = norm(x + block(x, layer + "self_attn", x, own, causal), layer + "self_attn_layer_norm")
        other = tuple(a[i] for a in cross_prefix)
        x = x + block(x, layer + "encoder_attn", encoded, other, cross)
        x = norm(x, layer + "encoder_attn_layer_norm")
        h = linear(layer + "fc1", x)
        h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
        x = norm(x + linear(layer + "fc2", h), layer + "final_layer_norm")
    return x @ w["model.shared.weight"].T + w["final_logits_bias"][0]


def test_t5_encoder_with_prefix_matches_numpy(tiny_seq2seq_checkpoints):
    model, hf = _load(tiny_seq2seq_checkpoints, "t5_v11")
    c = model.config
    rng = np.random.default_rng(7)
    prefix = _random_prefix(rng, c.num_encoder_layers, 1, 3, model)
    x = rng.standard_normal((2, 11, c.hidden_size))
    valid = np.array([[True] * 11, [True] * 6 + [False] * 5])
    ours = nnx.jit(
        lambda m, x, v: m.encode(jnp.zeros(v.shape, jnp.int32), v, prefix=prefix, input_embeds=x)
    )(model, jnp.asarray(x, jnp.float32), jnp.asarray(valid))
    w = _weights(hf)
    pk, pv = (np.asarray(a[:, 0], np.float64) for a in (prefix.keys, prefix.values))
    for row in range(2):
        want = _np_t5_encoder(w, c, x[row], valid[row], pk, pv)
        err = np.abs(np.asarray(ours[row])[valid[row]] - want[valid[row]]).max()
        print(f"t5 encoder with prefix vs float64 NumPy: {err:.2e}")
        assert err < 1e-5


def test_bart_decoder_with_self_and_cross_prefix_matches_numpy(tiny_seq2seq_checkpoints):
    model, hf = _load(tiny_seq2seq_checkpoints, "bart")
    c = model.config
    rng = np.random.default_rng(8)
    self_prefix = _random_prefix(rng, c.num_decoder_layers, 1, 2, model)
    cross_prefix = _random_prefix(rng, c.num_decoder_layers, 1, 5, model)
    src, src_mask, tgt, _ = _batch(seed=4)
    encoded = jnp.asarray(rng.standard_normal((3, src.shape[1], c.hidden_size)), jnp.float32)

    @nnx.jit
    def decode(model, tgt, encoded, src_mask):
        return model.decode(
            tgt, None, encoded, src_mask, self_prefix=self_prefix, cross_prefix=cross_prefix
        )[0]

    ours = np.asarray(decode(model, jnp.asarray(tgt), encoded, jnp.asarray(src_mask)))
    w = _weights(hf)
    as64 = lambda kv: tuple(np.asarray(a[:, 0], np.float64) for a in (kv.keys, kv.values))  # noqa: E731
    for row in range(3):
        want = _np_bart_decoder(
            w,
            c,
            tgt[row],
            np.asarray(encoded[row], np.float64),
            src_mask[row].astype(bool),
            as64(self_prefix),
            as64(cross_prefix),
        )
        err = np.abs(ours[row] - want).max()
        print(f"bart decoder with self + cross prefix vs float64 NumPy: {err:.2e}")
        assert err < 1e-5


# --- kernels -------------------------------------------------------------------------------


def _np_kernel(q, k, v, key_valid, visible_slots, bias):
    out = np.zeros(q.shape)
    groups = q.shape[2] // k.shape[2]
    for b in range(q.shape[0]):
        kk, vv = (np.repeat(a[b], groups, axis=1) for a in (k, v))
        visible = visible_slots & key_valid[b][None]
        out[b] = _np_attention(q[b], kk, vv, visible, bias)
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_kernels_with_relative_bias_and_bidirectional_mask(causal):
    """flash (8 x 8 tiles), splash (falls back to flash) and xla against float64 NumPy:
    forward and gradients w.r.t. q, k, v; p = 3 prefix keys (no bias), padded keys."""
    from prefix_jax.models.attention import AttentionMask, RelativeBias, attention, flash

    rng = np.random.default_rng(11)
    b, t, p, heads, kv, hd = 2, 13, 3, 4, 2, 8
    q = rng.standard_normal((b, t, heads, hd))
    k = rng.standard_normal((b, p + t, kv, hd))
    v = rng.standard_normal((b, p + t, kv, hd))
    key_valid = np.ones((b, p + t), bool)
    key_valid[1, p + 9 :] = False
    key_valid[0, 1] = False  # a masked prefix slot
    table = rng.standard_normal((8, heads))
    slots = np.arange(t)
    key_slots = np.concatenate([np.full(p, -1), slots])
    mask = AttentionMask(
        query_slots=jnp.asarray(slots),
        key_slots=jnp.asarray(key_slots),
        key_valid=jnp.asarray(key_valid),
        query_valid=jnp.ones((b, t), bool),
        prefix_length=p,
        self_aligned=True,
        causal=causal,
        bias=RelativeBias(
            jnp.asarray(table, jnp.float32), bidirectional=not causal, max_distance=12
        ),
    )
    rel = slots[None, :] - slots[:, None]
    bucket = _np_bucket(rel, not causal, 8, 12)
    bias = np.concatenate([np.zeros((heads, t, p)), table[bucket].transpose(2, 0, 1)], -1)
    visible = np.ones((t, p + t), bool)
    if causal:
        visible = key_slots[None, :] <= slots[:, None]
    want = _np_kernel(q, k, v, key_valid, visible, bias)
    args = [jnp.asarray(a, jnp.float32) for a in (q, k, v)]
    cot = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)
    kernels = {
        "xla": lambda q, k, v: attention(q, k, v, mask, "xla"),
        "flash": lambda q, k, v: flash(q, k, v, mask, block=8),
        "splash": lambda q, k, v: attention(q, k, v, mask, "splash"),
    }
    grads = {}
    for name, fn in kernels.items():
        out, vjp = jax.vjp(jax.jit(fn), *args)
        err = np.abs(np.asarray(out) - want).max()
        print(f"{name} causal={causal} vs float64 NumPy: {err:.2e}")
        assert err < 1e-5, name
        grads[name] = vjp(cot)
    for name in ("flash", "splash"):
        for ours, ref in zip(grads[name], grads["xla"], strict=True):
            np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-5)


# --- LoRA deltas and meshes ----------------------------------------------------------------


def test_decoder_deltas_equal_merged_weights(tiny_seq2seq_checkpoints):
    """Low-rank deltas on cross_v (teacher forcing and the cached cross K/V) and on the
    encoder's q equal the same update merged into the weights."""
    from prefix_jax.models.layers import LowRankDeltas
    from prefix_jax.models.seq2seq import Seq2SeqDeltas

    model, _ = _load(tiny_seq2seq_checkpoints, "t5_v1")
    c = model.config
    rng = np.random.default_rng(12)
    h, hd, d, r = c.num_heads, c.head_dim, c.hidden_size, 2

    def factors(layers):
        a = jnp.asarray(0.3 * rng.standard_normal((layers, d, r)), jnp.float32)
        return a, jnp.asarray(0.3 * rng.standard_normal((layers, r, h, hd)), jnp.float32)

    cross_v, enc_q = factors(c.num_decoder_layers), factors(c.num_encoder_layers)
    deltas = Seq2SeqDeltas(
        encoder=LowRankDeltas({"q": enc_q}, scale=0.5),
        decoder=LowRankDeltas({"cross_v": cross_v}, scale=0.5),
    )
    src, src_mask, tgt, tgt_mask = (jnp.asarray(a) for a in _batch(seed=6))
    ours = nnx.jit(lambda m: m(src, src_mask, tgt, tgt_mask, deltas=deltas))(model)

    merged = nnx.clone(model)
    merged.decoder_layers.cross_v[...] += 0.5 * jnp.einsum("ldr,lrhk->ldhk", *cross_v)
    merged.encoder_layers.q[...] += 0.5 * jnp.einsum("ldr,lrhk->ldhk", *enc_q)
    want = nnx.jit(lambda m: m(src, src_mask, tgt, tgt_mask))(merged)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(want), atol=1e-4)

    @nnx.jit
    def first_step(model):  # cross K/V computed once in init_cache, with the deltas
        encoded = model.encode(src, src_mask, deltas=deltas.encoder)
        cache = model.init_cache(encoded, src_mask, 1, deltas=deltas.decoder)
        return model.decode(tgt[:, :1], None, None, None, cache=cache, deltas=deltas.decoder)[0]

    np.testing.assert_allclose(np.asarray(first_step(model)), np.asarray(want)[:, :1], atol=1e-4)


def test_sharded_load_matches_unsharded(tiny_seq2seq_checkpoints):
    """Weights placed over a (data 2, fsdp 2, tensor 2) mesh of 8 CPU devices, activations
    constrained by the decoder's logical axes: the same logits."""
    from prefix_jax.scale.sharding import make_mesh

    path = str(tiny_seq2seq_checkpoints["bart"])
    mesh = make_mesh([("data", 2), ("fsdp", 2), ("tensor", 2)])
    sharded, _ = load(path, with_tokenizer=False, mesh=mesh)
    assert sharded.activation_sharding is not None
    assert "tensor" in str(sharded.decoder_layers.cross_q[...].sharding.spec)
    model, _ = _load(tiny_seq2seq_checkpoints, "bart")
    src, src_mask, tgt, tgt_mask = _batch(seed=9)
    src, src_mask, tgt, tgt_mask = (
        np.concatenate([a, a[:1]]) for a in (src, src_mask, tgt, tgt_mask)
    )
    want = np.asarray(_forward(model, src, src_mask, tgt, tgt_mask))
    got = np.asarray(_forward(sharded, src, src_mask, tgt, tgt_mask))
    np.testing.assert_allclose(got, want, atol=1e-5)
