"""Prefix-tuning core: partition, optimizer, counts, PEFT parity, export, decoding, overfit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
import transformers
from conftest import hf_logits, padded_batch
from flax import nnx

from prefix_jax.data.tokens import left_pad
from prefix_jax.infer.decode import beam_search, greedy
from prefix_jax.methods import PrefixConfig, PrefixLM, PrefixParam, count_params, create_prefix
from prefix_jax.methods.prefix import artifact as export
from prefix_jax.methods.prefix.core import Prefix, activations_table
from prefix_jax.models import load
from prefix_jax.train.step import OptimConfig, Trainer, make_optimizer


def tiny(tiny_checkpoints, kind):
    return load(str(tiny_checkpoints[kind]), with_tokenizer=False)[0]


def prefix_lm(model, **kwargs) -> PrefixLM:
    prefix, _ = create_prefix(model, PrefixConfig(**kwargs))
    return PrefixLM(model, prefix)


def batch_for(model, rng, lengths=(7, 5, 7)):
    tokens, mask = padded_batch(rng, model.config.vocab_size, list(lengths), "right")
    loss_mask = mask.copy()
    loss_mask[:, :2] = 0  # first tokens play the source
    return {
        "tokens": jnp.asarray(tokens, jnp.int32),
        "attention_mask": jnp.asarray(mask, bool),
        "loss_mask": jnp.asarray(loss_mask, jnp.int32),
    }


# --- partition and optimizer --------------------------------------------------------------


@pytest.mark.parametrize("reparam", ["none", "mlp"])
def test_steps_change_only_the_prefix(tiny_checkpoints, reparam):
    model = tiny(tiny_checkpoints, "llama")
    lm = prefix_lm(model, length=4, reparam=reparam, hidden=16, dropout=0.1)
    frozen_before = jax.tree.map(np.array, nnx.state(lm.base, nnx.Param))
    prefix_before = jax.tree.map(np.array, nnx.state(lm.prefix, PrefixParam))
    trainer = Trainer(lm, make_optimizer(OptimConfig(learning_rate=1e-2), PrefixParam), PrefixParam)
    batch = batch_for(model, np.random.default_rng(0))
    for _ in range(3):
        trainer.step(batch, jax.random.key(0))
    after = trainer.model()
    frozen_after = nnx.state(after.base, nnx.Param)
    for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(frozen_after), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))  # bitwise unchanged
    changed = [
        not np.array_equal(a, np.asarray(b))
        for a, b in zip(
            jax.tree.leaves(prefix_before),
            jax.tree.leaves(nnx.state(after.prefix, PrefixParam)),
            strict=True,
        )
    ]
    assert all(changed)
    # Optimizer state: Adam moments exist for prefix leaves only (2 per leaf + counters).
    n_prefix_leaves = len(jax.tree.leaves(prefix_before))
    opt_arrays = [x for x in jax.tree.leaves(trainer.state.opt_state) if x.ndim > 0]
    assert len(opt_arrays) == 2 * n_prefix_leaves
    assert sum(x.size for x in opt_arrays) == 2 * sum(
        x.size for x in jax.tree.leaves(prefix_before)
    )


def test_optimizer_on_full_tree_zeroes_frozen_and_keeps_no_state(tiny_checkpoints):
    lm = prefix_lm(tiny(tiny_checkpoints, "gpt2"), length=2, reparam="none")
    full = nnx.state(lm, nnx.Param)
    tx = make_optimizer(OptimConfig(learning_rate=1e-2, weight_decay=0.1), PrefixParam)
    opt_state = tx.init(full)
    n_prefix = sum(x.size for x in jax.tree.leaves(nnx.state(lm, PrefixParam)))
    assert sum(x.size for x in jax.tree.leaves(opt_state) if x.ndim > 0) == 2 * n_prefix
    grads = jax.tree.map(jnp.ones_like, full)
    updates, _ = tx.update(grads, opt_state, full)
    frozen_updates = nnx.state(nnx.merge(nnx.graphdef(lm), updates).base, nnx.Param)
    assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(frozen_updates))
    prefix_updates = nnx.state(nnx.merge(nnx.graphdef(lm), updates).prefix, PrefixParam)
    assert all(float(jnp.abs(u).max()) > 0 for u in jax.tree.leaves(prefix_updates))


def test_overfit_a_handful_of_examples(smollm2):
    """Only the prefix trains, and SmolLM2 memorizes two table-to-text pairs."""
    model, tokenizer = smollm2
    texts = [
        "name : Blue Spice | food : Chinese\nTarget:\nBlue Spice serves Chinese food.",
        "name : The Mill | area : riverside\nTarget:\nThe Mill is by the riverside.",
    ]
    enc = tokenizer(texts, return_tensors="np", padding="max_length", max_length=24)
    batch = {
        "tokens": jnp.asarray(enc["input_ids"]),
        "attention_mask": jnp.asarray(enc["attention_mask"], bool),
        "loss_mask": jnp.asarray(enc["attention_mask"]),
    }
    prefix, _ = create_prefix(model, PrefixConfig(length=5, hidden=128, init="vocab"))
    # 12 steps at 3e-3 reach first / 72 (30 at 1e-3: first / 129), in half the time.
    config = OptimConfig(learning_rate=3e-3, total_steps=12)
    trainer = Trainer(PrefixLM(model, prefix), make_optimizer(config, PrefixParam), PrefixParam)
    first = float(trainer.eval_loss(batch)[0])
    for _ in range(config.total_steps):
        trainer.step(batch, jax.random.key(0))
    last = float(trainer.eval_loss(batch)[0])
    assert last < first / 20, (first, last)


# --- parameter counts -----------------------------------------------------------------------


def _peft_count(hf_model, config: PrefixConfig, kv_dim: int) -> int:
    peft_config = peft.PrefixTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=config.length,
        prefix_projection=config.reparam == "mlp",
        encoder_hidden_size=config.hidden,
    )
    trainable, _ = peft.get_peft_model(hf_model, peft_config).get_nb_trainable_parameters()
    return trainable


@pytest.mark.parametrize("reparam", ["none", "mlp"])
def test_counts_match_formula_and_peft(tiny_checkpoints, smollm2, reparam):
    hf_tiny = transformers.AutoModelForCausalLM.from_pretrained(tiny_checkpoints["gpt2"])
    smol_config = smollm2[0].config
    hf_config = transformers.LlamaConfig(
        vocab_size=smol_config.vocab_size,
        hidden_size=smol_config.hidden_size,
        intermediate_size=smol_config.intermediate_size,
        num_hidden_layers=smol_config.num_layers,
        num_attention_heads=smol_config.num_heads,
        num_key_value_heads=smol_config.num_kv_heads,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        hf_smol = transformers.LlamaForCausalLM(hf_config)
    for ours, theirs in ((tiny(tiny_checkpoints, "gpt2"), hf_tiny), (smollm2[0], hf_smol)):
        c = ours.config
        # PEFT's MLP input width is the key/value width, Li & Liang's is d_model: match PEFT.
        config = PrefixConfig(length=5, reparam=reparam, hidden=24, embed_dim=c.kv_dim)
        counts = count_params(PrefixLM(ours, Prefix(c, config, rngs=nnx.Rngs(0))), PrefixParam)
        width = 2 * c.num_layers * c.kv_dim
        formula = (
            5 * width
            if reparam == "none"
            else 5 * c.kv_dim + c.kv_dim * 24 + 24 + 24 * width + width
        )
        assert counts["trainable"] == formula == config.num_params(c)
        assert counts["trainable"] == _peft_count(theirs, config, c.kv_dim)
        assert counts["total"] == formula + c.num_params()
        assert counts["fraction"] == pytest.approx(formula / counts["total"])


# --- parity with PEFT -------------------------------------------------------------------


def _peft_model(hf_model, length: int, projection: bool = False, hidden: int = 16):
    config = peft.PrefixTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=length,
        prefix_projection=projection,
        encoder_hidden_size=hidden,
    )
    return peft.get_peft_model(hf_model, config).eval()


def _peft_batch_logits(peft_model, tokens, mask):
    return hf_logits(peft_model, tokens, mask)  # PEFT shifts the given positions by p


def _compare_with_peft(model, hf_model, side: str, atol: float, rng, table=None) -> None:
    length = 3
    peft_model = _peft_model(hf_model, length)
    if table is None:
        table = rng.normal(size=(length, 2 * model.config.num_layers * model.config.kv_dim))
    table = np.asarray(table, np.float32)
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(torch.from_numpy(table))
    tokens, mask = padded_batch(rng, model.config.vocab_size, [8, 5, 6], side)
    exported = export.ExportedPrefix(
        table=table.astype(np.float32),
        num_layers=model.config.num_layers,
        num_kv_heads=model.config.num_kv_heads,
        head_dim=model.config.head_dim,
        positions_after_prefix=True,
        model={},
    )
    ours, _ = model(jnp.asarray(tokens), jnp.asarray(mask), prefix=exported.to_prefix_kv(model))
    theirs = _peft_batch_logits(peft_model, tokens, mask)
    real = mask.astype(bool)
    assert np.abs(np.asarray(ours)[real] - theirs[real]).max() <= atol


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen3"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_logits_match_peft_prefix_tuning(tiny_checkpoints, kind, side):
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tiny_checkpoints[kind])
    _compare_with_peft(tiny(tiny_checkpoints, kind), hf_model, side, 1e-4, np.random.default_rng(4))


def test_smollm2_logits_match_peft(smollm2, smollm2_hf):
    """With a realistic prefix: keys/values of real tokens (N(0, 1) values are far smaller
    than SmolLM2's activations and test a regime no trained prefix is in)."""
    rng = np.random.default_rng(5)
    table = activations_table(smollm2[0], jnp.asarray([504, 3575, 282]), 3)
    _compare_with_peft(smollm2[0], smollm2_hf, "left", 1e-3, rng, table)


def test_mlp_prefix_matches_peft_projection(tiny_checkpoints):
    """Same MLP weights in both: PEFT's prefix_projection and our reparam='mlp' agree."""
    model = tiny(tiny_checkpoints, "llama")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tiny_checkpoints["llama"])
    peft_model = _peft_model(hf_model, 4, projection=True, hidden=16)
    encoder = peft_model.prompt_encoder["default"]
    config = PrefixConfig(
        length=4, reparam="mlp", hidden=16, embed_dim=model.config.kv_dim, positions="after_prefix"
    )
    prefix = Prefix(model.config, config, rngs=nnx.Rngs(0))
    prefix.embedding[...] = jnp.asarray(encoder.embedding.weight.detach().numpy())
    prefix.w1[...] = jnp.asarray(encoder.transform[0].weight.detach().numpy().T)
    prefix.b1[...] = jnp.asarray(encoder.transform[0].bias.detach().numpy())
    prefix.w2[...] = jnp.asarray(encoder.transform[2].weight.detach().numpy().T)
    prefix.b2[...] = jnp.asarray(encoder.transform[2].bias.detach().numpy())
    tokens, mask = padded_batch(np.random.default_rng(6), model.config.vocab_size, [6, 4], "left")
    ours, _ = PrefixLM(model, prefix)(jnp.asarray(tokens), jnp.asarray(mask))
    theirs = _peft_batch_logits(peft_model, tokens, mask)
    real = mask.astype(bool)
    assert np.abs(np.asarray(ours)[real] - theirs[real]).max() <= 1e-4


