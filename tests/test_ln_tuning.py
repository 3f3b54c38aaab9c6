"""LN-tuning, the fifth method: parity with PEFT's LNTuningConfig (tiny GPT-2 and Llama,
and the real SmolLM2), training, and both artifact formats round-tripping."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
import transformers
from conftest import hf_logits, make_config, padded_batch
from flax import nnx

from prefix_jax.config.parse import load_config
from prefix_jax.infer.trained import load_trained
from prefix_jax.methods import count_params, ln_tuning, registry
from prefix_jax.methods.ln_tuning import LNParam, LNTuningConfig, LNTuningLM, create_ln_tuning
from prefix_jax.models import load
from prefix_jax.train.loop import train
from prefix_jax.train.step import OptimConfig, Trainer, make_optimizer


@pytest.fixture(scope="module")
def models(tiny_checkpoints):
    """Our tiny gpt2 and llama (loaded once; LN-tuning never changes the base's arrays)."""
    return {k: load(str(tiny_checkpoints[k]), with_tokenizer=False)[0] for k in ("gpt2", "llama")}


def batch(vocab: int, seed: int = 0):
    tokens, mask = padded_batch(np.random.default_rng(seed), vocab, [7, 5], "right")
    return tokens, mask


def perturb(lm: LNTuningLM, seed: int = 0) -> None:
    """Move every tuned norm weight off the base's, as training would."""
    for i, path in enumerate(lm.norms.paths):
        var = getattr(lm.norms, "__".join(path))
        noise = jax.random.normal(jax.random.fold_in(jax.random.key(seed), i), var.shape)
        var[...] = var[...] + 0.1 * noise


def ours_logits(lm, tokens, mask) -> np.ndarray:
    logits, _ = lm(jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, bool))
    return np.asarray(logits)


def peft_logits(model, tokens, mask) -> np.ndarray:
    with torch.no_grad():
        return model(
            input_ids=torch.from_numpy(tokens), attention_mask=torch.from_numpy(mask)
        ).logits.numpy()


