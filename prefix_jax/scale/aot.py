"""Ahead-of-time fit checks: compile the real train and decode steps for a device topology.

Nothing is allocated and no weights are read: the model is built from its config as shapes
(`pretrained.abstract_model`), the step is lowered with abstract, sharded arguments, and XLA
compiles it for the target devices:
- a TPU slice, through libtpu's compiler on any machine (`pip install -e .[tpu]`;
  `jax.experimental.topologies` gives abstract chips, as MaxText's `train_compile.py`);
- N CPU devices of this process (`cpu-N`; the process must be started with
  `jax_num_cpu_devices >= N`).

`compiled.memory_analysis()` is the compiler's own per-device account of arguments,
outputs and temporaries; next to it `train_floor` / `decode_floor` estimate what a
straightforward sharded implementation of the same step must hold per chip, so that a
total far above its floor points at waste.
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
from prefix_jax.models.config import ModelConfig
from prefix_jax.models.kv import CACHE_AXES, KVCache, PrefixKV, Seq2SeqCache
from prefix_jax.models.pretrained import abstract_model
from prefix_jax.models.seq2seq import EncoderDecoder
from prefix_jax.models.seq2seq_config import Seq2SeqConfig
from prefix_jax.models.transformer import Transformer
from prefix_jax.scale import sharding
from prefix_jax.train.assemble import build_method
from prefix_jax.train.step import (
    OptimConfig,
    Trainer,
    make_optimizer,
    seq2seq_loss,
    with_shardings,
)

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Topology:
    """A device slice to compile for. `hbm_bytes` is per chip (None: not a TPU)."""

    name: str
    platform: str  # "tpu" | "cpu"
    chips: int
    topology_name: str = ""
    chip_config: str = "default"
    hbm_bytes: int | None = None


def _tpu(name: str, topology_name: str, chips: int, hbm_gib: float, megacore: bool) -> Topology:
    return Topology(
        name=name,
        platform="tpu",
        chips=chips,
        topology_name=topology_name,
        chip_config="megacore" if megacore else "default",
        hbm_bytes=int(hbm_gib * GiB),
    )


# Google's slice names: v5e-N and v6e-N have N chips; v4-N and v5p-N count TensorCores,
# two per chip (Cloud TPU system architecture docs; MaxText's accelerator_to_spec_map).
# HBM per chip: v5e 16 GiB, of which the runtime lets XLA use 15.75; v4 32; v5p 95; v6e 32.
TOPOLOGIES: dict[str, Topology] = {
    t.name: t
    for t in (
        _tpu("v5e-4", "v5e:2x2", 4, 15.75, False),
        _tpu("v5e-8", "v5e:2x4", 8, 15.75, False),
        _tpu("v5e-16", "v5e:4x4", 16, 15.75, False),
        _tpu("v5e-64", "v5e:8x8", 64, 15.75, False),
        _tpu("v5e-256", "v5e:16x16", 256, 15.75, False),
        _tpu("v4-8", "v4:2x2x1", 4, 32, True),
        _tpu("v5p-8", "v5:2x2x1", 4, 95, True),
        _tpu("v5p-128", "v5:4x4x4", 64, 95, True),
        _tpu("v5p-256", "v5:4x4x8", 128, 95, True),
        _tpu("v5p-512", "v5:4x8x8", 256, 95, True),
        _tpu("v6e-256", "v6e:16x16", 256, 32, False),
    )
}


def topology(name: str) -> Topology:
    """A known TPU slice (`v5e-256`, ...) or `cpu-N` (N devices of this process)."""
    if name in TOPOLOGIES:
        return TOPOLOGIES[name]
    if name.startswith("cpu-") and name[4:].isdigit() and int(name[4:]) > 0:
        return Topology(name=name, platform="cpu", chips=int(name[4:]))
    raise ValueError(
        f"unknown topology {name!r}; known: {', '.join(TOPOLOGIES)}, or cpu-N for N CPU devices"
    )


def devices(topo: Topology) -> list:
    """The (abstract, for TPU) devices of `topo`; TPU needs libtpu installed."""
    if topo.platform == "cpu":
        available = jax.devices("cpu")
        if len(available) < topo.chips:
            raise ValueError(
                f"{topo.name} needs {topo.chips} CPU devices but this process has "
                f"{len(available)}: set jax.config.update('jax_num_cpu_devices', {topo.chips}) "
                "before JAX starts"
            )
        return available[: topo.chips]
    try:
        from jax.experimental import topologies
    except ImportError as e:  # pragma: no cover - part of jax
        raise RuntimeError("jax.experimental.topologies is unavailable") from e
    try:
        desc = topologies.get_topology_desc(
            topology_name=topo.topology_name,
            platform="tpu",
            chip_config_name=topo.chip_config,
            chips_per_host_bounds=(2, 2, 1),
            num_slices=1,
        )
    except Exception as e:  # libtpu missing or too old: say how to get it
        raise RuntimeError(
            f"cannot build TPU topology {topo.topology_name!r} ({e}); the TPU compiler comes "
            "with libtpu: pip install -e '.[tpu]'"
        ) from e
    found = list(desc.devices)
    if len(found) != topo.chips:
        raise RuntimeError(f"{topo.topology_name} gave {len(found)} devices, not {topo.chips}")
    return found


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
        lm, found["trainable"], _ = build_method(settings, base, None)
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
    seq2seq = isinstance(config, Seq2SeqConfig)
    loss_fn = seq2seq_loss if seq2seq else None
    trainer = Trainer(lm, tx, trainable, loss_fn=loss_fn, mesh=mesh, rules=rules)
    state_bytes = shard_bytes(trainer.state) + shard_bytes(trainer.state.params)
    if seq2seq:
        target_length = target_length or length
    shapes = abstract_batch(batch, length, mesh, target_length if seq2seq else None)
    return compile_fit(trainer.lower_step(shapes), state_bytes)


def compile_decode_step(
    config: ModelConfig,
    mesh: Mesh,
    batch: int,
    cache_length: int,
    *,
    prefix_length: int = 10,
    rules=sharding.DEFAULT_RULES,
    param_dtype=jnp.bfloat16,
    dtype=jnp.bfloat16,
    attention: str = "auto",
) -> Fit:
    """One step of `decode.greedy` (the prefix already in the cache, as greedy puts it)."""
    model = abstract_model(
        config, param_dtype=param_dtype, dtype=dtype, mesh=mesh, rules=rules, attention=attention
    )
    return _compile_cached_step(
        model,
        mesh,
        rules,
        batch,
        lambda m: m.init_cache(batch, prefix_length + cache_length),
        lambda cache, where: _kv_cache_sharding(cache, where, mesh),
        decode.decode_step,
    )


def compile_seq2seq_decode_step(
    config: Seq2SeqConfig,
    mesh: Mesh,
    batch: int,
    cache_length: int,
    source_length: int,
    *,
    prefix_length: int = 10,
    rules=sharding.DEFAULT_RULES,
    param_dtype=jnp.bfloat16,
    dtype=jnp.bfloat16,
    attention: str = "auto",
) -> Fit:
    """One step of `seq2seq_decode.greedy_seq2seq` once the sources are encoded: the cache
    holds the decoder prefix and `cache_length` target slots, and every decoder layer's
    cross keys/values of the cross prefix and `source_length` encoder states."""
    model = abstract_model(
        config, param_dtype=param_dtype, dtype=dtype, mesh=mesh, rules=rules, attention=attention
    )
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

    return _compile_cached_step(
        model, mesh, rules, batch, empty_cache, shardings, seq2seq_decode.decoder_step
    )


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


# --- analytic floors ----------------------------------------------------------------------


def _axis(mesh_shape: dict[str, int], *names: str) -> int:
    return math.prod(mesh_shape.get(n, 1) for n in names)


def largest_weight(c: ModelConfig | Seq2SeqConfig) -> int:
    """Elements of the largest single weight matrix (one layer's MLP or attention, or the
    vocabulary projection)."""
    d = c.hidden_size
    return max(
        d * c.intermediate_size,
        d * c.num_heads * c.head_dim,
        c.vocab_size * d,
    )


def train_floor(
    c: ModelConfig,
    mesh_shape: dict[str, int],
    batch: int,
    length: int,
    *,
    trainable_state_bytes: int,
    prefix_length: int = 0,
    dtype_bytes: int = 2,
    dense_attention: bool = True,
) -> dict[str, float]:
    """Bytes per chip a plain FSDP/TP train step with full remat holds
    at its peak: terms resident throughout, or live together in the backward pass of the
    last layer. An estimate, not a proof: XLA can go a little below it (measured 0.8-0.99x
    on small steps) by fusing the loss over the vocabulary or by computing the vocabulary
    projection without gathering it whole.

    - the frozen weights' shard, and the trainable state's shard (params, gradients and
      optimizer state, as `compile_train_step` reports it);
    - the largest weight matrix, gathered (FSDP must assemble a weight to multiply by it);
    - remat-saved layer inputs of this chip's rows, all layers;
    - with `dense_attention`, one layer's f32 attention scores over p + T keys, recomputed in
      its backward pass (fused kernels hold one tile instead: a negligible term);
    - f32 logits of this chip's rows (every position scored).
    """
    rows = max(batch / _axis(mesh_shape, "data", "fsdp"), 1)
    tensor = _axis(mesh_shape, "tensor")
    model_shards = _axis(mesh_shape, "fsdp", "tensor")
    d, heads, v = c.hidden_size, c.num_heads, c.vocab_size
    scores = rows * heads / tensor * length * (prefix_length + length) * 4
    return {
        "weights shard": c.num_params() * dtype_bytes / model_shards,
        "trainable state": trainable_state_bytes,
        "largest weight gathered": largest_weight(c) * dtype_bytes / tensor,
        "saved layer inputs": c.num_layers * rows * length * d * dtype_bytes,
        "attention scores": scores if dense_attention else 0.0,
        "logits": rows * length * v / tensor * 4,
    }


def seq2seq_train_floor(
    c: Seq2SeqConfig,
    mesh_shape: dict[str, int],
    batch: int,
    source_length: int,
    target_length: int,
    *,
    trainable_state_bytes: int,
    prefix_length: int = 0,
    dtype_bytes: int = 2,
    dense_attention: bool = True,
) -> dict[str, float]:
    """`train_floor` for an encoder-decoder: layer inputs saved in both stacks (and the
    encoder output every cross-attention reads), the largest layer's f32 attention scores
    (encoder self, decoder self or cross, each over a p-token prefix) and the targets'
    logits."""
    rows = max(batch / _axis(mesh_shape, "data", "fsdp"), 1)
    tensor = _axis(mesh_shape, "tensor")
    S, T, p, d = source_length, target_length, prefix_length, c.hidden_size
    keys_x_queries = max(S * (p + S), T * (p + T), T * (p + S))
    saved = c.num_encoder_layers * S + c.num_decoder_layers * T + S
    return {
        "weights shard": c.num_params() * dtype_bytes / _axis(mesh_shape, "fsdp", "tensor"),
        "trainable state": trainable_state_bytes,
        "largest weight gathered": largest_weight(c) * dtype_bytes / tensor,
        "saved layer inputs": saved * rows * d * dtype_bytes,
        "attention scores": rows * c.num_heads / tensor * keys_x_queries * 4
        if dense_attention
        else 0.0,
        "logits": rows * T * c.vocab_size / tensor * 4,
    }


def decode_floor(
    c: ModelConfig,
    mesh_shape: dict[str, int],
    batch: int,
    cache_length: int,
    *,
    prefix_length: int = 0,
    dtype_bytes: int = 2,
) -> dict[str, float]:
    """Bytes per chip any sharded decode step must hold: the weight shard, the cache's shard
    (split over batch and kv heads), the largest weight gathered, one step's f32 logits."""
    rows = max(batch / _axis(mesh_shape, "data", "fsdp"), 1)
    tensor = _axis(mesh_shape, "tensor")
    kv_shards = tensor if c.num_kv_heads % tensor == 0 else 1
    slots = prefix_length + cache_length
    return {
        "weights shard": c.num_params() * dtype_bytes / _axis(mesh_shape, "fsdp", "tensor"),
        "cache shard": 2 * c.num_layers * rows * slots * c.kv_dim / kv_shards * dtype_bytes,
        "largest weight gathered": largest_weight(c) * dtype_bytes / tensor,
        "logits": rows * c.vocab_size / tensor * 4,
    }


