"""Baselines: prompt tuning, LoRA, full and top-k fine-tuning.

Per method: training steps change only its partition, parameter counts follow the formula
(and PEFT's for prompt tuning and LoRA), logits agree with PEFT given the same weights,
decoding with a KV cache works through the wrapper, and `train()` runs end to end.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
import transformers
from conftest import make_config, padded_batch
from flax import nnx

from prefix_jax.data import BatchIterator, encode_examples
from prefix_jax.data.tokens import left_pad
from prefix_jax.infer.decode import beam_search, greedy
from prefix_jax.infer.evaluate import evaluate
from prefix_jax.infer.trained import load_trained
from prefix_jax.methods import (
    FinetuneConfig,
    FinetuneLM,
    LoraConfig,
    LoraLM,
    LoraParam,
    PromptConfig,
    PromptLM,
    PromptParam,
    TopLayerParam,
    count_params,
    create_lora,
    create_prompt,
    lora,
    partition,
    prompt,
)
from prefix_jax.models import load
from prefix_jax.train import assemble as experiment
from prefix_jax.train.loop import to_device, train
from prefix_jax.train.step import OptimConfig, Trainer, lm_loss, make_optimizer

LLAMA_ALL = ("q", "k", "v", "o", "gate", "up", "down")
GPT2_ALL = ("q", "k", "v", "o", "up", "down")


@pytest.fixture(scope="module")
def models(tiny_checkpoints):
    """Our tiny gpt2 and llama (loaded once; tests must not train them in place)."""
    return {k: load(str(tiny_checkpoints[k]), with_tokenizer=False)[0] for k in ("gpt2", "llama")}


def hf_model(tiny_checkpoints, kind):
    return transformers.AutoModelForCausalLM.from_pretrained(tiny_checkpoints[kind]).eval()


def batch_for(model, seed=0):
    tokens, mask = padded_batch(
        np.random.default_rng(seed), model.config.vocab_size, [7, 5], "right"
    )
    loss_mask = mask.copy()
    loss_mask[:, :2] = 0
    return {
        "tokens": jnp.asarray(tokens, jnp.int32),
        "attention_mask": jnp.asarray(mask, bool),
        "loss_mask": jnp.asarray(loss_mask, jnp.int32),
    }


def host(tree):
    return jax.tree.map(np.array, tree)


def build(method: str, model):
    """(wrapper, trainable filter) of a small configuration of `method`."""
    if method == "prompt":
        return PromptLM(model, create_prompt(model, PromptConfig(length=3))[0]), PromptParam
    if method == "lora":
        config = LoraConfig(rank=2, alpha=4.0, dropout=0.1, targets=("q", "v", "down"))
        return LoraLM(model, create_lora(model, config)[0]), LoraParam
    config = FinetuneConfig(top_layers=2 if method == "top2" else 0)
    return FinetuneLM(model, config.top_layers), config.trainable


# --- partition and optimizer ------------------------------------------------------------


@pytest.mark.parametrize("method", ["prompt", "lora", "full", "top2"])
def test_steps_change_only_the_method_partition(tiny_checkpoints, method):
    # A model of its own: full fine-tuning donates (consumes) the base model's arrays.
    model = load(str(tiny_checkpoints["llama"]), with_tokenizer=False)[0]
    lm, trainable = build(method, model)
    frozen_before = host(nnx.state(lm, nnx.Not(trainable)))
    trained_before = host(nnx.state(lm, trainable))
    n_trainable = count_params(lm, trainable)["trainable"]
    config = OptimConfig(learning_rate=1e-2, weight_decay=0.1)
    trainer = Trainer(lm, make_optimizer(config, trainable), trainable)
    batch = batch_for(model)
    for _ in range(3):
        trainer.step(batch, jax.random.key(0))
    after = trainer.model()
    frozen_after = nnx.state(after, nnx.Not(trainable))
    for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(frozen_after), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))  # bitwise unchanged
    trained_after = jax.tree.leaves(nnx.state(after, trainable))
    for a, b in zip(jax.tree.leaves(trained_before), trained_after, strict=True):
        assert not np.array_equal(a, np.asarray(b))
    # Adam moments for the trainable partition only.
    opt_arrays = [x for x in jax.tree.leaves(trainer.state.opt_state) if x.ndim > 0]
    assert sum(x.size for x in opt_arrays) == 2 * n_trainable
    if method == "top2":
        # The effective stacked weights: the lower layer's slice is bitwise the original,
        # the top two layers' slices moved.
        for name, top in after.top.weights().items():
            base = np.asarray(getattr(after.base.layers, name)[...])
            np.testing.assert_array_equal(base[:1], frozen_before["base"]["layers"][name][:1])
            top_before = trained_before["top"][name]
            assert all(not np.array_equal(top_before[i], np.asarray(top[i])) for i in range(2))


def test_decay_mask_skips_stacked_norms_and_biases(models):
    lm = FinetuneLM(models["gpt2"], 2)
    mask = partition.decay_mask(nnx.state(lm, nnx.Param))
    assert mask["base"]["layers"]["q"] and mask["top"]["up"] and mask["base"]["embed"]
    assert not mask["base"]["layers"]["attn_norm_scale"] and not mask["top"]["up_bias"]
    assert not mask["base"]["final_norm_bias"]
    lora_lm, _ = build("lora", models["gpt2"])
    assert all(jax.tree.leaves(partition.decay_mask(nnx.state(lora_lm, LoraParam))))


# --- parameter counts ---------------------------------------------------------------------


def peft_trainable(tiny_checkpoints, kind, peft_config) -> int:
    model = peft.get_peft_model(hf_model(tiny_checkpoints, kind), peft_config)
    return model.get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_prompt_counts_match_formula_and_peft(tiny_checkpoints, models, kind):
    model, c = models[kind], models[kind].config
    config = PromptConfig(length=5)
    counts = count_params(PromptLM(model, create_prompt(model, config)[0]), PromptParam)
    assert counts["trainable"] == 5 * c.hidden_size == config.num_params(c)
    assert counts["total"] == 5 * c.hidden_size + c.num_params()
    peft_config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)
    assert counts["trainable"] == peft_trainable(tiny_checkpoints, kind, peft_config)


# PEFT targets that are the same modules as ours, one to one. GPT-2's fused c_attn is not
# among them: PEFT puts one rank-r LoRA (A shared by q, k, v) on the fused [d, 3d] weight,
# r * (d + 3d) parameters per layer, where ours puts one on each of q, k, v: r * 6d.
LORA_TARGETS = {
    "llama": [
        ("q_proj", "v_proj"),
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    ],
    "gpt2": [("attn.c_proj",), ("attn.c_proj", "c_fc", "mlp.c_proj")],
}


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_lora_counts_match_formula_and_peft(tiny_checkpoints, models, kind):
    model, c = models[kind], models[kind].config
    d, f, L, r = c.hidden_size, c.intermediate_size, c.num_layers, 3
    q_width = c.num_heads * c.head_dim
    fans = {"q": d + q_width, "k": d + c.kv_dim, "v": d + c.kv_dim, "o": q_width + d}
    fans |= {"gate": d + f, "up": d + f, "down": f + d}
    for targets in LORA_TARGETS[kind]:
        config = LoraConfig(rank=r, alpha=6.0, targets=targets)
        counts = count_params(LoraLM(model, create_lora(model, config)[0]), LoraParam)
        formula = sum(L * r * fans[n] for n in config.target_names(c))
        assert counts["trainable"] == formula == config.num_params(c)
        assert counts["total"] == formula + c.num_params()
        peft_config = peft.LoraConfig(r=r, lora_alpha=6, target_modules=list(targets))
        assert counts["trainable"] == peft_trainable(tiny_checkpoints, kind, peft_config)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_finetune_counts_match_formula(models, kind):
    model, c = models[kind], models[kind].config
    full = count_params(FinetuneLM(model), nnx.Param)
    assert full["trainable"] == full["total"] == c.num_params() and full["fraction"] == 1.0
    stacked = sum(x.size for x in jax.tree.leaves(nnx.state(model.layers, nnx.Param)))
    for k in (1, 2):
        counts = count_params(FinetuneLM(model, k), TopLayerParam)
        assert counts["trainable"] == k * stacked // c.num_layers == FinetuneConfig(k).num_params(c)
        assert counts["total"] == c.num_params()  # the replaced base slices count once


# --- logits: exactness and parity with PEFT -------------------------------------------


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_lora_with_zero_b_is_the_base_model_bitwise(models, kind):
    model = models[kind]
    batch = batch_for(model, seed=1)
    base, _ = model(batch["tokens"], batch["attention_mask"])
    targets = LLAMA_ALL if kind == "llama" else GPT2_ALL
    lm = LoraLM(model, create_lora(model, LoraConfig(rank=2, dropout=0.5, targets=targets))[0])
    # With dropout too (llama): B = 0 whatever A sees.
    for key in (None, jax.random.key(0)) if kind == "llama" else (None,):
        logits, _ = lm(batch["tokens"], batch["attention_mask"], dropout_key=key)
        np.testing.assert_array_equal(np.asarray(logits), np.asarray(base))


def torch_logits(peft_model, tokens, mask) -> np.ndarray:
    with torch.no_grad():
        return peft_model(
            input_ids=torch.from_numpy(np.asarray(tokens, np.int64)),
            attention_mask=torch.from_numpy(np.asarray(mask, np.int64)),
        ).logits.numpy()


def real_gap(ours, theirs, mask) -> float:
    """Largest logit difference over real (unpadded) tokens."""
    real = np.asarray(mask, bool)
    return float(np.abs(np.asarray(ours)[real] - theirs[real]).max())


# Our weight -> PEFT module (under base_model.model.) and, for GPT-2's fused c_attn, the
# block of its output rows.
PEFT_MODULES = {
    "llama": {
        "q": "model.layers.{}.self_attn.q_proj",
        "k": "model.layers.{}.self_attn.k_proj",
        "v": "model.layers.{}.self_attn.v_proj",
        "o": "model.layers.{}.self_attn.o_proj",
        "gate": "model.layers.{}.mlp.gate_proj",
        "up": "model.layers.{}.mlp.up_proj",
        "down": "model.layers.{}.mlp.down_proj",
    },
    "gpt2": {
        "q": "transformer.h.{}.attn.c_attn",
        "k": "transformer.h.{}.attn.c_attn",
        "v": "transformer.h.{}.attn.c_attn",
        "o": "transformer.h.{}.attn.c_proj",
        "up": "transformer.h.{}.mlp.c_fc",
        "down": "transformer.h.{}.mlp.c_proj",
    },
}


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_lora_logits_match_peft_with_the_same_factors(tiny_checkpoints, models, kind):
    """PEFT's random LoRA weights copied into ours: its [r, in] lora_A and [out, r] lora_B
    are our per-layer A/B transposed; GPT-2's c_attn A is shared by our q, k and v."""
    model, c = models[kind], models[kind].config
    r, modules = 2, PEFT_MODULES[kind]
    peft_targets = sorted({m.split("{}.")[1] for m in modules.values()})
    config = peft.LoraConfig(
        r=r, lora_alpha=5, target_modules=peft_targets, init_lora_weights=False
    )
    theirs_model = peft.get_peft_model(hf_model(tiny_checkpoints, kind), config).eval()
    weights = {k: v.detach().numpy() for k, v in theirs_model.state_dict().items()}
    ours = create_lora(model, LoraConfig(rank=r, alpha=5.0, targets=tuple(modules)))[0]
    d = c.hidden_size
    for name, module in modules.items():
        a_var, b_var = getattr(ours, f"{name}_a"), getattr(ours, f"{name}_b")
        a, b = np.zeros(a_var.shape, np.float32), np.zeros(b_var.shape, np.float32)
        for layer in range(c.num_layers):
            key = "base_model.model." + module.format(layer)
            la = weights[f"{key}.lora_A.default.weight"]
            lb = weights[f"{key}.lora_B.default.weight"]
            if module.endswith("c_attn"):
                j = ("q", "k", "v").index(name)
                lb = lb[j * d : (j + 1) * d]
            a[layer] = la.T.reshape(a.shape[1:])
            b[layer] = lb.T.reshape(b.shape[1:])
        a_var[...], b_var[...] = jnp.asarray(a), jnp.asarray(b)
    batch = batch_for(model, seed=2)
    logits, _ = LoraLM(model, ours)(batch["tokens"], batch["attention_mask"])
    theirs = torch_logits(theirs_model, batch["tokens"], batch["attention_mask"])
    assert real_gap(logits, theirs, batch["attention_mask"]) <= 1e-4


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_prompt_logits_match_peft_prompt_tuning(tiny_checkpoints, models, kind):
    """Same soft prompt in both. Right padding: PEFT ignores position ids and numbers the
    sequence 0.. from the first virtual token, which is ours for right-padded rows."""
    model = models[kind]
    soft = create_prompt(model, PromptConfig(length=3, init="vocab"))[0]
    config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    theirs_model = peft.get_peft_model(hf_model(tiny_checkpoints, kind), config).eval()
    with torch.no_grad():
        table = torch.from_numpy(np.asarray(soft.embedding[...]))
        theirs_model.prompt_encoder["default"].embedding.weight.copy_(table)
    batch = batch_for(model, seed=3)
    logits, _ = PromptLM(model, soft)(batch["tokens"], batch["attention_mask"])
    theirs = torch_logits(theirs_model, batch["tokens"], batch["attention_mask"])[:, 3:]
    assert logits.shape == batch["tokens"].shape + (model.config.vocab_size,)
    assert real_gap(logits, theirs, batch["attention_mask"]) <= 1e-4


