"""Batched greedy and beam-search decoding with a KV cache and an optional prefix.

Each decoder is one `jax.jit`, compiled once per input shape (and beam size and
max_new_tokens): the prompt is prefilled once and the token loop is a `lax.while_loop`, so
no step recompiles or syncs with the host. The other options are traced arrays, so
changing them does not recompile either.

Options shared by both decoders (applied by `_next_log_probs`, as Hugging Face's logits
processors do): `eos_id` ends a sequence (what follows is `pad_id`), `min_new_tokens`
bans eos at steps 0 .. min_new_tokens - 1, and `banned_ids` are never generated. Banned
tokens get log-probability -inf without renormalising the rest, so a beam's score stays
the model's log-probability of its tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prefix_jax.models.kv import KVCache, PrefixKV, check_prefix, fill_prefix
from prefix_jax.models.transformer import Transformer

Array = jax.Array


class TracedOptions(NamedTuple):
    """Decoding options as traced arrays, so changing them does not recompile."""

    eos_id: Array  # [] int32, -1 for none
    pad_id: Array  # [] int32
    min_new_tokens: Array  # [] int32
    banned: Array  # [V] bool
    length_penalty: Array  # [] float32


def newline_token_ids(tokenizer) -> tuple[int, ...]:
    """Every token whose text contains a newline (outputs are one line, as in Li & Liang)."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return tuple(i for i, text in enumerate(texts) if "\n" in text)


def traced_options(
    model: Transformer,
    *,
    max_new_tokens: int,
    min_new_tokens: int,
    eos_id: int | None,
    pad_id: int,
    banned_ids: Sequence[int],
    length_penalty: float = 1.0,
    beam_size: int = 1,
) -> TracedOptions:
    """Validate decoding options and pack them for the compiled decoders."""
    vocab = model.config.vocab_size
    if beam_size < 1:
        raise ValueError(f"beam_size must be positive, got {beam_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if not 0 <= min_new_tokens <= max_new_tokens:
        raise ValueError(
            f"min_new_tokens must be in [0, max_new_tokens={max_new_tokens}], got {min_new_tokens}"
        )
    if eos_id is not None and not 0 <= eos_id < vocab:
        raise ValueError(f"eos_id {eos_id} is outside the vocabulary [0, {vocab})")
    banned = np.zeros(vocab, bool)
    ids = np.asarray(banned_ids, np.int64).reshape(-1)
    if np.any((ids < 0) | (ids >= vocab)):
        raise ValueError(f"banned_ids {tuple(banned_ids)} fall outside [0, {vocab})")
    banned[ids] = True
    return TracedOptions(
        eos_id=jnp.int32(-1 if eos_id is None else eos_id),
        pad_id=jnp.int32(pad_id),
        min_new_tokens=jnp.int32(min_new_tokens),
        banned=jnp.asarray(banned),
        length_penalty=jnp.float32(length_penalty),
    )


def _next_log_probs(logits: Array, step: Array | int, options: TracedOptions) -> Array:
    """Next-token log-probs [..., V] with forbidden tokens (banned, early eos) set to -inf."""
    ids = jnp.arange(logits.shape[-1])
    early_eos = (ids == options.eos_id) & (step < options.min_new_tokens)
    forbidden = options.banned | early_eos
    return jnp.where(forbidden, -jnp.inf, jax.nn.log_softmax(logits, axis=-1))


def greedy(
    model: Transformer,
    tokens: Array,
    attention_mask: Array,
    *,
    max_new_tokens: int,
    prefix: PrefixKV | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    min_new_tokens: int = 0,
    banned_ids: Sequence[int] = (),
) -> Array:
    """Greedy continuation [B, max_new_tokens] of left-padded prompts; after eos, `pad_id`."""
    options = traced_options(
        model,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        eos_id=eos_id,
        pad_id=pad_id,
        banned_ids=banned_ids,
    )
    graphdef, state = nnx.split(model)
    return _greedy(
        graphdef,
        state,
        jnp.asarray(tokens, jnp.int32),
        jnp.asarray(attention_mask, bool),
        prefix,
        options,
        max_new_tokens=max_new_tokens,
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def _greedy(graphdef, state, tokens, attention_mask, prefix, options, *, max_new_tokens):
    model = nnx.merge(graphdef, state)
    b, t = tokens.shape
    cache = _cache_holding_prefix(model, prefix, b, t + max_new_tokens)
    hidden, cache = model.hidden_states(tokens, attention_mask, cache=cache)
    logits = model.unembed(hidden[:, -1:])[:, 0]
    step = functools.partial(decode_step, model)
    return greedy_loop(step, logits, cache, options, max_new_tokens)


def greedy_loop(step: Callable, logits: Array, cache, options: TracedOptions, max_new_tokens: int):
    """Greedy tokens [B, max_new_tokens] from the first step's logits [B, V] and a cache;
    `step(last [B], cache) -> (logits [B, V], cache)` runs the model on one token per row."""
    b = logits.shape[0]
    first = jnp.argmax(_next_log_probs(logits, 0, options), axis=-1).astype(jnp.int32)
    out = jnp.full((b, max_new_tokens), options.pad_id, jnp.int32).at[:, 0].set(first)
    done = first == options.eos_id

    def cond(carry):
        i, _, _, done, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, out, cache, done, last = carry
        logits, cache = step(last, cache)
        nxt = jnp.argmax(_next_log_probs(logits, i, options), axis=-1).astype(jnp.int32)
        nxt = jnp.where(done, options.pad_id, nxt)
        out = out.at[:, i].set(nxt)
        return i + 1, out, cache, done | (nxt == options.eos_id), nxt

    _, out, _, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), out, cache, done, first))
    return out


