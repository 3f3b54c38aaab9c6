"""Greedy and beam-search decoding for the encoder-decoder (`EncoderDecoder`).

The token loops, options, beam bookkeeping and early stop are `prefix_jax.infer.decode`'s; this
module only supplies the encoder-decoder's start and step. Each decoder is one `jax.jit`:
the source is encoded once, every decoder layer's cross-attention keys/values are computed
once from it (`EncoderDecoder.init_cache`, after the cross prefix), and each step runs the
decoder on one token per row against its self-attention cache, whose first slots hold the
decoder prefix. Generation starts from `decoder_start_id` (the config's by default).

Beams of one source row share its cross-attention keys/values: they are copied k times once,
and only the self-attention cache is reordered after each step.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from prefix_jax.infer.decode import (
    TracedOptions,
    beam_loop,
    greedy_loop,
    reorder_cache,
    traced_options,
)
from prefix_jax.models.kv import Seq2SeqCache
from prefix_jax.models.seq2seq import EncoderDecoder, Seq2SeqPrefix

Array = jax.Array


def greedy_seq2seq(
    model: EncoderDecoder,
    source: Array,
    source_mask: Array,
    *,
    max_new_tokens: int,
    prefix: Seq2SeqPrefix | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
    start_id: int | None = None,
    min_new_tokens: int = 0,
    banned_ids: Sequence[int] = (),
) -> Array:
    """Greedy target tokens [B, max_new_tokens] for right-padded sources; after eos,
    `pad_id`. eos, pad and start ids default to the model config's."""
    options, start = _prepare(
        model, max_new_tokens, min_new_tokens, eos_id, pad_id, start_id, banned_ids
    )
    graphdef, state = nnx.split(model)
    return _greedy(
        graphdef,
        state,
        jnp.asarray(source, jnp.int32),
        jnp.asarray(source_mask, bool),
        prefix or Seq2SeqPrefix(),
        options,
        start,
        max_new_tokens=max_new_tokens,
    )


def beam_search_seq2seq(
    model: EncoderDecoder,
    source: Array,
    source_mask: Array,
    *,
    beam_size: int,
    max_new_tokens: int,
    prefix: Seq2SeqPrefix | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
    start_id: int | None = None,
    length_penalty: float = 1.0,
    min_new_tokens: int = 0,
    banned_ids: Sequence[int] = (),
) -> tuple[Array, Array]:
    """Best beam per row: (target tokens [B, max_new_tokens], scores [B]); the search is
    `prefix_jax.infer.decode.beam_search`'s (Hugging Face's rules, exact early stop)."""
    options, start = _prepare(
        model,
        max_new_tokens,
        min_new_tokens,
        eos_id,
        pad_id,
        start_id,
        banned_ids,
        length_penalty,
        beam_size,
    )
    graphdef, state = nnx.split(model)
    return _beam_search(
        graphdef,
        state,
        jnp.asarray(source, jnp.int32),
        jnp.asarray(source_mask, bool),
        prefix or Seq2SeqPrefix(),
        options,
        start,
        beam_size=beam_size,
        max_new_tokens=max_new_tokens,
    )


def _prepare(
    model,
    max_new_tokens,
    min_new_tokens,
    eos_id,
    pad_id,
    start_id,
    banned_ids,
    penalty=1.0,
    beam_size=1,
) -> tuple[TracedOptions, Array]:
    c = model.config
    start = c.decoder_start_id if start_id is None else start_id
    if not 0 <= start < c.vocab_size:
        raise ValueError(f"decoder start id {start} is outside the vocabulary [0, {c.vocab_size})")
    options = traced_options(
        model,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        eos_id=c.eos_id if eos_id is None else eos_id,
        pad_id=c.pad_id if pad_id is None else pad_id,
        banned_ids=banned_ids,
        length_penalty=penalty,
        beam_size=beam_size,
    )
    return options, jnp.int32(start)


def decoder_step(model: EncoderDecoder, last: Array, cache: Seq2SeqCache):
    """One target token per row through the cached decoder: logits [B, V] and the cache."""
    ones = jnp.ones((last.shape[0], 1), bool)
    logits, cache = model.decode(last[:, None], ones, None, None, cache=cache)
    return logits[:, 0], cache


def _start(model, source, source_mask, prefix: Seq2SeqPrefix, start, max_new_tokens):
    """Encode once, build the cache (cross K/V once) and run the start token."""
    encoded = model.encode(source, source_mask, prefix=prefix.encoder)
    cache = model.init_cache(
        encoded,
        source_mask,
        max_new_tokens,
        cross_prefix=prefix.cross,
        self_prefix=prefix.decoder,
    )
    return decoder_step(model, jnp.full((source.shape[0],), start, jnp.int32), cache)


def _reorder_self(cache: Seq2SeqCache, rows: Array) -> Seq2SeqCache:
    """Beams of one row share cross keys/values: only the self-attention cache moves."""
    return cache.replace(self_attn=reorder_cache(cache.self_attn, rows))


def _repeat_rows(cache: Seq2SeqCache, rows: Array) -> Seq2SeqCache:
    """Every part of the cache, rows gathered (each source row copied for its beams)."""
    return cache.replace(
        self_attn=reorder_cache(cache.self_attn, rows),
        cross_keys=jnp.take(cache.cross_keys, rows, axis=1),
        cross_values=jnp.take(cache.cross_values, rows, axis=1),
        cross_valid=jnp.take(cache.cross_valid, rows, axis=0),
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def _greedy(graphdef, state, source, source_mask, prefix, options, start, *, max_new_tokens):
    model = nnx.merge(graphdef, state)
    logits, cache = _start(model, source, source_mask, prefix, start, max_new_tokens)
    step = functools.partial(decoder_step, model)
    return greedy_loop(step, logits, cache, options, max_new_tokens)


@functools.partial(jax.jit, static_argnames=("graphdef", "beam_size", "max_new_tokens"))
def _beam_search(
    graphdef, state, source, source_mask, prefix, options, start, *, beam_size, max_new_tokens
):
    model = nnx.merge(graphdef, state)
    logits, cache = _start(model, source, source_mask, prefix, start, max_new_tokens)
    step = functools.partial(decoder_step, model)
    return beam_loop(
        step,
        logits,
        cache,
        options,
        beam_size,
        max_new_tokens,
        reorder=_reorder_self,
        repeat=_repeat_rows,
    )