def test_prompt_positions_ignore_left_padding(models):
    """Real tokens start at position p however a row is padded."""
    model = models["gpt2"]  # learned positions: a position shift changes every logit
    lm = PromptLM(model, create_prompt(model, PromptConfig(length=2))[0])
    tokens, mask = left_pad([[5, 9, 3], [7, 1, 4, 8, 2]], pad_id=0)
    padded, _ = lm(jnp.asarray(tokens), jnp.asarray(mask))
    alone, _ = lm(jnp.asarray([[5, 9, 3]]))
    np.testing.assert_allclose(np.asarray(padded)[0, 2:], np.asarray(alone)[0], atol=1e-5)


class _WordTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + (sum(map(ord, w)) % 90) for w in text.split()]}


def test_prompt_init_from_text_and_vocab_uses_embedding_rows(models):
    model = models["llama"]
    embed = np.asarray(model.embed[...])
    ids = _WordTokenizer()("table to text")["input_ids"]
    text = create_prompt(model, PromptConfig(length=5, init="text:table to text"), _WordTokenizer())
    np.testing.assert_array_equal(np.asarray(text[0].embedding[...]), embed[(ids * 2)[:5]])
    vocab = np.asarray(create_prompt(model, PromptConfig(length=4, init="vocab"))[0].embedding[...])
    assert all(any(np.array_equal(row, e) for e in embed) for row in vocab)