def beam_search(
    model: Transformer,
    tokens: Array,
    attention_mask: Array,
    *,
    beam_size: int,
    max_new_tokens: int,
    prefix: PrefixKV | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    length_penalty: float = 1.0,
    min_new_tokens: int = 0,
    banned_ids: Sequence[int] = (),
) -> tuple[Array, Array]:
    """Best beam-search continuation per row: (sequences [B, max_new_tokens], scores [B]).

    Follows Hugging Face: each step keeps the top 2 * beam_size extensions; an eos one
    ranked within the top beam_size finishes a hypothesis, the best beam_size others stay
    alive. A finished hypothesis scores sum(log p) / length ** length_penalty, where length
    counts the generated tokens including eos; beams still alive at max_new_tokens finish
    with length max_new_tokens. Each row keeps its beam_size best finished hypotheses and
    returns the best (padded with `pad_id` after eos).

    A row stops once it holds beam_size finished hypotheses and no alive beam can beat the
    worst of them whatever it generates next (log-probs are <= 0, so the bound is the
    beam's current sum over max_new_tokens ** length_penalty, or over its current length
    when length_penalty <= 0): stopping early never changes the result. The loop ends when
    every row has stopped or max_new_tokens is reached.
    """
    options = traced_options(
        model,
        beam_size=beam_size,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        eos_id=eos_id,
        pad_id=pad_id,
        banned_ids=banned_ids,
        length_penalty=length_penalty,
    )
    graphdef, state = nnx.split(model)
    return _beam_search(
        graphdef,
        state,
        jnp.asarray(tokens, jnp.int32),
        jnp.asarray(attention_mask, bool),
        prefix,
        options,
        beam_size=beam_size,
        max_new_tokens=max_new_tokens,
    )