def gap(ours, theirs, mask) -> float:
    real = mask.astype(bool)
    return float(np.abs(ours[real] - theirs[real]).max())


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_untuned_wrapper_is_the_base_model_bitwise(models, kind):
    model = models[kind]
    tokens, mask = batch(model.config.vocab_size)
    lm = create_ln_tuning(model, LNTuningConfig())
    base, _ = model(jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, bool))
    np.testing.assert_array_equal(ours_logits(lm, tokens, mask), np.asarray(base))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_counts_match_formula_and_peft(tiny_checkpoints, models, kind):
    model = models[kind]
    lm, trainable, _ = registry.get("ln_tuning").create(model, make_settings())
    theirs = peft.get_peft_model(
        transformers.AutoModelForCausalLM.from_pretrained(tiny_checkpoints[kind]),
        peft.LNTuningConfig(task_type="CAUSAL_LM"),
    )
    n_peft = sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    counts = count_params(lm, trainable)
    assert counts["trainable"] == LNTuningConfig().num_params(model.config) == n_peft
    assert counts["total"] == model.config.num_params() + n_peft  # copies, as PEFT's


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_exports_match_peft_both_ways(tiny_checkpoints, models, kind, tmp_path):
    """Ours exported in PEFT's format gives our logits in PEFT; PEFT's own saved adapter
    loads into ours with PEFT's logits; our format reloads bitwise."""
    model = models[kind]
    tokens, mask = batch(model.config.vocab_size, seed=1)
    lm = create_ln_tuning(model, LNTuningConfig())
    perturb(lm)
    ours = ours_logits(lm, tokens, mask)
    base, _ = model(jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, bool))
    assert gap(ours, np.asarray(base), mask) > 1e-2  # the tuned norms matter

    writers = registry.get("ln_tuning").export(lm, model, {"steps": 3})
    assert list(writers) == ["export", "export_peft"]
    for name, write in writers.items():
        write(tmp_path / name)
    config = json.loads((tmp_path / "export_peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LN_TUNING"
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_checkpoints[kind])
    loaded = peft.PeftModel.from_pretrained(hf, tmp_path / "export_peft").eval()
    assert gap(ours, peft_logits(loaded, tokens, mask), mask) <= 1e-4

    # PEFT's own adapter, trained weights stood in by noise, read by ours.
    theirs = peft.get_peft_model(
        transformers.AutoModelForCausalLM.from_pretrained(tiny_checkpoints[kind]),
        peft.LNTuningConfig(task_type="CAUSAL_LM"),
    ).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in theirs.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    theirs.save_pretrained(tmp_path / "peft_own")
    from_peft = registry.get("ln_tuning").load(tmp_path / "peft_own", model)
    expected = peft_logits(theirs, tokens, mask)
    assert gap(ours_logits(from_peft.model, tokens, mask), expected, mask) <= 1e-4

    # Our format: the same weights back, so the same logits bitwise.
    reloaded = registry.get("ln_tuning").load(tmp_path / "export", model)
    assert reloaded.prefix is None
    np.testing.assert_array_equal(ours_logits(reloaded.model, tokens, mask), ours)
    meta = json.loads((tmp_path / "export" / "ln_tuning_config.json").read_text())
    assert meta["format"] == "prefix_jax.ln_tuning" and meta["training"]["steps"] == 3


def test_smollm2_matches_peft(smollm2, smollm2_hf, tmp_path):
    """The real SmolLM2-135M-Instruct: our tuned norms, exported to PEFT, give our logits
    there (transformers' float32 model from the same GGUF)."""
    model, tokenizer = smollm2
    lm = create_ln_tuning(model, LNTuningConfig())
    perturb(lm, seed=3)
    ln_tuning.save_peft(lm.norms, model, tmp_path / "peft")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(smollm2_hf), tmp_path / "peft").eval()
    tokenizer.padding_side = "right"
    enc = tokenizer(["The capital of France is", "Prefix-tuning keeps"], padding=True)
    tokens = np.asarray(enc["input_ids"], np.int64)
    mask = np.asarray(enc["attention_mask"], np.int64)
    ours = ours_logits(lm, tokens, mask)
    assert gap(ours, hf_logits(theirs, tokens, mask), mask) <= 1e-3
    assert gap(ours, hf_logits(smollm2_hf, tokens, mask), mask) > 1e-2  # untouched original


def test_steps_train_only_the_norm_copies(models):
    model = models["llama"]
    frozen_before = jax.tree.map(np.array, nnx.state(model))
    lm = create_ln_tuning(model, LNTuningConfig(targets="attn_norm,final_norm"))
    assert {ln_tuning.norm_name(p) for p in lm.norms.paths} == {"attn_norm", "final_norm"}
    before = jax.tree.map(np.array, nnx.state(lm, LNParam))
    trainer = Trainer(lm, make_optimizer(OptimConfig(learning_rate=1e-2), LNParam), LNParam)
    tokens, mask = batch(model.config.vocab_size, seed=2)
    step_batch = {
        "tokens": jnp.asarray(tokens, jnp.int32),
        "attention_mask": jnp.asarray(mask, bool),
        "loss_mask": jnp.asarray(mask, jnp.int32),
    }
    losses = [float(trainer.step(step_batch, jax.random.key(0))["loss"]) for _ in range(4)]
    assert losses[-1] < losses[0]
    after = trainer.model()
    for a, b in zip(
        jax.tree.leaves(before), jax.tree.leaves(nnx.state(after, LNParam)), strict=True
    ):
        assert not np.array_equal(a, np.asarray(b))
    # The base's arrays (the model passed in, and the trained wrapper's) are unchanged.
    for state in (nnx.state(model), nnx.state(after.base)):
        for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(state), strict=True):
            np.testing.assert_array_equal(a, np.asarray(b))


def test_invalid_targets_name_the_norms(models):
    with pytest.raises(ValueError, match="ln_tuning targets \\['attn'\\] are not norms"):
        create_ln_tuning(models["llama"], LNTuningConfig(targets="attn"))
    with pytest.raises(ValueError, match="unknown config.ln_tuning fields: \\['rank'\\]"):
        settings = make_settings()
        settings.ln_tuning.rank = 4
        registry.get("ln_tuning").create(models["llama"], settings)