# --- decoding through the wrappers --------------------------------------------------------


@pytest.mark.parametrize("method", ["prompt", "lora"])
def test_greedy_with_wrapper_equals_stepwise_full_forward(models, method):
    model = models["llama"]
    lm, _ = build(method, model)
    if method == "lora":
        set_random_b(lm.lora)
    prompts, steps = [[5, 9, 3, 7], [11, 2]], 5
    tokens, mask = left_pad(prompts, pad_id=0)
    out = np.asarray(greedy(lm, tokens, mask, max_new_tokens=steps))
    # Reference: no cache, rows right-padded to one fixed width (one compile for all steps).
    forward = jax.jit(lambda t, m: lm(t, m)[0])
    seqs, width = [list(ids) for ids in prompts], max(map(len, prompts)) + steps
    for _ in range(steps):
        padded = np.array([s + [0] * (width - len(s)) for s in seqs], np.int32)
        valid = np.array([[i < len(s) for i in range(width)] for s in seqs])
        logits = np.asarray(forward(padded, valid))
        for row, s in enumerate(seqs):
            s.append(int(np.argmax(logits[row, len(s) - 1])))
    assert out.tolist() == [s[len(ids) :] for s, ids in zip(seqs, prompts, strict=True)]


def test_beam_search_with_soft_prompt_scores_no_cache_log_probs(models):
    lm, _ = build("prompt", models["llama"])
    ids = [5, 9, 3, 7]
    tokens, mask = left_pad([ids, [4, 2]], pad_id=0)
    seqs, scores = beam_search(lm, tokens, mask, beam_size=2, max_new_tokens=4, length_penalty=0.0)
    seq = np.asarray(seqs)[0].tolist()
    logits, _ = lm(jnp.asarray([ids + seq]))
    logp = jax.nn.log_softmax(np.asarray(logits[0], np.float64), axis=-1)
    want = sum(float(logp[len(ids) - 1 + i, t]) for i, t in enumerate(seq))
    assert float(scores[0]) == pytest.approx(want, abs=1e-4)


