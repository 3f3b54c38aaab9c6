"""Meshes and logical-axis rules on 8 simulated CPU devices (set up in conftest.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from jax.sharding import PartitionSpec as P

from prefix_jax.data.tokens import left_pad
from prefix_jax.infer.decode import beam_search, greedy
from prefix_jax.methods import PrefixConfig, PrefixLM, PrefixParam, create_prefix
from prefix_jax.models import load
from prefix_jax.scale import sharding
from prefix_jax.train.step import OptimConfig, Trainer, make_optimizer

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)]

pytestmark = pytest.mark.skipif(
    jax.device_count() < 8, reason="needs 8 devices (conftest sets jax_num_cpu_devices=8)"
)


@pytest.fixture(scope="module")
def shardable_checkpoint(tmp_path_factory):
    """A tiny GQA Llama whose heads, MLP and vocab divide by 8 (kv heads 4 do not)."""
    import torch

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    path = tmp_path_factory.mktemp("shardable") / "llama"
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


def mesh_of(shape):
    return sharding.make_mesh(list(zip(sharding.MESH_AXES, shape, strict=True)))


def batch(vocab, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab, (8, 12))
    mask = np.ones((8, 12), bool)
    mask[::3, 9:] = False  # some right padding
    loss_mask = mask.copy()
    loss_mask[:, :3] = False
    return {
        "tokens": jnp.asarray(tokens, jnp.int32),
        "attention_mask": jnp.asarray(mask),
        "loss_mask": jnp.asarray(loss_mask, jnp.int32),
    }


def run_steps(path, mesh=None, steps=3):
    model, _ = load(path, with_tokenizer=False, mesh=mesh)
    prefix, _ = create_prefix(model, PrefixConfig(length=4, reparam="mlp", hidden=32))
    # Adam's normalized update turns reduction-order noise in tiny gradients into steps of
    # about lr; 1e-3 keeps that under the 1e-5 tolerance.
    tx = make_optimizer(OptimConfig(learning_rate=1e-3), PrefixParam)
    trainer = Trainer(PrefixLM(model, prefix), tx, PrefixParam, mesh=mesh)
    data = batch(model.config.vocab_size)
    if mesh is not None:
        data = sharding.global_batch({k: np.asarray(v) for k, v in data.items()}, mesh)
    losses = [float(trainer.step(data, jax.random.key(0))["loss"]) for _ in range(steps)]
    table = np.asarray(trainer.model().prefix.table())
    return losses, table, model, trainer


@pytest.fixture(scope="module")
def reference(shardable_checkpoint):
    losses, table, _, _ = run_steps(shardable_checkpoint, mesh=None)
    assert losses[2] < losses[0]  # the steps do train the prefix
    return losses, table


@pytest.mark.parametrize("shape", MESHES)
def test_sharded_steps_match_one_device(shardable_checkpoint, reference, shape):
    mesh = mesh_of(shape)
    losses, table, model, trainer = run_steps(shardable_checkpoint, mesh)
    np.testing.assert_allclose(losses, reference[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(table, reference[1], rtol=0, atol=1e-5)

    data, fsdp, tensor = shape
    want_tensor = "tensor" if tensor > 1 else None
    want_fsdp = "fsdp" if fsdp > 1 else None
    assert model.layers.q[...].sharding.spec == P(None, want_fsdp, want_tensor, None)
    # 4 kv heads cannot split 8 ways: replicated on that axis, by rule.
    kv_axis = want_tensor if tensor in (1, 2) else None
    assert model.layers.k[...].sharding.spec == P(None, want_fsdp, kv_axis, None)
    assert model.layers.down[...].sharding.spec == P(None, want_tensor, want_fsdp)
    assert model.lm_head[...].sharding.spec == P(want_fsdp, want_tensor)
    # The prefix's last layer (its layers x 2 x kv_dim width) and that layer's gradient
    # moments are split over fsdp like the weights; the rest of the prefix is replicated.
    width = trainer.model().prefix.w2[...].shape[1]
    split = 0
    for leaf in jax.tree.leaves(trainer.state):
        spec = tuple(leaf.sharding.spec) + (None,) * (leaf.ndim - len(leaf.sharding.spec))
        if leaf.ndim and leaf.shape[-1] == width:
            assert spec == (None,) * (leaf.ndim - 1) + (want_fsdp,)
            split += 1
        else:
            assert leaf.sharding.is_fully_replicated
    assert split == 2 * 3  # w2 and b2: parameter, Adam's two moments


def test_sharded_decoding_equals_unsharded(shardable_checkpoint):
    plain, _ = load(shardable_checkpoint, with_tokenizer=False)
    sharded, _ = load(shardable_checkpoint, with_tokenizer=False, mesh=mesh_of((2, 2, 2)))
    prefix, _ = create_prefix(plain, PrefixConfig(length=3, reparam="none", init_scale=0.5))
    kv = prefix()
    tokens, mask = left_pad([[5, 9, 3, 7], [11, 2], [4, 4, 4], [1]], pad_id=0)
    for fn, kwargs in ((greedy, {}), (beam_search, {"beam_size": 3})):
        a = fn(plain, tokens, mask, max_new_tokens=6, prefix=kv, **kwargs)
        b = fn(sharded, tokens, mask, max_new_tokens=6, prefix=kv, **kwargs)
        a, b = (x[0] if isinstance(x, tuple) else x for x in (a, b))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    "shape",
    [(2, 2, 2), pytest.param((1, 8, 1), marks=pytest.mark.slow)],  # 2x2x2: every axis
)
def test_flash_attention_sharded_equals_dense(shardable_checkpoint, shape, monkeypatch):
    """The blockwise kernel under a mesh (tiles of 8, so rows span several) against the
    dense kernel on one device: logits and the prefix's gradients."""
    from prefix_jax.models import attention

    monkeypatch.setattr(attention, "FLASH_BLOCK", 8)
    plain, _ = load(shardable_checkpoint, with_tokenizer=False, attention="xla")
    sharded, _ = load(
        shardable_checkpoint, with_tokenizer=False, mesh=mesh_of(shape), attention="flash"
    )
    prefix, _ = create_prefix(plain, PrefixConfig(length=3, reparam="none", init_scale=0.5))
    kv, data = prefix(), batch(128)

    def loss(keys_values, model):
        given = kv.replace(keys=keys_values[0], values=keys_values[1])
        logits, _ = model(data["tokens"], data["attention_mask"], prefix=given)
        return (jax.nn.log_softmax(logits)[..., 3] * data["attention_mask"]).sum(), logits

    grad = jax.value_and_grad(loss, has_aux=True)
    (_, want), want_grad = grad((kv.keys, kv.values), plain)
    (_, got), got_grad = grad((kv.keys, kv.values), sharded)
    real = np.asarray(data["attention_mask"])[..., None]
    np.testing.assert_allclose(np.asarray(got) * real, np.asarray(want) * real, atol=1e-5)
    for a, b in zip(got_grad, want_grad, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_mesh_errors():
    with pytest.raises(ValueError, match="needs 12 devices, but there are 8"):
        sharding.make_mesh([("data", 3), ("fsdp", 4)])
    with pytest.raises(ValueError, match="does not divide 8 devices"):
        sharding.make_mesh([("data", -1), ("fsdp", 3)])
    with pytest.raises(ValueError, match="distinct names"):
        sharding.make_mesh([("data", 8), ("model", 1)])
    mesh = mesh_of((8, 1, 1))
    with pytest.raises(ValueError, match="names an axis that is not in the mesh"):
        sharding.check_rules([("embed", "expert")], mesh)
    rows = {"tokens": np.zeros((6, 4), np.int32)}
    with pytest.raises(ValueError, match="not divisible by the data-parallel size 8"):
        sharding.global_batch(rows, mesh)


def test_minus_one_takes_the_remaining_devices():
    mesh = sharding.make_mesh([("data", -1), ("fsdp", 2), ("tensor", 1)])
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}