class _Beams(NamedTuple):
    """Static-shaped beam-search state of B rows with k beams each."""

    alive_seq: Array  # [B, k, N] int32, pad_id where not yet generated
    alive_logp: Array  # [B, k] float32 sum of log-probs, -inf for empty beams
    fin_seq: Array  # [B, k, N] best finished hypotheses, sorted best first
    fin_score: Array  # [B, k] length-penalised scores, -inf for empty slots
    done: Array  # [B] bool, nothing can change this row's result any more
    parent: Array  # [B, k] int32, the beam each alive beam extends this step
    last: Array  # [B, k] int32, each alive beam's newest token


def _beam_step(
    beams: _Beams, log_probs: Array, step: Array | int, options: TracedOptions, limit: Array | int
) -> _Beams:
    """Extend every alive beam by one token (log_probs [B, k, V]) and update finished ones."""
    b, k, vocab = log_probs.shape
    penalty = options.length_penalty
    scores = (beams.alive_logp[:, :, None] + log_probs).reshape(b, k * vocab)
    top_scores, top_index = jax.lax.top_k(scores, 2 * k)
    parent = (top_index // vocab).astype(jnp.int32)
    token = (top_index % vocab).astype(jnp.int32)
    seq = jnp.take_along_axis(beams.alive_seq, parent[:, :, None], axis=1)
    seq = seq.at[:, :, step].set(token)
    is_eos = token == options.eos_id

    finishing = is_eos & (jnp.arange(2 * k) < k)
    length = jnp.asarray(step + 1, jnp.float32)
    new_scores = jnp.where(finishing, top_scores / length**penalty, -jnp.inf)
    fin_score, fin_seq = _keep_best(beams, new_scores, seq)

    alive_logp, pick = jax.lax.top_k(jnp.where(is_eos, -jnp.inf, top_scores), k)
    alive_seq = jnp.take_along_axis(seq, pick[:, :, None], axis=1)
    # Log-probs only decrease, so the best score an alive beam can still reach is bounded.
    bound_length = jnp.where(penalty > 0, jnp.asarray(limit, jnp.float32), length)
    bound = alive_logp[:, 0] / bound_length**penalty
    done = beams.done | (bound < fin_score[:, -1])
    return _Beams(
        alive_seq=alive_seq,
        alive_logp=alive_logp,
        fin_seq=fin_seq,
        fin_score=fin_score,
        done=done,
        parent=jnp.take_along_axis(parent, pick, axis=1),
        last=jnp.take_along_axis(token, pick, axis=1),
    )


def _keep_best(beams: _Beams, scores: Array, seq: Array) -> tuple[Array, Array]:
    """Merge candidate hypotheses into the top-k finished buffer of rows not yet done."""
    k = beams.fin_score.shape[1]
    all_scores = jnp.concatenate([beams.fin_score, scores], axis=1)
    all_seq = jnp.concatenate([beams.fin_seq, seq], axis=1)
    fin_score, pick = jax.lax.top_k(all_scores, k)
    fin_seq = jnp.take_along_axis(all_seq, pick[:, :, None], axis=1)
    done = beams.done[:, None]
    return (
        jnp.where(done, beams.fin_score, fin_score),
        jnp.where(done[:, :, None], beams.fin_seq, fin_seq),
    )


def decode_step(model, last: Array, cache: KVCache) -> tuple[Array, KVCache]:
    """One token per row through the cached model: next-token logits [B, V] and the cache."""
    hidden, cache = model.hidden_states(
        last[:, None], jnp.ones((last.shape[0], 1), bool), cache=cache
    )
    return model.unembed(hidden)[:, 0], cache


def _cache_holding_prefix(model, prefix: PrefixKV | None, batch: int, max_len: int) -> KVCache:
    """A cache of p + `max_len` slots whose first p already hold the prefix.

    Decoding then attends to the prefix as to any cached key, instead of concatenating it
    with the whole cache in every layer at every step (a copy of the cache per step).
    Positions are unaffected: they follow `next_position`, not the slot.
    """
    if prefix is None:
        return model.init_cache(batch, max_len)
    c = model.config
    check_prefix(prefix, c.num_layers, c.num_kv_heads, c.head_dim, batch)
    return fill_prefix(model.init_cache(batch, prefix.length + max_len), prefix)


def reorder_cache(cache: KVCache, rows: Array) -> KVCache:
    """Gather batch rows of keys/values/valid/next_position: `rows` [B'] picks each new row."""
    return cache.replace(
        keys=jnp.take(cache.keys, rows, axis=1),
        values=jnp.take(cache.values, rows, axis=1),
        valid=jnp.take(cache.valid, rows, axis=0),
        next_position=jnp.take(cache.next_position, rows, axis=0),
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "beam_size", "max_new_tokens"))
def _beam_search(
    graphdef, state, tokens, attention_mask, prefix, options, *, beam_size, max_new_tokens
):
    model = nnx.merge(graphdef, state)
    b, t = tokens.shape
    cache = _cache_holding_prefix(model, prefix, b, t + max_new_tokens)
    hidden, cache = model.hidden_states(tokens, attention_mask, cache=cache)
    logits = model.unembed(hidden[:, -1:])[:, 0]
    step = functools.partial(decode_step, model)
    return beam_loop(step, logits, cache, options, beam_size, max_new_tokens)