def set_random_b(lora_module, seed=3):
    for i, name in enumerate(lora_module.targets):
        b = getattr(lora_module, f"{name}_b")
        b[...] = 0.1 * jax.random.normal(jax.random.fold_in(jax.random.key(seed), i), b.shape)


# --- export -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_exports_load_in_peft_with_the_same_logits(tiny_checkpoints, models, kind, tmp_path):
    """LoRA (GPT-2: q, k, v as a rank-3r LoRA on c_attn) and the soft prompt, saved in
    PEFT's format, give our logits in PEFT; our own format holds the same weights."""
    model = models[kind]
    batch = batch_for(model, seed=4)
    targets = LLAMA_ALL if kind == "llama" else GPT2_ALL
    lm = LoraLM(model, create_lora(model, LoraConfig(rank=2, alpha=3.0, targets=targets))[0])
    set_random_b(lm.lora)
    soft = create_prompt(model, PromptConfig(length=3, init="vocab"))[0]
    cases = (("lora", lm, lm.lora, lora, 0), ("prompt", PromptLM(model, soft), soft, prompt, 3))
    for name, wrapper, params, module, virtual in cases:
        module.save_peft(params, model, tmp_path / f"{name}_peft")
        loaded = peft.PeftModel.from_pretrained(
            hf_model(tiny_checkpoints, kind), tmp_path / f"{name}_peft"
        )
        ours, _ = wrapper(batch["tokens"], batch["attention_mask"])
        theirs = torch_logits(loaded.eval(), batch["tokens"], batch["attention_mask"])
        assert real_gap(ours, theirs[:, virtual:], batch["attention_mask"]) <= 1e-4
        module.save(params, model, tmp_path / name, {"steps": 7})
    from safetensors.numpy import load_file

    saved = load_file(tmp_path / "lora" / "lora.safetensors")
    for name, (a, b) in lm.lora.factors().items():
        np.testing.assert_array_equal(saved[f"{name}.a"], np.asarray(a))
        np.testing.assert_array_equal(saved[f"{name}.b"], np.asarray(b))
    meta = json.loads((tmp_path / "lora" / "lora_config.json").read_text())
    assert meta["targets"] == list(targets) and meta["training"]["steps"] == 7
    saved = load_file(tmp_path / "prompt" / "prompt.safetensors")
    np.testing.assert_array_equal(saved["prompt"], np.asarray(soft.embedding[...]))


