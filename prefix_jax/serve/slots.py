"""The serving engine's device programs: prefill, insert, generate, and the prefix table.

Shaped after JetStream's engine API (prefill / insert / generate), for a frozen base model
whose only per-task state is a prefix of keys and values:

- `PrefixTable`: every loaded prefix in one fixed-capacity table [layers, capacity,
  prefix_max_length, kv_heads, head_dim] with per-entry lengths and position conventions;
  `write_prefix` fills an entry at a traced index, so loading never recompiles.
- `prefill`: one prompt, right-padded to a length bucket, behind its entry's prefix (a
  masked row of the table; entry -1 = none), in a cache of prefix_max_length + bucket
  slots. Returns the prompt's keys/values (`Prefilled`) and its first token.
- `insert`: a prefilled request into one slot of the decode cache [layers, S, max_len,
  ...]: its prefix's p keys/values first, the prompt's after them, with the slot's write
  index (p + prompt length) and next position (0 or p, by the prefix's convention).
- `generate`: one token for every slot; each slot writes at its own index
  (`KVCache.index` [S]), inactive slots are masked (query and key invalid).
- `beam`: a whole beam search for one request (prefill, then `decode.beam_loop`).

Sampling options are per-row traced arrays (`Sampling`): temperature 0 is the argmax of
the log-probabilities, exactly as `decode.greedy` picks it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from prefix_jax.infer.decode import TracedOptions, beam_loop, decode_step
from prefix_jax.models.kv import KVCache

Array = jax.Array


class PrefixTable(struct.PyTreeNode):
    """Loaded prefixes, padded to `prefix_max_length` slots; length 0 = a free entry."""

    keys: Array  # [layers, capacity, prefix_max_length, kv_heads, head_dim]
    values: Array
    lengths: Array  # [capacity] int32
    after: Array  # [capacity] bool: tokens numbered from p (PEFT, Li & Liang) or from 0

    @property
    def max_length(self) -> int:
        return self.keys.shape[2]


class Sampling(struct.PyTreeNode):
    """Per-row sampling options [R] (R = slots, or 1 for a prefill)."""

    temperature: Array  # float32, 0 = greedy
    top_p: Array  # float32 in (0, 1]
    seed: Array  # [R, 2] uint32, the request's seed (low and high words)
    step: Array  # int32, index of the token being generated (0 = the first)
    min_tokens: Array  # int32, eos is banned while step < min_tokens
    ban: Array  # bool, never generate the engine's banned tokens


class Prefilled(struct.PyTreeNode):
    """A prompt after prefill: its cache row and where its tokens sit."""

    keys: Array  # [layers, prefix_max_length + bucket, kv_heads, head_dim]
    values: Array
    prefix_length: Array  # [] int32, p
    length: Array  # [] int32, real prompt tokens
    next_position: Array  # [] int32, position of the first generated token


def write_prefix(
    table: PrefixTable, entry: Array, keys: Array, values: Array, length: Array, after: Array
) -> PrefixTable:
    """Entry `entry` set to a prefix padded to the table's length (keys/values [L, 1, P,
    kv, hd]); length 0 frees it."""
    return table.replace(
        keys=jax.lax.dynamic_update_slice(table.keys, keys, (0, entry, 0, 0, 0)),
        values=jax.lax.dynamic_update_slice(table.values, values, (0, entry, 0, 0, 0)),
        lengths=table.lengths.at[entry].set(length),
        after=table.after.at[entry].set(after),
    )


def sample(logits: Array, s: Sampling, eos_id: Array, banned: Array) -> Array:
    """Next token per row [R] from logits [R, V].

    Forbidden tokens (banned ones where `ban`, eos before `min_tokens`) get log-probability
    -inf, as `decode._next_log_probs` does; temperature 0 is their argmax. Otherwise the
    log-probabilities over temperature, cut to the smallest set of tokens whose probability
    reaches top_p, are sampled with a key from the row's seed and step.
    """
    ids = jnp.arange(logits.shape[-1])
    early_eos = (ids == eos_id)[None, :] & (s.step < s.min_tokens)[:, None]
    forbidden = (banned[None, :] & s.ban[:, None]) | early_eos
    logp = jnp.where(forbidden, -jnp.inf, jax.nn.log_softmax(logits, axis=-1))
    greedy = jnp.argmax(logp, axis=-1).astype(jnp.int32)

    def draw(_):
        scaled = logp / jnp.where(s.temperature > 0, s.temperature, 1.0)[:, None]
        ordered = jnp.flip(jnp.sort(scaled, axis=-1), axis=-1)
        probs = jax.nn.softmax(ordered, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # probability of the better tokens
        kept = before < s.top_p[:, None]  # the best token always (top_p > 0)
        cutoff = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
        scaled = jnp.where(scaled >= cutoff, scaled, -jnp.inf)

        def one(seed, step, row):
            key = jax.random.fold_in(jax.random.key(seed[0]), seed[1])
            return jax.random.categorical(jax.random.fold_in(key, step), row)

        return jax.vmap(one)(s.seed, s.step, scaled).astype(jnp.int32)

    sampled = jax.lax.cond(jnp.any(s.temperature > 0), draw, lambda _: greedy, None)
    return jnp.where(s.temperature > 0, sampled, greedy)


def _prefill(model, table: PrefixTable, tokens: Array, length: Array, entry: Array):
    """(Prefilled, last-token logits [1, V]) of one right-padded prompt [1, bucket]."""
    big_p, bucket = table.max_length, tokens.shape[1]
    has = entry >= 0
    e = jnp.maximum(entry, 0)
    p = jnp.where(has, table.lengths[e], 0)
    start = jnp.where(has & table.after[e], p, 0)
    cache = model.init_cache(1, big_p + bucket)
    row = jnp.arange(big_p)[None] < p

    def place(slots: Array, part: Array) -> Array:
        part = jax.lax.dynamic_index_in_dim(part, e, axis=1).astype(slots.dtype)
        return jax.lax.dynamic_update_slice(slots, part, (0, 0, 0, 0, 0))

    cache = cache.replace(
        keys=place(cache.keys, table.keys),
        values=place(cache.values, table.values),
        valid=cache.valid.at[:, :big_p].set(row),
        index=jnp.asarray(big_p, jnp.int32),
        next_position=start[None].astype(jnp.int32),
        prefix_length=big_p,
    )
    mask = (jnp.arange(bucket) < length)[None]
    hidden, cache = model.hidden_states(tokens, mask, cache=cache)
    last = jax.lax.dynamic_slice_in_dim(hidden, length - 1, 1, axis=1)
    logits = model.unembed(last)[:, 0]
    pre = Prefilled(
        keys=cache.keys[:, 0],
        values=cache.values[:, 0],
        prefix_length=p.astype(jnp.int32),
        length=jnp.asarray(length, jnp.int32),
        next_position=cache.next_position[0],
    )
    return pre, logits


def prefill(
    graphdef,
    state,
    table: PrefixTable,
    tokens: Array,
    length: Array,
    entry: Array,
    sampling: Sampling,
    eos_id: Array,
    banned: Array,
) -> tuple[Prefilled, Array]:
    """One prompt prefilled behind its prefix, and its first token [1]."""
    model = nnx.merge(graphdef, state)
    pre, logits = _prefill(model, table, tokens, length, entry)
    return pre, sample(logits, sampling, eos_id, banned)


def _row(pre: Prefilled, max_len: int, prefix_max_length: int) -> tuple[Array, Array, Array]:
    """A slot's keys/values [L, max_len, kv, hd] and valid [max_len]: the prefix's p slots,
    then the prompt's tokens, then free slots."""
    j = jnp.arange(max_len)
    p = pre.prefix_length
    src = jnp.where(j < p, j, prefix_max_length + j - p)
    src = jnp.clip(src, 0, pre.keys.shape[1] - 1)
    keys = jnp.take(pre.keys, src, axis=1)
    values = jnp.take(pre.values, src, axis=1)
    return keys, values, j < p + pre.length


