"""Checkpoint loading: sharded safetensors, and a clear error for each kind of bad input."""

from __future__ import annotations

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from prefix_jax.models import (
    CheckpointError,
    ModelConfig,
    UnsupportedArchitectureError,
    load,
    resolve,
)


def test_sharded_checkpoint_loads_like_single_file(tiny_checkpoints, tmp_path):
    single = tiny_checkpoints["llama"]
    sharded = tmp_path / "sharded"
    transformers.AutoModelForCausalLM.from_pretrained(single).save_pretrained(
        sharded, max_shard_size="40KB"
    )
    assert (sharded / "model.safetensors.index.json").exists()
    a, _ = load(str(single), with_tokenizer=False)
    b, _ = load(str(sharded), with_tokenizer=False)
    tokens = jnp.arange(12).reshape(2, 6)
    np.testing.assert_array_equal(np.asarray(a(tokens)[0]), np.asarray(b(tokens)[0]))


def test_missing_path_names_it():
    with pytest.raises(CheckpointError, match="no such model file or directory '/nope/model'"):
        load("/nope/model")


def test_unknown_name_lists_known_names():
    with pytest.raises(CheckpointError, match="known name.*smollm2"):
        resolve("gpt-17")


def test_directory_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="has no config.json"):
        load(str(tmp_path), with_tokenizer=False)


def test_directory_without_weights(tiny_checkpoints, tmp_path):
    shutil.copy(tiny_checkpoints["llama"] / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="neither model.safetensors nor"):
        load(str(tmp_path), with_tokenizer=False)


def test_unsupported_architecture_lists_supported(tiny_checkpoints, tmp_path):
    dst = shutil.copytree(tiny_checkpoints["llama"], tmp_path / "ckpt")
    config = json.loads((dst / "config.json").read_text())
    config["model_type"] = "bert"
    (dst / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitectureError, match="'bert'.*supported.*gpt2.*llama"):
        load(str(dst), with_tokenizer=False)


def test_shape_mismatch_names_the_tensor(tiny_checkpoints, tmp_path):
    dst = shutil.copytree(tiny_checkpoints["llama"], tmp_path / "ckpt")
    config = json.loads((dst / "config.json").read_text())
    config["intermediate_size"] = 96  # weights were saved with 80
    (dst / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match=r"tensor 'layers\.(gate|up|down)' has shape .* config implies"
    ):
        load(str(dst), with_tokenizer=False)


def test_missing_tensor_is_named(tiny_checkpoints, tmp_path):
    from safetensors.numpy import load_file, save_file

    dst = shutil.copytree(tiny_checkpoints["llama"], tmp_path / "ckpt")
    tensors = load_file(dst / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, dst / "model.safetensors")
    with pytest.raises(CheckpointError, match="lacks tensor 'layers.1.mlp.up_proj.weight'"):
        load(str(dst), with_tokenizer=False)


def test_file_that_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError, match="neither a checkpoint directory nor a .gguf"):
        load(str(bad))


def test_invalid_config_values():
    with pytest.raises(ValueError, match="not a multiple of num_kv_heads"):
        ModelConfig(
            family="llama",
            vocab_size=10,
            hidden_size=8,
            num_layers=1,
            num_heads=3,
            num_kv_heads=2,
            head_dim=4,
            intermediate_size=8,
            max_position_embeddings=16,
        )


def test_smollm2_config_from_gguf(smollm2):
    model, tokenizer = smollm2
    c = model.config
    assert (c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) == (
        576,
        30,
        9,
        3,
        64,
    )
    assert (c.vocab_size, c.rope_theta, c.tie_embeddings) == (49152, 100000.0, True)
    assert tokenizer.eos_token_id == 2


