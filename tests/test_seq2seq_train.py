"""Prefix-tuning an encoder-decoder: Li & Liang's three prefixes as one trainable partition,
their export, and an XSum-format run through `train` and `evaluate`.

The end-to-end run uses a tiny BART whose weights are drawn with std 0.5 (transformers'
default 0.02 leaves logits nearly uniform whatever the prefix does, so no loss could fall)
and a word-level tokenizer saved beside it; the documents are 8 random words and each
summary their first two.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import word_tokenizer
from flax import nnx

from prefix_jax.config.parse import load_config
from prefix_jax.infer.evaluate import evaluate
from prefix_jax.infer.trained import load_trained
from prefix_jax.methods import (
    PrefixConfig,
    PrefixLM,
    PrefixParam,
    PrefixParts,
    registry,
)
from prefix_jax.methods.prefix import artifact as export
from prefix_jax.methods.prefix.core import create_prefix, prefix_shapes
from prefix_jax.models import load
from prefix_jax.train.loop import train
from prefix_jax.train.step import OptimConfig, Trainer, make_optimizer, seq2seq_loss

XSUM = str(Path(__file__).parents[1] / "configs" / "xsum.py")

WORDS = [f"w{i}" for i in range(57)]  # 4 special tokens + 57 words = the tiny vocab of 61


def batch(rng: np.random.Generator, vocab: int, rows: int = 3) -> dict[str, jax.Array]:
    """Right-padded sources and targets, one short row of each."""
    source = rng.integers(3, vocab, (rows, 7))
    target = rng.integers(3, vocab, (rows, 5))
    source_mask = np.ones((rows, 7), bool)
    target_mask = np.ones((rows, 5), bool)
    source_mask[0, 4:] = False
    target_mask[1, 3:] = False
    return {
        "source": jnp.asarray(source, jnp.int32),
        "source_mask": jnp.asarray(source_mask),
        "target": jnp.asarray(target, jnp.int32),
        "labels": jnp.asarray(np.roll(target, -1, axis=1), jnp.int32),
        "target_mask": jnp.asarray(target_mask),
    }


def prefix_lm(path: Path, **prefix) -> PrefixLM:
    model, _ = load(str(path), with_tokenizer=False)
    parts, _ = create_prefix(model, PrefixConfig(length=3, hidden=16, **prefix))
    return PrefixLM(model, parts)


@pytest.mark.parametrize("kind", [pytest.param("bart", marks=pytest.mark.slow), "t5_v11"])
def test_one_partition_holds_the_three_prefixes_and_each_learns(tiny_seq2seq_checkpoints, kind):
    lm = prefix_lm(tiny_seq2seq_checkpoints[kind], init_scale=0.5)
    c = lm.config
    counts = {
        part: PrefixConfig(length=3, hidden=16).num_params(s)
        for part, s in prefix_shapes(c).items()
    }
    params = nnx.state(lm, PrefixParam)
    assert sum(x.size for x in jax.tree.leaves(params)) == sum(counts.values())
    frozen_before = jax.tree.map(np.asarray, nnx.state(lm, nnx.Not(PrefixParam)))

    tx = make_optimizer(OptimConfig(learning_rate=1e-2, total_steps=3), PrefixParam)
    trainer = Trainer(lm, tx, PrefixParam, loss_fn=seq2seq_loss)
    before = jax.tree.map(np.asarray, trainer.state.params)
    data = batch(np.random.default_rng(0), c.vocab_size)
    for _ in range(3):
        metrics = trainer.step(data, jax.random.key(0))
    assert np.isfinite(float(metrics["loss"]))
    after = trainer.state.params
    for part in ("encoder", "decoder", "cross"):  # every part's MLP received a gradient
        moved = jax.tree.map(
            lambda a, b: float(np.abs(np.asarray(a) - b).max()),
            after["prefix"][part],
            before["prefix"][part],
        )
        assert min(jax.tree.leaves(moved)) > 0, part
    frozen_after = jax.tree.map(np.asarray, nnx.state(trainer.model(), nnx.Not(PrefixParam)))
    assert jax.tree.all(jax.tree.map(np.array_equal, frozen_before, frozen_after))


@pytest.mark.parametrize(
    "parts", ["encoder,decoder,cross", pytest.param("cross", marks=pytest.mark.slow)]
)
def test_collapsed_export_gives_the_same_logits(tiny_seq2seq_checkpoints, tmp_path, parts):
    lm = prefix_lm(tiny_seq2seq_checkpoints["bart"], parts=parts, init_scale=0.5)
    data = batch(np.random.default_rng(1), lm.config.vocab_size)
    args = (data["source"], data["source_mask"], data["target"], data["target_mask"])
    with_mlp = np.asarray(lm(*args))

    exported = export.collapse(lm.prefix, lm.base, {"steps": 0})
    export.save(exported, tmp_path / "export")
    meta = json.loads((tmp_path / "export" / "prefix_config.json").read_text())
    assert sorted(meta["parts"]) == sorted(parts.split(","))
    loaded = export.load(tmp_path / "export", lm.base)
    collapsed = np.asarray(lm.base(*args, prefix=loaded.to_prefix_kv(lm.base)))
    bare = np.asarray(lm.base(*args))
    assert np.abs(collapsed - with_mlp).max() <= 1e-5
    assert np.abs(bare - with_mlp).max() > 1e-3  # the prefixes change the logits (measured 6e-3)


def test_part_choices_and_errors(tiny_seq2seq_checkpoints, tiny_checkpoints, tmp_path):
    model, _ = load(str(tiny_seq2seq_checkpoints["t5_v1"]), with_tokenizer=False)
    parts, _ = create_prefix(model, PrefixConfig(length=2, hidden=8, parts="cross, encoder"))
    assert isinstance(parts, PrefixParts) and parts.parts == ("encoder", "cross")
    with pytest.raises(ValueError, match="parts are encoder, decoder, cross"):
        PrefixConfig(parts="decoder,memory")
    with pytest.raises(ValueError, match="needs a tokenizer"):
        create_prefix(model, PrefixConfig(length=2, init="text:summarize"))
    decoder_only, _ = load(str(tiny_checkpoints["llama"]), with_tokenizer=False)
    with pytest.raises(ValueError, match=r"\['encoder'\] do not exist in this model"):
        create_prefix(decoder_only, PrefixConfig(length=2, parts="encoder"))
    config = load_config(XSUM)
    config.method, config.finetune.top_layers = "full", 1
    with pytest.raises(ValueError, match="is for decoder-only models"):
        registry.get(config.method).create(model, config)
    # A decoder-only prefix does not load into an encoder-decoder, nor parts into a decoder.
    lm = prefix_lm(tiny_seq2seq_checkpoints["t5_v1"])
    export.save(export.collapse(lm.prefix, lm.base), tmp_path / "parts")
    with pytest.raises(export.PrefixMismatchError, match="the model is decoder-only"):
        export.load(tmp_path / "parts", decoder_only)


@pytest.mark.parametrize("kind", [pytest.param("bart", marks=pytest.mark.slow), "t5_v11"])
def test_three_prefixes_start_at_the_activations_of_real_words(tiny_seq2seq_checkpoints, kind):
    """Li & Liang's real-word init for every part: the encoder's self-attention keys/values
    of the words as a source, the cross-attention's of that encoding, the decoder's with the
    words as the target. Against transformers' own k/v projections (forward hooks) on the
    same input; the MLP reparameterization fits each part's table."""
    import torch
    import transformers

    path = tiny_seq2seq_checkpoints[kind]
    model, _ = load(str(path), with_tokenizer=False)
    config = PrefixConfig(length=7, init="vocab", reparam="none", seed=3)  # 7 sampled tokens
    direct, info = create_prefix(model, config)
    assert info == {f"init_relative_error_{p}": 0.0 for p in ("encoder", "decoder", "cross")}
    words = np.asarray(jax.random.randint(jax.random.key(3), (7,), 0, model.config.vocab_size))

    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    if kind == "bart":  # part -> (its stack's blocks, the attention module in a block)
        attention = {
            "encoder": (hf.model.encoder.layers, "self_attn"),
            "decoder": (hf.model.decoder.layers, "self_attn"),
            "cross": (hf.model.decoder.layers, "encoder_attn"),
        }
        projections = ("k_proj", "v_proj")
    else:
        attention = {
            "encoder": (hf.encoder.block, "layer.0.SelfAttention"),
            "decoder": (hf.decoder.block, "layer.0.SelfAttention"),
            "cross": (hf.decoder.block, "layer.1.EncDecAttention"),
        }
        projections = ("k", "v")
    captured, hooks = {}, []
    for part, (blocks, name) in attention.items():
        for i, block in enumerate(blocks):
            for j, proj in enumerate(projections):

                def keep(_, __, out, key=(part, i, j)):
                    captured[key] = out[0].detach().numpy()  # [7, heads x head_dim]

                hooks.append(block.get_submodule(f"{name}.{proj}").register_forward_hook(keep))
    ids = torch.from_numpy(words[None].astype(np.int64))
    with torch.no_grad():
        hf(input_ids=ids, decoder_input_ids=ids)
    for hook in hooks:
        hook.remove()
    for part, (blocks, _) in attention.items():
        # Table rows are tokens; columns layer by layer, keys then values.
        expected = np.concatenate(
            [captured[(part, i, j)] for i in range(len(blocks)) for j in (0, 1)], -1
        )
        table = np.asarray(getattr(direct, part).table())
        assert table.shape == expected.shape
        assert np.abs(table - expected).max() < 1e-5, part

    mlp, info = create_prefix(model, PrefixConfig(length=7, init="vocab", hidden=32, seed=3))
    assert set(info) == {f"init_relative_error_{p}" for p in ("encoder", "decoder", "cross")}
    for part in mlp.parts:
        target = np.asarray(getattr(direct, part).table())
        error = np.linalg.norm(np.asarray(getattr(mlp, part).table()) - target)
        assert error / np.linalg.norm(target) < 0.25, part