def test_logical_rules_map_axes():
    mesh = mesh_of((2, 2, 2))
    rules = sharding.DEFAULT_RULES
    assert sharding.logical_to_spec(("embed", "vocab"), (64, 128), rules, mesh) == P(
        "fsdp", "tensor"
    )
    # A mesh axis is used once per array; non-divisible dims are replicated.
    assert sharding.logical_to_spec(("heads", "mlp"), (8, 128), rules, mesh) == P("tensor", None)
    assert sharding.logical_to_spec(("kv_heads",), (3,), rules, mesh) == P(None)


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_gives_the_same_step(shardable_checkpoint, policy):
    def one_step(remat):
        model, _ = load(shardable_checkpoint, with_tokenizer=False, remat_policy=remat)
        prefix, _ = create_prefix(model, PrefixConfig(length=4, reparam="mlp", hidden=32))
        tx = make_optimizer(OptimConfig(learning_rate=1e-3), PrefixParam)
        trainer = Trainer(PrefixLM(model, prefix), tx, PrefixParam)
        metrics = trainer.step(batch(model.config.vocab_size), jax.random.key(0))
        return float(metrics["grad_norm"]), np.asarray(trainer.model().prefix.table())

    (norm_a, table_a), (norm_b, table_b) = one_step(None), one_step(policy)
    assert norm_a == pytest.approx(norm_b, rel=1e-5)
    np.testing.assert_allclose(table_a, table_b, atol=1e-6)


def test_mixed_precision_keeps_prefix_and_optimizer_in_float32(shardable_checkpoint):
    model, _ = load(
        shardable_checkpoint,
        with_tokenizer=False,
        param_dtype=jnp.bfloat16,
        dtype=jnp.bfloat16,
        mesh=mesh_of((2, 4, 1)),
    )
    prefix, _ = create_prefix(model, PrefixConfig(length=4, reparam="mlp", hidden=32))
    tx = make_optimizer(OptimConfig(learning_rate=1e-3), PrefixParam)
    trainer = Trainer(PrefixLM(model, prefix), tx, PrefixParam, mesh=mesh_of((2, 4, 1)))
    data = batch(model.config.vocab_size)
    data = sharding.global_batch({k: np.asarray(v) for k, v in data.items()}, trainer.mesh)
    metrics = trainer.step(data, jax.random.key(0))
    assert np.isfinite(float(metrics["loss"]))
    assert {x.dtype for x in jax.tree.leaves(trainer.frozen)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(trainer.state.params)} == {jnp.dtype(jnp.float32)}
    floats = [x for x in jax.tree.leaves(trainer.state.opt_state) if x.ndim > 0]
    assert floats and {x.dtype for x in floats} == {jnp.dtype(jnp.float32)}