def same_tokenizer(a, b) -> None:
    """Two tokenizers agree on text, special tokens and the chat template."""
    texts = ["name : The Eagle | eatType : coffee shop", "Ünïcode  spaces\n\tand tabs", ""]
    assert [a(t)["input_ids"] for t in texts] == [b(t)["input_ids"] for t in texts]
    assert (len(a), a.eos_token_id, a.bos_token_id, a.pad_token_id) == (
        len(b),
        b.eos_token_id,
        b.bos_token_id,
        b.pad_token_id,
    )
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    assert a.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == (
        b.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    )


def test_gguf_tokenizer_is_converted_once_then_read_from_the_cache(smollm2):
    """The session's SmolLM2 load left its converted tokenizer in prefix_jax's cache (this
    run's own); reading it back gives the tokenizer the load returned."""
    from prefix_jax.models.pretrained import load_tokenizer
    from prefix_jax.models.tokenizer_cache import cache_root

    (source,) = (cache_root() / "tokenizers").glob("*/source.txt")
    assert str(resolve("smollm2")) in source.read_text()
    same_tokenizer(load_tokenizer(resolve("smollm2")), smollm2[1])


def _is_memory_map(a: np.ndarray) -> bool:
    while a is not None:
        if isinstance(a, np.memmap):
            return True
        a = a.base
    return False


def test_safetensors_are_mapped_and_read_slice_by_slice(tiny_checkpoints, tmp_path):
    """A bf16 checkpoint: the name map yields views of the mapped file (no host copy), and
    the loaded float32 weights are exactly the checkpoint's, in our layout."""
    import safetensors.torch
    import torch

    from prefix_jax.models.weights import StackedLayers, map_safetensors, read_hf_dir

    bf16 = tmp_path / "bf16"
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_checkpoints["llama"])
    hf.to(torch.bfloat16).save_pretrained(bf16)
    mapped = map_safetensors(bf16 / "model.safetensors")
    reference = safetensors.torch.load_file(bf16 / "model.safetensors")
    assert mapped.keys() == reference.keys()
    for name, tensor in reference.items():
        assert _is_memory_map(mapped[name])
        np.testing.assert_array_equal(np.asarray(mapped[name], np.float32), tensor.float().numpy())

    _, tensors = read_hf_dir(bf16)
    q = tensors["layers.q"]
    assert isinstance(q, StackedLayers) and all(_is_memory_map(p) for p in q.parts)
    model, _ = load(str(bf16), with_tokenizer=False)
    layer1_q = reference["model.layers.1.self_attn.q_proj.weight"].float().numpy()
    heads = model.config.num_heads
    expected = layer1_q.T.reshape(model.config.hidden_size, heads, -1)
    np.testing.assert_array_equal(np.asarray(model.layers.q[...][1]), expected)
    o = reference["model.layers.0.self_attn.o_proj.weight"].float().numpy()
    np.testing.assert_array_equal(
        np.asarray(model.layers.o[...][0]), o.T.reshape(heads, -1, model.config.hidden_size)
    )
    # A slice of layers reads just those layers.
    assert q[1:3, :4].shape == (2, 4, *q.shape[2:])


def test_truncated_safetensors_file_is_named(tmp_path):
    from prefix_jax.models.weights import map_safetensors

    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x05")
    with pytest.raises(CheckpointError, match="is not a safetensors file"):
        map_safetensors(bad)