E2E = Path(__file__).parents[1] / "configs" / "e2e.py"


def make_settings():
    return load_config(f"{E2E}:method=ln_tuning")


def test_registry_lists_it_once_with_its_facts():
    method = registry.get("ln_tuning")
    assert list(registry.METHODS) == ["prefix", "prompt", "lora", "full", "ln_tuning"]
    assert method.default_config() == {"targets": ""}
    assert not method.trains_base_weights and method.has_artifact
    assert method.extra_input_tokens(make_settings()) == 0
    assert load_config(f"{E2E}:method=ln_tuning,local").optim.learning_rate == 5e-3
    with pytest.raises(ValueError, match="unknown method 'ln'; known: prefix, prompt, lora"):
        registry.get("ln")


def test_train_export_and_reload(tiny, tmp_path):
    """The training CLI path: train, export both formats, and load the run back with the
    loss training ended with."""
    overrides = {"method": "ln_tuning", "max_steps": 3, "checkpoint_every": 3, "log_every": 1}
    config = make_config(tiny, **overrides)
    summary = train(config, tmp_path)
    assert summary["steps"] == 3 and np.isfinite(summary["eval_loss"])
    model, tokenizer = load(str(tiny["model"]))
    assert summary["params_trainable"] == LNTuningConfig().num_params(model.config)
    assert summary["exports"] == ["export", "export_peft"]
    trained = load_trained(config, tmp_path, model, tokenizer)
    from_peft = load_trained(config, tmp_path, model, tokenizer, artifact=tmp_path / "export_peft")
    tokens, mask = batch(model.config.vocab_size, seed=5)
    tuned = ours_logits(trained.model, tokens, mask)
    np.testing.assert_array_equal(ours_logits(from_peft.model, tokens, mask), tuned)
    base, _ = model(jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, bool))
    assert gap(tuned, np.asarray(base), mask) > 1e-4  # training moved the norms


def test_encoder_decoder_tunes_every_stack_and_decodes(tiny_seq2seq_checkpoints, tmp_path):
    """One wrapper for both model kinds: a T5's norms (both stacks, cross-attention and the
    final norms) tune, export in our format, and decode through the wrapper."""
    from prefix_jax.infer.seq2seq_decode import greedy_seq2seq

    model = load(str(tiny_seq2seq_checkpoints["t5_v1"]), with_tokenizer=False)[0]
    lm = create_ln_tuning(model, LNTuningConfig())
    names = {ln_tuning.norm_name(p) for p in lm.norms.paths}
    assert {"attn_norm", "cross_norm", "encoder_final_norm", "decoder_final_norm"} <= names
    rng = np.random.default_rng(0)
    source = jnp.asarray(rng.integers(1, 60, (2, 5)), jnp.int32)
    target = jnp.asarray(rng.integers(1, 60, (2, 4)), jnp.int32)
    masks = jnp.ones((2, 5), bool), jnp.ones((2, 4), bool)
    base = np.asarray(model(source, masks[0], target, masks[1]))
    np.testing.assert_array_equal(np.asarray(lm(source, masks[0], target, masks[1])), base)
    perturb(lm)
    tuned = np.asarray(lm(source, masks[0], target, masks[1]))
    assert np.abs(tuned - base).max() > 1e-2
    writers = registry.get("ln_tuning").export(lm, model, {})
    assert list(writers) == ["export"]  # PEFT's names are mapped for decoder-only models
    writers["export"](tmp_path / "export")
    reloaded = registry.get("ln_tuning").load(tmp_path / "export", model).model
    np.testing.assert_array_equal(np.asarray(reloaded(source, masks[0], target, masks[1])), tuned)
    out = greedy_seq2seq(reloaded, source, masks[0], max_new_tokens=3)
    np.testing.assert_array_equal(
        np.asarray(out), np.asarray(greedy_seq2seq(lm, source, masks[0], max_new_tokens=3))
    )