# --- export / import ----------------------------------------------------------------------


def _trained_like_prefix(model, reparam="mlp", positions="after_prefix"):
    config = PrefixConfig(length=3, reparam=reparam, hidden=16, positions=positions, init_scale=0.5)
    return Prefix(model.config, config, rngs=nnx.Rngs(7))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_export_collapses_mlp_without_changing_logits(tiny_checkpoints, tmp_path, kind):
    model = tiny(tiny_checkpoints, kind)
    prefix = _trained_like_prefix(model)
    tokens, mask = padded_batch(np.random.default_rng(8), model.config.vocab_size, [6, 4], "left")
    before, _ = PrefixLM(model, prefix)(jnp.asarray(tokens), jnp.asarray(mask))
    export.save(export.collapse(prefix, model, {"steps": 0}), tmp_path / "p")
    loaded = export.load(tmp_path / "p", model)
    assert loaded.training["prefix"]["reparam"] == "mlp"
    after, _ = model(jnp.asarray(tokens), jnp.asarray(mask), prefix=loaded.to_prefix_kv(model))
    assert np.abs(np.asarray(before) - np.asarray(after)).max() <= 1e-5


def test_peft_round_trip_both_ways(tiny_checkpoints, tmp_path):
    model = tiny(tiny_checkpoints, "llama")
    prefix = _trained_like_prefix(model)
    tokens, mask = padded_batch(np.random.default_rng(9), model.config.vocab_size, [7, 5], "left")
    ours, _ = PrefixLM(model, prefix)(jnp.asarray(tokens), jnp.asarray(mask))

    export.save_peft(export.collapse(prefix, model), tmp_path / "ours_in_peft")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tiny_checkpoints["llama"])
    loaded = peft.PeftModel.from_pretrained(hf_model, tmp_path / "ours_in_peft").eval()
    theirs = hf_logits(loaded, tokens, mask)
    real = mask.astype(bool)
    assert np.abs(np.asarray(ours)[real] - theirs[real]).max() <= 1e-4

    # A PEFT-trained (projection) adapter, saved by PEFT itself, imported by us.
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tiny_checkpoints["llama"])
    peft_model = _peft_model(hf_model, 5, projection=True, hidden=16)
    peft_model.save_pretrained(tmp_path / "peft_saved")
    peft_logits = hf_logits(peft_model, tokens, mask)
    imported = export.load(tmp_path / "peft_saved", model)
    assert imported.length == 5 and imported.positions_after_prefix
    mine, _ = model(jnp.asarray(tokens), jnp.asarray(mask), prefix=imported.to_prefix_kv(model))
    assert np.abs(np.asarray(mine)[real] - peft_logits[real]).max() <= 1e-4


