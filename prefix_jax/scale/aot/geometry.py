"""What one step of each model kind touches: the one place the two kinds differ.

For the analytic floors and FLOPs a decoder-only model and an encoder-decoder differ only
in the stacks of layers a row passes through (how many positions each projects and how
many keys each attention reads) and in what a cached decoding step reads. `train_shape`
and `decode_shape` say that once per kind, so `floors` and `flops` hold one formula each.
"""

from __future__ import annotations

import dataclasses

from prefix_jax.models.config import ModelConfig
from prefix_jax.models.seq2seq_config import Seq2SeqConfig


def is_encoder_decoder(c: ModelConfig | Seq2SeqConfig) -> bool:
    return isinstance(c, Seq2SeqConfig)


@dataclasses.dataclass(frozen=True)
class Stack:
    """Layers of one kind that each row of a train step passes through."""

    layers: int
    positions: int  # positions per row that every layer projects
    weights: int  # matmul weights one position meets in one layer
    keys: tuple[int, ...] = ()  # per attention in a layer: the keys each query reads


@dataclasses.dataclass(frozen=True)
class TrainShape:
    """One row of a train step: its stacks, what full remat saves, what is scored."""

    stacks: tuple[Stack, ...]
    saved_positions: int  # layer inputs kept for the backward pass, all layers together
    scored: int  # positions whose logits are computed


def train_shape(
    c: ModelConfig | Seq2SeqConfig,
    length: int,
    *,
    target_length: int | None = None,
    extra_tokens: int = 0,
    prefix_length: int = 0,
) -> TrainShape:
    """A row of `length` tokens (an encoder-decoder's source; its target has `target_length`,
    default `length`) with `extra_tokens` input embeddings in front (a soft prompt, on the
    encoder's side) and `prefix_length` extra keys in every attention (a prefix)."""
    d, mlp = c.hidden_size, c.hidden_size * c.intermediate_size * (3 if c.gated_mlp else 2)
    if not is_encoder_decoder(c):
        seq = length + extra_tokens
        per_layer = d * (2 * c.num_heads * c.head_dim + 2 * c.kv_dim) + mlp
        stack = Stack(c.num_layers, seq, per_layer, (seq + prefix_length,))
        return TrainShape((stack,), c.num_layers * seq, seq)
    S, T, p = length + extra_tokens, target_length or length, prefix_length
    attn = c.num_heads * c.head_dim
    projections = 4 * d * attn
    stacks = (
        Stack(c.num_encoder_layers, S, projections + mlp, (p + S,)),
        Stack(c.num_decoder_layers, T, projections + 2 * d * attn + mlp, (p + T, p + S)),
        Stack(c.num_decoder_layers, S, 2 * d * attn),  # cross keys/values of the sources
    )
    # Both stacks' layer inputs, and the encoder output every cross-attention reads.
    saved = c.num_encoder_layers * S + c.num_decoder_layers * T + S
    return TrainShape(stacks, saved, T)


@dataclasses.dataclass(frozen=True)
class DecodeShape:
    """One cached decoding step of one row."""

    layers: int  # layers that attend over the cache
    weights: int  # weights the step multiplies by
    slots: int  # cached keys one layer's queries read, all its attentions together
    kv_heads: int
    kv_dim: int  # width of one cached key (or value)


def decoding_weights(c: ModelConfig | Seq2SeqConfig) -> int:
    """Weights one cached decoding step reads. An encoder-decoder's: the decoder's layers
    but for the cross keys and values projections (their outputs are cached), and the
    vocabulary once."""
    if not is_encoder_decoder(c):
        return c.num_params()
    cross_kv = 2 * c.hidden_size * c.num_heads * c.head_dim
    layer = c.layer_params(cross=True) - cross_kv
    return c.num_decoder_layers * layer + c.vocab_size * c.hidden_size


def decode_shape(
    c: ModelConfig | Seq2SeqConfig,
    cache_length: int,
    *,
    source_length: int | None = None,
    prefix_length: int = 0,
) -> DecodeShape:
    """A step with `cache_length` cached positions after a `prefix_length` prefix; an
    encoder-decoder's layers also hold cross keys/values of the cross prefix and
    `source_length` encoded source tokens."""
    slots = prefix_length + cache_length
    if not is_encoder_decoder(c):
        return DecodeShape(c.num_layers, decoding_weights(c), slots, c.num_kv_heads, c.kv_dim)
    if source_length is None:
        raise ValueError("an encoder-decoder's decode step needs source_length")
    slots += prefix_length + source_length
    return DecodeShape(c.num_decoder_layers, decoding_weights(c), slots, c.num_heads, c.kv_dim)