def beam_loop(
    step: Callable,
    logits: Array,
    cache,
    options: TracedOptions,
    beam_size: int,
    max_new_tokens: int,
    reorder: Callable = reorder_cache,
    repeat: Callable | None = None,
    limit: Array | None = None,
) -> tuple[Array, Array]:
    """Beam search from the first step's logits [B, V] and a cache of B rows (see
    `beam_search`). `reorder(cache, rows)` gathers cache rows after each step; `repeat`
    (default `reorder`) makes the k copies of each row once, at the start. `limit` (traced,
    at most max_new_tokens) stops at fewer tokens, as if max_new_tokens were `limit`: one
    compiled program then serves every token budget (the serving engine's)."""
    b = logits.shape[0]
    k, n = beam_size, max_new_tokens
    limit = n if limit is None else limit
    first = _next_log_probs(logits, 0, options)
    empty = jnp.full((b, k, n), options.pad_id, jnp.int32)
    beams = _Beams(
        alive_seq=empty,
        alive_logp=jnp.full((b, k), -jnp.inf).at[:, 0].set(0.0),  # one live beam per row
        fin_seq=empty,
        fin_score=jnp.full((b, k), -jnp.inf),
        done=jnp.zeros((b,), bool),
        parent=jnp.zeros((b, k), jnp.int32),
        last=jnp.zeros((b, k), jnp.int32),
    )
    beams = _beam_step(
        beams, jnp.broadcast_to(first[:, None], (b, k, first.shape[-1])), 0, options, limit
    )
    # The prefix and prompt were prefilled once per row; each of its k beams starts from a copy.
    cache = (repeat or reorder)(cache, jnp.repeat(jnp.arange(b), k))
    row_start = (jnp.arange(b, dtype=jnp.int32) * k)[:, None]

    def cond(carry):
        i, _, beams = carry
        return (i < limit) & ~jnp.all(beams.done)

    def body(carry):
        i, cache, beams = carry
        logits, cache = step(beams.last.reshape(b * k), cache)
        logits = logits.reshape(b, k, -1)
        beams = _beam_step(beams, _next_log_probs(logits, i, options), i, options, limit)
        return i + 1, reorder(cache, (row_start + beams.parent).reshape(-1)), beams

    _, _, beams = jax.lax.while_loop(cond, body, (jnp.int32(1), cache, beams))
    # Rows that never stopped end at max_new_tokens: their alive beams finish there.
    final = beams.alive_logp / jnp.asarray(limit, jnp.float32) ** options.length_penalty
    fin_score, fin_seq = _keep_best(beams, final, beams.alive_seq)
    return fin_seq[:, 0], fin_score[:, 0]
