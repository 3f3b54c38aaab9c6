"""Analytic per-chip memory floors: what a straightforward sharded step must hold.

Beside the compiler's own account (`compile.Memory`), a total far above its floor points at
waste. One formula per step; `geometry` supplies what differs between model kinds.
"""

from __future__ import annotations

import math

from prefix_jax.models.config import ModelConfig
from prefix_jax.models.seq2seq_config import Seq2SeqConfig
from prefix_jax.scale.aot.geometry import decode_shape, train_shape


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
    c: ModelConfig | Seq2SeqConfig,
    mesh_shape: dict[str, int],
    batch: int,
    length: int,
    *,
    trainable_state_bytes: int,
    target_length: int | None = None,
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
    - remat-saved layer inputs of this chip's rows, all layers (an encoder-decoder: both
      stacks, and the encoder output every cross-attention reads);
    - with `dense_attention`, the largest layer's f32 attention scores over its queries and
      keys (each attention reads a p-token prefix), recomputed in its backward pass (fused
      kernels hold one tile instead: a negligible term);
    - f32 logits of this chip's rows (every target position scored).

    For an encoder-decoder `length` is the source's and `target_length` (default: `length`)
    the target's.
    """
    rows = max(batch / _axis(mesh_shape, "data", "fsdp"), 1)
    tensor = _axis(mesh_shape, "tensor")
    shape = train_shape(c, length, target_length=target_length, prefix_length=prefix_length)
    queries_x_keys = max(s.positions * k for s in shape.stacks for k in s.keys)
    scores = rows * c.num_heads / tensor * queries_x_keys * 4
    return {
        "weights shard": c.num_params() * dtype_bytes / _axis(mesh_shape, "fsdp", "tensor"),
        "trainable state": trainable_state_bytes,
        "largest weight gathered": largest_weight(c) * dtype_bytes / tensor,
        "saved layer inputs": shape.saved_positions * rows * c.hidden_size * dtype_bytes,
        "attention scores": scores if dense_attention else 0.0,
        "logits": rows * shape.scored * c.vocab_size / tensor * 4,
    }


def decode_floor(
    c: ModelConfig | Seq2SeqConfig,
    mesh_shape: dict[str, int],
    batch: int,
    cache_length: int,
    *,
    source_length: int | None = None,
    prefix_length: int = 0,
    dtype_bytes: int = 2,
) -> dict[str, float]:
    """Bytes per chip any sharded decode step must hold: the shard of the weights the step
    reads (`geometry.decoding_weights`), the cache's shard (split over batch and kv heads;
    an encoder-decoder's also holds the cross keys/values of the cross prefix and
    `source_length` sources), the largest weight gathered (under FSDP), one step's f32
    logits."""
    rows = max(batch / _axis(mesh_shape, "data", "fsdp"), 1)
    tensor = _axis(mesh_shape, "tensor")
    shape = decode_shape(c, cache_length, source_length=source_length, prefix_length=prefix_length)
    kv_shards = tensor if shape.kv_heads % tensor == 0 else 1
    cache = 2 * shape.layers * rows * shape.slots * shape.kv_dim / kv_shards * dtype_bytes
    fsdp = _axis(mesh_shape, "fsdp")
    return {
        "weights shard": shape.weights * dtype_bytes / (fsdp * tensor),
        "cache shard": cache,
        # Only FSDP gathers a weight; tensor parallelism multiplies by its shard in place.
        "largest weight gathered": largest_weight(c) * dtype_bytes / tensor if fsdp > 1 else 0.0,
        "logits": rows * c.vocab_size / tensor * 4,
    }


def generate_floor(
    c: ModelConfig,
    mesh_shape: dict[str, int],
    slots: int,
    max_len: int,
    *,
    prefix_capacity: int,
    prefix_max_length: int,
    dtype_bytes: int = 2,
) -> dict[str, float]:
    """Bytes per chip the serving engine's generate step must hold: a decode step over
    `slots` rows of `max_len` cached tokens (`decode_floor`; the prefix sits in those
    slots), and the resident prefix table's shard (split over kv heads, like the cache)."""
    floor = decode_floor(c, mesh_shape, slots, max_len, dtype_bytes=dtype_bytes)
    tensor = _axis(mesh_shape, "tensor")
    kv_shards = tensor if c.num_kv_heads % tensor == 0 else 1
    table = 2 * c.num_layers * prefix_capacity * prefix_max_length * c.kv_dim / kv_shards
    return {**floor, "prefix table": table * dtype_bytes}