def seq2seq_step_weights(c: Seq2SeqConfig) -> int:
    """Weights one cached decoding step reads: the decoder's layers but for the cross keys
    and values projections (their outputs are cached), and the vocabulary once."""
    cross_kv = 2 * c.hidden_size * c.num_heads * c.head_dim
    layer = c.layer_params(cross=True) - cross_kv
    return c.num_decoder_layers * layer + c.vocab_size * c.hidden_size


def seq2seq_decode_floor(
    c: Seq2SeqConfig,
    mesh_shape: dict[str, int],
    batch: int,
    cache_length: int,
    source_length: int,
    *,
    prefix_length: int = 0,
    dtype_bytes: int = 2,
) -> dict[str, float]:
    """`decode_floor` of an encoder-decoder: the weights a decoding step reads
    (`seq2seq_step_weights`), the decoder's self-attention cache (prefix and targets) and its
    cross keys/values (cross prefix and sources)."""
    rows = max(batch / _axis(mesh_shape, "data", "fsdp"), 1)
    tensor = _axis(mesh_shape, "tensor")
    heads = tensor if c.num_heads % tensor == 0 else 1
    slots = 2 * prefix_length + cache_length + source_length
    per_slot = 2 * c.num_decoder_layers * rows * c.num_heads * c.head_dim / heads
    return {
        "weights shard": seq2seq_step_weights(c)
        * dtype_bytes
        / _axis(mesh_shape, "fsdp", "tensor"),
        "cache shard": per_slot * slots * dtype_bytes,
        "largest weight gathered": largest_weight(c) * dtype_bytes / tensor,
        "logits": rows * c.vocab_size / tensor * 4,
    }