def test_peft_export_warns_about_position_convention(tiny_checkpoints, tmp_path):
    model = tiny(tiny_checkpoints, "llama")
    exported = export.collapse(_trained_like_prefix(model, positions="from_zero"), model)
    with pytest.warns(UserWarning, match="positions starting at 0"):
        export.save_peft(exported, tmp_path / "x")


# --- decoding with a prefix -------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", [pytest.param("gpt2", marks=pytest.mark.slow), "llama", "mistral_window"]
)
def test_greedy_with_prefix_equals_stepwise_full_forward(tiny_checkpoints, kind):
    """Cached greedy decoding (the prefix in the cache) against full forwards; with a
    sliding window of 4 the 10-token rows also check that the prefix stays visible."""
    model = tiny(tiny_checkpoints, kind)
    prefix = _trained_like_prefix(model, positions="from_zero")()
    prompts = [[5, 9, 3, 7], [11, 2]]
    tokens, mask = left_pad(prompts, pad_id=0)
    out = np.asarray(greedy(model, tokens, mask, max_new_tokens=6, prefix=prefix))
    for row, prompt in enumerate(prompts):
        seq = list(prompt)
        for _ in range(6):
            logits, _ = model(jnp.asarray([seq]), prefix=prefix)  # no cache, no padding
            seq.append(int(np.argmax(logits[0, -1])))
        assert out[row].tolist() == seq[len(prompt) :]