# --- configuration errors -----------------------------------------------------------------


def test_lora_targets_resolve_our_and_peft_names(models):
    llama, gpt2 = models["llama"].config, models["gpt2"].config
    assert LoraConfig(targets=("q_proj", "v|o")).target_names(llama) == ("q", "v", "o")
    assert LoraConfig(targets=(".*",)).target_names(llama) == LLAMA_ALL
    assert LoraConfig(targets=("c_attn",)).target_names(gpt2) == ("q", "k", "v")
    assert LoraConfig(targets=["c_proj"]).target_names(gpt2) == ("o", "down")
    with pytest.raises(ValueError, match="lora target 'gate' matches no weight of this gpt2"):
        LoraConfig(targets=("gate",)).target_names(gpt2)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: LoraConfig(rank=0), "lora rank must be positive, got 0"),
        (lambda: LoraConfig(dropout=1.0), r"lora dropout must be in \[0, 1\)"),
        (lambda: LoraConfig(targets=()), "lora targets must name at least one weight"),
        (lambda: LoraConfig(targets=("q(",)), "lora target 'q\\(' is not a valid regex"),
        (lambda: PromptConfig(length=0), "prompt length must be positive, got 0"),
        (lambda: PromptConfig(init="zeros"), "prompt init must be 'random', 'vocab' or"),
        (lambda: PromptConfig(init="text: "), "needs words after the colon"),
        (lambda: FinetuneConfig(top_layers=-1), "finetune top_layers must be 0"),
    ],
)
def test_invalid_method_configs(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_wrappers_reject_mismatched_parts(models):
    gpt2, llama = models["gpt2"], models["llama"]
    with pytest.raises(ValueError, match="top_layers=4 is outside \\[0, 3\\]"):
        FinetuneLM(llama, 4)
    with pytest.raises(ValueError, match="soft prompt width 32 does not match"):
        PromptLM(llama, create_prompt(gpt2, PromptConfig(length=2))[0])
    with pytest.raises(ValueError, match="lora factors for 'q'"):
        LoraLM(llama, create_lora(gpt2, LoraConfig(targets=("q",)))[0])
    with pytest.raises(ValueError, match="needs a tokenizer"):
        create_prompt(llama, PromptConfig(init="text:hello"))


# --- the training CLI path ----------------------------------------------------------------


def heldout_loss(model, config, tokenizer) -> float:
    """Token-weighted held-out loss of `model` over the batches training evaluates on."""
    _, examples = experiment.load_splits(config)
    data = encode_examples(examples, tokenizer, experiment.encode_config(config))
    buckets = tuple(config.data.buckets) if config.data.buckets else None
    total = count = 0.0
    for batch in BatchIterator(data, config.batch_size, buckets=buckets, seed=config.seed).batches(
        0
    ):
        batch = to_device(batch)
        logits, _ = model(batch["tokens"], batch["attention_mask"])
        loss, n = lm_loss(logits, batch["tokens"], batch["loss_mask"])
        total, count = total + float(loss) * float(n), count + float(n)
    return total / count


@pytest.mark.parametrize("method", ["prompt", "lora", "full", "top1"])
def test_train_runs_each_method(tiny, tmp_path, method):  # noqa: F811 - `tiny` fixture
    overrides = {"method": "full" if method == "top1" else method, "max_steps": 2}
    overrides |= {"checkpoint_every": 2, "log_every": 1, "prompt__length": 2, "lora__rank": 2}
    if method == "top1":
        overrides["finetune__top_layers"] = 1
    summary = train(make_config(tiny, **overrides), tmp_path)
    assert summary["steps"] == 2 and np.isfinite(summary["eval_loss"])
    assert summary["platform"] == jax.default_backend()  # what the report says it ran on
    assert summary["device_kind"] == jax.devices()[0].device_kind
    c = load(str(tiny["model"]), with_tokenizer=False)[0].config
    expected = {
        "prompt": PromptConfig(length=2).num_params(c),
        "lora": LoraConfig(rank=2, targets=("q", "v")).num_params(c),
        "full": c.num_params(),
        "top1": FinetuneConfig(1).num_params(c),
    }[method]
    assert summary["params_trainable"] == expected
    assert summary["params_total"] == c.num_params() + (
        expected if method in ("prompt", "lora") else 0
    )
    config = make_config(tiny, **overrides)
    model, tokenizer = experiment.load_model(config)
    trained = load_trained(config, tmp_path, model, tokenizer)
    # The loaded model (export, or checkpoint for fine-tuning) is the one training ended with.
    loaded_loss = heldout_loss(trained.model, config, tokenizer)
    assert loaded_loss == pytest.approx(summary["eval_loss"], abs=1e-5)
    assert abs(heldout_loss(model, config, tokenizer) - loaded_loss) > 1e-3  # training mattered
    if method in ("prompt", "full"):  # the evaluate CLI path decodes with the trained model
        config.decode.update(beam_size=2, max_new_tokens=4)
        config.data.max_eval_groups = 3
        results = evaluate(config, tmp_path)
        assert results["method"] == method and results["num_sources"] == 3
        assert results["weights"] == trained.source and "BLEU" in results["metrics"]
        lines = (tmp_path / "eval_validation" / "predictions.jsonl").read_text().splitlines()
        assert len(lines) == 3
    if method in ("full", "top1"):
        assert summary["exports"] == [] and "checkpoint" in summary["export_note"]
        assert not (tmp_path / "export").exists() and trained.source == "checkpoint"
        with pytest.raises(ValueError, match="no export to load"):
            load_trained(config, tmp_path, model, tokenizer, artifact=tmp_path)
        return
    other = {"prompt": "lora", "lora": "prompt"}[method]
    wrong = make_config(tiny, **{**overrides, "method": other})
    with pytest.raises(FileNotFoundError, match=f"not a prefix_jax.{other} export directory"):
        load_trained(wrong, tmp_path, model)
    assert summary["exports"] == ["export", "export_peft"]
    weights = {"prompt": "prompt.safetensors", "lora": "lora.safetensors"}[method]
    assert (tmp_path / "export" / weights).exists()
    config = json.loads((tmp_path / "export_peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == {"prompt": "PROMPT_TUNING", "lora": "LORA"}[method]
