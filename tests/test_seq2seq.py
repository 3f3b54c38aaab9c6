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
    ours = np.asarray(model(*(jnp.asarray(a) for a in (src, src_mask, tgt, tgt_mask))))
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
    args = [jnp.asarray(a) for a in _batch()]
    a, b = np.asarray(f32(*args)), np.asarray(bf16(*args))
    assert b.dtype == np.float32
    real = np.asarray(args[3]).astype(bool)
    assert np.abs(a - b)[real].max() < 0.05 * np.abs(a[real]).max()
    assert np.mean(a.argmax(-1)[real] == b.argmax(-1)[real]) > 0.9