def test_beam_search_keeps_the_position_convention(tiny_checkpoints):
    """Beam scores with a PEFT-style (after_prefix) prefix equal no-cache log-probs."""
    model = tiny(tiny_checkpoints, "llama")
    prefix = _trained_like_prefix(model, positions="after_prefix")()
    prompt = [5, 9, 3, 7]
    tokens, mask = left_pad([prompt], pad_id=0)
    seqs, scores = beam_search(
        model, tokens, mask, beam_size=2, max_new_tokens=4, prefix=prefix, length_penalty=0.0
    )
    seq = np.asarray(seqs)[0].tolist()
    logits, _ = model(jnp.asarray([prompt + seq]), prefix=prefix)
    logp = jax.nn.log_softmax(np.asarray(logits[0], np.float64), axis=-1)
    want = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(seq))
    assert float(scores[0]) == pytest.approx(want, abs=1e-4)


# --- initialization -------------------------------------------------------------------


class _WordTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + (sum(map(ord, w)) % 90) for w in text.split()]}


@pytest.mark.parametrize("init", ["vocab", "text:table to text generation"])
def test_activation_init_reproduces_real_keys_values(tiny_checkpoints, init):
    model = tiny(tiny_checkpoints, "llama")
    tok = _WordTokenizer()
    none_prefix, info = create_prefix(model, PrefixConfig(length=6, reparam="none", init=init), tok)
    assert info["init_relative_error"] == 0.0
    mlp_prefix, info = create_prefix(
        model, PrefixConfig(length=6, reparam="mlp", hidden=64, init=init, init_fit_steps=500), tok
    )
    assert info["init_relative_error"] < 0.1
    target = np.asarray(none_prefix.table())
    rel = np.linalg.norm(np.asarray(mlp_prefix.table()) - target) / np.linalg.norm(target)
    # The fit is float32-exact here (~2e-7), where the two computations round apart.
    eps = float(np.finfo(np.float32).eps)
    assert rel == pytest.approx(info["init_relative_error"], rel=1e-3, abs=eps)
    if init.startswith("text:"):
        # Four words repeated to six positions: row 4 repeats row 0.
        np.testing.assert_array_equal(target[4], target[0])
        # Row 0 is the first word's layer-0 key: recompute it from the embedding.
        ids = tok(init[5:])["input_ids"]
        cache = model.init_cache(1, 1)
        _, cache = model(jnp.asarray([ids[:1]]), cache=cache)
        np.testing.assert_allclose(
            target[0, : model.config.kv_dim],
            np.asarray(cache.keys[0, 0, 0]).reshape(-1),
            atol=1e-6,
        )