def insert(cache: KVCache, pre: Prefilled, slot: Array, *, prefix_max_length: int) -> KVCache:
    """The prefilled request written into decode slot `slot` (its old content dropped)."""
    keys, values, valid = _row(pre, cache.max_len, prefix_max_length)
    at = (0, slot, 0, 0, 0)
    return cache.replace(
        keys=jax.lax.dynamic_update_slice(cache.keys, keys[:, None].astype(cache.keys.dtype), at),
        values=jax.lax.dynamic_update_slice(
            cache.values, values[:, None].astype(cache.values.dtype), at
        ),
        valid=jax.lax.dynamic_update_slice(cache.valid, valid[None], (slot, 0)),
        index=cache.index.at[slot].set(pre.prefix_length + pre.length),
        next_position=cache.next_position.at[slot].set(pre.next_position),
    )


def generate(
    graphdef,
    state,
    cache: KVCache,
    last: Array,
    active: Array,
    sampling: Sampling,
    eos_id: Array,
    banned: Array,
) -> tuple[KVCache, Array]:
    """One token for every slot: `last` [S] goes in at each slot's index, the next [S]
    comes out. Inactive slots are masked and keep their index."""
    model = nnx.merge(graphdef, state)
    hidden, new = model.hidden_states(last[:, None], active[:, None], cache=cache)
    logits = model.unembed(hidden)[:, 0]
    new = new.replace(index=jnp.where(active, new.index, cache.index))
    return new, sample(logits, sampling, eos_id, banned)


def beam(
    graphdef,
    state,
    table: PrefixTable,
    tokens: Array,
    length: Array,
    entry: Array,
    options: TracedOptions,
    limit: Array,
    *,
    beam_size: int,
    max_len: int,
) -> tuple[Array, Array]:
    """Beam search of one request ([max_len] tokens, pad after eos or `limit`; score): the
    prompt prefilled as for `generate`, then `decode.beam_loop` on a cache of max_len slots."""
    model = nnx.merge(graphdef, state)
    pre, logits = _prefill(model, table, tokens, length, entry)
    keys, values, valid = _row(pre, max_len, table.max_length)
    cache = KVCache(
        keys=keys[:, None],
        values=values[:, None],
        valid=valid[None],
        index=pre.prefix_length + pre.length,
        next_position=pre.next_position[None],
    )
    step = lambda last, cache: decode_step(model, last, cache)  # noqa: E731
    sequences, scores = beam_loop(step, logits, cache, options, beam_size, max_len, limit=limit)
    return sequences[0], scores[0]
