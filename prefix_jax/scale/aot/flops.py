"""Analytic FLOPs of a train step and of a decode step (all devices together).

XLA's own `cost_analysis()` counts a scanned layer once, so it cannot stand in for these.
One formula per step; `geometry` supplies what differs between model kinds.
"""

from __future__ import annotations

import ml_collections

from prefix_jax.methods import registry
from prefix_jax.models.config import ModelConfig
from prefix_jax.models.seq2seq_config import Seq2SeqConfig
from prefix_jax.scale.aot.geometry import decode_shape, train_shape


def train_flops(
    c: ModelConfig | Seq2SeqConfig,
    settings: ml_collections.ConfigDict,
    batch: int,
    length: int,
    *,
    target_length: int | None = None,
    remat: bool = False,
) -> float:
    """Analytic FLOPs of one train step of `settings.method`; matmuls and attention.

    Forward: 2 FLOPs per weight per token, plus attention's 4 * queries * keys * heads *
    head_dim per layer and attention. `settings` is the experiment config training takes; its
    method says how many tokens it adds to the (encoder's) input and how many key positions
    to every attention. The backward pass costs one forward for
    the activation gradients (frozen methods) or two (full fine-tuning also builds weight
    gradients); full remat recomputes the forward once more. For an encoder-decoder
    `length` is the source's and `target_length` (default: `length`) the target's.
    """
    method = registry.get(settings.method)
    shape = train_shape(
        c,
        length,
        target_length=target_length,
        extra_tokens=method.extra_input_tokens(settings),
        prefix_length=method.extra_key_positions(settings),
    )
    attn = c.num_heads * c.head_dim
    forward = 2 * batch * shape.scored * c.hidden_size * c.vocab_size
    for s in shape.stacks:
        forward += 2 * batch * s.positions * s.layers * s.weights
        forward += 4 * batch * s.positions * sum(s.keys) * attn * s.layers
    return (3 if method.trains_base_weights else 2) * forward + (forward if remat else 0)


def decode_flops(
    c: ModelConfig | Seq2SeqConfig,
    batch: int,
    cache_length: int,
    *,
    source_length: int | None = None,
    prefix_length: int = 0,
) -> float:
    """Analytic FLOPs of one decode step: 2 per weight the step reads per row, attention
    over the cached keys (`geometry.decode_shape`) in every layer."""
    shape = decode_shape(c, cache_length, source_length=source_length, prefix_length=prefix_length)
    attention = 4 * batch * shape.slots * c.num_heads * c.head_dim * shape.layers
    return 2 * batch * shape.weights + attention