@pytest.fixture(scope="module")
def xsum_like(tmp_path_factory) -> dict[str, Path]:
    import torch
    import transformers

    root = tmp_path_factory.mktemp("xsum")
    torch.manual_seed(0)
    config = transformers.BartConfig(
        vocab_size=4 + len(WORDS),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        max_position_embeddings=40,
        init_std=0.5,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        decoder_start_token_id=1,
        forced_eos_token_id=1,
    )
    model_dir = root / "bart"
    transformers.BartForConditionalGeneration(config).save_pretrained(model_dir)
    word_tokenizer(WORDS, "<s> $A </s>").save_pretrained(model_dir)
    rng = np.random.default_rng(0)
    data = root / "xsum.jsonl"
    with data.open("w") as f:
        for _ in range(12):
            doc = [WORDS[j] for j in rng.choice(len(WORDS), 8, replace=False)]
            f.write(json.dumps({"document": " ".join(doc), "summary": " ".join(doc[:2])}) + "\n")
    return {"model": model_dir, "data": data}


def test_xsum_prefix_run_trains_exports_and_scores_rouge(xsum_like, tmp_path):
    c = load_config(f"{XSUM}:local")
    c.mesh = ()
    c.model, c.data.path = str(xsum_like["model"]), str(xsum_like["data"])
    c.data.eval_sources = 2
    c.data.max_source_tokens, c.data.max_target_tokens, c.data.buckets = 16, 8, (16,)
    c.max_steps, c.batch_size, c.checkpoint_every, c.log_every = 60, 4, 30, 5
    c.prefix.length, c.prefix.hidden = 4, 32
    c.optim.learning_rate, c.optim.warmup_steps = 1e-2, 2
    c.decode.beam_size, c.decode.max_new_tokens, c.decode.batch_size = 2, 6, 2
    summary = train(c, tmp_path)

    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in logged if "loss" in m]
    assert losses[-1] < losses[0] / 4, losses  # measured: 7.6 -> 1.4
    model, _ = load(c.model, with_tokenizer=False)
    shapes = prefix_shapes(model.config)
    prefix = registry.get("prefix").read_config(c)
    assert summary["params_trainable"] == sum(prefix.num_params(s) for s in shapes.values())
    assert summary["exports"] == ["export"]  # PEFT has no format for the three parts

    results = evaluate(c, tmp_path, split="train", max_groups=4)
    assert set(results["metrics"]) == {"ROUGE-1", "ROUGE-2", "ROUGE-L"}
    lines = (tmp_path / "eval_train" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == results["num_sources"] == 4
    assert results["weights"] == str(tmp_path / "export")


def test_full_fine_tuning_of_an_encoder_decoder_trains_every_weight(xsum_like, tmp_path):
    """Li & Liang's fine-tuning baseline on XSum: every weight of both stacks trains, the
    run has no export, and evaluate decodes with the weights of the latest checkpoint."""
    c = load_config(f"{XSUM}:local")
    c.mesh, c.method = (), "full"
    c.model, c.data.path = str(xsum_like["model"]), str(xsum_like["data"])
    c.data.eval_sources = 2
    c.data.max_source_tokens, c.data.max_target_tokens, c.data.buckets = 16, 8, (16,)
    c.max_steps, c.batch_size, c.checkpoint_every, c.log_every = 6, 4, 6, 2
    c.optim.learning_rate, c.optim.warmup_steps = 1e-3, 1
    c.decode.beam_size, c.decode.max_new_tokens, c.decode.batch_size = 2, 6, 2
    summary = train(c, tmp_path)
    assert summary["params_trainable"] == summary["params_total"]
    assert summary["exports"] == [] and "checkpoint" in summary["export_note"]

    model, _ = load(c.model, with_tokenizer=False)
    trained = load_trained(c, tmp_path, model)
    assert trained.source == "checkpoint"
    before = nnx.state(load(c.model, with_tokenizer=False)[0], nnx.Param)
    after = nnx.state(trained.model.base, nnx.Param)
    changed = [
        not np.allclose(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
    ]
    assert sum(changed) >= len(changed) - 2, "nearly every weight moves (AdamW)"
    results = evaluate(c, tmp_path, split="train", max_groups=2)
    assert results["weights"] == "checkpoint" and results["num_sources"] == 2


def test_decoder_prefix_round_trips_through_peft(tiny_seq2seq_checkpoints, tmp_path):
    """PEFT prefixes BART's decoder self-attention alone, its positions after the prefix:
    such a prefix exports to PEFT, which then computes our logits, and imports back."""
    import peft
    import transformers
    from conftest import seq2seq_batch as _batch
    from conftest import seq2seq_hf_logits as _hf_logits

    path = tiny_seq2seq_checkpoints["bart"]
    lm = prefix_lm(path, parts="decoder", positions="after_prefix", init_scale=0.5)
    exported = export.collapse(lm.prefix, lm.base)
    assert export.peft_exportable(exported)
    export.save_peft(exported, tmp_path / "peft", base_model_name_or_path=str(path))
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "peft").eval()

    src, src_mask, tgt, tgt_mask = _batch(seed=3)
    theirs = _hf_logits(peft_model, src, src_mask, tgt, tgt_mask)
    args = [jnp.asarray(a) for a in (src, src_mask, tgt, tgt_mask)]
    ours = np.asarray(lm(*args))
    real = tgt_mask.astype(bool)
    assert np.abs(ours[real] - theirs[real]).max() < 1e-4

    back = export.load(tmp_path / "peft", lm.base)
    assert isinstance(back, export.ExportedParts) and list(back.parts) == ["decoder"]
    assert np.array_equal(back.parts["decoder"].table, exported.parts["decoder"].table)
    three = export.collapse(prefix_lm(path).prefix, lm.base)
    with pytest.raises(ValueError, match="PEFT prefixes only an encoder-decoder's decoder"):
        export.save_peft(three, tmp_path / "no")
    even = export.ExportedParts(
        {"decoder": export.ExportedPrefix(np.zeros((2, 2 * 2 * 8)), 2, 2, 4, True, {})}, {}
    )
    assert not export.peft_exportable(even)
    with pytest.raises(ValueError, match="decoder layers i and i \\+ L/2 one prefix"):
        export.save_peft(even, tmp_path / "even")
    assert export.peft_seq2seq_slots(3) == [0, 2, 1] and export.peft_seq2seq_slots(4) == [
        0,
        2,
        0,
        2,
    ]


def test_t5_prompt_tuning_matches_transformers_with_the_prompt_embedded(tiny_seq2seq_checkpoints):
    """Lester et al.'s setting: the soft prompt in front of T5's encoder input. Ours against
    transformers given the same vectors as `inputs_embeds` and the prompt's mask ones."""
    import torch
    import transformers
    from conftest import seq2seq_batch as _batch

    from prefix_jax.methods import PromptConfig, Seq2SeqPromptLM, create_prompt

    path = tiny_seq2seq_checkpoints["t5_v11"]
    model, _ = load(str(path), with_tokenizer=False)
    prompt, _ = create_prompt(model, PromptConfig(length=4, init="vocab", seed=2))
    lm = Seq2SeqPromptLM(model, prompt)
    src, src_mask, tgt, tgt_mask = _batch(seed=4)
    ours = np.asarray(lm(*(jnp.asarray(a) for a in (src, src_mask, tgt, tgt_mask))))

    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    with torch.no_grad():
        embeds = hf.get_input_embeddings()(torch.from_numpy(src))
        vectors = torch.from_numpy(np.asarray(prompt.embedding[...]))
        embeds = torch.cat([vectors[None].expand(len(src), -1, -1), embeds], dim=1)
        mask = np.concatenate([np.ones((len(src), 4), src_mask.dtype), src_mask], axis=1)
        theirs = hf(
            inputs_embeds=embeds,
            attention_mask=torch.from_numpy(mask),
            decoder_input_ids=torch.from_numpy(tgt),
            decoder_attention_mask=torch.from_numpy(tgt_mask),
        ).logits.numpy()
    real = tgt_mask.astype(bool)
    assert np.abs(ours[real] - theirs[real]).max() < 1e-4


@pytest.mark.parametrize(
    "kind,method",
    [
        ("bart", "lora"),
        pytest.param("t5_v11", "lora", marks=pytest.mark.slow),
        pytest.param("bart", "prompt", marks=pytest.mark.slow),
        ("t5_v1", "prompt"),
    ],
)
def test_prompt_and_lora_export_to_peft_with_our_logits(
    tiny_seq2seq_checkpoints, tmp_path, kind, method
):
    """PEFT's SEQ_2_SEQ_LM adapters of the baselines, loaded by PeftModel onto the
    transformers model, compute our logits: LoRA on every weight of both stacks (the
    cross-attention and T5's gated feed-forward included), the soft prompt in front of the
    encoder input (BART's embeddings scaled)."""
    import peft
    import transformers
    from conftest import seq2seq_batch as _batch
    from conftest import seq2seq_hf_logits as _hf_logits

    from prefix_jax.methods import lora as lora_method
    from prefix_jax.methods import prompt as prompt_method

    path = tiny_seq2seq_checkpoints[kind]
    model, _ = load(str(path), with_tokenizer=False)
    rng = np.random.default_rng(5)
    if method == "lora":
        adapter, _ = lora_method.create_lora(model, lora_method.LoraConfig(rank=2, targets=(".*",)))
        for part in (adapter.encoder, adapter.decoder):
            for name in part.targets:  # B starts at zero: draw it, so every update shows
                b = getattr(part, f"{name}_b")
                b[...] = jnp.asarray(rng.normal(0, 0.1, b.shape), jnp.float32)
        lm = lora_method.LoraLM(model, adapter)
        lora_method.save_peft(adapter, model, tmp_path / "peft")
        names = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
        assert ("fc1" in names["target_modules"]) == (kind == "bart")
    else:
        config = prompt_method.PromptConfig(length=4, init="random", init_scale=2.0, seed=2)
        adapter, _ = prompt_method.create_prompt(model, config)
        lm = prompt_method.Seq2SeqPromptLM(model, adapter)
        prompt_method.save_peft(adapter, model, tmp_path / "peft")
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "peft").eval()

    src, src_mask, tgt, tgt_mask = _batch(seed=6)
    theirs = _hf_logits(peft_model, src, src_mask, tgt, tgt_mask)
    ours = np.asarray(lm(*(jnp.asarray(a) for a in (src, src_mask, tgt, tgt_mask))))
    base = np.asarray(model(*(jnp.asarray(a) for a in (src, src_mask, tgt, tgt_mask))))
    real = tgt_mask.astype(bool)
    assert np.abs(ours[real] - base[real]).max() > 1e-3  # the adapter matters
    assert np.abs(ours[real] - theirs[real]).max() < 1e-4


