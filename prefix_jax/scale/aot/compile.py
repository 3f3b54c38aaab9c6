"""Ahead-of-time fit checks: compile the real train and decode steps for a device slice.

Nothing is allocated and no weights are read: the model is built from its config as shapes
(`loading.abstract_model`), the step is lowered with abstract, sharded arguments, and XLA
compiles it for the target devices (`topology.devices`). `compiled.memory_analysis()` is
the compiler's own per-device account of arguments, outputs and temporaries.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prefix_jax.infer import decode, seq2seq_decode
from prefix_jax.methods import registry
from prefix_jax.models.config import ModelConfig
from prefix_jax.models.kv import CACHE_AXES, KVCache, PrefixKV, Seq2SeqCache
from prefix_jax.models.pretrained import abstract_model
from prefix_jax.models.seq2seq import EncoderDecoder
from prefix_jax.models.seq2seq_config import Seq2SeqConfig
from prefix_jax.models.transformer import Transformer
from prefix_jax.scale import sharding
from prefix_jax.scale.aot.geometry import is_encoder_decoder
from prefix_jax.train.step import (
    OptimConfig,
    Trainer,
    make_optimizer,
    seq2seq_loss,
    with_shardings,
)


@dataclasses.dataclass(frozen=True)
class Memory:
    """Per-device bytes from `compiled.memory_analysis()`, and compiled FLOPs per device."""

    arguments: int
    outputs: int
    aliased: int
    temporaries: int
    code: int
    flops: float

    @property
    def total(self) -> int:
        """What the step needs resident at its peak: inputs, new outputs, scratch, code."""
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.code

    @classmethod
    def of(cls, compiled: jax.stages.Compiled) -> Memory:
        m = compiled.memory_analysis()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return cls(
            arguments=m.argument_size_in_bytes,
            outputs=m.output_size_in_bytes,
            aliased=m.alias_size_in_bytes,
            temporaries=m.temp_size_in_bytes,
            code=m.generated_code_size_in_bytes,
            flops=float((cost or {}).get("flops", float("nan"))),
        )


@dataclasses.dataclass(frozen=True)
class Fit:
    """A compiled step's per-device memory, or the compiler's refusal to fit it.

    The TPU compiler refuses a program whose temporaries exceed the chip's HBM; then
    `memory` is None and `refused_temporaries` is the size it named (a lower bound of the
    total). `trainable_state_bytes`: params, gradients and optimizer state per device.
    """

    memory: Memory | None
    refused_temporaries: int = 0
    trainable_state_bytes: int = 0

    @property
    def total(self) -> int:
        return self.memory.total if self.memory else self.refused_temporaries

    @property
    def temporaries(self) -> int:
        return self.memory.temporaries if self.memory else self.refused_temporaries


_REFUSAL = re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT])\) exceeds")


def compile_fit(lowered: jax.stages.Lowered, trainable_state_bytes: int = 0) -> Fit:
    """Compile `lowered` and read its memory; a TPU out-of-memory refusal gives its size."""
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        found = _REFUSAL.search(str(e))
        if not found:
            raise
        scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[found.group(2)]
        return Fit(None, int(float(found.group(1)) * scale), trainable_state_bytes)
    return Fit(Memory.of(compiled), 0, trainable_state_bytes)


def abstract_method_model(
    config: ModelConfig,
    settings: ml_collections.ConfigDict,
    *,
    mesh: Mesh | None,
    rules=sharding.DEFAULT_RULES,
    param_dtype=jnp.bfloat16,
    dtype=jnp.bfloat16,
    remat_policy: str | None = None,
    constrain_activations: bool = True,
    attention: str = "auto",
):
    """(method model made of shapes, its trainable filter): what `train` would build from
    `settings` (an experiment config: `method` and that method's block, e.g. `prefix`).

    `constrain_activations=False` leaves activation layouts to the compiler (as the project
    did before activations carried logical axes): for before/after comparisons.
    """
    found = {}

    def wrap(base: Transformer) -> nnx.Module:
        lm, found["trainable"], _ = registry.get(settings.method).create(base, settings)
        return lm

    lm = abstract_model(
        config,
        param_dtype=param_dtype,
        dtype=dtype,
        remat_policy=remat_policy,
        mesh=mesh,
        rules=rules,
        constrain_activations=constrain_activations,
        wrap=wrap,
        attention=attention,
    )
    return lm, found["trainable"]


def abstract_batch(
    batch: int, length: int, mesh: Mesh | None, target_length: int | None = None
) -> dict[str, jax.ShapeDtypeStruct]:
    """A training batch's shapes (every position scored: the largest logits), sharded.

    With `target_length`, an encoder-decoder's batch: sources of `length` tokens, targets
    of `target_length`.
    """
    where = sharding.batch_sharding(mesh) if mesh is not None else None
    if target_length is None:
        dtypes = {
            "tokens": jnp.int32,
            "attention_mask": jnp.bool_,
            "loss_mask": jnp.int32,
            "score_positions": jnp.int32,
        }
        lengths = dict.fromkeys(dtypes, length)
    else:
        dtypes = {
            "source": jnp.int32,
            "source_mask": jnp.bool_,
            "target": jnp.int32,
            "labels": jnp.int32,
            "target_mask": jnp.bool_,
        }
        lengths = {k: length if k.startswith("source") else target_length for k in dtypes}
    return {
        k: jax.ShapeDtypeStruct((batch, lengths[k]), d, sharding=where) for k, d in dtypes.items()
    }


def compile_train_step(
    config: ModelConfig,
    mesh: Mesh,
    batch: int,
    length: int,
    settings: ml_collections.ConfigDict,
    *,
    rules=sharding.DEFAULT_RULES,
    param_dtype=jnp.bfloat16,
    dtype=jnp.bfloat16,
    remat_policy: str | None = None,
    constrain_activations: bool = True,
    attention: str = "auto",
    target_length: int | None = None,
) -> Fit:
    """The project's own train step (`Trainer`) compiled for `mesh`'s devices; for an
    encoder-decoder, `length` source and `target_length` (default: `length`) target tokens."""
    lm, trainable = abstract_method_model(
        config,
        settings,
        mesh=mesh,
        rules=rules,
        param_dtype=param_dtype,
        dtype=dtype,
        remat_policy=remat_policy,
        constrain_activations=constrain_activations,
        attention=attention,
    )
    tx = make_optimizer(OptimConfig(), trainable)
    seq2seq = is_encoder_decoder(config)
    loss_fn = seq2seq_loss if seq2seq else None
    trainer = Trainer(lm, tx, trainable, loss_fn=loss_fn, mesh=mesh, rules=rules)
    state_bytes = shard_bytes(trainer.state) + shard_bytes(trainer.state.params)
    if seq2seq:
        target_length = target_length or length
    shapes = abstract_batch(batch, length, mesh, target_length if seq2seq else None)
    return compile_fit(trainer.lower_step(shapes), state_bytes)


def compile_decode_step(
    config: ModelConfig | Seq2SeqConfig,
    mesh: Mesh,
    batch: int,
    cache_length: int,
    *,
    source_length: int | None = None,
    prefix_length: int = 10,
    rules=sharding.DEFAULT_RULES,
    param_dtype=jnp.bfloat16,
    dtype=jnp.bfloat16,
    attention: str = "auto",
) -> Fit:
    """One greedy decoding step with the prefix already in the cache (as greedy puts it).

    A decoder's cache holds the prefix and `cache_length` slots. An encoder-decoder's step
    runs once the sources are encoded: its cache holds the decoder prefix and `cache_length`
    target slots, and every decoder layer's cross keys/values of the cross prefix and
    `source_length` encoder states."""
    if is_encoder_decoder(config):
        if source_length is None:
            raise ValueError("an encoder-decoder's decode step needs source_length")
        cache = _seq2seq_cache(
            config, mesh, batch, cache_length, source_length, prefix_length, dtype
        )
    else:
        cache = _decoder_cache(mesh, batch, cache_length, prefix_length)
    model = abstract_model(
        config, param_dtype=param_dtype, dtype=dtype, mesh=mesh, rules=rules, attention=attention
    )
    return _compile_cached_step(model, mesh, rules, batch, *cache)


def _decoder_cache(mesh: Mesh, batch: int, cache_length: int, prefix_length: int):
    """(empty cache, its shardings, step) of a decoder-only model: `decode.decode_step`."""
    return (
        lambda m: m.init_cache(batch, prefix_length + cache_length),
        lambda cache, where: _kv_cache_sharding(cache, where, mesh),
        decode.decode_step,
    )


def _seq2seq_cache(
    config: Seq2SeqConfig,
    mesh: Mesh,
    batch: int,
    cache_length: int,
    source_length: int,
    prefix_length: int,
    dtype,
):
    """(empty cache, its shardings, step) of an encoder-decoder:
    `seq2seq_decode.decoder_step` over self-attention and cross keys/values."""
    shape = (config.num_decoder_layers, 1, prefix_length, config.num_heads, config.head_dim)

    def empty_cache(m: EncoderDecoder) -> Seq2SeqCache:
        prefix = PrefixKV(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
        prefix = prefix if prefix_length else None
        encoded = jnp.zeros((batch, source_length, config.hidden_size), dtype)
        mask = jnp.ones((batch, source_length), bool)
        return m.init_cache(
            encoded, mask, cache_length, cross_prefix=prefix, self_prefix=prefix, dtype=dtype
        )

    def shardings(cache: Seq2SeqCache, where) -> Seq2SeqCache:
        return cache.replace(
            self_attn=_kv_cache_sharding(cache.self_attn, where, mesh),
            cross_keys=where.spec(cache.cross_keys.shape, CACHE_AXES),
            cross_values=where.spec(cache.cross_values.shape, CACHE_AXES),
            cross_valid=where.spec(cache.cross_valid.shape, ("batch", "cache_length")),
        )

    return empty_cache, shardings, seq2seq_decode.decoder_step


def _kv_cache_sharding(cache: KVCache, where, mesh: Mesh) -> KVCache:
    """A self-attention cache split by row (and kv heads), like the activations."""
    return cache.replace(
        keys=where.spec(cache.keys.shape, CACHE_AXES),
        values=where.spec(cache.values.shape, CACHE_AXES),
        valid=where.spec(cache.valid.shape, ("batch", "cache_length")),
        index=NamedSharding(mesh, PartitionSpec()),
        next_position=where.spec(cache.next_position.shape, ("batch",)),
    )


def _compile_cached_step(
    model: nnx.Module,
    mesh: Mesh,
    rules,
    batch: int,
    empty_cache: Callable,
    cache_shardings: Callable,
    decode_step: Callable,
) -> Fit:
    """Compile one greedy step (`decode_step(model, last, cache)`) over the abstract cache
    `empty_cache(model)` placed by `cache_shardings(cache, where)`; the cache is donated."""
    graphdef, state = nnx.split(model)
    where = model.activation_sharding
    state = with_shardings(state, sharding.state_shardings(state, rules, mesh))
    cache = jax.eval_shape(lambda st: empty_cache(nnx.merge(graphdef, st)), state)
    cache_sharding = cache_shardings(cache, where)
    cache = with_shardings(cache, cache_sharding)
    last = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=where.spec((batch,), ("batch",)))

    def step(state, cache, last):
        logits, cache = decode_step(nnx.merge(graphdef, state), last, cache)
        return jnp.argmax(logits, axis=-1).astype(jnp.int32), cache

    jitted = jax.jit(step, out_shardings=(last.sharding, cache_sharding), donate_argnums=(1,))
    return compile_fit(jitted.lower(state, cache, last))


def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded `jax.ShapeDtypeStruct`s."""
    return int(
        sum(
            math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
            for x in jax.tree.leaves(tree)
            if x.shape and x.sharding is not None
        )
    )