def _write_qwen3_gguf(hf_dir, path) -> None:
    """The tiny Qwen3 as a float32 GGUF, tensor and metadata names from the gguf package's
    own tables (what llama.cpp writes), weights in their PyTorch layout."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((hf_dir / "config.json").read_text())
    tensors = load_file(hf_dir / "model.safetensors")
    arch = gguf.MODEL_ARCH.QWEN3
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
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    names = gguf.TENSOR_NAMES
    hf_names = {
        gguf.MODEL_TENSOR.ATTN_NORM: "input_layernorm",
        gguf.MODEL_TENSOR.ATTN_Q: "self_attn.q_proj",
        gguf.MODEL_TENSOR.ATTN_Q_NORM: "self_attn.q_norm",
        gguf.MODEL_TENSOR.ATTN_K: "self_attn.k_proj",
        gguf.MODEL_TENSOR.ATTN_K_NORM: "self_attn.k_norm",
        gguf.MODEL_TENSOR.ATTN_V: "self_attn.v_proj",
        gguf.MODEL_TENSOR.ATTN_OUT: "self_attn.o_proj",
        gguf.MODEL_TENSOR.FFN_NORM: "post_attention_layernorm",
        gguf.MODEL_TENSOR.FFN_GATE: "mlp.gate_proj",
        gguf.MODEL_TENSOR.FFN_UP: "mlp.up_proj",
        gguf.MODEL_TENSOR.FFN_DOWN: "mlp.down_proj",
    }
    writer.add_tensor(
        names[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight", tensors["model.embed_tokens.weight"]
    )
    writer.add_tensor(
        names[gguf.MODEL_TENSOR.OUTPUT_NORM] + ".weight", tensors["model.norm.weight"]
    )
    for i in range(config["num_hidden_layers"]):
        for tensor, hf in hf_names.items():
            weight = tensors[f"model.layers.{i}.{hf}.weight"]
            writer.add_tensor(names[tensor].format(bid=i) + ".weight", weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_qwen3_gguf_loads_like_its_hf_checkpoint(tiny_checkpoints, tmp_path):
    hf_dir = tiny_checkpoints["qwen3"]
    path = tmp_path / "tiny-qwen3.gguf"
    _write_qwen3_gguf(hf_dir, path)
    from_gguf, _ = load(str(path), with_tokenizer=False)
    from_hf, _ = load(str(hf_dir), with_tokenizer=False)
    assert from_gguf.config.qk_norm and from_gguf.config.tie_embeddings
    assert from_gguf.config.head_dim == from_hf.config.head_dim == 16
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 97, (2, 7)))
    np.testing.assert_allclose(from_gguf(tokens)[0], from_hf(tokens)[0], atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_model_only_directory_names_the_missing_tokenizer(tiny_checkpoints, kind):
    """`save_pretrained` of a model alone writes weights and config, no tokenizer: loading
    it with a tokenizer says so (not transformers' backend error, not an empty tokenizer)."""
    path = tiny_checkpoints[kind]
    assert not any(f.name.startswith(("tokenizer", "vocab")) for f in path.iterdir())
    with pytest.raises(
        CheckpointError, match=r"has no tokenizer files.*tokenizer=.*with_tokenizer"
    ):
        load(str(path))
    model, tokenizer = load(str(path), with_tokenizer=False)
    assert tokenizer is None and model.config.family == kind


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_model_only_directory_takes_a_given_tokenizer(tiny_checkpoints, tmp_path, kind):
    from conftest import word_tokenizer

    tokenizer = word_tokenizer(["hello", "world"], "$A </s>")
    saved = tmp_path / "tokenizer"
    tokenizer.save_pretrained(saved)
    path = str(tiny_checkpoints[kind])
    for given in (tokenizer, str(saved)):
        _, got = load(path, tokenizer=given)
        assert got("hello world")["input_ids"] == [4, 5, 1]


def test_one_catalog_serves_both_names(smollm2):
    """`smollm2` (configs, benches) and `smollm2-135m` (the AOT table) are one entry: the
    same weights, and shapes that match the weights."""
    from prefix_jax.models.catalog import model_config

    assert resolve("smollm2") == resolve("smollm2-135m") == resolve("SmolLM2")
    shapes, loaded = model_config("smollm2"), smollm2[0].config
    fields = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "vocab_size")
    assert [getattr(shapes, f) for f in fields] == [getattr(loaded, f) for f in fields]
    assert model_config("smollm2") == model_config("smollm2-135m")


def test_shape_only_catalog_name_says_how_to_load():
    with pytest.raises(CheckpointError, match="catalog for its shapes only"):
        load("llama-3-8b")