def greedy_matches_teacher_forcing(lm, source, source_mask, eos: int) -> None:
    """Cached greedy decoding through the wrapper equals the argmax of its full forward."""
    from prefix_jax.infer.seq2seq_decode import greedy_seq2seq

    tokens = np.asarray(greedy_seq2seq(lm, source, source_mask, max_new_tokens=6, eos_id=eos))
    start = np.full((len(tokens), 1), lm.config.decoder_start_id)
    inputs = jnp.asarray(np.concatenate([start, tokens[:, :-1]], axis=1))
    logits = np.asarray(lm(source, source_mask, inputs, jnp.ones(inputs.shape, bool)))
    for row, argmax in zip(tokens, logits.argmax(-1), strict=True):
        n = len(row) if eos not in row else list(row).index(eos) + 1
        assert row[:n].tolist() == argmax[:n].tolist()


@pytest.mark.parametrize("method", ["prompt", "lora"])
def test_prompt_and_lora_train_export_load_and_decode(tiny_seq2seq_checkpoints, tmp_path, method):
    """The baselines on an encoder-decoder: only their partition trains, the export loads
    back to the same logits, and cached decoding through the wrapper equals teacher forcing.
    LoRA's targets reach both stacks and the cross-attention (`cross_v`)."""
    from prefix_jax.infer.trained import load_trained
    from prefix_jax.train.loop import export_artifacts

    model, _ = load(str(tiny_seq2seq_checkpoints["bart"]), with_tokenizer=False)
    config = load_config(XSUM)
    config.method = method
    config.prompt.update({"length": 3, "init": "random", "init_scale": 0.5})
    config.lora.update({"rank": 2, "targets": ("q", "cross_v"), "dropout": 0.1})
    lm, trainable, _ = registry.get(config.method).create(model, config)
    if method == "lora":
        assert lm.lora.encoder.targets == ("q",)
        assert lm.lora.decoder.targets == ("q", "cross_v")
    tx = make_optimizer(OptimConfig(learning_rate=5e-2, total_steps=3), trainable)
    trainer = Trainer(lm, tx, trainable, loss_fn=seq2seq_loss)
    data = batch(np.random.default_rng(2), model.config.vocab_size)
    for _ in range(3):
        trainer.step(data, jax.random.key(1))
    # The trained partition holds exactly the method's weights (tiny BART: d 32, 2 encoder
    # and 3 decoder layers): 3 prompt vectors, or rank 2 x (32 + 32) per layer and target.
    expected = 3 * 32 if method == "prompt" else 2 * 2 * 64 + 3 * 2 * 64 * 2
    assert sum(x.size for x in jax.tree.leaves(trainer.state.params)) == expected

    exports = export_artifacts(registry.get(method), trainer, model, {}, tmp_path, write=True)
    assert exports == ["export", "export_peft"]
    trained = load_trained(config, tmp_path, model)
    args = (data["source"], data["source_mask"], data["target"], data["target_mask"])
    trained_logits = np.asarray(trainer.model()(*args))
    assert np.abs(np.asarray(trained.model(*args)) - trained_logits).max() <= 1e-5
    assert np.abs(np.asarray(model(*args)) - trained_logits).max() > 1e-3  # it trained
    greedy_matches_teacher_forcing(trained.model, data["source"], data["source_mask"], eos=2)