# --- errors -------------------------------------------------------------------------------


def test_invalid_prefix_config():
    with pytest.raises(ValueError, match="prefix length must be positive, got 0"):
        PrefixConfig(length=0)
    with pytest.raises(ValueError, match="reparam must be one of"):
        PrefixConfig(reparam="lstm")
    with pytest.raises(ValueError, match="init must be"):
        PrefixConfig(init="zeros")


def test_mismatched_prefix_is_rejected(tiny_checkpoints, tmp_path):
    gpt2, llama = tiny(tiny_checkpoints, "gpt2"), tiny(tiny_checkpoints, "llama")
    export.save(export.collapse(_trained_like_prefix(gpt2), gpt2), tmp_path / "g")
    with pytest.raises(export.PrefixMismatchError, match="num_layers=2 but the model has 3"):
        export.load(tmp_path / "g", llama)
    with pytest.raises(ValueError, match="does not match the model"):
        PrefixLM(llama, _trained_like_prefix(gpt2))
    bad = jnp.zeros((3, 1, 2, 5, 8))
    with pytest.raises(ValueError, match="prefix keys/values must be"):
        llama(jnp.ones((1, 3), jnp.int32), prefix=export.PrefixKV(keys=bad, values=bad))


def test_peft_adapter_of_another_type_is_rejected(tiny_checkpoints, tmp_path):
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tiny_checkpoints["llama"])
    lora = peft.get_peft_model(hf_model, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    lora.save_pretrained(tmp_path / "lora")
    with pytest.raises(ValueError, match="peft_type is 'LORA'; only PREFIX_TUNING"):
        export.load(tmp_path / "lora")
