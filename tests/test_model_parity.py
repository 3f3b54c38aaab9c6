"""Our transformer against transformers (PyTorch, float32) on tiny checkpoints and SmolLM2."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import hf_logits, padded_batch

from prefix_jax.data.tokens import left_pad
from prefix_jax.infer.decode import greedy
from prefix_jax.models import load

KINDS = ["gpt2", "llama", "llama_tied", "llama3_rope", "qwen2", "qwen3", "mistral_window"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("side", ["left", "right", "none"])
def test_tiny_logits_match_transformers(tiny_checkpoints, kind, side):
    path = tiny_checkpoints[kind]
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    model, _ = load(str(path), with_tokenizer=False)
    if kind == "llama3_rope":
        assert model.config.rope_scaling.rope_type == "llama3"
    if kind == "qwen2":
        assert model.config.qkv_bias and not model.config.tie_embeddings
    if kind == "mistral_window":
        assert model.config.sliding_window == 4  # rows of 9 tokens cross it
    if kind == "qwen3":
        assert model.config.qk_norm and model.config.head_dim * 4 != model.config.hidden_size
    rng = np.random.default_rng(1)
    lengths = [9, 9, 9] if side == "none" else [9, 4, 7]
    tokens, mask = padded_batch(
        rng, model.config.vocab_size, lengths, "left" if side == "left" else "right"
    )
    ours, _ = model(jnp.asarray(tokens), jnp.asarray(mask))
    theirs = hf_logits(hf_model, tokens, mask)
    real = mask.astype(bool)
    np.testing.assert_array_less(np.abs(np.asarray(ours)[real] - theirs[real]).max(), 1e-4)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "mistral_window"])
def test_cached_decoding_matches_full_forward(tiny_checkpoints, kind):
    """Logits of one-token cached steps equal the no-cache forward over the whole sequence."""
    model, _ = load(str(tiny_checkpoints[kind]), with_tokenizer=False)
    rng = np.random.default_rng(2)
    tokens, mask = padded_batch(rng, model.config.vocab_size, [6, 3], "left")
    extra = rng.integers(1, model.config.vocab_size, (2, 4))
    full_tokens = np.concatenate([tokens, extra], 1)
    full_mask = np.concatenate([mask, np.ones_like(extra)], 1)
    reference, _ = model(jnp.asarray(full_tokens), jnp.asarray(full_mask))

    cache = model.init_cache(2, full_tokens.shape[1])
    logits, cache = model(jnp.asarray(tokens), jnp.asarray(mask), cache=cache)
    steps = [logits[:, -1]]
    for j in range(extra.shape[1]):
        logits, cache = model(jnp.asarray(extra[:, j : j + 1]), jnp.ones((2, 1), bool), cache=cache)
        steps.append(logits[:, -1])
    want = np.asarray(reference)[:, tokens.shape[1] - 1 :]
    np.testing.assert_allclose(np.stack(steps, 1), want, atol=1e-5)


def test_bfloat16_compute_is_close_to_float32(tiny_checkpoints):
    path = str(tiny_checkpoints["llama"])
    f32, _ = load(path, with_tokenizer=False)
    bf16, _ = load(path, with_tokenizer=False, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    assert bf16.layers.q[...].dtype == jnp.bfloat16
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 101, (2, 8)))
    a, _ = f32(tokens)
    b, _ = bf16(tokens)
    assert b.dtype == jnp.float32  # logits are upcast for a stable loss
    assert np.abs(np.asarray(a) - np.asarray(b)).max() < 0.1
    assert np.mean(np.argmax(a, -1) == np.argmax(b, -1)) > 0.9


SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Prefix-tuning keeps the language model frozen",
    "In 1969, astronauts first",
]


@pytest.mark.parametrize("side", ["left", "right"])
def test_smollm2_logits_match_transformers(smollm2, smollm2_hf, side):
    model, tokenizer = smollm2
    tokenizer.padding_side = side
    enc = tokenizer(SENTENCES, return_tensors="np", padding=True)
    tokens, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    ours, _ = model(jnp.asarray(tokens), jnp.asarray(mask))
    theirs = hf_logits(smollm2_hf, tokens, mask)
    real = mask.astype(bool)
    assert np.abs(np.asarray(ours)[real] - theirs[real]).max() <= 1e-3


def test_smollm2_greedy_matches_transformers_generate(smollm2, smollm2_hf):
    model, tokenizer = smollm2
    prompt = tokenizer("The history of the Roman Empire", return_tensors="np")["input_ids"]
    with torch.no_grad():
        hf_out = smollm2_hf.generate(
            torch.from_numpy(prompt), max_new_tokens=30, do_sample=False, eos_token_id=None
        )[0, prompt.shape[1] :].numpy()
    tokens, mask = left_pad([prompt[0].tolist()], pad_id=0, multiple=8)
    ours = np.asarray(greedy(model, tokens, mask, max_new_tokens=30))[0]
    np.testing.assert_array_equal(ours, hf_out)
