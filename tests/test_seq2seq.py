"""The encoder-decoder (BART, T5) against transformers, PEFT and a float64 NumPy reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import padded_batch
from flax import nnx

from prefix_jax.models import load
from prefix_jax.models.config import UnsupportedArchitectureError
from prefix_jax.models.loading import CheckpointError, model_identity
from prefix_jax.models.seq2seq import EncoderDecoder, Seq2SeqConfig, seq2seq_config_from_hf

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


def _batch(seed=0, vocab=61):
    """Right-padded sources (lengths 11, 5, 8: T5's long-distance buckets are reached) and
    targets."""
    rng = np.random.default_rng(seed)
    src, src_mask = padded_batch(rng, vocab, [11, 5, 8], "right")
    tgt, tgt_mask = padded_batch(rng, vocab, [7, 3, 5], "right")
    return src, src_mask, tgt, tgt_mask


@nnx.jit
def _jit_forward(model, src, src_mask, tgt, tgt_mask, prefix):
    return model(src, src_mask, tgt, tgt_mask, prefix=prefix)


def _forward(model, src, src_mask, tgt, tgt_mask=None, prefix=None) -> jax.Array:
    """Teacher-forced logits, compiled (much faster than op-by-op on this CPU)."""
    as_jnp = (None if a is None else jnp.asarray(a) for a in (src, src_mask, tgt, tgt_mask))
    return _jit_forward(model, *as_jnp, prefix)


def _hf_logits(hf, src, src_mask, tgt, tgt_mask, **kwargs) -> np.ndarray:
    with torch.no_grad():
        out = hf(
            input_ids=torch.from_numpy(src),
            attention_mask=torch.from_numpy(src_mask),
            decoder_input_ids=torch.from_numpy(tgt),
            decoder_attention_mask=torch.from_numpy(tgt_mask),
            **kwargs,
        )
    return out.logits.float().numpy()


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
    from prefix_jax.models.transformer import PrefixKV

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


@pytest.mark.parametrize("kind", ["bart", "t5_v1"])
def test_greedy_and_beam_match_full_forward(tiny_seq2seq_checkpoints, kind, monkeypatch):
    from prefix_jax.models.seq2seq import EncoderDecoder
    from prefix_jax.seq2seq_decode import beam_search_seq2seq, greedy_seq2seq

    model, _ = _load(tiny_seq2seq_checkpoints, kind)
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