def train_flops(
    c: ModelConfig,
    method: str,
    batch: int,
    length: int,
    *,
    virtual_tokens: int = 0,
    remat: bool = False,
) -> float:
    """Analytic FLOPs of one train step (all devices together); matmuls and attention.

    Forward: 2 FLOPs per weight per token, plus attention's 4 * T * keys * heads * head_dim
    per layer. The backward pass costs one forward for the activation gradients (frozen
    methods) or two (full fine-tuning also builds weight gradients); full remat recomputes
    the forward once more. XLA's own `cost_analysis()` counts a scanned layer once, so it
    cannot stand in for this.
    """
    seq = length + (virtual_tokens if method == "prompt" else 0)
    keys = seq + (virtual_tokens if method == "prefix" else 0)
    tokens = batch * seq
    per_layer = c.hidden_size * (2 * c.num_heads * c.head_dim + 2 * c.kv_dim)
    per_layer += c.hidden_size * c.intermediate_size * (3 if c.gated_mlp else 2)
    forward = 2 * tokens * (c.num_layers * per_layer + c.hidden_size * c.vocab_size)
    forward += 4 * tokens * keys * c.num_heads * c.head_dim * c.num_layers
    return (3 if method == "full" else 2) * forward + (forward if remat else 0)


def seq2seq_train_flops(
    c: Seq2SeqConfig,
    batch: int,
    source_length: int,
    target_length: int,
    *,
    prefix_length: int = 0,
    remat: bool = False,
    method: str = "prefix",
) -> float:
    """`train_flops` of an encoder-decoder with prefixes of `prefix_length` in every
    attention (frozen weights: backward = one forward; full fine-tuning: two)."""
    S, T, p, d, f = source_length, target_length, prefix_length, c.hidden_size, c.intermediate_size
    attn_dim = c.num_heads * c.head_dim
    projections = 4 * d * attn_dim
    mlp = d * f * (3 if c.gated_mlp else 2)
    encoder = 2 * batch * S * c.num_encoder_layers * (projections + mlp)
    encoder += 4 * batch * S * (p + S) * attn_dim * c.num_encoder_layers
    decoder = 2 * batch * T * c.num_decoder_layers * (projections + 2 * d * attn_dim + mlp)
    decoder += 2 * batch * S * c.num_decoder_layers * 2 * d * attn_dim  # cross keys/values
    decoder += 4 * batch * T * ((p + T) + (p + S)) * attn_dim * c.num_decoder_layers
    forward = encoder + decoder + 2 * batch * T * d * c.vocab_size
    return (3 if method == "full" else 2) * forward + (forward if remat else 0)


def decode_flops(c: ModelConfig, batch: int, keys: int) -> float:
    """Analytic FLOPs of one decode step: 2 per weight per row, attention over `keys`."""
    return 2 * batch * c.num_params() + 4 * batch * keys * c.num_heads * c.head_dim * c.num_layers


def seq2seq_decode_flops(c: Seq2SeqConfig, batch: int, self_keys: int, cross_keys: int) -> float:
    """Analytic FLOPs of one encoder-decoder decode step: 2 per decoder and vocabulary
    weight per row, attention over `self_keys` and `cross_keys` in every decoder layer."""
    h = c.num_heads * c.head_dim
    return (
        2 * batch * seq2seq_step_weights(c)
        + 4 * batch * (self_keys + cross_keys) * h * c.num_decoder_layers
    )


def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded `jax.ShapeDtypeStruct`s."""
    return int(
        sum(
            math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
            for x in jax.tree.leaves(tree)
            if x.shape and x.sharding is not None
        )
    )
